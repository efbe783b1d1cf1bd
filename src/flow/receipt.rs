//! What a sidecar writes down about one hop outcome, and the routes that say which hops an
//! event has.

use serde::{Deserialize, Serialize};

use crate::{envelope::Envelope, store::now_ms, subscription::Subscription};

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// The broker confirmed the event (written by the publishing sidecar).
    Published,
    /// A delivery attempt failed; another one is due.
    AttemptFailed,
    /// The app answered 2xx.
    Delivered,
    /// The event went to the subscription's dead-letter queue.
    DeadLettered,
    /// The event was sent back from the dead-letter queue for delivery.
    Replayed,
    /// A copy of an event the app already took was dropped.
    DuplicateSkipped,
}

/// Who an event is, as every receipt about it repeats: a sidecar that only delivered an
/// event still knows what it was.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventFacts {
    /// The event's id.
    pub event_id: String,
    /// Its type.
    pub event_type: String,
    /// Its schema version, `MAJOR.MINOR`.
    pub schema_version: String,
    /// The service that published it.
    pub source: String,
    /// When it was accepted.
    pub occurred_at: String,
    /// The event that caused it.
    #[serde(default)]
    pub causation_id: Option<String>,
}

impl EventFacts {
    /// The facts of a delivered or published envelope.
    pub fn of(envelope: &Envelope) -> Self {
        EventFacts {
            event_id: envelope.event_id.to_string(),
            event_type: envelope.event_type.clone(),
            schema_version: envelope.schema_version.to_string(),
            source: envelope.source.clone(),
            occurred_at: envelope.occurred_at.clone(),
            causation_id: envelope.causation_id.clone(),
        }
    }

    /// The major version, when the schema version parses.
    pub fn major(&self) -> Option<u32> {
        self.schema_version.split('.').next()?.parse().ok()
    }
}

/// Which subscription a hop receipt is about, and how the hop went.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HopFacts {
    /// The subscribing service.
    pub service: String,
    /// The subscription's name.
    pub subscription: String,
    /// The attempt this receipt is about (attempts made so far, for a dead letter).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub attempt: u32,
    /// The subscription's `max_attempts`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// The app's status code, when it answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// What went wrong, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// How long the app took to accept it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub took_ms: Option<u64>,
    /// When the next attempt is due, in ms since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_ms: Option<u64>,
    /// Why it was dead-lettered (`rejected`, `max-attempts`, `schema`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The dead-letter queue it waits in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter_queue: Option<String>,
}

fn is_zero(value: &u32) -> bool {
    *value == 0
}

/// One hop outcome, as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    /// What happened.
    pub kind: Kind,
    /// When, in ms since the epoch, by the writing sidecar's clock.
    pub at_ms: u64,
    /// The flow: the key receipts are stored under.
    pub correlation_id: String,
    /// The event.
    pub event: EventFacts,
    /// The hop, for every kind but `published`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hop: Option<HopFacts>,
}

/// Longest error text kept in a receipt.
const MAX_ERROR: usize = 500;

impl Receipt {
    /// A receipt about `envelope`, written now.
    pub fn new(kind: Kind, envelope: &Envelope, hop: Option<HopFacts>) -> Self {
        Receipt {
            kind,
            at_ms: now_ms(),
            correlation_id: envelope.correlation_id.clone(),
            event: EventFacts::of(envelope),
            hop: hop.map(|mut hop| {
                if let Some(error) = &mut hop.error {
                    truncate(error, MAX_ERROR);
                }
                hop
            }),
        }
    }
}

fn truncate(text: &mut String, max: usize) {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
}

/// Whether a flow's answer covers this sidecar only or every sidecar sharing its store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// The embedded store: what this sidecar published and delivered.
    Local,
    /// Redis: every sidecar that shares it.
    Shared,
}

/// A subscription as the flows see it: which events it takes, and since when. Each sidecar
/// registers its subscriptions; a deleted one keeps its route with an end, so that events
/// published while it existed still show their hop.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    /// The exchange its queue is bound to: only events published there reach it.
    pub exchange: String,
    /// The subscribing service.
    pub service: String,
    /// The subscription's name.
    pub subscription: String,
    /// The event type it takes.
    pub event_type: String,
    /// The major versions it takes; all when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub versions: Option<Vec<u32>>,
    /// When it was registered, in ms since the epoch.
    pub since_ms: u64,
    /// When it was deleted, in ms since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until_ms: Option<u64>,
}

impl Route {
    /// The route of `subscription` of `service` on `exchange`, starting at `since_ms`.
    pub fn of(exchange: &str, service: &str, subscription: &Subscription, since_ms: u64) -> Self {
        Route {
            exchange: exchange.to_owned(),
            service: service.to_owned(),
            subscription: subscription.name.clone(),
            event_type: subscription.spec.event_type.clone(),
            versions: subscription.spec.versions.clone(),
            since_ms,
            until_ms: None,
        }
    }

    /// The key routes are stored under: a rebound subscription has an ended route and a
    /// new one.
    pub fn key(&self) -> String {
        format!(
            "{}/{}/{}/{}",
            self.exchange, self.service, self.subscription, self.since_ms
        )
    }

    /// Whether an event published at `at_ms` went to this subscription.
    pub fn takes(&self, event: &EventFacts, at_ms: u64) -> bool {
        let version = match (&self.versions, event.major()) {
            (None, _) => true,
            (Some(versions), Some(major)) => versions.contains(&major),
            (Some(_), None) => false,
        };
        version
            && self.event_type == event.event_type
            && self.since_ms <= at_ms
            && self.until_ms.is_none_or(|until| at_ms < until)
    }

    /// Whether it takes the same events as `other`.
    pub fn same_binding(&self, other: &Route) -> bool {
        self.event_type == other.event_type && self.versions == other.versions
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(event_type: &str, version: &str) -> EventFacts {
        EventFacts {
            event_id: "e1".into(),
            event_type: event_type.into(),
            schema_version: version.into(),
            source: "order".into(),
            occurred_at: "2026-12-07T12:00:00.000000Z".into(),
            causation_id: None,
        }
    }

    fn route(versions: Option<Vec<u32>>, since_ms: u64, until_ms: Option<u64>) -> Route {
        Route {
            exchange: "events".into(),
            service: "inventory".into(),
            subscription: "reserve".into(),
            event_type: "OrderPlaced".into(),
            versions,
            since_ms,
            until_ms,
        }
    }

    #[test]
    fn a_route_takes_its_type_and_versions_while_it_exists() {
        let v2 = facts("OrderPlaced", "2.1");
        assert!(route(None, 10, None).takes(&v2, 10));
        assert!(route(Some(vec![2]), 10, None).takes(&v2, 50));
        assert!(!route(Some(vec![1]), 10, None).takes(&v2, 50));
        assert!(!route(None, 10, None).takes(&facts("OrderPaid", "2.1"), 50));
        assert!(
            !route(None, 10, None).takes(&v2, 9),
            "published before it existed"
        );
        assert!(route(None, 10, Some(20)).takes(&v2, 19));
        assert!(
            !route(None, 10, Some(20)).takes(&v2, 20),
            "published after it ended"
        );
    }

    #[test]
    fn long_errors_are_cut_on_a_character_boundary() {
        let mut text = "é".repeat(400);
        truncate(&mut text, 501);
        assert!(text.len() <= 504);
        assert!(text.ends_with('…'));
    }
}
