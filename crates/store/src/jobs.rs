use std::{fmt, str::FromStr, time::Duration};

use serde::Serialize;
use uuid::Uuid;
use waypost_core::{Error, ErrorCode, JobId, Result, TenantId, Timestamp};

use crate::{
    Store,
    connect::db_error,
    tx::{Conn, Scope, Tx, on_conn},
};

/// Where a job is in its life. A leased job is still `Pending`: its lease is an owner plus a
/// `run_at` pushed into the future, so a crashed worker's job simply becomes due again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Pending,
    /// Completed; kept only while a dedupe key must go on deduplicating.
    Done,
    /// Failed `max_attempts` times; waits for inspection and replay.
    Dead,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Pending => "pending",
            JobState::Done => "done",
            JobState::Dead => "dead",
        }
    }
}

impl FromStr for JobState {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "pending" => Ok(JobState::Pending),
            "done" => Ok(JobState::Done),
            "dead" => Ok(JobState::Dead),
            other => Err(Error::validation(format!(
                "unknown job state {other:?}; expected pending, done or dead"
            ))),
        }
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Jobs as rows: a fresh id, the job, its dedupe key scoped to the tenant (so two tenants'
/// keys never collide) and its payload as text.
pub(crate) fn job_rows(
    tenant: Option<Uuid>,
    jobs: Vec<NewJob>,
) -> Vec<(Uuid, NewJob, Option<String>, String)> {
    jobs.into_iter()
        .map(|job| {
            let key = job.dedupe_key.as_ref().map(|key| match tenant {
                Some(t) => format!("{t}:{key}"),
                None => format!("platform:{key}"),
            });
            let payload = job.payload.to_string();
            (Uuid::now_v7(), job, key, payload)
        })
        .collect()
}

/// A job to enqueue. Payloads carry ids, never customer data: the queue is a platform table.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub(crate) kind: String,
    payload: serde_json::Value,
    pub(crate) run_at: Option<Timestamp>,
    dedupe_key: Option<String>,
    pub(crate) max_attempts: u32,
}

impl NewJob {
    pub const DEFAULT_MAX_ATTEMPTS: u32 = 12;

    pub fn new(kind: impl Into<String>, payload: impl Serialize) -> Result<Self> {
        let payload = serde_json::to_value(payload)
            .map_err(|e| Error::internal("serializing a job payload", e))?;
        Ok(Self {
            kind: kind.into(),
            payload,
            run_at: None,
            dedupe_key: None,
            max_attempts: Self::DEFAULT_MAX_ATTEMPTS,
        })
    }

    /// Do not run before this instant.
    pub fn run_at(mut self, at: Timestamp) -> Self {
        self.run_at = Some(at);
        self
    }

    /// At most one job with this key exists (within the enqueuing tenant) while it is
    /// pending, dead, or done and not yet pruned.
    pub fn dedupe_key(mut self, key: impl Into<String>) -> Self {
        self.dedupe_key = Some(key.into());
        self
    }

    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enqueued {
    Created(JobId),
    /// A job with the same dedupe key already exists; nothing was added.
    Duplicate,
}

/// A job leased to one worker. The lease is fenced by `(lease_owner, attempts)`: once it has
/// expired and another worker has claimed the job, this copy can no longer complete or fail it.
#[derive(Debug, Clone)]
pub struct ClaimedJob {
    pub id: JobId,
    pub tenant_id: Option<TenantId>,
    pub kind: String,
    pub payload: serde_json::Value,
    /// This attempt's number, starting at 1.
    pub attempts: u32,
    pub max_attempts: u32,
    pub lease_owner: String,
    pub created_at: Timestamp,
    has_dedupe_key: bool,
}

/// A job as listed for operators.
#[derive(Debug, Clone, Serialize)]
pub struct JobRecord {
    pub id: JobId,
    pub tenant_id: Option<TenantId>,
    pub kind: String,
    pub state: JobState,
    pub attempts: u32,
    pub max_attempts: u32,
    pub run_at: Timestamp,
    pub last_error: Option<String>,
    pub dedupe_key: Option<String>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// Queue depth and age for one kind and state, for metrics.
#[derive(Debug, Clone, Serialize)]
pub struct KindStats {
    pub kind: String,
    pub state: JobState,
    pub count: i64,
    pub oldest_created_at: Timestamp,
}

#[derive(sqlx::FromRow)]
struct ClaimRow {
    id: Uuid,
    tenant_id: Option<Uuid>,
    kind: String,
    payload: String,
    attempts: i64,
    max_attempts: i64,
    dedupe_key: Option<String>,
    created_at: i64,
}

#[derive(sqlx::FromRow)]
struct JobRow {
    id: Uuid,
    tenant_id: Option<Uuid>,
    kind: String,
    state: String,
    attempts: i64,
    max_attempts: i64,
    run_at: i64,
    last_error: Option<String>,
    dedupe_key: Option<String>,
    created_at: i64,
    updated_at: i64,
}

impl TryFrom<JobRow> for JobRecord {
    type Error = Error;
    fn try_from(row: JobRow) -> Result<Self> {
        Ok(JobRecord {
            id: JobId::from_uuid(row.id),
            tenant_id: row.tenant_id.map(TenantId::from_uuid),
            kind: row.kind,
            state: row.state.parse()?,
            attempts: to_u32(row.attempts),
            max_attempts: to_u32(row.max_attempts),
            run_at: Timestamp::from_millis(row.run_at),
            last_error: row.last_error,
            dedupe_key: row.dedupe_key,
            created_at: Timestamp::from_millis(row.created_at),
            updated_at: Timestamp::from_millis(row.updated_at),
        })
    }
}

fn to_u32(value: i64) -> u32 {
    u32::try_from(value).unwrap_or(u32::MAX)
}

const MAX_ERROR_LEN: usize = 2_000;

/// The claim, written once. PostgreSQL adds `FOR UPDATE SKIP LOCKED` so concurrent workers
/// pass over each other's rows instead of queueing on them; SQLite has a single writer, so
/// the plain statement is already atomic. The pick is a materialized CTE, not `id IN (SELECT
/// … LIMIT n)`: a planner may rescan such a subquery per row, and with SKIP LOCKED every
/// rescan finds new rows, leasing more than `n` jobs. Only kinds the worker can run are
/// picked (`$5`: a text array on PostgreSQL, a JSON array on SQLite).
macro_rules! claim_sql {
    ($kinds:literal, $lock:literal) => {
        concat!(
            "WITH picked AS MATERIALIZED (SELECT id FROM jobs \
             WHERE state = 'pending' AND run_at <= $3 AND ",
            $kinds,
            " ORDER BY run_at LIMIT $4",
            $lock,
            ") UPDATE jobs SET run_at = $1, lease_owner = $2, attempts = attempts + 1, \
             updated_at = $3 \
             WHERE id IN (SELECT id FROM picked) AND state = 'pending' AND run_at <= $3 \
             RETURNING id, tenant_id, kind, payload, attempts, max_attempts, dedupe_key, created_at"
        )
    };
}
const CLAIM_SQLITE: &str = claim_sql!("kind IN (SELECT value FROM json_each($5))", "");
const CLAIM_POSTGRES: &str = claim_sql!("kind = ANY($5)", " FOR UPDATE SKIP LOCKED");

/// The job kinds a worker has handlers for: it claims only these, so a job of a kind it does
/// not know (a newer release's, during a rolling deploy) is left untouched for a process that
/// knows it, its attempts unspent.
#[derive(Debug, Clone)]
pub struct JobKinds {
    kinds: Vec<String>,
    /// The same list as a JSON array, for SQLite's `json_each`; built once, not per claim.
    json: String,
}

impl JobKinds {
    pub fn new<K: Into<String>>(kinds: impl IntoIterator<Item = K>) -> Self {
        let kinds: Vec<String> = kinds.into_iter().map(Into::into).collect();
        let json = serde_json::Value::from(kinds.clone()).to_string();
        Self { kinds, json }
    }
}

macro_rules! job_columns {
    () => {
        "id, tenant_id, kind, state, attempts, max_attempts, run_at, last_error, dedupe_key, \
         created_at, updated_at"
    };
}

impl<S: Scope> Tx<S> {
    /// Adds a job in this transaction: it exists exactly when the transaction's other writes
    /// do. Tenant transactions enqueue for their tenant.
    pub async fn enqueue(&mut self, job: NewJob) -> Result<Enqueued> {
        let tenant = self.scope.tenant_id();
        // Dedupe keys are namespaced by tenant so tenants cannot collide or probe each other.
        let dedupe_key = job.dedupe_key.map(|key| match tenant {
            Some(t) => format!("{t}:{key}"),
            None => format!("platform:{key}"),
        });
        let id = JobId::new();
        let now = Timestamp::now();
        let payload = job.payload.to_string();
        let inserted = on_conn!(&mut self.conn, |c| {
            sqlx::query(
                "INSERT INTO jobs (id, tenant_id, kind, payload, state, run_at, attempts, \
                 max_attempts, dedupe_key, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, 'pending', $5, 0, $6, $7, $8, $8) \
                 ON CONFLICT (dedupe_key) DO NOTHING",
            )
            .bind(id.as_uuid())
            .bind(tenant.map(|t| *t.as_uuid()))
            .bind(&job.kind)
            .bind(&payload)
            .bind(job.run_at.unwrap_or(now).as_millis())
            .bind(i64::from(job.max_attempts))
            .bind(&dedupe_key)
            .bind(now.as_millis())
            .execute(c)
            .await
            .map(|r| r.rows_affected())
        })
        .map_err(db_error)?;
        Ok(if inserted == 1 {
            Enqueued::Created(id)
        } else {
            Enqueued::Duplicate
        })
    }

    /// Adds many jobs with one multi-row INSERT; returns how many were new (dedupe keys that
    /// already exist are skipped).
    pub async fn enqueue_many(&mut self, jobs: Vec<NewJob>) -> Result<u64> {
        if jobs.is_empty() {
            return Ok(0);
        }
        let tenant = self.scope.tenant_id().map(|t| *t.as_uuid());
        let now = Timestamp::now().as_millis();
        let rows = job_rows(tenant, jobs);
        on_conn!(&mut self.conn, |c| {
            let mut insert = sqlx::QueryBuilder::new(
                "INSERT INTO jobs (id, tenant_id, kind, payload, state, run_at, attempts, \
                 max_attempts, dedupe_key, created_at, updated_at) ",
            );
            insert.push_values(&rows, |mut row, (id, job, key, payload)| {
                row.push_bind(*id)
                    .push_bind(tenant)
                    .push_bind(job.kind.clone())
                    .push_bind(payload.clone())
                    .push_bind("pending")
                    .push_bind(job.run_at.map_or(now, Timestamp::as_millis))
                    .push_bind(0_i64)
                    .push_bind(i64::from(job.max_attempts))
                    .push_bind(key.clone())
                    .push_bind(now)
                    .push_bind(now);
            });
            insert.push(" ON CONFLICT (dedupe_key) DO NOTHING");
            insert.build().execute(c).await.map(|r| r.rows_affected())
        })
        .map_err(db_error)
    }

    /// Marks a claimed job complete in this transaction, so its effects and its completion
    /// commit together (or not at all). Fails with `conflict` if the lease was lost.
    pub async fn complete_job(&mut self, job: &ClaimedJob) -> Result<()> {
        if self.scope.tenant_id() != job.tenant_id {
            return Err(Error::new(
                ErrorCode::Internal,
                "a job must be completed in its own tenant's transaction",
            ));
        }
        let now = Timestamp::now().as_millis();
        // A job with a dedupe key stays as `done` so the key keeps deduplicating until pruned.
        let affected = if job.has_dedupe_key {
            on_conn!(&mut self.conn, |c| {
                sqlx::query(
                    "UPDATE jobs SET state = 'done', lease_owner = NULL, updated_at = $4 \
                     WHERE id = $1 AND lease_owner = $2 AND attempts = $3 AND state = 'pending'",
                )
                .bind(job.id.as_uuid())
                .bind(&job.lease_owner)
                .bind(i64::from(job.attempts))
                .bind(now)
                .execute(c)
                .await
                .map(|r| r.rows_affected())
            })
        } else {
            on_conn!(&mut self.conn, |c| {
                sqlx::query(
                    "DELETE FROM jobs \
                     WHERE id = $1 AND lease_owner = $2 AND attempts = $3 AND state = 'pending'",
                )
                .bind(job.id.as_uuid())
                .bind(&job.lease_owner)
                .bind(i64::from(job.attempts))
                .execute(c)
                .await
                .map(|r| r.rows_affected())
            })
        }
        .map_err(db_error)?;
        if affected == 1 {
            Ok(())
        } else {
            Err(lease_lost(job))
        }
    }
}

#[track_caller]
fn lease_lost(job: &ClaimedJob) -> Error {
    Error::new(
        ErrorCode::Conflict,
        format!("lease on job {} was lost", job.id),
    )
}

impl Store {
    /// Leases up to `limit` due jobs of the given kinds to `owner` until `now + lease`.
    pub async fn claim_jobs(
        &self,
        owner: &str,
        kinds: &JobKinds,
        limit: u32,
        lease: Duration,
        now: Timestamp,
    ) -> Result<Vec<ClaimedJob>> {
        let mut tx = self.platform().await?;
        let until = now.plus(lease).as_millis();
        let rows = match &mut tx.conn {
            Conn::Sqlite(c) => {
                sqlx::query_as::<_, ClaimRow>(CLAIM_SQLITE)
                    .bind(until)
                    .bind(owner)
                    .bind(now.as_millis())
                    .bind(i64::from(limit))
                    .bind(&kinds.json)
                    .fetch_all(&mut **c)
                    .await
            }
            Conn::Postgres(c) => {
                sqlx::query_as::<_, ClaimRow>(CLAIM_POSTGRES)
                    .bind(until)
                    .bind(owner)
                    .bind(now.as_millis())
                    .bind(i64::from(limit))
                    .bind(&kinds.kinds)
                    .fetch_all(&mut **c)
                    .await
            }
        }
        .map_err(db_error)?;
        tx.commit().await?;
        rows.into_iter()
            .map(|row| {
                let payload = serde_json::from_str(&row.payload)
                    .map_err(|e| Error::internal("stored job payload is not JSON", e))?;
                Ok(ClaimedJob {
                    id: JobId::from_uuid(row.id),
                    tenant_id: row.tenant_id.map(TenantId::from_uuid),
                    kind: row.kind,
                    payload,
                    attempts: to_u32(row.attempts),
                    max_attempts: to_u32(row.max_attempts),
                    lease_owner: owner.to_string(),
                    created_at: Timestamp::from_millis(row.created_at),
                    has_dedupe_key: row.dedupe_key.is_some(),
                })
            })
            .collect()
    }

    /// Records a failed attempt: due again at `retry_at`, or dead when `None`.
    pub async fn fail_job(
        &self,
        job: &ClaimedJob,
        error: &str,
        retry_at: Option<Timestamp>,
    ) -> Result<JobState> {
        let error: String = error.chars().take(MAX_ERROR_LEN).collect();
        let now = Timestamp::now().as_millis();
        let (state, run_at) = match retry_at {
            Some(at) => (JobState::Pending, at.as_millis()),
            None => (JobState::Dead, now),
        };
        let mut tx = self.platform().await?;
        let affected = on_conn!(&mut tx.conn, |c| {
            sqlx::query(
                "UPDATE jobs SET state = $4, run_at = $5, lease_owner = NULL, last_error = $6, \
                 updated_at = $7 \
                 WHERE id = $1 AND lease_owner = $2 AND attempts = $3 AND state = 'pending'",
            )
            .bind(job.id.as_uuid())
            .bind(&job.lease_owner)
            .bind(i64::from(job.attempts))
            .bind(state.as_str())
            .bind(run_at)
            .bind(&error)
            .bind(now)
            .execute(c)
            .await
            .map(|r| r.rows_affected())
        })
        .map_err(db_error)?;
        tx.commit().await?;
        if affected == 1 {
            Ok(state)
        } else {
            Err(lease_lost(job))
        }
    }

    /// Hands back every job leased to `owner` (graceful shutdown): due now, and the
    /// interrupted attempt is not counted.
    pub async fn release_jobs(&self, owner: &str) -> Result<u64> {
        let now = Timestamp::now().as_millis();
        let mut tx = self.platform().await?;
        let released = on_conn!(&mut tx.conn, |c| {
            sqlx::query(
                "UPDATE jobs SET run_at = $2, lease_owner = NULL, updated_at = $2, \
                 attempts = CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END \
                 WHERE lease_owner = $1 AND state = 'pending'",
            )
            .bind(owner)
            .bind(now)
            .execute(c)
            .await
            .map(|r| r.rows_affected())
        })
        .map_err(db_error)?;
        tx.commit().await?;
        Ok(released)
    }

    /// Extends one job's lease to `until` (the worker's heartbeat), if this worker still
    /// holds it. Returns whether it did.
    pub async fn extend_lease(&self, job: &ClaimedJob, until: Timestamp) -> Result<bool> {
        let mut tx = self.platform().await?;
        let extended = on_conn!(&mut tx.conn, |c| {
            sqlx::query(
                "UPDATE jobs SET run_at = $4 \
                 WHERE id = $1 AND lease_owner = $2 AND attempts = $3 AND state = 'pending'",
            )
            .bind(job.id.as_uuid())
            .bind(&job.lease_owner)
            .bind(i64::from(job.attempts))
            .bind(until.as_millis())
            .execute(c)
            .await
            .map(|r| r.rows_affected())
        })
        .map_err(db_error)?;
        tx.commit().await?;
        Ok(extended == 1)
    }

    /// Newest first, optionally only one state.
    pub async fn list_jobs(&self, state: Option<JobState>, limit: u32) -> Result<Vec<JobRecord>> {
        let mut tx = self.platform_read().await?;
        let rows = on_conn!(&mut tx.conn, |c| {
            sqlx::query_as::<_, JobRow>(concat!(
                "SELECT ",
                job_columns!(),
                " FROM jobs WHERE ($1 = '' OR state = $1) ORDER BY id DESC LIMIT $2"
            ))
            .bind(state.map_or("", JobState::as_str))
            .bind(i64::from(limit))
            .fetch_all(c)
            .await
        })
        .map_err(db_error)?;
        tx.rollback().await?;
        rows.into_iter().map(JobRecord::try_from).collect()
    }

    pub async fn get_job(&self, id: JobId) -> Result<JobRecord> {
        let mut tx = self.platform_read().await?;
        let row = on_conn!(&mut tx.conn, |c| {
            sqlx::query_as::<_, JobRow>(concat!(
                "SELECT ",
                job_columns!(),
                " FROM jobs WHERE id = $1"
            ))
            .bind(id.as_uuid())
            .fetch_optional(c)
            .await
        })
        .map_err(db_error)?;
        tx.rollback().await?;
        row.ok_or_else(|| Error::not_found("job"))?.try_into()
    }

    /// Puts a dead job back in the queue with a fresh set of attempts.
    pub async fn replay_job(&self, id: JobId) -> Result<JobRecord> {
        let now = Timestamp::now().as_millis();
        let mut tx = self.platform().await?;
        let affected = on_conn!(&mut tx.conn, |c| {
            sqlx::query(
                "UPDATE jobs SET state = 'pending', attempts = 0, run_at = $2, updated_at = $2 \
                 WHERE id = $1 AND state = 'dead'",
            )
            .bind(id.as_uuid())
            .bind(now)
            .execute(c)
            .await
            .map(|r| r.rows_affected())
        })
        .map_err(db_error)?;
        tx.commit().await?;
        if affected == 0 {
            let job = self.get_job(id).await?;
            return Err(Error::new(
                ErrorCode::Conflict,
                format!("job {id} is {}, only dead jobs can be replayed", job.state),
            ));
        }
        self.get_job(id).await
    }

    /// Depth and oldest age of unfinished jobs by kind and state.
    pub async fn queue_stats(&self) -> Result<Vec<KindStats>> {
        #[derive(sqlx::FromRow)]
        struct Row {
            kind: String,
            state: String,
            n: i64,
            oldest: i64,
        }
        let mut tx = self.platform_read().await?;
        let rows = on_conn!(&mut tx.conn, |c| {
            sqlx::query_as::<_, Row>(
                "SELECT kind, state, COUNT(*) AS n, MIN(created_at) AS oldest FROM jobs \
                 WHERE state <> 'done' GROUP BY kind, state ORDER BY kind, state",
            )
            .fetch_all(c)
            .await
        })
        .map_err(db_error)?;
        tx.rollback().await?;
        rows.into_iter()
            .map(|r| {
                Ok(KindStats {
                    kind: r.kind,
                    state: r.state.parse()?,
                    count: r.n,
                    oldest_created_at: Timestamp::from_millis(r.oldest),
                })
            })
            .collect()
    }

    /// Deletes done jobs finished before `before`; their dedupe keys are released.
    pub async fn prune_done_jobs(&self, before: Timestamp) -> Result<u64> {
        let mut tx = self.platform().await?;
        let pruned = on_conn!(&mut tx.conn, |c| {
            sqlx::query("DELETE FROM jobs WHERE state = 'done' AND updated_at < $1")
                .bind(before.as_millis())
                .execute(c)
                .await
                .map(|r| r.rows_affected())
        })
        .map_err(db_error)?;
        tx.commit().await?;
        Ok(pruned)
    }
}
