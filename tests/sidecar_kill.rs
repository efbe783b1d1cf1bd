//! A sidecar killed with SIGKILL during a stream of keyed publishes and deliveries, then
//! started again on the same data directory: what it recorded before the kill still holds.
#![allow(clippy::unwrap_used)]

mod common;

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use common::{Broker, Settings, app::TestApp};
use lapin::BasicProperties;
use serde_json::Value;

const EVENTS: usize = 300;
const ROUTE: &str = "/kill";
const WITHIN: Duration = Duration::from_secs(60);

/// One keyed publish the sidecar accepted.
#[derive(Clone)]
struct Accepted {
    key: String,
    event_id: String,
}

#[tokio::test]
async fn after_a_kill_9_dedup_records_and_idempotency_keys_from_before_are_honoured() {
    let app = TestApp::start().await;
    // One delivery at a time: at most one event is in flight when the process dies, and
    // `common::marker` applies.
    let toml = format!(
        "[[subscriptions]]\nname = \"kill\"\nevent_type = \"OrderPlaced\"\nroute = \"{ROUTE}\"\n\
         concurrency = 1\n"
    );
    let mut sidecar = Settings::new().app(&app.url).config_file(&toml).start();
    sidecar.wait_ready().await;
    let broker = Broker::connect().await;
    // The messages as the broker routed them, to inject exact copies later.
    let mut tap = broker.bind(sidecar.exchange(), "#").await;

    // A producer that publishes EVENTS keyed events one after the other and retries each key
    // until it is answered 202: through the kill, the restart, and any 503 or 504.
    let api = Arc::new(Mutex::new(sidecar.api.clone()));
    let accepted = Arc::new(Mutex::new(Vec::<Accepted>::new()));
    let producer = {
        let (api, accepted) = (api.clone(), accepted.clone());
        tokio::spawn(async move {
            let http = common::http_client();
            let deadline = Instant::now() + WITHIN;
            for n in 0..EVENTS {
                let key = format!("order-{n}");
                loop {
                    assert!(Instant::now() < deadline, "{key} was never accepted");
                    let url = format!("{}/v1/publish/OrderPlaced", api.lock().unwrap());
                    let sent = http
                        .post(url)
                        .header("content-type", "application/json")
                        .header("Idempotency-Key", &key)
                        .body(format!(r#"{{"key":"{key}"}}"#))
                        .send()
                        .await;
                    if let Ok(response) = sent {
                        let answer = common::read(response).await;
                        match answer.status {
                            202 => {
                                let event_id = answer.body["event_id"].as_str().unwrap();
                                accepted.lock().unwrap().push(Accepted {
                                    key: key.clone(),
                                    event_id: event_id.to_owned(),
                                });
                                break;
                            }
                            503 | 504 => {}
                            other => panic!("{key}: unexpected answer {other}: {answer:?}"),
                        }
                    }
                    // The sidecar is down or busy: the pace of a producer's retries.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        })
    };

    // Kill it in the middle of the stream, once a good part was accepted and delivered.
    let deadline = Instant::now() + WITHIN;
    while accepted.lock().unwrap().len() < EVENTS / 3 || app.received(ROUTE).len() < EVENTS / 4 {
        assert!(Instant::now() < deadline, "the stream did not get going");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    sidecar.settings.keep_data = true;
    sidecar.kill();
    let keys_before = accepted.lock().unwrap().clone();
    let delivered_before: HashSet<String> =
        app.received(ROUTE).iter().map(|r| r.event_id()).collect();

    let restart = Instant::now();
    let restarted = sidecar.settings.again().start();
    *api.lock().unwrap() = restarted.api.clone();
    restarted.wait_ready().await;
    let ready_after = restart.elapsed();
    tokio::time::timeout(WITHIN, producer)
        .await
        .expect("the producer finished")
        .unwrap();
    let accepted = accepted.lock().unwrap().clone();
    assert_eq!(accepted.len(), EVENTS);

    // Every accepted event arrives.
    let accepted_ids: HashSet<String> = accepted.iter().map(|a| a.event_id.clone()).collect();
    let deadline = Instant::now() + WITHIN;
    loop {
        let arrived: HashSet<String> = app.received(ROUTE).iter().map(|r| r.event_id()).collect();
        let lost = accepted_ids.difference(&arrived).count();
        if lost == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{lost} of {EVENTS} accepted events did not arrive"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Idempotency keys from before the kill: a retry returns the same event, not a new one.
    let mut keys_changed = Vec::new();
    for before in &keys_before {
        let retried = restarted
            .publish(
                "OrderPlaced",
                &format!(r#"{{"key":"{}"}}"#, before.key),
                &[("Idempotency-Key", before.key.as_str())],
            )
            .await;
        if retried.status != 202 || retried.body["event_id"] != before.event_id.as_str() {
            keys_changed.push((before.key.clone(), retried));
        }
    }

    // Dedup records from before the kill: exact copies of the events delivered before it,
    // put straight into the queue, are acked without a POST.
    let event_ids = |all: &[lapin::message::Delivery]| -> HashSet<String> {
        all.iter()
            .map(|m| common::body(m)["event_id"].as_str().unwrap().to_owned())
            .collect()
    };
    let routed = tap
        .until(WITHIN, |all| delivered_before.is_subset(&event_ids(all)))
        .await;
    let mut originals: HashMap<String, (Vec<u8>, BasicProperties)> = HashMap::new();
    for message in routed {
        let id = common::body(&message)["event_id"]
            .as_str()
            .unwrap()
            .to_owned();
        originals
            .entry(id)
            .or_insert((message.data.clone(), message.properties.clone()));
    }
    let posts_before_copies = app.received(ROUTE).len();
    let skipped_before_copies = skipped(&restarted.logs());
    for id in &delivered_before {
        let (body, properties) = originals[id].clone();
        broker
            .inject(&restarted.queue("kill"), &body, properties)
            .await;
    }
    // The marker is behind every copy in the queue: once it arrived, every copy was handled
    // (see `common::marker`), so POSTs counted now are final.
    common::marker(&restarted, &broker, &app, "kill", "OrderPlaced", ROUTE).await;
    let received = app.received(ROUTE);
    let copies_posted = received[posts_before_copies..]
        .iter()
        .filter(|r| delivered_before.contains(&r.event_id()))
        .count();
    let copies_skipped = skipped(&restarted.logs()) - skipped_before_copies;

    // Per key, one event id, the one the producer was answered, delivered; a key retried
    // through the kill did not become two events.
    let mut ids_by_key: HashMap<String, HashSet<String>> = HashMap::new();
    let mut posts_by_id: HashMap<String, usize> = HashMap::new();
    for r in received
        .iter()
        .filter(|r| r.body["payload"]["key"].is_string())
    {
        let key = r.body["payload"]["key"].as_str().unwrap().to_owned();
        ids_by_key.entry(key).or_default().insert(r.event_id());
        *posts_by_id.entry(r.event_id()).or_default() += 1;
    }
    let keys_split: Vec<_> = accepted
        .iter()
        .filter(|a| ids_by_key.get(&a.key) != Some(&HashSet::from([a.event_id.clone()])))
        .map(|a| (a.key.clone(), a.event_id.clone(), ids_by_key.get(&a.key)))
        .collect();
    let duplicates: usize = posts_by_id.values().map(|c| c - 1).sum();
    let lost = accepted_ids
        .iter()
        .filter(|id| !posts_by_id.contains_key(*id))
        .count();

    println!(
        "fault-suite: scenario=sidecar-kill-9-restart events={EVENTS} accepted={} lost={lost} \
         duplicates={duplicates} delivered_before_kill={} copies_injected={} \
         copies_posted={copies_posted} keys_retried={} keys_changed={} keys_split={} \
         ready_after_restart_ms={}",
        accepted.len(),
        delivered_before.len(),
        delivered_before.len(),
        keys_before.len(),
        keys_changed.len(),
        keys_split.len(),
        ready_after.as_millis()
    );
    assert_eq!(lost, 0);
    assert!(
        keys_changed.is_empty(),
        "keyed publishes retried after the restart got another answer: {keys_changed:?}"
    );
    assert!(
        keys_split.is_empty(),
        "keys whose delivered events are not the one event answered (key, answered, \
         delivered): {keys_split:?}"
    );
    assert_eq!(
        copies_posted, 0,
        "copies of events delivered before the kill reached the app"
    );
    assert!(
        copies_skipped >= delivered_before.len(),
        "{copies_skipped} duplicates skipped for {} copies",
        delivered_before.len()
    );
    // Only the one delivery in flight at the kill may be POSTed twice.
    assert!(duplicates <= 1, "{duplicates} events were POSTed twice");

    restarted.cleanup_subscription(&broker, "kill").await;
    restarted.cleanup(&broker).await;
    drop(sidecar);
}

/// How many `duplicate_event_skipped` lines are in `logs`.
fn skipped(logs: &[String]) -> usize {
    logs.iter()
        .filter(|l| {
            serde_json::from_str::<Value>(l)
                .is_ok_and(|j| j["message"] == "duplicate_event_skipped")
        })
        .count()
}
