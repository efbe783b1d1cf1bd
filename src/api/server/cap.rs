//! The cap on a listener's open connections, with one log line when it is reached and one
//! when the listener is well under it again.

use std::sync::{
    Arc,
    atomic::{AtomicBool, AtomicU64, Ordering},
};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::{info, warn};

use crate::telemetry::metrics::{Closed, Listener, Metrics, OpenConnection};

/// The open connections of one listener.
#[derive(Debug)]
pub(super) struct Cap {
    listener: Listener,
    slots: Arc<Semaphore>,
    max: usize,
    /// Whether a connection was refused since the listener was last under its low mark.
    full: AtomicBool,
    /// Connections refused since then.
    refused: AtomicU64,
    metrics: Arc<Metrics>,
}

/// One open connection; its slot is free again when it is dropped.
#[derive(Debug)]
pub(super) struct Slot {
    cap: Arc<Cap>,
    _open: OpenConnection,
    _permit: OwnedSemaphorePermit,
}

impl Cap {
    pub(super) fn new(listener: Listener, max: usize, metrics: Arc<Metrics>) -> Self {
        Cap {
            listener,
            slots: Arc::new(Semaphore::new(max)),
            max,
            full: AtomicBool::new(false),
            refused: AtomicU64::new(0),
            metrics,
        }
    }

    /// A slot for a new connection, or `None` at the cap (counted, and logged when the cap
    /// is first reached).
    pub(super) fn take(self: &Arc<Self>) -> Option<Slot> {
        if let Ok(permit) = self.slots.clone().try_acquire_owned() {
            return Some(Slot {
                cap: self.clone(),
                _open: self.metrics.http().connection(self.listener),
                _permit: permit,
            });
        }
        self.metrics.http().closed(self.listener, Closed::Cap);
        self.refused.fetch_add(1, Ordering::Relaxed);
        if !self.full.swap(true, Ordering::AcqRel) {
            warn!(
                listener = self.listener.name(),
                max_connections = self.max,
                "connection cap reached: new connections are closed at once"
            );
        }
        None
    }

    /// The open connections at which the listener counts as under its cap again: a tenth
    /// below it, so that connections coming and going at the cap do not log each time.
    fn low_mark(&self) -> usize {
        self.max - (self.max / 10).max(1)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let cap = &self.cap;
        // This slot's permit is still held here, and is released right after.
        let open = cap.max.saturating_sub(cap.slots.available_permits() + 1);
        if open <= cap.low_mark() && cap.full.swap(false, Ordering::AcqRel) {
            info!(
                listener = cap.listener.name(),
                open,
                refused = cap.refused.swap(0, Ordering::Relaxed),
                "under the connection cap again"
            );
        }
    }
}
