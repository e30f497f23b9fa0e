//! Job queue throughput: enqueue + claim + complete per second, with 1 and 8 workers, on
//! SQLite and (when `WAYPOST_TEST_DATABASE_URL` is set) PostgreSQL. A baseline in the same
//! run drives the store directly (claim one, complete one, no worker runtime), so the
//! runtime's own overhead is visible.
//!
//! `cargo bench -p waypost-jobs --bench queue` (see BENCHMARKS.md). Tunables:
//! `BENCH_JOBS` (default 5000), `BENCH_RUNS` (default 5).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;
use waypost_core::Timestamp;
use waypost_jobs::{Handler, JobContext, JobError, Registry, Worker, WorkerConfig};
use waypost_store::{
    JobKinds, NewJob, Store,
    testkit::{Flavor, TestDb},
};

struct Noop;

#[async_trait]
impl Handler for Noop {
    async fn run(&self, _ctx: &JobContext) -> Result<(), JobError> {
        Ok(())
    }
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Enqueues `n` jobs in transactions of 100, as a campaign or an inbound batch would.
async fn enqueue(store: &Store, n: usize) -> Duration {
    let started = Instant::now();
    let mut left = n;
    while left > 0 {
        let batch = left.min(100);
        let mut tx = store.platform().await.unwrap();
        for _ in 0..batch {
            tx.enqueue(NewJob::new("bench.noop", ()).unwrap())
                .await
                .unwrap();
        }
        tx.commit().await.unwrap();
        left -= batch;
    }
    started.elapsed()
}

async fn queue_empty(store: &Store) -> bool {
    store.queue_stats().await.unwrap().is_empty()
}

/// Drains the queue with the worker runtime at `concurrency`.
async fn drain_with_worker(store: &Store, concurrency: usize) -> Duration {
    let config = WorkerConfig {
        concurrency,
        poll_interval: Duration::from_millis(5),
        ..WorkerConfig::default()
    };
    let token = CancellationToken::new();
    let worker = Worker::new(
        store.clone(),
        Registry::new().register("bench.noop", Noop),
        config,
    );
    let started = Instant::now();
    let handle = tokio::spawn(worker.run(token.clone()));
    while !queue_empty(store).await {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = started.elapsed();
    token.cancel();
    handle.await.unwrap().unwrap();
    elapsed
}

/// The baseline: claim one job, complete it, repeat; no runtime, no concurrency.
async fn drain_bare(store: &Store) -> Duration {
    let started = Instant::now();
    loop {
        let jobs = store
            .claim_jobs(
                "bare",
                &JobKinds::new(["bench.noop"]),
                1,
                Duration::from_secs(60),
                Timestamp::now(),
            )
            .await
            .unwrap();
        if jobs.is_empty() {
            break;
        }
        for job in jobs {
            let mut tx = store.platform().await.unwrap();
            tx.complete_job(&job).await.unwrap();
            tx.commit().await.unwrap();
        }
    }
    started.elapsed()
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

async fn bench(db: &TestDb, jobs: usize, runs: usize) {
    let store = db.store().await;
    for (label, concurrency) in [
        ("baseline: bare store loop", 0),
        ("worker, 1 slot", 1),
        ("worker, 8 slots", 8),
    ] {
        let (mut enq, mut drain, mut total) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..runs {
            let e = enqueue(&store, jobs).await;
            let d = if concurrency == 0 {
                drain_bare(&store).await
            } else {
                drain_with_worker(&store, concurrency).await
            };
            let n = jobs as f64;
            enq.push(n / e.as_secs_f64());
            drain.push(n / d.as_secs_f64());
            total.push(n / (e + d).as_secs_f64());
        }
        println!(
            "{:<9} {:<27} enqueue {:>8.0}/s   claim+complete {:>8.0}/s   end-to-end {:>8.0}/s",
            db.engine().as_str(),
            label,
            median(enq),
            median(drain),
            median(total)
        );
    }
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cores} cores, {cpu}")
}

fn main() {
    let jobs = env_usize("BENCH_JOBS", 5000);
    let runs = env_usize("BENCH_RUNS", 5);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        println!("job queue: {jobs} no-op jobs per run, median of {runs} runs; {}", machine());
        println!("SQLite: WAL, synchronous=FULL. PostgreSQL: server defaults (fsync on, synchronous_commit on).");
        bench(&TestDb::sqlite(), jobs, runs).await;
        match TestDb::postgres(Flavor::Postgres).await {
            Some(db) => bench(&db, jobs, runs).await,
            None => println!("postgres  SKIPPED: set WAYPOST_TEST_DATABASE_URL"),
        }
    });
}
