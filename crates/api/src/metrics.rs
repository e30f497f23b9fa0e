use std::{
    fmt::Write,
    sync::{Arc, OnceLock, RwLock},
    time::{Duration, Instant},
};

use axum::{
    extract::{MatchedPath, Request},
    http::{HeaderMap, header::AUTHORIZATION},
    middleware::Next,
    response::Response,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio_util::sync::CancellationToken;
use waypost_core::Timestamp;
use waypost_store::{KindStats, Store};

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

/// Queue depth and age by kind and state, read from the database by a background task (one in
/// every process serving HTTP) so that a scrape only renders: scraping, however often and by
/// whomever, never reaches the database.
#[derive(Clone, Default)]
pub struct QueueGauges(Arc<RwLock<Option<Snapshot>>>);

struct Snapshot {
    /// `None`: the last read failed.
    stats: Option<Vec<KindStats>>,
    taken_at: Timestamp,
}

impl QueueGauges {
    /// Reads the queue statistics now.
    pub async fn refresh(&self, store: &Store) {
        let stats = store
            .queue_stats()
            .await
            .inspect_err(|err| tracing::warn!(error = %err, "reading queue statistics failed"))
            .ok();
        let snapshot = Snapshot {
            stats,
            taken_at: Timestamp::now(),
        };
        if let Ok(mut slot) = self.0.write() {
            *slot = Some(snapshot);
        }
    }

    /// Refreshes every `every` until `shutdown` fires.
    pub async fn run(self, store: Store, every: Duration, shutdown: CancellationToken) {
        loop {
            self.refresh(&store).await;
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                () = shutdown.cancelled() => return,
            }
        }
    }

    fn render(&self, text: &mut String) {
        let Ok(slot) = self.0.read() else { return };
        let Some(snapshot) = slot.as_ref() else {
            return;
        };
        let now = Timestamp::now().as_millis();
        let seconds = |since: Timestamp| (now - since.as_millis()).max(0) as f64 / 1000.0;
        let _ = writeln!(
            text,
            "# HELP waypost_queue_stats_age_seconds How long ago the job-queue gauges were read.\n\
             # TYPE waypost_queue_stats_age_seconds gauge\n\
             waypost_queue_stats_age_seconds {}",
            seconds(snapshot.taken_at)
        );
        let Some(stats) = &snapshot.stats else {
            let _ = writeln!(
                text,
                "# TYPE waypost_database_up gauge\nwaypost_database_up 0"
            );
            return;
        };
        let _ = writeln!(
            text,
            "# HELP waypost_jobs Jobs in the queue by kind and state.\n# TYPE waypost_jobs gauge"
        );
        for s in stats {
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
            "# HELP waypost_jobs_oldest_age_seconds Age of the oldest job by kind and state.\n\
             # TYPE waypost_jobs_oldest_age_seconds gauge"
        );
        for s in stats {
            let _ = writeln!(
                text,
                "waypost_jobs_oldest_age_seconds{{kind=\"{}\",state=\"{}\"}} {}",
                escape(&s.kind),
                s.state,
                seconds(s.oldest_created_at)
            );
        }
        let _ = writeln!(
            text,
            "# TYPE waypost_database_up gauge\nwaypost_database_up 1"
        );
    }
}

/// The recorder's metrics plus the last queue gauges read in the background.
pub fn render(handle: &PrometheusHandle, gauges: &QueueGauges) -> String {
    let mut text = handle.render();
    gauges.render(&mut text);
    text
}

/// `Authorization: Bearer <token>` against the configured token, in constant time (both sides
/// hashed first, so not even the length leaks).
pub fn token_matches(headers: &HeaderMap, expected: &str) -> bool {
    let presented = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let digest = |s: &str| Sha256::digest(s.trim().as_bytes());
    bool::from(digest(presented).ct_eq(&digest(expected)))
}

fn escape(label: &str) -> String {
    label
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
