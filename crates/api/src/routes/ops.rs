use axum::{
    Json,
    extract::State,
    http::{HeaderMap, StatusCode},
    response::IntoResponse,
};
use serde_json::json;
use waypost_core::{Error, ErrorCode};
use waypost_store::Readiness;

use crate::{ApiError, AppState, problem::Problem};

/// Liveness: the process is up and serving HTTP. Never touches the database.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = OK, description = "The process is alive")))]
pub async fn healthz() -> impl IntoResponse {
    Json(json!({ "status": "ok" }))
}

/// Readiness: the database answers and its schema is at this binary's version.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses(
        (status = OK, description = "Ready to serve traffic"),
        (status = SERVICE_UNAVAILABLE, description = "Database unreachable or migrations not applied")
    ))]
pub async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let readiness: Readiness = state.store.readiness().await;
    let status = if readiness.is_ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "status": if readiness.is_ready() { "ready" } else { "not_ready" },
        "database": readiness,
    });
    (status, Json(body))
}

/// Prometheus metrics: requests and latency by route, job queue depth and age by kind (read
/// in the background every few seconds; a scrape never queries the database). When
/// `metrics.token` is set, `Authorization: Bearer <token>` is required.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses(
        (status = OK, description = "Prometheus text exposition format", content_type = "text/plain"),
        (status = UNAUTHORIZED, body = Problem, content_type = "application/problem+json",
            description = "`metrics.token` is set and the request does not present it")
    ))]
pub async fn metrics(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<impl IntoResponse, ApiError> {
    if let Some(token) = state.metrics_token.as_deref()
        && !crate::metrics::token_matches(&headers, token)
    {
        return Err(ApiError(Error::new(
            ErrorCode::Unauthorized,
            "the metrics need Authorization: Bearer <metrics.token>",
        )));
    }
    let text = crate::metrics::render(&state.metrics, &state.queue_gauges);
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        text,
    ))
}

/// This document.
#[utoipa::path(get, path = "/api/openapi.json", tag = "operations",
    responses((status = OK, description = "The OpenAPI 3.1 document")))]
pub async fn openapi_json(State(state): State<AppState>) -> impl IntoResponse {
    Json(state.openapi.as_ref().clone())
}
