//! The correlation ids of events under delivery, held in memory while the app handles them
//! (the events it publishes in reaction find them there), then written to the file with the
//! delivery's outcome: with its dedup record when the app accepted it, lazily on its own
//! otherwise.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::sync::mpsc::error::TrySendError;

use super::{Done, EmbeddedStore, Expiring, WriteRequest, changes::Change};
use crate::{
    store::{CorrelationMemory, StoreError, expiry_after},
    sync::lock,
};

/// Correlation ids not in the file yet, by event id.
pub(super) type Uncommitted = Arc<Mutex<HashMap<String, String>>>;

/// The correlation id of one event while a delivery of it is under way, answered from
/// memory until it is in the file. Given to [`DedupStore::complete_holding`] with the
/// delivery's dedup record, both are written in one change; dropped otherwise, it is written
/// lazily on its own (it rides with the next durable commit: a crash may forget it, and the
/// redelivery that follows holds it again).
///
/// [`DedupStore::complete_holding`]: crate::store::DedupStore::complete_holding
#[derive(Debug)]
pub struct HeldCorrelation {
    store: EmbeddedStore,
    pub(super) event_id: String,
    pub(super) correlation_id: String,
    retention: Duration,
    /// Set once the correlation is in the file.
    pub(super) written: bool,
}

/// Forgets a held correlation once the commit that carried it is over: the file answers
/// from then on (or the record is lost, as a crash would lose it).
pub(super) struct Forget {
    memory: Uncommitted,
    event_id: String,
}

impl Forget {
    pub(super) fn run(self) {
        lock(&self.memory).remove(&self.event_id);
    }
}

impl EmbeddedStore {
    /// Holds `correlation_id` as the correlation of `event_id`, kept `retention` once
    /// written. While the store is unavailable the id is not kept, as a crash would lose it:
    /// the failure is counted in the store's metrics and its state logged once, not per
    /// event.
    pub fn hold_correlation(
        &self,
        event_id: &str,
        correlation_id: &str,
        retention: Duration,
    ) -> Option<HeldCorrelation> {
        self.check_open().ok()?;
        lock(&self.uncommitted_correlations).insert(event_id.to_owned(), correlation_id.to_owned());
        Some(HeldCorrelation {
            store: self.clone(),
            event_id: event_id.to_owned(),
            correlation_id: correlation_id.to_owned(),
            retention,
            written: false,
        })
    }

    /// Whether `held` is held by this store.
    pub(super) fn holds(&self, held: &HeldCorrelation) -> bool {
        Arc::ptr_eq(&self.shared, &held.store.shared)
    }

    /// What forgets `held` after the commit that writes it.
    pub(super) fn forget(&self, held: &HeldCorrelation) -> Forget {
        Forget {
            memory: self.uncommitted_correlations.clone(),
            event_id: held.event_id.clone(),
        }
    }
}

impl Drop for HeldCorrelation {
    fn drop(&mut self) {
        if self.written {
            return;
        }
        let store = &self.store;
        let forget = Forget {
            memory: store.uncommitted_correlations.clone(),
            event_id: std::mem::take(&mut self.event_id),
        };
        if store.check_open().is_err() {
            return forget.run();
        }
        let request = WriteRequest {
            change: Change::put(
                Expiring::Correlations,
                &forget.event_id,
                self.correlation_id.as_bytes(),
                expiry_after(self.retention),
            ),
            durable: false,
            done: Done::forgetting(forget),
        };
        match store.writes.try_send(request) {
            Ok(()) => {}
            Err(TrySendError::Closed(request)) => request.done.finish(Err(StoreError::Closed)),
            // The queue is full: the write waits for room in a task of its own (outside a
            // runtime, never in the sidecar, the correlation is forgotten).
            Err(TrySendError::Full(request)) => match tokio::runtime::Handle::try_current() {
                Ok(runtime) => {
                    let writes = store.writes.clone();
                    runtime.spawn(async move {
                        if let Err(unsent) = writes.send(request).await {
                            unsent.0.done.finish(Err(StoreError::Closed));
                        }
                    });
                }
                Err(_) => request.done.finish(Err(StoreError::Closed)),
            },
        }
    }
}

impl CorrelationMemory for EmbeddedStore {
    fn correlation_of(&self, event_id: &str) -> Result<Option<String>, StoreError> {
        if let Some(correlation_id) = lock(&self.uncommitted_correlations).get(event_id) {
            return Ok(Some(correlation_id.clone()));
        }
        Ok(self
            .get_expiring(Expiring::Correlations, event_id)?
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned()))
    }
}
