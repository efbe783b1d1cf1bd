//! Test helpers: the real sidecar binary, the real broker, and a TCP proxy that can cut the
//! line between them. Every test uses names of its own, so tests run in parallel.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

pub mod app;
pub mod browser;
pub mod cluster;
pub mod proxy;
pub mod stream;

use std::{
    collections::HashMap,
    ffi::OsString,
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures_util::StreamExt;
use lapin::{
    BasicProperties, Channel, Connection, ConnectionProperties,
    message::Delivery,
    options::{
        BasicAckOptions, BasicConsumeOptions, BasicGetOptions, ExchangeDeleteOptions,
        QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
    },
    types::{AMQPValue, FieldTable},
};
use serde_json::Value;
use uuid::Uuid;

pub const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// A name no other test uses.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", &Uuid::now_v7().simple().to_string()[20..])
}

/// The settings of one sidecar under test; change them before `start`.
pub struct Settings {
    pub env: HashMap<String, String>,
    /// Leave the data directory when the sidecar is dropped (for a restart).
    pub keep_data: bool,
}

impl Settings {
    /// A service with its own exchange, unrouted queue and data directory.
    pub fn new() -> Self {
        let id = unique("t");
        let data_dir = std::env::temp_dir().join(format!("causeway-test-{id}"));
        let mut env = HashMap::new();
        for (key, value) in [
            ("CAUSEWAY_SERVICE", format!("svc-{id}")),
            ("CAUSEWAY_API_ADDR", "127.0.0.1:0".into()),
            ("CAUSEWAY_ADMIN_ADDR", "127.0.0.1:0".into()),
            ("CAUSEWAY_AMQP_URL", AMQP_URL.into()),
            ("CAUSEWAY_EXCHANGE", format!("test.{id}.events")),
            ("CAUSEWAY_UNROUTED_QUEUE", format!("test.{id}.unrouted")),
            ("CAUSEWAY_DATA_DIR", data_dir.display().to_string()),
            ("CAUSEWAY_CONFIRM_TIMEOUT", "3s".into()),
            ("CAUSEWAY_SHUTDOWN_GRACE", "10s".into()),
            ("RUST_LOG", "info,causeway=debug".into()),
        ] {
            env.insert(key.to_string(), value);
        }
        Settings {
            env,
            keep_data: false,
        }
    }

    /// The same settings again, for a second process or a restart.
    pub fn again(&self) -> Settings {
        Settings {
            env: self.env.clone(),
            keep_data: false,
        }
    }

    pub fn set(mut self, key: &str, value: &str) -> Self {
        self.env.insert(key.to_string(), value.to_string());
        self
    }

    pub fn get(&self, key: &str) -> &str {
        &self.env[key]
    }

    /// Delivers to `app_url`.
    pub fn app(self, app_url: &str) -> Self {
        self.set("CAUSEWAY_APP_URL", app_url)
    }

    /// Writes `toml` as the config file (inside the data directory, removed with it).
    pub fn config_file(self, toml: &str) -> Self {
        let dir = PathBuf::from(self.get("CAUSEWAY_DATA_DIR"));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("causeway.toml");
        std::fs::write(&path, toml).unwrap();
        self.set("CAUSEWAY_CONFIG", path.to_str().unwrap())
    }

    /// Starts the binary and waits until it listens (not until it is ready).
    pub fn start(self) -> Sidecar {
        self.start_with_env(&[])
    }

    /// Like [`Settings::start`], with variables of any bytes besides the settings.
    pub fn start_with_env(self, extra: &[(OsString, OsString)]) -> Sidecar {
        let mut command = Command::new(env!("CARGO_BIN_EXE_causeway"));
        command
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(&self.env)
            .envs(extra.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("the causeway binary starts");
        let logs = Arc::new(Mutex::new(Vec::<String>::new()));
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        for (stream, logs) in [
            (
                Box::new(stdout) as Box<dyn std::io::Read + Send>,
                logs.clone(),
            ),
            (Box::new(stderr), logs.clone()),
        ] {
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    logs.lock().unwrap().push(line);
                }
            });
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        let (api, admin) = loop {
            let found = logs.lock().unwrap().iter().find_map(|line| {
                let json: Value = serde_json::from_str(line).ok()?;
                (json["message"] == "listening").then(|| {
                    (
                        json["api_addr"].as_str().unwrap().to_string(),
                        json["admin_addr"].as_str().unwrap().to_string(),
                    )
                })
            });
            if let Some(found) = found {
                break found;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "causeway exited with {status} before listening:\n{}",
                    logs.lock().unwrap().join("\n")
                );
            }
            assert!(
                Instant::now() < deadline,
                "causeway did not start listening in time"
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        Sidecar {
            child,
            api: format!("http://{api}"),
            admin: format!("http://{admin}"),
            logs,
            settings: self,
            http: http_client(),
            cleaned: Mutex::default(),
        }
    }
}

pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// A running sidecar process; killed when dropped.
pub struct Sidecar {
    child: Child,
    pub api: String,
    pub admin: String,
    logs: Arc<Mutex<Vec<String>>>,
    pub settings: Settings,
    pub http: reqwest::Client,
    /// Queues and exchanges the test deleted, deleted again once the process is gone: a
    /// running sidecar declares its queues again when they vanish under it.
    cleaned: Mutex<Vec<Declared>>,
}

/// Something a sidecar declared on the broker.
#[derive(Clone)]
enum Declared {
    Queue(String),
    Exchange(String),
}

/// An HTTP answer, read whole.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Sidecar {
    pub fn exchange(&self) -> &str {
        self.settings.get("CAUSEWAY_EXCHANGE")
    }

    pub fn unrouted(&self) -> &str {
        self.settings.get("CAUSEWAY_UNROUTED_QUEUE")
    }

    pub fn service(&self) -> &str {
        self.settings.get("CAUSEWAY_SERVICE")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Every log line so far.
    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }

    /// The dead-letter listing of subscription `name`.
    pub async fn dead_letters(&self, name: &str) -> Value {
        let path = format!("/v1/subscriptions/{name}/dead-letters");
        let answer = self.call("GET", &path, None).await;
        assert_eq!(answer.status, 200, "{answer:?}");
        answer.body
    }

    /// Waits until the dead-letter queue of `name` holds `count` messages; the listing.
    pub async fn wait_dead_letters(&self, name: &str, count: u64, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let listed = self.dead_letters(name).await;
            if listed["total"] == count {
                return listed;
            }
            assert!(Instant::now() < deadline, "dead letters: {listed}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The log lines at level ERROR.
    pub fn error_lines(&self) -> Vec<String> {
        self.logs()
            .into_iter()
            .filter(|l| l.contains(r#""level":"ERROR""#))
            .collect()
    }

    /// Waits until a JSON log line has `message` equal to `message`, and returns it.
    pub async fn wait_for_log(&self, message: &str, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let found = self.logs().iter().find_map(|line| {
                let json: Value = serde_json::from_str(line).ok()?;
                (json["message"] == message).then_some(json)
            });
            if let Some(found) = found {
                return found;
            }
            assert!(
                Instant::now() < deadline,
                "no log line {message:?} within {within:?}; logs:\n{}",
                self.logs().join("\n")
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The text of `GET /metrics`.
    pub async fn metrics_text(&self) -> String {
        self.http
            .get(format!("{}/metrics", self.admin))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// `GET /readyz` status.
    pub async fn readyz(&self) -> u16 {
        match self.http.get(format!("{}/readyz", self.admin)).send().await {
            Ok(response) => response.status().as_u16(),
            Err(_) => 0,
        }
    }

    /// Waits until `/readyz` answers `status`.
    pub async fn wait_ready_status(&self, status: u16, within: Duration) {
        let deadline = Instant::now() + within;
        while self.readyz().await != status {
            assert!(
                Instant::now() < deadline,
                "/readyz did not become {status} within {within:?}; logs:\n{}",
                self.logs().join("\n")
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn wait_ready(&self) {
        self.wait_ready_status(200, Duration::from_secs(20)).await;
    }

    /// Publishes `body` as `event_type` with extra headers.
    pub async fn publish(&self, event_type: &str, body: &str, headers: &[(&str, &str)]) -> Answer {
        let mut request = self
            .http
            .post(format!("{}/v1/publish/{event_type}", self.api))
            .header("content-type", "application/json")
            .body(body.to_string());
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        read(request.send().await.expect("the API answers")).await
    }

    /// Sends a request to the API with an optional JSON body.
    pub async fn call(&self, method: &str, path: &str, json: Option<Value>) -> Answer {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut request = self.http.request(method, format!("{}{path}", self.api));
        if let Some(json) = json {
            request = request
                .header("content-type", "application/json")
                .body(json.to_string());
        }
        read(request.send().await.expect("the API answers")).await
    }

    /// The queue names of subscription `name`.
    pub fn queue(&self, name: &str) -> String {
        format!("{}.{name}", self.service())
    }

    /// Deletes the queues of subscription `name`.
    pub async fn cleanup_subscription(&self, broker: &Broker, name: &str) {
        let main = self.queue(name);
        let mut queues = vec![main.clone(), format!("{main}.dlq")];
        queues.extend((1..=WAIT_TIERS).map(|tier| format!("{main}.retry.{tier}")));
        for queue in queues {
            self.delete(broker, Declared::Queue(queue)).await;
        }
    }

    /// Deletes `declared` now, and again once the process is gone.
    async fn delete(&self, broker: &Broker, declared: Declared) {
        broker.delete(&declared).await;
        self.cleaned.lock().unwrap().push(declared);
    }

    /// Kills the process at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit, at most `within`.
    pub async fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "causeway did not exit within {within:?}; logs:\n{}",
                self.logs().join("\n")
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Deletes what this sidecar declared on the broker.
    pub async fn cleanup(&self, broker: &Broker) {
        let exchange = Declared::Exchange(self.exchange().to_owned());
        self.delete(broker, exchange).await;
        let unrouted = self.unrouted().to_owned();
        self.delete(broker, Declared::Exchange(unrouted.clone()))
            .await;
        self.delete(broker, Declared::Queue(unrouted)).await;
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let cleaned = std::mem::take(&mut *self.cleaned.lock().unwrap());
        if !cleaned.is_empty() {
            // Drop cannot await, and a runtime cannot start inside the test's own: a thread
            // of its own deletes them, within a bound.
            let deleting = std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                runtime.block_on(async {
                    let deleted = async {
                        let broker = Broker::connect().await;
                        for declared in &cleaned {
                            broker.delete(declared).await;
                        }
                    };
                    let _ = tokio::time::timeout(Duration::from_secs(10), deleted).await;
                });
            });
            let _ = deleting.join();
        }
        if let Some(url) = self.settings.env.get("CAUSEWAY_DEDUP_URL") {
            forget_routes(url, self.exchange());
        }
        if !self.settings.keep_data {
            let dir = PathBuf::from(self.settings.get("CAUSEWAY_DATA_DIR"));
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Removes the flow routes registered on `exchange` from the Redis at `url`: a test's
/// exchange is gone with it, and routes (unlike receipts) do not expire by themselves.
fn forget_routes(url: &str, exchange: &str) {
    let Ok(client) = redis::Client::open(url) else {
        return;
    };
    let Ok(mut connection) = client.get_connection_with_timeout(Duration::from_secs(1)) else {
        return;
    };
    let _ = connection.set_read_timeout(Some(Duration::from_secs(1)));
    let keys: Vec<String> = redis::cmd("HKEYS")
        .arg("causeway:flows:routes")
        .query(&mut connection)
        .unwrap_or_default();
    let prefix = format!("{exchange}/");
    let ours: Vec<&String> = keys.iter().filter(|k| k.starts_with(&prefix)).collect();
    if !ours.is_empty() {
        let _: redis::RedisResult<i64> = redis::cmd("HDEL")
            .arg("causeway:flows:routes")
            .arg(ours)
            .query(&mut connection);
    }
}

pub async fn read(response: reqwest::Response) -> Answer {
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let bytes = response.bytes().await.unwrap_or_default();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Answer {
        status,
        headers,
        body,
    }
}

/// A test's own connection to the real broker.
pub struct Broker {
    pub connection: Connection,
    pub channel: Channel,
}

impl Broker {
    pub async fn connect() -> Self {
        let connection = Connection::connect(AMQP_URL, ConnectionProperties::default())
            .await
            .expect("RabbitMQ on 127.0.0.1:5672");
        let channel = connection.create_channel().await.unwrap();
        Broker {
            connection,
            channel,
        }
    }

    /// A private queue bound to `exchange` with `routing_key`, consumed from.
    pub async fn bind(&self, exchange: &str, routing_key: &str) -> TestQueue {
        let channel = self.connection.create_channel().await.unwrap();
        let queue = channel
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        channel
            .queue_bind(
                queue.name().clone(),
                exchange.into(),
                routing_key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        let consumer = channel
            .basic_consume(
                queue.name().clone(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        TestQueue { channel, consumer }
    }

    /// Takes one message from a queue without a consumer, if there is one.
    pub async fn get(&self, queue: &str) -> Option<Delivery> {
        let message = self
            .channel
            .basic_get(queue.into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap();
        message.map(|m| m.delivery)
    }

    /// Puts a raw message straight into `queue`, as another producer (or a bug) could.
    pub async fn inject(&self, queue: &str, body: &[u8], properties: BasicProperties) {
        self.channel
            .basic_publish(
                "".into(),
                queue.into(),
                lapin::options::BasicPublishOptions::default(),
                body,
                properties.with_delivery_mode(2),
            )
            .await
            .unwrap();
    }

    /// How many messages wait in `queue`, and how many consumers it has.
    pub async fn queue_state(&self, queue: &str) -> (u32, u32) {
        let declared = self.passive_declare(queue).await.unwrap();
        (declared.message_count(), declared.consumer_count())
    }

    /// How many messages wait in `queue`, not counting those a consumer holds; `None` when
    /// there is no such queue.
    pub async fn depth(&self, queue: &str) -> Option<u32> {
        let declared = self.passive_declare(queue).await.ok()?;
        Some(declared.message_count())
    }

    /// A passive declare of `queue`, on a channel of its own (a missing queue closes it).
    async fn passive_declare(&self, queue: &str) -> lapin::Result<lapin::Queue> {
        let channel = self.connection.create_channel().await.unwrap();
        let declared = channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        let _ = channel.close(200, "done".into()).await;
        Ok(declared)
    }

    /// Deletes a queue or an exchange a sidecar declared.
    async fn delete(&self, declared: &Declared) {
        match declared {
            Declared::Queue(name) => self.delete_queue(name).await,
            Declared::Exchange(name) => self.delete_exchange(name).await,
        }
    }

    pub async fn delete_exchange(&self, name: &str) {
        let _ = self
            .channel
            .exchange_delete(name.into(), ExchangeDeleteOptions::default())
            .await;
    }

    pub async fn delete_queue(&self, name: &str) {
        let _ = self
            .channel
            .queue_delete(name.into(), QueueDeleteOptions::default())
            .await;
    }
}

/// A private queue and its consumer.
pub struct TestQueue {
    channel: Channel,
    consumer: lapin::Consumer,
}

impl TestQueue {
    /// The next message, or `None` when nothing comes within `within`.
    pub async fn next(&mut self, within: Duration) -> Option<Delivery> {
        let delivery = tokio::time::timeout(within, self.consumer.next())
            .await
            .ok()??
            .unwrap();
        delivery.ack(BasicAckOptions::default()).await.unwrap();
        Some(delivery)
    }

    /// Every message until `done` holds for the messages received so far; fails when that
    /// takes longer than `within`.
    pub async fn until(
        &mut self,
        within: Duration,
        done: impl Fn(&[Delivery]) -> bool,
    ) -> Vec<Delivery> {
        let deadline = Instant::now() + within;
        let mut all = Vec::new();
        while !done(&all) {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "{} messages within {within:?}, not yet the ones expected",
                all.len()
            );
            if let Some(delivery) = self.next(left.min(Duration::from_millis(200))).await {
                all.push(delivery);
            }
        }
        all
    }

    /// Every message that arrives until none has come for `quiet`.
    pub async fn drain(&mut self, quiet: Duration) -> Vec<Delivery> {
        let mut all = Vec::new();
        while let Some(delivery) = self.next(quiet).await {
            all.push(delivery);
        }
        all
    }
}

/// Wait queues a subscription can have; `cleanup_subscription` deletes as many.
const WAIT_TIERS: u32 = 12;

/// Shows that subscription `name` of `sidecar` has nothing left to POST from earlier events,
/// so that a test can then count POSTs and treat the count as final. Returns the id of the
/// marker event it delivered.
///
/// It waits until the subscription's wait queues are empty, then publishes a marker event of
/// `event_type` and waits until `app` received it on `route`. Why that proves the absence of
/// any later POST of an earlier event, for a subscription that is not ordered, has
/// `concurrency = 1` (a prefetch of one) and whose app answers 2xx on `route` from now on:
/// once the wait queues are empty, a copy of an earlier event that could still be POSTed is
/// in the main queue or is the one message the sidecar holds. The marker is published after
/// that, so it is behind every such copy; with a prefetch of one the broker hands the marker
/// to the sidecar only after the message before it was settled, and with a 2xx answer
/// nothing goes back to a wait queue. So when the marker reaches the app, every earlier copy
/// has had its last POST.
pub async fn marker(
    sidecar: &Sidecar,
    broker: &Broker,
    app: &app::TestApp,
    name: &str,
    event_type: &str,
    route: &str,
) -> String {
    let event = MarkerEvent {
        event_type,
        body: r#"{"marker":true}"#,
        headers: &[],
    };
    marker_event(sidecar, broker, app, name, route, event).await
}

/// The event `marker_event` publishes.
pub struct MarkerEvent<'a> {
    pub event_type: &'a str,
    pub body: &'a str,
    pub headers: &'a [(&'a str, &'a str)],
}

/// `marker` with an event of the test's choosing (one that passes the sidecar's schemas).
pub async fn marker_event(
    sidecar: &Sidecar,
    broker: &Broker,
    app: &app::TestApp,
    name: &str,
    route: &str,
    event: MarkerEvent<'_>,
) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    let main = sidecar.queue(name);
    loop {
        let mut waiting = 0;
        for tier in 1..=WAIT_TIERS {
            waiting += broker
                .depth(&format!("{main}.retry.{tier}"))
                .await
                .unwrap_or(0);
        }
        if waiting == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{waiting} messages still wait in the wait queues of {main}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let published = sidecar
        .publish(event.event_type, event.body, event.headers)
        .await;
    assert_eq!(published.status, 202, "the marker: {published:?}");
    let marker = published.body["event_id"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(15);
    while !app.received(route).iter().any(|r| r.event_id() == marker) {
        assert!(
            Instant::now() < deadline,
            "the marker event did not reach {route}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    marker
}

/// Publishes a marker event of `event_type` with `headers` (which must route it to `queue`)
/// and returns every message `queue` received before it, the marker left out.
///
/// The list is complete, and nothing the sidecar published before the marker can come later:
/// every earlier publish was answered before the marker was sent, and a confirmed message is
/// in its queues; and the sidecar publishes on one channel, whose messages a queue keeps in
/// order, so whatever else it sent before the marker is ahead of the marker too.
pub async fn before_marker(
    sidecar: &Sidecar,
    queue: &mut TestQueue,
    event_type: &str,
    headers: &[(&str, &str)],
) -> Vec<Delivery> {
    let published = sidecar
        .publish(event_type, r#"{"marker":true}"#, headers)
        .await;
    assert_eq!(published.status, 202, "the marker: {published:?}");
    let marker = published.body["event_id"].clone();
    let mut all = queue
        .until(Duration::from_secs(15), |all| {
            all.last().is_some_and(|d| body(d)["event_id"] == marker)
        })
        .await;
    all.pop();
    all
}

/// The JSON body of a message.
pub fn body(delivery: &Delivery) -> Value {
    serde_json::from_slice(&delivery.data).unwrap()
}

/// A header of a message, as text.
pub fn header(properties: &BasicProperties, name: &str) -> Option<String> {
    match properties.headers().as_ref()?.inner().get(name)? {
        AMQPValue::LongString(s) => Some(s.to_string()),
        AMQPValue::ShortString(s) => Some(s.to_string()),
        other => Some(format!("{other:?}")),
    }
}
