//! From a flow's receipts and the routes to the answer of `GET /v1/flows/{correlation_id}`.
//! Pure: no I/O, the time is an argument.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    time::{Duration, SystemTime},
};

use serde::Serialize;

use super::{
    FlowDefinition,
    definition::{DefinedFlow, Facts, evaluate},
    receipt::{EventFacts, HopFacts, Kind, Receipt, Route, Scope},
};

/// What the view needs besides the receipts.
#[derive(Clone, Debug)]
pub struct Settings<'a> {
    /// Whether the receipts cover this sidecar only.
    pub scope: Scope,
    /// The answering sidecar's service.
    pub service: &'a str,
    /// A hop pending or retrying longer than this makes the flow stuck.
    pub stuck_after: Duration,
    /// The `[[flows]]` definitions.
    pub definitions: &'a [FlowDefinition],
    /// Now, in ms since the epoch.
    pub now_ms: u64,
}

/// The state of one hop.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HopState {
    /// Routed, no outcome yet.
    Pending,
    /// An attempt failed; another is due.
    Retrying,
    /// The app took it.
    Delivered,
    /// It waits in the dead-letter queue.
    DeadLettered,
    /// A copy the app already had was dropped.
    DuplicateSkipped,
}

/// One event going to one subscription.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Hop {
    /// The subscribing service.
    pub service: String,
    /// The subscription.
    pub subscription: String,
    /// Where it stands.
    pub state: HopState,
    /// Attempts made.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
    /// The subscription's `max_attempts`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// The app's last status code.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_status: Option<u16>,
    /// The last error, in words.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// When the next attempt is due.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<String>,
    /// How long the app took to accept it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub took_ms: Option<u64>,
    /// Why it was dead-lettered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The dead-letter queue it waits in.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dead_letter_queue: Option<String>,
    /// When it was pending from (published, or replayed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// When it was last replayed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replayed_at: Option<String>,
    /// When it was delivered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivered_at: Option<String>,
    /// When it was dead-lettered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dead_lettered_at: Option<String>,
    /// When a duplicate was skipped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped_at: Option<String>,
    #[serde(skip)]
    since_ms: u64,
    #[serde(skip)]
    updated_ms: u64,
}

impl Hop {
    fn pending(service: &str, subscription: &str, since_ms: u64) -> Self {
        Hop {
            service: service.to_owned(),
            subscription: subscription.to_owned(),
            state: HopState::Pending,
            attempts: None,
            max_attempts: None,
            last_status: None,
            last_error: None,
            next_attempt_at: None,
            took_ms: None,
            reason: None,
            dead_letter_queue: None,
            since: Some(rfc3339(since_ms)),
            replayed_at: None,
            delivered_at: None,
            dead_lettered_at: None,
            skipped_at: None,
            since_ms,
            updated_ms: since_ms,
        }
    }

    /// The hop after one more receipt about it. A delivered hop stays delivered.
    fn apply(&mut self, kind: Kind, at_ms: u64, facts: &HopFacts) {
        if self.state == HopState::Delivered {
            return;
        }
        if kind == Kind::DuplicateSkipped && self.state != HopState::Pending {
            return;
        }
        let mut next = Hop::pending(&self.service, &self.subscription, self.since_ms);
        next.replayed_at = self.replayed_at.take();
        next.max_attempts = facts.max_attempts.or(self.max_attempts);
        next.updated_ms = at_ms;
        let at = rfc3339(at_ms);
        match kind {
            Kind::Published => return,
            Kind::Replayed => {
                next.since_ms = at_ms;
                next.since = Some(at.clone());
                next.replayed_at = Some(at);
            }
            Kind::AttemptFailed => {
                next.state = HopState::Retrying;
                next.attempts = Some(facts.attempt);
                next.last_status = facts.status;
                next.last_error = facts.error.clone();
                next.next_attempt_at = facts.next_attempt_ms.map(rfc3339);
            }
            Kind::Delivered => {
                next.state = HopState::Delivered;
                next.attempts = Some(facts.attempt);
                next.took_ms = facts.took_ms;
                next.delivered_at = Some(at);
                next.since = None;
            }
            Kind::DeadLettered => {
                next.state = HopState::DeadLettered;
                next.attempts = Some(facts.attempt);
                next.last_status = facts.status;
                next.last_error = facts.error.clone();
                next.reason = facts.reason.clone();
                next.dead_letter_queue = facts.dead_letter_queue.clone();
                next.dead_lettered_at = Some(at);
                next.since = None;
            }
            Kind::DuplicateSkipped => {
                next.state = HopState::DuplicateSkipped;
                next.skipped_at = Some(at);
                next.since = None;
            }
        }
        *self = next;
    }

    fn name(&self) -> String {
        format!("{}/{}", self.service, self.subscription)
    }
}

/// One event of the flow with its hops.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Event {
    /// Who it is.
    #[serde(flatten)]
    pub facts: EventFacts,
    /// Whether it was published with no subscription to take it (shared scope only).
    pub unrouted: bool,
    /// Its hops, by service then subscription.
    pub hops: Vec<Hop>,
}

/// The state of a whole flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FlowState {
    /// Some hop is still pending or retrying.
    InProgress,
    /// Every hop is delivered.
    Settled,
    /// A hop is dead-lettered, or pending or retrying for too long.
    Stuck,
}

/// The answer of `GET /v1/flows/{correlation_id}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FlowView {
    /// The flow.
    pub correlation_id: String,
    /// Whether it covers this sidecar only.
    pub scope: Scope,
    /// The answering sidecar's service.
    pub service: String,
    /// Where it stands.
    pub state: FlowState,
    /// Why it is stuck.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When its first event was published.
    pub started_at: String,
    /// When its latest receipt was written.
    pub updated_at: String,
    /// The flow definition its first event starts, with its outcome.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub definition: Option<DefinedFlow>,
    /// Its events, parents before children.
    pub events: Vec<Event>,
    /// Whether older receipts were left out.
    pub truncated: bool,
}

/// A line of `GET /v1/flows`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FlowSummary {
    /// The flow.
    pub correlation_id: String,
    /// Where it stands.
    pub state: FlowState,
    /// The definition's outcome, when one applies.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<super::DefinitionOutcome>,
    /// When it started.
    pub started_at: String,
    /// When its latest receipt was written.
    pub updated_at: String,
    /// How many events it has.
    pub events: usize,
}

/// The summary of a flow view.
pub fn summarize(view: &FlowView) -> FlowSummary {
    FlowSummary {
        correlation_id: view.correlation_id.clone(),
        state: view.state,
        outcome: view.definition.as_ref().map(|d| d.outcome),
        started_at: view.started_at.clone(),
        updated_at: view.updated_at.clone(),
        events: view.events.len(),
    }
}

/// The flow `correlation_id` from its receipts; `None` when there are none.
pub fn view(
    correlation_id: &str,
    mut receipts: Vec<Receipt>,
    routes: &[Route],
    truncated: bool,
    settings: &Settings<'_>,
) -> Option<FlowView> {
    if receipts.is_empty() {
        return None;
    }
    receipts.sort_by_key(|r| (r.at_ms, rank(r.kind)));
    // When each event was published: its `published` receipt, else its first receipt.
    let mut facts: HashMap<&str, &EventFacts> = HashMap::new();
    let mut published: HashMap<&str, u64> = HashMap::new();
    for receipt in &receipts {
        let id = receipt.event.event_id.as_str();
        facts.entry(id).or_insert(&receipt.event);
        let at = published.entry(id).or_insert(receipt.at_ms);
        if receipt.kind == Kind::Published {
            *at = receipt.at_ms;
        }
    }
    // Hops the routes expect, then what the receipts say of them.
    let mut hops: HashMap<&str, BTreeMap<(String, String), Hop>> = HashMap::new();
    let mut routed: HashSet<&str> = HashSet::new();
    for (&id, event) in &facts {
        let at = published[id];
        for route in routes.iter().filter(|r| r.takes(event, at)) {
            routed.insert(id);
            hops.entry(id).or_default().insert(
                (route.service.clone(), route.subscription.clone()),
                Hop::pending(&route.service, &route.subscription, at),
            );
        }
    }
    for receipt in &receipts {
        let Some(hop_facts) = &receipt.hop else {
            continue;
        };
        let id = receipt.event.event_id.as_str();
        let key = (hop_facts.service.clone(), hop_facts.subscription.clone());
        hops.entry(id)
            .or_default()
            .entry(key)
            .or_insert_with(|| {
                Hop::pending(&hop_facts.service, &hop_facts.subscription, published[id])
            })
            .apply(receipt.kind, receipt.at_ms, hop_facts);
    }
    let events: Vec<Event> = causal_order(&facts)
        .into_iter()
        .map(|id| {
            let hops: Vec<Hop> = hops.remove(id).unwrap_or_default().into_values().collect();
            Event {
                facts: facts[id].clone(),
                unrouted: settings.scope == Scope::Shared
                    && hops.is_empty()
                    && !routed.contains(id),
                hops,
            }
        })
        .collect();
    let (state, reason) = flow_state(&events, settings);
    let started_ms = published.values().copied().min().unwrap_or_default();
    let updated_ms = receipts.iter().map(|r| r.at_ms).max().unwrap_or_default();
    let definition = events.first().and_then(|first| {
        evaluate(
            settings.definitions,
            &Facts {
                first_type: &first.facts.event_type,
                events: events
                    .iter()
                    .map(|e| {
                        (
                            e.facts.occurred_at.as_str(),
                            e.facts.event_type.as_str(),
                            e.facts.event_id.as_str(),
                        )
                    })
                    .collect(),
                dead_letter: dead_letter(&events),
                started_ms,
                now_ms: settings.now_ms,
            },
        )
    });
    Some(FlowView {
        correlation_id: correlation_id.to_owned(),
        scope: settings.scope,
        service: settings.service.to_owned(),
        state,
        reason,
        started_at: rfc3339(started_ms),
        updated_at: rfc3339(updated_ms),
        definition,
        events,
        truncated,
    })
}

/// Receipts written in the same millisecond apply in the order things happen.
fn rank(kind: Kind) -> u8 {
    match kind {
        Kind::Published => 0,
        Kind::Replayed => 1,
        Kind::AttemptFailed => 2,
        Kind::DeadLettered | Kind::DuplicateSkipped => 3,
        Kind::Delivered => 4,
    }
}

/// Event ids with every parent before its children; roots (no parent in the flow) and
/// siblings by `occurred_at`, then id.
fn causal_order<'a>(facts: &HashMap<&'a str, &'a EventFacts>) -> Vec<&'a str> {
    let mut children: HashMap<&str, Vec<&EventFacts>> = HashMap::new();
    let mut roots: Vec<&EventFacts> = Vec::new();
    for event in facts.values() {
        match event
            .causation_id
            .as_deref()
            .filter(|p| facts.contains_key(p) && *p != event.event_id)
        {
            Some(parent) => children.entry(parent).or_default().push(event),
            None => roots.push(event),
        }
    }
    let by_time = |a: &&EventFacts, b: &&EventFacts| {
        (&a.occurred_at, &a.event_id).cmp(&(&b.occurred_at, &b.event_id))
    };
    roots.sort_by(by_time);
    let mut order = Vec::with_capacity(facts.len());
    let mut seen = HashSet::new();
    let mut stack: Vec<&EventFacts> = roots.into_iter().rev().collect();
    while let Some(event) = stack.pop() {
        if !seen.insert(event.event_id.as_str()) {
            continue;
        }
        order.push(event.event_id.as_str());
        if let Some(kids) = children.get_mut(event.event_id.as_str()) {
            kids.sort_by(by_time);
            stack.extend(kids.iter().rev());
        }
    }
    // A causation cycle has no root: its events come last, by time.
    let mut rest: Vec<&EventFacts> = facts
        .values()
        .filter(|e| !seen.contains(e.event_id.as_str()))
        .copied()
        .collect();
    rest.sort_by(by_time);
    order.extend(rest.into_iter().map(|e| e.event_id.as_str()));
    order
}

fn flow_state(events: &[Event], settings: &Settings<'_>) -> (FlowState, Option<String>) {
    if let Some(dead) = dead_letter(events) {
        return (FlowState::Stuck, Some(dead));
    }
    let limit = u64::try_from(settings.stuck_after.as_millis()).unwrap_or(u64::MAX);
    let mut settled = true;
    for event in events {
        for hop in &event.hops {
            if matches!(hop.state, HopState::Pending | HopState::Retrying) {
                settled = false;
                let waiting = settings.now_ms.saturating_sub(hop.since_ms);
                if waiting > limit {
                    let state = match hop.state {
                        HopState::Pending => "pending",
                        _ => "retrying",
                    };
                    let mut reason = format!(
                        "{} has been {state} for {} with {} {}",
                        hop.name(),
                        humantime::format_duration(Duration::from_secs(waiting / 1000)),
                        event.facts.event_type,
                        event.facts.event_id,
                    );
                    if let Some(error) = &hop.last_error {
                        reason.push_str(": ");
                        reason.push_str(error);
                    }
                    return (FlowState::Stuck, Some(reason));
                }
            }
        }
    }
    let state = if settled {
        FlowState::Settled
    } else {
        FlowState::InProgress
    };
    (state, None)
}

/// The first dead-lettered hop, described.
fn dead_letter(events: &[Event]) -> Option<String> {
    events
        .iter()
        .flat_map(|e| e.hops.iter().map(move |h| (e, h)))
        .filter(|(_, h)| h.state == HopState::DeadLettered)
        .min_by_key(|(_, h)| h.updated_ms)
        .map(|(event, hop)| {
            let mut reason = format!(
                "{} dead-lettered {} {}",
                hop.name(),
                event.facts.event_type,
                event.facts.event_id
            );
            if let Some(why) = &hop.reason {
                reason.push_str(&format!(" ({why})"));
            }
            if let Some(error) = &hop.last_error {
                reason.push_str(": ");
                reason.push_str(error);
            }
            reason
        })
}

/// RFC 3339 UTC with milliseconds.
pub(crate) fn rfc3339(ms: u64) -> String {
    let time = SystemTime::UNIX_EPOCH + Duration::from_millis(ms);
    humantime::format_rfc3339_millis(time).to_string()
}

#[cfg(test)]
mod tests;
