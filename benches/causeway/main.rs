//! The side-by-side benchmark: causeway against the raw broker client and a hand-rolled
//! publisher, in one run, on one machine, against the local RabbitMQ. Run it with
//! `cargo bench` (see docs/performance.md).
//!
//! 1. publish: raw lapin with confirms vs HTTP through causeway, at 1, 16, 64, 256 clients;
//! 2. delivery: raw consume + ack vs causeway's delivery to a local app (dedup on disk),
//!    with the CPU per delivery of both;
//! 3. the sidecar's peak RSS and CPU seconds per 1,000 events;
//! 4. publish with every span sampled and exported vs spans off;
//! 5. publish and delivery with flow receipts written vs not (`CAUSEWAY_FLOW_RECEIPTS`);
//! 6. publish as CloudEvents in binary mode vs native, and delivery in the
//!    `cloudevents-binary` format vs causeway's;
//! 7. causeway vs a hand-rolled HTTP publisher process, both driven by the lean client and
//!    by `wrk` at 64 and 256 connections, with each process's CPU per publish;
//! 8. a burst of 10,000 connections publishing at once: the sidecar's memory before, during
//!    and in the minute after, and how the publishes were answered.
//!
//! It prints a table and writes JSON (`BENCH_JSON`, default target/bench/causeway.json).
//! Numbers are ratios against the baseline measured in the same run: the machine is shared.
//!
//! Settings (environment): `BENCH_ONLY=publish,delivery,tracing,receipts,cloudevents,http,burst`
//! runs some parts only; `BENCH_SINK=quorum` publishes into a quorum queue instead of a
//! classic one; `BENCH_BURST=N` changes the burst's size; `CAUSEWAY_WORKER_THREADS` is
//! passed to the sidecar (and the hand-rolled publisher); `BENCH_SIDECAR_BIN` measures
//! another build of the binary; `BENCH_PERF=dir` records the sidecar with `perf record`.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

mod baseline;
mod burst;
mod client;
mod compare;
mod delivery;
mod pair;
mod process;
mod publish;
mod publisher;
mod sidecar;
mod wrk;

use std::time::Duration;

use lapin::{
    Channel, Connection, ConnectionProperties,
    options::{ExchangeDeleteOptions, QueueDeleteOptions},
};
use serde_json::{Value, json};

use crate::sidecar::Sidecar;

// The sidecar's allocator (see src/main.rs), here too: the hand-rolled publisher of part 7 is
// this binary started again, and it and the in-process baselines should differ from the
// sidecar by their code, not by their allocator.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

const AMQP: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// How long each publish measurement runs.
const RUN: Duration = Duration::from_secs(4);
/// Events for the delivery measurement.
const DELIVERIES: usize = 50_000;
const PAYLOAD_BYTES: usize = 512;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // The benchmark starts its own binary again as the hand-rolled HTTP publisher.
    if args.get(1).is_some_and(|mode| mode == publisher::MODE) {
        publisher::main(&args[2..]);
        return;
    }
    // `cargo bench` passes --bench; `cargo test --all-targets` runs this file as a test,
    // where a debug build would only measure itself.
    if !args.iter().any(|arg| arg == "--bench") {
        println!("the benchmark runs with: cargo bench --bench causeway");
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(bench());
}

/// What the parts share: the broker connection, and the names of this run's exchange and
/// the queue bound to it that every publish fills.
pub struct Bench {
    pub connection: Connection,
    pub admin: Channel,
    pub id: String,
    pub exchange: String,
    pub unrouted: String,
    pub sink: String,
}

impl Bench {
    /// The settings of a sidecar named after `tag` that publishes to the benchmark's
    /// exchange, with spans off and its files in `data`.
    pub fn publishing_env(&self, tag: &str, data: &str) -> Vec<(&'static str, String)> {
        vec![
            ("CAUSEWAY_SERVICE", format!("bench-{}-{tag}", self.id)),
            ("CAUSEWAY_EXCHANGE", self.exchange.clone()),
            ("CAUSEWAY_UNROUTED_QUEUE", self.unrouted.clone()),
            ("CAUSEWAY_DATA_DIR", data.to_owned()),
            ("OTEL_TRACES_SAMPLER", "always_off".into()),
        ]
    }
}

/// Whether `part` runs: all of them unless `BENCH_ONLY` names some, comma-separated.
fn wanted(part: &str) -> bool {
    match std::env::var("BENCH_ONLY") {
        Ok(only) => only.split(',').any(|p| p.trim() == part),
        Err(_) => true,
    }
}

fn payload() -> String {
    let pad = "x".repeat(PAYLOAD_BYTES - 20);
    format!("{{\"pad\":\"{pad}\"}}")
}

async fn bench() {
    let nofile = raise_nofile();
    let id = uuid::Uuid::now_v7().simple().to_string()[20..].to_string();
    let connection = Connection::connect(AMQP, ConnectionProperties::default())
        .await
        .expect("RabbitMQ on 127.0.0.1:5672 (run scripts/ensure-services)");
    let admin = connection.create_channel().await.unwrap();
    let bench = Bench {
        exchange: format!("bench.{id}.events"),
        unrouted: format!("bench.{id}.unrouted"),
        sink: format!("bench.{id}.sink"),
        id,
        connection,
        admin,
    };
    let mut report = json!({
        "machine": machine(), "payload_bytes": PAYLOAD_BYTES, "nofile_limit": nofile,
        "sidecar_binary": std::env::var("BENCH_SIDECAR_BIN")
            .unwrap_or_else(|_| env!("CARGO_BIN_EXE_causeway").to_owned()),
    });

    // A sidecar declares the exchange; a queue bound to it takes every publish run's events.
    let data = tempdir(&bench.id, "setup");
    let setup = Sidecar::start(&bench.publishing_env("setup", &data));
    setup.wait_ready().await;
    drop(setup);
    let _ = std::fs::remove_dir_all(&data);
    baseline::declare_sink(&bench.admin, &bench.exchange, &bench.sink).await;

    if wanted("publish") {
        report["publish"] = publish::run(&bench).await;
    }
    if wanted("delivery") {
        println!(
            "\n2. delivery: {DELIVERIES} events, ack after the app's 200 (dedup records on disk)"
        );
        report["delivery"] = delivery::run(&bench).await;
    }
    resources(&report);
    if wanted("tracing") {
        println!("\n4. tracing: publish at 64 clients, every span exported vs spans off");
        let (traced, untraced) = compare::tracing_cost(&bench).await;
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
        report["receipts"] = compare::receipts_cost(&bench).await;
    }
    if wanted("cloudevents") {
        println!(
            "\n6. CloudEvents: publish at 64 clients (binary mode vs native) and delivery \
             (cloudevents-binary vs causeway's format)"
        );
        report["cloudevents"] = compare::cloudevents_cost(&bench).await;
    }
    if wanted("http") {
        report["http"] = pair::run(&bench).await;
    }
    if wanted("burst") {
        report["burst"] = burst::run(&bench, nofile).await;
    }
    clean_up(&bench).await;

    let path = std::env::var("BENCH_JSON").unwrap_or_else(|_| "target/bench/causeway.json".into());
    if let Some(dir) = std::path::Path::new(&path).parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    std::fs::write(&path, serde_json::to_string_pretty(&report).unwrap()).unwrap();
    println!("\nwrote {path}");
}

/// Part 3: the sidecar's CPU per 1,000 events and peak RSS in parts 1 and 2.
fn resources(report: &Value) {
    if !(wanted("publish") || wanted("delivery")) {
        return;
    }
    println!("\n3. the sidecar's resources");
    for (what, part) in [
        ("publish", &report["publish"]),
        ("delivery", &report["delivery"]),
    ] {
        if let Some(cpu) = part["cpu_seconds_per_1000"].as_f64() {
            let rss = part["peak_rss_mb"].as_f64().unwrap_or_default();
            println!("{what}: {cpu:.3} CPU s per 1,000 events, peak RSS {rss:.1} MB");
        }
    }
}

/// Raises this process's soft limit on open files to its hard limit (the burst holds one
/// descriptor per connection, and the sidecar, which inherits the limit, as many) and
/// returns the limit in force.
fn raise_nofile() -> u64 {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => limit,
        Err(error) => {
            println!("could not raise RLIMIT_NOFILE: {error}");
            rlimit::Resource::NOFILE
                .get()
                .map_or(1024, |(soft, _hard)| soft)
        }
    }
}

async fn clean_up(bench: &Bench) {
    for queue in [&bench.sink, &bench.unrouted] {
        let _ = bench
            .admin
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    for exchange in [&bench.exchange, &bench.unrouted] {
        let _ = bench
            .admin
            .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
            .await;
    }
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
