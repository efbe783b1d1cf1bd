//! Exponential backoff with full jitter, for reconnects.

use std::time::Duration;

/// Delays that double from `initial` up to `max`, each drawn uniformly below the bound
/// ("full jitter"), so that many sidecars do not reconnect in lockstep after an outage.
#[derive(Clone, Debug)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// A backoff starting at `initial` and capped at `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial,
            max,
            attempt: 0,
        }
    }

    /// Starts again from `initial`, after a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// Moves `attempts` steps ahead, as if that many delays had been taken.
    pub fn skip(&mut self, attempts: u32) {
        self.attempt = self.attempt.saturating_add(attempts);
    }

    /// The upper bound of the next delay, without jitter.
    pub fn bound(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(20)).unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// The next delay: uniform in `[0, bound]`, at least a millisecond.
    pub fn next_delay(&mut self) -> Duration {
        let bound = self.bound();
        self.attempt = self.attempt.saturating_add(1);
        let millis = u64::try_from(bound.as_millis()).unwrap_or(u64::MAX).max(1);
        Duration::from_millis(jitter(millis).max(1))
    }
}

/// A number uniformly drawn from `0..=max`. The jitter needs no cryptographic quality:
/// the low bits of a fresh v7 UUID's random part are enough.
fn jitter(max: u64) -> u64 {
    let random = uuid::Uuid::now_v7().as_u64_pair().1;
    random % max.saturating_add(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_double_up_to_the_cap() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let mut bounds = Vec::new();
        for _ in 0..6 {
            bounds.push(backoff.bound().as_millis());
            let delay = backoff.next_delay();
            assert!(delay <= Duration::from_millis(*bounds.last().unwrap() as u64));
        }
        assert_eq!(bounds, [100, 200, 400, 800, 1000, 1000]);
        backoff.reset();
        assert_eq!(backoff.bound(), Duration::from_millis(100));
    }
}
