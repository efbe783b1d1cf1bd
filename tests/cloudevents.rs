//! CloudEvents against the real binary, broker and a real app: events published in binary
//! mode, structured mode, as a batch, and straight onto the exchange by a plain AMQP client
//! arrive at subscriptions in each delivery format with their ids; invalid CloudEvents get
//! problem+json naming the attribute.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use causeway::cloudevents::event_id;
use common::{
    Broker, Settings, Sidecar,
    app::{Received, TestApp},
    read,
};
use lapin::{
    BasicProperties,
    options::BasicPublishOptions,
    types::{AMQPValue, FieldTable, LongString},
};
use serde_json::{Value, json};

const ARRIVES: Duration = Duration::from_secs(20);
/// The three formats, by route.
const ROUTES: [&str; 3] = ["/native", "/binary", "/structured"];
const SOURCE: &str = "https://shop.example/orders";
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

/// One sidecar, three subscriptions to `OrderPlaced`: one per delivery format. Two attempts
/// keep each subscription to three queues.
async fn matrix(app: &TestApp) -> Sidecar {
    let mut toml = String::new();
    for (name, format) in [
        ("native", "causeway"),
        ("binary", "cloudevents-binary"),
        ("structured", "cloudevents-structured"),
    ] {
        toml.push_str(&format!(
            "[[subscriptions]]\nname = \"{name}\"\nevent_type = \"OrderPlaced\"\n\
             route = \"/{name}\"\nmax_attempts = 2\nformat = \"{format}\"\n\n"
        ));
    }
    let sidecar = Settings::new().app(&app.url).config_file(&toml).start();
    sidecar.wait_ready().await;
    sidecar
}

/// A POST to the API with `headers` and a raw body.
async fn post(
    sidecar: &Sidecar,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> common::Answer {
    let mut request = sidecar
        .http
        .post(format!("{}{path}", sidecar.api))
        .body(body.to_owned());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    read(request.send().await.unwrap()).await
}

/// Publishes a message onto the exchange as another producer would, with lapin alone.
async fn foreign(broker: &Broker, exchange: &str, body: &[u8], properties: BasicProperties) {
    broker
        .channel
        .basic_publish(
            exchange.into(),
            "OrderPlaced.v1".into(),
            BasicPublishOptions::default(),
            body,
            properties.with_delivery_mode(2),
        )
        .await
        .unwrap()
        .await
        .unwrap();
}

fn table(pairs: &[(&str, &str)]) -> FieldTable {
    let mut table = FieldTable::default();
    for (name, value) in pairs {
        table.insert(
            (*name).into(),
            AMQPValue::LongString(LongString::from(*value)),
        );
    }
    table
}

/// What `route` received of the event `id` (by `X-Event-ID`, which every format carries).
fn of<'a>(received: &'a [Received], id: &str) -> Vec<&'a Received> {
    received
        .iter()
        .filter(|r| r.header("x-event-id") == Some(id))
        .collect()
}

/// Waits until every route received `count` events.
async fn arrived(app: &TestApp, count: usize) {
    for route in ROUTES {
        app.wait_for(route, count, ARRIVES).await;
    }
}

/// The checks of one event in each format: the ids, type, source, correlation and causation
/// as the app sees them.
fn check_formats(
    app: &TestApp,
    event_id: &str,
    ce_id: &str,
    source: &str,
    payload: &Value,
    correlation: &str,
    causation: Option<&str>,
) {
    let native = app.received("/native");
    let [native] = of(&native, event_id)[..] else {
        panic!("/native: {native:?}");
    };
    assert_eq!(native.header("content-type"), Some("application/json"));
    assert_eq!(native.header("x-correlation-id"), Some(correlation));
    assert_eq!(native.header("x-causation-id"), causation);
    assert_eq!(native.header("x-event-type"), Some("OrderPlaced"));
    assert_eq!(native.body["event_id"], event_id);
    assert_eq!(native.body["event_type"], "OrderPlaced");
    assert_eq!(native.body["correlation_id"], correlation);
    assert_eq!(native.body["payload"], *payload);
    if ce_id != event_id {
        assert_eq!(native.body["cloudevents"]["id"], ce_id, "{}", native.body);
    }

    let binary = app.received("/binary");
    let [binary] = of(&binary, event_id)[..] else {
        panic!("/binary: {binary:?}");
    };
    assert_eq!(binary.body, *payload, "the body is the data");
    assert_eq!(binary.header("content-type"), Some("application/json"));
    assert_eq!(binary.header("ce-specversion"), Some("1.0"));
    assert_eq!(binary.header("ce-id"), Some(ce_id));
    assert_eq!(binary.header("ce-type"), Some("OrderPlaced"));
    assert_eq!(binary.header("ce-source"), Some(source));
    assert_eq!(binary.header("ce-correlationid"), Some(correlation));
    assert_eq!(binary.header("ce-causationid"), causation);
    assert_eq!(binary.header("ce-schemaversion"), Some("1.0"));
    assert!(binary.header("ce-time").is_some_and(|t| t.ends_with('Z')));
    assert_eq!(binary.header("x-correlation-id"), Some(correlation));
    assert_eq!(binary.header("x-delivery-attempt"), Some("1"));

    let structured = app.received("/structured");
    let [structured] = of(&structured, event_id)[..] else {
        panic!("/structured: {structured:?}");
    };
    assert_eq!(
        structured.header("content-type"),
        Some("application/cloudevents+json")
    );
    let body = &structured.body;
    assert_eq!(body["specversion"], "1.0");
    assert_eq!(body["id"], ce_id);
    assert_eq!(body["type"], "OrderPlaced");
    assert_eq!(body["source"], source);
    assert_eq!(body["correlationid"], correlation);
    assert_eq!(
        body["causationid"],
        causation.map_or(Value::Null, Value::from)
    );
    assert_eq!(body["datacontenttype"], "application/json");
    assert_eq!(body["data"], *payload);
}

#[tokio::test]
async fn cloudevents_from_every_mode_arrive_in_every_format_once() {
    let app = TestApp::start().await;
    let sidecar = matrix(&app).await;
    let broker = Broker::connect().await;
    let listed = sidecar.call("GET", "/v1/subscriptions/binary", None).await;
    assert_eq!(listed.body["format"], "cloudevents-binary", "{listed:?}");

    // Binary mode, with the trace only in the Distributed Tracing extension.
    let traceparent = format!("00-{TRACE_ID}-00f067aa0ba902b7-01");
    let binary_headers = [
        ("ce-specversion", "1.0"),
        ("ce-id", "bin-1"),
        ("ce-source", SOURCE),
        ("ce-type", "OrderPlaced"),
        ("ce-time", "2026-11-27T13:00:00+01:00"),
        ("ce-subject", "order%20o-1"),
        ("ce-correlationid", "flow-ce"),
        ("ce-causationid", "cart-1"),
        ("ce-traceparent", traceparent.as_str()),
        ("ce-comexampletier", "gold%20plus"),
        ("content-type", "application/json"),
    ];
    let published = post(
        &sidecar,
        "/v1/publish/OrderPlaced",
        &binary_headers,
        r#"{"n":1}"#,
    )
    .await;
    assert_eq!(published.status, 202, "{published:?}");
    let binary_id = event_id(SOURCE, "bin-1").to_string();
    assert_eq!(published.body["event_id"], binary_id);
    assert_eq!(published.body["correlation_id"], "flow-ce");
    assert_eq!(published.body["occurred_at"], "2026-11-27T12:00:00.000000Z");

    // Structured mode on POST /v1/publish, with a UUID id: the event id as is.
    let uuid = "7d3e2f1a-6b4c-4d5e-8f90-a1b2c3d4e5f6";
    let structured = json!({
        "specversion": "1.0", "id": uuid, "source": "/checkout", "type": "OrderPlaced",
        "correlationid": "flow-ce", "causationid": binary_id, "data": {"n": 2},
    });
    let published = post(
        &sidecar,
        "/v1/publish",
        &[("content-type", "application/cloudevents+json")],
        &structured.to_string(),
    )
    .await;
    assert_eq!(published.status, 202, "{published:?}");
    assert_eq!(published.body["event_id"], uuid);

    // A batch of two.
    let batch = json!([
        {"specversion": "1.0", "id": "batch-1", "source": "/bulk", "type": "OrderPlaced",
         "data": {"n": 3}},
        {"specversion": "1.0", "id": "batch-2", "source": "/bulk", "type": "OrderPlaced",
         "correlationid": "flow-bulk", "data": {"n": 4}},
    ]);
    let published = post(
        &sidecar,
        "/v1/publish",
        &[("content-type", "application/cloudevents-batch+json")],
        &batch.to_string(),
    )
    .await;
    assert_eq!(published.status, 200, "{published:?}");
    assert_eq!(
        published.body["results"][1]["event_id"],
        event_id("/bulk", "batch-2").to_string()
    );

    // Straight onto the exchange, in binary mode and in structured mode.
    let properties = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_headers(table(&[
            ("cloudEvents_specversion", "1.0"),
            ("cloudEvents_id", "amqp-1"),
            ("cloudEvents_source", "/legacy"),
            ("cloudEvents_type", "OrderPlaced"),
            ("cloudEvents_correlationid", "flow-amqp"),
        ]));
    foreign(&broker, sidecar.exchange(), br#"{"n":5}"#, properties).await;
    let body = json!({"specversion": "1.0", "id": "amqp-2", "source": "/knative",
                      "type": "OrderPlaced", "data": {"n": 6}});
    let properties =
        BasicProperties::default().with_content_type("application/cloudevents+json".into());
    foreign(
        &broker,
        sidecar.exchange(),
        body.to_string().as_bytes(),
        properties,
    )
    .await;
    // And one that says it is a CloudEvent but has no source: dead-lettered, named.
    let properties = BasicProperties::default().with_headers(table(&[
        ("cloudEvents_specversion", "1.0"),
        ("cloudEvents_id", "amqp-3"),
        ("cloudEvents_type", "OrderPlaced"),
    ]));
    foreign(&broker, sidecar.exchange(), b"{}", properties).await;

    arrived(&app, 6).await;
    check_formats(
        &app,
        &binary_id,
        "bin-1",
        SOURCE,
        &json!({"n": 1}),
        "flow-ce",
        Some("cart-1"),
    );
    check_formats(
        &app,
        uuid,
        uuid,
        "/checkout",
        &json!({"n": 2}),
        "flow-ce",
        Some(&binary_id),
    );
    let first = event_id("/bulk", "batch-1").to_string();
    // Without a correlation id, a CloudEvent starts a flow named after its event id.
    check_formats(
        &app,
        &first,
        "batch-1",
        "/bulk",
        &json!({"n": 3}),
        &first,
        None,
    );
    let second = event_id("/bulk", "batch-2").to_string();
    check_formats(
        &app,
        &second,
        "batch-2",
        "/bulk",
        &json!({"n": 4}),
        "flow-bulk",
        None,
    );
    let legacy = event_id("/legacy", "amqp-1").to_string();
    check_formats(
        &app,
        &legacy,
        "amqp-1",
        "/legacy",
        &json!({"n": 5}),
        "flow-amqp",
        None,
    );
    let knative = event_id("/knative", "amqp-2").to_string();
    check_formats(
        &app,
        &knative,
        "amqp-2",
        "/knative",
        &json!({"n": 6}),
        &knative,
        None,
    );

    // The binary-mode event in detail: what the envelope keeps is given back.
    let native = app.received("/native");
    let native = of(&native, &binary_id)[0];
    assert_eq!(native.body["source"], sidecar.service());
    assert_eq!(native.body["cloudevents"]["source"], SOURCE);
    assert_eq!(native.body["cloudevents"]["subject"], "order o-1");
    assert_eq!(
        native.body["cloudevents"]["extensions"]["comexampletier"],
        "gold plus"
    );
    // The publish continued the trace the extension named.
    let delivered_trace = native.header("traceparent").unwrap();
    assert!(delivered_trace.contains(TRACE_ID), "{delivered_trace}");
    let binary = app.received("/binary");
    let binary = of(&binary, &binary_id)[0];
    assert_eq!(binary.header("ce-subject"), Some("order%20o-1"));
    assert_eq!(binary.header("ce-comexampletier"), Some("gold%20plus"));
    assert_eq!(binary.header("ce-traceparent"), Some(traceparent.as_str()));
    assert_eq!(
        binary.header("ce-time"),
        Some("2026-11-27T12:00:00.000000Z")
    );
    let structured = app.received("/structured");
    let structured = of(&structured, &binary_id)[0];
    assert_eq!(structured.body["subject"], "order o-1");
    assert_eq!(structured.body["comexampletier"], "gold plus");

    // The invalid one is in each dead-letter queue, with the attribute named.
    for name in ["native", "binary", "structured"] {
        let listed = sidecar.wait_dead_letters(name, 1, ARRIVES).await;
        let letter = &listed["dead_letters"][0];
        assert_eq!(letter["reason"], "undecodable", "{listed}");
        let error = letter["last_error"].as_str().unwrap();
        assert!(error.contains("cloudEvents_source is required"), "{error}");
    }

    // The same ce-id again, after the first was delivered: the app gets it once per
    // subscription, and each copy is skipped as a duplicate.
    let again = post(
        &sidecar,
        "/v1/publish/OrderPlaced",
        &binary_headers,
        r#"{"n":1}"#,
    )
    .await;
    assert_eq!(again.status, 202, "{again:?}");
    assert_eq!(again.body["event_id"], binary_id);
    let deadline = Instant::now() + ARRIVES;
    let skips = || {
        sidecar
            .logs()
            .iter()
            .filter(|l| l.contains("duplicate_event_skipped") && l.contains(&binary_id))
            .count()
    };
    while skips() < 3 {
        assert!(Instant::now() < deadline, "the copies were not skipped");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for route in ROUTES {
        assert_eq!(of(&app.received(route), &binary_id).len(), 1, "{route}");
        assert_eq!(app.received(route).len(), 6, "{route}");
    }

    for name in ["native", "binary", "structured"] {
        sidecar.cleanup_subscription(&broker, name).await;
    }
    sidecar.cleanup(&broker).await;
}

/// The headers of a valid binary-mode publish, with `name` left out or set to `value`.
fn changed(name: &str, value: Option<&'static str>) -> Vec<(&'static str, &'static str)> {
    let valid = [
        ("ce-specversion", "1.0"),
        ("ce-id", "x-1"),
        ("ce-source", "/s"),
        ("ce-type", "OrderPlaced"),
        ("ce-time", "2026-11-27T12:00:00Z"),
        ("content-type", "application/json"),
    ];
    let mut headers: Vec<_> = valid.into_iter().filter(|(n, _)| *n != name).collect();
    if let Some(value) = value {
        let name = valid
            .iter()
            .find(|(n, _)| *n == name)
            .map_or("x", |(n, _)| *n);
        headers.push((name, value));
    }
    headers
}

/// The `attribute`s a problem names, in its `errors`.
fn named(answer: &common::Answer) -> Vec<String> {
    answer.body["errors"]
        .as_array()
        .map(|errors| {
            errors
                .iter()
                .map(|e| e["attribute"].as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn invalid_cloudevents_get_problem_json_naming_the_attribute() {
    let sidecar = Settings::new().start();
    sidecar.wait_ready().await;
    let broker = Broker::connect().await;
    let without = |name: &str| changed(name, None);
    let with = |name: &'static str, value: &'static str| changed(name, Some(value));
    let path = "/v1/publish/OrderPlaced";

    let answer = post(&sidecar, path, &without("ce-specversion"), "{}").await;
    assert_eq!(answer.status, 400, "{answer:?}");
    assert_eq!(
        answer.headers["content-type"], "application/problem+json",
        "{answer:?}"
    );
    assert!(
        answer.body["type"]
            .as_str()
            .unwrap()
            .ends_with("invalid-cloudevent")
    );
    assert_eq!(named(&answer), ["ce-specversion"]);
    assert!(
        answer.body["detail"]
            .as_str()
            .unwrap()
            .contains("ce-specversion is required")
    );

    let answer = post(&sidecar, path, &with("ce-specversion", "0.3"), "{}").await;
    assert_eq!(
        (answer.status, named(&answer)),
        (400, vec!["ce-specversion".to_owned()])
    );
    let answer = post(&sidecar, path, &with("ce-time", "noon"), "{}").await;
    assert_eq!(
        (answer.status, named(&answer)),
        (400, vec!["ce-time".to_owned()])
    );
    let answer = post(&sidecar, path, &with("ce-type", "OrderShipped"), "{}").await;
    assert_eq!(answer.status, 422, "{answer:?}");
    let detail = answer.body["detail"].as_str().unwrap();
    assert!(
        detail.contains("OrderPlaced") && detail.contains("OrderShipped"),
        "{detail}"
    );
    assert_eq!(named(&answer), ["ce-type"]);
    let answer = post(&sidecar, path, &with("content-type", "text/plain"), "hello").await;
    assert_eq!(answer.status, 415, "{answer:?}");
    assert!(
        answer.body["detail"]
            .as_str()
            .unwrap()
            .contains("text/plain")
    );

    let structured = [("content-type", "application/cloudevents+json")];
    let base64 = json!({"specversion": "1.0", "id": "1", "source": "/s", "type": "OrderPlaced",
                        "data_base64": "AAEC"});
    let answer = post(&sidecar, "/v1/publish", &structured, &base64.to_string()).await;
    assert_eq!(answer.status, 415, "{answer:?}");
    assert!(
        answer.body["detail"]
            .as_str()
            .unwrap()
            .contains("data_base64")
    );
    let no_id = json!({"specversion": "1.0", "source": "/s", "type": "OrderPlaced", "data": {}});
    let answer = post(&sidecar, path, &structured, &no_id.to_string()).await;
    assert_eq!(
        (answer.status, named(&answer)),
        (400, vec!["id".to_owned()])
    );
    // The payload grammar applies to data.
    let twice =
        r#"{"specversion":"1.0","id":"1","source":"/s","type":"OrderPlaced","data":{"a":1,"a":2}}"#;
    let answer = post(&sidecar, path, &structured, twice).await;
    assert_eq!(answer.status, 400, "{answer:?}");
    assert!(
        answer.body["type"]
            .as_str()
            .unwrap()
            .ends_with("malformed-payload")
    );

    let batch = json!([
        {"specversion": "1.0", "id": "1", "source": "/s", "type": "OrderPlaced", "data": {}},
        {"specversion": "1.0", "id": "2", "type": "OrderPlaced", "data": {}},
    ]);
    let answer = post(
        &sidecar,
        "/v1/publish",
        &[("content-type", "application/cloudevents-batch+json")],
        &batch.to_string(),
    )
    .await;
    assert_eq!(answer.status, 422, "{answer:?}");
    assert_eq!(answer.body["results"][0]["status"], "valid");
    assert_eq!(answer.body["results"][1]["errors"][0]["field"], "source");

    let unknown = json!({"event_type": "OrderPlaced", "route": "/a", "format": "cloudevents"});
    let answer = sidecar
        .call("PUT", "/v1/subscriptions/ce-unknown", Some(unknown))
        .await;
    assert_eq!(answer.status, 422, "{answer:?}");
    assert!(
        answer.body["detail"]
            .as_str()
            .unwrap()
            .contains("cloudevents-binary")
    );

    sidecar.cleanup(&broker).await;
}
