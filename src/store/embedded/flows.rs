//! Flow receipts and routes in the embedded store: this sidecar's own (`"scope": "local"`).

use std::{
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

use super::{EmbeddedStore, Expiring, put_job, split_value};
use crate::{
    flow::{FlowStore, MAX_RECEIPTS, MAX_RECENT, Receipt, Route, Scope},
    store::{BoxFuture, StoreError, expiry_after, now_ms},
};

/// The latest receipt time of each flow, by correlation id.
const RECENT_BY_FLOW: TableDefinition<'_, &str, u64> = TableDefinition::new("flow_recent_by_flow");
/// The same, ordered by time: (ms, correlation id).
const RECENT: TableDefinition<'_, (u64, &str), ()> = TableDefinition::new("flow_recent");
/// Routes by `{service}/{subscription}/{since_ms}`; the value is JSON.
const ROUTES: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("flow_routes");

/// Makes receipt keys written in the same millisecond distinct.
static SEQUENCE: AtomicU32 = AtomicU32::new(0);

/// Separates the correlation id from the rest of a receipt key; correlation ids are
/// printable ASCII, so it never occurs in one.
const SEPARATOR: char = '\u{1}';
const AFTER_SEPARATOR: char = '\u{2}';

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
            let expires_at = expiry_after(retention);
            let mut jobs = Vec::with_capacity(receipts.len() * 2);
            let mut flows: Vec<String> = Vec::new();
            for receipt in receipts {
                let sequence = SEQUENCE.fetch_add(1, Ordering::Relaxed);
                let key = format!(
                    "{}{SEPARATOR}{:016x}{sequence:08x}",
                    receipt.correlation_id, receipt.at_ms
                );
                let data = serde_json::to_vec(receipt)?;
                jobs.push(put_job(Expiring::Receipts, &key, &data, expires_at));
                jobs.push(put_job(
                    Expiring::Correlations,
                    &receipt.event.event_id,
                    receipt.correlation_id.as_bytes(),
                    expires_at,
                ));
                if !flows.contains(&receipt.correlation_id) {
                    flows.push(receipt.correlation_id.clone());
                }
            }
            let now = now_ms();
            // Receipts are not worth an fsync of their own: they ride with the next one.
            self.submit(
                move |txn| {
                    for job in jobs {
                        job(txn)?;
                    }
                    let mut by_flow = txn.open_table(RECENT_BY_FLOW)?;
                    let mut recent = txn.open_table(RECENT)?;
                    for flow in &flows {
                        let before = by_flow.insert(flow.as_str(), now)?.map(|v| v.value());
                        if let Some(before) = before {
                            recent.remove((before, flow.as_str()))?;
                        }
                        recent.insert((now, flow.as_str()), ())?;
                    }
                    while recent.len()? > MAX_RECENT as u64 {
                        let Some((oldest, ())) = recent
                            .pop_first()?
                            .map(|(k, _)| (k.value().1.to_owned(), ()))
                        else {
                            break;
                        };
                        by_flow.remove(oldest.as_str())?;
                    }
                    Ok(())
                },
                false,
            )
            .await
        })
    }

    fn receipts<'a>(
        &'a self,
        correlation_id: &'a str,
    ) -> BoxFuture<'a, Result<(Vec<Receipt>, bool), StoreError>> {
        Box::pin(async move {
            let from = format!("{correlation_id}{SEPARATOR}");
            let to = format!("{correlation_id}{AFTER_SEPARATOR}");
            let now = now_ms();
            let found = self.read(|db| {
                let txn = db.begin_read()?;
                let table = txn.open_table(Expiring::Receipts.table())?;
                let mut values = Vec::new();
                for entry in table.range(from.as_str()..to.as_str())?.rev() {
                    let (_, value) = entry?;
                    let (expires_at, data) = split_value(value.value());
                    if expires_at > now {
                        values.push(data.to_vec());
                    }
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
            self.read(|db| {
                let txn = db.begin_read()?;
                let table = txn.open_table(RECENT)?;
                let mut flows = Vec::new();
                for entry in table.iter()?.rev().take(limit) {
                    let (key, _) = entry?;
                    flows.push(key.value().1.to_owned());
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

/// Creates the flow tables, so that reads find them before the first write.
pub(super) fn create_tables(txn: &redb::WriteTransaction) -> Result<(), redb::Error> {
    txn.open_table(RECENT_BY_FLOW)?;
    txn.open_table(RECENT)?;
    txn.open_table(ROUTES)?;
    Ok(())
}
