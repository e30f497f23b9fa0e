//! The HTTP interface: JSON under `/api/v1` with bearer API keys, RFC 9457 problem details
//! with stable codes, cursor pagination, an OpenAPI 3.1 document generated from the handlers,
//! and the operational endpoints `/healthz`, `/readyz` and `/metrics`.

mod auth;
mod metrics;
mod problem;
mod routes;

use std::{sync::Arc, time::Duration};

use axum::{Router, http::HeaderName};
use tokio::{net::TcpListener, sync::Notify};
use tokio_util::sync::CancellationToken;
use tower_http::{
    limit::RequestBodyLimitLayer,
    request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer},
    timeout::TimeoutLayer,
    trace::TraceLayer,
};
use waypost_store::Store;

pub use auth::{ApiKeySecret, Auth};
pub use metrics::install_recorder;
pub use problem::ApiError;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub metrics: ::metrics_exporter_prometheus::PrometheusHandle,
    /// Pokes this process's job worker when a request enqueues work.
    pub worker_wake: Option<Arc<Notify>>,
}

const MAX_BODY_BYTES: usize = 1024 * 1024;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The OpenAPI document, as served at `/api/openapi.json`.
pub fn openapi() -> utoipa::openapi::OpenApi {
    routes::router().split_for_parts().1
}

pub fn router(state: AppState) -> Router {
    let request_id = HeaderName::from_static("x-request-id");
    let (api, openapi) = routes::router().split_for_parts();
    let openapi = Arc::new(openapi);
    api.route(
        "/api/openapi.json",
        axum::routing::get(move || {
            let doc = openapi.clone();
            async move { axum::Json(doc.as_ref().clone()) }
        }),
    )
    .route_layer(axum::middleware::from_fn(metrics::track_requests))
    .fallback(problem::not_found)
    .method_not_allowed_fallback(problem::method_not_allowed)
    .with_state(state)
    .layer(RequestBodyLimitLayer::new(MAX_BODY_BYTES))
    .layer(TimeoutLayer::with_status_code(
        axum::http::StatusCode::SERVICE_UNAVAILABLE,
        REQUEST_TIMEOUT,
    ))
    .layer(TraceLayer::new_for_http())
    .layer(PropagateRequestIdLayer::new(request_id.clone()))
    .layer(SetRequestIdLayer::new(request_id, MakeRequestUuid))
}

/// Serves until `shutdown` fires, then stops accepting and finishes in-flight requests.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}
