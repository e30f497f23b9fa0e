use std::collections::BTreeMap;

use axum::{Json, extract::State, http::StatusCode};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use serde::{Deserialize, Serialize};
use waypost_core::{ChannelId, Error, ErrorCode, Page, PageRequest, PhoneNumber};
use waypost_store::{Channel, NewChannel, SecretStatus, Verification};

use crate::{
    ApiError, AppState,
    auth::{Auth, random_bytes},
    problem::{ApiJson, ApiPath, ApiQuery, Problem},
};

pub use waypost_outbound::provider::secret_purpose;
use waypost_outbound::{
    jobs::verify_job,
    provider::{
        ClientConfig, Provider, client_for, credential_names, default_base_url, load_credentials,
    },
};

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateChannel {
    /// `meta` (default), `360dialog`, `twilio`, `gupshup` or `bird`.
    #[serde(default = "default_provider")]
    pub provider: String,
    /// 1 to 200 characters; default the display number (or the phone number id).
    pub name: Option<String>,
    /// Meta's phone number id (required for `meta` and `360dialog`): routes webhooks.
    pub phone_number_id: Option<String>,
    pub waba_id: Option<String>,
    /// The number as people dial it, e.g. `+15550783881` (required for `twilio`, `gupshup`
    /// and `bird`). Also accepted as Meta's own name, `display_phone_number`.
    #[serde(alias = "display_phone_number")]
    pub display_number: Option<String>,
    /// 80 (default), 1000, or 20 for numbers shared with the WhatsApp Business app.
    #[serde(default = "default_mps")]
    pub throughput_mps: i64,
    /// The provider's API base URL; default the provider's own (Meta's Graph API,
    /// `https://waba-v2.360dialog.io`, `https://api.twilio.com`, `https://api.gupshup.io`,
    /// `https://api.bird.com`). Point it at a simulator or proxy to test. Internal addresses
    /// are refused (`egress_refused`) unless the operator allowed them (`[egress] allow`).
    pub graph_api_base_url: Option<String>,
    pub graph_api_version: Option<String>,
    /// `meta`, write-only.
    pub access_token: Option<String>,
    /// `meta`, write-only: the channel's own Meta app secret, which signs its webhooks.
    pub app_secret: Option<String>,
    /// `meta`, write-only; generated when omitted.
    pub verify_token: Option<String>,
    /// `360dialog` (the `D360-API-KEY`), `gupshup` and `bird`, write-only.
    pub api_key: Option<String>,
    /// `twilio`.
    pub account_sid: Option<String>,
    /// `twilio`, write-only: signs Twilio's webhooks.
    pub auth_token: Option<String>,
    /// `bird`, write-only: the webhook signing key.
    pub signing_key: Option<String>,
    /// `gupshup`: the app name; `bird`: `workspace_id/channel_id` (where sends go).
    pub provider_account: Option<String>,
}

fn default_provider() -> String {
    "meta".into()
}

fn default_mps() -> i64 {
    80
}

/// What to configure at the provider so its webhooks reach this channel.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct WebhookSetup {
    pub callback_url: String,
    /// Meta: paste as the "Verify token" (it only authorizes the subscription handshake).
    pub verify_token: Option<String>,
    /// 360dialog: custom headers to add to the webhook configuration.
    pub headers: BTreeMap<String, String>,
    /// Meta: subscribe to these webhook fields.
    pub fields: Vec<&'static str>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ChannelView {
    #[serde(flatten)]
    pub channel: Channel,
    /// Which credentials are set (never their values).
    pub credentials: BTreeMap<String, SecretStatus>,
    pub webhook: WebhookSetup,
}

/// The header 360dialog must send (configured as a custom webhook header).
pub const D360_TOKEN_HEADER: &str = "x-waypost-token";

async fn view(state: &AppState, auth: &Auth, channel: Channel) -> Result<ChannelView, ApiError> {
    let mut tx = state.store.tenant_read(auth.tenant()?).await?;
    let mut credentials = BTreeMap::new();
    for name in credential_names(&channel.provider) {
        credentials.insert(
            name.to_string(),
            state
                .vault
                .status(&mut tx, &secret_purpose(channel.id, name))
                .await?,
        );
    }
    let mut reveal = async |name: &str| -> Result<Option<String>, ApiError> {
        Ok(state
            .vault
            .reveal(&mut tx, &secret_purpose(channel.id, name))
            .await?
            .map(|t| t.as_str().to_string()))
    };
    let base = state.webhooks.public_base_url.trim_end_matches('/');
    let provider_path = if channel.provider == "360dialog" {
        "360dialog"
    } else {
        channel.provider.as_str()
    };
    let mut webhook = WebhookSetup {
        callback_url: format!("{base}/webhooks/{provider_path}/{}", channel.id),
        verify_token: None,
        headers: BTreeMap::new(),
        fields: Vec::new(),
    };
    match channel.provider.as_str() {
        "meta" => {
            webhook.verify_token = reveal("verify_token").await?;
            webhook.fields = vec![
                "messages",
                "message_template_status_update",
                "message_template_quality_update",
                "user_preferences",
                "account_update",
                "phone_number_quality_update",
            ];
        }
        "360dialog" => {
            if let Some(token) = reveal("webhook_token").await? {
                webhook.headers.insert(D360_TOKEN_HEADER.into(), token);
            }
        }
        // Gupshup signs nothing: the URL itself carries an unguessable secret.
        "gupshup" => {
            if let Some(secret) = reveal("path_secret").await? {
                webhook.callback_url = format!("{}/{secret}", webhook.callback_url);
            }
        }
        _ => {}
    }
    Ok(ChannelView {
        channel,
        credentials,
        webhook,
    })
}

/// The channel as stored now, with its credential status and webhook setup.
async fn view_of(state: &AppState, auth: &Auth, id: ChannelId) -> Result<ChannelView, ApiError> {
    let channel = {
        let mut tx = state.store.tenant_read(auth.tenant()?).await?;
        tx.get_channel(id).await?
    };
    view(state, auth, channel).await
}

fn required<'a>(field: &str, value: &'a Option<String>) -> Result<&'a str, Error> {
    match value.as_deref().map(str::trim) {
        Some(v) if !v.is_empty() && v.len() <= 4096 => Ok(v),
        _ => Err(Error::validation(format!(
            "{field} is required (1 to 4096 characters)"
        ))),
    }
}

/// Checks the request and returns the secrets to store.
fn validate(body: &CreateChannel) -> Result<Vec<(&'static str, String)>, Error> {
    if body
        .name
        .as_deref()
        .is_some_and(|n| n.trim().is_empty() || n.chars().count() > 200)
    {
        return Err(Error::validation("name must be 1 to 200 characters"));
    }
    if !matches!(body.throughput_mps, 20 | 80 | 1000) {
        return Err(Error::validation("throughput_mps must be 80, 1000 or 20"));
    }
    if let Some(account) = &body.provider_account {
        let ok = match body.provider.as_str() {
            "gupshup" => !account.trim().is_empty() && account.len() <= 200,
            "bird" => account
                .split_once('/')
                .is_some_and(|(w, c)| !w.is_empty() && !c.is_empty() && account.len() <= 200),
            _ => false,
        };
        if !ok {
            return Err(Error::validation(
                "provider_account is the Gupshup app name, or Bird's workspace_id/channel_id",
            ));
        }
    }
    if let Some(url) = &body.graph_api_base_url {
        let parsed = url::Url::parse(url)
            .map_err(|_| Error::validation("graph_api_base_url must be an absolute URL"))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(Error::validation(
                "graph_api_base_url must be http or https",
            ));
        }
    }
    let number_id = || {
        let id = required("phone_number_id", &body.phone_number_id)?;
        if id.len() > 32 || !id.bytes().all(|b| b.is_ascii_digit()) {
            return Err(Error::validation(
                "phone_number_id must be Meta's numeric phone number id",
            ));
        }
        Ok(())
    };
    let token = || -> Result<String, Error> {
        Ok(URL_SAFE_NO_PAD
            .encode(random_bytes::<24>().map_err(|e| Error::internal("random", e.to_string()))?))
    };
    match body.provider.as_str() {
        "meta" => {
            number_id()?;
            let verify = body
                .verify_token
                .clone()
                .filter(|t| !t.trim().is_empty())
                .map_or_else(token, Ok)?;
            Ok(vec![
                (
                    "access_token",
                    required("access_token", &body.access_token)?.to_string(),
                ),
                (
                    "app_secret",
                    required("app_secret", &body.app_secret)?.to_string(),
                ),
                ("verify_token", verify),
            ])
        }
        "360dialog" => {
            number_id()?;
            Ok(vec![
                ("api_key", required("api_key", &body.api_key)?.to_string()),
                ("webhook_token", token()?),
            ])
        }
        "twilio" => {
            PhoneNumber::parse(required("display_number", &body.display_number)?)?;
            Ok(vec![
                (
                    "account_sid",
                    required("account_sid", &body.account_sid)?.to_string(),
                ),
                (
                    "auth_token",
                    required("auth_token", &body.auth_token)?.to_string(),
                ),
            ])
        }
        "gupshup" => {
            PhoneNumber::parse(required("display_number", &body.display_number)?)?;
            Ok(vec![
                ("api_key", required("api_key", &body.api_key)?.to_string()),
                ("path_secret", token()?),
            ])
        }
        "bird" => {
            PhoneNumber::parse(required("display_number", &body.display_number)?)?;
            Ok(vec![
                ("api_key", required("api_key", &body.api_key)?.to_string()),
                (
                    "signing_key",
                    required("signing_key", &body.signing_key)?.to_string(),
                ),
            ])
        }
        other => Err(Error::validation(format!(
            "unknown provider {other:?}; expected meta, 360dialog, twilio, gupshup or bird"
        ))),
    }
}

/// Connects a WhatsApp number. Credentials are encrypted at rest and never returned; the
/// answer says what to paste into Meta to receive webhooks.
#[utoipa::path(post, path = "/api/v1/channels", tag = "channels",
    request_body = CreateChannel,
    responses(
        (status = CREATED, body = ChannelView),
        (status = CONFLICT, body = Problem, content_type = "application/problem+json"),
        (status = UNPROCESSABLE_ENTITY, body = Problem, content_type = "application/problem+json")
    ))]
pub async fn create_channel(
    State(state): State<AppState>,
    auth: Auth,
    ApiJson(body): ApiJson<CreateChannel>,
) -> Result<(StatusCode, Json<ChannelView>), ApiError> {
    let secrets = validate(&body)?;
    if let Some(base) = &body.graph_api_base_url {
        state.http.client.check(base).await?;
    }
    let tenant = auth.tenant()?;
    let display_number = match body.provider.as_str() {
        "twilio" | "gupshup" | "bird" => body
            .display_number
            .as_deref()
            .map(PhoneNumber::parse)
            .transpose()?
            .map(|p| p.as_e164().to_string()),
        _ => body.display_number.clone(),
    };
    let name = body
        .name
        .as_deref()
        .or(display_number.as_deref())
        .or(body.phone_number_id.as_deref())
        .unwrap_or(body.provider.as_str())
        .trim()
        .to_string();
    let platform = state.store.platform().await?;
    let (mut tx, channel) = platform
        .create_channel(
            tenant,
            NewChannel {
                provider: body.provider.clone(),
                name,
                phone_number_id: body
                    .phone_number_id
                    .clone()
                    .filter(|_| matches!(body.provider.as_str(), "meta" | "360dialog")),
                waba_id: body.waba_id.clone(),
                display_number,
                provider_account: body.provider_account.clone(),
                throughput_mps: body.throughput_mps,
                graph_api_base_url: body
                    .graph_api_base_url
                    .clone()
                    .unwrap_or_else(|| default_base_url(&body.provider).into()),
                graph_api_version: body
                    .graph_api_version
                    .clone()
                    .unwrap_or_else(|| "v25.0".into()),
            },
        )
        .await?;
    for (name, value) in &secrets {
        state
            .vault
            .put_secret(&mut tx, &secret_purpose(channel.id, name), value)
            .await?;
    }

    tx.audit(auth.event("channel.create", "channel", channel.id))
        .await?;
    tx.audit(auth.event("secret.update", "channel", channel.id))
        .await?;
    enqueue_verification(&mut tx, &channel).await?;
    tx.commit().await?;
    wake_worker(&state);
    Ok((
        StatusCode::CREATED,
        Json(view(&state, &auth, channel).await?),
    ))
}

/// The tenant's channels.
#[utoipa::path(get, path = "/api/v1/channels", tag = "channels",
    params(PageRequest),
    responses((status = OK, body = Page<Channel>)))]
pub async fn list_channels(
    State(state): State<AppState>,
    auth: Auth,
    ApiQuery(page): ApiQuery<PageRequest>,
) -> Result<Json<Page<Channel>>, ApiError> {
    let (limit, cursor) = page.parse()?;
    let mut tx = state.store.tenant_read(auth.tenant()?).await?;
    Ok(Json(auth.shown(tx.list_channels(limit, cursor).await?)))
}

/// One channel with its credential status and webhook setup.
#[utoipa::path(get, path = "/api/v1/channels/{id}", tag = "channels",
    params(("id" = ChannelId, Path, description = "Channel id")),
    responses((status = OK, body = ChannelView), (status = NOT_FOUND, body = Problem, content_type = "application/problem+json")))]
pub async fn get_channel(
    State(state): State<AppState>,
    auth: Auth,
    ApiPath(id): ApiPath<ChannelId>,
) -> Result<Json<ChannelView>, ApiError> {
    Ok(Json(view_of(&state, &auth, id).await?))
}

/// New credentials for a channel (only the provider's own names; omitted ones stay).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChannelCredentials {
    pub access_token: Option<String>,
    pub app_secret: Option<String>,
    pub api_key: Option<String>,
    pub account_sid: Option<String>,
    pub auth_token: Option<String>,
    pub signing_key: Option<String>,
}

/// Replaces credentials (write-only). A channel held because its credentials were rejected
/// (`credentials_invalid`) sends again.
#[utoipa::path(put, path = "/api/v1/channels/{id}/credentials", tag = "channels",
    params(("id" = ChannelId, Path, description = "Channel id")),
    request_body = ChannelCredentials,
    responses((status = OK, body = ChannelView),
        (status = UNPROCESSABLE_ENTITY, body = Problem, content_type = "application/problem+json"),
        (status = NOT_FOUND, body = Problem, content_type = "application/problem+json")))]
pub async fn put_credentials(
    State(state): State<AppState>,
    auth: Auth,
    ApiPath(id): ApiPath<ChannelId>,
    ApiJson(body): ApiJson<ChannelCredentials>,
) -> Result<Json<ChannelView>, ApiError> {
    let mut tx = state.store.tenant(auth.tenant()?).await?;
    let channel = tx.get_channel(id).await?;
    let given = [
        ("access_token", &body.access_token),
        ("app_secret", &body.app_secret),
        ("api_key", &body.api_key),
        ("account_sid", &body.account_sid),
        ("auth_token", &body.auth_token),
        ("signing_key", &body.signing_key),
    ];
    let allowed = credential_names(&channel.provider);
    let mut stored = 0;
    for (name, value) in given {
        if value.is_none() {
            continue;
        }
        if !allowed.contains(&name) {
            return Err(Error::validation(format!(
                "{name} is not a credential of {} channels (expected {})",
                channel.provider,
                allowed.join(", ")
            ))
            .into());
        }
        let value = required(name, value)?;
        state
            .vault
            .put_secret(&mut tx, &secret_purpose(channel.id, name), value)
            .await?;
        stored += 1;
    }
    if stored == 0 {
        return Err(Error::validation("give at least one credential").into());
    }
    if channel.send_state == "credentials_invalid" {
        tx.set_send_state(channel.id, "active", None).await?;
    }
    tx.audit(auth.event("secret.update", "channel", channel.id))
        .await?;
    // New credentials may belong to someone else: the number is checked again with them.
    enqueue_verification(&mut tx, &channel).await?;
    tx.commit().await?;
    wake_worker(&state);
    Ok(Json(view_of(&state, &auth, id).await?))
}

/// Resumes sending on a channel paused by Meta's spam or integrity signals (131048, 131042),
/// once someone has looked at the number's quality.
#[utoipa::path(post, path = "/api/v1/channels/{id}/resume", tag = "channels",
    params(("id" = ChannelId, Path, description = "Channel id")),
    responses((status = OK, body = ChannelView),
        (status = CONFLICT, body = Problem, content_type = "application/problem+json"),
        (status = NOT_FOUND, body = Problem, content_type = "application/problem+json")))]
pub async fn resume_channel(
    State(state): State<AppState>,
    auth: Auth,
    ApiPath(id): ApiPath<ChannelId>,
) -> Result<Json<ChannelView>, ApiError> {
    let mut tx = state.store.tenant(auth.tenant()?).await?;
    let channel = tx.get_channel(id).await?;
    match channel.send_state.as_str() {
        "paused" => {}
        "credentials_invalid" => {
            return Err(Error::new(
                ErrorCode::Conflict,
                "the channel is held for invalid credentials: store new ones with PUT /credentials",
            )
            .into());
        }
        _ => return Err(Error::new(ErrorCode::Conflict, "the channel is not paused").into()),
    }
    tx.set_send_state(channel.id, "active", None).await?;
    tx.audit(auth.event("channel.resume", "channel", channel.id))
        .await?;
    tx.commit().await?;
    Ok(Json(view_of(&state, &auth, id).await?))
}

/// Queues the check of a Meta number with the channel's own token (in the caller's
/// transaction, with the change that calls for it).
async fn enqueue_verification(
    tx: &mut waypost_store::Tx<waypost_store::TenantScope>,
    channel: &Channel,
) -> Result<(), ApiError> {
    if channel.provider == "meta" {
        tx.set_verification(channel.id, Verification::Pending, None)
            .await?;
        tx.enqueue(verify_job(channel.id)?).await?;
    }
    Ok(())
}

fn wake_worker(state: &AppState) {
    if let Some(wake) = &state.worker_wake {
        wake.notify_one();
    }
}

/// Checks the number again (Meta channels): until it is verified with the channel's own
/// token, the platform app's webhooks (`/webhooks/meta`) are not routed to it. The channel's
/// own webhook URL is never held back.
#[utoipa::path(post, path = "/api/v1/channels/{id}/verify", tag = "channels",
    params(("id" = ChannelId, Path, description = "Channel id")),
    responses((status = ACCEPTED, body = ChannelView, description = "The check is queued; `verification` shows pending, then verified or failed with a reason"),
        (status = CONFLICT, body = Problem, content_type = "application/problem+json"),
        (status = NOT_FOUND, body = Problem, content_type = "application/problem+json")))]
pub async fn verify_channel(
    State(state): State<AppState>,
    auth: Auth,
    ApiPath(id): ApiPath<ChannelId>,
) -> Result<(StatusCode, Json<ChannelView>), ApiError> {
    let mut tx = state.store.tenant(auth.tenant()?).await?;
    let channel = tx.get_channel(id).await?;
    if channel.provider != "meta" {
        return Err(Error::new(
            ErrorCode::Conflict,
            "only Meta channels are verified: BSP webhooks come only to the channel's own URL",
        )
        .into());
    }
    enqueue_verification(&mut tx, &channel).await?;
    tx.audit(auth.event("channel.verify", "channel", channel.id))
        .await?;
    tx.commit().await?;
    wake_worker(&state);
    Ok((
        StatusCode::ACCEPTED,
        Json(view_of(&state, &auth, id).await?),
    ))
}

/// A channel and a client for its provider, with its credentials.
pub(crate) async fn provider_client(
    state: &AppState,
    auth: &Auth,
    id: ChannelId,
) -> Result<(Channel, Box<dyn Provider>), ApiError> {
    let mut tx = state.store.tenant_read(auth.tenant()?).await?;
    let channel = tx.get_channel(id).await?;
    let credentials = load_credentials(&mut tx, &state.vault, &channel).await?;
    let client = client_for(
        &channel,
        &credentials,
        ClientConfig {
            http: state.http.clone(),
            status_callback: None,
        },
    )?;
    Ok((channel, client))
}
