//! Keeps this sidecar's subscriptions registered as routes, so that any sidecar sharing the
//! store knows which hops an event has while they are still pending.
//!
//! A route starts when its subscription first appears (a restart keeps the start) and ends
//! when it is deleted; a changed binding (event type or versions) ends the old route and
//! starts a new one. Ended routes stay for the retention, for the events published while
//! they existed.

use std::{sync::Arc, time::Duration};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{FlowStore, Route};
use crate::{store::now_ms, subscription::Subscription};

/// The wait before a failed registration is tried again.
const RETRY: Duration = Duration::from_secs(2);

/// Registers `service`'s subscriptions on `exchange` now and after every change, until
/// `shutdown`.
pub async fn register_routes(
    store: Arc<dyn FlowStore>,
    exchange: String,
    service: String,
    mut subscriptions: watch::Receiver<Vec<Subscription>>,
    retention: Duration,
    shutdown: CancellationToken,
) {
    let mut failing = false;
    loop {
        let current = subscriptions.borrow_and_update().clone();
        let outcome = async {
            let existing = store.routes().await?;
            let changed = merge(
                &existing,
                &exchange,
                &service,
                &current,
                now_ms(),
                retention,
            );
            store.put_routes(&changed).await
        }
        .await;
        match outcome {
            Ok(()) => {
                if std::mem::take(&mut failing) {
                    info!("subscriptions registered for flows again");
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    changed = subscriptions.changed() => if changed.is_err() { return },
                }
            }
            Err(error) => {
                if !failing {
                    failing = true;
                    warn!(%error, "cannot register the subscriptions for flows; pending hops may be missing from flows until this works");
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(RETRY) => {}
                }
            }
        }
    }
}

/// The routes to store so that `service`'s routes match `current` at `now`: new ones,
/// ended ones, and those whose end is older than the retention removed (with an end of 0,
/// which stores take as "forget").
fn merge(
    existing: &[Route],
    exchange: &str,
    service: &str,
    current: &[Subscription],
    now: u64,
    retention: Duration,
) -> Vec<Route> {
    let keep = u64::try_from(retention.as_millis()).unwrap_or(u64::MAX);
    let mut changed = Vec::new();
    let mine: Vec<&Route> = existing
        .iter()
        .filter(|r| r.service == service && r.exchange == exchange)
        .collect();
    for subscription in current {
        let wanted = Route::of(exchange, service, subscription, now);
        let live = mine
            .iter()
            .find(|r| r.subscription == wanted.subscription && r.until_ms.is_none());
        match live {
            Some(live) if live.same_binding(&wanted) => {}
            _ => changed.push(wanted),
        }
    }
    for route in mine {
        let still = current.iter().any(|s| {
            s.name == route.subscription
                && route.same_binding(&Route::of(exchange, service, s, now))
        });
        match route.until_ms {
            None if !still => changed.push(Route {
                until_ms: Some(now),
                ..route.clone()
            }),
            Some(until) if until.saturating_add(keep) < now => changed.push(Route {
                until_ms: Some(0),
                ..route.clone()
            }),
            _ => {}
        }
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::subscription::SubscriptionSpec;

    fn subscription(name: &str, event_type: &str) -> Subscription {
        let spec: SubscriptionSpec = serde_json::from_value(serde_json::json!({
            "event_type": event_type,
            "route": "/events",
        }))
        .unwrap();
        Subscription::new(name, spec).unwrap()
    }

    const DAY: Duration = Duration::from_secs(86_400);

    #[test]
    fn new_subscriptions_start_routes_and_known_ones_keep_their_start() {
        let current = [subscription("reserve", "OrderPlaced")];
        let first = merge(&[], "events", "inventory", &current, 100, DAY);
        assert_eq!(first.len(), 1);
        assert_eq!((first[0].since_ms, first[0].until_ms), (100, None));
        assert!(merge(&first, "events", "inventory", &current, 200, DAY).is_empty());
    }

    #[test]
    fn deleted_or_rebound_subscriptions_end_their_routes() {
        let before = merge(
            &[],
            "events",
            "inventory",
            &[subscription("reserve", "OrderPlaced")],
            100,
            DAY,
        );
        let deleted = merge(&before, "events", "inventory", &[], 200, DAY);
        assert_eq!(deleted.len(), 1);
        assert_eq!(deleted[0].until_ms, Some(200));

        let rebound = merge(
            &before,
            "events",
            "inventory",
            &[subscription("reserve", "OrderPaid")],
            300,
            DAY,
        );
        assert_eq!(rebound.len(), 2);
        assert!(
            rebound
                .iter()
                .any(|r| r.event_type == "OrderPaid" && r.since_ms == 300)
        );
        assert!(
            rebound
                .iter()
                .any(|r| r.event_type == "OrderPlaced" && r.until_ms == Some(300))
        );
    }

    #[test]
    fn other_services_routes_are_left_alone_and_old_ends_are_forgotten() {
        let mut theirs = merge(
            &[],
            "events",
            "payment",
            &[subscription("charge", "OrderPlaced")],
            100,
            DAY,
        );
        assert!(merge(&theirs, "events", "inventory", &[], 200, DAY).is_empty());
        theirs[0].until_ms = Some(100);
        theirs[0].service = "inventory".into();
        let day_ms = 86_400_000;
        let forgotten = merge(&theirs, "events", "inventory", &[], 101 + day_ms, DAY);
        assert_eq!(forgotten[0].until_ms, Some(0));
    }
}
