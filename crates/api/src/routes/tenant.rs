use axum::{Json, extract::State};
use waypost_store::Tenant;

use crate::{ApiError, AppState, Auth};

/// The tenant the calling API key belongs to.
#[utoipa::path(get, path = "/api/v1/tenant", tag = "tenant",
    responses(
        (status = OK, body = Tenant),
        (status = UNAUTHORIZED, body = crate::problem::Problem, content_type = "application/problem+json")
    ))]
pub async fn get_tenant(
    auth: Auth,
    State(state): State<AppState>,
) -> Result<Json<Tenant>, ApiError> {
    let mut tx = state.store.platform_read().await?;
    let tenant = tx.get_tenant(auth.tenant()?).await?;
    tx.rollback().await?;
    Ok(Json(tenant))
}
