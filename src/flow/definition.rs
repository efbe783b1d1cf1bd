//! Flow definitions (`[[flows]]` in the config file): which event starts a business flow,
//! which ones complete or fail it, and how long it may take.

use std::time::Duration;

use serde::Serialize;

/// One `[[flows]]` table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlowDefinition {
    /// The flow's name, such as `order`.
    pub name: String,
    /// The event type that starts it.
    pub starts_with: String,
    /// Event types that complete it.
    pub completes_on: Vec<String>,
    /// Event types that fail it.
    pub fails_on: Vec<String>,
    /// Its time budget, from the starting event.
    pub within: Duration,
}

/// Where a defined flow stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// A completing event happened.
    Complete,
    /// A failing event happened, or an event of the flow was dead-lettered.
    Failed,
    /// Neither yet, within the budget.
    InProgress,
    /// Neither yet, and the budget is spent.
    Late,
}

/// A defined flow's outcome, as the flow API shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DefinedFlow {
    /// The definition's name.
    pub name: String,
    /// Where it stands.
    pub outcome: Outcome,
    /// What decided it: the completing or failing event, the dead letter, or the budget.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When its budget ends.
    pub deadline: String,
}

/// What the evaluation needs to know about the flow.
pub(super) struct Facts<'a> {
    /// The type of the flow's first event.
    pub(super) first_type: &'a str,
    /// Every event as (occurred_at, event type, event id), in any order.
    pub(super) events: Vec<(&'a str, &'a str, &'a str)>,
    /// The first dead letter's description, if any.
    pub(super) dead_letter: Option<String>,
    /// When the flow started and now, in ms since the epoch.
    pub(super) started_ms: u64,
    pub(super) now_ms: u64,
}

/// The outcome of the first definition that the flow's first event starts.
pub(super) fn evaluate(definitions: &[FlowDefinition], facts: &Facts<'_>) -> Option<DefinedFlow> {
    let definition = definitions
        .iter()
        .find(|d| d.starts_with == facts.first_type)?;
    let budget = u64::try_from(definition.within.as_millis()).unwrap_or(u64::MAX);
    let deadline_ms = facts.started_ms.saturating_add(budget);
    // The first completing or failing event decides.
    let decisive = facts
        .events
        .iter()
        .filter(|(_, kind, _)| {
            definition.completes_on.iter().any(|t| t == kind)
                || definition.fails_on.iter().any(|t| t == kind)
        })
        .min_by_key(|(at, _, id)| (*at, *id));
    let (outcome, reason) = match decisive {
        Some((_, kind, id)) if definition.completes_on.iter().any(|t| t == kind) => {
            (Outcome::Complete, Some(format!("{kind} {id}")))
        }
        Some((_, kind, id)) => (Outcome::Failed, Some(format!("{kind} {id}"))),
        None => match &facts.dead_letter {
            Some(dead) => (Outcome::Failed, Some(dead.clone())),
            None if facts.now_ms > deadline_ms => (
                Outcome::Late,
                Some(format!(
                    "not complete within {}",
                    humantime::format_duration(definition.within)
                )),
            ),
            None => (Outcome::InProgress, None),
        },
    };
    Some(DefinedFlow {
        name: definition.name.clone(),
        outcome,
        reason,
        deadline: super::view::rfc3339(deadline_ms),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order() -> FlowDefinition {
        FlowDefinition {
            name: "order".into(),
            starts_with: "OrderPlaced".into(),
            completes_on: vec!["OrderShipped".into()],
            fails_on: vec!["PaymentFailed".into()],
            within: Duration::from_secs(30),
        }
    }

    fn facts<'a>(events: Vec<(&'a str, &'a str, &'a str)>, now_ms: u64) -> Facts<'a> {
        Facts {
            first_type: "OrderPlaced",
            events,
            dead_letter: None,
            started_ms: 1_000,
            now_ms,
        }
    }

    const PLACED: (&str, &str, &str) = ("2026-12-07T12:00:00.000000Z", "OrderPlaced", "e1");

    #[test]
    fn the_first_decisive_event_decides() {
        let shipped = ("2026-12-07T12:00:01.000000Z", "OrderShipped", "e2");
        let failed = ("2026-12-07T12:00:02.000000Z", "PaymentFailed", "e3");
        let defined = evaluate(&[order()], &facts(vec![PLACED, failed, shipped], 2_000)).unwrap();
        assert_eq!(defined.outcome, Outcome::Complete);
        assert_eq!(defined.reason.as_deref(), Some("OrderShipped e2"));
        let defined = evaluate(&[order()], &facts(vec![PLACED, failed], 2_000)).unwrap();
        assert_eq!(defined.outcome, Outcome::Failed);
    }

    #[test]
    fn without_a_decisive_event_the_budget_or_a_dead_letter_decides() {
        let defined = evaluate(&[order()], &facts(vec![PLACED], 30_000)).unwrap();
        assert_eq!(defined.outcome, Outcome::InProgress);
        assert_eq!(defined.deadline, "1970-01-01T00:00:31.000Z");
        let defined = evaluate(&[order()], &facts(vec![PLACED], 31_001)).unwrap();
        assert_eq!(defined.outcome, Outcome::Late);
        let mut stuck = facts(vec![PLACED], 2_000);
        stuck.dead_letter = Some("inventory/reserve dead-lettered".into());
        let defined = evaluate(&[order()], &stuck).unwrap();
        assert_eq!(defined.outcome, Outcome::Failed);
    }

    #[test]
    fn a_flow_no_definition_starts_has_none() {
        let mut other = facts(vec![PLACED], 2_000);
        other.first_type = "InvoiceSent";
        assert_eq!(evaluate(&[order()], &other), None);
    }
}
