//! Flow receipts and routes in the embedded store: this sidecar's own (`"scope": "local"`).
//!
//! Receipts expire by flow, as in Redis: a flow is kept for the retention after its latest
//! receipt, then the sweeper removes its receipts in one range. One index entry per flow
//! rather than per receipt keeps a delivery's receipt to one insert, next to its dedup record
//! in the same commit.

use std::{
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use redb::{ReadableDatabase, ReadableTable, Table, TableDefinition, WriteTransaction};

use super::{
    EmbeddedStore, Expiring,
    changes::{self, Change},
};
use crate::{
    flow::{FlowStore, Kind, MAX_RECEIPTS, Receipt, Route, Scope},
    store::{BoxFuture, StoreError, expiry_after, now_ms},
};

/// Receipts by `{correlation_id}\x01{at_ms:016x}{sequence:08x}`; the value is JSON.
const RECEIPTS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("flow_receipts");
/// When each flow expires (its latest receipt plus the retention), by correlation id.
const EXPIRY_BY_FLOW: TableDefinition<'_, &str, u64> = TableDefinition::new("flow_expiry_by_flow");
/// The same, ordered by time: (expires at ms, correlation id). The newest flows are last.
const FLOWS: TableDefinition<'_, (u64, &str), ()> = TableDefinition::new("flow_expiry");
/// Routes by `{exchange}/{service}/{subscription}/{since_ms}`; the value is JSON.
const ROUTES: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("flow_routes");

/// Makes receipt keys written in the same millisecond distinct.
static SEQUENCE: AtomicU32 = AtomicU32::new(0);

/// Separates the correlation id from the rest of a receipt key; correlation ids are
/// printable ASCII, so it never occurs in one.
const SEPARATOR: char = '\u{1}';
const AFTER_SEPARATOR: char = '\u{2}';

fn range_of(correlation_id: &str) -> (String, String) {
    (
        format!("{correlation_id}{SEPARATOR}"),
        format!("{correlation_id}{AFTER_SEPARATOR}"),
    )
}

impl FlowStore for EmbeddedStore {
    fn scope(&self) -> Scope {
        Scope::Local
    }

    fn append<'a>(
        &'a self,
        receipts: &'a [Receipt],
        retention: Duration,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let append = Append::of(receipts, expiry_after(retention))?;
            // Receipts are not worth an fsync of their own: they ride with the next one.
            self.submit_change(Change::Receipts(append), false).await
        })
    }

    fn receipts<'a>(
        &'a self,
        correlation_id: &'a str,
    ) -> BoxFuture<'a, Result<(Vec<Receipt>, bool), StoreError>> {
        Box::pin(async move {
            let (from, to) = range_of(correlation_id);
            let now = now_ms();
            let found = self.read(|db| {
                let txn = db.begin_read()?;
                let live = txn
                    .open_table(EXPIRY_BY_FLOW)?
                    .get(correlation_id)?
                    .is_some_and(|expires_at| expires_at.value() > now);
                let mut values = Vec::new();
                if !live {
                    return Ok(values);
                }
                let table = txn.open_table(RECEIPTS)?;
                for entry in table.range(from.as_str()..to.as_str())?.rev() {
                    values.push(entry?.1.value().to_vec());
                    if values.len() > MAX_RECEIPTS {
                        break;
                    }
                }
                Ok(values)
            })?;
            let truncated = found.len() > MAX_RECEIPTS;
            let mut receipts = found
                .iter()
                .take(MAX_RECEIPTS)
                .map(|data| serde_json::from_slice(data))
                .collect::<Result<Vec<Receipt>, _>>()?;
            receipts.reverse();
            Ok((receipts, truncated))
        })
    }

    fn flow_of_event<'a>(
        &'a self,
        event_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, StoreError>> {
        Box::pin(async move { crate::store::CorrelationMemory::correlation_of(self, event_id) })
    }

    fn recent(&self, limit: usize) -> BoxFuture<'_, Result<Vec<String>, StoreError>> {
        Box::pin(async move {
            let now = now_ms();
            self.read(|db| {
                let txn = db.begin_read()?;
                let table = txn.open_table(FLOWS)?;
                let mut flows = Vec::new();
                for entry in table.iter()?.rev().take(limit) {
                    let (key, _) = entry?;
                    let (expires_at, flow) = key.value();
                    if expires_at > now {
                        flows.push(flow.to_owned());
                    }
                }
                Ok(flows)
            })
        })
    }

    fn routes(&self) -> BoxFuture<'_, Result<Vec<Route>, StoreError>> {
        Box::pin(async move {
            let values = self.read(|db| {
                let txn = db.begin_read()?;
                let table = txn.open_table(ROUTES)?;
                let mut values = Vec::new();
                for entry in table.iter()? {
                    values.push(entry?.1.value().to_vec());
                }
                Ok(values)
            })?;
            // One unreadable route (written by a later version, say) hides only itself.
            Ok(values
                .iter()
                .filter_map(|value| serde_json::from_slice(value).ok())
                .collect())
        })
    }

    fn put_routes<'a>(&'a self, routes: &'a [Route]) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let mut changes = Vec::with_capacity(routes.len());
            for route in routes {
                let value = (route.until_ms != Some(0))
                    .then(|| serde_json::to_vec(route))
                    .transpose()?;
                changes.push((route.key(), value));
            }
            self.write(move |txn| {
                let mut table = txn.open_table(ROUTES)?;
                for (key, value) in &changes {
                    match value {
                        Some(value) => table.insert(key.as_str(), value.as_slice())?,
                        None => table.remove(key.as_str())?,
                    };
                }
                Ok(())
            })
            .await
        })
    }
}

/// A batch of receipts as the writer thread stores it: each receipt under its key, the flow
/// of each published event, and the new expiry of each flow.
pub(super) struct Append {
    rows: Vec<(String, Vec<u8>)>,
    /// Correlation records (expiry then correlation id) by event id.
    events: Vec<(String, Vec<u8>)>,
    flows: Vec<String>,
    expires_at: u64,
}

impl Append {
    /// `receipts`, encoded, for flows kept until `expires_at`.
    fn of(receipts: &[Receipt], expires_at: u64) -> Result<Self, StoreError> {
        let mut rows = Vec::with_capacity(receipts.len());
        let mut events = Vec::new();
        let mut flows: Vec<String> = Vec::new();
        for receipt in receipts {
            let sequence = SEQUENCE.fetch_add(1, Ordering::Relaxed);
            let key = format!(
                "{}{SEPARATOR}{:016x}{sequence:08x}",
                receipt.correlation_id, receipt.at_ms
            );
            rows.push((key, serde_json::to_vec(receipt)?));
            // Delivered events are remembered by the delivery itself; published ones here,
            // so that an event id finds its flow.
            if receipt.kind == Kind::Published {
                let mut value = Vec::with_capacity(8 + receipt.correlation_id.len());
                value.extend_from_slice(&expires_at.to_be_bytes());
                value.extend_from_slice(receipt.correlation_id.as_bytes());
                events.push((receipt.event.event_id.clone(), value));
            }
            if flows.last() != Some(&receipt.correlation_id) {
                flows.push(receipt.correlation_id.clone());
            }
        }
        // In key order, the inserts walk each table from one end to the other.
        rows.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        flows.sort_unstable();
        flows.dedup();
        Ok(Append {
            rows,
            events,
            flows,
            expires_at,
        })
    }
}

/// The flow tables of one write transaction, opened at their first use.
#[derive(Default)]
pub(super) struct Tables<'txn> {
    receipts: Option<Table<'txn, &'static str, &'static [u8]>>,
    by_flow: Option<Table<'txn, &'static str, u64>>,
    ordered: Option<Table<'txn, (u64, &'static str), ()>>,
}

/// Stores a batch of receipts.
pub(super) fn apply(tables: &mut changes::Tables<'_>, append: Append) -> Result<(), redb::Error> {
    let Append {
        rows,
        events,
        flows,
        expires_at,
    } = append;
    let txn = tables.txn();
    let receipts = changes::open(txn, &mut tables.flows.receipts, RECEIPTS)?;
    for (key, value) in &rows {
        receipts.insert(key.as_str(), value.as_slice())?;
    }
    for (event_id, value) in &events {
        tables.put(Expiring::Correlations, event_id, value, expires_at)?;
    }
    for flow in &flows {
        let by_flow = changes::open(txn, &mut tables.flows.by_flow, EXPIRY_BY_FLOW)?;
        let before = by_flow
            .insert(flow.as_str(), expires_at)?
            .map(|v| v.value());
        let ordered = changes::open(txn, &mut tables.flows.ordered, FLOWS)?;
        if let Some(before) = before {
            ordered.remove((before, flow.as_str()))?;
        }
        ordered.insert((expires_at, flow.as_str()), ())?;
    }
    Ok(())
}

/// Creates the flow tables, so that reads find them before the first write.
pub(super) fn create_tables(txn: &WriteTransaction) -> Result<(), redb::Error> {
    txn.open_table(RECEIPTS)?;
    txn.open_table(EXPIRY_BY_FLOW)?;
    txn.open_table(FLOWS)?;
    txn.open_table(ROUTES)?;
    Ok(())
}

/// Removes up to `limit` flows that expired before `now`, with their receipts; how many
/// receipts went.
pub(super) fn sweep(txn: &WriteTransaction, now: u64, limit: usize) -> Result<usize, redb::Error> {
    let mut ordered = txn.open_table(FLOWS)?;
    let mut due = Vec::new();
    for entry in ordered.range((0, "")..(now, ""))?.take(limit) {
        let (key, _) = entry?;
        let (expires_at, flow) = key.value();
        due.push((expires_at, flow.to_owned()));
    }
    let mut by_flow = txn.open_table(EXPIRY_BY_FLOW)?;
    let mut receipts = txn.open_table(RECEIPTS)?;
    let mut removed = 0;
    for (expires_at, flow) in &due {
        ordered.remove((*expires_at, flow.as_str()))?;
        by_flow.remove(flow.as_str())?;
        let (from, to) = range_of(flow);
        receipts.retain_in(from.as_str()..to.as_str(), |_, _| {
            removed += 1;
            false
        })?;
    }
    Ok(removed)
}
