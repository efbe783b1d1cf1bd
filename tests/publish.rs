//! The publish path against the real broker: envelope, properties, routing, idempotency,
//! errors, unroutable events.
#![allow(clippy::unwrap_used)]

mod common;

use std::{collections::HashSet, time::Duration};

use common::{Broker, Settings, body, header};
use serde_json::{Value, json};

const ARRIVES: Duration = Duration::from_secs(10);

#[tokio::test]
async fn the_envelope_and_amqp_properties_reach_a_bound_queue() {
    let sidecar = Settings::new().start();
    sidecar.wait_ready().await;
    let broker = Broker::connect().await;
    let mut queue = broker.bind(sidecar.exchange(), "OrderPlaced.v2").await;
    let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    let answer = sidecar
        .publish(
            "OrderPlaced",
            r#"{"total_cents": 1250, "currency": "EUR"}"#,
            &[
                ("X-Correlation-ID", "flow-42"),
                ("X-Causation-ID", "01a21d27-0000-7000-8000-000000000001"),
                ("X-Schema-Version", "2.1"),
                ("traceparent", traceparent),
                ("tracestate", "vendor=1"),
            ],
        )
        .await;

    assert_eq!(answer.status, 202, "{answer:?}");
    let accepted = &answer.body;
    let event_id = accepted["event_id"].as_str().unwrap();
    assert_eq!(
        uuid::Uuid::parse_str(event_id).unwrap().get_version_num(),
        7
    );
    assert_eq!(accepted["event_type"], "OrderPlaced");
    assert_eq!(accepted["schema_version"], "2.1");
    assert_eq!(accepted["correlation_id"], "flow-42");
    assert_eq!(
        accepted["causation_id"],
        "01a21d27-0000-7000-8000-000000000001"
    );
    let occurred_at = accepted["occurred_at"].as_str().unwrap();
    assert!(
        humantime::parse_rfc3339(occurred_at).is_ok(),
        "{occurred_at}"
    );
    assert!(occurred_at.ends_with('Z'), "{occurred_at}");

    let delivery = queue
        .next(ARRIVES)
        .await
        .expect("the event reaches the queue");
    assert_eq!(delivery.routing_key.as_str(), "OrderPlaced.v2");
    let envelope = body(&delivery);
    assert_eq!(
        envelope,
        json!({
            "event_id": event_id,
            "event_type": "OrderPlaced",
            "schema_version": "2.1",
            "correlation_id": "flow-42",
            "causation_id": "01a21d27-0000-7000-8000-000000000001",
            "occurred_at": occurred_at,
            "source": sidecar.service(),
            "payload": {"total_cents": 1250, "currency": "EUR"},
        })
    );
    let props = &delivery.properties;
    let text = |v: &Option<lapin::types::ShortString>| v.as_ref().map(|s| s.to_string());
    assert_eq!(text(props.message_id()).as_deref(), Some(event_id));
    assert_eq!(text(props.correlation_id()).as_deref(), Some("flow-42"));
    assert_eq!(text(props.kind()).as_deref(), Some("OrderPlaced"));
    assert_eq!(text(props.app_id()).as_deref(), Some(sidecar.service()));
    assert_eq!(
        text(props.content_type()).as_deref(),
        Some("application/json")
    );
    assert_eq!(props.delivery_mode(), &Some(2));
    let timestamp = props.timestamp().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        now.abs_diff(timestamp) < 60,
        "timestamp {timestamp} vs now {now}"
    );
    assert_eq!(
        header(props, "causation_id").as_deref(),
        Some("01a21d27-0000-7000-8000-000000000001")
    );
    assert_eq!(header(props, "schema_version").as_deref(), Some("2.1"));
    // The same trace, continued by the sidecar's producer span (a new span id).
    let sent = header(props, "traceparent").unwrap();
    assert!(
        sent.starts_with("00-0af7651916cd43dd8448eb211c80319c-"),
        "{sent}"
    );
    assert!(sent.ends_with("-01"), "{sent}");
    assert_ne!(sent, traceparent);
    assert_eq!(header(props, "tracestate").as_deref(), Some("vendor=1"));

    sidecar.cleanup(&broker).await;
}

#[tokio::test]
async fn a_correlation_id_is_created_when_absent_and_version_defaults_to_1_0() {
    let sidecar = Settings::new().start();
    sidecar.wait_ready().await;
    let broker = Broker::connect().await;
    let mut queue = broker.bind(sidecar.exchange(), "StockReserved.v1").await;

    let first = sidecar.publish("StockReserved", "{}", &[]).await;
    let second = sidecar.publish("StockReserved", "[1,2]", &[]).await;

    assert_eq!(first.status, 202, "{first:?}");
    assert_eq!(second.status, 202, "{second:?}");
    let correlation = |a: &common::Answer| a.body["correlation_id"].as_str().unwrap().to_owned();
    assert!(uuid::Uuid::parse_str(&correlation(&first)).is_ok());
    assert_ne!(correlation(&first), correlation(&second));
    assert_eq!(first.body["schema_version"], "1.0");
    assert_eq!(first.body["causation_id"], Value::Null);

    let delivered = common::before_marker(&sidecar, &mut queue, "StockReserved", &[]).await;
    assert_eq!(delivered.len(), 2);
    let envelope = body(&delivered[0]);
    assert_eq!(envelope["correlation_id"], first.body["correlation_id"]);
    assert_eq!(envelope["causation_id"], Value::Null);
    assert_eq!(header(&delivered[0].properties, "causation_id"), None);
    assert_eq!(body(&delivered[1])["payload"], json!([1, 2]));

    sidecar.cleanup(&broker).await;
}

#[tokio::test]
async fn each_major_version_has_its_own_routing_key() {
    let sidecar = Settings::new().start();
    sidecar.wait_ready().await;
    let broker = Broker::connect().await;
    let mut v1 = broker.bind(sidecar.exchange(), "OrderPlaced.v1").await;
    let mut v2 = broker.bind(sidecar.exchange(), "OrderPlaced.v2").await;

    for version in ["1.0", "1.3", "2.0"] {
        let answer = sidecar
            .publish("OrderPlaced", "{}", &[("X-Schema-Version", version)])
            .await;
        assert_eq!(answer.status, 202, "{answer:?}");
    }

    let versions = |deliveries: Vec<lapin::message::Delivery>| -> Vec<String> {
        deliveries
            .iter()
            .map(|d| body(d)["schema_version"].as_str().unwrap().to_owned())
            .collect()
    };
    let v1_marker = [("X-Schema-Version", "1.9")];
    let v2_marker = [("X-Schema-Version", "2.9")];
    assert_eq!(
        versions(common::before_marker(&sidecar, &mut v1, "OrderPlaced", &v1_marker).await),
        ["1.0", "1.3"]
    );
    assert_eq!(
        versions(common::before_marker(&sidecar, &mut v2, "OrderPlaced", &v2_marker).await),
        ["2.0"]
    );

    sidecar.cleanup(&broker).await;
}

#[tokio::test]
async fn an_idempotency_key_publishes_once_and_returns_the_same_event() {
    let sidecar = Settings::new().start();
    sidecar.wait_ready().await;
    let broker = Broker::connect().await;
    let mut queue = broker.bind(sidecar.exchange(), "#").await;
    let keyed = [("Idempotency-Key", "order-1001-placed")];

    let first = sidecar.publish("OrderPlaced", r#"{"n":1}"#, &keyed).await;
    // Retries, some of them at the same time.
    let retries = futures_util::future::join_all(
        (0..5).map(|_| sidecar.publish("OrderPlaced", r#"{"n":1}"#, &keyed)),
    )
    .await;
    let other = sidecar
        .publish(
            "OrderPlaced",
            r#"{"n":2}"#,
            &[("Idempotency-Key", "order-1002-placed")],
        )
        .await;
    let reused = sidecar.publish("OrderShipped", "{}", &keyed).await;

    assert_eq!(first.status, 202, "{first:?}");
    for retry in &retries {
        assert_eq!(retry.status, 202, "{retry:?}");
        assert_eq!(
            retry.body, first.body,
            "a retry answers as the first publish did"
        );
    }
    assert_eq!(other.status, 202);
    assert_ne!(other.body["event_id"], first.body["event_id"]);
    assert_eq!(reused.status, 409, "{reused:?}");
    assert!(
        reused.body["detail"]
            .as_str()
            .unwrap()
            .contains("OrderPlaced")
    );

    let ids: Vec<Value> = common::before_marker(&sidecar, &mut queue, "Marker", &[])
        .await
        .iter()
        .map(|d| body(d)["event_id"].clone())
        .collect();
    assert_eq!(
        ids,
        [
            first.body["event_id"].clone(),
            other.body["event_id"].clone()
        ]
    );

    sidecar.cleanup(&broker).await;
}

#[tokio::test]
async fn an_idempotency_key_survives_a_restart() {
    let settings = Settings::new();
    let data_dir = settings.get("CAUSEWAY_DATA_DIR").to_owned();
    let mut sidecar = settings.start();
    sidecar.wait_ready().await;
    let broker = Broker::connect().await;
    let mut queue = broker.bind(sidecar.exchange(), "#").await;
    let keyed = [("Idempotency-Key", "k-restart")];
    let first = sidecar.publish("OrderPlaced", "{}", &keyed).await;
    assert_eq!(first.status, 202);
    sidecar.terminate();
    assert!(sidecar.wait_exit(Duration::from_secs(20)).await.success());

    let mut again = sidecar.settings.again().start();
    again.wait_ready().await;
    let retry = again.publish("OrderPlaced", "{}", &keyed).await;

    assert_eq!(retry.status, 202);
    assert_eq!(retry.body["event_id"], first.body["event_id"]);
    let published = common::before_marker(&again, &mut queue, "Marker", &[]).await;
    assert_eq!(published.len(), 1, "the retry published the event again");
    assert!(
        std::path::Path::new(&data_dir)
            .join("causeway.redb")
            .exists()
    );

    again.terminate();
    again.wait_exit(Duration::from_secs(20)).await;
    again.cleanup(&broker).await;
    drop(sidecar);
}

#[tokio::test]
async fn every_error_is_a_problem_and_publishes_nothing() {
    let token = "s3cret-token-of-the-pod";
    let sidecar = Settings::new()
        .set("CAUSEWAY_API_TOKEN", token)
        .set("CAUSEWAY_MAX_BODY", "1KiB")
        .start();
    sidecar.wait_ready().await;
    let broker = Broker::connect().await;
    let mut queue = broker.bind(sidecar.exchange(), "#").await;
    let bearer = format!("Bearer {token}");
    let auth = ("Authorization", bearer.as_str());
    let url = format!("{}/v1/publish/OrderPlaced", sidecar.api);

    let cases: Vec<(u16, &str, reqwest::RequestBuilder)> = vec![
        (
            401,
            "no token",
            sidecar
                .http
                .post(&url)
                .header("content-type", "application/json")
                .body("{}"),
        ),
        (
            401,
            "wrong token",
            sidecar
                .http
                .post(&url)
                .header("content-type", "application/json")
                .header("Authorization", "Bearer wrong-token-wrong-token")
                .body("{}"),
        ),
        (
            400,
            "malformed JSON",
            sidecar
                .http
                .post(&url)
                .header("content-type", "application/json")
                .header(auth.0, auth.1)
                .body("{\"total\":"),
        ),
        (
            400,
            "correlation id too long",
            sidecar
                .http
                .post(&url)
                .header("content-type", "application/json")
                .header(auth.0, auth.1)
                .header("X-Correlation-ID", "x".repeat(129))
                .body("{}"),
        ),
        (
            400,
            "schema version not MAJOR.MINOR",
            sidecar
                .http
                .post(&url)
                .header("content-type", "application/json")
                .header(auth.0, auth.1)
                .header("X-Schema-Version", "v2")
                .body("{}"),
        ),
        (
            400,
            "invalid event type",
            sidecar
                .http
                .post(format!("{}/v1/publish/9Lives", sidecar.api))
                .header("content-type", "application/json")
                .header(auth.0, auth.1)
                .body("{}"),
        ),
        (
            404,
            "unknown route",
            sidecar
                .http
                .post(format!("{}/v2/publish/OrderPlaced", sidecar.api))
                .header(auth.0, auth.1)
                .body("{}"),
        ),
        (
            413,
            "body over the limit",
            sidecar
                .http
                .post(&url)
                .header("content-type", "application/json")
                .header(auth.0, auth.1)
                .body(format!("{{\"pad\":\"{}\"}}", "x".repeat(2048))),
        ),
        (
            415,
            "not JSON",
            sidecar
                .http
                .post(&url)
                .header("content-type", "text/plain")
                .header(auth.0, auth.1)
                .body("{}"),
        ),
    ];
    for (status, case, request) in cases {
        let answer = common::read(request.send().await.unwrap()).await;
        assert_eq!(answer.status, status, "{case}: {answer:?}");
        assert_eq!(
            answer.headers["content-type"], "application/problem+json",
            "{case}"
        );
        assert_eq!(answer.body["status"], status, "{case}");
        assert!(
            answer.body["type"]
                .as_str()
                .unwrap()
                .starts_with("urn:causeway:problem:")
        );
        assert!(
            !answer.body["detail"].as_str().unwrap().is_empty(),
            "{case}"
        );
        if status == 401 {
            assert_eq!(answer.headers["www-authenticate"], "Bearer");
        }
    }
    // A good publish after them is the marker: it is the first message in the queue only if
    // none of the rejected requests published anything (see `common::before_marker`).
    let good = sidecar.publish("OrderPlaced", "{}", &[auth]).await;
    assert_eq!(good.status, 202, "{good:?}");
    let first = queue.next(ARRIVES).await.expect("the good event arrives");
    assert_eq!(
        body(&first)["event_id"],
        good.body["event_id"],
        "a rejected request published an event"
    );

    sidecar.cleanup(&broker).await;
}

#[tokio::test]
async fn an_unroutable_event_is_kept_in_the_unrouted_queue() {
    let sidecar = Settings::new().start();
    sidecar.wait_ready().await;
    let broker = Broker::connect().await;

    let answer = sidecar.publish("NobodyListens", r#"{"x":1}"#, &[]).await;
    assert_eq!(answer.status, 202, "{answer:?}");

    // The sidecar notices the queue growing within its check interval and says so.
    let line = sidecar
        .wait_for_log(
            "events were published that no subscription is bound for; they are kept in the unrouted queue",
            Duration::from_secs(25),
        )
        .await;
    assert_eq!(line["queue"], sidecar.unrouted());
    assert_eq!(line["waiting"], 1);
    let kept = broker
        .get(sidecar.unrouted())
        .await
        .expect("the event waits in the unrouted queue");
    assert_eq!(kept.routing_key.as_str(), "NobodyListens.v1");
    assert_eq!(body(&kept)["event_id"], answer.body["event_id"]);

    sidecar.cleanup(&broker).await;
}

#[tokio::test]
async fn many_publishes_in_flight_are_all_confirmed() {
    let sidecar = Settings::new().start();
    sidecar.wait_ready().await;
    let broker = Broker::connect().await;
    let mut queue = broker.bind(sidecar.exchange(), "#").await;

    let bodies: Vec<String> = (0..200).map(|i| format!("{{\"i\":{i}}}")).collect();
    let answers =
        futures_util::future::join_all(bodies.iter().map(|b| sidecar.publish("Tick", b, &[])))
            .await;

    let accepted: HashSet<Value> = answers
        .iter()
        .map(|a| {
            assert_eq!(a.status, 202, "{a:?}");
            a.body["event_id"].clone()
        })
        .collect();
    let delivered: HashSet<Value> = common::before_marker(&sidecar, &mut queue, "Marker", &[])
        .await
        .iter()
        .map(|d| body(d)["event_id"].clone())
        .collect();
    assert_eq!(accepted.len(), 200);
    assert_eq!(delivered, accepted);

    sidecar.cleanup(&broker).await;
}

#[tokio::test]
async fn with_spans_off_the_callers_trace_context_passes_through() {
    let sidecar = Settings::new()
        .set("OTEL_TRACES_SAMPLER", "always_off")
        .start();
    sidecar.wait_ready().await;
    let broker = Broker::connect().await;
    let mut queue = broker.bind(sidecar.exchange(), "#").await;
    let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    let answer = sidecar
        .publish(
            "OrderPlaced",
            "{}",
            &[("traceparent", traceparent), ("tracestate", "k=v")],
        )
        .await;

    assert_eq!(answer.status, 202);
    let delivery = queue.next(ARRIVES).await.unwrap();
    assert_eq!(
        header(&delivery.properties, "traceparent").as_deref(),
        Some(traceparent)
    );
    assert_eq!(
        header(&delivery.properties, "tracestate").as_deref(),
        Some("k=v")
    );
    sidecar.cleanup(&broker).await;
}

#[tokio::test]
async fn a_nack_or_a_returned_event_is_an_error_never_a_202() {
    let sidecar = Settings::new().start();
    sidecar.wait_ready().await;
    let broker = Broker::connect().await;

    // A queue that refuses every message: the broker nacks what is routed to it.
    let full = common::unique("test-full");
    let mut args = lapin::types::FieldTable::default();
    args.insert("x-max-length".into(), lapin::types::AMQPValue::LongInt(0));
    args.insert(
        "x-overflow".into(),
        lapin::types::AMQPValue::LongString("reject-publish".into()),
    );
    broker
        .channel
        .queue_declare(
            full.as_str().into(),
            lapin::options::QueueDeclareOptions {
                auto_delete: true,
                ..Default::default()
            },
            args,
        )
        .await
        .unwrap();
    broker
        .channel
        .queue_bind(
            full.as_str().into(),
            sidecar.exchange().into(),
            "Refused.v1".into(),
            Default::default(),
            Default::default(),
        )
        .await
        .unwrap();
    let nacked = sidecar.publish("Refused", "{}", &[]).await;
    assert_eq!(nacked.status, 503, "{nacked:?}");
    assert!(
        nacked.body["detail"].as_str().unwrap().contains("nack"),
        "{nacked:?}"
    );

    // Without the alternate exchange an unroutable mandatory publish comes back.
    broker.delete_exchange(sidecar.unrouted()).await;
    let returned = sidecar.publish("NobodyAtAll", "{}", &[]).await;
    assert_eq!(returned.status, 503, "{returned:?}");
    assert!(
        returned.body["detail"]
            .as_str()
            .unwrap()
            .contains("unroutable"),
        "{returned:?}"
    );

    broker.delete_queue(&full).await;
    sidecar.cleanup(&broker).await;
}
