//! The embedded store: one redb file under the data directory, with group commit.
//!
//! redb has a single writer and one fsync per durable commit, which caps one-record-per-commit
//! at a few thousand writes a second. All writes therefore go through one writer thread that
//! takes every write queued while the previous commit was syncing and commits them together:
//! concurrent writers share an fsync, and each still gets its answer only once its record is
//! on disk.

use std::{path::Path, sync::Arc, time::Duration};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::{BoxFuture, IdempotencyRecord, IdempotencyStore, StoreError, now_ms};

/// Idempotency records by key; the value is the expiry (8 bytes, big-endian) then JSON.
const IDEMPOTENCY: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("idempotency");
/// Expiry index: (expires at ms, table, key). Lets the sweeper find old records without a
/// full scan.
const EXPIRY: TableDefinition<'_, (u64, &str, &str), ()> = TableDefinition::new("expiry");

/// Most writes committed in one transaction.
const MAX_BATCH: usize = 512;
/// Writes waiting for the writer thread; senders wait when it is full.
const QUEUE: usize = 4096;
/// How often expired records are removed, and at most how many per pass.
const SWEEP_EVERY: Duration = Duration::from_secs(60);
const SWEEP_LIMIT: usize = 10_000;

type Job = Box<dyn FnOnce(&WriteTransaction) -> Result<(), redb::Error> + Send>;

struct WriteRequest {
    job: Job,
    done: oneshot::Sender<Result<(), StoreError>>,
}

/// The default store: crash-safe, in one file, shared by the parts of one sidecar.
#[derive(Clone)]
pub struct EmbeddedStore {
    db: Arc<Database>,
    writes: mpsc::Sender<WriteRequest>,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore").finish_non_exhaustive()
    }
}

impl EmbeddedStore {
    /// Opens (or creates) the store in `dir` and starts its writer thread.
    ///
    /// Fails when the directory cannot be created or another process has the file open.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Embedded(format!("cannot create {}: {e}", dir.display())))?;
        let path = dir.join("causeway.redb");
        let db = Database::create(&path)
            .map_err(|e| StoreError::Embedded(format!("cannot open {}: {e}", path.display())))?;
        let txn = db.begin_write().map_err(embedded)?;
        txn.open_table(IDEMPOTENCY).map_err(embedded)?;
        txn.open_table(EXPIRY).map_err(embedded)?;
        txn.commit().map_err(embedded)?;

        let db = Arc::new(db);
        let (writes, queue) = mpsc::channel(QUEUE);
        let writer_db = db.clone();
        std::thread::Builder::new()
            .name("causeway-store".into())
            .spawn(move || write_loop(&writer_db, queue))
            .map_err(|e| StoreError::Embedded(format!("cannot start the writer thread: {e}")))?;
        Ok(EmbeddedStore { db, writes })
    }

    /// Runs `job` in a durable write transaction shared with other concurrent writes, and
    /// returns its result once the transaction is on disk.
    pub async fn write<T, F>(&self, job: F) -> Result<T, StoreError>
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
        let (done, committed) = oneshot::channel();
        self.writes
            .send(WriteRequest { job, done })
            .await
            .map_err(|_| StoreError::Closed)?;
        committed.await.map_err(|_| StoreError::Closed)??;
        value_rx.await.map_err(|_| StoreError::Closed)
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
                Err(error) => tracing::warn!(%error, "sweeping expired records failed"),
            }
        }
    }

    fn read_record(&self, key: &str) -> Result<Option<Vec<u8>>, redb::Error> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(IDEMPOTENCY)?;
        let Some(value) = table.get(key)? else {
            return Ok(None);
        };
        let (expires_at, json) = split_value(value.value());
        Ok((expires_at > now_ms()).then(|| json.to_vec()))
    }
}

impl IdempotencyStore for EmbeddedStore {
    fn get_key<'a>(
        &'a self,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<IdempotencyRecord>, StoreError>> {
        Box::pin(async move {
            match self.read_record(key).map_err(embedded)? {
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
            let mut value = record.expires_at_ms.to_be_bytes().to_vec();
            serde_json::to_writer(&mut value, &record)?;
            let key = key.to_owned();
            let expires_at = record.expires_at_ms;
            self.write(move |txn| {
                txn.open_table(IDEMPOTENCY)?
                    .insert(key.as_str(), value.as_slice())?;
                txn.open_table(EXPIRY)?
                    .insert((expires_at, "idempotency", key.as_str()), ())?;
                Ok(())
            })
            .await
        })
    }
}

/// Splits a stored value into its expiry and its JSON.
fn split_value(value: &[u8]) -> (u64, &[u8]) {
    match value.split_first_chunk::<8>() {
        Some((expiry, json)) => (u64::from_be_bytes(*expiry), json),
        None => (0, value),
    }
}

fn embedded(error: impl Into<redb::Error>) -> StoreError {
    StoreError::Embedded(error.into().to_string())
}

/// The writer thread: commits queued writes in batches until every sender is gone.
fn write_loop(db: &Database, mut queue: mpsc::Receiver<WriteRequest>) {
    while let Some(first) = queue.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(request) => batch.push(request),
                Err(_) => break,
            }
        }
        let (jobs, waiters): (Vec<_>, Vec<_>) = batch.into_iter().map(|r| (r.job, r.done)).unzip();
        let outcome = commit(db, jobs).map_err(|e| e.to_string());
        for done in waiters {
            let _ = done.send(outcome.clone().map_err(StoreError::Embedded));
        }
    }
}

/// Runs every job in one transaction; any failure aborts them all.
fn commit(db: &Database, jobs: Vec<Job>) -> Result<(), redb::Error> {
    let txn = db.begin_write()?;
    for job in jobs {
        job(&txn)?;
    }
    txn.commit()?;
    Ok(())
}

/// Removes records whose expiry has passed; returns how many.
fn sweep(txn: &WriteTransaction, now: u64) -> Result<usize, redb::Error> {
    let mut index = txn.open_table(EXPIRY)?;
    let mut data = txn.open_table(IDEMPOTENCY)?;
    let mut due = Vec::new();
    for entry in index.range((0, "", "")..(now, "", ""))?.take(SWEEP_LIMIT) {
        let (key, _) = entry?;
        let (expires_at, table, name) = key.value();
        due.push((expires_at, table.to_owned(), name.to_owned()));
    }
    let mut removed = 0;
    for (expires_at, table, name) in &due {
        index.remove((*expires_at, table.as_str(), name.as_str()))?;
        // A later write may have extended the record; only drop it when it really expired.
        let expired = match data.get(name.as_str())? {
            Some(value) => split_value(value.value()).0 <= now,
            None => false,
        };
        if expired {
            data.remove(name.as_str())?;
            removed += 1;
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn record(expires_at_ms: u64) -> IdempotencyRecord {
        IdempotencyRecord {
            event_id: Uuid::now_v7(),
            event_type: "OrderPlaced".into(),
            schema_version: "1.0".parse().unwrap(),
            correlation_id: "c".into(),
            causation_id: None,
            occurred_at: crate::envelope::now_rfc3339(),
            confirmed: false,
            expires_at_ms,
        }
    }

    fn temp_dir() -> std::path::PathBuf {
        std::env::temp_dir().join(format!("causeway-store-{}", Uuid::now_v7()))
    }

    #[tokio::test]
    async fn records_survive_a_reopen() {
        let dir = temp_dir();
        let stored = record(now_ms() + 60_000);
        {
            let store = EmbeddedStore::open(&dir).unwrap();
            store.put_key("k1", stored.clone()).await.unwrap();
        }
        // The writer thread ends when its last sender is dropped; the file lock with it.
        let store = loop {
            match EmbeddedStore::open(&dir) {
                Ok(store) => break store,
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        };
        assert_eq!(store.get_key("k1").await.unwrap(), Some(stored));
        assert_eq!(store.get_key("k2").await.unwrap(), None);
        drop(store);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn expired_records_are_invisible_and_swept() {
        let dir = temp_dir();
        let store = EmbeddedStore::open(&dir).unwrap();
        store.put_key("old", record(now_ms() - 1)).await.unwrap();
        store
            .put_key("new", record(now_ms() + 60_000))
            .await
            .unwrap();
        assert_eq!(store.get_key("old").await.unwrap(), None);
        let removed = store.write(|txn| sweep(txn, now_ms())).await.unwrap();
        assert_eq!(removed, 1);
        assert!(store.get_key("new").await.unwrap().is_some());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn concurrent_writes_all_land() {
        let dir = temp_dir();
        let store = EmbeddedStore::open(&dir).unwrap();
        let writes = (0..200).map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .put_key(&format!("key-{i}"), record(now_ms() + 60_000))
                    .await
            })
        });
        for write in writes.collect::<Vec<_>>() {
            write.await.unwrap().unwrap();
        }
        for i in 0..200 {
            assert!(store.get_key(&format!("key-{i}")).await.unwrap().is_some());
        }
        let _ = std::fs::remove_dir_all(dir);
    }
}
