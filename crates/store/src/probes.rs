use std::collections::BTreeMap;

use serde::Serialize;
use uuid::Uuid;
use waypost_core::{Result, Timestamp};

use crate::{
    NewJob, Store,
    connect::db_error,
    tx::{Platform, Tx, on_conn},
};

/// Progress of a batch of probe jobs: an end-to-end check that workers are processing the
/// queue, and how many times each probe ran (a run count above one is a duplicate).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ProbeStatus {
    pub batch_id: Uuid,
    pub total: u64,
    pub completed: u64,
    /// Probes that ran more than once: must stay 0.
    pub duplicated: u64,
    /// Completed probes per worker.
    pub by_worker: BTreeMap<String, u64>,
    /// Milliseconds from enqueue to completion, median and maximum.
    pub latency_p50_ms: Option<i64>,
    pub latency_max_ms: Option<i64>,
}

pub const PROBE_JOB_KIND: &str = "system.probe";

impl Store {
    /// Enqueues `count` probe jobs in one transaction and returns the batch id.
    pub async fn start_probe_batch(&self, count: u32) -> Result<Uuid> {
        let batch = Uuid::now_v7();
        let now = Timestamp::now().as_millis();
        let mut tx = self.platform().await?;
        for _ in 0..count {
            let id = Uuid::now_v7();
            on_conn!(&mut tx.conn, |c| {
                sqlx::query(
                    "INSERT INTO job_probes (id, batch_id, enqueued_at) VALUES ($1, $2, $3)",
                )
                .bind(id)
                .bind(batch)
                .bind(now)
                .execute(c)
                .await
                .map(|r| r.rows_affected())
            })
            .map_err(db_error)?;
            tx.enqueue(NewJob::new(
                PROBE_JOB_KIND,
                serde_json::json!({ "probe_id": id }),
            )?)
            .await?;
        }
        tx.commit().await?;
        Ok(batch)
    }

    pub async fn probe_status(&self, batch: Uuid) -> Result<ProbeStatus> {
        #[derive(sqlx::FromRow)]
        struct Row {
            enqueued_at: i64,
            completed_at: Option<i64>,
            completed_by: Option<String>,
            runs: i64,
        }
        let mut tx = self.platform_read().await?;
        let rows = on_conn!(&mut tx.conn, |c| {
            sqlx::query_as::<_, Row>(
                "SELECT enqueued_at, completed_at, completed_by, runs FROM job_probes \
                 WHERE batch_id = $1",
            )
            .bind(batch)
            .fetch_all(c)
            .await
        })
        .map_err(db_error)?;
        tx.rollback().await?;
        let mut by_worker = BTreeMap::new();
        let mut latencies = Vec::new();
        let mut duplicated = 0;
        for row in &rows {
            if row.runs > 1 {
                duplicated += 1;
            }
            if let (Some(done), Some(worker)) = (row.completed_at, &row.completed_by) {
                *by_worker.entry(worker.clone()).or_insert(0) += 1;
                latencies.push(done - row.enqueued_at);
            }
        }
        latencies.sort_unstable();
        Ok(ProbeStatus {
            batch_id: batch,
            total: rows.len() as u64,
            completed: latencies.len() as u64,
            duplicated,
            by_worker,
            latency_p50_ms: latencies.get(latencies.len() / 2).copied(),
            latency_max_ms: latencies.last().copied(),
        })
    }
}

impl Tx<Platform> {
    /// The probe job's effect, committed together with the job's completion.
    pub async fn record_probe_run(&mut self, probe: Uuid, worker: &str) -> Result<()> {
        on_conn!(&mut self.conn, |c| {
            sqlx::query(
                "UPDATE job_probes SET runs = runs + 1, completed_at = $2, completed_by = $3 \
                 WHERE id = $1",
            )
            .bind(probe)
            .bind(Timestamp::now().as_millis())
            .bind(worker)
            .execute(c)
            .await
            .map(|r| r.rows_affected())
        })
        .map_err(db_error)?;
        Ok(())
    }
}
