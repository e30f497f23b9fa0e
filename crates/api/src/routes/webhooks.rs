//! Inbound webhooks from Meta. Public routes, authenticated by signature: the raw body is
//! verified in constant time before anything is parsed, then committed to the tenant's inbox
//! (with its processing job) before the 200. A bad or missing signature stores nothing.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use axum::{
    Extension,
    body::Bytes,
    extract::{Query, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
};
use waypost_core::{ChannelId, Error, ErrorCode};
use waypost_providers::{
    meta::{self, RouteKey},
    signature::{self, SignatureError},
};
use waypost_store::ChannelRoute;

use crate::{
    ApiError, AppState, client::ClientAddr, problem::ApiPath, routes::channels::secret_purpose,
};

fn rejected(provider: &'static str, reason: &'static str) -> Response {
    metrics::counter!("waypost_webhooks_rejected_total", "provider" => provider, "reason" => reason).increment(1);
    // Logged without the body: it may carry customer messages.
    tracing::warn!(provider, reason, "webhook rejected");
    let code = match reason {
        "missing_signature" | "unknown_channel_secret" => ErrorCode::Unauthorized,
        "not_found" => ErrorCode::NotFound,
        _ => ErrorCode::Forbidden,
    };
    ApiError(Error::new(
        code,
        format!("webhook refused: {}", reason.replace('_', " ")),
    ))
    .into_response()
}

fn signature_reason(err: SignatureError) -> &'static str {
    match err {
        SignatureError::Missing => "missing_signature",
        SignatureError::Malformed => "malformed_signature",
        SignatureError::Mismatch => "bad_signature",
    }
}

/// Meta's subscription handshake: echo `hub.challenge` only for `subscribe` with the right
/// token.
fn handshake(query: &HashMap<String, String>, expected: Option<&str>) -> Response {
    let (mode, token, challenge) = (
        query.get("hub.mode"),
        query.get("hub.verify_token"),
        query.get("hub.challenge"),
    );
    match (mode.map(String::as_str), token, challenge, expected) {
        (Some("subscribe"), Some(token), Some(challenge), Some(expected))
            if signature::secrets_match(expected, token) =>
        {
            (
                [(axum::http::header::CONTENT_TYPE, "text/plain")],
                challenge.clone(),
            )
                .into_response()
        }
        _ => ApiError(Error::new(
            ErrorCode::Forbidden,
            "subscription handshake refused",
        ))
        .into_response(),
    }
}

/// The URL the provider called, as it sees it (`http.public_base_url` + path + query): what
/// Twilio and Bird sign.
fn public_url(state: &AppState, uri: &axum::http::Uri) -> String {
    let base = state.webhooks.public_base_url.trim_end_matches('/');
    match uri.query() {
        Some(query) => format!("{base}{}?{query}", uri.path()),
        None => format!("{base}{}", uri.path()),
    }
}

async fn route(state: &AppState, channel: ChannelId) -> Result<Option<ChannelRoute>, ApiError> {
    let mut tx = state.store.platform_read().await?;
    Ok(tx.route_channel(channel).await?)
}

/// The channel a webhook is for and the secret that authenticates it, or the answer that
/// refuses the webhook.
async fn channel_and_secret(
    state: &AppState,
    provider: &'static str,
    channel: ChannelId,
    secret: &'static str,
) -> Result<Result<(ChannelRoute, String), Response>, ApiError> {
    if let Some(found) = state.channel_secrets.get(channel, secret) {
        return Ok(Ok(found));
    }
    let Some(route) = route(state, channel).await? else {
        return Ok(Err(rejected(provider, "not_found")));
    };
    Ok(match channel_secret(state, route, secret).await? {
        Some(value) => {
            state
                .channel_secrets
                .put(channel, secret, route, value.clone());
            Ok((route, value))
        }
        None => Err(rejected(provider, "unknown_channel_secret")),
    })
}

async fn channel_secret(
    state: &AppState,
    route: ChannelRoute,
    name: &str,
) -> Result<Option<String>, ApiError> {
    let mut tx = state.store.tenant_read(route.tenant).await?;
    Ok(state
        .vault
        .reveal(&mut tx, &secret_purpose(route.channel, name))
        .await?
        .map(|s| s.as_str().to_string()))
}

/// Commits the body and its processing job (grouped with other webhooks into one commit);
/// only then may the provider get its 200.
async fn store(
    state: &AppState,
    route: ChannelRoute,
    provider: &'static str,
    body: Bytes,
) -> Result<(), ApiError> {
    state.inbox.store(route, provider, body).await?;
    metrics::counter!("waypost_webhooks_stored_total", "provider" => provider).increment(1);
    if let Some(wake) = &state.worker_wake {
        wake.notify_one();
    }
    Ok(())
}

/// Meta's handshake for a channel with its own app.
#[utoipa::path(get, path = "/webhooks/meta/{channel_id}", tag = "webhooks",
    params(("channel_id" = ChannelId, Path, description = "Channel id")),
    responses((status = OK, description = "hub.challenge, as text"), (status = FORBIDDEN, description = "Wrong mode or token")))]
pub async fn meta_channel_handshake(
    State(state): State<AppState>,
    ApiPath(channel): ApiPath<ChannelId>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let Some(route) = route(&state, channel).await? else {
        return Ok(handshake(&query, None));
    };
    let expected = channel_secret(&state, route, "verify_token").await?;
    Ok(handshake(&query, expected.as_deref()))
}

/// Meta's events for a channel with its own app, signed with that app's secret.
#[utoipa::path(post, path = "/webhooks/meta/{channel_id}", tag = "webhooks",
    params(("channel_id" = ChannelId, Path, description = "Channel id")),
    request_body(content = String, content_type = "application/json", description = "Meta's webhook envelope, signed in X-Hub-Signature-256"),
    responses((status = OK, description = "Stored durably"), (status = UNAUTHORIZED), (status = FORBIDDEN)))]
pub async fn meta_channel_event(
    State(state): State<AppState>,
    ApiPath(channel): ApiPath<ChannelId>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (route, secret) = match channel_and_secret(&state, "meta", channel, "app_secret").await? {
        Ok(found) => found,
        Err(refused) => return Ok(refused),
    };
    let header = headers
        .get("x-hub-signature-256")
        .and_then(|v| v.to_str().ok());
    if let Err(err) = signature::verify_meta(secret.as_bytes(), &body, header) {
        return Ok(rejected("meta", signature_reason(err)));
    }
    store(&state, route, "meta", body).await?;
    Ok(StatusCode::OK.into_response())
}

/// Meta's handshake for the platform's own app (`meta.verify_token` in the configuration).
#[utoipa::path(get, path = "/webhooks/meta", tag = "webhooks",
    responses((status = OK, description = "hub.challenge, as text"), (status = FORBIDDEN)))]
pub async fn meta_platform_handshake(
    State(state): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    handshake(&query, state.webhooks.meta_verify_token.as_deref())
}

/// Events for the platform's own Meta app (one app, many tenants and numbers): verified with
/// `meta.app_secret`, then routed change by change: messages and statuses to the verified
/// channel of their `phone_number_id`, account-wide updates (templates, quality, account
/// notices) to the verified channels of the entry's WhatsApp Business Account. Each channel
/// receives the body once and processes only its own changes.
#[utoipa::path(post, path = "/webhooks/meta", tag = "webhooks",
    request_body(content = String, content_type = "application/json"),
    responses((status = OK, description = "Stored durably"), (status = UNAUTHORIZED), (status = FORBIDDEN)))]
pub async fn meta_platform_event(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let Some(secret) = state.webhooks.meta_app_secret.as_deref() else {
        return Ok(rejected("meta", "unknown_channel_secret"));
    };
    let header = headers
        .get("x-hub-signature-256")
        .and_then(|v| v.to_str().ok());
    if let Err(err) = signature::verify_meta(secret.as_bytes(), &body, header) {
        return Ok(rejected("meta", signature_reason(err)));
    }
    let keys: BTreeSet<RouteKey> = meta::route_keys(&body)
        .map_err(|e| {
            ApiError(Error::new(
                ErrorCode::InvalidRequest,
                format!("not a Meta webhook: {e}"),
            ))
        })?
        .into_iter()
        .collect();
    let mut routes = BTreeMap::new();
    let mut unrouted = false;
    let mut tx = state.store.platform_read().await?;
    for key in keys {
        let found = match &key {
            RouteKey::Number(id) => tx
                .route_phone_number("meta", id)
                .await?
                .into_iter()
                .collect(),
            RouteKey::Account(waba) => tx.route_account("meta", waba).await?,
            RouteKey::Unknown => Vec::new(),
        };
        unrouted |= found.is_empty();
        routes.extend(found.into_iter().map(|r| (*r.channel.as_uuid(), r)));
    }
    drop(tx);
    for route in routes.values() {
        store(&state, *route, "meta", body.clone()).await?;
    }
    if unrouted {
        let mut tx = state.store.platform().await?;
        tx.store_unrouted("meta", &body).await?;
        tx.commit().await?;
    }
    Ok(StatusCode::OK.into_response())
}

/// Events from 360dialog (Meta's payloads, forwarded), authenticated by the secret header the
/// channel setup asks to configure (`X-Waypost-Token`).
#[utoipa::path(post, path = "/webhooks/360dialog/{channel_id}", tag = "webhooks",
    params(("channel_id" = ChannelId, Path, description = "Channel id")),
    request_body(content = String, content_type = "application/json"),
    responses((status = OK, description = "Stored durably"), (status = UNAUTHORIZED), (status = FORBIDDEN)))]
pub async fn d360_event(
    State(state): State<AppState>,
    ApiPath(channel): ApiPath<ChannelId>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (route, expected) =
        match channel_and_secret(&state, "360dialog", channel, "webhook_token").await? {
            Ok(found) => found,
            Err(refused) => return Ok(refused),
        };
    match headers
        .get(crate::routes::channels::D360_TOKEN_HEADER)
        .and_then(|v| v.to_str().ok())
    {
        None => return Ok(rejected("360dialog", "missing_signature")),
        Some(token) if !signature::secrets_match(&expected, token) => {
            return Ok(rejected("360dialog", "bad_signature"));
        }
        Some(_) => {}
    }
    store(&state, route, "360dialog", body).await?;
    Ok(StatusCode::OK.into_response())
}

/// Twilio's inbound messages and status callbacks, signed with the account's auth token over
/// the externally visible URL (`http.public_base_url`) and the sorted form parameters.
#[utoipa::path(post, path = "/webhooks/twilio/{channel_id}", tag = "webhooks",
    params(("channel_id" = ChannelId, Path, description = "Channel id")),
    request_body(content = String, content_type = "application/x-www-form-urlencoded"),
    responses((status = OK, description = "Stored durably (empty TwiML)"), (status = UNAUTHORIZED), (status = FORBIDDEN)))]
pub async fn twilio_event(
    State(state): State<AppState>,
    ApiPath(channel): ApiPath<ChannelId>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (route, auth_token) =
        match channel_and_secret(&state, "twilio", channel, "auth_token").await? {
            Ok(found) => found,
            Err(refused) => return Ok(refused),
        };
    let url = public_url(&state, &uri);
    let params = waypost_providers::twilio::form_pairs(&body);
    let header = headers
        .get("x-twilio-signature")
        .and_then(|v| v.to_str().ok());
    if let Err(err) = signature::verify_twilio(auth_token.as_bytes(), &url, &params, header) {
        return Ok(rejected("twilio", signature_reason(err)));
    }
    store(&state, route, "twilio", body).await?;
    Ok((
        [(axum::http::header::CONTENT_TYPE, "text/xml")],
        "<Response/>",
    )
        .into_response())
}

/// Gupshup's events. Gupshup signs nothing, so the URL carries an unguessable per-channel
/// secret, compared in constant time, and the operator may limit the source addresses
/// (`gupshup.allowed_ips`).
#[utoipa::path(post, path = "/webhooks/gupshup/{channel_id}/{path_secret}", tag = "webhooks",
    params(("channel_id" = ChannelId, Path, description = "Channel id"), ("path_secret" = String, Path, description = "The channel's secret")),
    request_body(content = String, content_type = "application/json"),
    responses((status = OK, description = "Stored durably"), (status = FORBIDDEN)))]
pub async fn gupshup_event(
    State(state): State<AppState>,
    client: Option<Extension<ClientAddr>>,
    ApiPath((channel, presented)): ApiPath<(ChannelId, String)>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let client = client.map(|Extension(ClientAddr(ip))| ip);
    if !state.webhooks.gupshup_source_allowed(client) {
        return Ok(rejected("gupshup", "source_not_allowed"));
    }
    let (route, expected) =
        match channel_and_secret(&state, "gupshup", channel, "path_secret").await? {
            Ok(found) => found,
            Err(refused) => return Ok(refused),
        };
    if !signature::secrets_match(&expected, &presented) {
        return Ok(rejected("gupshup", "bad_signature"));
    }
    store(&state, route, "gupshup", body).await?;
    Ok(StatusCode::OK.into_response())
}

/// How far a Bird request's timestamp may be from now: replays outside it are refused.
const BIRD_TOLERANCE_SECS: i64 = 300;

/// Bird's events, signed with the channel's signing key over the timestamp, the public URL
/// and the body's SHA-256.
#[utoipa::path(post, path = "/webhooks/bird/{channel_id}", tag = "webhooks",
    params(("channel_id" = ChannelId, Path, description = "Channel id")),
    request_body(content = String, content_type = "application/json"),
    responses((status = OK, description = "Stored durably"), (status = UNAUTHORIZED), (status = FORBIDDEN)))]
pub async fn bird_event(
    State(state): State<AppState>,
    ApiPath(channel): ApiPath<ChannelId>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (route, key) = match channel_and_secret(&state, "bird", channel, "signing_key").await? {
        Ok(found) => found,
        Err(refused) => return Ok(refused),
    };
    let url = public_url(&state, &uri);
    let timestamp = headers
        .get("messagebird-request-timestamp")
        .and_then(|v| v.to_str().ok());
    let header = headers
        .get("messagebird-signature")
        .and_then(|v| v.to_str().ok());
    if let Err(err) = signature::verify_bird(key.as_bytes(), timestamp, &url, &body, header) {
        return Ok(rejected("bird", signature_reason(err)));
    }
    let now = waypost_core::Timestamp::now().as_millis() / 1000;
    // Checked: the header is the sender's, and i64::MIN would overflow the distance.
    if timestamp
        .and_then(|t| t.parse::<i64>().ok())
        .and_then(|t| now.checked_sub(t)?.checked_abs())
        .is_none_or(|distance| distance > BIRD_TOLERANCE_SECS)
    {
        return Ok(rejected("bird", "stale_timestamp"));
    }
    store(&state, route, "bird", body).await?;
    Ok(StatusCode::OK.into_response())
}
