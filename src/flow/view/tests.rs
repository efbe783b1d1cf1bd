use super::*;

const SECOND: u64 = 1_000;

fn event(id: &str, event_type: &str, parent: Option<&str>, at: &str) -> EventFacts {
    EventFacts {
        event_id: id.into(),
        event_type: event_type.into(),
        schema_version: "1.0".into(),
        source: "order".into(),
        occurred_at: format!("2026-12-07T12:00:{at}.000000Z"),
        causation_id: parent.map(str::to_owned),
    }
}

fn published(event: &EventFacts, at_ms: u64) -> Receipt {
    Receipt {
        kind: Kind::Published,
        at_ms,
        correlation_id: "flow-1".into(),
        event: event.clone(),
        hop: None,
    }
}

fn hop(kind: Kind, event: &EventFacts, subscription: &str, at_ms: u64, facts: HopFacts) -> Receipt {
    Receipt {
        kind,
        at_ms,
        correlation_id: "flow-1".into(),
        event: event.clone(),
        hop: Some(HopFacts {
            service: "inventory".into(),
            subscription: subscription.into(),
            ..facts
        }),
    }
}

fn route(subscription: &str, event_type: &str) -> Route {
    Route {
        exchange: "events".into(),
        service: "inventory".into(),
        subscription: subscription.into(),
        event_type: event_type.into(),
        versions: None,
        since_ms: 0,
        until_ms: None,
    }
}

fn settings(scope: Scope, now_ms: u64) -> Settings<'static> {
    Settings {
        scope,
        service: "inventory",
        stuck_after: Duration::from_secs(60),
        definitions: &[],
        now_ms,
    }
}

fn only_hop(view: &FlowView) -> &Hop {
    &view.events[0].hops[0]
}

#[test]
fn a_routed_event_is_pending_then_retrying_then_delivered() {
    let placed = event("e1", "OrderPlaced", None, "00");
    let routes = [route("reserve", "OrderPlaced")];
    let shared = settings(Scope::Shared, 2 * SECOND);
    let mut receipts = vec![published(&placed, SECOND)];

    let flow = view("flow-1", receipts.clone(), &routes, false, &shared).unwrap();
    assert_eq!(only_hop(&flow).state, HopState::Pending);
    assert_eq!(flow.state, FlowState::InProgress);
    assert!(!flow.events[0].unrouted);

    let failed = HopFacts {
        attempt: 1,
        max_attempts: Some(5),
        status: Some(503),
        error: Some("the app answered 503".into()),
        next_attempt_ms: Some(3 * SECOND),
        ..HopFacts::default()
    };
    receipts.push(hop(
        Kind::AttemptFailed,
        &placed,
        "reserve",
        SECOND + 10,
        failed,
    ));
    let flow = view("flow-1", receipts.clone(), &routes, false, &shared).unwrap();
    let retrying = only_hop(&flow);
    assert_eq!(retrying.state, HopState::Retrying);
    assert_eq!(
        (retrying.attempts, retrying.max_attempts),
        (Some(1), Some(5))
    );
    assert_eq!(retrying.last_status, Some(503));
    assert_eq!(
        retrying.next_attempt_at.as_deref(),
        Some("1970-01-01T00:00:03.000Z")
    );
    assert_eq!(flow.state, FlowState::InProgress);

    let delivered = HopFacts {
        attempt: 2,
        took_ms: Some(4),
        ..HopFacts::default()
    };
    receipts.push(hop(
        Kind::Delivered,
        &placed,
        "reserve",
        3 * SECOND,
        delivered,
    ));
    // A late duplicate does not undo the delivery.
    receipts.push(hop(
        Kind::DuplicateSkipped,
        &placed,
        "reserve",
        4 * SECOND,
        HopFacts::default(),
    ));
    let flow = view("flow-1", receipts, &routes, false, &shared).unwrap();
    let done = only_hop(&flow);
    assert_eq!(done.state, HopState::Delivered);
    assert_eq!((done.attempts, done.took_ms), (Some(2), Some(4)));
    assert_eq!(done.last_error, None);
    assert_eq!(flow.state, FlowState::Settled);
    assert_eq!(flow.updated_at, "1970-01-01T00:00:04.000Z");
}

#[test]
fn a_dead_letter_makes_the_flow_stuck_until_its_replay_is_delivered() {
    let placed = event("e1", "OrderPlaced", None, "00");
    let routes = [route("reserve", "OrderPlaced")];
    let shared = settings(Scope::Shared, 10 * SECOND);
    let dead = HopFacts {
        attempt: 1,
        status: Some(422),
        error: Some("the app answered 422".into()),
        reason: Some("rejected".into()),
        dead_letter_queue: Some("inventory.reserve.dlq".into()),
        ..HopFacts::default()
    };
    let mut receipts = vec![
        published(&placed, SECOND),
        hop(Kind::DeadLettered, &placed, "reserve", 2 * SECOND, dead),
    ];
    let flow = view("flow-1", receipts.clone(), &routes, false, &shared).unwrap();
    assert_eq!(flow.state, FlowState::Stuck);
    assert_eq!(
        flow.reason.as_deref(),
        Some("inventory/reserve dead-lettered OrderPlaced e1 (rejected): the app answered 422")
    );
    let hop_view = only_hop(&flow);
    assert_eq!(
        hop_view.dead_letter_queue.as_deref(),
        Some("inventory.reserve.dlq")
    );

    receipts.push(hop(
        Kind::Replayed,
        &placed,
        "reserve",
        5 * SECOND,
        HopFacts::default(),
    ));
    let flow = view("flow-1", receipts.clone(), &routes, false, &shared).unwrap();
    assert_eq!(only_hop(&flow).state, HopState::Pending);
    assert_eq!(
        only_hop(&flow).replayed_at.as_deref(),
        Some("1970-01-01T00:00:05.000Z")
    );
    assert_eq!(flow.state, FlowState::InProgress);

    let delivered = HopFacts {
        attempt: 1,
        ..HopFacts::default()
    };
    receipts.push(hop(
        Kind::Delivered,
        &placed,
        "reserve",
        6 * SECOND,
        delivered,
    ));
    let flow = view("flow-1", receipts, &routes, false, &shared).unwrap();
    assert_eq!(flow.state, FlowState::Settled);
}

#[test]
fn a_hop_waiting_too_long_makes_the_flow_stuck() {
    let placed = event("e1", "OrderPlaced", None, "00");
    let routes = [route("reserve", "OrderPlaced")];
    let receipts = vec![published(&placed, SECOND)];
    let early = view(
        "flow-1",
        receipts.clone(),
        &routes,
        false,
        &settings(Scope::Shared, 60 * SECOND),
    );
    assert_eq!(early.unwrap().state, FlowState::InProgress);
    let late = view(
        "flow-1",
        receipts,
        &routes,
        false,
        &settings(Scope::Shared, 62 * SECOND),
    )
    .unwrap();
    assert_eq!(late.state, FlowState::Stuck);
    assert_eq!(
        late.reason.as_deref(),
        Some("inventory/reserve has been pending for 1m 1s with OrderPlaced e1")
    );
}

#[test]
fn unrouted_events_are_marked_in_the_shared_scope_only() {
    let placed = event("e1", "OrderPlaced", None, "00");
    let receipts = vec![published(&placed, SECOND)];
    let shared = view(
        "flow-1",
        receipts.clone(),
        &[],
        false,
        &settings(Scope::Shared, 2 * SECOND),
    )
    .unwrap();
    assert!(shared.events[0].unrouted);
    assert_eq!(
        shared.state,
        FlowState::Settled,
        "nobody waits for an unrouted event"
    );
    let local = view(
        "flow-1",
        receipts,
        &[],
        false,
        &settings(Scope::Local, 2 * SECOND),
    )
    .unwrap();
    assert!(!local.events[0].unrouted);
    assert_eq!(local.scope, Scope::Local);
}

#[test]
fn routes_count_only_while_they_existed() {
    let placed = event("e1", "OrderPlaced", None, "00");
    let mut later = route("later", "OrderPlaced");
    later.since_ms = 5 * SECOND;
    let mut ended = route("ended", "OrderPlaced");
    ended.until_ms = Some(SECOND);
    let routes = [later, ended, route("other-type", "OrderPaid")];
    let flow = view(
        "flow-1",
        vec![published(&placed, 2 * SECOND)],
        &routes,
        false,
        &settings(Scope::Shared, 3 * SECOND),
    )
    .unwrap();
    assert!(flow.events[0].hops.is_empty());
    assert!(flow.events[0].unrouted);
}

#[test]
fn events_come_parents_first_whatever_the_receipt_order() {
    let placed = event("e1", "OrderPlaced", None, "00");
    let reserved = event("e2", "StockReserved", Some("e1"), "01");
    let paid = event("e3", "PaymentTaken", Some("e2"), "02");
    let orphan = event("e4", "Audit", Some("missing"), "00");
    // The child's receipt was written first (clocks differ between sidecars).
    let receipts = vec![
        published(&paid, SECOND),
        published(&reserved, 2 * SECOND),
        published(&placed, 3 * SECOND),
        published(&orphan, 4 * SECOND),
    ];
    let flow = view(
        "flow-1",
        receipts,
        &[],
        false,
        &settings(Scope::Local, 5 * SECOND),
    )
    .unwrap();
    let order: Vec<&str> = flow
        .events
        .iter()
        .map(|e| e.facts.event_id.as_str())
        .collect();
    assert_eq!(order, ["e1", "e2", "e3", "e4"]);
    assert_eq!(flow.started_at, "1970-01-01T00:00:01.000Z");
}

#[test]
fn a_definition_follows_the_flow() {
    let definitions = [FlowDefinition {
        name: "order".into(),
        starts_with: "OrderPlaced".into(),
        completes_on: vec!["OrderShipped".into()],
        fails_on: vec![],
        within: Duration::from_secs(30),
    }];
    let placed = event("e1", "OrderPlaced", None, "00");
    let shipped = event("e2", "OrderShipped", Some("e1"), "05");
    let mut with_definitions = settings(Scope::Shared, 2 * SECOND);
    with_definitions.definitions = &definitions;
    let receipts = vec![published(&placed, SECOND), published(&shipped, 2 * SECOND)];
    let flow = view("flow-1", receipts, &[], false, &with_definitions).unwrap();
    let defined = flow.definition.unwrap();
    assert_eq!(defined.name, "order");
    assert_eq!(defined.outcome, super::super::DefinitionOutcome::Complete);
}

#[test]
fn no_receipts_no_flow() {
    assert_eq!(
        view("flow-1", Vec::new(), &[], false, &settings(Scope::Local, 0)),
        None
    );
}

#[test]
fn the_answer_leaves_out_what_a_state_does_not_have() {
    let placed = event("e1", "OrderPlaced", None, "00");
    let routes = [route("reserve", "OrderPlaced")];
    let flow = view(
        "flow-1",
        vec![published(&placed, SECOND)],
        &routes,
        false,
        &settings(Scope::Shared, SECOND),
    )
    .unwrap();
    let json = serde_json::to_value(&flow).unwrap();
    assert_eq!(
        json["events"][0]["hops"][0],
        serde_json::json!({
            "service": "inventory",
            "subscription": "reserve",
            "state": "pending",
            "since": "1970-01-01T00:00:01.000Z"
        })
    );
    assert_eq!(json["events"][0]["event_type"], "OrderPlaced");
    let event = json["events"][0].as_object().unwrap();
    assert_eq!(event.get("causation_id"), Some(&serde_json::Value::Null));
}
