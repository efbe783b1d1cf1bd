//! Writes receipts in the background, in batches, so that a publish or a delivery only
//! hands one over and goes on.
//!
//! The queue is bounded: while the store fails, the batch in hand is tried again every
//! second and receipts that find the queue full are dropped, counted, never waited for.
//! The store's state is logged once per change.

use std::{sync::Arc, time::Duration};

use tokio::{sync::mpsc, task::JoinHandle};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{FlowStore, Receipt};
use crate::telemetry::metrics::Metrics;

/// Receipts waiting to be written.
const QUEUE: usize = 10_000;
/// Most receipts written at once.
const BATCH: usize = 500;
/// The wait before a failed batch is tried again.
const RETRY: Duration = Duration::from_secs(1);
/// How long the receipts still queued at shutdown may take to write.
const FLUSH: Duration = Duration::from_secs(2);

/// Hands receipts to the writer. Cheap to clone; a disabled one drops everything.
#[derive(Clone, Debug)]
pub struct Receipts {
    queue: Option<mpsc::Sender<Receipt>>,
    metrics: Arc<Metrics>,
}

impl Receipts {
    /// Receipts that are not kept (`CAUSEWAY_FLOW_RECEIPTS=false`).
    pub fn off(metrics: Arc<Metrics>) -> Self {
        Receipts {
            queue: None,
            metrics,
        }
    }

    /// Whether receipts are kept at all.
    pub fn is_on(&self) -> bool {
        self.queue.is_some()
    }

    /// Queues `receipt` for writing; never waits. A full queue drops it (counted).
    pub fn record(&self, receipt: Receipt) {
        let Some(queue) = &self.queue else {
            return;
        };
        if queue.try_send(receipt).is_err() {
            self.metrics.flow_receipts("dropped", 1);
        }
    }
}

/// Starts the writer; it ends after `shutdown`, once what was queued is written (within a
/// bound) or given up.
pub fn start_recorder(
    store: Arc<dyn FlowStore>,
    retention: Duration,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> (Receipts, JoinHandle<()>) {
    let (sender, queue) = mpsc::channel(QUEUE);
    let writer = Writer {
        store,
        retention,
        metrics: metrics.clone(),
        failing: false,
    };
    let task = tokio::spawn(writer.run(queue, shutdown));
    (
        Receipts {
            queue: Some(sender),
            metrics,
        },
        task,
    )
}

struct Writer {
    store: Arc<dyn FlowStore>,
    retention: Duration,
    metrics: Arc<Metrics>,
    failing: bool,
}

impl Writer {
    async fn run(mut self, mut queue: mpsc::Receiver<Receipt>, shutdown: CancellationToken) {
        let mut batch = Vec::with_capacity(BATCH);
        loop {
            if batch.is_empty() {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    received = queue.recv_many(&mut batch, BATCH) => if received == 0 { break },
                }
            }
            if self.write(&batch).await {
                batch.clear();
                continue;
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(RETRY) => {}
            }
        }
        // What is queued now gets one bounded try.
        queue.close();
        while queue.recv_many(&mut batch, BATCH).await > 0 && batch.len() < QUEUE {}
        if !batch.is_empty() {
            let count = batch.len();
            match tokio::time::timeout(FLUSH, self.write(&batch)).await {
                Ok(true) => {}
                _ => warn!(receipts = count, "flow receipts not written at shutdown"),
            }
        }
    }

    /// Writes one batch; whether it was written.
    async fn write(&mut self, batch: &[Receipt]) -> bool {
        let count = u64::try_from(batch.len()).unwrap_or(u64::MAX);
        match self.store.append(batch, self.retention).await {
            Ok(()) => {
                self.metrics.flow_receipts("written", count);
                if std::mem::take(&mut self.failing) {
                    info!("flow receipts are written again");
                }
                true
            }
            Err(error) => {
                self.metrics.flow_receipts("failed", 1);
                if !self.failing {
                    self.failing = true;
                    warn!(%error, "flow receipts cannot be written; they wait, and are dropped when too many wait");
                }
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Mutex,
        atomic::{AtomicU32, Ordering},
    };

    use super::*;
    use crate::{
        flow::{EventFacts, Kind, Route, Scope},
        store::{BoxFuture, StoreError},
    };

    /// A flow store whose first `failures` appends fail.
    #[derive(Default)]
    struct Flaky {
        failures: u32,
        calls: AtomicU32,
        written: Mutex<Vec<Receipt>>,
    }

    impl FlowStore for Flaky {
        fn scope(&self) -> Scope {
            Scope::Local
        }
        fn append<'a>(
            &'a self,
            receipts: &'a [Receipt],
            _: Duration,
        ) -> BoxFuture<'a, Result<(), StoreError>> {
            Box::pin(async move {
                if self.calls.fetch_add(1, Ordering::SeqCst) < self.failures {
                    return Err(StoreError::Closed);
                }
                crate::sync::lock(&self.written).extend_from_slice(receipts);
                Ok(())
            })
        }
        fn receipts<'a>(
            &'a self,
            _: &'a str,
        ) -> BoxFuture<'a, Result<(Vec<Receipt>, bool), StoreError>> {
            Box::pin(async { Ok((Vec::new(), false)) })
        }
        fn flow_of_event<'a>(
            &'a self,
            _: &'a str,
        ) -> BoxFuture<'a, Result<Option<String>, StoreError>> {
            Box::pin(async { Ok(None) })
        }
        fn recent(&self, _: usize) -> BoxFuture<'_, Result<Vec<String>, StoreError>> {
            Box::pin(async { Ok(Vec::new()) })
        }
        fn routes(&self) -> BoxFuture<'_, Result<Vec<Route>, StoreError>> {
            Box::pin(async { Ok(Vec::new()) })
        }
        fn put_routes<'a>(&'a self, _: &'a [Route]) -> BoxFuture<'a, Result<(), StoreError>> {
            Box::pin(async { Ok(()) })
        }
    }

    fn receipt(n: u64) -> Receipt {
        Receipt {
            kind: Kind::Published,
            at_ms: n,
            correlation_id: "flow".into(),
            event: EventFacts {
                event_id: format!("e{n}"),
                event_type: "OrderPlaced".into(),
                schema_version: "1.0".into(),
                source: "order".into(),
                occurred_at: String::new(),
                causation_id: None,
            },
            hop: None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_store_delays_receipts_without_losing_them() {
        let store = Arc::new(Flaky {
            failures: 2,
            ..Flaky::default()
        });
        let metrics = Arc::new(Metrics::default());
        let shutdown = CancellationToken::new();
        let (receipts, task) = start_recorder(
            store.clone(),
            Duration::from_secs(60),
            metrics.clone(),
            shutdown.clone(),
        );
        for n in 0..3 {
            receipts.record(receipt(n));
        }
        for _ in 0..50 {
            if crate::sync::lock(&store.written).len() == 3 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let written: Vec<u64> = crate::sync::lock(&store.written)
            .iter()
            .map(|r| r.at_ms)
            .collect();
        assert_eq!(written, [0, 1, 2]);
        let text = metrics.encode();
        assert!(
            text.contains(r#"causeway_flow_receipts_total{outcome="failed"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"causeway_flow_receipts_total{outcome="written"} 3"#),
            "{text}"
        );
        shutdown.cancel();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn receipts_that_find_the_queue_full_are_dropped_and_counted() {
        let metrics = Arc::new(Metrics::default());
        let (sender, _queue) = mpsc::channel(1);
        let receipts = Receipts {
            queue: Some(sender),
            metrics: metrics.clone(),
        };
        receipts.record(receipt(1));
        receipts.record(receipt(2));
        assert!(
            metrics
                .encode()
                .contains(r#"causeway_flow_receipts_total{outcome="dropped"} 1"#)
        );
        Receipts::off(metrics).record(receipt(3));
    }
}
