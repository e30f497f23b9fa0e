//! The HTTP interface: JSON under `/api/v1` with bearer API keys or session cookies, one
//! declarative authorization table, RFC 9457 problem details with stable codes, cursor
//! pagination, an OpenAPI 3.1 document generated from the handlers, and the operational
//! endpoints `/healthz`, `/readyz` and `/metrics`.

mod auth;
pub mod authz;
mod client;
mod inbox;
mod limits;
mod metrics;
mod problem;
mod redact;
mod routes;
mod throttle;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use axum::{Router, http::HeaderName};
use tokio::{net::TcpListener, sync::Notify};
use tokio_util::sync::CancellationToken;
use tower_http::{
    request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer},
    timeout::TimeoutLayer,
    trace::TraceLayer,
};
use waypost_store::Store;
use waypost_vault::Vault;

pub use auth::{ApiKeySecret, Auth, CSRF_HEADER, SESSION_COOKIE, random_bytes};
pub use client::{ClientAddr, client_address};
pub use metrics::{QueueGauges, install_recorder};
pub use problem::ApiError;
pub use routes::channels::secret_purpose as channel_secret_purpose;

/// Sign-in and session policy.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// A session unused this long ends.
    pub session_idle: Duration,
    /// A session ends this long after sign-in, used or not.
    pub session_absolute: Duration,
    /// Failed sign-ins per client address per hour before further attempts are refused.
    pub max_failures_per_ip: i64,
    /// Failed sign-ins per account per hour, from all addresses together, before further
    /// attempts are refused: the ceiling on a distributed guesser.
    pub max_failures_per_account: i64,
    /// Failed sign-ins to one account from one address before each further attempt from
    /// there must wait: 1 s, doubling with each failure, up to 15 minutes.
    pub failures_before_delay: i64,
    /// Mark the session cookie `Secure` (sent over HTTPS only).
    pub secure_cookies: bool,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            session_idle: Duration::from_secs(30 * 60),
            session_absolute: Duration::from_secs(12 * 3600),
            max_failures_per_ip: 100,
            max_failures_per_account: 100,
            failures_before_delay: 5,
            secure_cookies: true,
        }
    }
}

/// Where webhooks arrive and the platform's own Meta app.
#[derive(Debug, Clone, Default)]
pub struct WebhookConfig {
    /// The externally visible base URL, for the callback URLs shown to users.
    pub public_base_url: String,
    pub meta_app_secret: Option<String>,
    pub meta_verify_token: Option<String>,
    /// Gupshup signs nothing: when set, its webhooks are accepted only from these networks
    /// (compared with the client address, see `AppState::trusted_proxies`), besides the
    /// secret in each channel's URL.
    pub gupshup_allowed_ips: Vec<ipnet::IpNet>,
}

impl WebhookConfig {
    /// Whether a Gupshup webhook from `client` (unknown: `None`) may be accepted.
    pub fn gupshup_source_allowed(&self, client: Option<std::net::IpAddr>) -> bool {
        // An IPv4 client on a dual-stack socket arrives as ::ffff:a.b.c.d.
        let client = client.map(|ip| ip.to_canonical());
        self.gupshup_allowed_ips.is_empty()
            || client.is_some_and(|ip| self.gupshup_allowed_ips.iter().any(|net| net.contains(&ip)))
    }
}

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub vault: Arc<Vault>,
    pub auth: AuthConfig,
    /// Shared: the state is cloned for every request.
    pub webhooks: Arc<WebhookConfig>,
    /// Reverse proxies whose `X-Forwarded-For` names the client (`http.trusted_proxies`).
    pub trusted_proxies: Arc<[ipnet::IpNet]>,
    /// For calls to providers (Graph API, BSPs) and any other tenant-influenced
    /// destination: through the egress policy.
    pub http: waypost_outbound::provider::ProviderHttp,
    /// Group commit for inbound webhooks.
    inbox: inbox::InboxWriter,
    channel_secrets: inbox::ChannelSecrets,
    pub metrics: ::metrics_exporter_prometheus::PrometheusHandle,
    /// When set, `/metrics` answers only `Authorization: Bearer <token>`.
    pub metrics_token: Option<Arc<str>>,
    /// Queue gauges for `/metrics`, refreshed by [`QueueGauges::run`].
    pub queue_gauges: QueueGauges,
    /// Pokes this process's job worker when a request enqueues work.
    pub worker_wake: Option<Arc<Notify>>,
    /// Pokes this process's dispatcher when a request queues a message.
    pub dispatch_wake: Option<waypost_outbound::Waker>,
    openapi: Arc<utoipa::openapi::OpenApi>,
}

impl AppState {
    /// The state with the strictest egress policy (public addresses only); `waypost serve`
    /// replaces `http` with the configured one.
    pub fn new(store: Store, vault: Arc<Vault>, auth: AuthConfig) -> waypost_core::Result<Self> {
        let egress = waypost_egress::EgressClient::build(
            waypost_egress::EgressPolicy::default(),
            waypost_egress::ClientOptions {
                timeout: Some(Duration::from_secs(60)),
                ..Default::default()
            },
            Arc::new(waypost_egress::SystemLookup),
        )?;
        Ok(Self {
            store: store.clone(),
            vault,
            auth,
            webhooks: Arc::default(),
            trusted_proxies: Arc::new([]),
            inbox: inbox::InboxWriter::start(store.clone()),
            channel_secrets: inbox::ChannelSecrets::default(),
            http: waypost_outbound::provider::ProviderHttp::new(egress),
            metrics: install_recorder(),
            metrics_token: None,
            queue_gauges: QueueGauges::default(),
            worker_wake: None,
            dispatch_wake: None,
            openapi: Arc::new(openapi()),
        })
    }
}

const MAX_BODY_BYTES: usize = 1024 * 1024;
/// Media uploads may be as large as WhatsApp allows (documents: 100 MB).
const MAX_UPLOAD_BYTES: usize = 100 * 1024 * 1024;
const UPLOAD_ROUTE: &str = "/api/v1/media";

/// Caps request bodies at 1 MiB, except media uploads (100 MiB): a declared length over the
/// limit is refused at once, a chunked body when it crosses the limit. Axum's own 2 MB
/// default is lifted so this is the only limit.
async fn limit_body(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let limit =
        if request.uri().path() == UPLOAD_ROUTE && request.method() == axum::http::Method::POST {
            MAX_UPLOAD_BYTES
        } else {
            MAX_BODY_BYTES
        };
    let declared = request
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return axum::response::IntoResponse::into_response(ApiError(waypost_core::Error::new(
            waypost_core::ErrorCode::PayloadTooLarge,
            format!("the body may be at most {limit} bytes"),
        )));
    }
    let request =
        request.map(|body| axum::body::Body::new(http_body_util::Limited::new(body, limit)));
    next.run(request).await
}

/// Answers the framework's own bare error responses (a body over the limit read by an
/// extractor, a timeout) as problem documents like every other error.
async fn problem_for_bare_errors(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::http::StatusCode;
    use waypost_core::ErrorCode;
    let response = next.run(request).await;
    let is_problem = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/problem+json"));
    let code = match response.status() {
        _ if is_problem => return response,
        StatusCode::PAYLOAD_TOO_LARGE => ErrorCode::PayloadTooLarge,
        StatusCode::REQUEST_TIMEOUT | StatusCode::SERVICE_UNAVAILABLE => ErrorCode::Unavailable,
        StatusCode::UNSUPPORTED_MEDIA_TYPE | StatusCode::BAD_REQUEST => ErrorCode::InvalidRequest,
        _ => return response,
    };
    let detail = match code {
        ErrorCode::PayloadTooLarge => "the body is larger than this route accepts",
        ErrorCode::Unavailable => "the request took too long",
        _ => "the request is malformed",
    };
    axum::response::IntoResponse::into_response(ApiError(waypost_core::Error::new(code, detail)))
}

/// Headers every answer of the server carries (media downloads set a stricter policy).
async fn security_headers(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::http::{HeaderValue, header};
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    let defaults = [
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; frame-ancestors 'none'",
        ),
    ];
    for (name, value) in defaults {
        if !headers.contains_key(&name) {
            headers.insert(name, HeaderValue::from_static(value));
        }
    }
    response
}
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The OpenAPI document, as served at `/api/openapi.json`.
pub fn openapi() -> utoipa::openapi::OpenApi {
    routes::router().1
}

pub fn router(state: AppState) -> Router {
    let request_id = HeaderName::from_static("x-request-id");
    let (api, _) = routes::router();
    api.route_layer(axum::middleware::from_fn_with_state(
        state.clone(),
        authz::authorize,
    ))
    .route_layer(axum::middleware::from_fn(metrics::track_requests))
    .fallback(problem::not_found)
    .method_not_allowed_fallback(problem::method_not_allowed)
    .layer(axum::middleware::from_fn_with_state(
        state.clone(),
        client::resolve,
    ))
    .with_state(state)
    .layer(axum::extract::DefaultBodyLimit::disable())
    .layer(axum::middleware::from_fn(limit_body))
    .layer(TimeoutLayer::with_status_code(
        axum::http::StatusCode::SERVICE_UNAVAILABLE,
        REQUEST_TIMEOUT,
    ))
    .layer(axum::middleware::from_fn(problem_for_bare_errors))
    .layer(TraceLayer::new_for_http())
    .layer(PropagateRequestIdLayer::new(request_id.clone()))
    .layer(SetRequestIdLayer::new(request_id, MakeRequestUuid))
}

/// Serves `app` (the API router, possibly with more merged in) until `shutdown` fires, then
/// stops accepting and finishes in-flight requests.
pub async fn serve_app(
    listener: TcpListener,
    app: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = app.layer(axum::middleware::from_fn(security_headers));
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move { shutdown.cancelled().await })
    .await
}

/// Serves until `shutdown` fires, then stops accepting and finishes in-flight requests.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    serve_app(listener, router(state), shutdown).await
}
