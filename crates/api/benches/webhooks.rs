//! Signed Meta webhooks durably acknowledged per second, with latency percentiles, at 64
//! concurrent connections, on SQLite and (with `WAYPOST_TEST_DATABASE_URL`) PostgreSQL. In the
//! same run, a bare handler that only verifies the signature is the baseline. After each run
//! every acknowledged webhook is counted in the inbox: none may be missing.
//!
//! `cargo bench -p waypost-api --bench webhooks` (see BENCHMARKS.md). Tunables:
//! `BENCH_SECONDS` (default 10), `BENCH_CONCURRENCY` (default 64), `BENCH_ENGINES` (default
//! `sqlite,postgres`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{body::Bytes, http::HeaderMap, routing::post};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio_util::sync::CancellationToken;
use waypost_api::{AppState, AuthConfig};
use waypost_providers::signature::{sign_meta, verify_meta};
use waypost_store::{
    Store,
    testkit::{Flavor, TestDb, meta_channel},
};
use waypost_vault::{MasterKey, Vault};

/// The `waypost` binary's allocator, so the bench measures what ships.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const SECRET: &str = "bench-app-secret";

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn body(i: u64) -> Vec<u8> {
    format!(
        r#"{{"object":"whatsapp_business_account","entry":[{{"id":"102290129340398","changes":[{{"field":"messages","value":{{"messaging_product":"whatsapp","metadata":{{"display_phone_number":"15550783881","phone_number_id":"106540352242922"}},"contacts":[{{"profile":{{"name":"Load"}},"wa_id":"16505551234"}}],"messages":[{{"from":"16505551234","id":"wamid.BENCH{i}","timestamp":"1749416383","type":"text","text":{{"body":"load {i}"}}}}]}}}}]}}]}}"#
    )
    .into_bytes()
}

struct Run {
    acked: u64,
    per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// CPU per acknowledgement in this process (server and load generator) and elsewhere
    /// (the database server, the kernel's work for other processes).
    own_cpu_us: f64,
    other_cpu_us: f64,
}

/// CPU seconds used so far by this process and by the whole machine (Linux only; zero
/// elsewhere), so a run can say where the cycles went.
fn cpu_seconds() -> (f64, f64) {
    let field = |text: &str, n: usize| -> f64 {
        text.split_whitespace()
            .nth(n)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    let own = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let own = own.rsplit(')').next().unwrap_or_default();
    // After the command name: utime and stime are fields 11 and 12 (0-based), in 1/100 s.
    let own = (field(own, 11) + field(own, 12)) / 100.0;
    let all = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let line = all.lines().next().unwrap_or_default();
    // user nice system (idle iowait) irq softirq steal
    let all = [1, 2, 3, 6, 7, 8]
        .iter()
        .map(|&n| field(line, n))
        .sum::<f64>()
        / 100.0;
    (own, all)
}

/// Fires signed webhooks at `path` on `addr` from `concurrency` keep-alive connections for
/// `seconds`. The generator is a bare HTTP/1.1 client (hyper's connection API): a pooled
/// client with URL parsing per request cost more CPU than the server it was measuring.
async fn load(addr: SocketAddr, path: String, concurrency: u64, seconds: u64) -> Run {
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let cpu_before = cpu_seconds();
    let mut tasks = Vec::new();
    for worker in 0..concurrency {
        let (path, stop) = (path.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            stream.set_nodelay(true).unwrap();
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream))
                    .await
                    .unwrap();
            tokio::spawn(connection);
            let mut latencies = Vec::new();
            let mut i = worker * 10_000_000;
            while !stop.load(Ordering::Relaxed) {
                let payload = body(i);
                let signature = sign_meta(SECRET.as_bytes(), &payload);
                let request = axum::http::Request::post(&path)
                    .header("host", "bench")
                    .header("content-type", "application/json")
                    .header("x-hub-signature-256", signature)
                    .body(Full::new(Bytes::from(payload)))
                    .unwrap();
                let sent = Instant::now();
                let Ok(response) = sender.send_request(request).await else {
                    break;
                };
                let ok = response.status() == 200;
                // Read the answer to the end so the connection can carry the next request.
                if response.into_body().collect().await.is_ok() && ok {
                    latencies.push(sent.elapsed().as_secs_f64() * 1000.0);
                }
                i += 1;
            }
            latencies
        }));
    }
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu_after = cpu_seconds();
    all.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        all.get(((all.len() as f64 - 1.0) * p) as usize)
            .copied()
            .unwrap_or(0.0)
    };
    Run {
        acked: all.len() as u64,
        per_second: all.len() as f64 / elapsed,
        p50_ms: pct(0.5),
        p99_ms: pct(0.99),
        own_cpu_us: (cpu_after.0 - cpu_before.0) * 1e6 / all.len().max(1) as f64,
        other_cpu_us: ((cpu_after.1 - cpu_before.1) - (cpu_after.0 - cpu_before.0)) * 1e6
            / all.len().max(1) as f64,
    }
}

async fn baseline(concurrency: u64, seconds: u64) -> Run {
    let app = axum::Router::new().route(
        "/hook",
        post(|headers: HeaderMap, body: Bytes| async move {
            let signature = headers
                .get("x-hub-signature-256")
                .and_then(|v| v.to_str().ok());
            if verify_meta(SECRET.as_bytes(), &body, signature).is_ok() {
                axum::http::StatusCode::OK
            } else {
                axum::http::StatusCode::FORBIDDEN
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    load(addr, "/hook".into(), concurrency, seconds).await
}

async fn waypost(db: &TestDb, concurrency: u64, seconds: u64) -> (Run, i64) {
    let store: Store = db.store().await;
    let vault = Arc::new(
        Vault::open(store.clone(), MasterKey::generate().unwrap())
            .await
            .unwrap(),
    );
    let mut tx = store.platform().await.unwrap();
    let tenant = tx.create_tenant("Bench").await.unwrap().id;
    let (mut tx, channel) = tx
        .create_channel(tenant, meta_channel("106540352242922"))
        .await
        .unwrap();
    vault
        .put_secret(
            &mut tx,
            &waypost_api::channel_secret_purpose(channel.id, "app_secret"),
            SECRET,
        )
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let path = format!("/webhooks/meta/{}", channel.id);
    let shutdown = CancellationToken::new();
    let state = AppState::new(store.clone(), vault, AuthConfig::default()).unwrap();
    tokio::spawn(waypost_api::serve(listener, state, shutdown.clone()));
    let run = load(addr, path, concurrency, seconds).await;
    shutdown.cancel();
    let mut tx = store.tenant_read(tenant).await.unwrap();
    let stored = tx.count_inbox().await.unwrap();
    (run, stored)
}

fn print(label: &str, run: &Run) {
    println!(
        "{label:<34} {:>8.0} acks/s   p50 {:>6.1} ms   p99 {:>6.1} ms   ({} acknowledged)   CPU/ack: {:.0} µs here + {:.0} µs elsewhere",
        run.per_second, run.p50_ms, run.p99_ms, run.acked, run.own_cpu_us, run.other_cpu_us
    );
}

fn main() {
    let seconds = env_u64("BENCH_SECONDS", 10);
    let concurrency = env_u64("BENCH_CONCURRENCY", 64);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
        println!("signed Meta webhooks, {concurrency} connections, {seconds} s per run, load generator on the same {cores} cores");
        print("baseline: verify-only handler", &baseline(concurrency, seconds).await);
        let engines = std::env::var("BENCH_ENGINES").unwrap_or_else(|_| "sqlite,postgres".into());
        let mut dbs = Vec::new();
        if engines.contains("sqlite") {
            dbs.push(TestDb::sqlite());
        }
        if engines.contains("postgres") {
            dbs.extend(TestDb::postgres(Flavor::Postgres).await);
        }
        for db in dbs {
            let (run, stored) = waypost(&db, concurrency, seconds).await;
            print(&format!("waypost, {} (store, then ack)", db.engine().as_str()), &run);
            assert!(stored >= run.acked as i64, "{} acknowledged but only {stored} stored", run.acked);
            println!("{:<34} {stored} bodies in the inbox, none missing", "");
        }
    });
}
