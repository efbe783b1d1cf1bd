//! Hostile and careless input against the real binary: payloads outside the grammar, routes
//! that are not URIs, `null` where a list belongs, trace headers out of bounds, wrong tokens
//! of every length, and control characters in header values.
#![allow(clippy::unwrap_used)]

mod common;

use std::{path::PathBuf, process::Command, time::Duration};

use common::{Answer, Broker, Settings, Sidecar, app::TestApp, body, header};
use lapin::{BasicProperties, types::ShortString};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

const ARRIVES: Duration = Duration::from_secs(15);

/// The schema of the report: no top-level `"type"`, so `null` would pass it.
const UNTYPED: &str = r#"{"required":["order_id"],"properties":{"order_id":{"type":"string","minLength":1},"total":{"minimum":0}}}"#;

/// Writes `Untyped/1.0.json` and `Typed/1.0.json` (`{"type":"object"}`) into the data
/// directory and points the sidecar at them.
fn with_schemas(settings: Settings) -> Settings {
    let dir = PathBuf::from(settings.get("CAUSEWAY_DATA_DIR")).join("schemas");
    for (event_type, schema) in [("Untyped", UNTYPED), ("Typed", r#"{"type":"object"}"#)] {
        std::fs::create_dir_all(dir.join(event_type)).unwrap();
        std::fs::write(dir.join(event_type).join("1.0.json"), schema).unwrap();
    }
    let dir = dir.display().to_string();
    settings.set("CAUSEWAY_SCHEMAS_DIR", &dir)
}

async fn started(settings: Settings) -> Sidecar {
    let sidecar = settings.start();
    sidecar.wait_ready().await;
    sidecar
}

/// POSTs `body` as written (serde_json cannot write `1e400` or a repeated name).
async fn post(sidecar: &Sidecar, path: &str, body: &str) -> Answer {
    let request = sidecar
        .http
        .post(format!("{}{path}", sidecar.api))
        .header("content-type", "application/json")
        .body(body.to_owned());
    common::read(request.send().await.unwrap()).await
}

fn nested(depth: usize) -> String {
    format!("{}1{}", "[".repeat(depth), "]".repeat(depth))
}

fn assert_malformed(answer: &Answer, pointer: &str) {
    assert_eq!(answer.status, 400, "{answer:?}");
    assert_eq!(answer.headers["content-type"], "application/problem+json");
    assert_eq!(
        answer.body["type"], "urn:causeway:problem:malformed-payload",
        "{answer:?}"
    );
    let named = answer.body["errors"][0]["instance_path"].as_str().unwrap();
    assert!(
        named.starts_with(pointer),
        "{pointer} not named: {answer:?}"
    );
}

#[tokio::test]
async fn a_payload_outside_the_grammar_is_a_400_naming_where_and_is_never_published() {
    let sidecar = started(with_schemas(Settings::new())).await;
    let broker = Broker::connect().await;
    let mut queue = broker.bind(sidecar.exchange(), "#").await;

    let mismatch = post(
        &sidecar,
        "/v1/publish/Untyped",
        r#"{"order_id":"o","total":-5}"#,
    )
    .await;
    assert_eq!(mismatch.status, 422, "{mismatch:?}");
    let huge = post(
        &sidecar,
        "/v1/publish/Untyped",
        r#"{"order_id":"o","total":-5,"x":1e400}"#,
    )
    .await;
    assert_malformed(&huge, "/x");
    assert!(
        huge.body["detail"]
            .as_str()
            .unwrap()
            .contains("out of the range of a double"),
        "{huge:?}"
    );
    let deep = format!(r#"{{"order_id":"o","total":-5,"x":{}}}"#, nested(200));
    let deep = post(&sidecar, "/v1/publish/Untyped", &deep).await;
    assert_malformed(&deep, "/x/0/0/0");
    assert!(
        deep.body["detail"]
            .as_str()
            .unwrap()
            .contains("more than 32 levels"),
        "{deep:?}"
    );
    let twice = post(
        &sidecar,
        "/v1/publish/Untyped",
        r#"{"order_id":"o","total":5,"total":-5}"#,
    )
    .await;
    assert_malformed(&twice, "/total");
    let surrogate = post(&sidecar, "/v1/publish/NoSchema", r#"{"s":"\ud800"}"#).await;
    assert_malformed(&surrogate, "/s");
    let without_schema = post(&sidecar, "/v1/publish/NoSchema", r#"[-1e400]"#).await;
    assert_malformed(&without_schema, "/0");
    let too_deep = post(&sidecar, "/v1/publish/NoSchema", &nested(33)).await;
    assert_malformed(&too_deep, "/0");

    // Within the grammar: a valid object is an object (not `null`) to a typed schema, the
    // deepest nesting allowed passes, and the bytes go out as they came.
    let typed = post(
        &sidecar,
        "/v1/publish/Typed",
        r#"{"order_id":"o","x":[1e308]}"#,
    )
    .await;
    assert_eq!(typed.status, 202, "{typed:?}");
    let deepest = post(&sidecar, "/v1/publish/NoSchema", &nested(32)).await;
    assert_eq!(deepest.status, 202, "{deepest:?}");

    let published = common::before_marker(&sidecar, &mut queue, "Marker", &[]).await;
    let keys: Vec<String> = published
        .iter()
        .map(|d| d.routing_key.to_string())
        .collect();
    assert_eq!(
        keys,
        ["Typed.v1", "NoSchema.v1"],
        "only the accepted events"
    );
    let text = String::from_utf8(published[0].data.clone()).unwrap();
    assert!(
        text.contains(r#""payload":{"order_id":"o","x":[1e308]}"#),
        "{text}"
    );
    println!(
        "refused 6 payloads outside the grammar, published the 2 within it; none of the refused reached the broker"
    );
    sidecar.cleanup(&broker).await;
}

#[tokio::test]
async fn a_batch_with_a_payload_outside_the_grammar_is_a_400_naming_the_item() {
    let sidecar = started(with_schemas(Settings::new())).await;
    let broker = Broker::connect().await;
    let mut queue = broker.bind(sidecar.exchange(), "#").await;

    let batch = format!(
        r#"[{{"event_type":"Untyped","payload":{{"order_id":"o"}}}},
            {{"event_type":"Untyped","payload":{{"order_id":"o","total":-5,"x":1e400}}}},
            {{"event_type":"NoSchema","payload":{{"deep":{}}}}},
            {{"event_type":"Untyped","payload":{{"order_id":"o","total":-5}}}}]"#,
        nested(100)
    );
    let answer = post(&sidecar, "/v1/publish", &batch).await;
    assert_eq!(answer.status, 400, "{answer:?}");
    assert_eq!(
        answer.body["type"],
        "urn:causeway:problem:malformed-payload"
    );
    let results = answer.body["results"].as_array().unwrap();
    let statuses: Vec<&str> = results
        .iter()
        .map(|r| r["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["valid", "invalid", "invalid", "invalid"]);
    assert_eq!(results[1]["errors"][0]["instance_path"], "/x");
    assert_eq!(results[1]["errors"][0]["field"], "payload");
    assert!(
        results[2]["errors"][0]["instance_path"]
            .as_str()
            .unwrap()
            .starts_with("/deep/0/0"),
        "{answer:?}"
    );
    assert_eq!(results[3]["errors"][0]["instance_path"], "/total");

    // Optional item fields take `null` as absent, as the description says.
    let nulls = post(
        &sidecar,
        "/v1/publish",
        r#"[{"event_type":"NoSchema","payload":{},"causation_id":null,"correlation_id":null,
             "schema_version":null,"idempotency_key":null}]"#,
    )
    .await;
    assert_eq!(nulls.status, 200, "{nulls:?}");
    assert_eq!(nulls.body["results"][0]["causation_id"], Value::Null);

    let published = common::before_marker(&sidecar, &mut queue, "Marker", &[]).await;
    assert_eq!(published.len(), 1, "only the batch of nulls was published");
    assert_eq!(published[0].routing_key.as_str(), "NoSchema.v1");
    sidecar.cleanup(&broker).await;
}

#[tokio::test]
async fn a_validating_subscription_dead_letters_a_payload_outside_the_grammar() {
    let app = TestApp::start().await;
    let sidecar = started(with_schemas(Settings::new().app(&app.url).config_file(
        "[[subscriptions]]\nname = \"strict\"\nevent_type = \"Untyped\"\nroute = \"/strict\"\nvalidate = true\n",
    )))
    .await;
    let broker = Broker::connect().await;
    // Another producer, which never went through the grammar, put these on the queue.
    let payloads = [
        r#"{"order_id":"o","total":-5,"x":1e400}"#.to_owned(),
        format!(r#"{{"order_id":"o","total":-5,"x":{}}}"#, nested(200)),
        r#"{"order_id":"o","total":5,"total":-5}"#.to_owned(),
    ];
    for (n, payload) in payloads.iter().enumerate() {
        let id = format!("01a21d27-6acf-7509-8b14-3ed3aecfd2c{n}");
        let envelope = format!(
            r#"{{"event_id":"{id}","event_type":"Untyped","schema_version":"1.0","correlation_id":"c-{n}",
                "causation_id":null,"occurred_at":"2026-11-27T12:00:00.000000Z","source":"elsewhere",
                "payload":{payload}}}"#
        );
        broker
            .inject(
                &sidecar.queue("strict"),
                envelope.as_bytes(),
                BasicProperties::default().with_message_id(ShortString::from(id)),
            )
            .await;
    }
    let good = sidecar
        .publish("Untyped", r#"{"order_id":"o-good","total":1}"#, &[])
        .await;
    assert_eq!(good.status, 202, "{good:?}");

    let received = app.wait_for("/strict", 1, ARRIVES).await;
    assert_eq!(received[0].body["payload"]["order_id"], "o-good");
    let listed = sidecar.wait_dead_letters("strict", 3, ARRIVES).await;
    let letters = listed["dead_letters"].as_array().unwrap();
    let mut named = Vec::new();
    for letter in letters {
        assert_eq!(letter["reason"], "schema", "{letter}");
        let last_error = letter["last_error"].as_str().unwrap();
        assert!(last_error.starts_with("the payload at /"), "{last_error}");
        named.push(last_error.to_owned());
    }
    assert!(
        named.iter().any(|e| e.contains("/x: a number")),
        "{named:?}"
    );
    assert!(named.iter().any(|e| e.contains("32 levels")), "{named:?}");
    assert!(named.iter().any(|e| e.contains("/total")), "{named:?}");
    assert_eq!(
        app.received("/strict").len(),
        1,
        "a bad payload reached the app"
    );
    println!(
        "dead-lettered {} of 3 bad payloads as schema; delivered 1 good",
        letters.len()
    );

    sidecar.cleanup_subscription(&broker, "strict").await;
    sidecar.cleanup(&broker).await;
}

#[tokio::test]
async fn a_route_that_is_not_a_uri_path_is_refused_by_the_api_and_in_the_config_file() {
    let sidecar = started(Settings::new()).await;
    for route in ["/a<b>", "/a b", "/a#b", "/a%zz", "/caf\u{e9}"] {
        let answer = sidecar
            .call(
                "PUT",
                "/v1/subscriptions/bad-route",
                Some(json!({"event_type": "OrderPlaced", "route": route})),
            )
            .await;
        assert_eq!(answer.status, 422, "{route}: {answer:?}");
        assert_eq!(answer.body["errors"][0]["field"], "route", "{answer:?}");
    }
    let listed = sidecar.call("GET", "/v1/subscriptions", None).await;
    assert_eq!(listed.body["subscriptions"], json!([]), "nothing was made");

    let settings = Settings::new().config_file(
        "[[subscriptions]]\nname = \"bad\"\nevent_type = \"OrderPlaced\"\nroute = \"/a<b>\"\n",
    );
    let output = Command::new(env!("CARGO_BIN_EXE_causeway"))
        .env_clear()
        .envs(&settings.env)
        .output()
        .unwrap();
    let logs = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(output.status.code(), Some(64), "{logs}");
    assert!(logs.contains("route"), "{logs}");
    let _ = std::fs::remove_dir_all(settings.get("CAUSEWAY_DATA_DIR"));
}

#[tokio::test]
async fn null_is_not_absent_where_absent_means_all() {
    let app = TestApp::start().await;
    let sidecar = started(Settings::new().app(&app.url)).await;
    let broker = Broker::connect().await;

    let versions = sidecar
        .call(
            "PUT",
            "/v1/subscriptions/nulls",
            Some(json!({"event_type": "OrderPlaced", "route": "/n", "versions": null})),
        )
        .await;
    assert_eq!(versions.status, 422, "{versions:?}");
    assert!(
        versions.body["detail"].as_str().unwrap().contains("null"),
        "{versions:?}"
    );
    let made = sidecar
        .call(
            "PUT",
            "/v1/subscriptions/nulls",
            Some(json!({"event_type": "OrderPlaced", "route": "/n"})),
        )
        .await;
    assert_eq!(made.status, 201, "{made:?}");
    assert_eq!(
        made.body.get("versions"),
        None,
        "absent means every version"
    );

    let replay = "/v1/subscriptions/nulls/dead-letters/replay";
    let null_ids = sidecar
        .call("POST", replay, Some(json!({"event_ids": null})))
        .await;
    assert_eq!(null_ids.status, 422, "{null_ids:?}");
    assert_eq!(null_ids.headers["content-type"], "application/problem+json");
    let all = sidecar.call("POST", replay, Some(json!({}))).await;
    assert_eq!(all.status, 200, "{all:?}");
    assert_eq!(all.body["replayed"], 0);

    sidecar.cleanup_subscription(&broker, "nulls").await;
    sidecar.cleanup(&broker).await;
}

/// A valid W3C tracestate of `len` bytes: four members, values of at most 256 characters.
fn tracestate(len: usize) -> String {
    let members: Vec<String> = (0..4)
        .map(|n| format!("m{n}={}", "v".repeat(120)))
        .collect();
    let mut text = members.join(",");
    text.push_str(&"v".repeat(len - text.len()));
    assert_eq!(text.len(), len);
    text
}

#[tokio::test]
async fn a_tracestate_over_512_bytes_is_ignored_not_refused() {
    let sidecar = started(Settings::new()).await;
    let broker = Broker::connect().await;
    let mut queue = broker.bind(sidecar.exchange(), "Traced.v1").await;
    let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let longest = tracestate(512);
    let too_long = tracestate(513);

    for tracestate in [&longest, &too_long] {
        let answer = sidecar
            .publish(
                "Traced",
                "{}",
                &[("traceparent", traceparent), ("tracestate", tracestate)],
            )
            .await;
        assert_eq!(answer.status, 202, "{answer:?}");
    }
    let first = queue.next(ARRIVES).await.unwrap();
    let second = queue.next(ARRIVES).await.unwrap();
    let carried = |d: &lapin::message::Delivery| header(&d.properties, "tracestate");
    assert_eq!(carried(&first).as_deref(), Some(longest.as_str()));
    assert_eq!(
        carried(&second),
        None,
        "a tracestate over 512 bytes travelled"
    );
    assert!(header(&second.properties, "traceparent").is_some());
    assert_eq!(body(&second)["event_type"], "Traced");
    sidecar.cleanup(&broker).await;
}

#[tokio::test]
async fn only_the_token_itself_opens_the_api_whatever_length_is_tried() {
    let token = "s3cret-token-of-32-characters-xx";
    let sidecar = started(Settings::new().set("CAUSEWAY_API_TOKEN", token)).await;
    let broker = Broker::connect().await;
    let wrong_same_length = format!("{}y", &token[..token.len() - 1]);
    let longer = format!("{token}x");
    let tries = [
        None,
        Some(""),
        Some("s"),
        Some(&token[..token.len() - 1]),
        Some(wrong_same_length.as_str()),
        Some(longer.as_str()),
        Some("S3CRET-TOKEN-OF-32-CHARACTERS-XX"),
    ];
    for presented in tries {
        let mut request = sidecar
            .http
            .post(format!("{}/v1/publish/Locked", sidecar.api))
            .header("content-type", "application/json")
            .body("{}");
        if let Some(presented) = presented {
            request = request.header("authorization", format!("Bearer {presented}"));
        }
        let answer = common::read(request.send().await.unwrap()).await;
        assert_eq!(answer.status, 401, "{presented:?}: {answer:?}");
        assert_eq!(answer.headers["www-authenticate"], "Bearer");
    }
    let right = sidecar
        .publish(
            "Locked",
            "{}",
            &[("authorization", &format!("Bearer {token}"))],
        )
        .await;
    assert_eq!(right.status, 202, "{right:?}");
    assert!(
        !sidecar.logs().iter().any(|line| line.contains(token)),
        "the token was logged"
    );
    sidecar.cleanup(&broker).await;
}

/// Sends `request` as raw bytes and reads the answer until the server closes.
async fn raw_request(sidecar: &Sidecar, request: &[u8]) -> (u16, String) {
    let addr = sidecar.api.trim_start_matches("http://");
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(ARRIVES, stream.read_to_end(&mut answer))
        .await
        .expect("the server answers and closes")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, answer)
}

fn publish_with_correlation(value: &[u8]) -> Vec<u8> {
    let mut request = b"POST /v1/publish/Ctl HTTP/1.1\r\nHost: causeway\r\nConnection: close\r\n\
Content-Type: application/json\r\nContent-Length: 2\r\nX-Correlation-ID: "
        .to_vec();
    request.extend_from_slice(value);
    request.extend_from_slice(b"\r\n\r\n{}");
    request
}

#[tokio::test]
async fn control_characters_in_header_values_never_publish() {
    let sidecar = started(Settings::new()).await;
    let broker = Broker::connect().await;
    let mut queue = broker.bind(sidecar.exchange(), "Ctl.v1").await;

    // The HTTP parser refuses these before any handler runs: its own 400, with no body.
    for value in [&b"a\0b"[..], b"a\x01b", b"a\x1bb", b"a\x7fb"] {
        let (status, answer) = raw_request(&sidecar, &publish_with_correlation(value)).await;
        assert_eq!(status, 400, "{value:?}: {answer}");
        assert!(answer.ends_with("\r\n\r\n"), "a body came with: {answer}");
    }
    // These reach the API, which answers problem+json naming the header.
    for value in [&b"a\tb"[..], b"caf\xc3\xa9", b"\xff"] {
        let (status, answer) = raw_request(&sidecar, &publish_with_correlation(value)).await;
        assert_eq!(status, 400, "{value:?}: {answer}");
        assert!(
            answer.contains("application/problem+json") && answer.contains("x-correlation-id"),
            "{answer}"
        );
    }
    let (status, answer) = raw_request(&sidecar, &publish_with_correlation(b"fine")).await;
    assert_eq!(status, 202, "{answer}");
    let published = common::before_marker(&sidecar, &mut queue, "Ctl", &[]).await;
    let correlations: Vec<Value> = published
        .iter()
        .map(|d| body(d)["correlation_id"].clone())
        .collect();
    assert_eq!(correlations, ["fine"], "a refused request published");
    sidecar.cleanup(&broker).await;
}
