//! Recording a delivery the app accepted. A message is acked only once its dedup record is
//! stored: acked without it, a copy of the event could reach the app again unnoticed.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::claim::ClaimGuard;
use crate::store::StoreError;

/// The first wait before recording again while the store fails; it doubles up to
/// `RETRY_MAX`.
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(1);

/// What became of recording a delivery.
#[derive(Debug)]
pub(super) enum Recorded {
    /// The record is stored: the message may be acked.
    Stored,
    /// Shutdown came while the store still failed (the last error): the message must go
    /// back to its queue, and its event may reach the app again.
    GaveUp(StoreError),
}

/// Records `key` as done for `retention`, trying again while the store fails (each failure
/// is counted and the store's state logged by its health, not here) until it works or
/// `stop` is cancelled. The message stays unacknowledged meanwhile.
pub(super) async fn record_done(
    claim: &mut ClaimGuard,
    retention: Duration,
    stop: &CancellationToken,
) -> Recorded {
    let mut delay = RETRY_FIRST;
    loop {
        let error = match claim.complete(retention).await {
            Ok(()) => return Recorded::Stored,
            Err(error) => error,
        };
        debug!(%error, key = claim.key(), retry_ms = delay.as_millis() as u64, "cannot record the delivery yet; the message stays unacknowledged");
        tokio::select! {
            biased;
            _ = stop.cancelled() => return Recorded::GaveUp(error),
            _ = tokio::time::sleep(delay) => {}
        }
        delay = next_delay(delay);
    }
}

fn next_delay(delay: Duration) -> Duration {
    delay.saturating_mul(2).min(RETRY_MAX)
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, atomic::Ordering};

    use super::*;
    use crate::store::FakeDedup;

    fn flaky(failures: u32) -> Arc<FakeDedup> {
        Arc::new(FakeDedup::failing(failures))
    }

    #[tokio::test(start_paused = true)]
    async fn retries_with_backoff_until_the_record_is_stored() {
        let store = flaky(5);
        let started = tokio::time::Instant::now();
        let mut claim = ClaimGuard::new(store.clone(), "sub/e1".into());
        let recorded = record_done(
            &mut claim,
            Duration::from_secs(60),
            &CancellationToken::new(),
        )
        .await;
        assert!(matches!(recorded, Recorded::Stored), "{recorded:?}");
        assert_eq!(store.completes.load(Ordering::SeqCst), 6);
        // 100 + 200 + 400 + 800 + 1000 ms of waiting.
        assert_eq!(started.elapsed(), Duration::from_millis(2500));
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_at_shutdown_while_the_store_fails() {
        let store = flaky(u32::MAX);
        let stop = CancellationToken::new();
        let stopper = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(30)).await;
            stopper.cancel();
        });
        let mut claim = ClaimGuard::new(store.clone(), "sub/e1".into());
        let recorded = record_done(&mut claim, Duration::from_secs(60), &stop).await;
        assert!(
            matches!(recorded, Recorded::GaveUp(ref e) if e.is_unavailable()),
            "{recorded:?}"
        );
        // Waits of at most a second: about 30 tries in 30 s, not a busy loop.
        let calls = store.completes.load(Ordering::SeqCst);
        assert!((28..=35).contains(&calls), "{calls} tries");
    }

    #[test]
    fn waits_double_up_to_a_second() {
        let mut delay = RETRY_FIRST;
        let mut waits = Vec::new();
        for _ in 0..6 {
            waits.push(delay.as_millis());
            delay = next_delay(delay);
        }
        assert_eq!(waits, [100, 200, 400, 800, 1000, 1000]);
    }
}
