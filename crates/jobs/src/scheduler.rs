use std::time::Duration;

use tokio_util::sync::CancellationToken;
use waypost_core::{Error, Timestamp};
use waypost_store::{NewJob, Store};

/// A job fired once per period: periods are `every` long and start at `offset` past the
/// Unix epoch, so `every = 24h, offset = 3h` means nightly at 03:00 UTC.
#[derive(Clone)]
pub struct Recurring {
    pub name: String,
    pub every: Duration,
    pub offset: Duration,
    pub job: fn() -> Result<NewJob, Error>,
}

impl Recurring {
    /// Start of the period `now` falls in.
    pub fn period_start(&self, now: Timestamp) -> Timestamp {
        let every = i64::try_from(self.every.as_millis())
            .unwrap_or(i64::MAX)
            .max(1);
        let offset = i64::try_from(self.offset.as_millis()).unwrap_or(0) % every;
        let since = now.as_millis() - offset;
        Timestamp::from_millis(since.div_euclid(every) * every + offset)
    }
}

/// Fires due recurring jobs. Safe to run in every process: each period is claimed in the
/// database, so exactly one process enqueues it.
pub struct Scheduler {
    store: Store,
    schedules: Vec<Recurring>,
    tick: Duration,
}

impl Scheduler {
    pub fn new(store: Store, schedules: Vec<Recurring>, tick: Duration) -> Self {
        Self {
            store,
            schedules,
            tick,
        }
    }

    /// Fires every schedule whose current period has not fired yet; returns how many fired.
    pub async fn tick(&self, now: Timestamp) -> usize {
        let mut fired = 0;
        for schedule in &self.schedules {
            let period = schedule.period_start(now);
            let result = match (schedule.job)() {
                Ok(job) => self.store.fire_schedule(&schedule.name, period, job).await,
                Err(err) => Err(err),
            };
            match result {
                Ok(Some(job)) => {
                    fired += 1;
                    tracing::info!(schedule = %schedule.name, %job, period = %period, "recurring job enqueued");
                }
                Ok(None) => {}
                Err(err) => {
                    tracing::warn!(schedule = %schedule.name, error = %err, "firing recurring job failed")
                }
            }
        }
        fired
    }

    pub async fn run(self, shutdown: CancellationToken) {
        let mut interval = tokio::time::interval(self.tick);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = interval.tick() => { self.tick(Timestamp::now()).await; }
                () = shutdown.cancelled() => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recurring(every: u64, offset: u64) -> Recurring {
        Recurring {
            name: "t".into(),
            every: Duration::from_secs(every),
            offset: Duration::from_secs(offset),
            job: || NewJob::new("t", ()),
        }
    }

    #[test]
    fn nightly_periods_start_at_the_offset() {
        let nightly = recurring(86_400, 3 * 3600);
        // 2026-11-21T02:00:00Z belongs to the period that began 2026-11-20T03:00:00Z.
        let now = Timestamp::from_millis(1_795_226_400_000);
        let start = nightly.period_start(now);
        assert_eq!(start.rfc3339(), "2026-11-20T03:00:00Z");
        let later = nightly.period_start(now.plus(Duration::from_secs(3600)));
        assert_eq!(later.rfc3339(), "2026-11-21T03:00:00Z");
    }

    #[test]
    fn every_instant_in_a_period_maps_to_its_start() {
        let r = recurring(10, 3);
        for ms in [3_000, 5_000, 12_999] {
            assert_eq!(
                r.period_start(Timestamp::from_millis(ms)).as_millis(),
                3_000
            );
        }
        assert_eq!(
            r.period_start(Timestamp::from_millis(13_000)).as_millis(),
            13_000
        );
    }
}
