use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use async_trait::async_trait;
use waypost_core::{Error, ErrorCode, Timestamp};
use waypost_store::{ClaimedJob, Scope, Store, Tx};

/// Why a job attempt failed, and what to do about it.
#[derive(Debug)]
pub enum JobError {
    /// Transient: retry after the backoff delay (dead once attempts run out).
    Retry(String),
    /// Transient, and the cause says when to come back (e.g. a provider's Retry-After).
    RetryAt(Timestamp, String),
    /// Retrying cannot help: dead-letter now.
    Permanent(String),
}

impl From<Error> for JobError {
    fn from(err: Error) -> Self {
        match err.code() {
            ErrorCode::Unavailable | ErrorCode::Internal | ErrorCode::Conflict => {
                JobError::Retry(err.to_string())
            }
            _ => JobError::Permanent(err.to_string()),
        }
    }
}

/// What a handler gets: the job, the store, and a way to complete the job atomically with
/// its own writes.
pub struct JobContext {
    store: Store,
    job: ClaimedJob,
    worker_id: Arc<str>,
    completed: AtomicBool,
}

impl JobContext {
    pub(crate) fn new(store: Store, job: ClaimedJob, worker_id: Arc<str>) -> Self {
        Self {
            store,
            job,
            worker_id,
            completed: AtomicBool::new(false),
        }
    }

    pub fn job(&self) -> &ClaimedJob {
        &self.job
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn worker_id(&self) -> &str {
        &self.worker_id
    }

    /// Completes the job inside `tx` and commits: the handler's writes and the job's
    /// completion land together, so a crash can never apply them twice. If the lease was lost
    /// meanwhile, nothing is committed.
    pub async fn complete_with<S: Scope>(&self, mut tx: Tx<S>) -> Result<(), Error> {
        tx.complete_job(&self.job).await?;
        tx.commit().await?;
        self.completed.store(true, Ordering::Release);
        Ok(())
    }

    pub(crate) fn is_completed(&self) -> bool {
        self.completed.load(Ordering::Acquire)
    }
}

/// Runs one kind of job. Handlers must be idempotent with respect to anything outside the
/// database: a job whose worker dies mid-run is run again once its lease expires.
#[async_trait]
pub trait Handler: Send + Sync + 'static {
    async fn run(&self, ctx: &JobContext) -> Result<(), JobError>;
}

/// Handlers by job kind.
#[derive(Clone, Default)]
pub struct Registry {
    handlers: HashMap<String, Arc<dyn Handler>>,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn register(mut self, kind: impl Into<String>, handler: impl Handler) -> Self {
        self.handlers.insert(kind.into(), Arc::new(handler));
        self
    }

    pub(crate) fn get(&self, kind: &str) -> Option<Arc<dyn Handler>> {
        self.handlers.get(kind).cloned()
    }

    pub fn kinds(&self) -> impl Iterator<Item = &str> {
        self.handlers.keys().map(String::as_str)
    }
}
