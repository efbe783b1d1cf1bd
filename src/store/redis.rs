//! Dedup records in Redis, shared by every replica of a service.
//!
//! One key per `(subscription, event_id)`: `claimed:<owner>` while a delivery holds the
//! lease (`SET NX PX`), then `done` for the retention window. A replica that finds another
//! replica's claim backs off; one that finds `done` skips the event.

use std::time::Duration;

use redis::{
    AsyncCommands, Client, Script,
    aio::{ConnectionManager, ConnectionManagerConfig},
};

use super::{BoxFuture, Claim, DedupStore, StoreError};

/// The shared dedup store.
#[derive(Clone)]
pub struct RedisDedup {
    connection: ConnectionManager,
    prefix: String,
    /// This process's claim marker, so that a release never drops another replica's lease.
    claimed: String,
}

impl std::fmt::Debug for RedisDedup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisDedup")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// Deletes the key only while it still holds our claim.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

impl RedisDedup {
    /// Connects to `url`; keys are prefixed `causeway:dedup:{service}:`.
    pub async fn connect(url: &str, service: &str) -> Result<Self, StoreError> {
        let client = Client::open(url).map_err(redis_error)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(Some(Duration::from_secs(5)));
        let connection = ConnectionManager::new_with_config(client, config)
            .await
            .map_err(redis_error)?;
        Ok(RedisDedup {
            connection,
            prefix: format!("causeway:dedup:{service}:"),
            claimed: format!("claimed:{}", uuid::Uuid::now_v7()),
        })
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }
}

fn redis_error(error: redis::RedisError) -> StoreError {
    StoreError::Redis(error.to_string())
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis())
        .unwrap_or(u64::MAX)
        .max(1)
}

impl DedupStore for RedisDedup {
    fn claim<'a>(
        &'a self,
        key: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, Result<Claim, StoreError>> {
        Box::pin(async move {
            let mut connection = self.connection.clone();
            let key = self.key(key);
            let set: Option<String> = redis::cmd("SET")
                .arg(&key)
                .arg(&self.claimed)
                .arg("NX")
                .arg("PX")
                .arg(millis(lease))
                .query_async(&mut connection)
                .await
                .map_err(redis_error)?;
            if set.is_some() {
                return Ok(Claim::Acquired);
            }
            let value: Option<String> = connection.get(&key).await.map_err(redis_error)?;
            Ok(match value.as_deref() {
                Some("done") => Claim::Done,
                _ => Claim::Busy,
            })
        })
    }

    fn complete<'a>(
        &'a self,
        key: &'a str,
        retention: Duration,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let mut connection = self.connection.clone();
            let _: () = connection
                .pset_ex(self.key(key), "done", millis(retention))
                .await
                .map_err(redis_error)?;
            Ok(())
        })
    }

    fn release<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let mut connection = self.connection.clone();
            let _: i64 = Script::new(RELEASE)
                .key(self.key(key))
                .arg(&self.claimed)
                .invoke_async(&mut connection)
                .await
                .map_err(redis_error)?;
            Ok(())
        })
    }
}
