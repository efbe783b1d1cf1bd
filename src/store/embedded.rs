//! The embedded store: one redb file under the data directory, with group commit.
//!
//! redb has a single writer and one fsync per durable commit, which caps one-record-per-commit
//! at a few thousand writes a second. All writes therefore go through one writer thread that
//! takes every write queued while the previous commit was syncing and commits them together:
//! concurrent writers share an fsync, and each still gets its answer only once its record is
//! on disk. Writes that need not survive a crash on their own ("lazy") ride along with the
//! next durable commit.

mod changes;
mod correlations;
mod flows;
mod writer;

use std::{
    collections::HashMap,
    path::Path,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::{
    health::{Store, StoreHealth, StoreState},
    sync::lock,
};

use super::{
    BoxFuture, Claim, DedupStore, IdempotencyRecord, IdempotencyStore, StoreError, expiry_after,
    now_ms,
};
use changes::{Change, DELIVERY, Job};
pub use correlations::HeldCorrelation;
use correlations::{Forget, Uncommitted};

/// Tables whose values are an expiry (8 bytes, big-endian, ms since the epoch) then data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expiring {
    /// Idempotency records by `{service}/{key}`; data is JSON.
    Idempotency,
    /// Events each subscription's app accepted, by `{subscription}/{event_id}`; no data.
    Delivered,
    /// The correlation id of each event delivered or published here, by event id.
    Correlations,
}

impl Expiring {
    const ALL: [Expiring; 3] = [
        Expiring::Idempotency,
        Expiring::Delivered,
        Expiring::Correlations,
    ];

    fn name(self) -> &'static str {
        match self {
            Expiring::Idempotency => "idempotency",
            Expiring::Delivered => "delivered",
            Expiring::Correlations => "correlations",
        }
    }

    fn table(self) -> TableDefinition<'static, &'static str, &'static [u8]> {
        TableDefinition::new(self.name())
    }

    fn from_name(name: &str) -> Option<Expiring> {
        Self::ALL.into_iter().find(|t| t.name() == name)
    }

    /// Its place in [`ALL`](Self::ALL).
    fn index(self) -> usize {
        match self {
            Expiring::Idempotency => 0,
            Expiring::Delivered => 1,
            Expiring::Correlations => 2,
        }
    }
}

/// Expiry index: (expires at ms, table, key). Lets the sweeper find old records without a
/// full scan.
const EXPIRY: TableDefinition<'_, (u64, &str, &str), ()> = TableDefinition::new("expiry");
/// Subscriptions made over the API, by name; the value is the spec as JSON.
const SUBSCRIPTIONS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("subscriptions");

/// Writes waiting for the writer thread; senders wait when it is full.
const QUEUE: usize = 4096;
/// How often expired records are removed, and at most how many per pass.
const SWEEP_EVERY: Duration = Duration::from_secs(60);
const SWEEP_LIMIT: usize = 10_000;

/// Pages of the file kept in memory. redb's default (1 GiB) lets a sidecar's memory grow
/// with its data; lookups are of recent events, whose pages stay in this cache, and older
/// pages are still in the kernel's page cache.
const CACHE_BYTES: usize = 4 * 1024 * 1024;

struct WriteRequest {
    change: Change,
    durable: bool,
    done: Done,
}

/// Who hears of the outcome of the commit that carried a write.
struct Done {
    /// The caller, when it waits for the outcome.
    reply: Option<oneshot::Sender<Result<(), StoreError>>>,
    /// A held correlation the write put in the file, which memory can let go of.
    forget: Option<Forget>,
}

impl Done {
    /// Nobody hears of it.
    fn nobody() -> Self {
        Done {
            reply: None,
            forget: None,
        }
    }

    fn forgetting(forget: Forget) -> Self {
        Done {
            reply: None,
            forget: Some(forget),
        }
    }

    fn finish(self, outcome: Result<(), StoreError>) {
        if let Some(forget) = self.forget {
            forget.run();
        }
        if let Some(reply) = self.reply {
            let _ = reply.send(outcome);
        }
    }
}

/// The database, or why there is none for now. redb allows one open `Database` per file in
/// a process, so after an I/O error every handle to the old one must be gone before the
/// writer thread can open the file again: readers take a handle only for one read.
enum Slot {
    Open(Arc<Database>),
    /// Being reopened after the I/O error given.
    Broken(String),
}

/// What the store's handles and its writer thread share.
struct Shared {
    slot: Mutex<Slot>,
    health: StoreHealth,
}

impl Shared {
    /// The open database, or `Unavailable` at once while it is being reopened.
    fn database(&self) -> Result<Arc<Database>, StoreError> {
        match &*lock(&self.slot) {
            Slot::Open(db) => Ok(db.clone()),
            Slot::Broken(reason) => {
                self.health.count_error();
                Err(unavailable(reason))
            }
        }
    }
}

/// The default store: crash-safe, in one file, shared by the parts of one sidecar.
///
/// After an I/O error (a full disk), the writer thread closes the file and opens it again,
/// retrying with backoff until the disk takes writes; meanwhile every read and write fails
/// at once with [`StoreError::Unavailable`].
#[derive(Clone)]
pub struct EmbeddedStore {
    shared: Arc<Shared>,
    writes: mpsc::Sender<WriteRequest>,
    /// Dedup claims are leases of this process only: they live in memory, and a crash
    /// releases them, as it should.
    claims: Arc<Mutex<HashMap<String, Instant>>>,
    /// Correlation ids held or queued for the file but not committed yet, by event id.
    uncommitted_correlations: Uncommitted,
    /// The writer thread, which closes the file once every handle is gone.
    writer: Arc<Mutex<Option<std::thread::JoinHandle<()>>>>,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore").finish_non_exhaustive()
    }
}

impl EmbeddedStore {
    /// Opens (or creates) the store in `dir` and starts its writer thread; its health is
    /// only logged.
    ///
    /// Fails when the directory cannot be created or another process has the file open.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::open_with(dir, StoreHealth::detached(Store::Embedded, StoreState::Ok))
    }

    /// Opens the store like [`open`](Self::open), reporting its health to `health`.
    pub fn open_with(dir: &Path, health: StoreHealth) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Embedded(format!("cannot create {}: {e}", dir.display())))?;
        let path = dir.join("causeway.redb");
        let db = Arc::new(open_database(&path)?);
        let shared = Arc::new(Shared {
            slot: Mutex::new(Slot::Open(db.clone())),
            health,
        });
        let (writes, queue) = mpsc::channel(QUEUE);
        let writer = writer::start(shared.clone(), path, db, queue)?;
        Ok(EmbeddedStore {
            shared,
            writes,
            claims: Arc::default(),
            uncommitted_correlations: Arc::default(),
            writer: Arc::new(Mutex::new(Some(writer))),
        })
    }

    /// Drops this handle and waits, at most `within`, until the writer thread has closed the
    /// file, which it does once every other handle is gone too; whether it did. A file closed
    /// this way opens at the next start without redb's repair pass over the whole file.
    pub async fn close(self, within: Duration) -> bool {
        let writer = self.writer.clone();
        drop(self);
        let deadline = Instant::now() + within;
        loop {
            let finished = lock(&writer).as_ref().is_none_or(|w| w.is_finished());
            if finished {
                if let Some(thread) = lock(&writer).take() {
                    let _ = thread.join();
                }
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Runs a read on the open database. An I/O error marks the store failing and has the
    /// writer thread check the file with a write (which reopens it when that fails too).
    fn read<T>(
        &self,
        read: impl FnOnce(&Database) -> Result<T, redb::Error>,
    ) -> Result<T, StoreError> {
        let started = Instant::now();
        let db = self.shared.database()?;
        match read(&db) {
            Ok(value) => Ok(value),
            Err(error) if is_io(&error) => {
                let error = unavailable(&error.to_string());
                self.shared.health.failed(started, &error);
                let _ = self.writes.try_send(writer::probe());
                Err(error)
            }
            Err(error) => {
                self.shared.health.count_error();
                Err(embedded(error))
            }
        }
    }

    /// Fails at once while the database is being reopened.
    fn check_open(&self) -> Result<(), StoreError> {
        self.shared.database().map(drop)
    }

    /// Runs `job` in a durable write transaction shared with other concurrent writes, and
    /// returns its result once the transaction is on disk.
    pub async fn write<T, F>(&self, job: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&WriteTransaction) -> Result<T, redb::Error> + Send + 'static,
    {
        self.submit(job, true).await
    }

    async fn submit<T, F>(&self, job: F, durable: bool) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&WriteTransaction) -> Result<T, redb::Error> + Send + 'static,
    {
        let (value_tx, value_rx) = oneshot::channel();
        let job: Job = Box::new(move |txn| {
            let value = job(txn)?;
            let _ = value_tx.send(value);
            Ok(())
        });
        self.submit_change(Change::Job(job), durable).await?;
        value_rx.await.map_err(|_| StoreError::Closed)
    }

    /// Queues `change` and returns once the commit that carried it is over.
    async fn submit_change(&self, change: Change, durable: bool) -> Result<(), StoreError> {
        self.submit_done(change, durable, None).await
    }

    /// Queues `change`, whose commit lets memory `forget` a held correlation, and returns
    /// once the commit is over.
    async fn submit_done(
        &self,
        change: Change,
        durable: bool,
        forget: Option<Forget>,
    ) -> Result<(), StoreError> {
        self.check_open()?;
        let (reply, committed) = oneshot::channel();
        let done = Done {
            reply: Some(reply),
            forget,
        };
        self.writes
            .send(WriteRequest {
                change,
                durable,
                done,
            })
            .await
            .map_err(|_| StoreError::Closed)?;
        committed.await.map_err(|_| StoreError::Closed)?
    }

    /// Removes expired records every minute until `shutdown`.
    pub async fn run_sweeper(self, shutdown: CancellationToken) {
        let mut every = tokio::time::interval(SWEEP_EVERY);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = every.tick() => {}
            }
            let now = now_ms();
            match self.write(move |txn| sweep(txn, now)).await {
                Ok(0) => {}
                Ok(removed) => tracing::debug!(removed, "expired records removed"),
                // The store's own state change is logged once, not each minute.
                Err(error) if error.is_unavailable() => {
                    tracing::debug!(%error, "sweeping expired records failed");
                }
                Err(error) => tracing::warn!(%error, "sweeping expired records failed"),
            }
        }
    }

    /// The data of an unexpired record.
    fn get_expiring(&self, table: Expiring, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.read(|db| {
            let txn = db.begin_read()?;
            let table = txn.open_table(table.table())?;
            let Some(value) = table.get(key)? else {
                return Ok(None);
            };
            let (expires_at, data) = split_value(value.value());
            Ok((expires_at > now_ms()).then(|| data.to_vec()))
        })
    }

    /// Stores a record that expires at `expires_at` (ms since the epoch).
    async fn put_expiring(
        &self,
        table: Expiring,
        key: &str,
        data: &[u8],
        expires_at: u64,
        durable: bool,
    ) -> Result<(), StoreError> {
        self.submit_change(Change::put(table, key, data, expires_at), durable)
            .await
    }

    /// Stores an API-made subscription's spec (JSON), durably.
    pub async fn save_subscription(&self, name: &str, spec: Vec<u8>) -> Result<(), StoreError> {
        let name = name.to_owned();
        self.write(move |txn| {
            txn.open_table(SUBSCRIPTIONS)?
                .insert(name.as_str(), spec.as_slice())?;
            Ok(())
        })
        .await
    }

    /// Forgets an API-made subscription; returns whether it existed.
    pub async fn delete_subscription(&self, name: &str) -> Result<bool, StoreError> {
        let name = name.to_owned();
        self.write(move |txn| {
            let existed = txn
                .open_table(SUBSCRIPTIONS)?
                .remove(name.as_str())?
                .is_some();
            Ok(existed)
        })
        .await
    }

    /// Every API-made subscription: name and spec JSON.
    pub fn subscriptions(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.read(|db| {
            let txn = db.begin_read()?;
            let table = txn.open_table(SUBSCRIPTIONS)?;
            let mut all = Vec::new();
            for entry in table.iter()? {
                let (name, spec) = entry?;
                all.push((name.value().to_owned(), spec.value().to_vec()));
            }
            Ok(all)
        })
    }

    fn claims(&self) -> MutexGuard<'_, HashMap<String, Instant>> {
        lock(&self.claims)
    }
}

impl IdempotencyStore for EmbeddedStore {
    fn get_key<'a>(
        &'a self,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<IdempotencyRecord>, StoreError>> {
        Box::pin(async move {
            match self.get_expiring(Expiring::Idempotency, key)? {
                Some(json) => Ok(Some(serde_json::from_slice(&json)?)),
                None => Ok(None),
            }
        })
    }

    fn put_key<'a>(
        &'a self,
        key: &'a str,
        record: IdempotencyRecord,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let json = serde_json::to_vec(&record)?;
            self.put_expiring(
                Expiring::Idempotency,
                key,
                &json,
                record.expires_at_ms,
                true,
            )
            .await
        })
    }

    fn remove_key<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let key = key.to_owned();
            // The expiry index entry stays; the sweeper skips keys that are gone.
            self.write(move |txn| {
                txn.open_table(Expiring::Idempotency.table())?
                    .remove(key.as_str())?;
                Ok(())
            })
            .await
        })
    }
}

impl DedupStore for EmbeddedStore {
    fn claim<'a>(
        &'a self,
        key: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, Result<Claim, StoreError>> {
        Box::pin(async move {
            if self.get_expiring(Expiring::Delivered, key)?.is_some() {
                return Ok(Claim::Done);
            }
            let now = Instant::now();
            let mut claims = self.claims();
            match claims.get(key) {
                Some(until) if *until > now => Ok(Claim::Busy),
                _ => {
                    claims.insert(key.to_owned(), now + lease);
                    Ok(Claim::Acquired)
                }
            }
        })
    }

    fn complete<'a>(
        &'a self,
        key: &'a str,
        retention: Duration,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let change = Change::Delivered {
                key: key.to_owned(),
                correlation: None,
                expires_at: expiry_after(retention),
            };
            self.submit_change(change, true).await?;
            // Only once recorded: until then the delivery still holds the event, and a copy
            // that arrives meanwhile must wait rather than reach the app again.
            self.claims().remove(key);
            Ok(())
        })
    }

    fn complete_holding<'a>(
        &'a self,
        key: &'a str,
        retention: Duration,
        held: &'a mut HeldCorrelation,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        // One index entry covers both records when the key names the held event.
        let names_event = key
            .rsplit_once('/')
            .is_some_and(|(_, event_id)| event_id == held.event_id);
        if held.written || !self.holds(held) || !names_event {
            return self.complete(key, retention);
        }
        Box::pin(async move {
            let change = Change::Delivered {
                key: key.to_owned(),
                correlation: Some(held.correlation_id.clone()),
                expires_at: expiry_after(retention),
            };
            let forget = self.forget(held);
            self.submit_done(change, true, Some(forget)).await?;
            held.written = true;
            self.claims().remove(key);
            Ok(())
        })
    }

    fn release<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            self.claims().remove(key);
            Ok(())
        })
    }
}

/// Splits a stored value into its expiry and its data.
fn split_value(value: &[u8]) -> (u64, &[u8]) {
    match value.split_first_chunk::<8>() {
        Some((expiry, data)) => (u64::from_be_bytes(*expiry), data),
        None => (0, value),
    }
}

fn embedded(error: impl Into<redb::Error>) -> StoreError {
    StoreError::Embedded(error.into().to_string())
}

fn unavailable(reason: &str) -> StoreError {
    StoreError::Unavailable {
        store: Store::Embedded.name(),
        reason: reason.to_owned(),
    }
}

/// Whether `error` comes from the file's I/O: after one, redb refuses every write until the
/// database is opened again.
fn is_io(error: &redb::Error) -> bool {
    matches!(error, redb::Error::Io(_) | redb::Error::PreviousIo)
}

/// Opens (or creates) the database file and its tables.
fn open_database(path: &Path) -> Result<Database, StoreError> {
    let db = Database::builder()
        .set_cache_size(CACHE_BYTES)
        .create(path)
        .map_err(|e| StoreError::Embedded(format!("cannot open {}: {e}", path.display())))?;
    let txn = db.begin_write().map_err(embedded)?;
    for table in Expiring::ALL {
        txn.open_table(table.table()).map_err(embedded)?;
    }
    txn.open_table(EXPIRY).map_err(embedded)?;
    txn.open_table(SUBSCRIPTIONS).map_err(embedded)?;
    flows::create_tables(&txn).map_err(embedded)?;
    txn.commit().map_err(embedded)?;
    Ok(db)
}

/// Removes records whose expiry has passed; returns how many.
fn sweep(txn: &WriteTransaction, now: u64) -> Result<usize, redb::Error> {
    let mut index = txn.open_table(EXPIRY)?;
    let mut due = Vec::new();
    for entry in index.range((0, "", "")..(now, "", ""))?.take(SWEEP_LIMIT) {
        let (key, _) = entry?;
        let (expires_at, table, name) = key.value();
        due.push((expires_at, table.to_owned(), name.to_owned()));
    }
    let mut removed = 0;
    for (expires_at, table, name) in &due {
        index.remove((*expires_at, table.as_str(), name.as_str()))?;
        let records = match (Expiring::from_name(table), table.as_str()) {
            (Some(kind), _) => vec![(kind, name.as_str())],
            // A delivery's dedup record and its event's correlation, under one entry.
            (None, DELIVERY) => {
                let event_id = name.rsplit_once('/').map_or("", |(_, id)| id);
                vec![
                    (Expiring::Delivered, name.as_str()),
                    (Expiring::Correlations, event_id),
                ]
            }
            (None, _) => continue,
        };
        for (kind, name) in records {
            let mut data = txn.open_table(kind.table())?;
            // A later write may have extended the record; only drop it when it really
            // expired.
            let expired = match data.get(name)? {
                Some(value) => split_value(value.value()).0 <= now,
                None => false,
            };
            if expired {
                data.remove(name)?;
                removed += 1;
            }
        }
    }
    Ok(removed + flows::sweep(txn, now, SWEEP_LIMIT)?)
}

#[cfg(test)]
mod tests;
