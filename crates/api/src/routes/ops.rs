use axum::{Json, extract::State, http::StatusCode, response::IntoResponse};
use serde_json::json;
use waypost_store::Readiness;

use crate::AppState;

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

/// Prometheus metrics: requests and latency by route, job queue depth and age by kind.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = OK, description = "Prometheus text exposition format", content_type = "text/plain")))]
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let text = crate::metrics::render(&state.metrics, &state.store).await;
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        text,
    )
}

/// This document.
#[utoipa::path(get, path = "/api/openapi.json", tag = "operations",
    responses((status = OK, description = "The OpenAPI 3.1 document")))]
pub async fn openapi_json(State(state): State<AppState>) -> impl IntoResponse {
    Json(state.openapi.as_ref().clone())
}
