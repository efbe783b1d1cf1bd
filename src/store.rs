//! Durable records the sidecar keeps between requests and across restarts.
//!
//! Each kind of record has a small trait of its own, so that a kind can move to another
//! backend (a store shared by replicas) without the others noticing. [`EmbeddedStore`] is the
//! default backend for all of them: one crash-safe file under `CAUSEWAY_DATA_DIR`.

mod embedded;
mod redis;

use std::{
    future::Future,
    pin::Pin,
    time::{Duration, SystemTime},
};

use crate::envelope::EventIdentity;
use serde::{Deserialize, Serialize};

pub use embedded::{EmbeddedStore, HeldCorrelation};
pub use redis::RedisDedup;

/// A boxed future, so that the store traits stay usable as trait objects.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What the store remembers of a publish made with an `Idempotency-Key`.
///
/// The record is written before the event is published, with `confirmed = false`: a producer
/// that retries after a timeout gets the same `event_id` again, so a second copy on the
/// broker is a duplicate that delivery drops, never a second event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdempotencyRecord {
    /// The event the first request with this key made.
    #[serde(flatten)]
    pub event: EventIdentity,
    /// Whether the broker confirmed it.
    pub confirmed: bool,
    /// When the record may be forgotten, in milliseconds since the Unix epoch.
    pub expires_at_ms: u64,
}

/// Keeps idempotency records by key.
pub trait IdempotencyStore: Send + Sync + 'static {
    /// The record for `key`, unless there is none or it has expired.
    fn get_key<'a>(
        &'a self,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<IdempotencyRecord>, StoreError>>;

    /// Stores the record for `key`, durably, replacing any earlier one.
    fn put_key<'a>(
        &'a self,
        key: &'a str,
        record: IdempotencyRecord,
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Forgets `key` (its first publish certainly failed, so it names no event).
    fn remove_key<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), StoreError>>;
}

/// What a claim on an event found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Claim {
    /// The event is ours to deliver now; `complete` or `release` it after.
    Acquired,
    /// The app already accepted the event within the retention window.
    Done,
    /// Another delivery of the same event is in flight (here or in another replica).
    Busy,
}

/// Remembers which events each subscription's app accepted, so that a duplicate is never
/// POSTed twice, and makes concurrent copies of one event take turns.
///
/// Keys are `{subscription}/{event_id}`. A claim is a short lease, never a record of
/// success: only `complete`, called after the app's 2xx, marks an event done.
pub trait DedupStore: Send + Sync + 'static {
    /// Claims `key` for one delivery, for at most `lease`.
    fn claim<'a>(
        &'a self,
        key: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, Result<Claim, StoreError>>;

    /// Records `key` as done, durably, for `retention`; ends the claim.
    fn complete<'a>(
        &'a self,
        key: &'a str,
        retention: Duration,
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Records `key` as done like [`complete`](Self::complete), with the correlation id the
    /// delivery `held`: a store that keeps it too writes both in one change, and the guard is
    /// spent; any other leaves it to the guard, which writes it down when dropped.
    fn complete_holding<'a>(
        &'a self,
        key: &'a str,
        retention: Duration,
        held: &'a mut HeldCorrelation,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let _ = held;
        self.complete(key, retention)
    }

    /// Ends a claim without marking the event done (the delivery failed).
    fn release<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), StoreError>>;
}

/// Finds the correlation id of an event this sidecar delivered, so that the events an app
/// publishes in reaction (naming it in `X-Causation-ID`) join the same flow.
pub trait CorrelationMemory: Send + Sync + 'static {
    /// The correlation id of `event_id`, when it was delivered here within the retention.
    fn correlation_of(&self, event_id: &str) -> Result<Option<String>, StoreError>;
}

/// A store operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The embedded database reported an error.
    #[error("embedded store: {0}")]
    Embedded(String),
    /// A stored record could not be decoded.
    #[error("stored record is corrupt: {0}")]
    Corrupt(#[from] serde_json::Error),
    /// The store is closing and takes no more writes.
    #[error("the store is closed")]
    Closed,
    /// The shared Redis store failed.
    #[error("redis: {0}")]
    Redis(String),
    /// The store cannot serve requests for now (an I/O error such as a full disk, or Redis
    /// out of reach). It recovers by itself; the request may be tried again later.
    #[error("the {store} store is unavailable: {reason}")]
    Unavailable {
        /// `embedded` or `redis`.
        store: &'static str,
        /// The error that made it unavailable, as text.
        reason: String,
    },
}

impl StoreError {
    /// Whether the store is unavailable for now, rather than the request being at fault.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Unavailable { .. })
    }
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    system_ms(SystemTime::now())
}

/// Milliseconds since the Unix epoch of `time`.
pub fn system_ms(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The expiry of a record written now and kept for `retention`.
pub fn expiry_after(retention: Duration) -> u64 {
    now_ms().saturating_add(u64::try_from(retention.as_millis()).unwrap_or(u64::MAX))
}

/// A dedup store for unit tests: every claim is acquired, the first `failing_completes`
/// completions fail as an unavailable store would, and the keys completed and released are
/// recorded.
#[cfg(test)]
#[derive(Debug, Default)]
pub(crate) struct FakeDedup {
    pub(crate) failing_completes: u32,
    pub(crate) completes: std::sync::atomic::AtomicU32,
    pub(crate) completed: std::sync::Mutex<Vec<String>>,
    pub(crate) released: std::sync::Mutex<Vec<String>>,
}

#[cfg(test)]
impl FakeDedup {
    /// A store whose first `count` completions fail.
    pub(crate) fn failing(count: u32) -> Self {
        FakeDedup {
            failing_completes: count,
            ..FakeDedup::default()
        }
    }
}

#[cfg(test)]
impl DedupStore for FakeDedup {
    fn claim<'a>(&'a self, _: &'a str, _: Duration) -> BoxFuture<'a, Result<Claim, StoreError>> {
        Box::pin(async { Ok(Claim::Acquired) })
    }

    fn complete<'a>(&'a self, key: &'a str, _: Duration) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let call = self
                .completes
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if call < self.failing_completes {
                return Err(StoreError::Unavailable {
                    store: "redis",
                    reason: "connection refused".into(),
                });
            }
            crate::sync::lock(&self.completed).push(key.to_owned());
            Ok(())
        })
    }

    fn release<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            crate::sync::lock(&self.released).push(key.to_owned());
            Ok(())
        })
    }
}
