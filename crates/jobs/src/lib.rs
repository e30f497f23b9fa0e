//! The job runtime: workers that lease jobs from the store's durable queue and run their
//! handlers, retries with exponential backoff and jitter, and a scheduler that fires recurring
//! jobs once per period however many processes run it.

mod backoff;
mod builtin;
mod handler;
mod scheduler;
mod worker;

pub use backoff::Backoff;
pub use builtin::{
    AUDIT_RETENTION_KIND, AuditRetention, PRUNE_JOBS_KIND, PruneDoneJobs, RecordProbe,
    audit_retention_schedule, prune_schedule,
};
pub use handler::{Handler, JobContext, JobError, Registry};
pub use scheduler::{Recurring, Scheduler};
pub use worker::{Worker, WorkerConfig, worker_id};
