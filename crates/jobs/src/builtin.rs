use std::time::Duration;

use async_trait::async_trait;
use uuid::Uuid;
use waypost_core::{Error, Timestamp};
use waypost_store::{AuditEvent, NewJob, PROBE_JOB_KIND};

use crate::{
    Recurring,
    handler::{Handler, JobContext, JobError, Registry},
};

pub const PRUNE_JOBS_KIND: &str = "system.prune_jobs";
pub const AUDIT_RETENTION_KIND: &str = "system.audit_retention";

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

/// Enforces retention: each tenant's processed raw webhook bodies older than its
/// `raw_payload_retention_days`; audit records older than its `audit_retention_days`,
/// and platform records older than `platform_keep`, are deleted. Every prune appends an
/// `audit.pruned` record, so a chain is never silently emptied. Also drops expired sessions
/// and stale sign-in failure counts.
pub struct AuditRetention {
    pub platform_keep: Duration,
}

fn system_event(pruned: u64, before: Timestamp) -> AuditEvent {
    AuditEvent {
        actor_type: "system",
        actor_id: Some(AUDIT_RETENTION_KIND.to_string()),
        action: "audit.pruned".into(),
        target_type: Some("audit_events".into()),
        target_id: Some(format!("{pruned} records before {before}")),
        outcome: "success",
        ..AuditEvent::default()
    }
}

#[async_trait]
impl Handler for AuditRetention {
    async fn run(&self, ctx: &JobContext) -> Result<(), JobError> {
        let store = ctx.store();
        let now = Timestamp::now();
        let tenants = store.platform_read().await?.list_tenants().await?;
        for tenant in tenants {
            let mut tx = store.tenant(tenant.id).await?;
            let settings = tx.tenant_settings().await?;
            let days =
                |d: i64| Duration::from_secs(u64::try_from(d).unwrap_or(0).saturating_mul(86_400));
            tx.prune_inbox(now.minus(days(settings.raw_payload_retention_days)))
                .await?;
            tx.prune_idempotency_keys().await?;
            let before = now.minus(days(settings.audit_retention_days));
            let pruned = tx.prune_audit(before).await?;
            if pruned > 0 {
                tx.audit(system_event(pruned, before)).await?;
            }
            tx.commit().await?;
        }
        let mut tx = store.platform().await?;
        let before = now.minus(self.platform_keep);
        let pruned = tx.prune_platform_audit(before).await?;
        if pruned > 0 {
            tx.audit(system_event(pruned, before)).await?;
        }
        tx.prune_auth_state(now.minus(Duration::from_secs(86_400)))
            .await?;
        // Webhooks no channel claimed carry customer messages in a platform table: a week.
        tx.prune_unrouted(now.minus(Duration::from_secs(7 * 86_400)))
            .await?;
        tx.commit().await?;
        Ok(())
    }
}

/// The recurring audit-retention job.
pub fn audit_retention_schedule(every: Duration, offset: Duration) -> Recurring {
    fn job() -> Result<NewJob, Error> {
        NewJob::new(AUDIT_RETENTION_KIND, serde_json::json!({}))
    }
    Recurring {
        name: AUDIT_RETENTION_KIND.to_string(),
        every,
        offset,
        job,
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
    pub fn with_builtins(keep_done_jobs: Duration, platform_audit_keep: Duration) -> Self {
        Registry::new()
            .register(
                PRUNE_JOBS_KIND,
                PruneDoneJobs {
                    keep: keep_done_jobs,
                },
            )
            .register(PROBE_JOB_KIND, RecordProbe)
            .register(
                AUDIT_RETENTION_KIND,
                AuditRetention {
                    platform_keep: platform_audit_keep,
                },
            )
    }
}
