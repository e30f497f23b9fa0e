//! Sign-in throttling that a password guesser cannot turn against the account's owner.
//!
//! Failures are counted per (account, client address): after `failures_before_delay` of them
//! each further attempt from that address must wait, 1 s doubling up to 15 minutes, while the
//! owner signs in from anywhere else. A far higher per-account ceiling bounds a guesser spread
//! over many addresses, and a per-address ceiling one trying many accounts. Every window is an
//! hour. An attempt counts as a failure before the password is checked (redated when it fails,
//! forgiven when it succeeds), so a burst of parallel guesses cannot all slip under a limit.

use std::{net::IpAddr, time::Duration};

use waypost_core::{Result, Timestamp};
use waypost_store::{FailureWindow, Platform, Tx};

use crate::AuthConfig;

const WINDOW: Duration = Duration::from_secs(3600);
const MAX_DELAY: Duration = Duration::from_secs(15 * 60);

/// What the failures of one attempt are recorded under.
pub(crate) struct Subjects {
    ip: String,
    account: String,
    pair: String,
}

impl Subjects {
    pub(crate) fn new(email: &str, client: Option<IpAddr>) -> Self {
        let ip = client.map_or_else(|| "unknown".to_string(), |ip| ip.to_string());
        Self {
            pair: format!("pair:{ip} {email}"),
            ip: format!("ip:{ip}"),
            account: format!("account:{email}"),
        }
    }

    fn all(&self) -> [&str; 3] {
        [&self.ip, &self.account, &self.pair]
    }
}

/// When an attempt may go ahead: now, or after this long.
pub(crate) enum Admission {
    Now,
    RetryAfter(Duration),
}

/// How long the pair must wait after its latest failure, given how many it has.
fn pair_delay(failures: i64, free: i64) -> Duration {
    // 2^20 s is far past the cap already.
    let doublings = u32::try_from(failures.saturating_sub(free).clamp(0, 20)).unwrap_or(20);
    Duration::from_secs(1u64 << doublings).min(MAX_DELAY)
}

fn until(at: Timestamp, now: Timestamp) -> Duration {
    Duration::from_millis(u64::try_from(at.as_millis() - now.as_millis()).unwrap_or(0))
}

/// Past a ceiling, the next attempt may come when the oldest failure leaves the window.
fn ceiling(window: FailureWindow, max: i64, now: Timestamp) -> Option<Duration> {
    (window.count >= max).then(|| window.oldest.map_or(WINDOW, |t| until(t.plus(WINDOW), now)))
}

/// Decides whether an attempt may be checked, and if so records it as a failure (forgiven on
/// success) in the same transaction.
pub(crate) async fn admit(
    tx: &mut Tx<Platform>,
    config: &AuthConfig,
    subjects: &Subjects,
    now: Timestamp,
) -> Result<Admission> {
    // Address before account, always: two attempts never wait on each other's locks in turn.
    tx.lock_auth_subject(&subjects.ip).await?;
    tx.lock_auth_subject(&subjects.account).await?;
    let since = now.minus(WINDOW);
    let ip = tx.auth_failures_since(&subjects.ip, since).await?;
    let account = tx.auth_failures_since(&subjects.account, since).await?;
    let pair = tx.auth_failures_since(&subjects.pair, since).await?;
    let waited = pair
        .latest
        .filter(|_| pair.count >= config.failures_before_delay)
        .map(|latest| {
            until(
                latest.plus(pair_delay(pair.count, config.failures_before_delay)),
                now,
            )
        })
        .filter(|wait| !wait.is_zero());
    let refused = ceiling(ip, config.max_failures_per_ip, now)
        .or_else(|| ceiling(account, config.max_failures_per_account, now))
        .or(waited);
    if let Some(wait) = refused {
        return Ok(Admission::RetryAfter(wait));
    }
    for subject in subjects.all() {
        tx.record_auth_failure(subject, now).await?;
    }
    Ok(Admission::Now)
}

/// Dates the failure [`admit`] recorded to when the attempt was found to fail, so a delay
/// runs from the answer, however long the password check took.
pub(crate) async fn failed(
    tx: &mut Tx<Platform>,
    subjects: &Subjects,
    admitted_at: Timestamp,
) -> Result<()> {
    let now = Timestamp::now();
    for subject in subjects.all() {
        tx.move_auth_failure(subject, admitted_at, now).await?;
    }
    Ok(())
}

/// Takes back the failure [`admit`] recorded for an attempt that succeeded.
pub(crate) async fn forgive(
    tx: &mut Tx<Platform>,
    subjects: &Subjects,
    now: Timestamp,
) -> Result<()> {
    for subject in subjects.all() {
        tx.forgive_auth_failure(subject, now).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pair_delay_doubles_up_to_its_cap() {
        let delays: Vec<u64> = (5..12).map(|n| pair_delay(n, 5).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 64]);
        assert_eq!(pair_delay(40, 5), MAX_DELAY);
        assert_eq!(pair_delay(i64::MAX, 0), MAX_DELAY);
    }
}
