//! How each subscription's consumer is doing, for `/readyz`, the API and the metrics; every
//! change of state is logged once.

use std::{collections::BTreeMap, sync::Arc};

use tokio::sync::watch;
use tracing::{info, warn};

use crate::{
    subscription::{Subscription, SubscriptionSpec},
    telemetry::metrics::Metrics,
};

/// How a subscription's consumer is doing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum State {
    /// Waiting for the broker, or being set up.
    Starting,
    /// Queues declared, consumer running.
    Consuming,
    /// Setting up or consuming failed, with the broker's reason; retried with backoff.
    Failed(String),
}

impl State {
    /// The state's name for the API.
    pub fn name(&self) -> &'static str {
        match self {
            State::Starting => "starting",
            State::Consuming => "consuming",
            State::Failed(_) => "failed",
        }
    }
}

/// The state of one subscription and the spec it runs with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubscriptionState {
    /// The spec the consumer runs (or tries to run) with.
    pub spec: SubscriptionSpec,
    /// How it is doing.
    pub state: State,
}

/// Subscription states by name.
pub type States = BTreeMap<String, SubscriptionState>;

/// Where the supervisor writes the states: a watch channel that readers follow, the
/// `causeway_subscription_state` gauge, and one log line per change.
#[derive(Debug)]
pub(crate) struct Board {
    states: watch::Sender<States>,
    metrics: Arc<Metrics>,
    queue_prefix: String,
}

impl Board {
    /// A board for the subscriptions of `service`; the receiver follows the states.
    pub(crate) fn new(service: &str, metrics: Arc<Metrics>) -> (Self, watch::Receiver<States>) {
        let (states, receiver) = watch::channel(States::new());
        let board = Board {
            states,
            metrics,
            queue_prefix: format!("{service}."),
        };
        (board, receiver)
    }

    /// Sets `subscription`'s state; logs and updates the gauge only when it changed.
    pub(crate) fn set(&self, subscription: &Subscription, state: State) {
        let mut changed = false;
        self.states.send_if_modified(|states| {
            let entry = SubscriptionState {
                spec: subscription.spec.clone(),
                state: state.clone(),
            };
            if states.get(&subscription.name) == Some(&entry) {
                return false;
            }
            states.insert(subscription.name.clone(), entry);
            changed = true;
            true
        });
        if !changed {
            return;
        }
        self.metrics
            .subscription_state(&subscription.name, state.name());
        let name = &subscription.name;
        let queue = format!("{}{name}", self.queue_prefix);
        match &state {
            State::Starting => info!(subscription = %name, "subscription starting"),
            State::Consuming => info!(subscription = %name, %queue, "consuming"),
            State::Failed(error) => {
                warn!(subscription = %name, %queue, %error, "subscription failed; retrying with backoff")
            }
        }
    }

    /// Keeps only the subscriptions in `wanted`, and marks those whose spec changed (or that
    /// are new) as starting.
    pub(crate) fn follow(&self, wanted: &[Subscription]) {
        let mut gone = Vec::new();
        self.states.send_modify(|states| {
            states.retain(|name, _| {
                let keep = wanted.iter().any(|s| &s.name == name);
                if !keep {
                    gone.push(name.clone());
                }
                keep
            });
        });
        for name in gone {
            self.metrics.forget_subscription(&name);
            self.metrics.forget_subscription_state(&name);
            info!(subscription = %name, "subscription removed");
        }
        for subscription in wanted {
            let current = self.states.borrow().get(&subscription.name).cloned();
            if current.is_none_or(|s| s.spec != subscription.spec) {
                self.set(subscription, State::Starting);
            }
        }
    }

    /// Marks every subscription in `wanted` as starting (the connection is being set up).
    pub(crate) fn all_starting(&self, wanted: &[Subscription]) {
        self.follow(wanted);
        for subscription in wanted {
            self.set(subscription, State::Starting);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subscription(name: &str) -> Subscription {
        let spec: SubscriptionSpec = serde_json::from_value(serde_json::json!({
            "event_type": "OrderPlaced", "route": "/events"
        }))
        .unwrap();
        Subscription::new(name, spec).unwrap()
    }

    #[test]
    fn a_state_is_published_and_counted_once_per_change() {
        let metrics = Arc::new(Metrics::default());
        let (board, mut states) = Board::new("svc", metrics.clone());
        let orders = subscription("orders");
        board.follow(std::slice::from_ref(&orders));
        assert!(states.has_changed().unwrap());
        states.borrow_and_update();

        board.set(&orders, State::Failed("PRECONDITION_FAILED".into()));
        assert!(states.has_changed().unwrap());
        states.borrow_and_update();
        board.set(&orders, State::Failed("PRECONDITION_FAILED".into()));
        assert!(
            !states.has_changed().unwrap(),
            "the same state was sent again"
        );

        let text = metrics.encode();
        assert!(
            text.contains(r#"causeway_subscription_state{subscription="orders",state="failed"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(
                r#"causeway_subscription_state{subscription="orders",state="consuming"} 0"#
            ),
            "{text}"
        );

        board.follow(&[]);
        assert!(states.borrow().is_empty());
        assert!(!metrics.encode().contains("subscription=\"orders\""));
    }
}
