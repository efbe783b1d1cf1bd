//! The flow tree, on fixtures in the shape of the API's answer (docs/flows.md).

use serde_json::{Value, json};

use super::*;

fn event(id: &str, event_type: &str, source: &str, parent: Option<&str>, hops: Value) -> Value {
    json!({
        "event_id": id,
        "event_type": event_type,
        "schema_version": "1.0",
        "source": source,
        "occurred_at": "2026-12-07T12:00:00.123456Z",
        "causation_id": parent,
        "unrouted": false,
        "hops": hops,
    })
}

fn delivered(service: &str, subscription: &str) -> Value {
    json!({
        "service": service,
        "subscription": subscription,
        "state": "delivered",
        "attempts": 1,
        "took_ms": 4,
        "delivered_at": "2026-12-07T12:00:00.300000Z",
    })
}

fn flow(state: &str, scope: &str, events: Vec<Value>) -> Value {
    json!({
        "correlation_id": "order-1001",
        "scope": scope,
        "service": "inventory",
        "state": state,
        "started_at": "2026-12-07T12:00:00.123456Z",
        "updated_at": "2026-12-07T12:00:00.480112Z",
        "events": events,
        "truncated": false,
    })
}

const PLACED: &str = "0193abcd-5d2e-7b8f-9a1c-2e3f4a5b0001";
const RESERVED: &str = "0193abcd-5d2e-7b8f-9a1c-2e3f4a5b0002";
const CHARGED: &str = "0193abcd-5d2e-7b8f-9a1c-2e3f4a5b0003";
const SHIPPED: &str = "0193abcd-5d2e-7b8f-9a1c-2e3f4a5b0004";

#[test]
fn a_settled_flow_nests_each_event_under_its_cause() {
    let settled = flow(
        "settled",
        "shared",
        vec![
            event(
                PLACED,
                "OrderPlaced",
                "order",
                None,
                json!([
                    delivered("inventory", "reserve-stock"),
                    delivered("payment", "charge")
                ]),
            ),
            event(
                RESERVED,
                "StockReserved",
                "inventory",
                Some(PLACED),
                json!([delivered("shipping", "ship")]),
            ),
            event(CHARGED, "PaymentTaken", "payment", Some(PLACED), json!([])),
        ],
    );
    let expected = "\
order-1001  settled  scope: shared
OrderPlaced v1.0 (order) 0193abcd…0001 at 12:00:00.123
│ → inventory/reserve-stock  delivered  in 4 ms after 1 attempt
│ → payment/charge           delivered  in 4 ms after 1 attempt
├─ StockReserved v1.0 (inventory) 0193abcd…0002 at 12:00:00.123
│    → shipping/ship  delivered  in 4 ms after 1 attempt
└─ PaymentTaken v1.0 (payment) 0193abcd…0003 at 12:00:00.123
";
    assert_eq!(render(&settled), expected);
    assert_eq!(Verdict::of(&settled), Verdict::Settled);
}

#[test]
fn a_stuck_flow_says_why_and_where_the_dead_letter_waits() {
    let mut stuck = flow(
        "stuck",
        "shared",
        vec![event(
            PLACED,
            "OrderPlaced",
            "order",
            None,
            json!([
                {
                    "service": "inventory",
                    "subscription": "reserve-stock",
                    "state": "dead_lettered",
                    "attempts": 1,
                    "last_status": 422,
                    "last_error": "the app answered 422: unknown SKU",
                    "reason": "rejected",
                    "dead_letter_queue": "inventory.reserve-stock.dlq",
                    "dead_lettered_at": "2026-12-07T12:00:00.480112Z"
                },
                delivered("payment", "charge"),
            ]),
        )],
    );
    stuck["reason"] =
        json!("inventory/reserve-stock dead-lettered OrderPlaced 0193…: the app answered 422");
    stuck["definition"] = json!({
        "name": "order",
        "outcome": "failed",
        "reason": "inventory/reserve-stock dead-lettered OrderPlaced 0193…",
        "deadline": "2026-12-07T12:00:30.123456Z",
    });
    let expected = "\
order-1001  stuck: inventory/reserve-stock dead-lettered OrderPlaced 0193…: the app answered 422  scope: shared  definition order: failed (inventory/reserve-stock dead-lettered OrderPlaced 0193…)
OrderPlaced v1.0 (order) 0193abcd…0001 at 12:00:00.123
  → inventory/reserve-stock  dead_lettered  rejected: the app answered 422: unknown SKU (1 attempt) → inventory.reserve-stock.dlq
  → payment/charge           delivered      in 4 ms after 1 attempt
";
    assert_eq!(render(&stuck), expected);
    assert_eq!(Verdict::of(&stuck), Verdict::Stuck);
}

#[test]
fn a_dead_letter_without_an_error_text_shows_the_status() {
    let hop = json!({
        "service": "inventory", "subscription": "reserve-stock", "state": "dead_lettered",
        "attempts": 5, "last_status": 503, "reason": "max-attempts",
    });
    assert_eq!(
        hop_detail(&hop),
        "max-attempts: the app answered 503 (5 attempts)"
    );
}

#[test]
fn retrying_and_pending_hops_say_when_the_next_step_is() {
    let in_progress = flow(
        "in_progress",
        "shared",
        vec![event(
            PLACED,
            "OrderPlaced",
            "order",
            None,
            json!([
                {
                    "service": "inventory", "subscription": "reserve-stock",
                    "state": "retrying", "attempts": 2, "max_attempts": 5,
                    "last_status": 503, "last_error": "the app answered 503",
                    "next_attempt_at": "2026-12-07T12:00:03.250000Z"
                },
                {
                    "service": "payment", "subscription": "charge", "state": "retrying",
                    "attempts": 1, "max_attempts": 5,
                    "last_error": "timed out after 10000 ms",
                    "next_attempt_at": "2026-12-07T12:00:02Z"
                },
                {
                    "service": "shipping", "subscription": "ship", "state": "pending",
                    "since": "2026-12-07T12:00:00.130000Z"
                },
                {
                    "service": "shipping", "subscription": "ship-late", "state": "pending",
                    "since": "2026-12-07T12:05:00.000Z",
                    "replayed_at": "2026-12-07T12:05:00.000Z"
                },
                {
                    "service": "audit", "subscription": "log", "state": "duplicate_skipped",
                    "skipped_at": "2026-12-07T12:00:01.5Z"
                }
            ]),
        )],
    );
    let out = render(&in_progress);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[2],
        "  → inventory/reserve-stock  retrying           attempt 2 of 5, last 503, next at 12:00:03"
    );
    assert_eq!(
        lines[3],
        "  → payment/charge           retrying           attempt 1 of 5, last: timed out after 10000 ms, next at 12:00:02"
    );
    assert_eq!(
        lines[4],
        "  → shipping/ship            pending            since 12:00:00"
    );
    assert_eq!(
        lines[5],
        "  → shipping/ship-late       pending            replayed at 12:05:00"
    );
    assert_eq!(
        lines[6],
        "  → audit/log                duplicate_skipped  at 12:00:01"
    );
    assert_eq!(Verdict::of(&in_progress), Verdict::InProgress);
}

#[test]
fn a_local_flow_says_so_and_shows_events_without_hops() {
    let local = flow(
        "in_progress",
        "local",
        vec![
            event(PLACED, "OrderPlaced", "order", None, json!([])),
            event(
                RESERVED,
                "StockReserved",
                "inventory",
                Some(PLACED),
                json!([{"service": "inventory", "subscription": "audit", "state": "pending"}]),
            ),
        ],
    );
    let expected = "\
order-1001  in_progress  scope: local
OrderPlaced v1.0 (order) 0193abcd…0001 at 12:00:00.123
└─ StockReserved v1.0 (inventory) 0193abcd…0002 at 12:00:00.123
     → inventory/audit  pending
";
    assert_eq!(render(&local), expected);
}

#[test]
fn an_unrouted_event_is_marked() {
    let mut unrouted = event(PLACED, "OrderPlaced", "order", None, json!([]));
    unrouted["unrouted"] = json!(true);
    let out = render(&flow("settled", "shared", vec![unrouted]));
    assert_eq!(
        out.lines().nth(1),
        Some("OrderPlaced v1.0 (order) 0193abcd…0001 at 12:00:00.123  (unrouted: no subscription)")
    );
}

#[test]
fn causation_nests_three_deep_with_rails_for_open_branches() {
    let nested = flow(
        "settled",
        "shared",
        vec![
            event(PLACED, "OrderPlaced", "order", None, json!([])),
            event(
                RESERVED,
                "StockReserved",
                "inventory",
                Some(PLACED),
                json!([]),
            ),
            event(
                CHARGED,
                "PaymentTaken",
                "payment",
                Some(RESERVED),
                json!([]),
            ),
            event(
                SHIPPED,
                "OrderShipped",
                "shipping",
                Some(CHARGED),
                json!([delivered("mail", "notify")]),
            ),
            event(
                "0193abcd-5d2e-7b8f-9a1c-2e3f4a5b0005",
                "OrderAudited",
                "audit",
                Some(PLACED),
                json!([]),
            ),
        ],
    );
    let expected = "\
order-1001  settled  scope: shared
OrderPlaced v1.0 (order) 0193abcd…0001 at 12:00:00.123
├─ StockReserved v1.0 (inventory) 0193abcd…0002 at 12:00:00.123
│  └─ PaymentTaken v1.0 (payment) 0193abcd…0003 at 12:00:00.123
│     └─ OrderShipped v1.0 (shipping) 0193abcd…0004 at 12:00:00.123
│          → mail/notify  delivered  in 4 ms after 1 attempt
└─ OrderAudited v1.0 (audit) 0193abcd…0005 at 12:00:00.123
";
    assert_eq!(render(&nested), expected);
}

#[test]
fn an_event_whose_parent_is_not_in_the_flow_is_a_root() {
    let orphaned = flow(
        "settled",
        "local",
        vec![
            event(PLACED, "OrderPlaced", "order", None, json!([])),
            event(
                RESERVED,
                "StockReserved",
                "inventory",
                Some("elsewhere"),
                json!([]),
            ),
            event(
                CHARGED,
                "PaymentTaken",
                "payment",
                Some(RESERVED),
                json!([]),
            ),
        ],
    );
    let expected = "\
order-1001  settled  scope: local
OrderPlaced v1.0 (order) 0193abcd…0001 at 12:00:00.123
StockReserved v1.0 (inventory) 0193abcd…0002 at 12:00:00.123
└─ PaymentTaken v1.0 (payment) 0193abcd…0003 at 12:00:00.123
";
    assert_eq!(render(&orphaned), expected);
}

#[test]
fn a_causation_loop_is_drawn_once_per_event() {
    let looped = flow(
        "in_progress",
        "shared",
        vec![
            event(PLACED, "OrderPlaced", "order", Some(RESERVED), json!([])),
            event(
                RESERVED,
                "StockReserved",
                "inventory",
                Some(PLACED),
                json!([]),
            ),
            event(CHARGED, "PaymentTaken", "payment", Some(CHARGED), json!([])),
        ],
    );
    let expected = "\
order-1001  in_progress  scope: shared
PaymentTaken v1.0 (payment) 0193abcd…0003 at 12:00:00.123
OrderPlaced v1.0 (order) 0193abcd…0001 at 12:00:00.123
└─ StockReserved v1.0 (inventory) 0193abcd…0002 at 12:00:00.123
";
    assert_eq!(render(&looped), expected);
}

#[test]
fn fields_added_or_left_out_do_not_break_the_tree() {
    let odd = json!({
        "correlation_id": "order-1001",
        "state": "someday",
        "new_field": {"nested": [1, 2]},
        "events": [
            {"event_id": "e-1", "hops": [{"state": "teleported", "extra": true}]},
            {"event_id": 7, "event_type": "Odd", "causation_id": 7, "hops": "not a list"}
        ],
        "truncated": true
    });
    let expected = "\
order-1001  someday
? e-1
  → ?/?  teleported
Odd ?
(truncated: the flow has more receipts than the sidecar keeps for one)
";
    assert_eq!(render(&odd), expected);
    assert_eq!(render(&Value::Null), "?  ?\n");
    assert_eq!(Verdict::of(&odd), Verdict::InProgress);
}

#[test]
fn a_definition_outcome_decides_the_verdict() {
    let verdict = |state: &str, outcome: Option<&str>| {
        let mut answer = flow(state, "shared", vec![]);
        if let Some(outcome) = outcome {
            answer["definition"] = json!({"name": "order", "outcome": outcome});
        }
        Verdict::of(&answer)
    };
    assert_eq!(verdict("settled", None), Verdict::Settled);
    assert_eq!(verdict("in_progress", None), Verdict::InProgress);
    assert_eq!(verdict("stuck", None), Verdict::Stuck);
    assert_eq!(verdict("in_progress", Some("complete")), Verdict::Settled);
    assert_eq!(verdict("settled", Some("complete")), Verdict::Settled);
    assert_eq!(verdict("settled", Some("in_progress")), Verdict::InProgress);
    assert_eq!(verdict("settled", Some("late")), Verdict::Stuck);
    assert_eq!(verdict("in_progress", Some("failed")), Verdict::Stuck);
    assert_eq!(verdict("stuck", Some("complete")), Verdict::Stuck);
}

#[test]
fn json_output_is_the_answer_as_is() {
    let answer = flow("settled", "shared", vec![]);
    let printed = format(&answer, Output::Json);
    assert_eq!(serde_json::from_str::<Value>(&printed).unwrap(), answer);
    assert!(printed.ends_with("}\n"));
}

#[test]
fn times_show_the_time_of_day() {
    assert_eq!(clock("2026-12-07T12:00:00.123456Z", true), "12:00:00.123");
    assert_eq!(clock("2026-12-07T12:00:00.1Z", true), "12:00:00.100");
    assert_eq!(clock("2026-12-07T12:00:00Z", true), "12:00:00");
    assert_eq!(clock("2026-12-07T12:00:03.999Z", false), "12:00:03");
    assert_eq!(clock("2026-12-07T12:00:00.5+01:00", true), "12:00:00.500");
    assert_eq!(clock("2026-12-07T12:00:00-05:00", false), "12:00:00");
    assert_eq!(clock("yesterday", false), "yesterday");
}

#[test]
fn ids_are_shortened_and_path_segments_encoded() {
    assert_eq!(
        short_id("0193abcd-5d2e-7b8f-9a1c-2e3f4a5b6c7d"),
        "0193abcd…6c7d"
    );
    assert_eq!(short_id("e-1"), "e-1");
    assert_eq!(path_segment("order-1001_a.b~c"), "order-1001_a.b~c");
    assert_eq!(path_segment("a/b c?d#e%f"), "a%2Fb%20c%3Fd%23e%25f");
}
