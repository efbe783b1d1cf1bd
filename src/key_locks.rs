//! Async locks by key: one idempotency key's publishes, one dead-letter queue's operations.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};

use crate::sync::lock;

/// Async locks by key, created on demand and removed when nobody holds or waits for them,
/// so the table only ever holds the keys in use.
#[derive(Debug, Default)]
pub(crate) struct KeyLocks {
    table: Mutex<HashMap<String, Arc<AsyncMutex<()>>>>,
}

/// Holds the lock of one key until dropped.
pub(crate) struct KeyGuard<'a> {
    locks: &'a KeyLocks,
    key: String,
    guard: Option<OwnedMutexGuard<()>>,
}

impl KeyLocks {
    /// Waits for and takes the lock of `key`.
    pub(crate) async fn lock(&self, key: &str) -> KeyGuard<'_> {
        let mutex = {
            let mut table = lock(&self.table);
            table.entry(key.to_owned()).or_default().clone()
        };
        let guard = mutex.lock_owned().await;
        KeyGuard {
            locks: self,
            key: key.to_owned(),
            guard: Some(guard),
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        lock(&self.table).len()
    }
}

impl Drop for KeyGuard<'_> {
    fn drop(&mut self) {
        // Release first, then drop the entry if the table holds the only reference left.
        // Clones are only made under the table lock, so this check cannot race one.
        drop(self.guard.take());
        let mut table = lock(&self.locks.table);
        if table
            .get(&self.key)
            .is_some_and(|mutex| Arc::strong_count(mutex) == 1)
        {
            table.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_key_is_held_by_one_at_a_time_and_forgotten_after() {
        let locks = Arc::new(KeyLocks::default());
        let first = locks.lock("k").await;
        let waiter = {
            let locks = locks.clone();
            tokio::spawn(async move {
                let _second = locks.lock("k").await;
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            !waiter.is_finished(),
            "the second holder got in while the first held the key"
        );
        let other = locks.lock("other").await;
        assert_eq!(locks.len(), 2);
        drop(first);
        waiter.await.unwrap();
        drop(other);
        assert_eq!(locks.len(), 0);
    }
}
