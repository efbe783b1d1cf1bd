//! Process-wide health read by `/readyz` and the request handlers: the draining flag, and
//! whether each store works.
//!
//! A store reports the outcome of its operations to its [`StoreHealth`]; the state changes
//! only on evidence (an operation that started after the last change), and each change is
//! logged once: a warning with the error when the store starts failing, an info line with
//! how long it was down when it recovers. Failures in between are counted, not logged.

use std::{
    fmt,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use tracing::{info, warn};

use crate::{sync::lock, telemetry::metrics::Metrics};

/// Shared health state. Cloning shares it.
#[derive(Clone, Debug, Default)]
pub struct Health {
    draining: Arc<AtomicBool>,
    stores: Arc<Mutex<Vec<StoreHealth>>>,
}

impl Health {
    /// Marks the sidecar as draining: not ready, and refusing new work.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Whether the sidecar is draining.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Starts tracking `store`, in `initial` state; its reports reach `metrics` and `/readyz`.
    pub fn track(&self, store: Store, initial: StoreState, metrics: Arc<Metrics>) -> StoreHealth {
        let health = StoreHealth::new(store, initial, Some(metrics));
        lock(&self.stores).push(health.clone());
        health
    }

    /// The state of every tracked store.
    pub fn stores(&self) -> Vec<(Store, StoreState)> {
        lock(&self.stores)
            .iter()
            .map(|s| (s.store, s.state()))
            .collect()
    }
}

/// A store whose health is tracked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Store {
    /// The embedded file under the data directory.
    Embedded,
    /// The shared Redis dedup store.
    Redis,
}

impl Store {
    /// The store's name in logs and metric labels.
    pub fn name(self) -> &'static str {
        match self {
            Store::Embedded => "embedded",
            Store::Redis => "redis",
        }
    }
}

/// What is known of a store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreState {
    /// Not tried yet.
    Unknown,
    /// Its last operations worked.
    Ok,
    /// It fails; the reason is the error that started the failure.
    Failing {
        /// The error, as text.
        reason: String,
    },
}

impl StoreState {
    /// `ok`, `failing` or `unknown`.
    pub fn name(&self) -> &'static str {
        match self {
            StoreState::Unknown => "unknown",
            StoreState::Ok => "ok",
            StoreState::Failing { .. } => "failing",
        }
    }
}

/// One store's health, shared by everything that uses the store. Cloning shares it.
#[derive(Clone, Debug)]
pub struct StoreHealth {
    store: Store,
    /// Whether the state is `Ok`: lets successes skip the lock.
    up: Arc<AtomicBool>,
    tracker: Arc<Mutex<Tracker>>,
    metrics: Option<Arc<Metrics>>,
}

impl StoreHealth {
    /// Health that only logs (no metrics, not shown by `/readyz`), for a store used alone.
    pub fn detached(store: Store, initial: StoreState) -> Self {
        StoreHealth::new(store, initial, None)
    }

    fn new(store: Store, initial: StoreState, metrics: Option<Arc<Metrics>>) -> Self {
        if let Some(metrics) = &metrics {
            metrics.store_up(store.name(), initial == StoreState::Ok);
        }
        StoreHealth {
            store,
            up: Arc::new(AtomicBool::new(initial == StoreState::Ok)),
            tracker: Arc::new(Mutex::new(Tracker::new(initial, Instant::now()))),
            metrics,
        }
    }

    /// The store's current state.
    pub fn state(&self) -> StoreState {
        lock(&self.tracker).state.clone()
    }

    /// Whether the store is known to work.
    pub fn is_ok(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// Counts a failed operation that says nothing about the store's state (a bad record,
    /// a request that could not be served while the store was already known to fail).
    pub fn count_error(&self) {
        if let Some(metrics) = &self.metrics {
            metrics.store_error(self.store.name());
        }
    }

    /// Reports an operation that began at `started` and failed with `error`: counted, and the
    /// store is failing from now on (logged once, when that is news).
    pub fn failed(&self, started: Instant, error: &dyn fmt::Display) {
        self.count_error();
        let change = lock(&self.tracker).failed(started, error.to_string(), Instant::now());
        self.apply(change);
    }

    /// Reports an operation that began at `started` and worked.
    pub fn succeeded(&self, started: Instant) {
        if self.is_ok() {
            return;
        }
        let change = lock(&self.tracker).succeeded(started, Instant::now());
        self.apply(change);
    }

    fn apply(&self, change: Option<Change>) {
        let Some(change) = change else {
            return;
        };
        let store = self.store.name();
        let up = matches!(change, Change::Up | Change::Recovered { .. });
        self.up.store(up, Ordering::Release);
        if let Some(metrics) = &self.metrics {
            metrics.store_up(store, up);
        }
        match change {
            Change::Up => info!(store, "store connected"),
            Change::Failing { reason } => warn!(store, error = %reason, "store failing"),
            Change::Recovered { down } => info!(
                store,
                down_ms = u64::try_from(down.as_millis()).unwrap_or(u64::MAX),
                "store recovered"
            ),
        }
    }
}

/// A change of state, to log.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Change {
    /// The first success of a store that was not tried before.
    Up,
    /// The store started failing.
    Failing { reason: String },
    /// The store works again after failing for `down`.
    Recovered { down: Duration },
}

/// The state machine behind [`StoreHealth`], without clocks or logs.
#[derive(Debug)]
struct Tracker {
    state: StoreState,
    /// When the state last changed.
    since: Instant,
}

impl Tracker {
    fn new(state: StoreState, now: Instant) -> Self {
        Tracker { state, since: now }
    }

    /// An operation begun before the last change saw the old state: it proves nothing about
    /// the current one (a call stuck in an outage that fails after the store came back).
    fn is_stale(&self, started: Instant) -> bool {
        started < self.since
    }

    fn failed(&mut self, started: Instant, reason: String, now: Instant) -> Option<Change> {
        if matches!(self.state, StoreState::Failing { .. }) || self.is_stale(started) {
            return None;
        }
        self.state = StoreState::Failing {
            reason: reason.clone(),
        };
        self.since = now;
        Some(Change::Failing { reason })
    }

    fn succeeded(&mut self, started: Instant, now: Instant) -> Option<Change> {
        if self.state == StoreState::Ok || self.is_stale(started) {
            return None;
        }
        let change = match self.state {
            StoreState::Unknown => Change::Up,
            _ => Change::Recovered {
                down: now.saturating_duration_since(self.since),
            },
        };
        self.state = StoreState::Ok;
        self.since = now;
        Some(change)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(base: Instant, ms: u64) -> Instant {
        base + Duration::from_millis(ms)
    }

    #[test]
    fn one_change_per_outage() {
        let t = Instant::now();
        let mut tracker = Tracker::new(StoreState::Ok, t);
        assert_eq!(tracker.succeeded(at(t, 1), at(t, 2)), None);
        assert_eq!(
            tracker.failed(at(t, 10), "refused".into(), at(t, 11)),
            Some(Change::Failing {
                reason: "refused".into()
            })
        );
        // Further failures are counted by the caller, not changes.
        assert_eq!(tracker.failed(at(t, 20), "refused".into(), at(t, 21)), None);
        assert_eq!(
            tracker.state,
            StoreState::Failing {
                reason: "refused".into()
            }
        );
        assert_eq!(
            tracker.succeeded(at(t, 500), at(t, 511)),
            Some(Change::Recovered {
                down: Duration::from_millis(500)
            })
        );
        assert_eq!(tracker.succeeded(at(t, 600), at(t, 601)), None);
        assert_eq!(tracker.state, StoreState::Ok);
    }

    #[test]
    fn operations_begun_before_a_change_do_not_flip_it_back() {
        let t = Instant::now();
        let mut tracker = Tracker::new(StoreState::Ok, t);
        tracker.failed(at(t, 10), "timeout".into(), at(t, 11));
        // Began while the store still worked, answered after the failure was seen.
        assert_eq!(tracker.succeeded(at(t, 5), at(t, 12)), None);
        tracker.succeeded(at(t, 100), at(t, 101));
        // Began during the outage, failed after the recovery.
        assert_eq!(
            tracker.failed(at(t, 90), "timeout".into(), at(t, 102)),
            None
        );
        assert_eq!(tracker.state, StoreState::Ok);
    }

    #[test]
    fn a_store_not_tried_yet_comes_up_or_fails() {
        let t = Instant::now();
        let mut up = Tracker::new(StoreState::Unknown, t);
        assert_eq!(up.succeeded(at(t, 1), at(t, 2)), Some(Change::Up));
        let mut down = Tracker::new(StoreState::Unknown, t);
        assert!(matches!(
            down.failed(at(t, 1), "refused".into(), at(t, 2)),
            Some(Change::Failing { .. })
        ));
        assert!(matches!(
            down.succeeded(at(t, 3), at(t, 4)),
            Some(Change::Recovered { .. })
        ));
    }

    #[test]
    fn reports_reach_the_metrics_and_the_state() {
        let metrics = Arc::new(Metrics::default());
        let health = Health::default();
        let store = health.track(Store::Redis, StoreState::Ok, metrics.clone());
        let before = Instant::now();
        store.failed(before, &"connection refused");
        store.failed(Instant::now(), &"connection refused");
        assert!(!store.is_ok());
        let text = metrics.encode();
        assert!(
            text.contains("causeway_store_errors_total{store=\"redis\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("causeway_store_up{store=\"redis\"} 0"),
            "{text}"
        );
        assert_eq!(
            health.stores(),
            [(
                Store::Redis,
                StoreState::Failing {
                    reason: "connection refused".into()
                }
            )]
        );
        store.succeeded(Instant::now());
        assert!(store.is_ok());
        assert!(
            metrics
                .encode()
                .contains("causeway_store_up{store=\"redis\"} 1")
        );
    }
}
