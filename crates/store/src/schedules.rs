use waypost_core::{JobId, Result, Timestamp};

use crate::{NewJob, Store, connect::db_error, jobs::Enqueued, tx::on_conn};

impl Store {
    /// Fires recurring job `name` for the period starting at `period_start` (epoch ms),
    /// unless some process already did. The conditional update is the gate; the job's dedupe
    /// key (`schedule:{name}:{period_start}`) is a second wall. Returns the new job's id when
    /// this call fired it.
    pub async fn fire_schedule(
        &self,
        name: &str,
        period_start: Timestamp,
        job: NewJob,
    ) -> Result<Option<JobId>> {
        let now = Timestamp::now().as_millis();
        let period = period_start.as_millis();
        let mut tx = self.platform().await?;
        // The first process to see the schedule registers it without firing it as "taken";
        // the conditional update below then decides who fires.
        on_conn!(&mut tx.conn, |c| {
            sqlx::query(
                "INSERT INTO job_schedules (name, last_period, last_fired_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (name) DO NOTHING",
            )
            .bind(name)
            .bind(period - 1)
            .bind(now)
            .execute(c)
            .await
            .map(|r| r.rows_affected())
        })
        .map_err(db_error)?;
        let won = on_conn!(&mut tx.conn, |c| {
            sqlx::query(
                "UPDATE job_schedules SET last_period = $2, last_fired_at = $3 \
                 WHERE name = $1 AND last_period < $2",
            )
            .bind(name)
            .bind(period)
            .bind(now)
            .execute(c)
            .await
            .map(|r| r.rows_affected())
        })
        .map_err(db_error)?
            == 1;
        if !won {
            tx.rollback().await?;
            return Ok(None);
        }
        let enqueued = tx
            .enqueue(job.dedupe_key(format!("schedule:{name}:{period}")))
            .await?;
        let id = match enqueued {
            Enqueued::Created(id) => id,
            Enqueued::Duplicate => {
                tx.rollback().await?;
                return Ok(None);
            }
        };
        on_conn!(&mut tx.conn, |c| {
            sqlx::query("UPDATE job_schedules SET last_job_id = $2 WHERE name = $1")
                .bind(name)
                .bind(id.as_uuid())
                .execute(c)
                .await
                .map(|r| r.rows_affected())
        })
        .map_err(db_error)?;
        tx.commit().await?;
        Ok(Some(id))
    }
}
