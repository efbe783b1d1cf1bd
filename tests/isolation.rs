//! One subscription's trouble stays its own: a queue the broker will not declare, a change
//! that cannot be made in place, dead-letter queues left by an earlier version, and
//! dead-letter operations from two replicas at once.
#![allow(clippy::unwrap_used)]

mod common;

use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use common::{Broker, Settings, Sidecar, app::TestApp};
use lapin::{
    BasicProperties,
    options::QueueDeclareOptions,
    types::{AMQPValue, FieldTable, LongString, ShortString},
};
use serde_json::{Value, json};

const ARRIVES: Duration = Duration::from_secs(15);

fn quorum_args(single_active: bool) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(LongString::from("quorum")),
    );
    if single_active {
        args.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
    }
    args
}

/// The type of `queue` (classic, quorum, stream), from the management API.
async fn queue_type(queue: &str) -> String {
    let url = format!("http://127.0.0.1:15672/api/queues/%2f/{queue}");
    let info: Value = common::http_client()
        .get(url)
        .basic_auth("guest", Some("guest"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    info["type"].as_str().unwrap_or_default().to_owned()
}

fn log_count(sidecar: &Sidecar, message: &str) -> usize {
    sidecar
        .logs()
        .iter()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|json| json["message"] == message)
        .count()
}

/// Makes subscription `name` of `sidecar` one the broker refuses: its main queue already
/// exists as an ordered (single active consumer) queue, as another replica or an earlier
/// config could have left it. Answers the `PUT` that creates the subscription.
async fn refused_subscription(
    sidecar: &Sidecar,
    broker: &Broker,
    name: &str,
    event_type: &str,
) -> common::Answer {
    broker
        .channel
        .queue_declare(
            sidecar.queue(name).as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            quorum_args(true),
        )
        .await
        .unwrap();
    sidecar
        .call(
            "PUT",
            &format!("/v1/subscriptions/{name}"),
            Some(json!({"event_type": event_type, "route": format!("/{name}")})),
        )
        .await
}

async fn subscription_state(sidecar: &Sidecar, name: &str) -> Value {
    sidecar
        .call("GET", &format!("/v1/subscriptions/{name}"), None)
        .await
        .body
}

#[tokio::test]
async fn a_subscription_the_broker_refuses_fails_alone_and_recovers_once_fixed() {
    let app = TestApp::start().await;
    let sidecar = Settings::new()
        .app(&app.url)
        .config_file(
            "[[subscriptions]]\nname = \"healthy\"\nevent_type = \"OrderPlaced\"\nroute = \"/healthy\"\n",
        )
        .start();
    sidecar.wait_ready().await;
    let broker = Broker::connect().await;

    // An ordered change of an existing subscription cannot be made in place: a 409 that
    // says what to do, and nothing changes.
    let spec = json!({"event_type": "OrderShipped", "route": "/changing"});
    let created = sidecar
        .call("PUT", "/v1/subscriptions/changing", Some(spec.clone()))
        .await;
    assert_eq!(created.status, 201, "{created:?}");
    let mut ordered = spec.clone();
    ordered["ordered"] = json!(true);
    let refused = sidecar
        .call("PUT", "/v1/subscriptions/changing", Some(ordered))
        .await;
    assert_eq!(refused.status, 409, "{refused:?}");
    assert_eq!(
        refused.headers["content-type"], "application/problem+json",
        "{refused:?}"
    );
    let detail = refused.body["detail"].as_str().unwrap();
    assert!(
        detail.contains("ordered") && detail.contains("new name"),
        "{detail}"
    );
    assert_eq!(
        subscription_state(&sidecar, "changing").await["ordered"],
        false
    );

    // A queue that exists with other arguments: the broker refuses the declaration.
    let broken_queue = sidecar.queue("broken");
    let put = refused_subscription(&sidecar, &broker, "broken", "OrderPaid").await;
    assert_eq!(put.status, 201, "{put:?}");
    assert_eq!(put.body["state"], "failed", "{put:?}");
    let reason = put.body["error"].as_str().unwrap();
    assert!(reason.contains("PRECONDITION_FAILED"), "{reason}");

    // The others go on while it is retried: events published now arrive.
    let failed_at = Instant::now();
    let mut sent = 0;
    while failed_at.elapsed() < Duration::from_secs(4) {
        let answer = sidecar
            .publish("OrderPlaced", &format!("{{\"n\":{sent}}}"), &[])
            .await;
        assert_eq!(answer.status, 202, "{answer:?}");
        sent += 1;
        app.wait_for("/healthy", sent, ARRIVES).await;
    }
    assert_eq!(sidecar.readyz().await, 503);
    let ready = sidecar
        .http
        .get(format!("{}/readyz", sidecar.admin))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(ready["subscriptions"]["broken"], "failed", "{ready}");
    assert_eq!(ready["subscriptions"]["healthy"], "consuming", "{ready}");
    let why = ready["subscription_errors"]["broken"]
        .as_str()
        .unwrap_or_default();
    assert!(why.contains("PRECONDITION_FAILED"), "{ready}");
    let metrics = sidecar.metrics_text().await;
    assert!(
        metrics.contains(r#"causeway_subscription_state{subscription="broken",state="failed"} 1"#),
        "{metrics}"
    );
    // Retried several times in those seconds, logged once; the connection stayed up.
    assert_eq!(
        log_count(&sidecar, "subscription failed; retrying with backoff"),
        1
    );
    assert_eq!(log_count(&sidecar, "broker connection lost"), 0);
    assert_eq!(log_count(&sidecar, "connected to the broker"), 2);

    // Fixed at the broker: it recovers by itself.
    broker.delete_queue(&broken_queue).await;
    let deadline = Instant::now() + Duration::from_secs(40);
    while subscription_state(&sidecar, "broken").await["state"] != "consuming" {
        assert!(
            Instant::now() < deadline,
            "the subscription did not recover"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    sidecar.publish("OrderPaid", "{}", &[]).await;
    app.wait_for("/broken", 1, ARRIVES).await;
    println!(
        "fault-suite: bad-subscription events={sent} lost=0 duplicates={} connections_lost=0",
        app.received("/healthy").len() - sent
    );

    for name in ["healthy", "changing", "broken"] {
        sidecar.cleanup_subscription(&broker, name).await;
    }
    sidecar.cleanup(&broker).await;
}

#[tokio::test]
async fn a_classic_dead_letter_queue_of_an_earlier_version_becomes_a_quorum_queue_with_its_letters()
{
    let app = TestApp::start().await;
    let settings = Settings::new().app(&app.url).config_file(
        "[[subscriptions]]\nname = \"old\"\nevent_type = \"OrderPlaced\"\nroute = \"/old\"\n",
    );
    let service = settings.get("CAUSEWAY_SERVICE").to_owned();
    let dlq = format!("{service}.old.dlq");
    let broker = Broker::connect().await;
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(LongString::from("classic")),
    );
    broker
        .channel
        .queue_declare(
            dlq.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        )
        .await
        .unwrap();
    let ids: Vec<String> = (0..3).map(|n| format!("old-letter-{n}")).collect();
    for (n, id) in ids.iter().enumerate() {
        let mut headers = FieldTable::default();
        headers.insert(
            "x-causeway-reason".into(),
            AMQPValue::LongString(LongString::from("rejected")),
        );
        headers.insert(
            "x-causeway-dead-lettered-at".into(),
            AMQPValue::LongString(LongString::from(format!("2026-01-01T00:00:0{n}.000000Z"))),
        );
        let properties = BasicProperties::default()
            .with_message_id(ShortString::from(id.as_str()))
            .with_headers(headers);
        broker.inject(&dlq, b"{}", properties).await;
    }

    let sidecar = settings.start();
    sidecar.wait_ready().await;

    assert_eq!(queue_type(&dlq).await, "quorum");
    let listed = sidecar.dead_letters("old").await;
    let listed_ids: Vec<&str> = listed["dead_letters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["event_id"].as_str().unwrap())
        .collect();
    assert_eq!(listed_ids, ids, "{listed}");
    assert_eq!(listed["dead_letters"][0]["reason"], "rejected");
    sidecar
        .wait_for_log(
            "dead-letter queue upgraded to a replicated quorum queue",
            Duration::from_secs(1),
        )
        .await;

    sidecar.cleanup_subscription(&broker, "old").await;
    sidecar.cleanup(&broker).await;
}

#[tokio::test]
async fn two_replicas_working_one_dead_letter_queue_at_once_lose_and_reorder_nothing() {
    let app = TestApp::start().await;
    app.always("/dl", 422);
    let first = Settings::new().app(&app.url).config_file(
        "[[subscriptions]]\nname = \"dl\"\nevent_type = \"OrderPlaced\"\nroute = \"/dl\"\nconcurrency = 1\n",
    );
    let second_settings = first.again().set(
        "CAUSEWAY_DATA_DIR",
        std::env::temp_dir()
            .join(common::unique("causeway-test-replica"))
            .to_str()
            .unwrap(),
    );
    let first = first.start();
    let second = second_settings.start();
    first.wait_ready().await;
    second.wait_ready().await;
    let broker = Broker::connect().await;
    let mut ids = Vec::new();
    for n in 0..25 {
        let answer = first
            .publish("OrderPlaced", &format!("{{\"n\":{n}}}"), &[])
            .await;
        ids.push(answer.body["event_id"].as_str().unwrap().to_owned());
    }
    first.wait_dead_letters("dl", 25, ARRIVES).await;
    let listed_ids = |listed: &Value| -> Vec<String> {
        listed["dead_letters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["event_id"].as_str().unwrap().to_owned())
            .collect()
    };
    let expected = listed_ids(&first.dead_letters("dl").await);
    assert_eq!(
        expected.iter().collect::<HashSet<_>>(),
        ids.iter().collect::<HashSet<_>>()
    );

    // Both replicas list at the same time, over and over: every listing is whole and in
    // the same order.
    let mut listings = Vec::new();
    for _ in 0..5 {
        let (a, b) = tokio::join!(first.dead_letters("dl"), second.dead_letters("dl"));
        listings.push(a);
        listings.push(b);
    }
    for listing in &listings {
        assert_eq!(listing["total"], 25, "{listing}");
        assert_eq!(listed_ids(listing), expected);
    }

    // One replica replays ten while the other lists: none is missed.
    app.always("/dl", 200);
    let chosen: Vec<String> = expected[5..15].to_vec();
    let (replayed, listed) = tokio::join!(
        first.call(
            "POST",
            "/v1/subscriptions/dl/dead-letters/replay",
            Some(json!({ "event_ids": chosen })),
        ),
        second.dead_letters("dl"),
    );
    assert_eq!(replayed.status, 200, "{replayed:?}");
    assert_eq!(replayed.body["replayed"], 10, "{replayed:?}");
    assert_eq!(replayed.body["not_found"], json!([]), "{replayed:?}");
    let total = listed["total"].as_u64().unwrap();
    assert!(total == 25 || total == 15, "a partial listing: {listed}");
    let after = first.dead_letters("dl").await;
    let rest: Vec<String> = expected
        .iter()
        .filter(|id| !chosen.contains(id))
        .cloned()
        .collect();
    assert_eq!(listed_ids(&after), rest);
    app.wait_for("/dl", 25 + 10, ARRIVES).await;

    first.cleanup_subscription(&broker, "dl").await;
    first.cleanup(&broker).await;
}

#[tokio::test]
async fn dead_letter_operations_before_the_queues_exist_answer_empty() {
    let sidecar = Settings::new().start();
    sidecar.wait_ready().await;
    let broker = Broker::connect().await;
    // Refused by the broker, so its queues are never declared.
    let put = refused_subscription(&sidecar, &broker, "early", "OrderPlaced").await;
    assert_eq!(put.body["state"], "failed", "{put:?}");

    let listed = sidecar.dead_letters("early").await;
    assert_eq!(listed["total"], 0, "{listed}");
    assert_eq!(listed["dead_letters"], json!([]));
    let replayed = sidecar
        .call(
            "POST",
            "/v1/subscriptions/early/dead-letters/replay",
            Some(json!({"event_ids": ["x"]})),
        )
        .await;
    assert_eq!(replayed.status, 200, "{replayed:?}");
    assert_eq!(replayed.body, json!({"replayed": 0, "not_found": ["x"]}));
    let purged = sidecar
        .call("DELETE", "/v1/subscriptions/early/dead-letters", None)
        .await;
    assert_eq!(purged.body, json!({"purged": 0}), "{purged:?}");

    sidecar.cleanup_subscription(&broker, "early").await;
    sidecar.cleanup(&broker).await;
}

/// The sidecar's established connections to the shared broker (port 5672), from /proc: its
/// socket inodes, matched against the kernel's TCP table.
fn broker_connections(pid: u32) -> usize {
    let inodes: HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .filter_map(|target| {
            let target = target.to_string_lossy().into_owned();
            Some(
                target
                    .strip_prefix("socket:[")?
                    .strip_suffix(']')?
                    .to_owned(),
            )
        })
        .collect();
    let table = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")).unwrap();
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // remote address, state (01 = established), inode
            fields.len() > 9
                && fields[2].ends_with(":1628")
                && fields[3] == "01"
                && inodes.contains(fields[9])
        })
        .count()
}

#[tokio::test]
async fn a_dead_letter_operation_its_caller_abandons_leaves_no_connection_or_lock_behind() {
    let app = TestApp::start().await;
    let sidecar = Settings::new().app(&app.url).config_file(
        "[[subscriptions]]\nname = \"gone\"\nevent_type = \"OrderPlaced\"\nroute = \"/gone\"\n",
    );
    let sidecar = sidecar.start();
    sidecar.wait_ready().await;
    let broker = Broker::connect().await;
    let steady = broker_connections(sidecar.pid());
    assert_eq!(steady, 2, "publishing and consuming connections");

    // Another replica holds the dead-letter lock: listings wait for it, and their callers
    // give up.
    let holder = lapin::Connection::connect(common::AMQP_URL, Default::default())
        .await
        .unwrap();
    let lock_channel = holder.create_channel().await.unwrap();
    let lock = format!("{}.dlq.lock", sidecar.queue("gone"));
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(LongString::from("classic")),
    );
    lock_channel
        .queue_declare(
            lock.as_str().into(),
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            args,
        )
        .await
        .unwrap();
    let impatient = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    for _ in 0..5 {
        let abandoned = impatient
            .get(format!(
                "{}/v1/subscriptions/gone/dead-letters",
                sidecar.api
            ))
            .send()
            .await;
        assert!(
            abandoned.is_err(),
            "the listing should have waited for the lock"
        );
    }
    holder.close(200, "released".into()).await.unwrap();

    // The abandoned operations closed their connections; the next listing is prompt.
    let deadline = Instant::now() + Duration::from_secs(10);
    while broker_connections(sidecar.pid()) != steady {
        assert!(
            Instant::now() < deadline,
            "abandoned operations left connections open: {}",
            broker_connections(sidecar.pid())
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let started = Instant::now();
    let listed = sidecar.dead_letters("gone").await;
    assert_eq!(listed["total"], 0, "{listed}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the lock was still held: {:?}",
        started.elapsed()
    );

    sidecar.cleanup_subscription(&broker, "gone").await;
    sidecar.cleanup(&broker).await;
}

#[tokio::test]
async fn a_subscription_whose_queue_would_be_the_unrouted_queue_is_refused() {
    let settings = Settings::new();
    let unrouted = format!("{}.sink", settings.get("CAUSEWAY_SERVICE"));
    let sidecar = settings.set("CAUSEWAY_UNROUTED_QUEUE", &unrouted).start();
    sidecar.wait_ready().await;
    let broker = Broker::connect().await;

    let refused = sidecar
        .call(
            "PUT",
            "/v1/subscriptions/sink",
            Some(json!({"event_type": "OrderPlaced", "route": "/sink"})),
        )
        .await;

    assert_eq!(refused.status, 422, "{refused:?}");
    let detail = refused.body["detail"].as_str().unwrap();
    assert!(detail.contains(&unrouted), "{detail}");
    let listed = sidecar.call("GET", "/v1/subscriptions", None).await;
    assert_eq!(listed.body["subscriptions"], json!([]), "{listed:?}");

    sidecar.cleanup(&broker).await;
}
