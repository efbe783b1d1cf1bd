//! The sidecar under trouble: bad configuration, a broker that goes away and comes back,
//! and SIGTERM with publishes in flight.
#![allow(clippy::unwrap_used)]

mod common;

use std::{
    collections::HashSet,
    process::Command,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use common::{Broker, Settings, body, proxy::Proxy};
use serde_json::Value;

#[test]
fn invalid_configuration_names_every_bad_variable_and_exits_64() {
    let output = Command::new(env!("CARGO_BIN_EXE_causeway"))
        .env_clear()
        .env("CAUSEWAY_API_ADDR", "localhost-ish")
        .env("CAUSEWAY_MAX_BODY", "huge")
        .env("CAUSEWAY_AMQP_URL", "http://rabbit")
        .env("CAUSEWAY_SHUTDOWN_GRACE", "soon")
        .output()
        .unwrap();

    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    for name in [
        "CAUSEWAY_SERVICE",
        "CAUSEWAY_API_ADDR",
        "CAUSEWAY_MAX_BODY",
        "CAUSEWAY_AMQP_URL",
        "CAUSEWAY_SHUTDOWN_GRACE",
    ] {
        assert!(stderr.contains(name), "{name} not named in:\n{stderr}");
    }
    assert!(output.stdout.is_empty(), "it logged as if it ran");
}

#[test]
fn an_invalid_config_file_exits_64_before_binding() {
    let dir = std::env::temp_dir().join(common::unique("causeway-conf"));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("causeway.toml");
    std::fs::write(&file, "service = \"orders\"\nexchnage = \"typo\"\n").unwrap();
    // A port that is free now: if the process bound it, this test could not take it after.
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = probe.local_addr().unwrap().to_string();
    drop(probe);

    let output = Command::new(env!("CARGO_BIN_EXE_causeway"))
        .env_clear()
        .env("CAUSEWAY_API_ADDR", &addr)
        .args(["run", "--config", file.to_str().unwrap()])
        .output()
        .unwrap();

    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("exchnage"), "{stderr}");
    assert!(std::net::TcpListener::bind(&addr).is_ok());
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn without_a_broker_publishes_fail_fast_with_503_and_it_is_not_ready() {
    // A port with nothing behind it.
    let closed = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let sidecar = Settings::new()
        .set(
            "CAUSEWAY_AMQP_URL",
            &format!("amqp://guest:guest@127.0.0.1:{closed}/%2f"),
        )
        .start();
    // /healthz answers: the process is alive even though it cannot reach the broker.
    let health = sidecar
        .http
        .get(format!("{}/healthz", sidecar.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);

    let started = Instant::now();
    let answer = sidecar.publish("OrderPlaced", "{}", &[]).await;

    assert_eq!(answer.status, 503, "{answer:?}");
    assert!(started.elapsed() < Duration::from_secs(2), "a publish hung");
    assert!(answer.headers.contains_key("retry-after"));
    assert_eq!(sidecar.readyz().await, 503);
    // A key whose publish certainly failed names no event: it can be used afresh.
    let keyed = [("Idempotency-Key", "never-published")];
    assert_eq!(
        sidecar.publish("OrderPlaced", "{}", &keyed).await.status,
        503
    );
    let other_type = sidecar.publish("OrderCancelled", "{}", &keyed).await;
    assert_eq!(other_type.status, 503, "{other_type:?}");
    sidecar
        .wait_for_log("cannot connect to the broker", Duration::from_secs(10))
        .await;
}

#[tokio::test]
async fn a_cut_broker_connection_gives_503_and_publishing_resumes_after_it_heals() {
    let proxy = Proxy::start("127.0.0.1:5672").await;
    let sidecar = Settings::new()
        .set("CAUSEWAY_AMQP_URL", &proxy.amqp_url())
        .set("CAUSEWAY_CONFIRM_TIMEOUT", "2s")
        .start();
    sidecar.wait_ready().await;
    let broker = Broker::connect().await;
    let mut queue = broker.bind(sidecar.exchange(), "#").await;

    // Traffic that keeps going through the outage, until the test stops it.
    let answers = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let client = {
        let url = format!("{}/v1/publish/Tick", sidecar.api);
        let http = common::http_client();
        let (answers, stop) = (answers.clone(), stop.clone());
        tokio::spawn(async move {
            let end = Instant::now() + Duration::from_secs(60);
            while !stop.load(Ordering::SeqCst) && Instant::now() < end {
                let started = Instant::now();
                let response = http
                    .post(&url)
                    .header("content-type", "application/json")
                    .body("{}")
                    .send()
                    .await
                    .unwrap();
                let answer = common::read(response).await;
                answers.lock().unwrap().push((answer, started.elapsed()));
                // The pace of the traffic.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let accepted = || {
        answers
            .lock()
            .unwrap()
            .iter()
            .filter(|(a, _): &&(common::Answer, Duration)| a.status == 202)
            .count()
    };
    wait_until("traffic flows before the outage", || accepted() >= 10).await;
    proxy.cut();
    sidecar.wait_ready_status(503, Duration::from_secs(5)).await;
    let during = sidecar.publish("OrderPlaced", "{}", &[]).await;
    assert_eq!(during.status, 503, "{during:?}");
    assert!(during.headers.contains_key("retry-after"));
    // The outage lasts 2 s.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before_heal = accepted();
    proxy.heal();
    let healed = Instant::now();
    sidecar
        .wait_ready_status(200, Duration::from_secs(30))
        .await;
    let ready_after = healed.elapsed();
    wait_until("traffic flows again after the outage", || {
        accepted() > before_heal
    })
    .await;
    let publishing_after = healed.elapsed();
    println!(
        "fault-suite: scenario=broker-connection-cut outage_ms=2000 ready_after_ms={} publishing_after_ms={}",
        ready_after.as_millis(),
        publishing_after.as_millis()
    );
    // Reconnects back off for at most a second: the sidecar is back well within 2 s.
    assert!(
        ready_after < Duration::from_secs(2),
        "ready again only after {ready_after:?}"
    );
    stop.store(true, Ordering::SeqCst);
    client.await.unwrap();
    let answers = std::mem::take(&mut *answers.lock().unwrap());
    let after = sidecar
        .publish("OrderPlaced", r#"{"after":true}"#, &[])
        .await;

    assert_eq!(after.status, 202, "{after:?}");
    let statuses: Vec<u16> = answers.iter().map(|(a, _)| a.status).collect();
    assert!(statuses.contains(&202), "{statuses:?}");
    assert!(statuses.contains(&503), "{statuses:?}");
    for (answer, took) in &answers {
        assert!(
            matches!(answer.status, 202 | 503 | 504),
            "unexpected answer {answer:?}"
        );
        // The confirm timeout is 2 s; nothing may wait much beyond it.
        assert!(
            *took < Duration::from_secs(4),
            "a publish hung for {took:?}"
        );
    }
    // Every accepted event is on the broker, including the one after the outage.
    let accepted: HashSet<Value> = answers
        .iter()
        .filter(|(a, _)| a.status == 202)
        .map(|(a, _)| a.body["event_id"].clone())
        .chain([after.body["event_id"].clone()])
        .collect();
    let delivered: HashSet<Value> = common::before_marker(&sidecar, &mut queue, "Marker", &[])
        .await
        .iter()
        .map(|d| body(d)["event_id"].clone())
        .collect();
    let missing: Vec<_> = accepted.difference(&delivered).collect();
    assert!(
        missing.is_empty(),
        "accepted but not on the broker: {missing:?}"
    );
    sidecar
        .wait_for_log("broker connection lost", Duration::from_secs(1))
        .await;
    // A recovery the sidecar handles is warnings and an info line, not errors (the AMQP
    // client's own lines about it stay out of the log).
    let errors = sidecar.error_lines();
    assert!(
        errors.is_empty(),
        "a handled recovery logged errors: {errors:#?}"
    );

    sidecar.cleanup(&broker).await;
}

#[tokio::test]
async fn sigterm_with_publishes_in_flight_loses_no_accepted_event() {
    let mut sidecar = Settings::new().start();
    sidecar.wait_ready().await;
    let broker = Broker::connect().await;
    let mut queue = broker.bind(sidecar.exchange(), "#").await;
    let url = format!("{}/v1/publish/Tick", sidecar.api);

    // Sixteen clients publishing as fast as they can.
    let count = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..16)
        .map(|_| {
            let url = url.clone();
            let http = common::http_client();
            let count = count.clone();
            tokio::spawn(async move {
                let mut accepted = Vec::new();
                let mut errors = 0;
                loop {
                    let sent = http
                        .post(&url)
                        .header("content-type", "application/json")
                        .body("{}")
                        .send()
                        .await;
                    match sent {
                        Ok(response) => {
                            let answer = common::read(response).await;
                            match answer.status {
                                202 => {
                                    accepted.push(answer.body["event_id"].clone());
                                    count.fetch_add(1, Ordering::SeqCst);
                                }
                                503 | 504 => errors += 1,
                                other => panic!("unexpected answer {other}: {answer:?}"),
                            }
                        }
                        // The listener is closed: the sidecar is gone.
                        Err(_) => return (accepted, errors),
                    }
                }
            })
        })
        .collect();
    // Stop it while publishes are in flight, once a good number went through.
    wait_until("the clients publish", || {
        count.load(Ordering::SeqCst) >= 100
    })
    .await;
    sidecar.terminate();
    let status = sidecar.wait_exit(Duration::from_secs(20)).await;

    assert!(status.success(), "exit status {status}");
    let mut accepted = HashSet::new();
    for client in clients {
        let (ids, _) = client.await.unwrap();
        accepted.extend(ids);
    }
    assert!(
        accepted.len() > 10,
        "too little traffic to test: {}",
        accepted.len()
    );
    // Accepted means confirmed, so each is in the queue already; the wait is for the
    // consumer to get them.
    let ids = |all: &[lapin::message::Delivery]| -> HashSet<Value> {
        all.iter().map(|d| body(d)["event_id"].clone()).collect()
    };
    let delivered = ids(&queue
        .until(Duration::from_secs(15), |all| accepted.is_subset(&ids(all)))
        .await);
    let missing: Vec<_> = accepted.difference(&delivered).collect();
    assert!(
        missing.is_empty(),
        "{} accepted events are not on the broker",
        missing.len()
    );
    sidecar
        .wait_for_log("draining", Duration::from_secs(1))
        .await;
    sidecar
        .wait_for_log("stopped", Duration::from_secs(1))
        .await;

    sidecar.cleanup(&broker).await;
}

#[tokio::test]
async fn consumers_come_back_after_the_broker_connection_is_cut_without_leaking() {
    let app = common::app::TestApp::start().await;
    let proxy = Proxy::start("127.0.0.1:5672").await;
    let sidecar = Settings::new()
        .app(&app.url)
        .set("CAUSEWAY_AMQP_URL", &proxy.amqp_url())
        .config_file(
            "[[subscriptions]]\nname = \"heal\"\nevent_type = \"OrderPlaced\"\nroute = \"/heal\"\n",
        )
        .start();
    sidecar.wait_ready().await;
    let broker = Broker::connect().await;
    sidecar.publish("OrderPlaced", r#"{"n":1}"#, &[]).await;
    app.wait_for("/heal", 1, Duration::from_secs(15)).await;

    for _ in 0..2 {
        proxy.cut();
        sidecar
            .wait_ready_status(503, Duration::from_secs(10))
            .await;
        // The outage lasts half a second.
        tokio::time::sleep(Duration::from_millis(500)).await;
        proxy.heal();
        sidecar
            .wait_ready_status(200, Duration::from_secs(30))
            .await;
    }
    // Published while the sidecar was away: it waits in the queue, and arrives.
    broker
        .inject(
            &sidecar.queue("heal"),
            &serde_json::to_vec(&app.received("/heal")[0].body).unwrap(),
            lapin::BasicProperties::default(),
        )
        .await;
    let second = sidecar.publish("OrderPlaced", r#"{"n":2}"#, &[]).await;
    assert_eq!(second.status, 202);
    let received = app.wait_for("/heal", 2, Duration::from_secs(15)).await;

    assert_eq!(received[1].body["payload"]["n"], 2);
    let (messages, consumers) = broker.queue_state(&sidecar.queue("heal")).await;
    assert_eq!(consumers, 1, "old consumers leaked");
    assert_eq!(messages, 0, "events were left behind in the queue");
    sidecar
        .wait_for_log("broker connection lost", Duration::from_secs(1))
        .await;
    // A recovery the sidecar handles is warnings and an info line, not errors (the AMQP
    // client's own lines about it stay out of the log).
    let errors = sidecar.error_lines();
    assert!(
        errors.is_empty(),
        "a handled recovery logged errors: {errors:#?}"
    );

    sidecar.cleanup_subscription(&broker, "heal").await;
    sidecar.cleanup(&broker).await;
}

#[tokio::test]
async fn a_confirm_that_does_not_come_is_a_504_and_a_retry_with_the_key_keeps_the_event_id() {
    let proxy = Proxy::start("127.0.0.1:5672").await;
    let sidecar = Settings::new()
        .set("CAUSEWAY_AMQP_URL", &proxy.amqp_url())
        .set("CAUSEWAY_CONFIRM_TIMEOUT", "1s")
        .start();
    sidecar.wait_ready().await;
    let broker = Broker::connect().await;
    let mut queue = broker.bind(sidecar.exchange(), "#").await;
    let keyed = [("Idempotency-Key", "k-504")];

    proxy.freeze();
    let started = Instant::now();
    let timed_out = sidecar.publish("OrderPlaced", "{}", &keyed).await;
    let took = started.elapsed();
    proxy.thaw();

    assert_eq!(timed_out.status, 504, "{timed_out:?}");
    assert_eq!(
        timed_out.body["type"],
        "urn:causeway:problem:confirm-timeout"
    );
    assert!(took < Duration::from_secs(3), "the publish waited {took:?}");
    // The outcome was unknown: the retry with the same key is the same event.
    let retried = sidecar.publish("OrderPlaced", "{}", &keyed).await;
    assert_eq!(retried.status, 202, "{retried:?}");
    let delivered: Vec<Value> = common::before_marker(&sidecar, &mut queue, "Marker", &[])
        .await
        .iter()
        .map(|d| body(d)["event_id"].clone())
        .collect();
    assert!(!delivered.is_empty());
    let event_ids: HashSet<&Value> = delivered.iter().collect();
    assert_eq!(
        event_ids.len(),
        1,
        "two different events for one key: {delivered:?}"
    );
    assert!(event_ids.contains(&retried.body["event_id"]));

    sidecar.cleanup(&broker).await;
}

/// Waits until `condition` holds, at most 15 s.
async fn wait_until(what: &str, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !condition() {
        assert!(Instant::now() < deadline, "{what}: not within 15 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
