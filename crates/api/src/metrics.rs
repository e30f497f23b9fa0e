use std::{fmt::Write, sync::OnceLock, time::Instant};

use axum::{
    extract::{MatchedPath, Request},
    middleware::Next,
    response::Response,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use waypost_core::Timestamp;
use waypost_store::Store;

const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Installs the process-wide Prometheus recorder (once; later calls return the same handle).
pub fn install_recorder() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .unwrap_or_else(|_| PrometheusBuilder::new());
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder was installed first; ours then records nothing,
            // which must not stop the server.
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed");
            }
            handle
        })
        .clone()
}

/// Counts requests and records their latency by route template (never the raw path, which
/// would carry ids and explode the label space).
pub async fn track_requests(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let method = request.method().to_string();
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!("waypost_http_requests_total", "method" => method.clone(), "route" => route.clone(), "status" => status)
        .increment(1);
    metrics::histogram!("waypost_http_request_duration_seconds", "method" => method, "route" => route)
        .record(started.elapsed().as_secs_f64());
    response
}

/// The recorder's metrics plus queue depth and age read from the database at scrape time,
/// so every process reports the shared queue exactly and no gauge goes stale.
pub async fn render(handle: &PrometheusHandle, store: &Store) -> String {
    let mut text = handle.render();
    match store.queue_stats().await {
        Ok(stats) => {
            let now = Timestamp::now().as_millis();
            let _ = writeln!(
                text,
                "# HELP waypost_jobs Jobs in the queue by kind and state."
            );
            let _ = writeln!(text, "# TYPE waypost_jobs gauge");
            for s in &stats {
                let _ = writeln!(
                    text,
                    "waypost_jobs{{kind=\"{}\",state=\"{}\"}} {}",
                    escape(&s.kind),
                    s.state,
                    s.count
                );
            }
            let _ = writeln!(
                text,
                "# HELP waypost_jobs_oldest_age_seconds Age of the oldest job by kind and state."
            );
            let _ = writeln!(text, "# TYPE waypost_jobs_oldest_age_seconds gauge");
            for s in &stats {
                let age = (now - s.oldest_created_at.as_millis()).max(0) as f64 / 1000.0;
                let _ = writeln!(
                    text,
                    "waypost_jobs_oldest_age_seconds{{kind=\"{}\",state=\"{}\"}} {age}",
                    escape(&s.kind),
                    s.state
                );
            }
            let _ = writeln!(
                text,
                "# TYPE waypost_database_up gauge\nwaypost_database_up 1"
            );
        }
        Err(err) => {
            tracing::warn!(error = %err, "reading queue statistics failed");
            let _ = writeln!(
                text,
                "# TYPE waypost_database_up gauge\nwaypost_database_up 0"
            );
        }
    }
    text
}

fn escape(label: &str) -> String {
    label
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
