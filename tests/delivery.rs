//! Subscriptions and delivery against the real broker, a real app on loopback, and the real
//! binary: headers, deduplication, retries, dead letters and their operations.
#![allow(clippy::unwrap_used)]

mod common;

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use common::{Broker, Settings, Sidecar, app::TestApp};
use lapin::{BasicProperties, types::ShortString};
use serde_json::{Value, json};

const ARRIVES: Duration = Duration::from_secs(15);

/// A sidecar whose config file subscribes `name` to `event_type` on `route`, with `extra`
/// TOML lines.
async fn subscribed(
    app: &TestApp,
    name: &str,
    event_type: &str,
    route: &str,
    extra: &str,
) -> Sidecar {
    let toml = format!(
        "[[subscriptions]]\nname = \"{name}\"\nevent_type = \"{event_type}\"\nroute = \"{route}\"\n{extra}\n"
    );
    let sidecar = Settings::new().app(&app.url).config_file(&toml).start();
    sidecar.wait_ready().await;
    sidecar
}

#[tokio::test]
async fn a_delivery_carries_the_envelope_and_every_header() {
    let app = TestApp::start().await;
    let sidecar = subscribed(&app, "on-order", "OrderPlaced", "/events/order-placed", "").await;
    let broker = Broker::connect().await;
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    let published = sidecar
        .publish(
            "OrderPlaced",
            r#"{"order_id":"o-1"}"#,
            &[
                ("X-Correlation-ID", "flow-7"),
                ("X-Causation-ID", "cause-1"),
                ("X-Schema-Version", "2.3"),
                ("traceparent", traceparent),
                ("tracestate", "k=v"),
            ],
        )
        .await;
    assert_eq!(published.status, 202, "{published:?}");

    let received = app.wait_for("/events/order-placed", 1, ARRIVES).await;
    let delivery = &received[0];
    let event_id = published.body["event_id"].as_str().unwrap();
    assert_eq!(delivery.header("x-event-id"), Some(event_id));
    assert_eq!(delivery.header("x-event-type"), Some("OrderPlaced"));
    assert_eq!(delivery.header("x-schema-version"), Some("2.3"));
    assert_eq!(delivery.header("x-correlation-id"), Some("flow-7"));
    assert_eq!(delivery.header("x-causation-id"), Some("cause-1"));
    assert_eq!(delivery.header("x-delivery-attempt"), Some("1"));
    // The same trace, continued by the sidecar's spans (a new span id).
    let received_trace = delivery.header("traceparent").unwrap();
    assert!(
        received_trace.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "{received_trace}"
    );
    assert_ne!(received_trace, traceparent);
    assert_eq!(delivery.header("tracestate"), Some("k=v"));
    assert_eq!(delivery.header("content-type"), Some("application/json"));
    assert_eq!(delivery.body["event_id"], event_id);
    assert_eq!(delivery.body["payload"], json!({"order_id": "o-1"}));
    assert_eq!(delivery.body["source"], sidecar.service());

    let subscriptions = sidecar.call("GET", "/v1/subscriptions", None).await;
    let listed = &subscriptions.body["subscriptions"][0];
    assert_eq!(listed["name"], "on-order");
    assert_eq!(listed["origin"], "config");
    assert_eq!(listed["state"], "consuming");
    assert_eq!(listed["queue"], sidecar.queue("on-order"));

    sidecar.cleanup_subscription(&broker, "on-order").await;
    sidecar.cleanup(&broker).await;
}

#[tokio::test]
async fn a_duplicate_injected_into_the_queue_is_posted_once() {
    let app = TestApp::start().await;
    // The first POST is still in flight when the copies arrive: they must wait their turn.
    app.delay("/dup", Duration::from_millis(700));
    let sidecar = subscribed(&app, "dup", "OrderPlaced", "/dup", "").await;
    let broker = Broker::connect().await;
    let published = sidecar
        .publish(
            "OrderPlaced",
            r#"{"n":1}"#,
            &[("X-Correlation-ID", "flow-dup")],
        )
        .await;
    let first = app.wait_for("/dup", 1, ARRIVES).await;
    let envelope = serde_json::to_vec(&first[0].body).unwrap();
    let event_id = published.body["event_id"].as_str().unwrap();

    // The same event twice more, straight into the subscription's queue.
    for _ in 0..2 {
        let properties = BasicProperties::default().with_message_id(ShortString::from(event_id));
        broker
            .inject(&sidecar.queue("dup"), &envelope, properties)
            .await;
    }
    let deadline = Instant::now() + ARRIVES;
    let skips = || {
        sidecar
            .logs()
            .iter()
            .filter(|l| l.contains("duplicate_event_skipped"))
            .count()
    };
    while skips() < 2 {
        assert!(Instant::now() < deadline, "the copies were not skipped");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let skipped = sidecar
        .wait_for_log("duplicate_event_skipped", ARRIVES)
        .await;
    // The count of POSTs of the event is final now: a copy is skipped only once the first
    // delivery was recorded (which comes before its ack), and each of the two skip lines is
    // one injected copy acked without a POST, so no copy of the event is left anywhere.
    // A later event proves the queue still flows.
    sidecar.publish("OrderPlaced", r#"{"n":2}"#, &[]).await;
    app.wait_for("/dup", 2, ARRIVES).await;

    let posts_of_event = app
        .received("/dup")
        .iter()
        .filter(|r| r.event_id() == event_id)
        .count();
    assert_eq!(posts_of_event, 1);
    assert_eq!(skipped["event_id"], event_id);
    assert_eq!(skipped["correlation_id"], "flow-dup");
    assert_eq!(skips(), 2);

    sidecar.cleanup_subscription(&broker, "dup").await;
    sidecar.cleanup(&broker).await;
}

#[tokio::test]
async fn a_500_then_200_is_delivered_at_attempt_2_after_a_backoff() {
    let app = TestApp::start().await;
    app.respond("/flaky", &[500]);
    let sidecar = subscribed(
        &app,
        "flaky",
        "PaymentTaken",
        "/flaky",
        "backoff_initial_ms = 400\nbackoff_max_ms = 2000\nconcurrency = 1",
    )
    .await;
    let broker = Broker::connect().await;

    let published = sidecar.publish("PaymentTaken", "{}", &[]).await;
    let event_id = published.body["event_id"].as_str().unwrap();
    let received = app.wait_for("/flaky", 2, ARRIVES).await;

    assert_eq!(received[0].header("x-delivery-attempt"), Some("1"));
    assert_eq!(received[1].header("x-delivery-attempt"), Some("2"));
    assert_eq!(received[0].event_id(), received[1].event_id());
    let retry = sidecar
        .wait_for_log("delivery failed; will retry", ARRIVES)
        .await;
    let delay = Duration::from_millis(retry["delay_ms"].as_u64().unwrap());
    assert!(delay <= Duration::from_millis(400), "{retry}");
    let gap = received[1].at - received[0].at;
    assert!(
        gap + Duration::from_millis(20) >= delay,
        "retried after {gap:?}, before its delay {delay:?}"
    );
    // After the marker, no more POSTs of the event can come (see `common::marker`).
    common::marker(&sidecar, &broker, &app, "flaky", "PaymentTaken", "/flaky").await;
    let posts = app
        .received("/flaky")
        .iter()
        .filter(|r| r.event_id() == event_id)
        .count();
    assert_eq!(posts, 2, "delivered again after success");
    assert_eq!(sidecar.dead_letters("flaky").await["total"], 0);

    sidecar.cleanup_subscription(&broker, "flaky").await;
    sidecar.cleanup(&broker).await;
}

#[tokio::test]
async fn a_422_goes_to_the_dead_letter_queue_at_once_with_its_reason() {
    let app = TestApp::start().await;
    app.always("/reject", 422);
    let sidecar = subscribed(&app, "reject", "StockReserved", "/reject", "").await;
    let broker = Broker::connect().await;

    let published = sidecar
        .publish(
            "StockReserved",
            r#"{"sku":"unknown"}"#,
            &[("X-Correlation-ID", "flow-422")],
        )
        .await;
    let listed = sidecar.wait_dead_letters("reject", 1, ARRIVES).await;

    assert_eq!(app.received("/reject").len(), 1);
    let letter = &listed["dead_letters"][0];
    assert_eq!(letter["event_id"], published.body["event_id"]);
    assert_eq!(letter["reason"], "rejected");
    assert_eq!(letter["last_status"], 422);
    assert_eq!(letter["attempts"], 1);
    assert_eq!(letter["correlation_id"], "flow-422");
    assert!(letter["last_error"].as_str().unwrap().contains("422"));
    assert!(humantime::parse_rfc3339(letter["dead_lettered_at"].as_str().unwrap()).is_ok());
    assert_eq!(letter["envelope"]["payload"], json!({"sku": "unknown"}));
    let logged = sidecar.wait_for_log("event dead-lettered", ARRIVES).await;
    assert_eq!(logged["reason"], "rejected");
    assert_eq!(logged["correlation_id"], "flow-422");

    sidecar.cleanup_subscription(&broker, "reject").await;
    sidecar.cleanup(&broker).await;
}

#[tokio::test]
async fn an_app_that_always_fails_gets_exactly_max_attempts_posts_then_a_dead_letter() {
    let app = TestApp::start().await;
    app.always("/down", 503);
    let sidecar = subscribed(
        &app,
        "down",
        "PaymentTaken",
        "/down",
        "max_attempts = 3\nbackoff_initial_ms = 50\nbackoff_max_ms = 200\nconcurrency = 1",
    )
    .await;
    let broker = Broker::connect().await;

    let published = sidecar.publish("PaymentTaken", "{}", &[]).await;
    let event_id = published.body["event_id"].as_str().unwrap();
    let listed = sidecar.wait_dead_letters("down", 1, ARRIVES).await;
    // The app comes back, so that a marker goes through; after it, no more POSTs of the
    // event can come (see `common::marker`).
    app.always("/down", 200);
    common::marker(&sidecar, &broker, &app, "down", "PaymentTaken", "/down").await;

    let attempts: Vec<_> = app
        .received("/down")
        .iter()
        .filter(|r| r.event_id() == event_id)
        .map(|r| r.header("x-delivery-attempt").unwrap().to_owned())
        .collect();
    assert_eq!(attempts, ["1", "2", "3"]);
    let letter = &listed["dead_letters"][0];
    assert_eq!(letter["reason"], "max-attempts");
    assert_eq!(letter["attempts"], 3);
    assert_eq!(letter["last_status"], 503);

    sidecar.cleanup_subscription(&broker, "down").await;
    sidecar.cleanup(&broker).await;
}

#[tokio::test]
async fn garbage_goes_to_the_dead_letter_queue_and_the_next_event_still_arrives() {
    let app = TestApp::start().await;
    let sidecar = subscribed(&app, "robust", "OrderPlaced", "/robust", "").await;
    let broker = Broker::connect().await;

    broker
        .inject(
            &sidecar.queue("robust"),
            b"\x00\xffnot an envelope",
            BasicProperties::default(),
        )
        .await;
    broker
        .inject(
            &sidecar.queue("robust"),
            br#"{"event_id":"not-a-uuid"}"#,
            BasicProperties::default(),
        )
        .await;
    let published = sidecar.publish("OrderPlaced", "{}", &[]).await;

    let received = app.wait_for("/robust", 1, ARRIVES).await;
    assert_eq!(received[0].body["event_id"], published.body["event_id"]);
    let listed = sidecar.wait_dead_letters("robust", 2, ARRIVES).await;
    for letter in listed["dead_letters"].as_array().unwrap() {
        assert_eq!(letter["reason"], "undecodable");
        assert!(
            letter["last_error"]
                .as_str()
                .unwrap()
                .contains("not a valid envelope")
        );
    }
    // Handled concurrently, so in either order.
    assert!(
        listed["dead_letters"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["body"]
                .as_str()
                .is_some_and(|b| b.contains("not an envelope"))),
        "{listed}"
    );
    assert_eq!(app.received("/robust").len(), 1, "garbage reached the app");

    sidecar.cleanup_subscription(&broker, "robust").await;
    sidecar.cleanup(&broker).await;
}

#[tokio::test]
async fn dead_letters_are_listed_in_order_replayed_and_purged() {
    let app = TestApp::start().await;
    app.always("/ops", 422);
    // One delivery at a time, so that the app sees replays in queue order.
    let sidecar = subscribed(&app, "ops", "OrderPlaced", "/ops", "concurrency = 1").await;
    let broker = Broker::connect().await;
    let mut ids = Vec::new();
    for n in 0..3 {
        let published = sidecar
            .publish("OrderPlaced", &format!("{{\"n\":{n}}}"), &[])
            .await;
        ids.push(published.body["event_id"].as_str().unwrap().to_owned());
        // One at a time, so that the dead-letter order is the publish order.
        sidecar.wait_dead_letters("ops", n + 1, ARRIVES).await;
    }
    let listed_ids = |listed: &Value| -> Vec<String> {
        listed["dead_letters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["event_id"].as_str().unwrap().to_owned())
            .collect()
    };

    // Listing twice loses nothing and keeps the order.
    assert_eq!(listed_ids(&sidecar.dead_letters("ops").await), ids);
    assert_eq!(listed_ids(&sidecar.dead_letters("ops").await), ids);
    let limited = sidecar
        .call("GET", "/v1/subscriptions/ops/dead-letters?limit=2", None)
        .await;
    assert_eq!(limited.body["total"], 3);
    assert_eq!(listed_ids(&limited.body), ids[..2]);

    // The app is fixed: replay one, then the rest.
    app.always("/ops", 200);
    let one = sidecar
        .call(
            "POST",
            "/v1/subscriptions/ops/dead-letters/replay",
            Some(json!({"event_ids": [ids[1], "no-such-event"]})),
        )
        .await;
    assert_eq!(one.status, 200, "{one:?}");
    assert_eq!(
        one.body,
        json!({"replayed": 1, "not_found": ["no-such-event"]})
    );
    let received = app.wait_for("/ops", 4, ARRIVES).await;
    assert_eq!(received[3].event_id(), ids[1]);
    assert_eq!(
        received[3].header("x-delivery-attempt"),
        Some("1"),
        "attempts reset"
    );
    assert_eq!(
        listed_ids(&sidecar.dead_letters("ops").await),
        [ids[0].clone(), ids[2].clone()]
    );

    let rest = sidecar
        .call("POST", "/v1/subscriptions/ops/dead-letters/replay", None)
        .await;
    assert_eq!(rest.body["replayed"], 2);
    let received = app.wait_for("/ops", 6, ARRIVES).await;
    let replayed: Vec<String> = received[4..].iter().map(|r| r.event_id()).collect();
    assert_eq!(
        replayed,
        [ids[0].clone(), ids[2].clone()],
        "replay keeps the order"
    );
    assert_eq!(sidecar.dead_letters("ops").await["total"], 0);

    // Purge.
    app.always("/ops", 422);
    sidecar.publish("OrderPlaced", "{}", &[]).await;
    sidecar.wait_dead_letters("ops", 1, ARRIVES).await;
    let purged = sidecar
        .call("DELETE", "/v1/subscriptions/ops/dead-letters", None)
        .await;
    assert_eq!(purged.body, json!({"purged": 1}));
    assert_eq!(sidecar.dead_letters("ops").await["total"], 0);

    let unknown = sidecar
        .call("GET", "/v1/subscriptions/nope/dead-letters", None)
        .await;
    assert_eq!(unknown.status, 404);
    let errors = sidecar.error_lines();
    assert!(
        errors.is_empty(),
        "routine operations logged errors: {errors:#?}"
    );

    sidecar.cleanup_subscription(&broker, "ops").await;
    sidecar.cleanup(&broker).await;
}

#[tokio::test]
async fn an_event_published_in_reaction_inherits_the_correlation_id() {
    let app = TestApp::start().await;
    let sidecar = subscribed(&app, "react", "OrderPlaced", "/react", "").await;
    let broker = Broker::connect().await;
    sidecar
        .publish("OrderPlaced", "{}", &[("X-Correlation-ID", "checkout-99")])
        .await;
    let delivered = app.wait_for("/react", 1, ARRIVES).await;
    let cause = delivered[0].event_id();

    // The app only echoes the event id it handled.
    let reaction = sidecar
        .publish("StockReserved", "{}", &[("X-Causation-ID", cause.as_str())])
        .await;
    let unrelated = sidecar
        .publish(
            "StockReserved",
            "{}",
            &[("X-Causation-ID", "not-delivered-here")],
        )
        .await;
    let explicit = sidecar
        .publish(
            "StockReserved",
            "{}",
            &[
                ("X-Causation-ID", cause.as_str()),
                ("X-Correlation-ID", "mine"),
            ],
        )
        .await;

    assert_eq!(reaction.body["correlation_id"], "checkout-99");
    assert_eq!(reaction.body["causation_id"], cause);
    assert_ne!(unrelated.body["correlation_id"], "checkout-99");
    assert_eq!(explicit.body["correlation_id"], "mine");

    sidecar.cleanup_subscription(&broker, "react").await;
    sidecar.cleanup(&broker).await;
}

#[tokio::test]
async fn a_subscription_made_over_the_api_delivers_and_survives_a_restart() {
    let app = TestApp::start().await;
    let settings = Settings::new().app(&app.url).config_file(
        "[[subscriptions]]\nname = \"from-file\"\nevent_type = \"Other\"\nroute = \"/other\"\n",
    );
    let mut sidecar = settings.start();
    sidecar.wait_ready().await;
    let broker = Broker::connect().await;
    let spec = json!({"event_type": "PaymentTaken", "route": "/payments", "versions": [1], "concurrency": 4});

    let created = sidecar
        .call("PUT", "/v1/subscriptions/payments", Some(spec.clone()))
        .await;
    assert_eq!(created.status, 201, "{created:?}");
    assert_eq!(created.body["state"], "consuming");
    assert_eq!(created.body["origin"], "api");
    assert_eq!(created.body["max_attempts"], 5, "defaults filled in");
    let again = sidecar
        .call("PUT", "/v1/subscriptions/payments", Some(spec.clone()))
        .await;
    assert_eq!(again.status, 200, "PUT is idempotent");
    sidecar.publish("PaymentTaken", r#"{"n":1}"#, &[]).await;
    sidecar
        .publish(
            "PaymentTaken",
            r#"{"n":"v2"}"#,
            &[("X-Schema-Version", "2.0")],
        )
        .await;
    app.wait_for("/payments", 1, ARRIVES).await;

    // Bad requests name what is wrong.
    let invalid = sidecar
        .call(
            "PUT",
            "/v1/subscriptions/bad",
            Some(json!({"event_type": "1x", "route": "nope", "max_attempts": 0})),
        )
        .await;
    assert_eq!(invalid.status, 422, "{invalid:?}");
    let fields: Vec<&str> = invalid.body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["event_type", "route", "max_attempts"]);
    let unknown_field = sidecar
        .call(
            "PUT",
            "/v1/subscriptions/bad",
            Some(json!({"event_type": "A", "route": "/a", "retries": 1})),
        )
        .await;
    assert_eq!(unknown_field.status, 422);
    assert!(
        unknown_field.body["detail"]
            .as_str()
            .unwrap()
            .contains("retries")
    );
    let owned = sidecar
        .call(
            "PUT",
            "/v1/subscriptions/from-file",
            Some(json!({"event_type": "A", "route": "/a"})),
        )
        .await;
    assert_eq!(owned.status, 409);

    sidecar.terminate();
    assert!(sidecar.wait_exit(Duration::from_secs(30)).await.success());
    sidecar.settings.keep_data = true;
    let restarted = sidecar.settings.again().start();
    restarted.wait_ready().await;
    let kept = restarted
        .call("GET", "/v1/subscriptions/payments", None)
        .await;
    assert_eq!(kept.status, 200, "{kept:?}");
    assert_eq!(kept.body["origin"], "api");
    assert_eq!(kept.body["concurrency"], 4);
    restarted.publish("PaymentTaken", r#"{"n":2}"#, &[]).await;
    let received = app.wait_for("/payments", 2, ARRIVES).await;
    assert_eq!(received[1].body["payload"], json!({"n": 2}));
    assert!(
        received
            .iter()
            .all(|r| r.header("x-schema-version") == Some("1.0")),
        "a major-2 event reached a major-1 subscription"
    );

    let deleted = restarted
        .call("DELETE", "/v1/subscriptions/payments", None)
        .await;
    assert_eq!(deleted.status, 204);
    assert_eq!(
        restarted
            .call("GET", "/v1/subscriptions/payments", None)
            .await
            .status,
        404
    );
    assert_eq!(
        restarted
            .call("DELETE", "/v1/subscriptions/payments", None)
            .await
            .status,
        404
    );
    assert_eq!(
        restarted
            .call("DELETE", "/v1/subscriptions/from-file", None)
            .await
            .status,
        409
    );

    restarted.cleanup_subscription(&broker, "payments").await;
    restarted.cleanup_subscription(&broker, "from-file").await;
    restarted.cleanup(&broker).await;
    drop(sidecar);
}

#[tokio::test]
async fn after_a_kill_9_during_a_backlog_every_event_arrives_with_few_duplicates() {
    let app = TestApp::start().await;
    app.delay("/backlog", Duration::from_millis(10));
    let concurrency = 4;
    let mut sidecar = subscribed(
        &app,
        "backlog",
        "Tick",
        "/backlog",
        &format!("concurrency = {concurrency}"),
    )
    .await;
    let broker = Broker::connect().await;
    let mut ids = Vec::new();
    for n in 0..300 {
        let published = sidecar
            .publish("Tick", &format!("{{\"n\":{n}}}"), &[])
            .await;
        assert_eq!(published.status, 202);
        ids.push(published.body["event_id"].as_str().unwrap().to_owned());
    }
    app.wait_for("/backlog", 60, ARRIVES).await;

    sidecar.settings.keep_data = true;
    sidecar.kill();
    let restarted = sidecar.settings.again().start();
    restarted.wait_ready().await;

    let deadline = Instant::now() + Duration::from_secs(60);
    let counts = loop {
        let mut counts: HashMap<String, usize> = HashMap::new();
        for received in app.received("/backlog") {
            *counts.entry(received.event_id()).or_default() += 1;
        }
        if ids.iter().all(|id| counts.contains_key(id)) {
            break counts;
        }
        assert!(
            Instant::now() < deadline,
            "{} of 300 events arrived",
            counts.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let duplicates: usize = counts.values().map(|c| c - 1).sum();
    assert!(
        duplicates <= concurrency,
        "{duplicates} duplicates; only the {concurrency} in flight at the kill may repeat"
    );

    restarted.cleanup_subscription(&broker, "backlog").await;
    restarted.cleanup(&broker).await;
    drop(sidecar);
}

#[tokio::test]
async fn two_replicas_sharing_redis_post_a_duplicate_once() {
    let app = TestApp::start().await;
    // Slow answers keep the first copy in flight while the other replica gets the second.
    app.delay("/shared", Duration::from_millis(600));
    let toml =
        "[[subscriptions]]\nname = \"shared\"\nevent_type = \"OrderPlaced\"\nroute = \"/shared\"\n";
    let settings = Settings::new()
        .app(&app.url)
        .set("CAUSEWAY_DEDUP_URL", "redis://127.0.0.1:6379")
        .config_file(toml);
    let mut second_settings = settings.again();
    let second_dir = std::env::temp_dir().join(common::unique("causeway-test-replica"));
    second_settings
        .env
        .insert("CAUSEWAY_DATA_DIR".into(), second_dir.display().to_string());
    std::fs::create_dir_all(&second_dir).unwrap();
    std::fs::write(second_dir.join("causeway.toml"), toml).unwrap();
    second_settings.env.insert(
        "CAUSEWAY_CONFIG".into(),
        second_dir.join("causeway.toml").display().to_string(),
    );
    let first = settings.start();
    let second = second_settings.start();
    first.wait_ready().await;
    second.wait_ready().await;
    let broker = Broker::connect().await;

    let published = first.publish("OrderPlaced", "{}", &[]).await;
    let event_id = published.body["event_id"].as_str().unwrap().to_owned();
    // Wait until the first copy is in flight, then put two more copies in the shared queue:
    // with prefetch spread over both replicas, each replica sees a copy.
    app.wait_for("/shared", 1, ARRIVES).await;
    let delivered = app.received("/shared")[0].body.clone();
    for _ in 0..2 {
        broker
            .inject(
                &first.queue("shared"),
                &serde_json::to_vec(&delivered).unwrap(),
                BasicProperties::default().with_message_id(ShortString::from(event_id.as_str())),
            )
            .await;
    }
    let deadline = Instant::now() + ARRIVES;
    let skipped = || {
        first
            .logs()
            .iter()
            .chain(second.logs().iter())
            .filter(|l| l.contains("duplicate_event_skipped"))
            .count()
    };
    while skipped() < 2 {
        assert!(Instant::now() < deadline, "the copies were not skipped");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let posts: Vec<_> = app
        .received("/shared")
        .into_iter()
        .filter(|r| r.event_id() == event_id)
        .collect();
    assert_eq!(posts.len(), 1);

    first.cleanup_subscription(&broker, "shared").await;
    first.cleanup(&broker).await;
    drop(second);
    let _ = std::fs::remove_dir_all(second_dir);
}

#[tokio::test]
async fn sigterm_lets_a_delivery_in_flight_finish_and_returns_the_rest() {
    let app = TestApp::start().await;
    app.delay("/slow", Duration::from_millis(1500));
    let mut sidecar = subscribed(&app, "slow", "OrderPlaced", "/slow", "concurrency = 1").await;
    let broker = Broker::connect().await;
    for _ in 0..3 {
        sidecar.publish("OrderPlaced", "{}", &[]).await;
    }
    app.wait_for("/slow", 1, ARRIVES).await;

    sidecar.terminate();
    let status = sidecar.wait_exit(Duration::from_secs(20)).await;

    assert!(status.success());
    let (messages, consumers) = broker.queue_state(&sidecar.queue("slow")).await;
    // The one in flight finished and was acked; the two others wait for the next consumer.
    assert_eq!(messages, 2);
    let errors = sidecar.error_lines();
    assert!(
        errors.is_empty(),
        "a clean shutdown logged errors: {errors:#?}"
    );
    assert_eq!(consumers, 0, "the consumer outlived the process");
    assert_eq!(app.received("/slow").len(), 1);

    sidecar.cleanup_subscription(&broker, "slow").await;
    sidecar.cleanup(&broker).await;
}

#[tokio::test]
async fn an_ordered_subscription_delivers_one_at_a_time_in_order_even_through_a_retry() {
    let app = TestApp::start().await;
    app.delay("/ordered", Duration::from_millis(30));
    app.respond("/ordered", &[503]);
    let sidecar = subscribed(
        &app,
        "ordered",
        "Step",
        "/ordered",
        "ordered = true\nconcurrency = 8\nbackoff_initial_ms = 100\nbackoff_max_ms = 200",
    )
    .await;
    let broker = Broker::connect().await;
    let mut ids = Vec::new();
    for n in 0..8 {
        let published = sidecar
            .publish("Step", &format!("{{\"n\":{n}}}"), &[])
            .await;
        ids.push(published.body["event_id"].as_str().unwrap().to_owned());
    }

    let received = app.wait_for("/ordered", 9, ARRIVES).await;

    // The first event failed once and was retried before any later event was sent.
    let order: Vec<String> = received.iter().map(|r| r.event_id()).collect();
    let mut expected = vec![ids[0].clone()];
    expected.extend(ids.iter().cloned());
    assert_eq!(order, expected);
    assert_eq!(received[1].header("x-delivery-attempt"), Some("2"));
    for pair in received.windows(2) {
        assert!(
            pair[1].at >= pair[0].at + Duration::from_millis(30),
            "two deliveries of an ordered subscription overlapped"
        );
    }

    sidecar.cleanup_subscription(&broker, "ordered").await;
    sidecar.cleanup(&broker).await;
}

#[tokio::test]
async fn the_delivery_attempt_counts_across_a_sidecar_crash() {
    let app = TestApp::start().await;
    app.delay("/crash", Duration::from_secs(3));
    let mut sidecar = subscribed(&app, "crash", "OrderPlaced", "/crash", "").await;
    let broker = Broker::connect().await;
    sidecar.publish("OrderPlaced", "{}", &[]).await;
    app.wait_for("/crash", 1, ARRIVES).await;

    sidecar.settings.keep_data = true;
    sidecar.kill();
    let restarted = sidecar.settings.again().start();
    let received = app.wait_for("/crash", 2, ARRIVES).await;

    assert_eq!(received[0].event_id(), received[1].event_id());
    assert_eq!(received[0].header("x-delivery-attempt"), Some("1"));
    assert_eq!(received[1].header("x-delivery-attempt"), Some("2"));

    restarted.cleanup_subscription(&broker, "crash").await;
    restarted.cleanup(&broker).await;
    drop(sidecar);
}

#[tokio::test]
async fn an_app_that_is_not_listening_yet_gets_the_event_without_using_attempts() {
    // A port with nothing behind it, as while the app restarts.
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let toml = "[[subscriptions]]\nname = \"later\"\nevent_type = \"OrderPlaced\"\nroute = \"/later\"\n\
                max_attempts = 2\nbackoff_initial_ms = 10\nbackoff_max_ms = 20\n";
    let sidecar = Settings::new()
        .app(&format!("http://127.0.0.1:{port}"))
        .config_file(toml)
        .start();
    sidecar.wait_ready().await;
    let broker = Broker::connect().await;

    let published = sidecar.publish("OrderPlaced", "{}", &[]).await;
    let waiting = sidecar
        .wait_for_log(
            "the app is not listening; the delivery waits for it",
            ARRIVES,
        )
        .await;
    assert_eq!(waiting["event_id"], published.body["event_id"]);
    // The app stays away for 2 s: far longer than two attempts with these backoffs would
    // take, so an attempt used per refused connection would have dead-lettered the event.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(sidecar.dead_letters("later").await["total"], 0);

    let app = TestApp::start_on(port).await;
    let received = app.wait_for("/later", 1, ARRIVES).await;

    assert_eq!(
        received[0].event_id(),
        published.body["event_id"].as_str().unwrap()
    );
    assert_eq!(received[0].header("x-delivery-attempt"), Some("1"));
    sidecar.cleanup_subscription(&broker, "later").await;
    sidecar.cleanup(&broker).await;
}
