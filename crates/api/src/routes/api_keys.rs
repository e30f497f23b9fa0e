use axum::{Json, extract::State, http::StatusCode};
use serde::{Deserialize, Serialize};
use waypost_core::{ApiKeyId, Page, PageRequest, Role, Timestamp};
use waypost_store::{ApiKey, NewApiKey};

use crate::{
    ApiError, ApiKeySecret, AppState, Auth,
    limits::at_most,
    problem::{ApiJson, ApiPath, ApiQuery, Problem},
};

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateApiKey {
    /// A label to recognise the key by; 1 to 200 characters.
    pub name: String,
    pub role: Role,
    /// Optional expiry, RFC 3339 (e.g. `2027-01-01T00:00:00Z`); at most 64 characters.
    pub expires_at: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CreatedApiKey {
    #[serde(flatten)]
    pub api_key: ApiKey,
    /// The full key. Shown only in this response; store it now.
    pub key: String,
}

fn parse_expiry(raw: Option<&str>) -> Result<Option<Timestamp>, ApiError> {
    let Some(raw) = raw else { return Ok(None) };
    at_most("expires_at", raw, 64)?;
    let parsed = time::OffsetDateTime::parse(raw, &time::format_description::well_known::Rfc3339)
        .map_err(|_| {
        waypost_core::Error::validation("expires_at must be an RFC 3339 instant")
    })?;
    let millis = i64::try_from(parsed.unix_timestamp_nanos() / 1_000_000)
        .map_err(|_| waypost_core::Error::validation("expires_at is out of range"))?;
    Ok(Some(Timestamp::from_millis(millis)))
}

/// API keys of the caller's tenant, oldest first.
#[utoipa::path(get, path = "/api/v1/api-keys", tag = "api-keys",
    params(PageRequest),
    responses(
        (status = OK, body = Page<ApiKey>),
        (status = UNAUTHORIZED, body = Problem, content_type = "application/problem+json"),
        (status = FORBIDDEN, body = Problem, content_type = "application/problem+json")
    ))]
pub async fn list_api_keys(
    auth: Auth,
    State(state): State<AppState>,
    ApiQuery(page): ApiQuery<PageRequest>,
) -> Result<Json<Page<ApiKey>>, ApiError> {
    let (limit, cursor) = page.parse()?;
    let mut tx = state.store.tenant_read(auth.tenant()?).await?;
    let page = tx.list_api_keys(limit, cursor).await?;
    tx.rollback().await?;
    Ok(Json(page))
}

/// Creates an API key. The response is the only time the full key is shown.
#[utoipa::path(post, path = "/api/v1/api-keys", tag = "api-keys",
    request_body = CreateApiKey,
    responses(
        (status = CREATED, body = CreatedApiKey),
        (status = UNPROCESSABLE_ENTITY, body = Problem, content_type = "application/problem+json"),
        (status = FORBIDDEN, body = Problem, content_type = "application/problem+json")
    ))]
pub async fn create_api_key(
    auth: Auth,
    State(state): State<AppState>,
    ApiJson(body): ApiJson<CreateApiKey>,
) -> Result<(StatusCode, Json<CreatedApiKey>), ApiError> {
    let tenant = auth.tenant()?;
    if body.role == Role::Owner && auth.role != Some(Role::Owner) {
        return Err(ApiError(waypost_core::Error::new(
            waypost_core::ErrorCode::Forbidden,
            "only an owner can create an owner key",
        )));
    }
    let expires_at = parse_expiry(body.expires_at.as_deref())?;
    let secret = ApiKeySecret::generate(tenant)?;
    let mut tx = state.store.tenant(tenant).await?;
    let api_key = tx
        .create_api_key(NewApiKey {
            prefix: secret.prefix,
            secret_hash: secret.secret_hash,
            name: body.name,
            role: body.role,
            expires_at,
        })
        .await?;
    tx.audit(auth.event("api_key.create", "api_key", api_key.id))
        .await?;
    tx.commit().await?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedApiKey {
            api_key,
            key: secret.token,
        }),
    ))
}

/// One API key. Keys of other tenants answer 404.
#[utoipa::path(get, path = "/api/v1/api-keys/{id}", tag = "api-keys",
    params(("id" = ApiKeyId, Path, description = "API key id")),
    responses(
        (status = OK, body = ApiKey),
        (status = NOT_FOUND, body = Problem, content_type = "application/problem+json")
    ))]
pub async fn get_api_key(
    auth: Auth,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<ApiKeyId>,
) -> Result<Json<ApiKey>, ApiError> {
    let mut tx = state.store.tenant_read(auth.tenant()?).await?;
    let key = tx.get_api_key(id).await?;
    tx.rollback().await?;
    Ok(Json(key))
}

/// Revokes an API key at once; it can never be used again.
#[utoipa::path(delete, path = "/api/v1/api-keys/{id}", tag = "api-keys",
    params(("id" = ApiKeyId, Path, description = "API key id")),
    responses(
        (status = OK, body = ApiKey, description = "The revoked key"),
        (status = NOT_FOUND, body = Problem, content_type = "application/problem+json"),
        (status = CONFLICT, body = Problem, content_type = "application/problem+json")
    ))]
pub async fn revoke_api_key(
    auth: Auth,
    State(state): State<AppState>,
    ApiPath(id): ApiPath<ApiKeyId>,
) -> Result<Json<ApiKey>, ApiError> {
    let mut tx = state.store.tenant(auth.tenant()?).await?;
    if tx.get_api_key(id).await?.role == Role::Owner && auth.role != Some(Role::Owner) {
        return Err(ApiError(waypost_core::Error::new(
            waypost_core::ErrorCode::Forbidden,
            "only an owner can revoke an owner key",
        )));
    }
    let key = tx.revoke_api_key(id).await?;
    tx.audit(auth.event("api_key.revoke", "api_key", key.id))
        .await?;
    tx.commit().await?;
    Ok(Json(key))
}
