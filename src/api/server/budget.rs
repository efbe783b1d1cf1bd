//! The API's budget of requests in flight, which bounds the memory their bodies take.
//!
//! A request weighs one, plus one for each 64 KiB of its body's declared length; a body of
//! unknown length (chunked) weighs as one of the largest accepted size. With the defaults
//! (256, 1 MiB bodies) that is at most 16 MiB of bodies in flight, however they are sent.
//! A request that does not get its weight within [`WAIT`] is answered `503` with
//! `Retry-After`, before its body is read. Waiting requests hold only their connection, so
//! the wait is bounded by the connection cap.

use std::{sync::Arc, time::Duration};

use hyper::body::{Body, Incoming};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::Requests;

/// How long a request may wait for room in the budget.
pub(super) const WAIT: Duration = Duration::from_secs(1);

/// The body bytes that weigh one more unit.
const UNIT: u64 = 64 * 1024;

/// The budget of one listener.
#[derive(Debug)]
pub(super) struct Budget {
    units: Arc<Semaphore>,
    max: u32,
    max_body: u64,
}

impl Budget {
    pub(super) fn new(requests: Requests) -> Self {
        // At most 65,535 (the setting's range), which a u32 holds.
        let max = u32::try_from(requests.max).unwrap_or(u32::MAX);
        Budget {
            units: Arc::new(Semaphore::new(max as usize)),
            max,
            max_body: u64::try_from(requests.max_body).unwrap_or(u64::MAX),
        }
    }

    /// What a request with this body weighs; never more than the whole budget.
    pub(super) fn weight(&self, body: &Incoming) -> u32 {
        self.weight_of(body.size_hint().upper())
    }

    /// What a body of this length (`None`: unknown) weighs.
    fn weight_of(&self, length: Option<u64>) -> u32 {
        let length = length.unwrap_or(self.max_body).min(self.max_body);
        let weight = 1 + length / UNIT;
        u32::try_from(weight).unwrap_or(u32::MAX).min(self.max)
    }

    /// Room for `weight`, held until dropped; `None` when none came within [`WAIT`].
    pub(super) async fn enter(&self, weight: u32) -> Option<OwnedSemaphorePermit> {
        let units = self.units.clone().acquire_many_owned(weight);
        // The semaphore is never closed.
        tokio::time::timeout(WAIT, units).await.ok()?.ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(max: usize) -> Arc<Budget> {
        Arc::new(Budget::new(Requests {
            max,
            max_body: 1024 * 1024,
        }))
    }

    #[test]
    fn a_request_weighs_one_plus_one_per_64_kib_of_body() {
        let budget = budget(256);
        assert_eq!(budget.weight_of(Some(0)), 1);
        assert_eq!(budget.weight_of(Some(65_535)), 1);
        assert_eq!(budget.weight_of(Some(65_536)), 2);
        // A chunked body weighs as the largest one; a declared length above it no more.
        assert_eq!(budget.weight_of(None), 17);
        assert_eq!(budget.weight_of(Some(u64::MAX)), 17);
        // Never more than the whole budget, or it could never get in.
        assert_eq!(self::budget(4).weight_of(None), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_waits_for_room_then_is_refused() {
        let budget = budget(4);
        let held = budget.enter(3).await.unwrap();
        let one = budget.enter(1).await.unwrap();
        let started = tokio::time::Instant::now();
        assert!(budget.enter(1).await.is_none(), "the budget is spent");
        assert_eq!(started.elapsed(), WAIT);
        // Room that frees during the wait is taken.
        let waiting = tokio::spawn({
            let budget = budget.clone();
            async move { budget.enter(2).await.is_some() }
        });
        tokio::time::sleep(WAIT / 2).await;
        assert!(!waiting.is_finished());
        drop(held);
        assert!(waiting.await.unwrap());
        drop(one);
    }
}
