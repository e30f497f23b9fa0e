use axum::{Json, extract::State, http::StatusCode};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use serde::{Deserialize, Serialize};
use waypost_core::{ChannelId, Error, Page, PageRequest};
use waypost_store::{Channel, NewChannel, SecretStatus};

use crate::{
    ApiError, AppState,
    auth::{Auth, random_bytes},
    problem::{ApiJson, ApiPath, ApiQuery, Problem},
};

pub fn secret_purpose(channel: ChannelId, name: &str) -> String {
    format!("channel:{channel}:{name}")
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateChannel {
    /// `meta` (the Cloud API). BSPs (`360dialog`, `twilio`, `gupshup`, `bird`) are not wired yet.
    #[serde(default = "default_provider")]
    pub provider: String,
    pub name: String,
    /// Meta's phone number id: routes webhooks and sends.
    pub phone_number_id: String,
    pub waba_id: Option<String>,
    /// The number as people dial it, e.g. `+15550783881`.
    pub display_number: Option<String>,
    /// 80 (default), 1000, or 20 for numbers shared with the WhatsApp Business app.
    #[serde(default = "default_mps")]
    pub throughput_mps: i64,
    /// Point the channel at a simulator or proxy; default Meta's Graph API.
    pub graph_api_base_url: Option<String>,
    pub graph_api_version: Option<String>,
    /// Write-only.
    pub access_token: String,
    /// Write-only; the channel's own Meta app secret, which signs its webhooks.
    pub app_secret: String,
    /// Write-only; generated when omitted.
    pub verify_token: Option<String>,
}

fn default_provider() -> String {
    "meta".into()
}

fn default_mps() -> i64 {
    80
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ChannelCredentials {
    pub access_token: SecretStatus,
    pub app_secret: SecretStatus,
}

/// What to paste into Meta's app dashboard (WhatsApp → Configuration → Webhook).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct WebhookSetup {
    pub callback_url: String,
    /// Paste as the "Verify token". Shown so the setup can be completed; it only authorizes
    /// Meta's subscription handshake.
    pub verify_token: String,
    /// Subscribe to these webhook fields.
    pub fields: Vec<&'static str>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ChannelView {
    #[serde(flatten)]
    pub channel: Channel,
    pub credentials: ChannelCredentials,
    pub webhook: WebhookSetup,
}

async fn view(state: &AppState, auth: &Auth, channel: Channel) -> Result<ChannelView, ApiError> {
    let mut tx = state.store.tenant_read(auth.tenant()?).await?;
    let credentials = ChannelCredentials {
        access_token: state
            .vault
            .status(&mut tx, &secret_purpose(channel.id, "access_token"))
            .await?,
        app_secret: state
            .vault
            .status(&mut tx, &secret_purpose(channel.id, "app_secret"))
            .await?,
    };
    let verify_token = state
        .vault
        .reveal(&mut tx, &secret_purpose(channel.id, "verify_token"))
        .await?
        .map(|t| t.as_str().to_string())
        .unwrap_or_default();
    let webhook = WebhookSetup {
        callback_url: format!(
            "{}/webhooks/meta/{}",
            state.webhooks.public_base_url.trim_end_matches('/'),
            channel.id
        ),
        verify_token,
        fields: vec![
            "messages",
            "message_template_status_update",
            "message_template_quality_update",
            "user_preferences",
            "account_update",
            "phone_number_quality_update",
        ],
    };
    Ok(ChannelView {
        channel,
        credentials,
        webhook,
    })
}

fn validate(body: &CreateChannel) -> Result<(), Error> {
    if body.provider != "meta" {
        return Err(Error::validation(format!(
            "provider {:?} is not supported yet; use meta (360dialog, twilio, gupshup and bird are planned)",
            body.provider
        )));
    }
    if body.name.trim().is_empty() || body.name.len() > 200 {
        return Err(Error::validation("name must be 1 to 200 characters"));
    }
    if body.phone_number_id.is_empty()
        || !body.phone_number_id.bytes().all(|b| b.is_ascii_digit())
        || body.phone_number_id.len() > 32
    {
        return Err(Error::validation(
            "phone_number_id must be Meta's numeric phone number id",
        ));
    }
    if !matches!(body.throughput_mps, 20 | 80 | 1000) {
        return Err(Error::validation("throughput_mps must be 80, 1000 or 20"));
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
    for (field, value) in [
        ("access_token", &body.access_token),
        ("app_secret", &body.app_secret),
    ] {
        if value.trim().is_empty() || value.len() > 4096 {
            return Err(Error::validation(format!(
                "{field} must be 1 to 4096 characters"
            )));
        }
    }
    Ok(())
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
    validate(&body)?;
    let tenant = auth.tenant()?;
    let verify_token = match body.verify_token.clone() {
        Some(token) if !token.trim().is_empty() => token,
        _ => URL_SAFE_NO_PAD.encode(random_bytes::<24>()?),
    };
    let platform = state.store.platform().await?;
    let (mut tx, channel) = platform
        .create_channel(
            tenant,
            NewChannel {
                provider: body.provider.clone(),
                name: body.name.trim().to_string(),
                phone_number_id: Some(body.phone_number_id.clone()),
                waba_id: body.waba_id.clone(),
                display_number: body.display_number.clone(),
                throughput_mps: body.throughput_mps,
                graph_api_base_url: body
                    .graph_api_base_url
                    .clone()
                    .unwrap_or_else(|| "https://graph.facebook.com".into()),
                graph_api_version: body
                    .graph_api_version
                    .clone()
                    .unwrap_or_else(|| "v25.0".into()),
            },
        )
        .await?;
    for (name, value) in [
        ("access_token", &body.access_token),
        ("app_secret", &body.app_secret),
        ("verify_token", &verify_token),
    ] {
        state
            .vault
            .put_secret(&mut tx, &secret_purpose(channel.id, name), value)
            .await?;
    }
    tx.audit(auth.event("channel.create", "channel", channel.id))
        .await?;
    tx.audit(auth.event("secret.update", "channel", channel.id))
        .await?;
    tx.commit().await?;
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
    Ok(Json(tx.list_channels(limit, cursor).await?))
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
    let channel = {
        let mut tx = state.store.tenant_read(auth.tenant()?).await?;
        tx.get_channel(id).await?
    };
    Ok(Json(view(&state, &auth, channel).await?))
}
