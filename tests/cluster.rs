//! Faults of a clustered broker, against the 3-node cluster of `scripts/cluster`: a node killed
//! (the one that leads the subscription's queue, the one the sidecar publishes through), the
//! whole broker restarted with a backlog, a consumer closed by the broker, a memory alarm. Each
//! scenario runs a stream of keyed publishes through the real binary and checks by event id at
//! the app that nothing accepted is lost and nothing is POSTed twice; each prints a
//! `fault-suite:` line with its figures.
//!
//! These tests stop and kill shared nodes: they run one at a time (a nextest test group, and
//! the lock that `Cluster::take` holds), and restore the cluster when they end.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{
    Settings, Sidecar,
    app::TestApp,
    cluster::Cluster,
    stream::{Stream, StreamOptions, Summary, Verify},
};

/// The subscription every stream goes to.
const STREAM: &str = "stream";
const STREAM_ROUTE: &str = "/stream";
/// A subscription whose app answers 422, to make a dead letter before a fault.
const DOOMED: &str = "doomed";
const DOOMED_ROUTE: &str = "/doomed";

const SUBSCRIPTIONS: &str = r#"
[[subscriptions]]
name = "stream"
event_type = "Tick"
route = "/stream"

[[subscriptions]]
name = "doomed"
event_type = "Doomed"
route = "/doomed"
"#;

/// How long a stream runs: long enough for a fault and the recovery from it.
const STREAM_FOR: Duration = Duration::from_secs(20);
/// Publishing and delivery must be back within this after a fault (the sidecar aims at 2 s;
/// the rest is the broker's own failover and the test's polling).
const RECOVERS: Duration = Duration::from_secs(20);

/// A sidecar on the cluster with `toml` as its config file, delivering to `app`, ready.
async fn sidecar(app: &TestApp, amqp_url: &str, toml: &str) -> Sidecar {
    let sidecar = Settings::new()
        .app(&app.url)
        .set("CAUSEWAY_AMQP_URL", amqp_url)
        .config_file(toml)
        .start();
    sidecar.wait_ready().await;
    sidecar
}

/// Stops the sidecar, then deletes its exchanges and the queues of `subscriptions` (stopped
/// first, so that it cannot declare them again).
async fn clean_up(cluster: &Cluster, mut sidecar: Sidecar, subscriptions: &[&str]) {
    sidecar.kill();
    let broker = cluster.any_broker().await;
    for name in subscriptions {
        sidecar.cleanup_subscription(&broker, name).await;
    }
    sidecar.cleanup(&broker).await;
}

/// Publishes one event the app rejects and waits until it is listed as a dead letter; its id.
async fn make_dead_letter(sidecar: &Sidecar) -> String {
    let published = sidecar.publish("Doomed", r#"{"doomed":true}"#, &[]).await;
    assert_eq!(published.status, 202, "{published:?}");
    let listed = sidecar
        .wait_dead_letters(DOOMED, 1, Duration::from_secs(15))
        .await;
    let event_id = published.body["event_id"].as_str().unwrap().to_owned();
    assert_eq!(listed["dead_letters"][0]["event_id"], event_id);
    event_id
}

/// Waits until listing the dead letters of `name` answers 200 with exactly `ids`, in order.
async fn wait_listed(sidecar: &Sidecar, name: &str, ids: &[String], within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let path = format!("/v1/subscriptions/{name}/dead-letters");
        let answer = sidecar.call("GET", &path, None).await;
        let listed: Vec<&str> = answer.body["dead_letters"]
            .as_array()
            .map(|all| all.iter().filter_map(|l| l["event_id"].as_str()).collect())
            .unwrap_or_default();
        if answer.status == 200 && listed == ids {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the dead letters of {name} were not listed as {ids:?} within {within:?}: {answer:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until the app received `more` POSTs on `route` beyond the `seen` it had.
async fn wait_delivered(app: &TestApp, route: &str, seen: usize, more: usize, within: Duration) {
    app.wait_for(route, seen + more, within).await;
}

/// Prints the sidecar's log when the test fails while it is held.
struct LogsOnFailure<'a>(&'a Sidecar);

impl Drop for LogsOnFailure<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("sidecar log:\n{}", self.0.logs().join("\n"));
        }
    }
}

fn publisher_name(sidecar: &Sidecar) -> String {
    format!("causeway {} publisher", sidecar.service())
}

fn consumer_name(sidecar: &Sidecar) -> String {
    format!("causeway {} consumer", sidecar.service())
}

/// Which node a kill scenario kills.
#[derive(Clone, Copy, Debug)]
enum Victim {
    /// The node that leads the subscription's queue, while the sidecar publishes through
    /// another node: the queue elects a new leader, the publishing connection stays.
    QueueLeader,
    /// The node the sidecar publishes through, which also leads the queue: the publishing
    /// connection and the queue's leader go at the same instant.
    PublisherNode,
}

impl Victim {
    fn scenario(self) -> &'static str {
        match self {
            Victim::QueueLeader => "kill-queue-leader",
            Victim::PublisherNode => "kill-publisher-node",
        }
    }

    /// Whether the sidecar's placement is the one this scenario needs.
    fn placed(self, publisher: u8, leader: u8) -> bool {
        match self {
            Victim::QueueLeader => publisher != leader,
            Victim::PublisherNode => publisher == leader,
        }
    }
}

/// The node the sidecar's publishing connection is on, ignoring the broker's connections in
/// `gone` (those of an earlier process, which the management API may still list a moment).
async fn publisher_node(cluster: &Cluster, sidecar: &Sidecar, gone: &[String]) -> (String, u8) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let found: Vec<(String, u8)> = cluster
            .connections_named(&publisher_name(sidecar))
            .await
            .into_iter()
            .filter(|(name, _)| !gone.contains(name))
            .collect();
        if let [found] = found.as_slice() {
            return found.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no single publishing connection: {found:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A sidecar on every node's URL whose publishing connection is where `victim` needs it.
/// The sidecar shuffles its address list at every start, so it is started again (same data
/// directory and queues) until it lands there.
async fn placed_sidecar(cluster: &Cluster, app: &TestApp, victim: Victim) -> (Sidecar, u8) {
    let mut sidecar = sidecar(app, &Cluster::urls(), SUBSCRIPTIONS).await;
    let queue = sidecar.queue(STREAM);
    let mut gone = Vec::new();
    for _ in 0..20 {
        let leader = cluster.queue_leader(&queue, Duration::from_secs(10)).await;
        let (connection, publisher) = publisher_node(cluster, &sidecar, &gone).await;
        if victim.placed(publisher, leader) {
            return (sidecar, leader);
        }
        gone.push(connection);
        sidecar.settings.keep_data = true;
        let settings = sidecar.settings.again();
        drop(sidecar);
        sidecar = settings.start();
        sidecar.wait_ready().await;
    }
    panic!("the sidecar never published through the node {victim:?} needs");
}

/// A node kill during a stream: publishing and delivery go on through the other nodes, and a
/// dead letter made before the kill is listed, unchanged, while the node is down.
async fn kill_during_a_stream(cluster: &Cluster, victim: Victim) -> Summary {
    let app = TestApp::start().await;
    app.always(DOOMED_ROUTE, 422);
    let (sidecar, leader) = placed_sidecar(cluster, &app, victim).await;
    let logs = LogsOnFailure(&sidecar);
    let dead_letter = make_dead_letter(&sidecar).await;
    let stream = Stream::start(
        &sidecar.api,
        StreamOptions::new(victim.scenario(), "Tick", STREAM_FOR),
    );
    stream.wait_accepted(50, Duration::from_secs(15)).await;

    let node = match victim {
        Victim::QueueLeader => leader,
        Victim::PublisherNode => publisher_node(cluster, &sidecar, &[]).await.1,
    };
    cluster.kill(node).await;
    let killed = Instant::now();
    let seen = app.received(STREAM_ROUTE).len();
    // While the node is down: the dead letter is still listed, publishing and delivery go on.
    wait_listed(
        &sidecar,
        DOOMED,
        std::slice::from_ref(&dead_letter),
        RECOVERS,
    )
    .await;
    stream.wait_more_accepted(50, RECOVERS).await;
    wait_delivered(&app, STREAM_ROUTE, seen, 50, RECOVERS).await;
    cluster.restart(node).await;

    let published = stream.finish().await;
    let summary = published.verify(&app, &Verify::route(STREAM_ROUTE)).await;
    println!(
        "fault-suite: scenario={} killed_node={node} first_202_after_kill_ms={}",
        victim.scenario(),
        published.first_accepted_after(killed).unwrap().as_millis()
    );
    wait_listed(&sidecar, DOOMED, &[dead_letter], RECOVERS).await;
    drop(logs);
    clean_up(cluster, sidecar, &[STREAM, DOOMED]).await;
    summary
}

#[tokio::test]
async fn killing_the_node_that_leads_the_queue_loses_no_event() {
    let cluster = Cluster::take().await;
    let summary = kill_during_a_stream(&cluster, Victim::QueueLeader).await;
    assert!(summary.accepted > 100, "{}", summary.line());
}

#[tokio::test]
async fn killing_the_node_the_sidecar_publishes_through_fails_over() {
    let cluster = Cluster::take().await;
    let summary = kill_during_a_stream(&cluster, Victim::PublisherNode).await;
    assert!(summary.accepted > 100, "{}", summary.line());
}

/// The whole broker restarts (`stop_app` on all three nodes at once, then all started again
/// together: a cluster that stopped whole must start whole) while events wait in a main queue
/// and in a retry wait queue: they are all delivered afterwards, each accepted once by the
/// app, and the stream around the restart loses nothing.
#[tokio::test]
async fn a_broker_restart_with_a_backlog_loses_no_event() {
    let cluster = Cluster::take().await;
    let app = TestApp::start().await;
    // A slow app with one delivery at a time: a burst waits in the main queue.
    app.delay("/backlog", Duration::from_millis(150));
    // The first attempt of every retried event fails: they wait in the first wait queue for
    // up to 15 s (full jitter), most of them still there when the broker stops.
    const RETRIED: usize = 30;
    app.respond("/retry", &[500; RETRIED]);
    let toml = format!(
        "{SUBSCRIPTIONS}
[[subscriptions]]
name = \"backlog\"
event_type = \"Backlog\"
route = \"/backlog\"
concurrency = 1

[[subscriptions]]
name = \"retry\"
event_type = \"Retry\"
route = \"/retry\"
backoff_initial_ms = 15000
backoff_max_ms = 15000
"
    );
    let sidecar = sidecar(&app, &Cluster::url(1), &toml).await;
    let broker = Cluster::broker(1).await;
    let mut backlog = Vec::new();
    for n in 0..60 {
        let published = sidecar
            .publish("Backlog", &format!(r#"{{"n":{n}}}"#), &[])
            .await;
        assert_eq!(published.status, 202, "{published:?}");
        backlog.push(published.body["event_id"].as_str().unwrap().to_owned());
    }
    let mut retried = Vec::new();
    for n in 0..RETRIED {
        let published = sidecar
            .publish("Retry", &format!(r#"{{"n":{n}}}"#), &[])
            .await;
        assert_eq!(published.status, 202, "{published:?}");
        retried.push(published.body["event_id"].as_str().unwrap().to_owned());
    }
    app.wait_for("/retry", RETRIED, Duration::from_secs(15))
        .await;
    let stream = Stream::start(
        &sidecar.api,
        // Long enough for the broker to stop and start, and the sidecar to reconnect.
        StreamOptions::new("broker-restart", "Tick", Duration::from_secs(45)),
    );
    stream.wait_accepted(50, Duration::from_secs(15)).await;
    let (main_waiting, _) = broker.queue_state(&sidecar.queue("backlog")).await;
    let (retry_waiting, _) = broker
        .queue_state(&format!("{}.retry.1", sidecar.queue("retry")))
        .await;
    assert!(
        main_waiting >= 10,
        "no backlog in the main queue: {main_waiting}"
    );
    assert!(
        retry_waiting >= 5,
        "no backlog in the wait queue: {retry_waiting}"
    );
    drop(broker);

    let stopped = Instant::now();
    cluster.stop_all_apps().await;
    let down_for = stopped.elapsed();
    cluster.start_all().await;
    let started = Instant::now();
    let restart_took = stopped.elapsed();
    stream.wait_more_accepted(50, RECOVERS).await;

    let published = stream.finish().await;
    let summary = published.verify(&app, &Verify::route(STREAM_ROUTE)).await;
    let first_202 = published.first_accepted_after(started).unwrap();
    // Every backlog event arrives, once.
    let received = app
        .wait_for("/backlog", backlog.len(), Duration::from_secs(60))
        .await;
    let backlog_ids: Vec<String> = received.iter().map(|r| r.event_id()).collect();
    for id in &backlog {
        let posts = backlog_ids.iter().filter(|r| *r == id).count();
        assert_eq!(posts, 1, "backlog event {id} POSTed {posts} times");
    }
    // Every retried event comes back from its wait queue and is accepted exactly once: the
    // app answered 500 to the first RETRIED POSTs and 200 to every later one.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let accepted: Vec<String> = app.received("/retry")[RETRIED..]
            .iter()
            .map(|r| r.event_id())
            .collect();
        let missing: Vec<&String> = retried.iter().filter(|id| !accepted.contains(id)).collect();
        if missing.is_empty() {
            for id in &retried {
                let posts = accepted.iter().filter(|r| *r == id).count();
                assert_eq!(posts, 1, "retried event {id} accepted {posts} times");
            }
            break;
        }
        assert!(
            Instant::now() < deadline,
            "retried events not delivered after the restart: {missing:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "fault-suite: scenario=broker-restart backlog_main={main_waiting} \
         backlog_wait_queue={retry_waiting} backlog_events={} stop_ms={} restart_ms={} \
         first_202_after_start_ms={}",
        backlog.len() + retried.len(),
        down_for.as_millis(),
        restart_took.as_millis(),
        first_202.as_millis()
    );
    assert!(
        summary.answers_503 > 0,
        "the restart went unnoticed: {}",
        summary.line()
    );
    clean_up(&cluster, sidecar, &[STREAM, DOOMED, "backlog", "retry"]).await;
}

/// The broker closes the sidecar's consumer connection (as an operator, or a policy, would):
/// it comes back with exactly one consumer on the queue, and the stream loses nothing.
#[tokio::test]
async fn a_consumer_closed_by_the_broker_comes_back_once_and_loses_no_event() {
    let cluster = Cluster::take().await;
    let app = TestApp::start().await;
    let sidecar = sidecar(&app, &Cluster::url(1), SUBSCRIPTIONS).await;
    let queue = sidecar.queue(STREAM);
    let stream = Stream::start(
        &sidecar.api,
        StreamOptions::new("consumer-closed-by-broker", "Tick", STREAM_FOR),
    );
    stream.wait_accepted(50, Duration::from_secs(15)).await;

    let name = consumer_name(&sidecar);
    let before = cluster.connections_named(&name).await;
    cluster
        .close_connection(&name, Duration::from_secs(10))
        .await;
    let closed = Instant::now();
    // A new connection (the broker names each by its client port) and deliveries again.
    let deadline = closed + RECOVERS;
    loop {
        let now = cluster.connections_named(&name).await;
        if now.len() == 1 && now != before {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no new consumer connection: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let summary = stream
        .finish()
        .await
        .verify(&app, &Verify::route(STREAM_ROUTE))
        .await;
    let broker = Cluster::broker(1).await;
    let (_, consumers) = broker.queue_state(&queue).await;
    assert_eq!(consumers, 1, "consumers on {queue} after the reconnect");
    let connections = cluster.connections_named(&consumer_name(&sidecar)).await;
    assert_eq!(
        connections.len(),
        1,
        "consumer connections: {connections:?}"
    );
    assert!(summary.accepted > 100, "{}", summary.line());
    clean_up(&cluster, sidecar, &[STREAM, DOOMED]).await;
}

/// A memory alarm on one node blocks publishing on the whole cluster: publishes answer 503
/// quickly instead of hanging, nothing accepted is lost, and publishing resumes once the alarm
/// clears.
#[tokio::test]
async fn a_memory_alarm_answers_503_quickly_and_publishing_resumes() {
    let cluster = Cluster::take().await;
    let app = TestApp::start().await;
    let sidecar = sidecar(&app, &Cluster::url(1), SUBSCRIPTIONS).await;
    let stream = Stream::start(
        &sidecar.api,
        StreamOptions::new("memory-alarm", "Tick", STREAM_FOR),
    );
    stream.wait_accepted(50, Duration::from_secs(15)).await;

    // The alarm is raised on a node the sidecar is not connected to: an alarm anywhere
    // blocks publishers everywhere.
    cluster.set_memory_alarm(2).await;
    let raised = Instant::now();
    // Publishes of a type nobody subscribes to, until one is refused.
    let answered_in = loop {
        let sent = Instant::now();
        let probe = sidecar.publish("Probe", "{}", &[]).await;
        if probe.status == 503 {
            assert!(probe.headers.contains_key("retry-after"), "{probe:?}");
            break sent.elapsed();
        }
        assert!(
            raised.elapsed() < Duration::from_secs(15),
            "publishes were not refused during the alarm: {probe:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let refused_after = raised.elapsed();
    // The stream keeps going through the alarm for a while.
    tokio::time::sleep(Duration::from_secs(3)).await;
    cluster.clear_memory_alarm(2).await;
    let cleared = Instant::now();
    stream.wait_more_accepted(25, RECOVERS).await;

    let published = stream.finish().await;
    let summary = published.verify(&app, &Verify::route(STREAM_ROUTE)).await;
    let resumed_in = published.first_accepted_after(cleared).unwrap();
    println!(
        "fault-suite: scenario=memory-alarm refused_after_ms={} answered_503_in_ms={} \
         first_202_after_clear_ms={}",
        refused_after.as_millis(),
        answered_in.as_millis(),
        resumed_in.as_millis()
    );
    assert!(
        summary.refused > 0,
        "the alarm refused nothing: {}",
        summary.line()
    );
    assert!(
        summary.slowest_503 < Duration::from_secs(1),
        "a 503 took {:?}",
        summary.slowest_503
    );
    clean_up(&cluster, sidecar, &[STREAM, DOOMED]).await;
}

/// The same stream with no fault: the baseline the scenarios compare with.
#[tokio::test]
async fn a_stream_without_faults_delivers_every_event_once() {
    let cluster = Cluster::take().await;
    let app = TestApp::start().await;
    let sidecar = sidecar(&app, &Cluster::url(1), SUBSCRIPTIONS).await;
    let stream = Stream::start(
        &sidecar.api,
        StreamOptions::new("no-fault", "Tick", Duration::from_secs(10)),
    );
    let summary = stream
        .finish()
        .await
        .verify(&app, &Verify::route(STREAM_ROUTE))
        .await;
    assert_eq!(summary.accepted, summary.events, "{}", summary.line());
    assert_eq!(
        summary.answers_503 + summary.answers_504,
        0,
        "{}",
        summary.line()
    );
    clean_up(&cluster, sidecar, &[STREAM, DOOMED]).await;
}
