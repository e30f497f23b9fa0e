use axum::{Json, extract::State, http::StatusCode};
use serde::{Deserialize, Serialize};
use waypost_core::{Error, ErrorCode, TenantId, Timestamp};
use waypost_store::Tenant;

use crate::{
    ApiError, AppState,
    auth::Auth,
    limits::{NOTE_MAX, at_most_opt},
    problem::{ApiJson, Problem},
};

/// How long an operator's unmasked view lasts before they must give a reason again.
const UNMASK_FOR: std::time::Duration = std::time::Duration::from_secs(3600);

/// Every tenant on this server.
#[utoipa::path(get, path = "/api/v1/operator/tenants", tag = "operator",
    responses((status = OK, body = Vec<Tenant>), (status = FORBIDDEN, body = Problem, content_type = "application/problem+json")))]
pub async fn list_tenants(State(state): State<AppState>) -> Result<Json<Vec<Tenant>>, ApiError> {
    let mut tx = state.store.platform_read().await?;
    Ok(Json(tx.list_tenants().await?))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTenant {
    /// 1 to 200 characters.
    pub name: String,
}

/// Creates a tenant.
#[utoipa::path(post, path = "/api/v1/operator/tenants", tag = "operator",
    request_body = CreateTenant,
    responses((status = CREATED, body = Tenant)))]
pub async fn create_tenant(
    State(state): State<AppState>,
    auth: Auth,
    ApiJson(body): ApiJson<CreateTenant>,
) -> Result<(StatusCode, Json<Tenant>), ApiError> {
    let mut tx = state.store.platform().await?;
    let tenant = tx.create_tenant(&body.name).await?;
    tx.audit(auth.event("tenant.create", "tenant", tenant.id))
        .await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(tenant)))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OpenTenant {
    pub tenant_id: TenantId,
    /// Why the operator looks; at most 500 characters. Required (at least 10 characters) to
    /// unmask personal data.
    pub reason: Option<String>,
    /// See phone numbers and message bodies unredacted, for one hour.
    #[serde(default)]
    pub unmask: bool,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct OperatorAccess {
    pub tenant_id: TenantId,
    pub unmasked_until: Option<Timestamp>,
}

/// Opens a tenant's data for this operator session, read-only and redacted unless `unmask`
/// is set with a reason. The access and the reason are recorded in the tenant's audit trail.
#[utoipa::path(post, path = "/api/v1/operator/access", tag = "operator",
    request_body = OpenTenant,
    responses((status = OK, body = OperatorAccess), (status = UNPROCESSABLE_ENTITY, body = Problem, content_type = "application/problem+json")))]
pub async fn open_tenant(
    State(state): State<AppState>,
    auth: Auth,
    ApiJson(body): ApiJson<OpenTenant>,
) -> Result<Json<OperatorAccess>, ApiError> {
    at_most_opt("reason", body.reason.as_deref(), NOTE_MAX)?;
    let reason = body
        .reason
        .as_deref()
        .map(str::trim)
        .filter(|r| !r.is_empty());
    if body.unmask && reason.is_none_or(|r| r.chars().count() < 10) {
        return Err(Error::validation(
            "unmasking personal data needs a reason of at least 10 characters",
        )
        .into());
    }
    let session = auth.session.as_ref().ok_or_else(|| {
        ApiError(Error::new(
            ErrorCode::Forbidden,
            "operators act through a signed-in session",
        ))
    })?;
    let mut tx = state.store.platform().await?;
    let tenant = tx.get_tenant(body.tenant_id).await?;
    let until = body.unmask.then(|| Timestamp::now().plus(UNMASK_FOR));
    tx.set_session_scope(&session.id, Some(tenant.id), until)
        .await?;
    tx.commit().await?;
    let mut event = auth.event(
        if body.unmask {
            "operator.unmask"
        } else {
            "operator.access"
        },
        "tenant",
        tenant.id,
    );
    event.reason = reason.map(str::to_string);
    let mut tx = state.store.tenant(tenant.id).await?;
    tx.audit(event).await?;
    tx.commit().await?;
    Ok(Json(OperatorAccess {
        tenant_id: tenant.id,
        unmasked_until: until,
    }))
}
