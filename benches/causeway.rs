//! The side-by-side benchmark: causeway against the raw broker client, in one run, on one
//! machine, against the local RabbitMQ. Run it with `cargo bench` (see docs/performance.md).
//!
//! 1. publish: raw lapin with confirms vs HTTP through causeway, at 1, 16, 64, 256 clients;
//! 2. delivery: raw consume + ack vs causeway's delivery to a local app (dedup on disk);
//! 3. the sidecar's peak RSS and CPU seconds per 1,000 events;
//! 4. publish with every span sampled and exported vs spans off;
//! 5. publish and delivery with flow receipts written vs not (`CAUSEWAY_FLOW_RECEIPTS`);
//! 6. publish as CloudEvents in binary mode vs native, and delivery in the
//!    `cloudevents-binary` format vs causeway's.
//!
//! It prints a table and writes JSON (`BENCH_JSON`, default target/bench/causeway.json).
//! Numbers are ratios against the baseline measured in the same run: the machine is shared.
//!
//! Settings (environment): `BENCH_ONLY=publish,delivery,tracing,receipts,cloudevents` runs some
//! parts only;
//! `BENCH_SINK=quorum` publishes into a quorum queue instead of a classic one;
//! `CAUSEWAY_WORKER_THREADS` is passed to the sidecar; `BENCH_SIDECAR_BIN` measures another
//! build of the binary; `BENCH_PERF=dir` records the sidecar with `perf record`.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use futures_util::StreamExt;
use lapin::{
    BasicProperties, Channel, Connection, ConnectionProperties,
    options::{
        BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
        ConfirmSelectOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
        QueueDeleteOptions, QueuePurgeOptions,
    },
    types::{AMQPValue, FieldTable},
};
use serde_json::{Value, json};

const AMQP: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// How long each publish measurement runs.
const RUN: Duration = Duration::from_secs(4);
/// Events for the delivery measurement.
const DELIVERIES: usize = 50_000;
const PAYLOAD_BYTES: usize = 512;

fn main() {
    // `cargo bench` passes --bench; `cargo test --all-targets` runs this file as a test,
    // where a debug build would only measure itself.
    if !std::env::args().any(|arg| arg == "--bench") {
        println!("the benchmark runs with: cargo bench --bench causeway");
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(bench());
}

/// Latencies and a count of one measurement.
struct Sample {
    count: u64,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

impl Sample {
    fn rate(&self) -> f64 {
        self.count as f64 / self.elapsed.as_secs_f64()
    }

    fn percentile(&self, p: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let mut sorted = self.latencies.clone();
        sorted.sort();
        let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
        sorted[index]
    }
}

/// Whether `part` (publish, delivery, tracing) runs: all of them unless `BENCH_ONLY` names
/// some, comma-separated.
fn wanted(part: &str) -> bool {
    match std::env::var("BENCH_ONLY") {
        Ok(only) => only.split(',').any(|p| p.trim() == part),
        Err(_) => true,
    }
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

fn payload() -> String {
    let pad = "x".repeat(PAYLOAD_BYTES - 20);
    format!("{{\"pad\":\"{pad}\"}}")
}

async fn bench() {
    let id = uuid::Uuid::now_v7().simple().to_string()[20..].to_string();
    let exchange = format!("bench.{id}.events");
    let unrouted = format!("bench.{id}.unrouted");
    let sink = format!("bench.{id}.sink");
    let connection = Connection::connect(AMQP, ConnectionProperties::default())
        .await
        .expect("RabbitMQ on 127.0.0.1:5672 (run scripts/ensure-services)");
    let admin = connection.create_channel().await.unwrap();
    let mut report = json!({ "machine": machine(), "payload_bytes": PAYLOAD_BYTES });

    // The sidecar declares the exchange; a classic queue bound to it takes both runs' events.
    let data = tempdir(&id, "publish");
    let sidecar = Sidecar::start(&[
        ("CAUSEWAY_SERVICE", format!("bench-{id}")),
        ("CAUSEWAY_EXCHANGE", exchange.clone()),
        ("CAUSEWAY_UNROUTED_QUEUE", unrouted.clone()),
        ("CAUSEWAY_DATA_DIR", data.clone()),
        ("OTEL_TRACES_SAMPLER", "always_off".into()),
    ]);
    sidecar.wait_ready().await;
    declare_sink(&admin, &exchange, &sink).await;

    if wanted("publish") {
        println!("\n1. publish with confirms, {PAYLOAD_BYTES}-byte payloads, {RUN:?} per run");
        println!(
            "   baselines: raw lapin sending the bare payload, and a hand-rolled publisher sending \
             what causeway sends (envelope + properties)"
        );
        println!(
            "{:>8} | {:>8} | {:>10} {:>8} {:>8} | {:>10} {:>8} {:>8} | {:>6} {:>8} {:>9}",
            "clients",
            "bare /s",
            "hand /s",
            "p50 ms",
            "p99 ms",
            "causeway/s",
            "p50 ms",
            "p99 ms",
            "ratio",
            "vs bare",
            "+p50 ms"
        );
    }
    let mut publish_rows = Vec::new();
    let cpu_before = sidecar.cpu_seconds();
    let profile = sidecar.profile("publish");
    let mut published = 0u64;
    let counts: &[usize] = if wanted("publish") {
        &[1, 16, 64, 256]
    } else {
        &[]
    };
    for &clients in counts {
        let bare = raw_publish(&connection, &exchange, clients, Raw::Bare).await;
        purge(&admin, &sink).await;
        let raw = raw_publish(&connection, &exchange, clients, Raw::HandRolled).await;
        purge(&admin, &sink).await;
        let via = http_publish(&sidecar.api, clients).await;
        published += via.count;
        purge(&admin, &sink).await;
        let ratio = via.rate() / raw.rate();
        let vs_bare = via.rate() / bare.rate();
        let added = ms(via.percentile(0.5)) - ms(raw.percentile(0.5));
        println!(
            "{clients:>8} | {:>8.0} | {:>10.0} {:>8.2} {:>8.2} | {:>10.0} {:>8.2} {:>8.2} | {ratio:>6.2} {vs_bare:>8.2} {added:>9.3}",
            bare.rate(),
            raw.rate(),
            ms(raw.percentile(0.5)),
            ms(raw.percentile(0.99)),
            via.rate(),
            ms(via.percentile(0.5)),
            ms(via.percentile(0.99)),
        );
        publish_rows.push(json!({
            "clients": clients,
            "bare": {"rate": bare.rate(), "p50_ms": ms(bare.percentile(0.5)), "p99_ms": ms(bare.percentile(0.99))},
            "hand_rolled": {"rate": raw.rate(), "p50_ms": ms(raw.percentile(0.5)), "p99_ms": ms(raw.percentile(0.99))},
            "causeway": {"rate": via.rate(), "p50_ms": ms(via.percentile(0.5)), "p99_ms": ms(via.percentile(0.99))},
            "ratio": ratio,
            "ratio_vs_bare": vs_bare,
            "added_p50_ms": added,
        }));
    }
    drop(profile);
    let publish_cpu = sidecar.cpu_seconds() - cpu_before;
    let publish_rss = sidecar.peak_rss_mb();
    if published > 0 {
        report["publish"] = Value::Array(publish_rows);
        report["publish_cpu_seconds_per_1000"] = json!(publish_cpu / published as f64 * 1000.0);
        report["publish_peak_rss_mb"] = json!(publish_rss);
    }
    drop(sidecar);

    if wanted("delivery") {
        println!(
            "\n2. delivery: {DELIVERIES} events, ack after the app's 200 (dedup records on disk)"
        );
        let raw = raw_consume(&connection, &admin, &id).await;
        let (via, delivery_cpu, delivery_rss) =
            sidecar_delivery(&connection, &admin, &id, "d", &[], "").await;
        let ratio = via.rate() / raw.rate();
        println!(
            "raw consume+ack {:>8.0}/s | causeway delivery {:>8.0}/s | ratio {ratio:.2}",
            raw.rate(),
            via.rate()
        );
        report["delivery"] = json!({
            "raw_rate": raw.rate(), "causeway_rate": via.rate(), "ratio": ratio,
            "cpu_seconds_per_1000": delivery_cpu / via.count as f64 * 1000.0,
            "peak_rss_mb": delivery_rss,
        });
    }

    println!("\n3. the sidecar's resources");
    if let Some(cpu) = report["publish_cpu_seconds_per_1000"].as_f64() {
        println!("publish: {cpu:.3} CPU s per 1,000 events, peak RSS {publish_rss:.1} MB");
    }
    if let Some(cpu) = report["delivery"]["cpu_seconds_per_1000"].as_f64() {
        println!(
            "delivery: {cpu:.3} CPU s per 1,000 events, peak RSS {:.1} MB",
            report["delivery"]["peak_rss_mb"]
                .as_f64()
                .unwrap_or_default()
        );
    }

    if wanted("tracing") {
        println!("\n4. tracing: publish at 64 clients, every span exported vs spans off");
        let (traced, untraced) = tracing_cost(&admin, &id, &exchange, &sink).await;
        println!(
            "spans off {:>8.0}/s | 100% sampled + OTLP export {:>8.0}/s | ratio {:.2}",
            untraced.rate(),
            traced.rate(),
            traced.rate() / untraced.rate()
        );
        report["tracing"] = json!({
            "off_rate": untraced.rate(), "on_rate": traced.rate(),
            "ratio": traced.rate() / untraced.rate(),
        });
    }

    if wanted("receipts") {
        println!(
            "\n5. flow receipts (embedded store): publish at 64 clients and delivery, written vs off"
        );
        report["receipts"] = receipts_cost(&connection, &admin, &id, &exchange, &sink).await;
    }

    if wanted("cloudevents") {
        println!(
            "\n6. CloudEvents: publish at 64 clients (binary mode vs native) and delivery \
             (cloudevents-binary vs causeway's format)"
        );
        report["cloudevents"] = cloudevents_cost(&connection, &admin, &id, &exchange, &sink).await;
    }

    let _ = admin
        .queue_delete(sink.as_str().into(), QueueDeleteOptions::default())
        .await;
    let _ = admin
        .queue_delete(unrouted.as_str().into(), QueueDeleteOptions::default())
        .await;
    let _ = admin
        .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
        .await;
    let _ = admin
        .exchange_delete(unrouted.as_str().into(), ExchangeDeleteOptions::default())
        .await;
    let _ = std::fs::remove_dir_all(&data);

    let path = std::env::var("BENCH_JSON").unwrap_or_else(|_| "target/bench/causeway.json".into());
    if let Some(dir) = std::path::Path::new(&path).parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    std::fs::write(&path, serde_json::to_string_pretty(&report).unwrap()).unwrap();
    println!("\nwrote {path}");
}

fn machine() -> Value {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_default();
    json!({ "cpus": cpus, "cpu": model })
}

fn tempdir(id: &str, what: &str) -> String {
    let dir = std::env::temp_dir().join(format!("causeway-bench-{id}-{what}"));
    std::fs::create_dir_all(&dir).unwrap();
    dir.display().to_string()
}

/// The queue both publish runs fill: classic and durable, or quorum (like a subscription's)
/// with `BENCH_SINK=quorum`.
async fn declare_sink(channel: &Channel, exchange: &str, queue: &str) {
    let quorum = std::env::var("BENCH_SINK").is_ok_and(|kind| kind == "quorum");
    declare_queue(channel, queue, quorum).await;
    channel
        .queue_bind(
            queue.into(),
            exchange.into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
}

/// Declares a durable queue, classic or quorum.
async fn declare_queue(channel: &Channel, queue: &str, quorum: bool) {
    let mut args = FieldTable::default();
    if quorum {
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
    }
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        )
        .await
        .unwrap();
}

async fn purge(channel: &Channel, queue: &str) {
    let _ = channel
        .queue_purge(queue.into(), QueuePurgeOptions::default())
        .await;
}

/// Runs `clients` loops for `RUN`, each timing `once`; all share the same start and end.
async fn measure<F, Fut>(clients: usize, once: F) -> Sample
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let started = Instant::now();
    let end = started + RUN;
    let tasks: Vec<_> = (0..clients)
        .map(|client| {
            let once = once.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                while Instant::now() < end {
                    let at = Instant::now();
                    if once(client).await {
                        latencies.push(at.elapsed());
                    }
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.unwrap());
    }
    Sample {
        count: latencies.len() as u64,
        elapsed: started.elapsed(),
        latencies,
    }
}

/// What the raw baseline publishes.
#[derive(Clone, Copy, Debug)]
enum Raw {
    /// The 512-byte payload alone, persistent: the least a publisher can send.
    Bare,
    /// What causeway sends for the same payload, built by the publisher itself: the envelope
    /// (a new event id, the correlation id, the time) as the body, and the AMQP properties
    /// and headers that mirror it, mandatory. The broker does the same work for both, so the
    /// ratio against it is causeway's own cost.
    HandRolled,
}

/// The baseline: what an app would do with lapin itself, one channel in confirm mode,
/// persistent messages, each client awaiting its own confirm.
async fn raw_publish(connection: &Connection, exchange: &str, clients: usize, raw: Raw) -> Sample {
    let channel = connection.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let body = Arc::new(payload().into_bytes());
    let exchange = Arc::new(exchange.to_owned());
    measure(clients, move |_| {
        let (channel, body, exchange) = (channel.clone(), body.clone(), exchange.clone());
        async move {
            let (body, properties, mandatory) = match raw {
                Raw::Bare => (
                    body.to_vec(),
                    BasicProperties::default()
                        .with_delivery_mode(2)
                        .with_content_type("application/json".into()),
                    false,
                ),
                Raw::HandRolled => {
                    let (body, properties) = hand_rolled(&body);
                    (body, properties, true)
                }
            };
            let confirm = channel
                .basic_publish(
                    exchange.as_str().into(),
                    "Bench.v1".into(),
                    BasicPublishOptions {
                        mandatory,
                        ..BasicPublishOptions::default()
                    },
                    &body,
                    properties,
                )
                .await
                .unwrap();
            confirm.await.is_ok_and(|c| c.is_ack())
        }
    })
    .await
}

/// An envelope around `payload` and its AMQP properties, as a publisher would build them to
/// give consumers what causeway gives them (see docs/api.md, "The envelope").
fn hand_rolled(payload: &[u8]) -> (Vec<u8>, BasicProperties) {
    let event_id = uuid::Uuid::now_v7().to_string();
    let now = std::time::SystemTime::now();
    let payload: &serde_json::value::RawValue =
        serde_json::from_slice(payload).expect("the payload is JSON");
    let body = serde_json::to_vec(&json!({
        "event_id": event_id, "event_type": "Bench", "schema_version": "1.0",
        "correlation_id": event_id, "causation_id": null,
        "occurred_at": humantime::format_rfc3339_micros(now).to_string(),
        "source": "bench", "payload": payload,
    }))
    .unwrap();
    let mut headers = FieldTable::default();
    headers.insert("schema_version".into(), AMQPValue::LongString("1.0".into()));
    // The CloudEvents AMQP binding's properties, which causeway adds to every message.
    let time = humantime::format_rfc3339_micros(now).to_string();
    for (name, value) in [
        ("cloudEvents_specversion", "1.0"),
        ("cloudEvents_id", event_id.as_str()),
        ("cloudEvents_type", "Bench"),
        ("cloudEvents_source", "bench"),
        ("cloudEvents_time", time.as_str()),
        ("cloudEvents_correlationid", event_id.as_str()),
        ("cloudEvents_schemaversion", "1.0"),
    ] {
        headers.insert(name.into(), AMQPValue::LongString(value.into()));
    }
    let timestamp = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let properties = BasicProperties::default()
        .with_message_id(event_id.as_str().into())
        .with_correlation_id(event_id.as_str().into())
        .with_type("Bench".into())
        .with_app_id("bench".into())
        .with_timestamp(timestamp)
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_headers(headers);
    (body, properties)
}

/// Publishes through the sidecar's HTTP API with `clients` keep-alive connections.
///
/// The client is as lean as `wrk`: one prepared request, written whole, and an answer read
/// only as far as its status and length. The benchmark measures the sidecar, and every
/// microsecond a heavier client spends is taken from the broker on this shared machine.
async fn http_publish(api: &str, clients: usize) -> Sample {
    http_publish_with(api, clients, "").await
}

/// [`http_publish`] with `headers` (whole header lines) added to every request.
async fn http_publish_with(api: &str, clients: usize, headers: &str) -> Sample {
    let addr = api.trim_start_matches("http://").to_owned();
    let body = payload();
    let request = Arc::new(
        format!(
            "POST /v1/publish/Bench HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\n{headers}content-length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes(),
    );
    let mut connections = Vec::with_capacity(clients);
    for _ in 0..clients {
        connections.push(Arc::new(tokio::sync::Mutex::new(
            HttpConnection::open(&addr).await,
        )));
    }
    let connections = Arc::new(connections);
    measure(clients, move |client| {
        let (connections, request) = (connections.clone(), request.clone());
        async move {
            let mut connection = connections[client].lock().await;
            connection.exchange(&request).await == Some(202)
        }
    })
    .await
}

/// One keep-alive HTTP/1.1 connection that sends prepared requests.
struct HttpConnection {
    stream: tokio::net::TcpStream,
    buffer: Vec<u8>,
}

impl HttpConnection {
    async fn open(addr: &str) -> HttpConnection {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        HttpConnection {
            stream,
            buffer: Vec::with_capacity(4096),
        }
    }

    /// Sends `request` and reads the whole answer; its status, or `None` when the
    /// connection failed.
    async fn exchange(&mut self, request: &[u8]) -> Option<u16> {
        use tokio::io::AsyncWriteExt;
        self.stream.write_all(request).await.ok()?;
        loop {
            if let Some(end) = self.buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = std::str::from_utf8(&self.buffer[..end]).ok()?;
                let status = head.get(9..12)?.parse().ok()?;
                let length: usize = head
                    .lines()
                    .find_map(|line| {
                        let (name, value) = line.split_once(':')?;
                        name.eq_ignore_ascii_case("content-length")
                            .then(|| value.trim().parse().ok())?
                    })
                    .unwrap_or(0);
                let total = end + 4 + length;
                while self.buffer.len() < total {
                    self.read().await?;
                }
                self.buffer.drain(..total);
                return Some(status);
            }
            self.read().await?;
        }
    }

    async fn read(&mut self) -> Option<()> {
        use tokio::io::AsyncReadExt;
        let mut chunk = [0u8; 4096];
        let read = self.stream.read(&mut chunk).await.ok()?;
        if read == 0 {
            return None;
        }
        self.buffer.extend_from_slice(&chunk[..read]);
        Some(())
    }
}

/// Fills `queue` with `DELIVERIES` envelopes, as causeway would publish them.
async fn preload(connection: &Connection, queue: &str) {
    let channel = connection.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let mut confirms = Vec::new();
    for n in 0..DELIVERIES {
        let event_id = uuid::Uuid::now_v7();
        let envelope = json!({
            "event_id": event_id, "event_type": "Bench", "schema_version": "1.0",
            "correlation_id": format!("bench-{n}"), "causation_id": null,
            "occurred_at": humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string(),
            "source": "bench", "payload": {"pad": "x".repeat(PAYLOAD_BYTES - 20)},
        });
        let properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_message_id(event_id.to_string().into());
        confirms.push(
            channel
                .basic_publish(
                    "".into(),
                    queue.into(),
                    BasicPublishOptions::default(),
                    envelope.to_string().as_bytes(),
                    properties,
                )
                .await
                .unwrap(),
        );
        if confirms.len() >= 1024 {
            for confirm in confirms.drain(..) {
                confirm.await.unwrap();
            }
        }
    }
    for confirm in confirms {
        confirm.await.unwrap();
    }
}

/// The baseline: consume and ack, prefetch 256, on a quorum queue like a subscription's.
async fn raw_consume(connection: &Connection, admin: &Channel, id: &str) -> Sample {
    let queue = format!("bench.{id}.raw");
    declare_queue(admin, &queue, true).await;
    preload(connection, &queue).await;
    let channel = connection.create_channel().await.unwrap();
    channel
        .basic_qos(256, BasicQosOptions::default())
        .await
        .unwrap();
    let mut consumer = channel
        .basic_consume(
            queue.as_str().into(),
            "bench".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    // Timed from the first delivery, like the sidecar's run (which starts up first).
    let first = consumer.next().await.unwrap().unwrap();
    first.ack(BasicAckOptions::default()).await.unwrap();
    let started = Instant::now();
    let mut count = 0;
    while count < DELIVERIES - 1 {
        let delivery = consumer.next().await.unwrap().unwrap();
        delivery.ack(BasicAckOptions::default()).await.unwrap();
        count += 1;
    }
    let elapsed = started.elapsed();
    let _ = channel.close(200, "done".into()).await;
    let _ = admin
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await;
    Sample {
        count: count as u64,
        elapsed,
        latencies: Vec::new(),
    }
}

/// Causeway's delivery of a preloaded backlog to a local app answering 200, by a sidecar
/// named after `tag` with `extra` settings and `subscription` lines added to its
/// subscription.
async fn sidecar_delivery(
    connection: &Connection,
    admin: &Channel,
    id: &str,
    tag: &str,
    extra: &[(&'static str, String)],
    subscription: &str,
) -> (Sample, f64, f64) {
    let received = Arc::new(AtomicU64::new(0));
    let app = app(received.clone()).await;
    let service = format!("bench-{id}-{tag}");
    let exchange = format!("bench.{id}.{tag}.events");
    let unrouted = format!("bench.{id}.{tag}.unrouted");
    let data = tempdir(id, &format!("delivery-{tag}"));
    let config = format!("{data}/causeway.toml");
    std::fs::write(
        &config,
        format!(
            "[[subscriptions]]\nname = \"sink\"\nevent_type = \"Bench\"\nroute = \"/e\"\nconcurrency = 256\n{subscription}"
        ),
    )
    .unwrap();
    let mut env = vec![
        ("CAUSEWAY_SERVICE", service.clone()),
        ("CAUSEWAY_EXCHANGE", exchange.clone()),
        ("CAUSEWAY_UNROUTED_QUEUE", unrouted.clone()),
        ("CAUSEWAY_DATA_DIR", data.clone()),
        ("CAUSEWAY_CONFIG", config),
        ("CAUSEWAY_APP_URL", app),
        ("OTEL_TRACES_SAMPLER", "always_off".into()),
    ];
    env.extend_from_slice(extra);
    // First run declares the queues; the backlog goes in while no sidecar consumes.
    let setup = Sidecar::start(&env);
    setup.wait_ready().await;
    drop(setup);
    let queue = format!("{service}.sink");
    preload(connection, &queue).await;
    let sidecar = Sidecar::start(&env);
    // Timed from the first event the app gets: starting up is not delivering.
    while received.load(Ordering::Relaxed) == 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let cpu_before = sidecar.cpu_seconds();
    let profile = sidecar.profile("delivery");
    let started = Instant::now();
    while received.load(Ordering::Relaxed) < DELIVERIES as u64 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = started.elapsed();
    drop(profile);
    let cpu = sidecar.cpu_seconds() - cpu_before;
    let rss = sidecar.peak_rss_mb();
    drop(sidecar);
    for name in [
        queue.clone(),
        format!("{queue}.dlq"),
        format!("{queue}.retry.1"),
        format!("{queue}.retry.2"),
        format!("{queue}.retry.3"),
        format!("{queue}.retry.4"),
        unrouted.clone(),
    ] {
        let _ = admin
            .queue_delete(name.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    for name in [&exchange, &unrouted] {
        let _ = admin
            .exchange_delete(name.as_str().into(), ExchangeDeleteOptions::default())
            .await;
    }
    let _ = std::fs::remove_dir_all(&data);
    let sample = Sample {
        count: DELIVERIES as u64 - 1,
        elapsed,
        latencies: Vec::new(),
    };
    (sample, cpu, rss)
}

/// One side of a comparison: what the sidecar is started with, the headers each publish
/// carries, and lines added to the delivery's subscription.
struct Variant {
    env: Vec<(&'static str, String)>,
    headers: &'static str,
    subscription: &'static str,
}

/// The mean publish rate at 64 clients and delivery rate of each variant, with the sidecar's
/// CPU seconds per 1,000 events, measured twice in turn (A, B, A, B) so that drift in the
/// machine's load hits both alike.
struct Compared {
    publish: [(f64, f64); 2],
    delivery: [(f64, f64); 2],
}

async fn compare(
    connection: &Connection,
    admin: &Channel,
    id: &str,
    (exchange, sink): (&str, &str),
    tag: &str,
    variants: [Variant; 2],
) -> Compared {
    let mut publish = [Vec::new(), Vec::new()];
    let mut delivery = [Vec::new(), Vec::new()];
    for round in 0..2 {
        for (slot, variant) in variants.iter().enumerate() {
            let data = tempdir(id, &format!("{tag}-{round}-{slot}"));
            let mut env = vec![
                ("CAUSEWAY_SERVICE", format!("bench-{id}-{tag}")),
                ("CAUSEWAY_EXCHANGE", exchange.to_owned()),
                ("CAUSEWAY_UNROUTED_QUEUE", format!("bench.{id}.unrouted")),
                ("CAUSEWAY_DATA_DIR", data.clone()),
                ("OTEL_TRACES_SAMPLER", "always_off".into()),
            ];
            env.extend(variant.env.iter().cloned());
            let sidecar = Sidecar::start(&env);
            sidecar.wait_ready().await;
            let cpu_before = sidecar.cpu_seconds();
            let sample = http_publish_with(&sidecar.api, 64, variant.headers).await;
            let cpu = (sidecar.cpu_seconds() - cpu_before) / sample.count as f64 * 1000.0;
            publish[slot].push((sample.rate(), cpu));
            purge(admin, sink).await;
            drop(sidecar);
            let _ = std::fs::remove_dir_all(&data);
            let (sample, cpu, _) = sidecar_delivery(
                connection,
                admin,
                id,
                &format!("{tag}{round}{slot}"),
                &variant.env,
                variant.subscription,
            )
            .await;
            delivery[slot].push((sample.rate(), cpu / sample.count as f64 * 1000.0));
        }
    }
    let mean = |runs: &[(f64, f64)]| {
        let n = runs.len() as f64;
        (
            runs.iter().map(|r| r.0).sum::<f64>() / n,
            runs.iter().map(|r| r.1).sum::<f64>() / n,
        )
    };
    Compared {
        publish: [mean(&publish[0]), mean(&publish[1])],
        delivery: [mean(&delivery[0]), mean(&delivery[1])],
    }
}

/// Prints and reports a comparison, its sides named `a` and `b`.
fn report_compared(compared: &Compared, (a, b): (&str, &str)) -> Value {
    let mut report = json!({});
    for (what, sides) in [
        ("publish", compared.publish),
        ("delivery", compared.delivery),
    ] {
        let [(a_rate, a_cpu), (b_rate, b_cpu)] = sides;
        println!(
            "{what:<9} {a} {a_rate:>8.0}/s | {b} {b_rate:>8.0}/s | ratio {:.2} | CPU s per 1,000 {a_cpu:.3} -> {b_cpu:.3}",
            b_rate / a_rate
        );
        report[what] = json!({
            format!("{a}_rate"): a_rate, format!("{b}_rate"): b_rate, "ratio": b_rate / a_rate,
            format!("{a}_cpu_seconds_per_1000"): a_cpu, format!("{b}_cpu_seconds_per_1000"): b_cpu,
        });
    }
    report
}

/// Publish at 64 clients and delivery, with flow receipts off and on.
async fn receipts_cost(
    connection: &Connection,
    admin: &Channel,
    id: &str,
    exchange: &str,
    sink: &str,
) -> Value {
    let receipts = |on: &str| Variant {
        env: vec![("CAUSEWAY_FLOW_RECEIPTS", on.to_owned())],
        headers: "",
        subscription: "",
    };
    let variants = [receipts("false"), receipts("true")];
    let compared = compare(connection, admin, id, (exchange, sink), "r", variants).await;
    report_compared(&compared, ("off", "on"))
}

/// The attributes of a CloudEvent in HTTP binary mode, as header lines (the body is the
/// same payload as the native publish's).
const CLOUDEVENT_HEADERS: &str = "ce-specversion: 1.0\r\nce-id: bench-0001\r\nce-source: https://bench.example/orders\r\nce-type: Bench\r\nce-time: 2026-11-27T12:00:00Z\r\n";

/// Publish at 64 clients, native and as CloudEvents in binary mode, and delivery in
/// causeway's format and in `cloudevents-binary`.
async fn cloudevents_cost(
    connection: &Connection,
    admin: &Channel,
    id: &str,
    exchange: &str,
    sink: &str,
) -> Value {
    let variants = [
        Variant {
            env: Vec::new(),
            headers: "",
            subscription: "",
        },
        Variant {
            env: Vec::new(),
            headers: CLOUDEVENT_HEADERS,
            subscription: "format = \"cloudevents-binary\"\n",
        },
    ];
    let compared = compare(connection, admin, id, (exchange, sink), "ce", variants).await;
    report_compared(&compared, ("native", "cloudevents"))
}

/// Publishing at 64 clients with spans off, then with every span sampled and exported to a
/// local OTLP receiver that accepts and discards.
async fn tracing_cost(admin: &Channel, id: &str, exchange: &str, sink: &str) -> (Sample, Sample) {
    let otlp = otlp_sink().await;
    let mut samples = Vec::new();
    for (what, sampler) in [("off", "always_off"), ("on", "always_on")] {
        let data = tempdir(id, &format!("trace-{what}"));
        let mut env = vec![
            ("CAUSEWAY_SERVICE", format!("bench-{id}-t")),
            ("CAUSEWAY_EXCHANGE", exchange.to_owned()),
            ("CAUSEWAY_UNROUTED_QUEUE", format!("bench.{id}.unrouted")),
            ("CAUSEWAY_DATA_DIR", data.clone()),
            ("OTEL_TRACES_SAMPLER", sampler.to_owned()),
        ];
        if what == "on" {
            env.push(("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.clone()));
        }
        let sidecar = Sidecar::start(&env);
        sidecar.wait_ready().await;
        samples.push(http_publish(&sidecar.api, 64).await);
        purge(admin, sink).await;
        drop(sidecar);
        let _ = std::fs::remove_dir_all(&data);
    }
    let on = samples.pop().unwrap();
    let off = samples.pop().unwrap();
    (on, off)
}

/// A local app that answers 200 to everything and counts.
async fn app(received: Arc<AtomicU64>) -> String {
    use axum::{Router, extract::State, http::StatusCode};
    async fn take(State(received): State<Arc<AtomicU64>>) -> StatusCode {
        received.fetch_add(1, Ordering::Relaxed);
        StatusCode::OK
    }
    let router = Router::new().fallback(take).with_state(received);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    url
}

/// An OTLP/HTTP endpoint that accepts every export and keeps nothing.
async fn otlp_sink() -> String {
    use axum::Router;
    let router = Router::new().fallback(|| async { "" });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    url
}

/// The real sidecar binary as a child process.
struct Sidecar {
    child: Child,
    api: String,
    admin: String,
}

impl Sidecar {
    fn start(env: &[(&str, String)]) -> Sidecar {
        // BENCH_SIDECAR_BIN measures another build of the binary.
        let binary = std::env::var("BENCH_SIDECAR_BIN")
            .unwrap_or_else(|_| env!("CARGO_BIN_EXE_causeway").to_owned());
        let child = Command::new(binary)
            .env_clear()
            .env("CAUSEWAY_API_ADDR", "127.0.0.1:0")
            .env("CAUSEWAY_ADMIN_ADDR", "127.0.0.1:0")
            .env("RUST_LOG", "warn,causeway::sidecar=info")
            .envs(std::env::var("CAUSEWAY_WORKER_THREADS").map(|n| ("CAUSEWAY_WORKER_THREADS", n)))
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        // Owned at once, so that every path below ends the process (Drop).
        let mut sidecar = Sidecar {
            child,
            api: String::new(),
            admin: String::new(),
        };
        let stdout = sidecar.child.stdout.take().unwrap();
        let found = Arc::new(Mutex::new(None));
        {
            let found = found.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    let Ok(json) = serde_json::from_str::<Value>(&line) else {
                        continue;
                    };
                    if json["message"] == "listening" {
                        *found.lock().unwrap() = Some((
                            json["api_addr"].as_str().unwrap().to_owned(),
                            json["admin_addr"].as_str().unwrap().to_owned(),
                        ));
                    }
                }
            });
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some((api, admin)) = found.lock().unwrap().clone() {
                sidecar.api = format!("http://{api}");
                sidecar.admin = format!("http://{admin}");
                return sidecar;
            }
            assert!(Instant::now() < deadline, "the sidecar did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    async fn wait_ready(&self) {
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ready = http
                .get(format!("{}/readyz", self.admin))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ready {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the sidecar did not become ready"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// With `BENCH_PERF=dir` set, records the sidecar's stacks (`perf record`) into
    /// `dir/{what}.perf.data` until the returned guard is dropped.
    fn profile(&self, what: &str) -> Option<Profile> {
        let dir = std::env::var("BENCH_PERF").ok()?;
        let child = Command::new("perf")
            .args([
                "record",
                "-q",
                "-e",
                "cpu-clock",
                "-F",
                "499",
                "--call-graph",
                "dwarf,32768",
                "-o",
            ])
            .arg(format!("{dir}/{what}.perf.data"))
            .args(["-p", &self.child.id().to_string()])
            .stdout(Stdio::null())
            .spawn()
            .ok()?;
        Some(Profile(child))
    }

    /// User + system CPU seconds so far.
    fn cpu_seconds(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap();
        // Fields after the command name (which may hold spaces) start at ") ".
        let rest = stat.rsplit_once(") ").map_or("", |(_, rest)| rest);
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
        ticks / 100.0
    }

    /// Peak resident memory so far, in MB.
    fn peak_rss_mb(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    }
}

/// A running `perf record`; dropping it stops the recording and waits for the file.
struct Profile(Child);

impl Drop for Profile {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-INT", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}
