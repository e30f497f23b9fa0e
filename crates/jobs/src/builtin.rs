use std::time::Duration;

use async_trait::async_trait;
use uuid::Uuid;
use waypost_core::{Error, Timestamp};
use waypost_store::{NewJob, PROBE_JOB_KIND};

use crate::{
    Recurring,
    handler::{Handler, JobContext, JobError, Registry},
};

pub const PRUNE_JOBS_KIND: &str = "system.prune_jobs";

/// Deletes done jobs older than `keep`, releasing their dedupe keys.
pub struct PruneDoneJobs {
    pub keep: Duration,
}

#[async_trait]
impl Handler for PruneDoneJobs {
    async fn run(&self, ctx: &JobContext) -> Result<(), JobError> {
        let pruned = ctx
            .store()
            .prune_done_jobs(Timestamp::now().minus(self.keep))
            .await?;
        tracing::info!(pruned, "pruned finished jobs");
        Ok(())
    }
}

/// The probe job (`waypost jobs probe`): records which worker ran it, in the same
/// transaction that completes it, so the run count shows any duplicate execution.
pub struct RecordProbe;

#[async_trait]
impl Handler for RecordProbe {
    async fn run(&self, ctx: &JobContext) -> Result<(), JobError> {
        let probe = ctx
            .job()
            .payload
            .get("probe_id")
            .and_then(|v| v.as_str())
            .and_then(|s| Uuid::parse_str(s).ok())
            .ok_or_else(|| JobError::Permanent("probe job without a probe_id".into()))?;
        let mut tx = ctx.store().platform().await?;
        tx.record_probe_run(probe, ctx.worker_id()).await?;
        ctx.complete_with(tx).await?;
        Ok(())
    }
}

/// The recurring prune job.
pub fn prune_schedule(every: Duration, offset: Duration) -> Recurring {
    fn job() -> Result<NewJob, Error> {
        NewJob::new(PRUNE_JOBS_KIND, serde_json::json!({}))
    }
    Recurring {
        name: PRUNE_JOBS_KIND.to_string(),
        every,
        offset,
        job,
    }
}

impl Registry {
    /// The handlers every Waypost process runs.
    pub fn with_builtins(keep_done_jobs: Duration) -> Self {
        Registry::new()
            .register(
                PRUNE_JOBS_KIND,
                PruneDoneJobs {
                    keep: keep_done_jobs,
                },
            )
            .register(PROBE_JOB_KIND, RecordProbe)
    }
}
