use axum::{Json, extract::State};
use serde::{Deserialize, Serialize};
use waypost_core::{Error, Timestamp};
use waypost_store::{AiSettingsRecord, SecretStatus, TenantSettings};

use crate::{
    ApiError, AppState,
    auth::Auth,
    limits::{NAME_MAX, at_most, at_most_opt},
    problem::{ApiJson, Problem},
};

/// The tenant's policies.
#[utoipa::path(get, path = "/api/v1/settings", tag = "settings",
    responses((status = OK, body = TenantSettings)))]
pub async fn get_settings(
    State(state): State<AppState>,
    auth: Auth,
) -> Result<Json<TenantSettings>, ApiError> {
    let mut tx = state.store.tenant_read(auth.tenant()?).await?;
    Ok(Json(tx.tenant_settings().await?))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateSettings {
    /// 30 to 3650 days.
    pub audit_retention_days: i64,
    /// 1 to 365 days; default 90.
    pub raw_payload_retention_days: Option<i64>,
}

/// Changes the tenant's policies.
#[utoipa::path(put, path = "/api/v1/settings", tag = "settings",
    request_body = UpdateSettings,
    responses((status = OK, body = TenantSettings), (status = UNPROCESSABLE_ENTITY, body = Problem, content_type = "application/problem+json")))]
pub async fn put_settings(
    State(state): State<AppState>,
    auth: Auth,
    ApiJson(body): ApiJson<UpdateSettings>,
) -> Result<Json<TenantSettings>, ApiError> {
    if !(30..=3650).contains(&body.audit_retention_days) {
        return Err(Error::validation("audit_retention_days must be between 30 and 3650").into());
    }
    let raw_days = body.raw_payload_retention_days.unwrap_or(90);
    if !(1..=365).contains(&raw_days) {
        return Err(
            Error::validation("raw_payload_retention_days must be between 1 and 365").into(),
        );
    }
    let settings = TenantSettings {
        audit_retention_days: body.audit_retention_days,
        raw_payload_retention_days: raw_days,
    };
    let tenant = auth.tenant()?;
    let mut tx = state.store.tenant(tenant).await?;
    tx.put_tenant_settings(&settings).await?;
    tx.audit(auth.event("settings.update", "tenant", tenant))
        .await?;
    tx.commit().await?;
    Ok(Json(settings))
}

const AI_KEY_PURPOSE: &str = "ai.api_key";
/// Browsers and proxies stop at about this.
const URL_MAX: usize = 2048;
const API_KEY_MAX: usize = 4096;

/// AI replies through an OpenAI-compatible API or Flowise. The API key is write-only.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AiSettings {
    /// `openai_compatible` or `flowise`.
    pub provider: String,
    pub base_url: String,
    pub model: String,
    pub enabled: bool,
    /// Whether a key is set, and its last four characters; never the key.
    pub api_key: SecretStatus,
    pub updated_at: Option<Timestamp>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateAiSettings {
    /// `openai_compatible` or `flowise`.
    pub provider: String,
    /// An absolute http(s) URL of at most 2048 characters.
    pub base_url: String,
    /// 1 to 200 characters.
    pub model: String,
    pub enabled: bool,
    /// Write-only, 1 to 4096 characters. Omit to keep the stored key.
    pub api_key: Option<String>,
}

async fn read_ai(state: &AppState, auth: &Auth) -> Result<AiSettings, ApiError> {
    let mut tx = state.store.tenant_read(auth.tenant()?).await?;
    let record = tx.ai_settings().await?;
    let api_key = state.vault.status(&mut tx, AI_KEY_PURPOSE).await?;
    Ok(match record {
        Some(r) => AiSettings {
            provider: r.provider,
            base_url: r.base_url,
            model: r.model,
            enabled: r.enabled,
            api_key,
            updated_at: Some(r.updated_at),
        },
        None => AiSettings {
            provider: "openai_compatible".into(),
            base_url: String::new(),
            model: String::new(),
            enabled: false,
            api_key,
            updated_at: None,
        },
    })
}

#[utoipa::path(get, path = "/api/v1/settings/ai", tag = "settings",
    responses((status = OK, body = AiSettings)))]
pub async fn get_ai_settings(
    State(state): State<AppState>,
    auth: Auth,
) -> Result<Json<AiSettings>, ApiError> {
    Ok(Json(read_ai(&state, &auth).await?))
}

/// Sets the AI provider. The key is encrypted at rest and never returned.
#[utoipa::path(put, path = "/api/v1/settings/ai", tag = "settings",
    request_body = UpdateAiSettings,
    responses((status = OK, body = AiSettings), (status = UNPROCESSABLE_ENTITY, description = "`validation_failed`, or `egress_refused` for a base_url on an internal address", body = Problem, content_type = "application/problem+json")))]
pub async fn put_ai_settings(
    State(state): State<AppState>,
    auth: Auth,
    ApiJson(body): ApiJson<UpdateAiSettings>,
) -> Result<Json<AiSettings>, ApiError> {
    if !matches!(body.provider.as_str(), "openai_compatible" | "flowise") {
        return Err(Error::validation("provider must be openai_compatible or flowise").into());
    }
    at_most("base_url", &body.base_url, URL_MAX)?;
    let url = url::Url::parse(&body.base_url)
        .map_err(|_| Error::validation("base_url must be an absolute URL"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(Error::validation("base_url must be an http or https URL").into());
    }
    // Refused now rather than at the first AI call: it would be refused then too.
    state.http.client.check(&body.base_url).await?;
    if body.model.trim().is_empty() {
        return Err(Error::validation("model must be 1 to 200 characters").into());
    }
    at_most("model", &body.model, NAME_MAX)?;
    if body.api_key.as_ref().is_some_and(|k| k.trim().is_empty()) {
        return Err(Error::validation("api_key must be 1 to 4096 characters").into());
    }
    at_most_opt("api_key", body.api_key.as_deref(), API_KEY_MAX)?;
    let tenant = auth.tenant()?;
    let mut tx = state.store.tenant(tenant).await?;
    let mut secret_id = tx.ai_settings().await?.and_then(|r| r.api_key_secret_id);
    if let Some(key) = &body.api_key {
        secret_id = Some(state.vault.put_secret(&mut tx, AI_KEY_PURPOSE, key).await?);
        tx.audit(auth.event("secret.update", "secret", AI_KEY_PURPOSE))
            .await?;
    }
    tx.put_ai_settings(&AiSettingsRecord {
        provider: body.provider,
        base_url: body.base_url,
        model: body.model.trim().to_string(),
        enabled: body.enabled,
        api_key_secret_id: secret_id,
        updated_at: Timestamp::now(),
    })
    .await?;
    tx.audit(auth.event("settings.update", "ai_settings", tenant))
        .await?;
    tx.commit().await?;
    Ok(Json(read_ai(&state, &auth).await?))
}
