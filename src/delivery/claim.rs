//! A dedup claim held by one delivery: released when dropped, on whatever path the
//! delivery leaves without recording the event as done.

use std::{sync::Arc, time::Duration};

use tracing::warn;

use crate::store::{DedupStore, HeldCorrelation, StoreError};

/// The lease on one `{subscription}/{event_id}` key. Ends with [`ClaimGuard::complete`]
/// (the app accepted the event) or [`ClaimGuard::release`]; dropped unended — an early
/// return, a shutdown in the middle of a wait — it is released in the background. A
/// failed release is logged: the lease then runs out by itself.
pub(crate) struct ClaimGuard {
    dedup: Arc<dyn DedupStore>,
    key: String,
    held: bool,
    /// The event's correlation id, written with the event's record when it completes, or on
    /// its own when the guard ends otherwise.
    correlation: Option<HeldCorrelation>,
}

impl ClaimGuard {
    /// Guards the claim on `key`, just acquired.
    pub(crate) fn new(dedup: Arc<dyn DedupStore>, key: String) -> Self {
        ClaimGuard {
            dedup,
            key,
            held: true,
            correlation: None,
        }
    }

    /// Keeps the event's correlation id with the claim.
    pub(crate) fn holding(mut self, correlation: Option<HeldCorrelation>) -> Self {
        self.correlation = correlation;
        self
    }

    /// The claimed key.
    pub(crate) fn key(&self) -> &str {
        &self.key
    }

    /// Records the event as done for `retention`, which ends the claim. On failure the
    /// claim is still held.
    pub(crate) async fn complete(&mut self, retention: Duration) -> Result<(), StoreError> {
        match &mut self.correlation {
            Some(correlation) => {
                self.dedup
                    .complete_holding(&self.key, retention, correlation)
                    .await?;
            }
            None => self.dedup.complete(&self.key, retention).await?,
        }
        self.held = false;
        Ok(())
    }

    /// Ends the claim without recording the event (the delivery failed).
    pub(crate) async fn release(mut self) {
        self.held = false;
        release(&*self.dedup, &self.key).await;
    }
}

impl Drop for ClaimGuard {
    fn drop(&mut self) {
        if !self.held {
            return;
        }
        let dedup = self.dedup.clone();
        let key = std::mem::take(&mut self.key);
        // Outside a runtime (never, in the sidecar) the lease simply runs out.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move { release(&*dedup, &key).await });
        }
    }
}

async fn release(dedup: &dyn DedupStore, key: &str) {
    if let Err(error) = dedup.release(key).await {
        warn!(%error, key, "cannot release the dedup claim; it ends when its lease runs out");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::FakeDedup;

    #[tokio::test]
    async fn a_claim_dropped_on_any_path_is_released_and_a_completed_one_is_not() {
        let ledger = Arc::new(FakeDedup::default());
        let dedup: Arc<dyn DedupStore> = ledger.clone();

        // Dropped in the middle of a wait, as a shutdown would.
        let guard = ClaimGuard::new(dedup.clone(), "s/dropped".into());
        let waiting = tokio::spawn(async move {
            let _held = guard;
            std::future::pending::<()>().await;
        });
        tokio::task::yield_now().await;
        waiting.abort();
        let _ = waiting.await;

        let mut done = ClaimGuard::new(dedup.clone(), "s/done".into());
        done.complete(Duration::from_secs(60)).await.unwrap();
        drop(done);
        ClaimGuard::new(dedup.clone(), "s/failed".into())
            .release()
            .await;

        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !ledger
            .released
            .lock()
            .unwrap()
            .contains(&"s/dropped".to_owned())
        {
            assert!(tokio::time::Instant::now() < deadline, "never released");
            tokio::task::yield_now().await;
        }
        let mut released = ledger.released.lock().unwrap().clone();
        released.sort();
        assert_eq!(released, ["s/dropped", "s/failed"]);
        assert_eq!(*ledger.completed.lock().unwrap(), ["s/done"]);
    }
}
