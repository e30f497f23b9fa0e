use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{sync::Notify, task::JoinSet, time::Instant};
use tokio_util::{sync::CancellationToken, task::AbortOnDropHandle};
use waypost_core::{Error, JobId, Timestamp};
use waypost_store::{ClaimedJob, JobKinds, JobState, Store};

use crate::{
    Backoff,
    handler::{JobContext, JobError, Registry},
};

#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Jobs run at once by this process.
    pub concurrency: usize,
    /// How long to wait before looking again when the queue was empty.
    pub poll_interval: Duration,
    /// How long a claimed job stays hidden from other workers; renewed while it runs.
    pub lease: Duration,
    pub backoff: Backoff,
    /// How long shutdown waits for running jobs before handing them back.
    pub shutdown_grace: Duration,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            concurrency: 8,
            poll_interval: Duration::from_millis(500),
            lease: Duration::from_secs(60),
            backoff: Backoff::default(),
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

/// A name for this process's leases, unique across processes and restarts.
pub fn worker_id() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "waypost".to_string());
    let nonce = uuid::Uuid::now_v7().simple().to_string();
    format!(
        "{host}-{}-{}",
        std::process::id(),
        &nonce[nonce.len() - 6..]
    )
}

/// Leases due jobs and runs them, up to `concurrency` at a time.
pub struct Worker {
    store: Store,
    registry: Registry,
    /// What this worker claims: only kinds it has a handler for.
    kinds: JobKinds,
    config: WorkerConfig,
    id: Arc<str>,
    wake: Arc<Notify>,
    in_flight: InFlightJobs,
}

impl Worker {
    pub fn new(store: Store, registry: Registry, config: WorkerConfig) -> Self {
        Self::with_id(store, registry, config, worker_id())
    }

    pub fn with_id(store: Store, registry: Registry, config: WorkerConfig, id: String) -> Self {
        Self {
            store,
            kinds: JobKinds::new(registry.kinds()),
            registry,
            config,
            id: id.into(),
            wake: Arc::new(Notify::new()),
            in_flight: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// Poking this makes an idle worker look for jobs at once instead of at its next poll.
    pub fn waker(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    /// Runs until `shutdown` fires; then stops claiming, lets running jobs finish for up to
    /// `shutdown_grace`, and hands back whatever is still running.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), Error> {
        let concurrency = self.config.concurrency.max(1);
        let mut running: JoinSet<()> = JoinSet::new();
        let heartbeat_every = self.config.lease / 3;
        let mut next_heartbeat = Instant::now() + heartbeat_every;
        tracing::info!(worker = %self.id, concurrency, "job worker started");

        while !shutdown.is_cancelled() {
            while running.try_join_next().is_some() {}
            if Instant::now() >= next_heartbeat {
                self.heartbeat().await;
                next_heartbeat = Instant::now() + heartbeat_every;
            }

            let free = concurrency - running.len();
            let mut claimed = 0;
            if free > 0 {
                let limit = u32::try_from(free).unwrap_or(u32::MAX);
                match self
                    .store
                    .claim_jobs(
                        &self.id,
                        &self.kinds,
                        limit,
                        self.config.lease,
                        Timestamp::now(),
                    )
                    .await
                {
                    Ok(jobs) => {
                        claimed = jobs.len();
                        for job in jobs {
                            running.spawn(self.run_job(job));
                        }
                    }
                    Err(err) => tracing::warn!(error = %err, "claiming jobs failed"),
                }
            }

            // Every wait also wakes for the heartbeat: long jobs in every slot must not
            // lose their leases while the loop waits for one of them to finish.
            let heartbeat = tokio::time::sleep_until(next_heartbeat);
            if claimed > 0 && claimed == free {
                // Busy: go again as soon as a slot frees up.
                tokio::select! {
                    _ = running.join_next() => {}
                    () = heartbeat => {}
                    () = shutdown.cancelled() => {}
                }
            } else {
                tokio::select! {
                    () = tokio::time::sleep(self.config.poll_interval) => {}
                    () = self.wake.notified() => {}
                    Some(_) = running.join_next(), if !running.is_empty() => {}
                    () = heartbeat => {}
                    () = shutdown.cancelled() => {}
                }
            }
        }

        self.drain(running, next_heartbeat).await;
        Ok(())
    }

    /// Extends the lease of every job this worker is running (and only those: a job whose
    /// outcome could not be recorded is left to expire and be retried).
    async fn heartbeat(&self) {
        let until = Timestamp::now().plus(self.config.lease);
        let jobs: Vec<ClaimedJob> = self
            .in_flight
            .lock()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default();
        for job in jobs {
            if let Err(err) = self.store.extend_lease(&job, until).await {
                tracing::warn!(job = %job.id, error = %err, "extending a job lease failed");
            }
        }
    }

    async fn drain(&self, mut running: JoinSet<()>, mut next_heartbeat: Instant) {
        let in_flight = running.len();
        if in_flight > 0 {
            tracing::info!(in_flight, "waiting for running jobs before shutdown");
        }
        let deadline = tokio::time::sleep(self.config.shutdown_grace);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                next = running.join_next() => if next.is_none() { break },
                () = tokio::time::sleep_until(next_heartbeat) => {
                    self.heartbeat().await;
                    next_heartbeat = Instant::now() + self.config.lease / 3;
                }
                () = &mut deadline => {
                    // Aborting a job's task also aborts its handler (see `run_job`).
                    running.abort_all();
                    while running.join_next().await.is_some() {}
                    break;
                }
            }
        }
        match self.store.release_jobs(&self.id).await {
            Ok(0) => {}
            Ok(released) => tracing::info!(released, "handed unfinished jobs back to the queue"),
            Err(err) => {
                tracing::warn!(error = %err, "releasing leased jobs failed; they return when their leases expire")
            }
        }
        tracing::info!(worker = %self.id, "job worker stopped");
    }

    fn run_job(&self, job: ClaimedJob) -> impl Future<Output = ()> + Send + 'static {
        let store = self.store.clone();
        let handler = self.registry.get(&job.kind);
        let worker_id = self.id.clone();
        let backoff = self.config.backoff;
        let in_flight = InFlight::track(self.in_flight.clone(), &job);
        async move {
            let _in_flight = in_flight;
            let kind = job.kind.clone();
            let started = Instant::now();
            // A job whose lease kept expiring (its worker crashed or hung each time) has used
            // up its attempts without ever reporting a failure: dead-letter it unrun.
            if job.attempts > job.max_attempts {
                let message = format!(
                    "gave up after {} attempts: the worker stopped or hung each time",
                    job.max_attempts
                );
                if let Err(err) = store.fail_job(&job, &message, None).await {
                    tracing::warn!(job = %job.id, error = %err, "dead-lettering an exhausted job failed");
                }
                metrics::counter!("waypost_jobs_total", "kind" => kind, "outcome" => "dead")
                    .increment(1);
                return;
            }
            let ctx = Arc::new(JobContext::new(store.clone(), job, worker_id));
            let outcome = match handler {
                // Claims are limited to registered kinds, so this is a bug, not a deploy.
                None => Err(JobError::Retry(format!("no handler for job kind {kind:?}"))),
                // A panicking handler must not take the worker down; it counts as a failure.
                // Dropping the handle (shutdown aborting this task) aborts the handler too.
                Some(handler) => {
                    let task_ctx = ctx.clone();
                    AbortOnDropHandle::new(tokio::spawn(
                        async move { handler.run(&task_ctx).await },
                    ))
                    .await
                    .unwrap_or_else(|e| Err(JobError::Retry(format!("handler panicked: {e}"))))
                }
            };
            metrics::histogram!("waypost_job_duration_seconds", "kind" => kind.clone())
                .record(started.elapsed().as_secs_f64());
            let job = ctx.job();
            let result = match outcome {
                Ok(()) if ctx.is_completed() => Ok("completed"),
                Ok(()) => complete(&store, job).await.map(|()| "completed"),
                Err(err) => fail(&store, job, err, backoff).await,
            };
            match result {
                Ok(outcome) => {
                    metrics::counter!("waypost_jobs_total", "kind" => kind, "outcome" => outcome)
                        .increment(1);
                }
                Err(err) => {
                    tracing::warn!(job = %job.id, kind, error = %err, "recording job outcome failed; the job is retried when its lease expires")
                }
            }
        }
    }
}

/// The jobs this worker is running, for heartbeats; an entry leaves when its task ends,
/// however it ends.
type InFlightJobs = Arc<Mutex<HashMap<JobId, ClaimedJob>>>;

struct InFlight {
    jobs: InFlightJobs,
    id: JobId,
}

impl InFlight {
    fn track(jobs: InFlightJobs, job: &ClaimedJob) -> Self {
        if let Ok(mut map) = jobs.lock() {
            map.insert(job.id, job.clone());
        }
        InFlight { jobs, id: job.id }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Ok(mut map) = self.jobs.lock() {
            map.remove(&self.id);
        }
    }
}

async fn complete(store: &Store, job: &ClaimedJob) -> Result<(), Error> {
    match job.tenant_id {
        Some(tenant) => {
            let mut tx = store.tenant(tenant).await?;
            tx.complete_job(job).await?;
            tx.commit().await
        }
        None => {
            let mut tx = store.platform().await?;
            tx.complete_job(job).await?;
            tx.commit().await
        }
    }
}

async fn fail(
    store: &Store,
    job: &ClaimedJob,
    err: JobError,
    backoff: Backoff,
) -> Result<&'static str, Error> {
    let (message, retry_at) = match err {
        JobError::Retry(msg) if job.attempts < job.max_attempts => {
            let at = Timestamp::now().plus(backoff.delay(job.attempts));
            (msg, Some(at))
        }
        JobError::RetryAt(at, msg) if job.attempts < job.max_attempts => (msg, Some(at)),
        JobError::Retry(msg) | JobError::RetryAt(_, msg) | JobError::Permanent(msg) => (msg, None),
    };
    let state = store.fail_job(job, &message, retry_at).await?;
    if state == JobState::Dead {
        tracing::error!(job = %job.id, kind = %job.kind, attempts = job.attempts, error = %message, "job dead-lettered");
        Ok("dead")
    } else {
        tracing::warn!(job = %job.id, kind = %job.kind, attempts = job.attempts, error = %message, "job failed; will retry");
        Ok("retry")
    }
}
