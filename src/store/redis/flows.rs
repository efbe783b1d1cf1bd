//! Flow receipts and routes in Redis, shared by every sidecar that uses it
//! (`"scope": "shared"`).
//!
//! - `causeway:flow:{correlation_id}`: a list of receipts (JSON), the latest
//!   [`MAX_RECEIPTS`] and one more (to know that some were left out), expiring after the
//!   retention from its latest receipt;
//! - `causeway:flow-event:{event_id}`: the event's correlation id;
//! - `causeway:flows:recent`: a sorted set of correlation ids by latest receipt time,
//!   [`MAX_RECENT`] at most;
//! - `causeway:flows:routes`: a hash of routes (JSON) by `{service}/{subscription}/{since}`.

use std::time::Duration;

use super::{RedisDedup, millis};
use crate::{
    flow::{FlowStore, MAX_RECEIPTS, MAX_RECENT, Receipt, Route, Scope},
    store::{BoxFuture, StoreError, now_ms},
};

const FLOW: &str = "causeway:flow:";
const EVENT: &str = "causeway:flow-event:";
const RECENT: &str = "causeway:flows:recent";
const ROUTES: &str = "causeway:flows:routes";

impl FlowStore for RedisDedup {
    fn scope(&self) -> Scope {
        Scope::Shared
    }

    fn append<'a>(
        &'a self,
        receipts: &'a [Receipt],
        retention: Duration,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let keep = millis(retention);
            let mut pipe = redis::pipe();
            let mut flows: Vec<&str> = Vec::new();
            let mut events: Vec<&str> = Vec::new();
            for receipt in receipts {
                let flow = format!("{FLOW}{}", receipt.correlation_id);
                pipe.rpush(&flow, serde_json::to_string(receipt)?).ignore();
                if !events.contains(&receipt.event.event_id.as_str()) {
                    events.push(&receipt.event.event_id);
                    pipe.pset_ex(
                        format!("{EVENT}{}", receipt.event.event_id),
                        &receipt.correlation_id,
                        keep,
                    )
                    .ignore();
                }
                if !flows.contains(&receipt.correlation_id.as_str()) {
                    flows.push(&receipt.correlation_id);
                }
            }
            let now = now_ms();
            let max = isize::try_from(MAX_RECEIPTS).unwrap_or(isize::MAX);
            for flow in &flows {
                let key = format!("{FLOW}{flow}");
                pipe.ltrim(&key, -(max + 1), -1).ignore();
                pipe.pexpire(&key, i64::try_from(keep).unwrap_or(i64::MAX))
                    .ignore();
                pipe.zadd(RECENT, *flow, now).ignore();
            }
            let recent = isize::try_from(MAX_RECENT).unwrap_or(isize::MAX);
            pipe.zremrangebyrank(RECENT, 0, -(recent + 1)).ignore();
            let mut connection = self.connection.clone();
            self.call(pipe.query_async::<()>(&mut connection)).await
        })
    }

    fn receipts<'a>(
        &'a self,
        correlation_id: &'a str,
    ) -> BoxFuture<'a, Result<(Vec<Receipt>, bool), StoreError>> {
        Box::pin(async move {
            let mut connection = self.connection.clone();
            let values: Vec<String> = self
                .call(
                    redis::cmd("LRANGE")
                        .arg(format!("{FLOW}{correlation_id}"))
                        .arg(0)
                        .arg(-1)
                        .query_async(&mut connection),
                )
                .await?;
            let truncated = values.len() > MAX_RECEIPTS;
            let skip = values.len().saturating_sub(MAX_RECEIPTS);
            let receipts = values[skip..]
                .iter()
                .map(|value| serde_json::from_str(value))
                .collect::<Result<Vec<Receipt>, _>>()?;
            Ok((receipts, truncated))
        })
    }

    fn flow_of_event<'a>(
        &'a self,
        event_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, StoreError>> {
        Box::pin(async move {
            let mut connection = self.connection.clone();
            self.call(
                redis::cmd("GET")
                    .arg(format!("{EVENT}{event_id}"))
                    .query_async(&mut connection),
            )
            .await
        })
    }

    fn recent(&self, limit: usize) -> BoxFuture<'_, Result<Vec<String>, StoreError>> {
        Box::pin(async move {
            let mut connection = self.connection.clone();
            let last = isize::try_from(limit).unwrap_or(isize::MAX) - 1;
            self.call(
                redis::cmd("ZRANGE")
                    .arg(RECENT)
                    .arg(0)
                    .arg(last)
                    .arg("REV")
                    .query_async(&mut connection),
            )
            .await
        })
    }

    fn routes(&self) -> BoxFuture<'_, Result<Vec<Route>, StoreError>> {
        Box::pin(async move {
            let mut connection = self.connection.clone();
            let values: Vec<String> = self
                .call(redis::cmd("HVALS").arg(ROUTES).query_async(&mut connection))
                .await?;
            // One unreadable route (written by a later version, say) hides only itself.
            Ok(values
                .iter()
                .filter_map(|value| serde_json::from_str(value).ok())
                .collect())
        })
    }

    fn put_routes<'a>(&'a self, routes: &'a [Route]) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            if routes.is_empty() {
                return Ok(());
            }
            let mut pipe = redis::pipe();
            for route in routes {
                if route.until_ms == Some(0) {
                    pipe.hdel(ROUTES, route.key()).ignore();
                } else {
                    pipe.hset(ROUTES, route.key(), serde_json::to_string(route)?)
                        .ignore();
                }
            }
            let mut connection = self.connection.clone();
            self.call(pipe.query_async::<()>(&mut connection)).await
        })
    }
}
