//! The writer thread: commits queued writes in batches, and after an I/O error closes the
//! file and opens it again, with backoff, until the disk takes writes again.

use std::{
    io::{self, Write},
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use redb::{Database, Durability};
use tokio::sync::mpsc::{self, error::TryRecvError};
use tracing::debug;

use super::{
    Done, Shared, Slot, StoreError, WriteRequest,
    changes::{Change, Tables},
    is_io, open_database,
};
use crate::sync::lock;

/// Most writes committed in one transaction.
const MAX_BATCH: usize = 512;
/// The first wait before opening the file again after an I/O error; it doubles up to
/// `REOPEN_MAX` while opening fails.
const REOPEN_FIRST: Duration = Duration::from_millis(100);
const REOPEN_MAX: Duration = Duration::from_secs(2);
/// How often writes that arrive while the store is being reopened are failed.
const POLL: Duration = Duration::from_millis(10);
/// Free space the disk must have before the file is opened again. Opening alone writes
/// little (redb rewrites its header in place), so it works on a disk that is still full and
/// the next commit would fail again: a probe file of this size, written, synced and
/// removed, tells that there is room again.
const ROOM: usize = 1024 * 1024;

/// Starts the writer thread over `db`, the database in `shared`'s slot, opened from `path`.
pub(super) fn start(
    shared: Arc<Shared>,
    path: PathBuf,
    db: Arc<Database>,
    queue: mpsc::Receiver<WriteRequest>,
) -> Result<std::thread::JoinHandle<()>, StoreError> {
    let writer = Writer {
        shared,
        path,
        queue,
    };
    std::thread::Builder::new()
        .name("causeway-store".into())
        .spawn(move || writer.run(db))
        .map_err(|e| StoreError::Embedded(format!("cannot start the writer thread: {e}")))
}

/// A durable write that changes nothing: it tells whether the file takes writes.
pub(super) fn probe() -> WriteRequest {
    WriteRequest {
        change: Change::Job(Box::new(|_| Ok(()))),
        durable: true,
        done: Done::nobody(),
    }
}

struct Writer {
    shared: Arc<Shared>,
    path: PathBuf,
    queue: mpsc::Receiver<WriteRequest>,
}

impl Writer {
    /// Commits until every sender is gone.
    fn run(mut self, mut db: Arc<Database>) {
        let mut changes = Vec::with_capacity(MAX_BATCH);
        let mut waiters: Vec<Done> = Vec::with_capacity(MAX_BATCH);
        while let Some(first) = self.queue.blocking_recv() {
            let mut durable = false;
            let mut next = Some(first);
            while let Some(request) = next.take() {
                durable |= request.durable;
                changes.push(request.change);
                waiters.push(request.done);
                if changes.len() < MAX_BATCH {
                    next = self.queue.try_recv().ok();
                }
            }
            let started = Instant::now();
            let health = &self.shared.health;
            match commit(&db, changes.drain(..), durable) {
                Ok(()) => {
                    health.succeeded(started);
                    for done in waiters.drain(..) {
                        done.finish(Ok(()));
                    }
                }
                Err(error) if is_io(&error) => {
                    let reason = error.to_string();
                    // Broken before anyone hears of it, so that their next call fails fast.
                    *lock(&self.shared.slot) = Slot::Broken(reason.clone());
                    health.failed(started, &reason);
                    for done in waiters.drain(..) {
                        done.finish(Err(super::unavailable(&reason)));
                    }
                    match self.reopen(db, reason) {
                        Some(reopened) => db = reopened,
                        None => return,
                    }
                }
                Err(error) => {
                    health.count_error();
                    let error = error.to_string();
                    for done in waiters.drain(..) {
                        done.finish(Err(StoreError::Embedded(error.clone())));
                    }
                }
            }
        }
    }

    /// Closes the database after an I/O error (`reason`) and opens it again, waiting longer
    /// after each failed try; writes that arrive meanwhile fail at once. `None` when every
    /// sender is gone.
    fn reopen(&mut self, db: Arc<Database>, reason: String) -> Option<Arc<Database>> {
        self.close(db, &reason)?;
        let mut delay = REOPEN_FIRST;
        loop {
            self.fail_queued_for(delay, &reason)?;
            let started = Instant::now();
            let opened = has_room(&self.path)
                .map_err(|e| StoreError::Embedded(format!("no room on the disk yet: {e}")))
                .and_then(|()| open_database(&self.path));
            match opened {
                Ok(db) => {
                    let db = Arc::new(db);
                    *lock(&self.shared.slot) = Slot::Open(db.clone());
                    self.shared.health.succeeded(started);
                    return Some(db);
                }
                Err(error) => {
                    debug!(%error, retry_ms = delay.as_millis() as u64, "the store cannot be opened yet");
                    delay = next_delay(delay);
                }
            }
        }
    }

    /// Drops the last handle to `db`, once readers have let go of theirs (each read is
    /// short); `None` when every sender is gone meanwhile.
    fn close(&mut self, mut db: Arc<Database>, reason: &str) -> Option<()> {
        loop {
            match Arc::try_unwrap(db) {
                Ok(db) => {
                    if let Err(error) = db.close() {
                        debug!(%error, "closing the store after an I/O error failed");
                    }
                    return Some(());
                }
                Err(shared) => {
                    db = shared;
                    self.fail_queued_for(Duration::from_millis(1), reason)?;
                }
            }
        }
    }

    /// Fails every write that arrives within `wait`; `None` when every sender is gone.
    fn fail_queued_for(&mut self, wait: Duration, reason: &str) -> Option<()> {
        let until = Instant::now() + wait;
        loop {
            loop {
                match self.queue.try_recv() {
                    Ok(request) => {
                        self.shared.health.count_error();
                        request.done.finish(Err(super::unavailable(reason)));
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => return None,
                }
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Some(());
            }
            std::thread::sleep(left.min(POLL));
        }
    }
}

/// Whether the disk that holds `path` takes [`ROOM`] bytes more: writes them into a probe
/// file beside it, syncs, and removes it.
fn has_room(path: &Path) -> io::Result<()> {
    let probe = path.with_extension("probe");
    let written = (|| {
        let mut file = std::fs::File::create(&probe)?;
        let chunk = vec![0u8; 64 * 1024];
        for _ in 0..ROOM / chunk.len() {
            file.write_all(&chunk)?;
        }
        file.sync_all()
    })();
    let removed = std::fs::remove_file(&probe);
    written.and(removed)
}

/// The wait after `delay` before the next try to open the file.
fn next_delay(delay: Duration) -> Duration {
    delay.saturating_mul(2).min(REOPEN_MAX)
}

/// Applies every change in one transaction, in the order queued; any failure aborts them
/// all. (A failed commit leaves `changes` drained all the same.)
fn commit(
    db: &Database,
    changes: impl Iterator<Item = Change>,
    durable: bool,
) -> Result<(), redb::Error> {
    let mut txn = db.begin_write()?;
    if !durable {
        txn.set_durability(Durability::None)
            .map_err(|e| redb::Error::Corrupted(e.to_string()))?;
    }
    {
        let mut tables = Tables::new(&txn);
        for change in changes {
            tables.apply(change)?;
        }
    }
    txn.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_room_probe_leaves_nothing_behind() {
        let dir = std::env::temp_dir().join(format!("causeway-room-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("causeway.redb");
        has_room(&path).unwrap();
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
        assert!(has_room(&dir.join("missing").join("causeway.redb")).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn reopen_waits_double_up_to_two_seconds() {
        let mut delay = REOPEN_FIRST;
        let mut waits = Vec::new();
        for _ in 0..7 {
            waits.push(delay.as_millis());
            delay = next_delay(delay);
        }
        assert_eq!(waits, [100, 200, 400, 800, 1600, 2000, 2000]);
    }
}
