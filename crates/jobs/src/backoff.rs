use std::time::Duration;

/// Exponential backoff with ±20 % jitter: `base * 2^(attempt-1)`, capped at `max`. Jitter
/// spreads retries of jobs that failed together (say, while a provider was down) so they do
/// not all come back at the same instant.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            base: Duration::from_secs(1),
            max: Duration::from_secs(3600),
        }
    }
}

impl Backoff {
    /// Delay before the attempt after `attempt` (1-based) failed.
    pub fn delay(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1).min(31);
        let nominal = self.base.saturating_mul(1u32 << exponent).min(self.max);
        // A factor in [0.8, 1.2).
        let factor = 0.8 + 0.4 * random_unit();
        nominal.mul_f64(factor)
    }
}

fn random_unit() -> f64 {
    let mut bytes = [0u8; 4];
    // Jitter needs no cryptographic quality; a failed read just means no jitter.
    if getrandom::fill(&mut bytes).is_err() {
        return 0.5;
    }
    f64::from(u32::from_le_bytes(bytes)) / (f64::from(u32::MAX) + 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_exponentially_within_jitter_and_cap() {
        let backoff = Backoff {
            base: Duration::from_secs(1),
            max: Duration::from_secs(60),
        };
        for attempt in 1..=40 {
            let nominal = (1u64 << (attempt - 1).min(31)).min(60) as f64;
            for _ in 0..50 {
                let d = backoff.delay(attempt).as_secs_f64();
                assert!(
                    d >= nominal * 0.8 - 1e-9 && d < nominal * 1.2,
                    "{attempt}: {d}"
                );
            }
        }
    }

    #[test]
    fn jitter_actually_varies() {
        let backoff = Backoff::default();
        let delays: std::collections::HashSet<_> = (0..20).map(|_| backoff.delay(5)).collect();
        assert!(delays.len() > 1);
    }
}
