//! Store faults against real processes: a Redis server of the test's own, killed and started
//! again, and a full disk (a small tmpfs as the data directory). The stores must recover by
//! themselves, visibly (`/readyz`, metrics, one log line per change), and no delivery may be
//! acked without its dedup record.
#![allow(clippy::unwrap_used)]

mod common;

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::{
    Broker, Settings, Sidecar,
    app::TestApp,
    stream::{Stream, StreamOptions, Verify},
    unique,
};
use lapin::{BasicProperties, types::ShortString};
use serde_json::Value;

const ROUTE: &str = "/events";
const EVENT_TYPE: &str = "OrderPlaced";

fn subscription_toml() -> String {
    format!(
        "[[subscriptions]]\nname = \"orders\"\nevent_type = \"{EVENT_TYPE}\"\nroute = \"{ROUTE}\"\n"
    )
}

/// A TCP port nothing listens on (right now).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `redis-server` of this test only, on its own port, keeping nothing on disk; killed
/// when dropped.
struct RedisServer {
    port: u16,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a server on `port` and waits until it answers.
    fn start(port: u16) -> RedisServer {
        let mut server = RedisServer { port, child: None };
        server.spawn();
        server
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--daemonize", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.answers() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not answer on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Whether the server answers PING.
    fn answers(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
        let mut reply = [0u8; 7];
        stream.write_all(b"PING\r\n").is_ok()
            && stream.read_exact(&mut reply).is_ok()
            && &reply == b"+PONG\r\n"
    }

    /// SIGKILL: the server and every key it held are gone.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A tmpfs of `size` mounted at a folder of its own; unmounted and removed when dropped,
/// also when the test fails.
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let path = std::env::temp_dir().join(unique("causeway-tmpfs"));
        std::fs::create_dir_all(&path).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .status()
            .unwrap();
        assert!(status.success(), "mounting a tmpfs needs root");
        Tmpfs { path }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let unmounted = Command::new("umount")
            .arg(&self.path)
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            // Still busy (a process that did not exit yet): detach it now, freed when idle.
            let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        }
        let _ = std::fs::remove_dir(&self.path);
    }
}

/// Fills the filesystem of `dir` with one file until a write fails for lack of space.
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    loop {
        if let Err(error) = file.write_all(&chunk).and_then(|()| file.sync_all()) {
            assert_eq!(error.raw_os_error(), Some(28), "{error}");
            break;
        }
    }
    // Whatever is left is smaller than a chunk: take it byte-sized.
    let small = [0u8; 512];
    while file
        .write_all(&small)
        .and_then(|()| file.sync_all())
        .is_ok()
    {}
    path
}

/// `/readyz`: its status and body.
async fn readyz(sidecar: &Sidecar) -> (u16, Value) {
    let response = sidecar
        .http
        .get(format!("{}/readyz", sidecar.admin))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Waits until `/readyz` shows `key` in `state`; its body then.
async fn wait_store_state(sidecar: &Sidecar, key: &str, state: &str, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let (_, body) = readyz(sidecar).await;
        if body[key] == state {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz did not show {key}: {state} within {within:?}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The value of the metric sample `series` (name and labels), if shown.
async fn metric(sidecar: &Sidecar, series: &str) -> Option<f64> {
    let text = sidecar.metrics_text().await;
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
}

/// How many log lines say `message` about `store`.
fn store_lines(sidecar: &Sidecar, message: &str, store: &str) -> Vec<Value> {
    sidecar
        .logs()
        .iter()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|json| json["message"] == message && json["store"] == store)
        .collect()
}

/// Waits until the app receives a delivery after `since`; when it came.
async fn first_delivery_after(app: &TestApp, since: Instant, within: Duration) -> Instant {
    let deadline = Instant::now() + within;
    loop {
        if let Some(at) = app
            .received(ROUTE)
            .iter()
            .map(|r| r.at)
            .filter(|at| *at > since)
            .min()
        {
            return at;
        }
        assert!(
            Instant::now() < deadline,
            "no delivery within {within:?} after the store came back"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// POSTs the app received between `from` and `to`.
fn posts_between(app: &TestApp, from: Instant, to: Instant) -> usize {
    app.received(ROUTE)
        .iter()
        .filter(|r| r.at > from && r.at < to)
        .count()
}

/// Holds a fault for `hold`, checking every 100 ms that `/readyz` stays 503 with `key`
/// failing.
async fn hold_outage(sidecar: &Sidecar, key: &str, hold: Duration) {
    let until = Instant::now() + hold;
    while Instant::now() < until {
        let (status, body) = readyz(sidecar).await;
        assert_eq!(status, 503, "{body}");
        assert_eq!(body[key], "failing", "{body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn millis(duration: Duration) -> u128 {
    duration.as_millis()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_and_restarted_stops_delivery_visibly_and_resumes_within_a_second() {
    let mut redis = RedisServer::start(free_port());
    let app = TestApp::start().await;
    let sidecar = Settings::new()
        .app(&app.url)
        .set("CAUSEWAY_DEDUP_URL", &redis.url())
        .config_file(&subscription_toml())
        .start();
    sidecar.wait_ready().await;
    assert_eq!(readyz(&sidecar).await.1["redis"], "ok");
    let broker = Broker::connect().await;

    let stream = Stream::start(
        &sidecar.api,
        StreamOptions::new("redis-restart", EVENT_TYPE, Duration::from_secs(12)),
    );
    stream.wait_accepted(25, Duration::from_secs(10)).await;
    app.wait_for(ROUTE, 10, Duration::from_secs(10)).await;

    let killed = Instant::now();
    redis.kill();
    let body = wait_store_state(&sidecar, "redis", "failing", Duration::from_secs(5)).await;
    let noticed = killed.elapsed();
    assert!(
        body["redis_error"].as_str().is_some_and(|e| !e.is_empty()),
        "{body}"
    );
    // Publishing does not need Redis; delivery waits without POSTing.
    hold_outage(&sidecar, "redis", Duration::from_secs(3)).await;
    let outage_posts = posts_between(&app, killed + Duration::from_millis(1500), Instant::now());
    assert_eq!(outage_posts, 0, "events were POSTed while Redis was down");

    redis.spawn();
    let back = Instant::now();
    let resumed = first_delivery_after(&app, back, Duration::from_secs(10)).await - back;
    sidecar.wait_ready_status(200, Duration::from_secs(5)).await;
    let ready_again = back.elapsed();
    let outage = back - killed;

    let published = stream.finish().await;
    let summary = published.verify(&app, &Verify::route(ROUTE)).await;

    let failing = store_lines(&sidecar, "store failing", "redis");
    let recovered = store_lines(&sidecar, "store recovered", "redis");
    assert_eq!(failing.len(), 1, "one warning per outage: {failing:?}");
    assert_eq!(
        recovered.len(),
        1,
        "one recovery line per outage: {recovered:?}"
    );
    assert!(failing[0]["error"].is_string(), "{:?}", failing[0]);
    assert!(recovered[0]["down_ms"].is_u64(), "{:?}", recovered[0]);
    let errors = metric(&sidecar, "causeway_store_errors_total{store=\"redis\"}")
        .await
        .unwrap();
    assert!(errors > 0.0, "store errors counted: {errors}");
    assert_eq!(
        metric(&sidecar, "causeway_store_up{store=\"redis\"}").await,
        Some(1.0)
    );
    println!(
        "fault-suite-detail: scenario=redis-restart events={} lost={} duplicates={} outage_ms={} \
         readyz_503_after_ms={} delivery_resumed_ms={} ready_again_ms={} store_errors={errors}",
        summary.events,
        summary.lost,
        summary.duplicates,
        millis(outage),
        millis(noticed),
        millis(resumed),
        millis(ready_again),
    );
    assert!(
        resumed < Duration::from_secs(2),
        "delivery resumed {resumed:?} after Redis returned"
    );

    sidecar.cleanup_subscription(&broker, "orders").await;
    sidecar.cleanup(&broker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sidecar_starts_while_redis_is_down_and_delivers_once_it_comes() {
    let port = free_port();
    let app = TestApp::start().await;
    let sidecar = Settings::new()
        .app(&app.url)
        .set("CAUSEWAY_DEDUP_URL", &format!("redis://127.0.0.1:{port}"))
        .config_file(&subscription_toml())
        .start();
    let body = wait_store_state(&sidecar, "redis", "failing", Duration::from_secs(20)).await;
    assert!(body["redis_error"].is_string(), "{body}");
    assert_eq!(readyz(&sidecar).await.0, 503);
    let broker = Broker::connect().await;
    // Wait until the subscription consumes, so that the event is taken and waits.
    let deadline = Instant::now() + Duration::from_secs(20);
    while readyz(&sidecar).await.1["subscriptions"]["orders"] != "consuming" {
        assert!(Instant::now() < deadline, "the subscription did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let published = sidecar.publish(EVENT_TYPE, r#"{"n":1}"#, &[]).await;
    assert_eq!(published.status, 202, "{published:?}");
    let event_id = published.body["event_id"].as_str().unwrap().to_owned();

    let redis = RedisServer::start(port);
    let back = Instant::now();
    sidecar.wait_ready_status(200, Duration::from_secs(5)).await;
    let ready_again = back.elapsed();
    let received = app.wait_for(ROUTE, 1, Duration::from_secs(10)).await;
    let delivered = received[0].at - back;
    assert_eq!(received[0].event_id(), event_id);
    assert_eq!(store_lines(&sidecar, "store failing", "redis").len(), 1);
    assert_eq!(store_lines(&sidecar, "store recovered", "redis").len(), 1);
    println!(
        "fault-suite: scenario=redis-down-at-start events=1 lost=0 duplicates=0 \
         ready_again_ms={} delivered_ms={}",
        millis(ready_again),
        millis(delivered)
    );

    sidecar.cleanup_subscription(&broker, "orders").await;
    sidecar.cleanup(&broker).await;
    drop(redis);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_stops_the_store_visibly_and_it_recovers_without_a_restart() {
    // Declared first, so that it is unmounted after the sidecar is gone.
    let tmpfs = Tmpfs::mount("16m");
    let app = TestApp::start().await;
    let sidecar = Settings::new()
        .set("CAUSEWAY_DATA_DIR", tmpfs.path.to_str().unwrap())
        .app(&app.url)
        .config_file(&subscription_toml())
        .start();
    sidecar.wait_ready().await;
    assert_eq!(readyz(&sidecar).await.1["store"], "ok");
    assert_eq!(
        metric(&sidecar, "causeway_store_errors_total{store=\"embedded\"}").await,
        Some(0.0)
    );
    let broker = Broker::connect().await;

    let stream = Stream::start(
        &sidecar.api,
        StreamOptions::new("disk-full", EVENT_TYPE, Duration::from_secs(14)),
    );
    stream.wait_accepted(25, Duration::from_secs(10)).await;
    let delivered_before = app.wait_for(ROUTE, 10, Duration::from_secs(10)).await;
    let already_delivered = delivered_before[0].clone();

    let filler = fill(&tmpfs.path);
    let filled = Instant::now();
    // The store fails at its next write that needs space.
    let body = wait_store_state(&sidecar, "store", "failing", Duration::from_secs(20)).await;
    let failed = Instant::now();
    let reason = body["store_error"].as_str().unwrap_or_default().to_owned();
    assert!(!reason.is_empty(), "{body}");
    assert_eq!(readyz(&sidecar).await.0, 503);

    // While it fails: keyed publishes and subscription changes answer 503, nothing is
    // POSTed, and the failure is counted.
    let keyed = sidecar
        .publish(EVENT_TYPE, "{}", &[("Idempotency-Key", &unique("k"))])
        .await;
    assert_eq!(keyed.status, 503, "{keyed:?}");
    assert!(keyed.headers.contains_key("retry-after"), "{keyed:?}");
    let spec = serde_json::json!({"event_type": "Other", "route": "/other"});
    let put = sidecar
        .call("PUT", "/v1/subscriptions/other", Some(spec))
        .await;
    assert_eq!(put.status, 503, "{put:?}");
    hold_outage(&sidecar, "store", Duration::from_secs(3)).await;
    let outage_posts = posts_between(&app, failed + Duration::from_millis(1500), Instant::now());
    assert_eq!(outage_posts, 0, "events were POSTed while the store failed");
    let errors = metric(&sidecar, "causeway_store_errors_total{store=\"embedded\"}")
        .await
        .unwrap();
    assert!(errors > 0.0, "store errors counted: {errors}");
    assert_eq!(
        metric(&sidecar, "causeway_store_up{store=\"embedded\"}").await,
        Some(0.0)
    );

    std::fs::remove_file(&filler).unwrap();
    let freed = Instant::now();
    let body = wait_store_state(&sidecar, "store", "ok", Duration::from_secs(10)).await;
    let recovered_in = freed.elapsed();
    assert!(body.get("store_error").is_none(), "{body}");
    sidecar
        .wait_ready_status(200, Duration::from_secs(10))
        .await;
    let resumed = first_delivery_after(&app, freed, Duration::from_secs(10)).await - freed;

    let published = stream.finish().await;
    let summary = published.verify(&app, &Verify::route(ROUTE)).await;

    // A copy of an event delivered before the fault is recognised after it.
    broker
        .inject(
            &sidecar.queue("orders"),
            &serde_json::to_vec(&already_delivered.body).unwrap(),
            BasicProperties::default()
                .with_message_id(ShortString::from(already_delivered.event_id())),
        )
        .await;
    let deadline = Instant::now() + Duration::from_secs(15);
    while !sidecar.logs().iter().any(|line| {
        line.contains("duplicate_event_skipped") && line.contains(&already_delivered.event_id())
    }) {
        assert!(Instant::now() < deadline, "the copy was not skipped");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let posts = app
        .received(ROUTE)
        .iter()
        .filter(|r| r.event_id() == already_delivered.event_id())
        .count();
    assert_eq!(posts, 1, "the copy reached the app");

    let failing = store_lines(&sidecar, "store failing", "embedded");
    let recovered = store_lines(&sidecar, "store recovered", "embedded");
    assert_eq!(failing.len(), 1, "one warning per outage: {failing:?}");
    assert_eq!(
        recovered.len(),
        1,
        "one recovery line per outage: {recovered:?}"
    );
    assert_eq!(
        metric(&sidecar, "causeway_store_up{store=\"embedded\"}").await,
        Some(1.0)
    );
    println!(
        "fault-suite-detail: scenario=disk-full events={} lost={} duplicates={} refused_503={} \
         store_failed_after_fill_ms={} outage_ms={} recovered_after_free_ms={} \
         delivery_resumed_ms={} store_errors={errors} error={reason:?}",
        summary.events,
        summary.lost,
        summary.duplicates,
        summary.refused,
        millis(failed - filled),
        millis(freed - failed),
        millis(recovered_in),
        millis(resumed),
    );

    sidecar.cleanup_subscription(&broker, "orders").await;
    sidecar.cleanup(&broker).await;
    drop(sidecar);
    drop(tmpfs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flow_receipts_wait_out_a_redis_outage_and_publishes_never_wait_for_them() {
    let port = free_port();
    let mut redis = RedisServer::start(port);
    let app = TestApp::start().await;
    let sidecar = Settings::new()
        .app(&app.url)
        .set("CAUSEWAY_DEDUP_URL", &redis.url())
        .start();
    sidecar.wait_ready().await;
    let correlation_id = unique("order");
    let flow_has = |event_id: String| {
        let sidecar = &sidecar;
        let path = format!("/v1/flows/{correlation_id}");
        async move {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let answer = sidecar.call("GET", &path, None).await;
                let events = answer.body["events"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                if events.iter().any(|e| e["event_id"] == event_id.as_str()) {
                    return;
                }
                assert!(
                    Instant::now() < deadline,
                    "{event_id} never showed: {answer:?}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let first = sidecar
        .publish(EVENT_TYPE, "{}", &[("X-Correlation-ID", &correlation_id)])
        .await;
    assert_eq!(first.status, 202);
    flow_has(first.body["event_id"].as_str().unwrap().to_owned()).await;

    redis.kill();
    let during = sidecar
        .publish(EVENT_TYPE, "{}", &[("X-Correlation-ID", &correlation_id)])
        .await;
    assert_eq!(
        during.status, 202,
        "a publish does not wait for its receipt: {during:?}"
    );
    let failed = r#"causeway_flow_receipts_total{outcome="failed"}"#;
    let deadline = Instant::now() + Duration::from_secs(20);
    while metric(&sidecar, failed).await.unwrap_or_default() < 2.0 {
        assert!(
            Instant::now() < deadline,
            "the failed writes were not counted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let lines = |message: &str| {
        sidecar
            .logs()
            .iter()
            .filter(|line| line.contains(message))
            .count()
    };
    assert_eq!(
        lines("flow receipts cannot be written"),
        1,
        "one line per state change"
    );

    // The receipt waited in the sidecar: it reaches the new (empty) Redis.
    let _redis = RedisServer::start(port);
    flow_has(during.body["event_id"].as_str().unwrap().to_owned()).await;
    assert_eq!(lines("flow receipts are written again"), 1);
    let broker = Broker::connect().await;
    sidecar.cleanup(&broker).await;
}
