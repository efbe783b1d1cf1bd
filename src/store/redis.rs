//! Dedup records in Redis, shared by every replica of a service.
//!
//! One key per `(subscription, event_id)`: `claimed:<owner>` while a delivery holds the
//! lease (`SET NX PX`), then `done` for the retention window. A replica that finds another
//! replica's claim backs off; one that finds `done` skips the event.
//!
//! Redis may be down: every call fails within [`CALL_TIMEOUT`], the connection is made again
//! in the background, and a probe pings Redis so that its state (in `/readyz`, the metrics
//! and one log line per change) is known even when no event flows, and so that the
//! connection is back soon after Redis is.

mod flows;

use std::{
    future::Future,
    time::{Duration, Instant},
};

use redis::{
    AsyncCommands, Client, RedisError, Script,
    aio::{ConnectionManager, ConnectionManagerConfig},
};
use tokio_util::sync::CancellationToken;

use super::{BoxFuture, Claim, DedupStore, StoreError};
use crate::health::{Store, StoreHealth};

/// Longest a call may take, reconnecting included; then it fails with `Unavailable`.
const CALL_TIMEOUT: Duration = Duration::from_secs(1);
/// Longest one connection attempt, and one command on an open connection, may take.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
const RESPONSE_TIMEOUT: Duration = Duration::from_millis(500);
/// After a lost connection the manager tries again at once, then `RETRIES` more times after
/// delays drawn below 50 ms, 100 ms (`RETRY_MIN_DELAY` times `RETRY_BASE` to the power of
/// the try, capped at `RETRY_MAX_DELAY`). When all fail, the next call starts over: the
/// probe makes one every `PROBE_FAILING`, so a call works again within about 300 ms of Redis
/// answering again.
const RETRIES: usize = 2;
const RETRY_MIN_DELAY: Duration = Duration::from_millis(50);
const RETRY_BASE: f32 = 2.0;
const RETRY_MAX_DELAY: Duration = Duration::from_millis(200);
/// How often the probe pings Redis while it works, and while it fails.
const PROBE_OK: Duration = Duration::from_secs(1);
const PROBE_FAILING: Duration = Duration::from_millis(200);

/// The shared dedup store.
#[derive(Clone)]
pub struct RedisDedup {
    connection: ConnectionManager,
    prefix: String,
    /// This process's claim marker, so that a release never drops another replica's lease.
    claimed: String,
    health: StoreHealth,
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
    /// A store on `url` whose keys are prefixed `causeway:dedup:{service}:`, reporting to
    /// `health`. It connects on first use, so it starts also while Redis is down; only a
    /// malformed URL fails here.
    pub fn open(url: &str, service: &str, health: StoreHealth) -> Result<Self, StoreError> {
        let client = Client::open(url).map_err(|e| StoreError::Redis(e.to_string()))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_number_of_retries(RETRIES)
            .set_min_delay(RETRY_MIN_DELAY)
            .set_exponent_base(RETRY_BASE)
            .set_max_delay(RETRY_MAX_DELAY);
        let connection = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| StoreError::Redis(e.to_string()))?;
        Ok(RedisDedup {
            connection,
            prefix: format!("causeway:dedup:{service}:"),
            claimed: format!("claimed:{}", uuid::Uuid::now_v7()),
            health,
        })
    }

    /// Pings Redis until `shutdown`: at once, then every second while it answers and every
    /// 200 ms while it does not.
    pub async fn run_probe(self, shutdown: CancellationToken) {
        loop {
            let mut connection = self.connection.clone();
            let ping = async move {
                redis::cmd("PING")
                    .query_async::<String>(&mut connection)
                    .await
            };
            // The outcome reaches the health state; nothing else to do with it.
            let _ = self.call(ping).await;
            let every = if self.health.is_ok() {
                PROBE_OK
            } else {
                PROBE_FAILING
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
        }
    }

    /// Runs one Redis call within [`CALL_TIMEOUT`] and reports its outcome to the health state.
    async fn call<T>(
        &self,
        call: impl Future<Output = Result<T, RedisError>>,
    ) -> Result<T, StoreError> {
        let started = Instant::now();
        let error = match tokio::time::timeout(CALL_TIMEOUT, call).await {
            Ok(Ok(value)) => {
                self.health.succeeded(started);
                return Ok(value);
            }
            Ok(Err(error)) => error,
            Err(_) => {
                let reason = format!("no answer within {} ms", CALL_TIMEOUT.as_millis());
                self.health.failed(started, &reason);
                return Err(unavailable(reason));
            }
        };
        self.health.failed(started, &error);
        let unreachable = error.is_io_error()
            || error.is_timeout()
            || error.is_connection_dropped()
            || error.is_connection_refusal();
        Err(if unreachable {
            unavailable(error.to_string())
        } else {
            StoreError::Redis(error.to_string())
        })
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }
}

fn unavailable(reason: String) -> StoreError {
    StoreError::Unavailable {
        store: Store::Redis.name(),
        reason,
    }
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
            let set: Option<String> = self
                .call(
                    redis::cmd("SET")
                        .arg(&key)
                        .arg(&self.claimed)
                        .arg("NX")
                        .arg("PX")
                        .arg(millis(lease))
                        .query_async(&mut connection),
                )
                .await?;
            if set.is_some() {
                return Ok(Claim::Acquired);
            }
            let value: Option<String> = self.call(connection.get(&key)).await?;
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
            let _: () = self
                .call(connection.pset_ex(self.key(key), "done", millis(retention)))
                .await?;
            Ok(())
        })
    }

    fn release<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let mut connection = self.connection.clone();
            let script = Script::new(RELEASE);
            let mut invocation = script.key(self.key(key));
            invocation.arg(&self.claimed);
            let _: i64 = self.call(invocation.invoke_async(&mut connection)).await?;
            Ok(())
        })
    }
}
