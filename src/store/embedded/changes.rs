//! The writes the writer thread applies, as data rather than closures: a record with its
//! expiry, a delivered event with its correlation id, a batch of flow receipts; anything
//! else is a job that gets the transaction itself. As data, the writes of one commit share
//! each table, opened once for all of them instead of once per write.

use redb::{Key, Table, TableDefinition, Value, WriteTransaction};

use super::{EXPIRY, Expiring, flows};

/// A job run with the write transaction, for the writes that are not worth a change of
/// their own (subscriptions, routes, the sweep).
pub(super) type Job = Box<dyn FnOnce(&WriteTransaction) -> Result<(), redb::Error> + Send>;

/// The expiry index's table name for a delivered event whose entry covers both its dedup
/// record (`{subscription}/{event_id}` in `delivered`) and its correlation (`{event_id}` in
/// `correlations`): one index entry for the two records of a delivery.
pub(super) const DELIVERY: &str = "delivery";

/// One write, applied in a commit shared with the other writes queued with it.
pub(super) enum Change {
    /// A record in an expiring table, and its expiry index entry. `value` is the expiry
    /// (8 bytes, big-endian) then the data.
    Put {
        table: Expiring,
        key: String,
        value: Vec<u8>,
        expires_at: u64,
    },
    /// The dedup record of a delivery the app accepted, and the correlation id of its event
    /// when the delivery held it: `key` then ends in `/{event_id}`, which is how the sweeper
    /// finds the correlation from the one index entry.
    Delivered {
        key: String,
        correlation: Option<String>,
        expires_at: u64,
    },
    /// Flow receipts, with their flows' expiry.
    Receipts(flows::Append),
    /// Anything else.
    Job(Job),
}

impl Change {
    /// A record of `table` expiring at `expires_at` (ms since the epoch).
    pub(super) fn put(table: Expiring, key: &str, data: &[u8], expires_at: u64) -> Change {
        let mut value = Vec::with_capacity(8 + data.len());
        value.extend_from_slice(&expires_at.to_be_bytes());
        value.extend_from_slice(data);
        Change::Put {
            table,
            key: key.to_owned(),
            value,
            expires_at,
        }
    }
}

/// The tables of one write transaction, each opened at its first use and kept open for the
/// commit's other changes. A job gets the transaction only after they are closed (redb opens
/// a table once at a time).
pub(super) struct Tables<'txn> {
    txn: &'txn WriteTransaction,
    expiring: [Option<Table<'txn, &'static str, &'static [u8]>>; 3],
    expiry: Option<Table<'txn, (u64, &'static str, &'static str), ()>>,
    pub(super) flows: flows::Tables<'txn>,
    /// A buffer for values built here, reused across changes.
    scratch: Vec<u8>,
}

impl<'txn> Tables<'txn> {
    pub(super) fn new(txn: &'txn WriteTransaction) -> Self {
        Tables {
            txn,
            expiring: [None, None, None],
            expiry: None,
            flows: flows::Tables::default(),
            scratch: Vec::new(),
        }
    }

    /// Applies one change.
    pub(super) fn apply(&mut self, change: Change) -> Result<(), redb::Error> {
        match change {
            Change::Put {
                table,
                key,
                value,
                expires_at,
            } => self.put(table, &key, &value, expires_at),
            Change::Delivered {
                key,
                correlation,
                expires_at,
            } => self.delivered(&key, correlation.as_deref(), expires_at),
            Change::Receipts(append) => flows::apply(self, append),
            Change::Job(job) => {
                self.close();
                job(self.txn)
            }
        }
    }

    /// Stores `value` (expiry then data) under `key` in `table`, and indexes its expiry.
    pub(super) fn put(
        &mut self,
        table: Expiring,
        key: &str,
        value: &[u8],
        expires_at: u64,
    ) -> Result<(), redb::Error> {
        self.expiring(table)?.insert(key, value)?;
        self.expiry()?.insert((expires_at, table.name(), key), ())?;
        Ok(())
    }

    fn delivered(
        &mut self,
        key: &str,
        correlation: Option<&str>,
        expires_at: u64,
    ) -> Result<(), redb::Error> {
        let expiry = expires_at.to_be_bytes();
        self.expiring(Expiring::Delivered)?
            .insert(key, expiry.as_slice())?;
        let event_id = correlation.zip(key.rsplit_once('/').map(|(_, id)| id));
        let marker = match event_id {
            Some((correlation_id, event_id)) => {
                let mut value = std::mem::take(&mut self.scratch);
                value.clear();
                value.extend_from_slice(&expiry);
                value.extend_from_slice(correlation_id.as_bytes());
                let inserted = self
                    .expiring(Expiring::Correlations)?
                    .insert(event_id, value.as_slice())
                    .map(drop);
                self.scratch = value;
                inserted?;
                DELIVERY
            }
            None => Expiring::Delivered.name(),
        };
        self.expiry()?.insert((expires_at, marker, key), ())?;
        Ok(())
    }

    fn expiring(
        &mut self,
        table: Expiring,
    ) -> Result<&mut Table<'txn, &'static str, &'static [u8]>, redb::Error> {
        open(self.txn, &mut self.expiring[table.index()], table.table())
    }

    fn expiry(
        &mut self,
    ) -> Result<&mut Table<'txn, (u64, &'static str, &'static str), ()>, redb::Error> {
        open(self.txn, &mut self.expiry, EXPIRY)
    }

    /// Closes every table opened so far.
    pub(super) fn close(&mut self) {
        self.expiring = [None, None, None];
        self.expiry = None;
        self.flows = flows::Tables::default();
    }

    /// The transaction, for tables opened elsewhere.
    pub(super) fn txn(&self) -> &'txn WriteTransaction {
        self.txn
    }
}

/// The table in `slot`, opened from `definition` when it is not open yet.
pub(super) fn open<'s, 'txn, K: Key + 'static, V: Value + 'static>(
    txn: &'txn WriteTransaction,
    slot: &'s mut Option<Table<'txn, K, V>>,
    definition: TableDefinition<'_, K, V>,
) -> Result<&'s mut Table<'txn, K, V>, redb::Error> {
    let table = match slot.take() {
        Some(table) => table,
        None => txn.open_table(definition)?,
    };
    Ok(slot.insert(table))
}
