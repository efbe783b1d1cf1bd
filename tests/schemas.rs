//! Schema governance and batch publish, with the seed's OrderPlaced 1.0 and 2.0 schemas.
#![allow(clippy::unwrap_used)]

mod common;

use std::{path::PathBuf, process::Command, time::Duration};

use common::{Broker, Settings, Sidecar, app::TestApp, body};
use lapin::{BasicProperties, types::ShortString};
use serde_json::{Value, json};

const ARRIVES: Duration = Duration::from_secs(15);

fn fixtures(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(path)
}

fn schemas() -> String {
    fixtures("schemas").display().to_string()
}

fn v2(order: &str) -> Value {
    json!({"order_id": order, "total_cents": 4200, "currency": "EUR",
           "items": [{"sku": "book-1", "quantity": 2}]})
}

async fn started(settings: Settings) -> Sidecar {
    let sidecar = settings.start();
    sidecar.wait_ready().await;
    sidecar
}

#[tokio::test]
async fn publishes_are_checked_against_their_schema_version() {
    let sidecar = started(Settings::new().set("CAUSEWAY_SCHEMAS_DIR", &schemas())).await;
    let broker = Broker::connect().await;
    let mut queue = broker.bind(sidecar.exchange(), "#").await;

    let latest = sidecar
        .publish("OrderPlaced", &v2("o-1").to_string(), &[])
        .await;
    let old = sidecar
        .publish(
            "OrderPlaced",
            r#"{"order_id":"o-2","total":42.0}"#,
            &[("X-Schema-Version", "1.0")],
        )
        .await;
    let invalid = sidecar
        .publish(
            "OrderPlaced",
            r#"{"order_id":"","total_cents":-5,"currency":"XXX","items":[{"sku":"a","quantity":0}]}"#,
            &[],
        )
        .await;
    let old_shape_as_v2 = sidecar
        .publish("OrderPlaced", r#"{"order_id":"o-3","total":42.0}"#, &[])
        .await;
    let unknown_version = sidecar
        .publish(
            "OrderPlaced",
            &v2("o-4").to_string(),
            &[("X-Schema-Version", "3.0")],
        )
        .await;
    let no_schema = sidecar.publish("InvoiceSent", "{}", &[]).await;

    assert_eq!(latest.status, 202, "{latest:?}");
    assert_eq!(
        latest.body["schema_version"], "2.0",
        "the highest version is the default"
    );
    assert_eq!(old.status, 202, "{old:?}");
    assert_eq!(old.body["schema_version"], "1.0");
    assert_eq!(invalid.status, 422, "{invalid:?}");
    assert_eq!(invalid.headers["content-type"], "application/problem+json");
    let paths: Vec<&str> = invalid.body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["instance_path"].as_str().unwrap())
        .collect();
    for path in [
        "/order_id",
        "/total_cents",
        "/currency",
        "/items/0/quantity",
    ] {
        assert!(paths.contains(&path), "{path} not named in {invalid:?}");
    }
    assert!(invalid.body["errors"][0]["schema_path"].as_str().is_some());
    assert!(invalid.body["errors"][0]["message"].as_str().is_some());
    assert_eq!(old_shape_as_v2.status, 422);
    assert_eq!(unknown_version.status, 422);
    assert!(
        unknown_version.body["detail"]
            .as_str()
            .unwrap()
            .contains("registered: 1.0, 2.0")
    );
    assert_eq!(
        no_schema.status, 202,
        "types without schemas pass unless strict"
    );
    assert_eq!(no_schema.body["schema_version"], "1.0");

    let delivered: Vec<String> = common::before_marker(&sidecar, &mut queue, "Marker", &[])
        .await
        .iter()
        .map(|d| d.routing_key.to_string())
        .collect();
    assert_eq!(
        delivered,
        ["OrderPlaced.v2", "OrderPlaced.v1", "InvoiceSent.v1"]
    );

    let listed = sidecar.call("GET", "/v1/schemas", None).await;
    assert_eq!(
        listed.body,
        json!({"schemas": {"OrderPlaced": ["1.0", "2.0"]}})
    );
    let one = sidecar
        .call("GET", "/v1/schemas/OrderPlaced/2.0", None)
        .await;
    assert_eq!(one.status, 200);
    assert_eq!(one.body["title"], "OrderPlaced 2.0");
    assert_eq!(one.headers["content-type"], "application/schema+json");
    assert_eq!(
        sidecar
            .call("GET", "/v1/schemas/OrderPlaced/9.0", None)
            .await
            .status,
        404
    );

    sidecar.cleanup(&broker).await;
}

#[tokio::test]
async fn strict_mode_refuses_types_without_schemas() {
    let sidecar = started(
        Settings::new()
            .set("CAUSEWAY_SCHEMAS_DIR", &schemas())
            .set("CAUSEWAY_SCHEMAS_STRICT", "true"),
    )
    .await;
    let broker = Broker::connect().await;
    let answer = sidecar.publish("InvoiceSent", "{}", &[]).await;
    assert_eq!(answer.status, 422, "{answer:?}");
    assert!(
        answer.body["detail"]
            .as_str()
            .unwrap()
            .contains("InvoiceSent")
    );
    sidecar.cleanup(&broker).await;
}

#[tokio::test]
async fn a_subscriber_of_major_1_never_sees_a_2_0_event() {
    let app = TestApp::start().await;
    let sidecar = started(
        Settings::new()
            .app(&app.url)
            .set("CAUSEWAY_SCHEMAS_DIR", &schemas())
            .config_file(
                "[[subscriptions]]\nname = \"legacy\"\nevent_type = \"OrderPlaced\"\nversions = [1]\nroute = \"/legacy\"\nconcurrency = 1\n\n\
                 [[subscriptions]]\nname = \"current\"\nevent_type = \"OrderPlaced\"\nversions = [2]\nroute = \"/current\"\nconcurrency = 1\n",
            ),
    )
    .await;
    let broker = Broker::connect().await;

    sidecar
        .publish("OrderPlaced", &v2("o-1").to_string(), &[])
        .await;
    sidecar
        .publish(
            "OrderPlaced",
            r#"{"order_id":"o-2","total":1}"#,
            &[("X-Schema-Version", "1.0")],
        )
        .await;
    app.wait_for("/legacy", 1, ARRIVES).await;
    app.wait_for("/current", 1, ARRIVES).await;
    // A later event of each major through each subscription: after it, nothing published
    // before can still reach the app (see `common::marker`).
    let v1_marker = r#"{"order_id":"o-3","total":1}"#;
    let v1_event = common::MarkerEvent {
        event_type: "OrderPlaced",
        body: v1_marker,
        headers: &[("X-Schema-Version", "1.0")],
    };
    common::marker_event(&sidecar, &broker, &app, "legacy", "/legacy", v1_event).await;
    let v2_marker = v2("o-4").to_string();
    let v2_event = common::MarkerEvent {
        event_type: "OrderPlaced",
        body: &v2_marker,
        headers: &[],
    };
    common::marker_event(&sidecar, &broker, &app, "current", "/current", v2_event).await;

    let orders = |path: &str| -> Vec<(Value, Option<String>)> {
        app.received(path)
            .iter()
            .map(|r| {
                let version = r.header("x-schema-version").map(str::to_owned);
                (r.body["payload"]["order_id"].clone(), version)
            })
            .collect()
    };
    let v1 = |order: &str| (json!(order), Some("1.0".to_owned()));
    let v2_of = |order: &str| (json!(order), Some("2.0".to_owned()));
    assert_eq!(orders("/legacy"), [v1("o-2"), v1("o-3")]);
    assert_eq!(orders("/current"), [v2_of("o-1"), v2_of("o-4")]);

    // Who consumes which major, from the broker's bindings.
    let output = Command::new(env!("CARGO_BIN_EXE_causeway"))
        .args([
            "schema",
            "consumers",
            "OrderPlaced",
            "--exchange",
            sidecar.exchange(),
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with(&sidecar.queue("legacy")) && l.ends_with("  1")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with(&sidecar.queue("current")) && l.ends_with("  2")),
        "{text}"
    );

    sidecar.cleanup_subscription(&broker, "legacy").await;
    sidecar.cleanup_subscription(&broker, "current").await;
    sidecar.cleanup(&broker).await;
}

#[tokio::test]
async fn a_validating_subscription_dead_letters_a_mismatch_with_reason_schema() {
    let app = TestApp::start().await;
    let sidecar = started(
        Settings::new()
            .app(&app.url)
            .set("CAUSEWAY_SCHEMAS_DIR", &schemas())
            .config_file(
                "[[subscriptions]]\nname = \"strict\"\nevent_type = \"OrderPlaced\"\nroute = \"/strict\"\nvalidate = true\n",
            ),
    )
    .await;
    let broker = Broker::connect().await;
    // A producer that skipped validation put a bad 2.0 event on the queue.
    let bad = json!({
        "event_id": "01a21d27-6acf-7509-8b14-3ed3aecfd2c3", "event_type": "OrderPlaced",
        "schema_version": "2.0", "correlation_id": "c-1", "causation_id": null,
        "occurred_at": "2026-11-27T12:00:00.000000Z", "source": "elsewhere",
        "payload": {"order_id": "o-9", "total": 12.5}
    });
    broker
        .inject(
            &sidecar.queue("strict"),
            bad.to_string().as_bytes(),
            BasicProperties::default()
                .with_message_id(ShortString::from("01a21d27-6acf-7509-8b14-3ed3aecfd2c3")),
        )
        .await;
    sidecar
        .publish("OrderPlaced", &v2("o-10").to_string(), &[])
        .await;

    let received = app.wait_for("/strict", 1, ARRIVES).await;
    assert_eq!(received[0].body["payload"]["order_id"], "o-10");
    let listed = sidecar.wait_dead_letters("strict", 1, ARRIVES).await;
    let letter = &listed["dead_letters"][0];
    assert_eq!(letter["reason"], "schema");
    assert!(
        letter["last_error"]
            .as_str()
            .unwrap()
            .contains("total_cents"),
        "{letter}"
    );
    assert_eq!(
        app.received("/strict").len(),
        1,
        "the mismatch reached the app"
    );

    sidecar.cleanup_subscription(&broker, "strict").await;
    sidecar.cleanup(&broker).await;
}

#[test]
fn schema_check_names_breaking_changes_and_passes_compatible_ones() {
    let run = |old: &str, new: &str, extra: &[&str]| {
        let output = Command::new(env!("CARGO_BIN_EXE_causeway"))
            .args(["schema", "check"])
            .arg(fixtures(old))
            .arg(fixtures(new))
            .args(extra)
            .output()
            .unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
        )
    };

    let (code, text) = run(
        "schemas/OrderPlaced/1.0.json",
        "schemas/OrderPlaced/2.0.json",
        &[],
    );
    assert_eq!(code, Some(1), "{text}");
    for line in [
        "/total: property removed",
        "/total_cents: newly required",
        "/currency: newly required",
        "/items: newly required",
    ] {
        assert!(text.contains(line), "{line} not in\n{text}");
    }
    let (code, json_text) = run(
        "schemas/OrderPlaced/1.0.json",
        "schemas/OrderPlaced/2.0.json",
        &["--json"],
    );
    assert_eq!(code, Some(1));
    let report: Value = serde_json::from_str(&json_text).unwrap();
    assert_eq!(report["compatible"], false);
    assert_eq!(report["breaking"].as_array().unwrap().len(), 4);

    let (code, text) = run(
        "schemas/OrderPlaced/1.0.json",
        "compat/OrderPlaced-1.1.json",
        &[],
    );
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("no breaking change"), "{text}");
}

#[test]
fn an_invalid_schema_exits_64_naming_the_file() {
    let dir = std::env::temp_dir().join(common::unique("causeway-schemas"));
    std::fs::create_dir_all(dir.join("OrderPlaced")).unwrap();
    std::fs::write(dir.join("OrderPlaced/1.0.json"), r#"{"type": 12}"#).unwrap();
    let sidecar = Settings::new().set("CAUSEWAY_SCHEMAS_DIR", dir.to_str().unwrap());
    let output = Command::new(env!("CARGO_BIN_EXE_causeway"))
        .env_clear()
        .envs(&sidecar.env)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(64));
    // A configuration error, on stderr like the others.
    let errors = String::from_utf8_lossy(&output.stderr);
    assert!(errors.contains("CAUSEWAY_SCHEMAS_DIR"), "{errors}");
    assert!(errors.contains("OrderPlaced/1.0.json"), "{errors}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn sighup_reloads_the_schemas() {
    let dir = std::env::temp_dir().join(common::unique("causeway-schemas"));
    std::fs::create_dir_all(dir.join("OrderPlaced")).unwrap();
    std::fs::copy(
        fixtures("schemas/OrderPlaced/1.0.json"),
        dir.join("OrderPlaced/1.0.json"),
    )
    .unwrap();
    let sidecar = started(Settings::new().set("CAUSEWAY_SCHEMAS_DIR", dir.to_str().unwrap())).await;
    let broker = Broker::connect().await;
    std::fs::copy(
        fixtures("schemas/OrderPlaced/2.0.json"),
        dir.join("OrderPlaced/2.0.json"),
    )
    .unwrap();
    let status = Command::new("kill")
        .args(["-HUP", &sidecar.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    sidecar.wait_for_log("schemas reloaded", ARRIVES).await;
    let listed = sidecar.call("GET", "/v1/schemas", None).await;
    assert_eq!(listed.body["schemas"]["OrderPlaced"], json!(["1.0", "2.0"]));
    sidecar.cleanup(&broker).await;
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn a_batch_is_published_in_order_or_not_at_all() {
    let sidecar = started(Settings::new().set("CAUSEWAY_SCHEMAS_DIR", &schemas())).await;
    let broker = Broker::connect().await;
    let mut queue = broker.bind(sidecar.exchange(), "#").await;
    let items: Vec<Value> = (0..20)
        .map(|n| json!({"event_type": "OrderPlaced", "payload": v2(&format!("o-{n}")), "correlation_id": "batch-1"}))
        .collect();

    let all_valid = sidecar
        .call("POST", "/v1/publish", Some(Value::Array(items.clone())))
        .await;

    assert_eq!(all_valid.status, 200, "{all_valid:?}");
    let results = all_valid.body["results"].as_array().unwrap();
    assert_eq!(results.len(), 20);
    for (n, result) in results.iter().enumerate() {
        assert_eq!(result["index"], n);
        assert_eq!(result["status"], "accepted");
        assert_eq!(result["schema_version"], "2.0");
        assert_eq!(result["correlation_id"], "batch-1");
    }
    let order: Vec<Value> = common::before_marker(&sidecar, &mut queue, "Marker", &[])
        .await
        .iter()
        .map(|d| body(d)["payload"]["order_id"].clone())
        .collect();
    let expected: Vec<Value> = (0..20).map(|n| json!(format!("o-{n}"))).collect();
    assert_eq!(order, expected, "the queue holds the batch in its order");

    // One invalid event: nothing is published, and each result says why.
    let mut with_invalid = items[..3].to_vec();
    with_invalid[1] =
        json!({"event_type": "OrderPlaced", "payload": {"order_id": "o-x", "total": 1}});
    with_invalid.push(json!({"event_type": "9bad", "payload": {}, "schema_version": "two"}));
    let rejected = sidecar
        .call("POST", "/v1/publish", Some(Value::Array(with_invalid)))
        .await;
    assert_eq!(rejected.status, 422, "{rejected:?}");
    let results = rejected.body["results"].as_array().unwrap();
    let statuses: Vec<&str> = results
        .iter()
        .map(|r| r["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["valid", "invalid", "valid", "invalid"]);
    // A missing property is reported at its parent, naming the property.
    assert!(
        results[1]["errors"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["message"].as_str().unwrap().contains("total_cents")),
        "{rejected:?}"
    );
    let fields: Vec<&str> = results[3]["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["event_type", "schema_version"]);
    assert!(
        common::before_marker(&sidecar, &mut queue, "Marker", &[])
            .await
            .is_empty(),
        "an invalid batch published"
    );

    // A broker-side failure for one event: 207, the others confirmed.
    let first = sidecar
        .publish("Shipped", "{}", &[("Idempotency-Key", "k-207")])
        .await;
    assert_eq!(first.status, 202);
    let shipped = common::before_marker(&sidecar, &mut queue, "Marker", &[]).await;
    assert_eq!(shipped.len(), 1);
    let mixed = vec![
        json!({"event_type": "Invoiced", "payload": {"n": 1}}),
        json!({"event_type": "Invoiced", "payload": {"n": 2}, "idempotency_key": "k-207"}),
        json!({"event_type": "Invoiced", "payload": {"n": 3}}),
    ];
    let partial = sidecar
        .call("POST", "/v1/publish", Some(Value::Array(mixed)))
        .await;
    assert_eq!(partial.status, 207, "{partial:?}");
    let results = partial.body["results"].as_array().unwrap();
    let statuses: Vec<&str> = results
        .iter()
        .map(|r| r["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["accepted", "failed", "accepted"]);
    assert!(results[1]["error"].as_str().unwrap().contains("Shipped"));
    let invoiced = common::before_marker(&sidecar, &mut queue, "Marker", &[]).await;
    assert_eq!(invoiced.len(), 2);

    let not_array = sidecar
        .call("POST", "/v1/publish", Some(json!({"event_type": "A"})))
        .await;
    assert_eq!(not_array.status, 422);
    let empty = sidecar.call("POST", "/v1/publish", Some(json!([]))).await;
    assert_eq!(empty.status, 422);

    sidecar.cleanup(&broker).await;
}

#[tokio::test]
async fn bad_path_and_query_parameters_are_problems_too() {
    let sidecar = started(Settings::new().set("CAUSEWAY_SCHEMAS_DIR", &schemas())).await;
    let broker = Broker::connect().await;
    for (case, path) in [
        (
            "invalid UTF-8 in a subscription name",
            "/v1/subscriptions/%FF",
        ),
        ("invalid UTF-8 in a schema path", "/v1/schemas/%FF/1.0"),
        (
            "a repeated limit",
            "/v1/subscriptions/any/dead-letters?limit=1&limit=2",
        ),
        (
            "a limit that is not a number",
            "/v1/subscriptions/any/dead-letters?limit=many",
        ),
    ] {
        let answer = sidecar.call("GET", path, None).await;
        assert_eq!(answer.status, 400, "{case}: {answer:?}");
        assert_eq!(
            answer.headers["content-type"], "application/problem+json",
            "{case}"
        );
        assert_eq!(answer.body["status"], 400, "{case}");
        assert!(
            !answer.body["detail"].as_str().unwrap().is_empty(),
            "{case}"
        );
    }
    sidecar.cleanup(&broker).await;
}
