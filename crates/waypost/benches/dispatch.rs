//! Sustained dispatch against the Cloud API simulator, with its status webhooks flowing back
//! into Waypost during the run: one channel at 80 and at 1000 messages/s, and 10 channels at
//! 80/s each, on SQLite and (with `WAYPOST_TEST_DATABASE_URL`) PostgreSQL.
//!
//! Waypost (HTTP for the webhooks, the job worker processing them, the dispatcher) runs in
//! this process; the simulator runs as a separate `waypost simulator` process so the CPU
//! figures are Waypost's own. Each scenario pre-fills the outbox, starts the dispatcher, and
//! measures the simulator's accepted sends over a window after a warm-up. Afterwards it
//! checks that no message was sent twice and that every message reached `read` (no status
//! lost). The baseline, in the same run, is a bare paced HTTP sender without a database.
//!
//! `cargo bench -p waypost --bench dispatch` (see BENCHMARKS.md). Tunables: `BENCH_SECONDS`
//! (measured window, default 30), `BENCH_SCENARIOS` (e.g. `1x80,1x1000,10x80`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    collections::HashMap,
    num::NonZeroU32,
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use governor::{Quota, RateLimiter};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use waypost_api::{AppState, AuthConfig, channel_secret_purpose};
use waypost_core::{ChannelId, TenantId};
use waypost_jobs::{Registry, Worker, WorkerConfig};
use waypost_outbound::{
    Dispatcher, DispatcherConfig, OutboundContent, QueueRequest, Recipient, queue,
};
use waypost_store::{
    LANE_TRANSACTIONAL, NewChannel, Store, TemplateUpsert,
    testkit::{Flavor, TestDb},
};
use waypost_vault::{MasterKey, Vault};

const SECRET: &str = "bench-app-secret";
const TOKEN: &str = "bench-token";
const WARM_UP: Duration = Duration::from_secs(2);

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// CPU seconds used so far by a process (user + system).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after the name.
    (ticks(11) + ticks(12)) / 100.0
}

/// Resident memory of a process, MiB.
fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

struct SimulatorProcess {
    child: Child,
    base: String,
}

impl Drop for SimulatorProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn start_simulator(webhook_url: &str) -> SimulatorProcess {
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let process = SimulatorProcess {
        child: Command::new(env!("CARGO_BIN_EXE_waypost"))
            .args([
                "simulator",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--webhook-url",
                webhook_url,
                "--app-secret",
                SECRET,
            ])
            .env("WAYPOST_LOG__LEVEL", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
        base,
    };
    let client = reqwest::Client::new();
    for _ in 0..200 {
        if client
            .get(format!("{}/simulator/stats", process.base))
            .send()
            .await
            .is_ok()
        {
            return process;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the simulator did not start");
}

async fn stats(client: &reqwest::Client, sim: &str) -> Value {
    client
        .get(format!("{sim}/simulator/stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

fn accepted(stats: &Value, number: &str) -> u64 {
    stats["accepted_by_number"][number].as_u64().unwrap_or(0)
}

fn number_id(i: usize) -> String {
    format!("1000000000{:05}", i + 1)
}

fn recipient(i: u64) -> Recipient {
    // 10,000 customers in turn: each gets one message per 10 s at 1,000/s, within the pair rate.
    Recipient::parse(&format!("+1415555{:04}", i % 10_000)).unwrap()
}

struct Outcome {
    rates: Vec<f64>,
    waypost_cpu: f64,
    simulator_cpu: f64,
    rss: f64,
    duplicates: usize,
    sent: u64,
    read: i64,
    drain: Duration,
}

async fn scenario(db: &TestDb, channels: usize, mps: u32, seconds: u64) -> Outcome {
    let store: Store = db.store().await;
    let vault = Arc::new(
        Vault::open(store.clone(), MasterKey::generate().unwrap())
            .await
            .unwrap(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let tenant: TenantId = {
        let mut tx = store.platform().await.unwrap();
        let tenant = tx.create_tenant("Bench").await.unwrap().id;
        tx.commit().await.unwrap();
        tenant
    };
    // Each number's webhook URL is registered with the simulator once its channel exists.
    let sim = start_simulator(&format!("http://{addr}/unregistered")).await;
    let mut ids: Vec<ChannelId> = Vec::new();
    for i in 0..channels {
        let tx = store.platform().await.unwrap();
        let (mut tx, channel) = tx
            .create_channel(
                tenant,
                NewChannel {
                    provider: "meta".into(),
                    name: format!("Bench {i}"),
                    phone_number_id: Some(number_id(i)),
                    waba_id: Some("200000000000001".into()),
                    display_number: None,
                    provider_account: None,
                    throughput_mps: i64::from(mps),
                    graph_api_base_url: format!("{}/simulator/graph", sim.base),
                    graph_api_version: "v25.0".into(),
                },
            )
            .await
            .unwrap();
        for (name, value) in [("app_secret", SECRET), ("access_token", TOKEN)] {
            vault
                .put_secret(&mut tx, &channel_secret_purpose(channel.id, name), value)
                .await
                .unwrap();
        }
        tx.upsert_template(
            channel.id,
            &TemplateUpsert {
                provider_template_id: Some("sim-hello_world".into()),
                name: "hello_world".into(),
                language: "en_US".into(),
                category: "UTILITY".into(),
                status: "APPROVED".into(),
                quality: None,
                parameter_format: "POSITIONAL".into(),
                components: json!([{"type": "BODY", "text": "Hello from the simulator!"}]),
                reason: None,
            },
        )
        .await
        .unwrap();
        tx.commit().await.unwrap();
        ids.push(channel.id);
    }
    let callback = |c: ChannelId| format!("http://{addr}/webhooks/meta/{c}");
    let client = reqwest::Client::new();
    for (i, id) in ids.iter().enumerate() {
        client
            .put(format!("{}/simulator/numbers/{}", sim.base, number_id(i)))
            .json(
                &json!({"webhook_url": callback(*id), "app_secret": SECRET, "throughput_mps": mps}),
            )
            .send()
            .await
            .unwrap();
    }

    // Enough messages for the warm-up, the window and a tail.
    let per_channel = u64::from(mps) * (seconds + WARM_UP.as_secs() + 2);
    let template: OutboundContent = serde_json::from_value(
        json!({"type": "template", "template": {"name": "hello_world", "language": {"code": "en_US"}}}),
    )
    .unwrap();
    for id in &ids {
        let mut n = 0;
        while n < per_channel {
            let mut tx = store.tenant(tenant).await.unwrap();
            let channel = tx.get_channel(*id).await.unwrap();
            for _ in 0..500.min(per_channel - n) {
                queue(
                    &mut tx,
                    &channel,
                    QueueRequest {
                        recipient: recipient(n),
                        content: template.clone(),
                        reply_to: None,
                        lane: LANE_TRANSACTIONAL,
                        idempotency: None,
                    },
                )
                .await
                .unwrap();
                n += 1;
            }
            tx.commit().await.unwrap();
        }
    }

    let shutdown = CancellationToken::new();
    let state = AppState::new(store.clone(), vault.clone(), AuthConfig::default()).unwrap();
    tokio::spawn(waypost_api::serve(listener, state, shutdown.clone()));
    let worker = Worker::new(
        store.clone(),
        Registry::new().register(
            waypost_inbound::PROCESS_KIND,
            waypost_inbound::ProcessInboxHandler,
        ),
        WorkerConfig {
            concurrency: 8,
            poll_interval: Duration::from_millis(20),
            ..WorkerConfig::default()
        },
    );
    tokio::spawn(worker.run(shutdown.clone()));
    // The simulator is on this machine: the egress policy allows loopback for the bench.
    let http = waypost_outbound::provider::ProviderHttp::new(
        waypost_egress::EgressClient::new(
            waypost_egress::EgressPolicy::new(&["127.0.0.0/8"]).unwrap(),
        )
        .unwrap(),
    );
    let dispatcher = Dispatcher::new(
        store.clone(),
        vault,
        http,
        DispatcherConfig {
            renew_every: Duration::from_millis(500),
            ..DispatcherConfig::default()
        },
    );
    tokio::spawn(dispatcher.run(shutdown.clone()));

    tokio::time::sleep(WARM_UP).await;
    let numbers: Vec<String> = (0..channels).map(number_id).collect();
    let me = std::process::id();
    let sim_pid = sim.child.id();
    let before = stats(&client, &sim.base).await;
    let (cpu0, sim_cpu0, t0) = (cpu_seconds(me), cpu_seconds(sim_pid), Instant::now());
    let mut rss: f64 = 0.0;
    while t0.elapsed() < Duration::from_secs(seconds) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        rss = rss.max(rss_mib(me));
    }
    let after = stats(&client, &sim.base).await;
    let elapsed = t0.elapsed().as_secs_f64();
    let waypost_cpu = (cpu_seconds(me) - cpu0) / elapsed;
    let simulator_cpu = (cpu_seconds(sim_pid) - sim_cpu0) / elapsed;
    let rates = numbers
        .iter()
        .map(|n| (accepted(&after, n) - accepted(&before, n)) as f64 / elapsed)
        .collect();

    // Let the rest go out and every status come back.
    let total = per_channel * channels as u64;
    let drain_start = Instant::now();
    let mut read = 0;
    while drain_start.elapsed() < Duration::from_secs(300) {
        read = 0;
        for id in &ids {
            let mut tx = store.tenant_read(tenant).await.unwrap();
            let counts: HashMap<String, i64> = tx
                .outbound_status_counts(*id)
                .await
                .unwrap()
                .into_iter()
                .collect();
            read += counts.get("read").copied().unwrap_or(0);
        }
        if read as u64 >= total {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let drain = drain_start.elapsed();
    let last = stats(&client, &sim.base).await;
    let duplicates = last["by_callback_data"]
        .as_object()
        .unwrap()
        .values()
        .filter(|n| n.as_u64().unwrap_or(0) > 1)
        .count();
    shutdown.cancel();
    tokio::time::sleep(Duration::from_millis(300)).await;
    Outcome {
        rates,
        waypost_cpu,
        simulator_cpu,
        rss,
        duplicates,
        sent: last["accepted"].as_u64().unwrap_or(0),
        read,
        drain,
    }
}

/// A paced sender straight to the simulator: no outbox, no database, no statuses processed.
async fn baseline(mps: u32, seconds: u64) -> (f64, f64) {
    let sim = start_simulator("http://127.0.0.1:1/nowhere").await;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(512)
        .build()
        .unwrap();
    client
        .put(format!("{}/simulator/numbers/{}", sim.base, number_id(0)))
        .json(&json!({"webhook_url": "http://127.0.0.1:1/nowhere", "app_secret": SECRET, "throughput_mps": mps}))
        .send()
        .await
        .unwrap();
    let bucket = Arc::new(RateLimiter::direct(
        Quota::per_second(NonZeroU32::new(mps).unwrap())
            .allow_burst(NonZeroU32::new((mps / 20).max(1)).unwrap()),
    ));
    let url = format!(
        "{}/simulator/graph/v25.0/{}/messages",
        sim.base,
        number_id(0)
    );
    let me = std::process::id();
    let (cpu0, t0) = (cpu_seconds(me), Instant::now());
    let mut n: u64 = 0;
    let mut tasks = tokio::task::JoinSet::new();
    while t0.elapsed() < Duration::from_secs(seconds) {
        bucket.until_ready().await;
        let (client, url) = (client.clone(), url.clone());
        let to = format!("1415555{:04}", n % 10_000);
        tasks.spawn(async move {
            client
                .post(url)
                .bearer_auth(TOKEN)
                .json(
                    &json!({"messaging_product": "whatsapp", "to": to, "type": "template",
                    "template": {"name": "hello_world", "language": {"code": "en_US"}}}),
                )
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
        });
        n += 1;
    }
    let mut ok = 0u64;
    while let Some(done) = tasks.join_next().await {
        if done.unwrap() {
            ok += 1;
        }
    }
    let elapsed = t0.elapsed().as_secs_f64();
    (ok as f64 / elapsed, (cpu_seconds(me) - cpu0) / elapsed)
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn main() {
    let seconds = env_u64("BENCH_SECONDS", 30);
    let scenarios: Vec<(usize, u32)> = std::env::var("BENCH_SCENARIOS")
        .unwrap_or_else(|_| "1x80,1x1000,10x80".into())
        .split(',')
        .filter_map(|s| {
            let (c, r) = s.split_once('x')?;
            Some((c.trim().parse().ok()?, r.trim().parse().ok()?))
        })
        .collect();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
        println!("sustained dispatch to the simulator, {seconds} s window after {} s warm-up, statuses flowing back; {cores} cores shared by Waypost, the simulator and the bench", WARM_UP.as_secs());
        let (rate, cpu) = baseline(1000, 10).await;
        println!("baseline: paced sender, no database      1 x 1000/s  achieved {rate:>7.1}/s   CPU {:>5.0}% of a core", cpu * 100.0);
        for (channels, mps) in scenarios {
            let mut dbs = vec![TestDb::sqlite()];
            dbs.extend(TestDb::postgres(Flavor::Postgres).await);
            for db in dbs {
                let o = scenario(&db, channels, mps, seconds).await;
                let target = f64::from(mps);
                let worst = o
                    .rates
                    .iter()
                    .map(|r| (r - target).abs() / target * 100.0)
                    .fold(0.0, f64::max);
                let total: f64 = o.rates.iter().sum();
                println!(
                    "waypost, {:<10} {channels:>2} x {mps:>4}/s  achieved {:>7.1}/s per channel (median; worst off by {worst:.1}%)  total {total:>7.1}/s",
                    db.engine().as_str(),
                    median(&o.rates),
                );
                println!(
                    "    CPU: waypost {:.0}% of a core ({:.0}% per 1000 msg/s), simulator {:.0}%; RSS {:.0} MiB",
                    o.waypost_cpu * 100.0,
                    o.waypost_cpu * 100.0 / (total / 1000.0).max(0.001),
                    o.simulator_cpu * 100.0,
                    o.rss
                );
                println!(
                    "    {} sent, {} duplicates; {} of them read (statuses drained {:.1} s after the window)",
                    o.sent,
                    o.duplicates,
                    o.read,
                    o.drain.as_secs_f64()
                );
                assert_eq!(o.duplicates, 0, "a message was sent twice");
                assert_eq!(o.read as u64, o.sent, "statuses were lost");
            }
        }
    });
}
