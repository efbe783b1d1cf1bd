//! Flows across real sidecars sharing the local Redis: every hop of a flow with its state
//! while it runs, stuck flows with their reason, flow definitions, replay, and bad input.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{Broker, Settings, Sidecar, app::TestApp, unique};
use serde_json::{Value, json};

const REDIS_URL: &str = "redis://127.0.0.1:6379/";
const WITHIN: Duration = Duration::from_secs(20);

/// A sidecar sharing Redis (and, when `of` is given, the exchange of `of`), with `toml` as
/// its config file.
fn sidecar(of: Option<&Sidecar>, app: &TestApp, toml: &str) -> Sidecar {
    let mut settings = Settings::new()
        .app(&app.url)
        .set("CAUSEWAY_DEDUP_URL", REDIS_URL)
        .config_file(toml);
    if let Some(first) = of {
        settings = settings
            .set("CAUSEWAY_EXCHANGE", first.exchange())
            .set("CAUSEWAY_UNROUTED_QUEUE", first.unrouted());
    }
    settings.start()
}

fn subscription(name: &str, event_type: &str, route: &str, extra: &str) -> String {
    format!(
        "[[subscriptions]]\nname = \"{name}\"\nevent_type = \"{event_type}\"\nroute = \"{route}\"\n{extra}\n"
    )
}

/// Polls the flow until `done` holds; the flow then. Fails with the last answer.
async fn wait_flow(
    sidecar: &Sidecar,
    correlation_id: &str,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + WITHIN;
    loop {
        let answer = sidecar
            .call("GET", &format!("/v1/flows/{correlation_id}"), None)
            .await;
        if answer.status == 200 && done(&answer.body) {
            return answer.body;
        }
        assert!(
            Instant::now() < deadline,
            "the flow never showed {what}: {} {:#}",
            answer.status,
            answer.body
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The hop `service/subscription` of the event of type `event_type`.
fn hop<'a>(flow: &'a Value, event_type: &str, hop: &str) -> Option<&'a Value> {
    flow["events"]
        .as_array()?
        .iter()
        .find(|e| e["event_type"] == event_type)?["hops"]
        .as_array()?
        .iter()
        .find(|h| {
            format!(
                "{}/{}",
                h["service"].as_str().unwrap(),
                h["subscription"].as_str().unwrap()
            ) == hop
        })
}

fn hop_state<'a>(flow: &'a Value, event_type: &str, name: &str) -> &'a str {
    hop(flow, event_type, name)
        .and_then(|h| h["state"].as_str())
        .unwrap_or("absent")
}

#[tokio::test]
async fn a_three_service_flow_shows_every_hop_while_it_runs_then_settles() {
    let (order_app, inventory_app, payment_app) = (
        TestApp::start().await,
        TestApp::start().await,
        TestApp::start().await,
    );
    let order = sidecar(None, &order_app, "");
    let inventory = sidecar(
        Some(&order),
        &inventory_app,
        &subscription("reserve", "OrderPlaced", "/order-placed", ""),
    );
    let payment = sidecar(
        Some(&order),
        &payment_app,
        &subscription(
            "charge",
            "StockReserved",
            "/stock-reserved",
            "backoff_initial_ms = 100\nbackoff_max_ms = 3000",
        ),
    );
    for sidecar in [&order, &inventory, &payment] {
        sidecar.wait_ready().await;
    }
    // Inventory is slow and reacts with StockReserved; payment fails once, asking for 2 s.
    inventory_app.delay("/order-placed", Duration::from_secs(2));
    inventory_app.react("/order-placed", &inventory.api, "StockReserved");
    payment_app.respond("/stock-reserved", &[503]);
    payment_app.answer_header("/stock-reserved", "Retry-After", "2");
    let correlation_id = unique("order");
    let reserve = format!("{}/reserve", inventory.service());
    let charge = format!("{}/charge", payment.service());

    let placed = order
        .publish(
            "OrderPlaced",
            r#"{"order":1001}"#,
            &[("X-Correlation-ID", &correlation_id)],
        )
        .await;
    assert_eq!(placed.status, 202, "{placed:?}");

    // Asked of the order sidecar, which delivered nothing: the shared store answers.
    let flow = wait_flow(&order, &correlation_id, "a pending hop", |f| {
        hop_state(f, "OrderPlaced", &reserve) == "pending"
    })
    .await;
    assert_eq!(flow["scope"], "shared");
    assert_eq!(flow["state"], "in_progress");
    assert_eq!(flow["events"][0]["source"], order.service());
    assert_eq!(flow["events"][0]["event_id"], placed.body["event_id"]);
    assert!(hop(&flow, "OrderPlaced", &reserve).unwrap()["since"].is_string());

    // The inventory app publishes StockReserved before it answers, so payment's failure may
    // be written down before inventory's delivery: wait for both. The retry waits 2 s.
    wait_flow(&order, &correlation_id, "a retrying hop", |f| {
        hop_state(f, "StockReserved", &charge) == "retrying"
    })
    .await;
    let flow = wait_flow(&order, &correlation_id, "the first hop delivered", |f| {
        hop_state(f, "OrderPlaced", &reserve) == "delivered"
            && hop_state(f, "StockReserved", &charge) == "retrying"
    })
    .await;
    let retrying = hop(&flow, "StockReserved", &charge).unwrap();
    assert_eq!(retrying["attempts"], 1);
    assert_eq!(retrying["max_attempts"], 5);
    assert_eq!(retrying["last_status"], 503);
    assert_eq!(retrying["last_error"], "the app answered 503");
    assert!(retrying["next_attempt_at"].is_string(), "{retrying}");
    assert_eq!(flow["state"], "in_progress");

    let flow = wait_flow(&order, &correlation_id, "a settled flow", |f| {
        f["state"] == "settled"
    })
    .await;
    // Parents come before children, and the child names its parent.
    let events = flow["events"].as_array().unwrap();
    assert_eq!(events.len(), 2, "{flow:#}");
    assert_eq!(events[0]["event_type"], "OrderPlaced");
    assert_eq!(events[1]["event_type"], "StockReserved");
    assert_eq!(events[1]["causation_id"], events[0]["event_id"]);
    assert_eq!(events[1]["source"], inventory.service());
    let reserved = hop(&flow, "OrderPlaced", &reserve).unwrap();
    assert_eq!(reserved["attempts"], 1);
    assert!(reserved["took_ms"].as_u64().unwrap() >= 2000, "{reserved}");
    let charged = hop(&flow, "StockReserved", &charge).unwrap();
    assert_eq!(
        (charged["state"].as_str(), charged["attempts"].as_u64()),
        (Some("delivered"), Some(2))
    );
    // The same answer from any sidecar sharing the store, and by event id.
    let by_event = payment
        .call(
            "GET",
            &format!(
                "/v1/flows?event_id={}",
                placed.body["event_id"].as_str().unwrap()
            ),
            None,
        )
        .await;
    assert_eq!(by_event.status, 200);
    assert_eq!(by_event.body["correlation_id"], correlation_id.as_str());
    assert_eq!(by_event.body["state"], "settled");
    // Receipts hold ids, types, states and timings, never payloads.
    assert!(!flow.to_string().contains("1001"), "{flow}");

    let broker = Broker::connect().await;
    inventory.cleanup_subscription(&broker, "reserve").await;
    payment.cleanup_subscription(&broker, "charge").await;
    order.cleanup(&broker).await;
}

#[tokio::test]
async fn a_rejected_hop_makes_the_flow_stuck_and_a_replay_after_the_fix_settles_it() {
    let (order_app, inventory_app) = (TestApp::start().await, TestApp::start().await);
    let definition = "[[flows]]\nname = \"order\"\nstarts_with = \"OrderPlaced\"\ncompletes_on = [\"StockReserved\"]\nwithin = \"5m\"\n";
    let order = sidecar(None, &order_app, definition);
    let inventory = sidecar(
        Some(&order),
        &inventory_app,
        &subscription("reserve", "OrderPlaced", "/order-placed", ""),
    );
    order.wait_ready().await;
    inventory.wait_ready().await;
    inventory_app.always("/order-placed", 422);
    let correlation_id = unique("order");
    let reserve = format!("{}/reserve", inventory.service());

    let placed = order
        .publish(
            "OrderPlaced",
            "{}",
            &[("X-Correlation-ID", &correlation_id)],
        )
        .await;
    assert_eq!(placed.status, 202);
    let flow = wait_flow(&order, &correlation_id, "a stuck flow", |f| {
        f["state"] == "stuck"
    })
    .await;
    let dead = hop(&flow, "OrderPlaced", &reserve).unwrap();
    assert_eq!(dead["state"], "dead_lettered");
    assert_eq!(dead["reason"], "rejected");
    assert_eq!(dead["last_status"], 422);
    assert_eq!(
        dead["dead_letter_queue"],
        format!("{}.reserve.dlq", inventory.service())
    );
    let reason = flow["reason"].as_str().unwrap();
    assert!(
        reason.starts_with(&format!("{reserve} dead-lettered OrderPlaced ")),
        "{reason}"
    );
    assert!(
        reason.ends_with("(rejected): the app answered 422"),
        "{reason}"
    );
    assert_eq!(flow["definition"]["name"], "order");
    assert_eq!(flow["definition"]["outcome"], "failed");

    // Fix the app, then replay exactly this flow's dead letters.
    inventory_app.always("/order-placed", 200);
    inventory_app.react("/order-placed", &inventory.api, "StockReserved");
    let replayed = inventory
        .call(
            "POST",
            "/v1/subscriptions/reserve/dead-letters/replay",
            Some(json!({ "correlation_id": correlation_id })),
        )
        .await;
    assert_eq!(replayed.status, 200, "{replayed:?}");
    assert_eq!(replayed.body["replayed"], 1);
    let flow = wait_flow(&order, &correlation_id, "a settled flow", |f| {
        f["state"] == "settled" && f["events"].as_array().unwrap().len() == 2
    })
    .await;
    assert_eq!(flow["definition"]["outcome"], "complete");
    let delivered = hop(&flow, "OrderPlaced", &reserve).unwrap();
    assert_eq!(delivered["state"], "delivered");

    let broker = Broker::connect().await;
    inventory.cleanup_subscription(&broker, "reserve").await;
    order.cleanup(&broker).await;
}

#[tokio::test]
async fn a_flow_definition_says_complete_failed_in_progress_or_late() {
    let app = TestApp::start().await;
    let definition = "[[flows]]\nname = \"order\"\nstarts_with = \"OrderPlaced\"\ncompletes_on = [\"OrderShipped\"]\nfails_on = [\"PaymentFailed\"]\nwithin = \"3s\"\n";
    let order = sidecar(None, &app, definition);
    order.wait_ready().await;
    let publish = |event_type: &'static str, correlation_id: String, causation: Option<String>| {
        let order = &order;
        async move {
            let mut headers = vec![("X-Correlation-ID", correlation_id.as_str())];
            if let Some(causation) = &causation {
                headers.push(("X-Causation-ID", causation.as_str()));
            }
            let answer = order.publish(event_type, "{}", &headers).await;
            assert_eq!(answer.status, 202, "{answer:?}");
            answer.body["event_id"].as_str().unwrap().to_owned()
        }
    };
    let (complete, failed, late) = (unique("order"), unique("order"), unique("order"));
    let first = publish("OrderPlaced", complete.clone(), None).await;
    publish("OrderShipped", complete.clone(), Some(first)).await;
    let first = publish("OrderPlaced", failed.clone(), None).await;
    publish("PaymentFailed", failed.clone(), Some(first)).await;
    publish("OrderPlaced", late.clone(), None).await;

    let outcome = |flow: &Value| {
        flow["definition"]["outcome"]
            .as_str()
            .unwrap_or("none")
            .to_owned()
    };
    let flow = wait_flow(&order, &complete, "two events", |f| {
        f["events"].as_array().unwrap().len() == 2
    })
    .await;
    assert_eq!(outcome(&flow), "complete");
    assert_eq!(
        flow["definition"]["reason"]
            .as_str()
            .unwrap()
            .split(' ')
            .next(),
        Some("OrderShipped")
    );
    // Nobody subscribes: the events are unrouted and nobody waits for them.
    assert_eq!(flow["events"][0]["unrouted"], true);
    assert_eq!(flow["state"], "settled");
    let flow = wait_flow(&order, &failed, "two events", |f| {
        f["events"].as_array().unwrap().len() == 2
    })
    .await;
    assert_eq!(outcome(&flow), "failed");
    let flow = wait_flow(&order, &late, "one event", |f| {
        f["events"].as_array().unwrap().len() == 1
    })
    .await;
    assert_eq!(outcome(&flow), "in_progress", "{flow:#}");
    assert!(flow["definition"]["deadline"].is_string());
    let flow = wait_flow(&order, &late, "a late flow", |f| {
        f["definition"]["outcome"] == "late"
    })
    .await;
    assert_eq!(flow["definition"]["reason"], "not complete within 3s");

    // The latest flows, newest first.
    let listed = order.call("GET", "/v1/flows?limit=100", None).await;
    assert_eq!(listed.status, 200);
    assert_eq!(listed.body["scope"], "shared");
    let ids: Vec<&str> = listed.body["flows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["correlation_id"].as_str().unwrap())
        .collect();
    for id in [&complete, &failed, &late] {
        assert!(ids.contains(&id.as_str()), "{id} missing from {ids:?}");
    }
    let broker = Broker::connect().await;
    order.cleanup(&broker).await;
}

#[tokio::test]
async fn without_redis_a_sidecar_answers_for_its_own_hops() {
    let app = TestApp::start().await;
    let local = Settings::new()
        .app(&app.url)
        .config_file(&subscription("mine", "OrderPlaced", "/order-placed", ""))
        .start();
    local.wait_ready().await;
    let correlation_id = unique("order");
    let placed = local
        .publish(
            "OrderPlaced",
            "{}",
            &[("X-Correlation-ID", &correlation_id)],
        )
        .await;
    assert_eq!(placed.status, 202);
    let mine = format!("{}/mine", local.service());
    let flow = wait_flow(&local, &correlation_id, "a settled flow", |f| {
        f["state"] == "settled"
    })
    .await;
    assert_eq!(flow["scope"], "local");
    assert_eq!(hop_state(&flow, "OrderPlaced", &mine), "delivered");
    assert_eq!(
        flow["events"][0]["unrouted"], false,
        "unknown in the local scope"
    );
    let unknown = local.call("GET", "/v1/flows/nobody-knows", None).await;
    assert_eq!(unknown.status, 404);
    assert!(
        unknown.body["detail"]
            .as_str()
            .unwrap()
            .contains("CAUSEWAY_DEDUP_URL"),
        "{unknown:?}"
    );
    let broker = Broker::connect().await;
    local.cleanup_subscription(&broker, "mine").await;
    local.cleanup(&broker).await;
}

#[tokio::test]
async fn bad_flow_requests_get_problems_naming_what_is_wrong() {
    let app = TestApp::start().await;
    let sidecar = sidecar(None, &app, "");
    sidecar.wait_ready().await;
    let cases = [
        (
            format!("/v1/flows/{}", "x".repeat(129)),
            400,
            "urn:causeway:problem:invalid-correlation-id",
        ),
        (
            "/v1/flows/%01ab".to_owned(),
            400,
            "urn:causeway:problem:invalid-correlation-id",
        ),
        (
            format!("/v1/flows/{}", unique("never")),
            404,
            "urn:causeway:problem:flow-not-found",
        ),
        (
            "/v1/flows?event_id=not-a-uuid".to_owned(),
            400,
            "urn:causeway:problem:bad-request",
        ),
        (
            format!("/v1/flows?event_id={}", uuid::Uuid::now_v7()),
            404,
            "urn:causeway:problem:flow-not-found",
        ),
        (
            "/v1/flows?limit=0".to_owned(),
            400,
            "urn:causeway:problem:bad-request",
        ),
        (
            "/v1/flows?limit=101".to_owned(),
            400,
            "urn:causeway:problem:bad-request",
        ),
        (
            "/v1/flows?colour=red".to_owned(),
            400,
            "urn:causeway:problem:bad-request",
        ),
    ];
    for (path, status, kind) in cases {
        let answer = sidecar.call("GET", &path, None).await;
        assert_eq!(answer.status, status, "{path}: {answer:?}");
        assert_eq!(answer.body["type"], kind, "{path}: {answer:?}");
    }
    let broker = Broker::connect().await;
    sidecar.cleanup(&broker).await;
}
