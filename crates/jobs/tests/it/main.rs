//! The job runtime against real databases: workers, retries, dead letters, shutdown, a
//! worker process killed mid-job, and recurring jobs across schedulers.

// Test code: a failed unwrap is a failed test, with the value in the message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    time::Duration,
};

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;
use waypost_core::{ErrorCode, JobId, Timestamp};
use waypost_jobs::{
    Backoff, Handler, JobContext, JobError, Recurring, Registry, Scheduler, Worker, WorkerConfig,
};
use waypost_store::{Enqueued, JobKinds, JobState, NewJob, Store, testkit::test_databases};

fn fast_config() -> WorkerConfig {
    WorkerConfig {
        concurrency: 4,
        poll_interval: Duration::from_millis(20),
        lease: Duration::from_secs(3),
        backoff: Backoff {
            base: Duration::from_millis(20),
            max: Duration::from_millis(100),
        },
        shutdown_grace: Duration::from_millis(200),
    }
}

async fn enqueue(store: &Store, job: NewJob) -> JobId {
    let mut tx = store.platform().await.unwrap();
    let Enqueued::Created(id) = tx.enqueue(job).await.unwrap() else {
        panic!("duplicate")
    };
    tx.commit().await.unwrap();
    id
}

/// Polls until `done` holds, failing after `secs`.
async fn eventually<F, Fut>(secs: u64, what: &str, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !done().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn is_gone(store: &Store, id: JobId) -> bool {
    matches!(store.get_job(id).await, Err(e) if e.code() == ErrorCode::NotFound)
}

fn spawn_worker(
    store: &Store,
    registry: Registry,
) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    spawn_worker_with(store, registry, fast_config())
}

fn spawn_worker_with(
    store: &Store,
    registry: Registry,
    config: WorkerConfig,
) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let token = CancellationToken::new();
    let worker = Worker::new(store.clone(), registry, config);
    let run = worker.run(token.clone());
    (token, tokio::spawn(async move { run.await.unwrap() }))
}

#[tokio::test]
async fn two_workers_run_every_probe_exactly_once() {
    for db in test_databases().await {
        let setup = db.store().await;
        let batch = setup.start_probe_batch(300).await.unwrap();
        let registry =
            Registry::with_builtins(Duration::from_secs(3600), Duration::from_secs(3600));
        let (a, b) = (db.store().await, db.store().await);
        let (stop_a, run_a) = spawn_worker(&a, registry.clone());
        let (stop_b, run_b) = spawn_worker(&b, registry);
        eventually(60, "all probes", || async {
            setup.probe_status(batch).await.unwrap().completed == 300
        })
        .await;
        stop_a.cancel();
        stop_b.cancel();
        run_a.await.unwrap();
        run_b.await.unwrap();
        let status = setup.probe_status(batch).await.unwrap();
        assert_eq!(
            (status.total, status.completed, status.duplicated),
            (300, 300, 0),
            "{:?}",
            db.flavor
        );
        assert_eq!(status.by_worker.values().sum::<u64>(), 300);
        assert!(
            setup.list_jobs(None, 10).await.unwrap().is_empty(),
            "probe jobs left behind"
        );
    }
}

/// Fails `failures` times, then succeeds; counts runs.
struct Flaky {
    failures: u32,
    runs: Arc<AtomicU32>,
}

#[async_trait]
impl Handler for Flaky {
    async fn run(&self, _ctx: &JobContext) -> Result<(), JobError> {
        let run = self.runs.fetch_add(1, Ordering::SeqCst) + 1;
        if run <= self.failures {
            Err(JobError::Retry(format!("failure {run}")))
        } else {
            Ok(())
        }
    }
}

#[tokio::test]
async fn transient_failures_are_retried_with_backoff() {
    for db in test_databases().await {
        let store = db.store().await;
        let runs = Arc::new(AtomicU32::new(0));
        let id = enqueue(&store, NewJob::new("flaky", ()).unwrap()).await;
        let (stop, run) = spawn_worker(
            &store,
            Registry::new().register(
                "flaky",
                Flaky {
                    failures: 2,
                    runs: runs.clone(),
                },
            ),
        );
        eventually(20, "the job to succeed", || is_gone(&store, id)).await;
        stop.cancel();
        run.await.unwrap();
        assert_eq!(runs.load(Ordering::SeqCst), 3, "{:?}", db.flavor);
    }
}

/// A rolling deploy: an older process meets a job kind only the newer release knows. It must
/// leave the job alone (not fail it, not spend its attempts) until a process that knows it runs
/// it.
#[tokio::test]
async fn a_worker_leaves_job_kinds_it_does_not_know_untouched() {
    for db in test_databases().await {
        let store = db.store().await;
        let id = enqueue(
            &store,
            NewJob::new("newer.kind", ()).unwrap().max_attempts(2),
        )
        .await;
        let older = Registry::new().register(
            "flaky",
            Flaky {
                failures: 0,
                runs: Arc::default(),
            },
        );
        // Many polls (every 20 ms) with a job due all the while.
        let (stop, run) = spawn_worker(&store, older);
        tokio::time::sleep(Duration::from_millis(600)).await;
        stop.cancel();
        run.await.unwrap();
        let job = store.get_job(id).await.unwrap();
        assert_eq!(
            (job.state, job.attempts, job.last_error),
            (JobState::Pending, 0, None),
            "{:?}",
            db.flavor
        );

        let runs = Arc::new(AtomicU32::new(0));
        let newer = Registry::new().register(
            "newer.kind",
            Flaky {
                failures: 0,
                runs: runs.clone(),
            },
        );
        let (stop, run) = spawn_worker(&store, newer);
        eventually(20, "the newer process to run it", || is_gone(&store, id)).await;
        stop.cancel();
        run.await.unwrap();
        assert_eq!(runs.load(Ordering::SeqCst), 1, "{:?}", db.flavor);
    }
}

/// Fails permanently, or transiently until `healed`.
struct Broken {
    permanent: bool,
    healed: Arc<AtomicBool>,
}

#[async_trait]
impl Handler for Broken {
    async fn run(&self, _ctx: &JobContext) -> Result<(), JobError> {
        match (self.healed.load(Ordering::SeqCst), self.permanent) {
            (true, _) => Ok(()),
            (false, true) => Err(JobError::Permanent("bad payload".into())),
            (false, false) => Err(JobError::Retry("still down".into())),
        }
    }
}

#[tokio::test]
async fn exhausted_and_permanent_failures_dead_letter_and_replay_works() {
    for db in test_databases().await {
        let store = db.store().await;
        let healed = Arc::new(AtomicBool::new(false));
        let registry = Registry::new()
            .register(
                "retrying",
                Broken {
                    permanent: false,
                    healed: healed.clone(),
                },
            )
            .register(
                "permanent",
                Broken {
                    permanent: true,
                    healed: healed.clone(),
                },
            );
        let retrying = enqueue(&store, NewJob::new("retrying", ()).unwrap().max_attempts(3)).await;
        let permanent = enqueue(&store, NewJob::new("permanent", ()).unwrap()).await;
        let (stop, run) = spawn_worker(&store, registry);
        eventually(20, "both jobs dead", || async {
            store
                .list_jobs(Some(JobState::Dead), 10)
                .await
                .unwrap()
                .len()
                == 2
        })
        .await;
        let dead_retrying = store.get_job(retrying).await.unwrap();
        assert_eq!(
            (dead_retrying.attempts, dead_retrying.last_error.as_deref()),
            (3, Some("still down"))
        );
        let dead_permanent = store.get_job(permanent).await.unwrap();
        assert_eq!(
            dead_permanent.attempts, 1,
            "a permanent failure is not retried"
        );

        healed.store(true, Ordering::SeqCst);
        store.replay_job(retrying).await.unwrap();
        eventually(20, "the replayed job to succeed", || {
            is_gone(&store, retrying)
        })
        .await;
        assert_eq!(
            store.get_job(permanent).await.unwrap().state,
            JobState::Dead,
            "{:?}",
            db.flavor
        );
        stop.cancel();
        run.await.unwrap();
    }
}

struct Panics(Arc<AtomicU32>);

#[async_trait]
impl Handler for Panics {
    async fn run(&self, _ctx: &JobContext) -> Result<(), JobError> {
        if self.0.fetch_add(1, Ordering::SeqCst) == 0 {
            panic!("handler bug");
        }
        Ok(())
    }
}

#[tokio::test]
async fn a_panicking_handler_is_a_failed_attempt_not_a_dead_worker() {
    for db in test_databases().await {
        let store = db.store().await;
        let runs = Arc::new(AtomicU32::new(0));
        let id = enqueue(&store, NewJob::new("panics", ()).unwrap()).await;
        let (stop, run) = spawn_worker(
            &store,
            Registry::new().register("panics", Panics(runs.clone())),
        );
        eventually(20, "the retry to succeed", || is_gone(&store, id)).await;
        stop.cancel();
        run.await.unwrap();
        assert_eq!(runs.load(Ordering::SeqCst), 2, "{:?}", db.flavor);
    }
}

struct Sleeps(Duration);

#[async_trait]
impl Handler for Sleeps {
    async fn run(&self, _ctx: &JobContext) -> Result<(), JobError> {
        tokio::time::sleep(self.0).await;
        Ok(())
    }
}

#[tokio::test]
async fn shutdown_hands_unfinished_jobs_back_without_counting_the_attempt() {
    for db in test_databases().await {
        let store = db.store().await;
        let id = enqueue(&store, NewJob::new("slow", ()).unwrap()).await;
        let (stop, run) = spawn_worker(
            &store,
            Registry::new().register("slow", Sleeps(Duration::from_secs(30))),
        );
        eventually(20, "the job to be claimed", || async {
            store.get_job(id).await.unwrap().attempts == 1
        })
        .await;
        let started = tokio::time::Instant::now();
        stop.cancel();
        run.await.unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "shutdown waited for the slow job"
        );
        let job = store.get_job(id).await.unwrap();
        assert_eq!(
            (job.state, job.attempts),
            (JobState::Pending, 0),
            "{:?}",
            db.flavor
        );
        assert!(
            job.run_at <= Timestamp::now(),
            "a released job is due at once"
        );
    }
}

#[tokio::test]
async fn heartbeats_keep_a_long_job_leased() {
    for db in test_databases().await {
        let store = db.store().await;
        let id = enqueue(&store, NewJob::new("slow", ()).unwrap()).await;
        // The job outlives its 3 s lease twice over; heartbeats must keep others off it, also
        // while every slot is busy (one slot here) and the loop waits for a job to end.
        let config = WorkerConfig {
            concurrency: 1,
            ..fast_config()
        };
        let (stop, run) = spawn_worker_with(
            &store,
            Registry::new().register("slow", Sleeps(Duration::from_secs(7))),
            config,
        );
        eventually(20, "the job to be claimed", || async {
            store.get_job(id).await.unwrap().attempts == 1
        })
        .await;
        let slow = JobKinds::new(["slow"]);
        let thief = store.claim_jobs(
            "thief",
            &slow,
            10,
            Duration::from_secs(3),
            Timestamp::now().plus(Duration::from_secs(4)),
        );
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert!(
            thief.await.unwrap().is_empty(),
            "{:?}: a running job's lease lapsed",
            db.flavor
        );
        eventually(20, "the job to finish", || is_gone(&store, id)).await;
        stop.cancel();
        run.await.unwrap();
    }
}

#[tokio::test]
async fn each_period_fires_once_across_schedulers() {
    for db in test_databases().await {
        let (a, b) = (db.store().await, db.store().await);
        let schedule = Recurring {
            name: "report".into(),
            every: Duration::from_secs(3600),
            offset: Duration::ZERO,
            job: || NewJob::new("report", ()),
        };
        let (sa, sb) = (
            Scheduler::new(a.clone(), vec![schedule.clone()], Duration::from_secs(1)),
            Scheduler::new(b.clone(), vec![schedule], Duration::from_secs(1)),
        );
        let now = Timestamp::now();
        let mut fired = 0;
        for _ in 0..5 {
            let (x, y) = tokio::join!(sa.tick(now), sb.tick(now));
            fired += x + y;
        }
        assert_eq!(fired, 1, "{:?}", db.flavor);
        let next_hour = now.plus(Duration::from_secs(3600));
        assert_eq!(sb.tick(next_hour).await + sa.tick(next_hour).await, 1);
    }
}

const CHILD_DB_VAR: &str = "WAYPOST_TEST_CHILD_DB";

/// Not a test on its own: the body of the worker process that `a_killed_worker…` starts and
/// kills. Without the variable it does nothing.
#[test]
fn child_worker_process() {
    let Ok(url) = std::env::var(CHILD_DB_VAR) else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = Store::connect(&url.parse().unwrap(), &Default::default())
            .await
            .unwrap();
        let worker = Worker::with_id(
            store,
            Registry::new().register("hang", Sleeps(Duration::from_secs(3600))),
            fast_config(),
            "doomed".into(),
        );
        worker.run(CancellationToken::new()).await.unwrap();
    });
}

/// Records when it ran and on which attempt.
struct Records(Arc<std::sync::Mutex<Vec<(Timestamp, u32)>>>);

#[async_trait]
impl Handler for Records {
    async fn run(&self, ctx: &JobContext) -> Result<(), JobError> {
        self.0
            .lock()
            .unwrap()
            .push((Timestamp::now(), ctx.job().attempts));
        Ok(())
    }
}

#[tokio::test]
async fn a_killed_worker_process_loses_its_job_only_until_the_lease_expires() {
    for db in test_databases().await {
        let store = db.store().await;
        let id = enqueue(&store, NewJob::new("hang", ()).unwrap()).await;
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "child_worker_process",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_DB_VAR, &db.url)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        eventually(30, "the child to claim the job", || async {
            store.get_job(id).await.unwrap().attempts == 1
        })
        .await;
        child.kill().unwrap(); // SIGKILL: no shutdown, no release.
        child.wait().unwrap();
        let lease_end = store.get_job(id).await.unwrap().run_at;

        let runs = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (stop, run) = spawn_worker(
            &store,
            Registry::new().register("hang", Records(runs.clone())),
        );
        eventually(30, "the job to be taken again", || is_gone(&store, id)).await;
        stop.cancel();
        run.await.unwrap();
        let runs = runs.lock().unwrap();
        assert_eq!(runs.len(), 1, "{:?}", db.flavor);
        let (ran_at, attempt) = runs[0];
        assert_eq!(attempt, 2, "the killed attempt counts");
        assert!(
            ran_at >= lease_end,
            "retaken at {ran_at} before the lease ended at {lease_end}"
        );
    }
}

#[tokio::test]
async fn audit_retention_prunes_old_records_and_leaves_a_verifiable_chain() {
    for db in test_databases().await {
        let store = db.audited_store().await;
        let mut tx = store.platform().await.unwrap();
        let (keep, prune) = (
            tx.create_tenant("keeps").await.unwrap().id,
            tx.create_tenant("prunes").await.unwrap().id,
        );
        tx.commit().await.unwrap();
        for tenant in [keep, prune] {
            let mut tx = store.tenant(tenant).await.unwrap();
            for _ in 0..3 {
                tx.audit(waypost_store::AuditEvent {
                    actor_type: "user",
                    action: "x".into(),
                    outcome: "success",
                    ..Default::default()
                })
                .await
                .unwrap();
            }
            tx.commit().await.unwrap();
        }
        let mut tx = store.tenant(prune).await.unwrap();
        tx.put_tenant_settings(&waypost_store::TenantSettings {
            audit_retention_days: 0,
            raw_payload_retention_days: 0,
        })
        .await
        .unwrap();
        tx.commit().await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;

        let id = enqueue(
            &store,
            NewJob::new(waypost_jobs::AUDIT_RETENTION_KIND, ()).unwrap(),
        )
        .await;
        let registry =
            Registry::with_builtins(Duration::from_secs(3600), Duration::from_secs(3600));
        let (stop, run) = spawn_worker(&store, registry);
        eventually(20, "the retention job", || is_gone(&store, id)).await;
        stop.cancel();
        run.await.unwrap();

        let kept = store.verify_audit(Some(keep)).await.unwrap();
        assert_eq!(
            (kept.records, kept.first_broken_seq),
            (3, None),
            "{:?}",
            db.flavor
        );
        let pruned = store.verify_audit(Some(prune)).await.unwrap();
        assert_eq!(
            (pruned.records, pruned.first_broken_seq),
            (1, None),
            "{:?}",
            db.flavor
        );
        let mut tx = store.tenant_read(prune).await.unwrap();
        let left = tx.list_audit(&Default::default(), 10).await.unwrap();
        assert_eq!(left[0].action, "audit.pruned");
        assert_eq!(left[0].seq, 4);
    }
}

#[tokio::test]
async fn a_job_whose_worker_keeps_dying_is_dead_lettered_unrun() {
    for db in test_databases().await {
        let store = db.store().await;
        let id = enqueue(&store, NewJob::new("fatal", ()).unwrap().max_attempts(2)).await;
        // Two workers claimed it and died without a word.
        let mut now = Timestamp::now();
        for _ in 0..2 {
            assert_eq!(
                store
                    .claim_jobs(
                        "ghost",
                        &JobKinds::new(["fatal"]),
                        1,
                        Duration::from_millis(1),
                        now
                    )
                    .await
                    .unwrap()
                    .len(),
                1
            );
            now = now.plus(Duration::from_millis(5));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        let runs = Arc::new(AtomicU32::new(0));
        let (stop, run) = spawn_worker(
            &store,
            Registry::new().register(
                "fatal",
                Flaky {
                    failures: 0,
                    runs: runs.clone(),
                },
            ),
        );
        eventually(20, "the job to be dead-lettered", || async {
            store.get_job(id).await.unwrap().state == JobState::Dead
        })
        .await;
        stop.cancel();
        run.await.unwrap();
        assert_eq!(
            runs.load(Ordering::SeqCst),
            0,
            "{:?}: an exhausted job ran again",
            db.flavor
        );
        assert!(
            store
                .get_job(id)
                .await
                .unwrap()
                .last_error
                .unwrap()
                .contains("gave up after 2 attempts")
        );
    }
}

/// Counts ticks until aborted.
struct Ticks(Arc<AtomicU32>);

#[async_trait]
impl Handler for Ticks {
    async fn run(&self, _ctx: &JobContext) -> Result<(), JobError> {
        loop {
            self.0.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test]
async fn shutdown_stops_the_handlers_it_hands_back() {
    let db = waypost_store::testkit::TestDb::sqlite();
    let store = db.store().await;
    let id = enqueue(&store, NewJob::new("ticks", ()).unwrap()).await;
    let ticks = Arc::new(AtomicU32::new(0));
    let (stop, run) = spawn_worker(
        &store,
        Registry::new().register("ticks", Ticks(ticks.clone())),
    );
    eventually(20, "the handler to start", || async {
        ticks.load(Ordering::SeqCst) > 2
    })
    .await;
    stop.cancel();
    run.await.unwrap();
    let after_shutdown = ticks.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        ticks.load(Ordering::SeqCst),
        after_shutdown,
        "the handler kept running after shutdown"
    );
    assert_eq!(store.get_job(id).await.unwrap().attempts, 0);
}
