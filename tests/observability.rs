//! Traces, logs and metrics: a flow across three sidecars is one trace with producer →
//! consumer parentage across the broker; delivery logs carry the ids; `/metrics` exposes
//! every family and the dead-letter depth.
#![allow(clippy::unwrap_used)]

mod common;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{Router, body::Bytes, extract::State, routing::post};
use common::{Broker, Settings, Sidecar, app::TestApp};
use opentelemetry_proto::tonic::{
    collector::trace::v1::ExportTraceServiceRequest,
    common::v1::{AnyValue, any_value::Value as AnyKind},
    trace::v1::span::SpanKind,
};
use prost::Message;

const ARRIVES: Duration = Duration::from_secs(20);

/// One span as the collector received it.
#[derive(Clone, Debug)]
struct Span {
    service: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    name: String,
    kind: SpanKind,
    attributes: HashMap<String, String>,
    status_code: i32,
}

type Spans = Arc<Mutex<Vec<Span>>>;

fn text(value: &Option<AnyValue>) -> String {
    match value.as_ref().and_then(|v| v.value.as_ref()) {
        Some(AnyKind::StringValue(s)) => s.clone(),
        Some(AnyKind::IntValue(i)) => i.to_string(),
        Some(AnyKind::BoolValue(b)) => b.to_string(),
        Some(AnyKind::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// An OTLP/HTTP receiver (protobuf) collecting every span sent to it.
async fn collector() -> (String, Spans) {
    async fn traces(State(spans): State<Spans>, body: Bytes) -> &'static str {
        let request = ExportTraceServiceRequest::decode(body).unwrap();
        let mut spans = spans.lock().unwrap();
        for resource_spans in request.resource_spans {
            let service = resource_spans
                .resource
                .iter()
                .flat_map(|r| r.attributes.iter())
                .find(|a| a.key == "service.name")
                .map(|a| text(&a.value))
                .unwrap_or_default();
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    spans.push(Span {
                        service: service.clone(),
                        trace_id: hex(&span.trace_id),
                        span_id: hex(&span.span_id),
                        parent_span_id: hex(&span.parent_span_id),
                        name: span.name.clone(),
                        kind: SpanKind::try_from(span.kind).unwrap_or(SpanKind::Unspecified),
                        attributes: span
                            .attributes
                            .iter()
                            .map(|a| (a.key.clone(), text(&a.value)))
                            .collect(),
                        status_code: span.status.as_ref().map_or(0, |s| s.code),
                    });
                }
            }
        }
        ""
    }
    let spans = Spans::default();
    let router = Router::new()
        .route("/v1/traces", post(traces))
        .with_state(spans.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    (url, spans)
}

/// A sidecar on the shared exchange `of`, exporting spans to `otlp`, delivering to `app`.
fn traced(of: Option<&Sidecar>, otlp: &str, app: &TestApp, subscriptions: &str) -> Sidecar {
    let mut settings = Settings::new()
        .app(&app.url)
        .set("OTEL_EXPORTER_OTLP_ENDPOINT", otlp)
        .set("OTEL_BSP_SCHEDULE_DELAY", "100")
        .config_file(subscriptions);
    if let Some(first) = of {
        settings = settings
            .set("CAUSEWAY_EXCHANGE", first.exchange())
            .set("CAUSEWAY_UNROUTED_QUEUE", first.unrouted());
    }
    settings.start()
}

fn one<'a>(spans: &'a [Span], service: &str, kind: SpanKind) -> &'a Span {
    let found: Vec<&Span> = spans
        .iter()
        .filter(|s| s.service == service && s.kind == kind)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "{kind:?} spans of {service}: {found:#?}\nall: {spans:#?}"
    );
    found[0]
}

#[tokio::test]
async fn a_flow_across_three_sidecars_is_one_trace() {
    let (otlp, spans) = collector().await;
    let (app_a, app_b, app_c) = (
        TestApp::start().await,
        TestApp::start().await,
        TestApp::start().await,
    );
    let mut a = traced(None, &otlp, &app_a, "");
    let mut b = traced(
        Some(&a),
        &otlp,
        &app_b,
        "[[subscriptions]]\nname = \"reserve\"\nevent_type = \"OrderPlaced\"\nroute = \"/order-placed\"\n",
    );
    let mut c = traced(
        Some(&a),
        &otlp,
        &app_c,
        "[[subscriptions]]\nname = \"charge\"\nevent_type = \"StockReserved\"\nroute = \"/stock-reserved\"\n",
    );
    for sidecar in [&a, &b, &c] {
        sidecar.wait_ready().await;
    }
    app_b.react("/order-placed", &b.api, "StockReserved");
    let broker = Broker::connect().await;

    let placed = a
        .publish(
            "OrderPlaced",
            r#"{"order":1}"#,
            &[("X-Correlation-ID", "checkout-1")],
        )
        .await;
    assert_eq!(placed.status, 202);
    let at_c = app_c.wait_for("/stock-reserved", 1, ARRIVES).await;
    assert_eq!(
        at_c[0].header("x-correlation-id"),
        Some("checkout-1"),
        "inherited through B"
    );

    // SIGTERM flushes the spans still buffered.
    for sidecar in [&a, &b, &c] {
        sidecar.terminate();
    }
    for sidecar in [&mut a, &mut b, &mut c] {
        let status = sidecar.wait_exit(ARRIVES).await;
        assert!(status.success(), "{status:?}: {:#?}", sidecar.logs());
    }
    let spans = spans.lock().unwrap().clone();
    let event_a = placed.body["event_id"].as_str().unwrap();
    let event_b = at_c[0].event_id();

    let trace_ids: std::collections::HashSet<&str> =
        spans.iter().map(|s| s.trace_id.as_str()).collect();
    assert_eq!(trace_ids.len(), 1, "more than one trace: {spans:#?}");

    let (sa, sb, sc) = (
        a.service().to_owned(),
        b.service().to_owned(),
        c.service().to_owned(),
    );
    let server_a = one(&spans, &sa, SpanKind::Server);
    let producer_a = one(&spans, &sa, SpanKind::Producer);
    let consumer_b = one(&spans, &sb, SpanKind::Consumer);
    let client_b = one(&spans, &sb, SpanKind::Client);
    let server_b = one(&spans, &sb, SpanKind::Server);
    let producer_b = one(&spans, &sb, SpanKind::Producer);
    let consumer_c = one(&spans, &sc, SpanKind::Consumer);
    let client_c = one(&spans, &sc, SpanKind::Client);

    // The chain of parents, across the broker and through B's app.
    assert_eq!(server_a.parent_span_id, "", "A's request starts the trace");
    assert_eq!(producer_a.parent_span_id, server_a.span_id);
    assert_eq!(consumer_b.parent_span_id, producer_a.span_id);
    assert_eq!(client_b.parent_span_id, consumer_b.span_id);
    assert_eq!(server_b.parent_span_id, client_b.span_id);
    assert_eq!(producer_b.parent_span_id, server_b.span_id);
    assert_eq!(consumer_c.parent_span_id, producer_b.span_id);
    assert_eq!(client_c.parent_span_id, consumer_c.span_id);

    // Messaging attributes.
    assert_eq!(producer_a.name, format!("send {}", a.exchange()));
    let attrs = &producer_a.attributes;
    assert_eq!(attrs["messaging.system"], "rabbitmq");
    assert_eq!(attrs["messaging.operation.type"], "send");
    assert_eq!(attrs["messaging.destination.name"], a.exchange());
    assert_eq!(
        attrs["messaging.rabbitmq.destination.routing_key"],
        "OrderPlaced.v1"
    );
    assert_eq!(attrs["messaging.message.id"], event_a);
    assert_eq!(attrs["messaging.message.conversation_id"], "checkout-1");
    assert_eq!(attrs["causeway.event_type"], "OrderPlaced");
    assert_eq!(attrs["causeway.schema_version"], "1.0");
    assert_eq!(producer_b.attributes["causeway.causation_id"], event_a);
    assert_eq!(producer_b.attributes["messaging.message.id"], event_b);
    assert_eq!(consumer_b.name, format!("process {}", b.queue("reserve")));
    let attrs = &consumer_b.attributes;
    assert_eq!(attrs["messaging.operation.type"], "process");
    assert_eq!(attrs["messaging.message.id"], event_a);
    assert_eq!(attrs["causeway.delivery.attempt"], "1");
    assert_eq!(attrs["causeway.outcome"], "success");
    assert_eq!(consumer_c.attributes["causeway.causation_id"], event_a);
    assert_eq!(client_b.attributes["http.request.method"], "POST");
    assert_eq!(client_b.attributes["http.response.status_code"], "200");
    assert_eq!(server_a.attributes["http.response.status_code"], "202");

    // B's delivery log line carries the ids and the trace.
    let delivered = b
        .wait_for_log("event delivered", Duration::from_secs(1))
        .await;
    assert_eq!(delivered["event_id"], event_a);
    assert_eq!(delivered["correlation_id"], "checkout-1");
    assert_eq!(delivered["event_type"], "OrderPlaced");
    assert_eq!(delivered["trace_id"], consumer_b.trace_id);
    let logs = b.logs().join("\n");
    assert!(!logs.contains(r#""order":1"#), "a payload was logged");

    for sidecar in [&c, &b] {
        let name = if sidecar.service() == sb {
            "reserve"
        } else {
            "charge"
        };
        sidecar.cleanup_subscription(&broker, name).await;
    }
    a.cleanup(&broker).await;
}

#[tokio::test]
async fn a_retry_and_a_dead_letter_are_error_spans() {
    let (otlp, spans) = collector().await;
    let app = TestApp::start().await;
    app.respond("/fails", &[500]);
    app.always("/rejects", 422);
    let mut sidecar = traced(
        None,
        &otlp,
        &app,
        "[[subscriptions]]\nname = \"fails\"\nevent_type = \"A\"\nroute = \"/fails\"\nbackoff_initial_ms = 50\n\n\
         [[subscriptions]]\nname = \"rejects\"\nevent_type = \"B\"\nroute = \"/rejects\"\n",
    );
    sidecar.wait_ready().await;
    let broker = Broker::connect().await;
    sidecar.publish("A", "{}", &[]).await;
    sidecar.publish("B", "{}", &[]).await;
    app.wait_for("/fails", 2, ARRIVES).await;
    app.wait_for("/rejects", 1, ARRIVES).await;
    sidecar.wait_for_log("event dead-lettered", ARRIVES).await;
    sidecar.terminate();
    assert!(sidecar.wait_exit(ARRIVES).await.success());

    let spans = spans.lock().unwrap().clone();
    let consumers: Vec<&Span> = spans
        .iter()
        .filter(|s| s.kind == SpanKind::Consumer)
        .collect();
    let outcome = |o: &str| {
        consumers
            .iter()
            .filter(|s| s.attributes.get("causeway.outcome").map(String::as_str) == Some(o))
            .count()
    };
    assert_eq!(outcome("retry"), 1, "{consumers:#?}");
    assert_eq!(outcome("success"), 1);
    assert_eq!(outcome("dead_lettered"), 1);
    const ERROR: i32 = 2;
    for span in &consumers {
        let failed = matches!(
            span.attributes["causeway.outcome"].as_str(),
            "retry" | "dead_lettered"
        );
        assert_eq!(span.status_code == ERROR, failed, "{span:#?}");
    }

    sidecar.cleanup_subscription(&broker, "fails").await;
    sidecar.cleanup_subscription(&broker, "rejects").await;
    sidecar.cleanup(&broker).await;
}

async fn metrics(sidecar: &Sidecar) -> String {
    let response = sidecar
        .http
        .get(format!("{}/metrics", sidecar.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    response.text().await.unwrap()
}

async fn wait_metric(sidecar: &Sidecar, line: &str) -> String {
    let deadline = Instant::now() + ARRIVES;
    loop {
        let text = metrics(sidecar).await;
        if text.lines().any(|l| l == line) {
            return text;
        }
        assert!(Instant::now() < deadline, "no line {line:?} in\n{text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn metrics_expose_every_family_and_the_dead_letter_depth_rises() {
    let app = TestApp::start().await;
    app.always("/no", 422);
    let sidecar = Settings::new()
        .app(&app.url)
        .config_file(
            "[[subscriptions]]\nname = \"yes\"\nevent_type = \"Good\"\nroute = \"/yes\"\n\n\
             [[subscriptions]]\nname = \"no\"\nevent_type = \"Bad\"\nroute = \"/no\"\n",
        )
        .start();
    sidecar.wait_ready().await;
    let broker = Broker::connect().await;
    wait_metric(
        &sidecar,
        "causeway_dead_letter_depth{subscription=\"no\"} 0",
    )
    .await;

    sidecar.publish("Good", "{}", &[]).await;
    sidecar.publish("Bad", "{}", &[]).await;
    sidecar.publish("Nobody", "{}", &[]).await;
    app.wait_for("/yes", 1, ARRIVES).await;
    let text = wait_metric(
        &sidecar,
        "causeway_dead_letter_depth{subscription=\"no\"} 1",
    )
    .await;

    for expected in [
        "causeway_publishes_total{event_type=\"Good\",outcome=\"accepted\"} 1",
        "causeway_deliveries_total{subscription=\"yes\",outcome=\"success\"} 1",
        "causeway_deliveries_total{subscription=\"no\",outcome=\"dead_lettered\"} 1",
        "causeway_queue_depth{subscription=\"yes\"} 0",
        "causeway_broker_connected{connection=\"publish\"} 1",
        "causeway_broker_connected{connection=\"consume\"} 1",
        "causeway_in_flight{kind=\"publish\"} 0",
    ] {
        assert!(
            text.lines().any(|l| l == expected),
            "{expected} missing from\n{text}"
        );
    }
    for family in [
        "causeway_publish_duration_seconds_bucket",
        "causeway_delivery_duration_seconds_count{subscription=\"yes\"} 1",
        "causeway_end_to_end_seconds_count{subscription=\"yes\"} 1",
        "causeway_unrouted_events",
    ] {
        assert!(text.contains(family), "{family} missing from\n{text}");
    }
    wait_metric(&sidecar, "causeway_unrouted_events 1").await;

    sidecar.cleanup_subscription(&broker, "yes").await;
    sidecar.cleanup_subscription(&broker, "no").await;
    sidecar.cleanup(&broker).await;
}

/// Every alert in deploy/ names a severity and a runbook that exists, and every runbook
/// page belongs to an alert.
#[test]
fn every_alert_has_a_runbook() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let rules = std::fs::read_to_string(root.join("deploy/prometheus/alerts.yaml")).unwrap();
    let alerts: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .collect();
    // Absolute links: a base that users set, then the page's file name.
    let runbooks: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("runbook_url: "))
        .filter_map(|url| url.rsplit('/').next())
        .collect();
    let severities = rules
        .lines()
        .filter(|l| l.trim().starts_with("severity: "))
        .count();
    assert_eq!(alerts.len(), 7, "{alerts:?}");
    assert_eq!(runbooks.len(), alerts.len());
    assert_eq!(severities, alerts.len());
    for runbook in &runbooks {
        let page = std::fs::read_to_string(root.join("docs/runbooks").join(runbook))
            .unwrap_or_else(|_| panic!("{runbook} is missing"));
        assert!(page.starts_with("# "), "{runbook} has no title");
    }
    let pages = std::fs::read_dir(root.join("docs/runbooks"))
        .unwrap()
        .count();
    let linked: std::collections::HashSet<&&str> = runbooks.iter().collect();
    assert_eq!(pages, linked.len(), "a runbook page without an alert");
    assert!(rules.contains("causeway_dead_letter_depth) > 0"));
    assert!(rules.contains(r#"(causeway_subscription_state{state="failed"}) == 1"#));
}
