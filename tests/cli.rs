//! `causeway dlq …` and `causeway flow …` against a running sidecar, with replay by flow;
//! `causeway schema consumers` over a list of management addresses.
#![allow(clippy::unwrap_used)]

mod common;

use std::{process::Command, time::Duration};

use common::{Broker, Settings, app::TestApp};
use serde_json::json;

fn causeway(args: &[&str]) -> (i32, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_causeway"))
        .args(args)
        .env_remove("CAUSEWAY_API_TOKEN")
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test]
async fn dlq_list_replay_and_purge_work_through_the_api() {
    let app = TestApp::start().await;
    app.always("/cli", 422);
    let token = "cli-token-0123456789";
    let sidecar = Settings::new()
        .app(&app.url)
        .set("CAUSEWAY_API_TOKEN", token)
        .config_file(
            "[[subscriptions]]\nname = \"cli\"\nevent_type = \"OrderPlaced\"\nroute = \"/cli\"\n",
        )
        .start();
    sidecar.wait_ready().await;
    let broker = Broker::connect().await;
    let bearer = format!("Bearer {token}");
    let mut ids = Vec::new();
    for _ in 0..2 {
        let published = sidecar
            .publish("OrderPlaced", "{}", &[("Authorization", bearer.as_str())])
            .await;
        ids.push(published.body["event_id"].as_str().unwrap().to_owned());
    }
    app.wait_for("/cli", 2, Duration::from_secs(15)).await;
    let api = sidecar.api.as_str();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let listing = loop {
        let (code, out, err) = causeway(&["dlq", "list", "cli", "--api", api, "--token", token]);
        assert_eq!(code, 0, "{err}");
        if out.contains("2 of 2 dead letters") {
            break out;
        }
        assert!(std::time::Instant::now() < deadline, "{out}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(listing.starts_with("EVENT ID"), "{listing}");
    assert!(
        listing.contains(&ids[0]) && listing.contains(&ids[1]),
        "{listing}"
    );
    assert!(listing.contains("rejected"), "{listing}");
    assert!(listing.contains("422"), "{listing}");
    let (code, out, err) = causeway(&[
        "dlq", "list", "cli", "--output", "json", "--api", api, "--token", token,
    ]);
    assert_eq!(code, 0, "{err}");
    let listed: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(listed["total"], 2, "{out}");
    let letters = listed["dead_letters"].as_array().unwrap();
    assert!(letters.iter().all(|l| l["reason"] == "rejected"), "{out}");

    let (code, _, err) = causeway(&["dlq", "list", "cli", "--api", api]);
    assert_eq!(code, 1);
    assert!(err.contains("401"), "{err}");

    app.always("/cli", 200);
    let (code, out, err) = causeway(&[
        "dlq", "replay", "cli", &ids[0], "--api", api, "--token", token,
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "replayed 1\n");
    app.wait_for("/cli", 3, Duration::from_secs(15)).await;

    let (code, _, err) = causeway(&["dlq", "purge", "cli", "--api", api, "--token", token]);
    assert_eq!(code, 2);
    assert!(err.contains("--yes"), "{err}");
    let (code, out, err) = causeway(&[
        "dlq", "purge", "cli", "--yes", "--api", api, "--token", token,
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "purged 1\n");

    let closed = closed_port();
    let (code, _, err) = causeway(&[
        "dlq",
        "list",
        "cli",
        "--api",
        &format!("http://127.0.0.1:{closed}"),
    ]);
    assert_eq!(code, 69, "{err}");

    sidecar.cleanup_subscription(&broker, "cli").await;
    sidecar.cleanup(&broker).await;
}

/// The event ids the app received on `route`, after the first `skip`.
fn received_ids(app: &TestApp, route: &str, skip: usize) -> Vec<String> {
    let received = app.received(route);
    received[skip.min(received.len())..]
        .iter()
        .map(|r| r.event_id())
        .collect()
}

#[tokio::test]
async fn replay_by_flow_moves_only_that_flows_dead_letters_in_order() {
    let app = TestApp::start().await;
    app.always("/one", 422);
    app.always("/two", 422);
    // One delivery at a time: the app receives the events in queue order.
    let subscription = |name: &str| {
        format!(
            "[[subscriptions]]\nname = \"{name}\"\nevent_type = \"OrderPlaced\"\nroute = \"/{name}\"\nconcurrency = 1\n"
        )
    };
    let sidecar = Settings::new()
        .app(&app.url)
        .config_file(&(subscription("one") + &subscription("two")))
        .start();
    sidecar.wait_ready().await;
    let broker = Broker::connect().await;
    let (flow_a, flow_b) = (common::unique("flow-a"), common::unique("flow-b"));
    let mut ids = std::collections::HashMap::<&str, Vec<String>>::new();
    for flow in [&flow_a, &flow_b, &flow_a, &flow_b] {
        let published = sidecar
            .publish("OrderPlaced", "{}", &[("X-Correlation-ID", flow.as_str())])
            .await;
        assert_eq!(published.status, 202, "{published:?}");
        let id = published.body["event_id"].as_str().unwrap().to_owned();
        ids.entry(flow.as_str()).or_default().push(id);
    }
    let (a_ids, b_ids) = (ids[flow_a.as_str()].clone(), ids[flow_b.as_str()].clone());
    for name in ["one", "two"] {
        sidecar
            .wait_dead_letters(name, 4, Duration::from_secs(15))
            .await;
    }

    // Asking wrongly changes nothing.
    let replay_one = "/v1/subscriptions/one/dead-letters/replay";
    for body in [
        json!({"correlation_id": ""}),
        json!({"correlation_id": "x".repeat(129)}),
        json!({"correlation_id": "tab\there"}),
        json!({"correlation_id": flow_a, "event_ids": [a_ids[0]]}),
    ] {
        let answer = sidecar.call("POST", replay_one, Some(body.clone())).await;
        assert_eq!(answer.status, 422, "{body}: {answer:?}");
        assert_eq!(
            answer.body["errors"][0]["field"], "correlation_id",
            "{answer:?}"
        );
    }
    for id in ["x".repeat(129), "tab%09here".to_owned()] {
        let answer = sidecar
            .call("POST", &format!("/v1/flows/{id}/replay"), None)
            .await;
        assert_eq!(answer.status, 400, "{answer:?}");
        assert_eq!(
            answer.body["type"], "urn:causeway:problem:invalid-correlation-id",
            "{answer:?}"
        );
    }

    // One subscription, one flow: only flow A's letters go, in their order.
    app.always("/one", 200);
    let answer = sidecar
        .call("POST", replay_one, Some(json!({"correlation_id": flow_a})))
        .await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.body, json!({"replayed": 2, "not_found": []}));
    app.wait_for("/one", 6, Duration::from_secs(15)).await;
    assert_eq!(received_ids(&app, "/one", 4), a_ids);
    let left = sidecar.dead_letters("one").await;
    let left: Vec<&str> = left["dead_letters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["correlation_id"].as_str().unwrap())
        .collect();
    assert_eq!(left, [flow_b.as_str(), flow_b.as_str()]);
    assert_eq!(sidecar.dead_letters("two").await["total"], 4);

    // The whole flow, every subscription: `causeway flow replay`.
    app.always("/two", 200);
    let api = sidecar.api.as_str();
    let (code, out, err) = causeway(&["flow", "replay", &flow_b, "--api", api]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "replayed 4\n  one  2\n  two  2\n");
    app.wait_for("/one", 8, Duration::from_secs(15)).await;
    app.wait_for("/two", 6, Duration::from_secs(15)).await;
    assert_eq!(received_ids(&app, "/one", 6), b_ids);
    assert_eq!(received_ids(&app, "/two", 4), b_ids);
    assert_eq!(sidecar.dead_letters("one").await["total"], 0);

    // What flow B left in the queue of two is still in order: flow A, by the CLI.
    let (code, out, err) = causeway(&[
        "dlq",
        "replay",
        "two",
        "--correlation-id",
        &flow_a,
        "--api",
        api,
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "replayed 2\n");
    app.wait_for("/two", 8, Duration::from_secs(15)).await;
    assert_eq!(received_ids(&app, "/two", 6), a_ids);

    let answer = sidecar
        .call("POST", &format!("/v1/flows/{flow_a}/replay"), None)
        .await;
    assert_eq!(answer.body, json!({"replayed": 0, "subscriptions": {}}));

    for name in ["one", "two"] {
        sidecar.cleanup_subscription(&broker, name).await;
    }
    sidecar.cleanup(&broker).await;
}

/// [`causeway`] off the test's thread: a watch waits for deliveries to the test's app.
async fn causeway_async(args: &[&str]) -> (i32, String, String) {
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        causeway(&args.iter().map(String::as_str).collect::<Vec<_>>())
    })
    .await
    .unwrap()
}

/// `causeway flow ARGS` until its output has `wanted`, within 20 s; the output.
async fn flow_until(args: &[&str], wanted: &str) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (code, out, err) = causeway_async(&[&["flow"], args].concat()).await;
        if code == 0 && out.contains(wanted) {
            return out;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no {wanted:?} in time: {code} {out} {err}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

const REDIS: &str = "redis://127.0.0.1:6379/";

/// Removes from the shared Redis the routes on `exchange` and the receipts of the flow
/// `correlation_id`, once their sidecars are gone.
async fn forget_flow(exchange: &str, correlation_id: &str, event_ids: &[String]) {
    let client = redis::Client::open(REDIS).unwrap();
    let mut redis = client.get_multiplexed_async_connection().await.unwrap();
    let routes: Vec<String> = redis::cmd("HKEYS")
        .arg("causeway:flows:routes")
        .query_async(&mut redis)
        .await
        .unwrap();
    for route in routes {
        if route.starts_with(&format!("{exchange}/")) {
            let _: i64 = redis::cmd("HDEL")
                .arg("causeway:flows:routes")
                .arg(&route)
                .query_async(&mut redis)
                .await
                .unwrap();
        }
    }
    let mut keys = vec![format!("causeway:flow:{correlation_id}")];
    keys.extend(
        event_ids
            .iter()
            .map(|id| format!("causeway:flow-event:{id}")),
    );
    let _: i64 = redis::cmd("DEL")
        .arg(&keys)
        .query_async(&mut redis)
        .await
        .unwrap();
    let _: i64 = redis::cmd("ZREM")
        .arg("causeway:flows:recent")
        .arg(correlation_id)
        .query_async(&mut redis)
        .await
        .unwrap();
}

#[tokio::test]
async fn flow_shows_a_settled_flow_across_two_sidecars_as_a_tree() {
    let app = TestApp::start().await;
    let (placed, reserved) = ("OrderPlaced", "StockReserved");
    let subscription = |name: &str, event_type: &str| {
        format!(
            "[[subscriptions]]\nname = \"{name}\"\nevent_type = \"{event_type}\"\nroute = \"/{name}\"\n"
        )
    };
    let order = Settings::new()
        .app(&app.url)
        .set("CAUSEWAY_DEDUP_URL", REDIS)
        .config_file(&subscription("audit", reserved));
    // One exchange (and so one unrouted queue, its alternate) for both services.
    let exchange = order.get("CAUSEWAY_EXCHANGE").to_owned();
    let unrouted = order.get("CAUSEWAY_UNROUTED_QUEUE").to_owned();
    let inventory = Settings::new()
        .app(&app.url)
        .set("CAUSEWAY_DEDUP_URL", REDIS)
        .set("CAUSEWAY_EXCHANGE", &exchange)
        .set("CAUSEWAY_UNROUTED_QUEUE", &unrouted)
        .config_file(&subscription("reserve", placed));
    let (order, inventory) = (order.start(), inventory.start());
    order.wait_ready().await;
    inventory.wait_ready().await;
    let broker = Broker::connect().await;
    // The inventory app reacts to the order by publishing that the stock is reserved.
    app.react("/reserve", &inventory.api, reserved);
    let correlation_id = common::unique("order");
    let published = order
        .publish(placed, "{}", &[("X-Correlation-ID", &correlation_id)])
        .await;
    assert_eq!(published.status, 202, "{published:?}");
    let placed_id = published.body["event_id"].as_str().unwrap().to_owned();
    app.wait_for("/audit", 1, Duration::from_secs(20)).await;
    let reserved_id = app.received("/audit")[0].event_id();

    let api = order.api.as_str();
    let (svc_order, svc_inventory) = (order.service(), inventory.service());
    let out = flow_until(&[&correlation_id, "--api", api], "  settled").await;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 5, "{out}");
    assert_eq!(
        lines[0],
        format!("{correlation_id}  settled  scope: shared")
    );
    assert!(
        lines[1].starts_with(&format!("{placed} v1.0 ({svc_order}) {}…", &placed_id[..8])),
        "{out}"
    );
    assert!(
        lines[2].starts_with(&format!("│ → {svc_inventory}/reserve  delivered  in ")),
        "{out}"
    );
    assert!(lines[2].ends_with(" ms after 1 attempt"), "{out}");
    assert!(
        lines[3].starts_with(&format!("└─ {reserved} v1.0 ({svc_inventory}) ")),
        "{out}"
    );
    assert!(
        lines[4].starts_with(&format!("     → {svc_order}/audit  delivered  in ")),
        "{out}"
    );

    // The same flow, found by one of its events, and seen settled by a watch.
    let (code, by_event, err) =
        causeway_async(&["flow", "--event-id", &reserved_id, "--api", api]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(by_event, out);
    let (code, watched, err) = causeway_async(&[
        "flow",
        &correlation_id,
        "--watch",
        "--timeout",
        "10s",
        "--api",
        api,
    ])
    .await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(watched, out);
    // For scripts: the API's answer.
    let (code, json, err) =
        causeway_async(&["flow", &correlation_id, "--output", "json", "--api", api]).await;
    assert_eq!(code, 0, "{err}");
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json["state"], "settled");
    assert_eq!(json["events"][0]["event_id"], placed_id.as_str());
    assert_eq!(json["events"][1]["causation_id"], placed_id.as_str());

    order.cleanup_subscription(&broker, "audit").await;
    inventory.cleanup_subscription(&broker, "reserve").await;
    order.cleanup(&broker).await;
    inventory.cleanup(&broker).await;
    drop((order, inventory));
    forget_flow(&exchange, &correlation_id, &[placed_id, reserved_id]).await;
}

#[tokio::test]
async fn flow_shows_a_stuck_flow_with_its_dead_letter_until_a_replay_settles_it() {
    let app = TestApp::start().await;
    app.always("/reserve", 422);
    let placed = common::unique("OrderPlaced");
    let sidecar = Settings::new()
        .app(&app.url)
        .config_file(&format!(
            "[[subscriptions]]\nname = \"reserve\"\nevent_type = \"{placed}\"\nroute = \"/reserve\"\n"
        ))
        .start();
    sidecar.wait_ready().await;
    let broker = Broker::connect().await;
    let correlation_id = common::unique("order");
    let published = sidecar
        .publish(&placed, "{}", &[("X-Correlation-ID", &correlation_id)])
        .await;
    assert_eq!(published.status, 202, "{published:?}");
    sidecar
        .wait_dead_letters("reserve", 1, Duration::from_secs(15))
        .await;

    let api = sidecar.api.as_str();
    let svc = sidecar.service();
    let out = flow_until(&[&correlation_id, "--api", api], "dead_lettered").await;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(
        lines[0].starts_with(&format!(
            "{correlation_id}  stuck: {svc}/reserve dead-lettered"
        )),
        "{out}"
    );
    assert!(lines[0].ends_with("  scope: local"), "{out}");
    assert!(
        lines[1].starts_with(&format!("{placed} v1.0 ({svc}) ")),
        "{out}"
    );
    assert_eq!(
        lines[2],
        format!(
            "  → {svc}/reserve  dead_lettered  rejected: the app answered 422 (1 attempt) → {svc}.reserve.dlq"
        )
    );
    // A watch that runs out of time on a stuck flow fails.
    let (code, watched, _) = causeway_async(&[
        "flow",
        &correlation_id,
        "--watch",
        "--timeout",
        "1s",
        "--api",
        api,
    ])
    .await;
    assert_eq!(code, 1, "{watched}");
    assert_eq!(watched, out);

    // What is not a flow.
    let unknown = common::unique("no-such-flow");
    let (code, _, err) = causeway_async(&["flow", &unknown, "--api", api]).await;
    assert_eq!(code, 1);
    assert!(err.contains("404") && err.contains(&unknown), "{err}");
    let (code, _, err) = causeway_async(&["flow", "tab\there", "--api", api]).await;
    assert_eq!(code, 1);
    assert!(err.contains("400"), "{err}");

    // Once the app is fixed, replaying the flow settles it.
    app.always("/reserve", 200);
    let (code, out, err) = causeway_async(&["flow", "replay", &correlation_id, "--api", api]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "replayed 1\n  reserve  1\n");
    let (code, watched, err) = causeway_async(&[
        "flow",
        &correlation_id,
        "--watch",
        "--timeout",
        "20s",
        "--api",
        api,
    ])
    .await;
    assert_eq!(code, 0, "{watched} {err}");
    let last = watched.rsplit("\n\n").next().unwrap();
    assert!(
        last.starts_with(&format!("{correlation_id}  settled")),
        "{watched}"
    );
    assert!(
        last.contains(&format!("  → {svc}/reserve  delivered  in ")),
        "{watched}"
    );
    // The replay is in the flow's record.
    let (code, json, err) =
        causeway_async(&["flow", &correlation_id, "--output", "json", "--api", api]).await;
    assert_eq!(code, 0, "{err}");
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    let hop = &json["events"][0]["hops"][0];
    assert_eq!(hop["state"], "delivered", "{json}");
    assert!(hop["replayed_at"].is_string(), "{json}");

    sidecar.cleanup_subscription(&broker, "reserve").await;
    sidecar.cleanup(&broker).await;
}

fn closed_port() -> u16 {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    probe.local_addr().unwrap().port()
}

#[test]
fn schema_consumers_tries_each_management_address_in_order() {
    let (down, also_down) = (closed_port(), closed_port());
    let event_type = common::unique("Probe");

    // The first address refuses; the second (the machine's broker) answers.
    let list = format!("http://127.0.0.1:{down}, http://127.0.0.1:15672");
    let (code, out, err) = causeway(&[
        "schema",
        "consumers",
        &event_type,
        "--exchange",
        "amq.topic",
        "--management-url",
        &list,
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out,
        format!("no queue on amq.topic receives {event_type}\n")
    );

    // None answers: the error names each address, without its credentials.
    let list = format!("http://u:secret@127.0.0.1:{down},http://127.0.0.1:{also_down}");
    let (code, _, err) = causeway(&[
        "schema",
        "consumers",
        &event_type,
        "--management-url",
        &list,
    ]);
    assert_eq!(code, 69, "{err}");
    assert!(err.contains(&format!("http://127.0.0.1:{down}:")), "{err}");
    assert!(
        err.contains(&format!("http://127.0.0.1:{also_down}:")),
        "{err}"
    );
    assert!(!err.contains("secret"), "{err}");
}
