//! Part 8: a burst of concurrent publishes (10,000 connections at once, one POST each), and
//! the sidecar's memory before, during and in the minute after.

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use tokio::{sync::Barrier, time::timeout};

use crate::{
    Bench,
    baseline::purge,
    client::{HttpConnection, publish_request},
    process::{Proc, tcp_counters},
    sidecar::Sidecar,
    tempdir,
};

/// Connections in the burst unless `BENCH_BURST` says otherwise.
const DEFAULT_SIZE: usize = 10_000;
/// Descriptors each process keeps for things other than the burst's connections.
const SPARE_DESCRIPTORS: u64 = 256;
/// How often the sidecar's memory is read during the burst.
const SAMPLE_EVERY: Duration = Duration::from_millis(50);
/// How long the memory is followed after the burst, once a second.
const AFTER: Duration = Duration::from_secs(60);
/// How long the sidecar is left alone after it is ready, before its idle memory is read.
const SETTLE: Duration = Duration::from_secs(2);
/// Bounds on each connection's connect and on its answer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);
/// The machine's TCP counters that tell whether the listener's accept queue overflowed
/// (connections the client sees as open that the server has not taken yet).
const TCP_COUNTERS: [&str; 3] = ["ListenOverflows", "ListenDrops", "SyncookiesSent"];
/// Back to "idle" means at most this many times the idle RSS.
const BACK_TO_IDLE: f64 = 1.5;

/// How one connection of the burst ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Outcome {
    Status(u16),
    ConnectFailed,
    /// The connection closed or failed before a whole answer.
    Failed,
    TimedOut,
}

/// Runs part 8 with a sidecar of its own. `nofile` is this process's descriptor limit
/// (which the sidecar inherits).
pub async fn run(bench: &Bench, nofile: u64) -> Value {
    let wanted = std::env::var("BENCH_BURST")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(DEFAULT_SIZE);
    let fits = usize::try_from(nofile.saturating_sub(SPARE_DESCRIPTORS)).unwrap_or(usize::MAX);
    println!("\n8. burst: {wanted} connections at once, one publish each");
    let size = if wanted > fits {
        println!(
            "   RLIMIT_NOFILE is {nofile}, too low for {wanted} connections: the burst has {fits} \
             (raise the hard limit, e.g. `ulimit -Hn 20000` as root, to measure the whole burst)"
        );
        fits
    } else {
        wanted
    };
    let data = tempdir(&bench.id, "burst");
    let sidecar = Sidecar::start(&bench.publishing_env("b", &data));
    sidecar.wait_ready().await;
    let proc = sidecar.proc();
    tokio::time::sleep(SETTLE).await;
    let idle = proc.rss_mb();

    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let sampling = sampling.clone();
        std::thread::spawn(move || {
            let mut samples = Vec::new();
            while sampling.load(Ordering::Relaxed) {
                samples.push(proc.rss_mb());
                std::thread::sleep(SAMPLE_EVERY);
            }
            samples
        })
    };
    let cpu_before = proc.cpu_seconds();
    let tcp_before = tcp_counters(TCP_COUNTERS);
    let started = Instant::now();
    let outcomes = burst(&sidecar.api, size).await;
    let answered_in = started.elapsed();
    let cpu = proc.cpu_seconds() - cpu_before;
    let tcp_after = tcp_counters(TCP_COUNTERS);
    let tcp: BTreeMap<&str, u64> = TCP_COUNTERS
        .iter()
        .zip(tcp_after.iter().zip(tcp_before))
        .map(|(name, (after, before))| (*name, after.saturating_sub(before)))
        .collect();
    sampling.store(false, Ordering::Relaxed);
    let during = sampler.join().unwrap();
    let peak = during.iter().copied().fold(0.0, f64::max);
    let hwm = proc.peak_rss_mb();

    let mut counts = BTreeMap::new();
    for outcome in outcomes {
        *counts.entry(outcome).or_insert(0u64) += 1;
    }
    let count = |outcome| counts.get(&outcome).copied().unwrap_or(0);
    let other: u64 = counts
        .iter()
        .filter(|(o, _)| matches!(o, Outcome::Status(s) if *s != 202 && *s != 503))
        .map(|(_, n)| n)
        .sum();
    println!(
        "idle RSS {idle:.1} MB | peak {peak:.1} MB sampled every {SAMPLE_EVERY:?} (VmHWM {hwm:.1} MB) \
         | CPU {cpu:.2} s | all answered in {:.1} s",
        answered_in.as_secs_f64()
    );
    println!(
        "202: {} | 503: {} | other status: {other} | connect failed: {} | closed or failed: {} \
         | timed out: {}",
        count(Outcome::Status(202)),
        count(Outcome::Status(503)),
        count(Outcome::ConnectFailed),
        count(Outcome::Failed),
        count(Outcome::TimedOut),
    );
    println!("the machine's TCP counters during the burst: {tcp:?}");

    let (after, back_in) = follow(proc, idle).await;
    let shown: Vec<String> = after.iter().map(|mb| format!("{mb:.1}")).collect();
    println!("RSS (MB) each second after: {}", shown.join(" "));
    match back_in {
        Some(seconds) => println!(
            "back to <= {BACK_TO_IDLE}x idle ({:.1} MB) after {seconds} s",
            idle * BACK_TO_IDLE
        ),
        None => println!(
            "not back to <= {BACK_TO_IDLE}x idle ({:.1} MB) within {} s",
            idle * BACK_TO_IDLE,
            AFTER.as_secs()
        ),
    }
    purge(&bench.admin, &bench.sink).await;
    drop(sidecar);
    let _ = std::fs::remove_dir_all(&data);
    let statuses: BTreeMap<String, u64> = counts
        .iter()
        .filter_map(|(o, n)| match o {
            Outcome::Status(s) => Some((s.to_string(), *n)),
            _ => None,
        })
        .collect();
    json!({
        "connections": size, "nofile_limit": nofile,
        "idle_rss_mb": idle, "peak_rss_mb": peak, "vm_hwm_mb": hwm,
        "during_rss_mb": during, "cpu_seconds": cpu,
        "answered_in_seconds": answered_in.as_secs_f64(),
        "statuses": statuses,
        "connect_failed": count(Outcome::ConnectFailed),
        "failed": count(Outcome::Failed),
        "timed_out": count(Outcome::TimedOut),
        "tcp_counters": tcp,
        "after_rss_mb": after,
        "back_to_idle_seconds": back_in,
    })
}

/// Opens `size` connections at once; when every one is open (or failed), sends one publish
/// on each, and reads the answers.
async fn burst(api: &str, size: usize) -> Vec<Outcome> {
    let addr = Arc::new(api.trim_start_matches("http://").to_owned());
    let request = Arc::new(publish_request(&addr, ""));
    let barrier = Arc::new(Barrier::new(size));
    let tasks: Vec<_> = (0..size)
        .map(|_| {
            let (addr, request, barrier) = (addr.clone(), request.clone(), barrier.clone());
            tokio::spawn(async move {
                let connection = timeout(CONNECT_TIMEOUT, HttpConnection::open(&addr)).await;
                barrier.wait().await;
                let Ok(Ok(mut connection)) = connection else {
                    return Outcome::ConnectFailed;
                };
                match timeout(ANSWER_TIMEOUT, connection.exchange(&request)).await {
                    Ok(Some(status)) => Outcome::Status(status),
                    Ok(None) => Outcome::Failed,
                    Err(_) => Outcome::TimedOut,
                }
            })
        })
        .collect();
    let mut outcomes = Vec::with_capacity(size);
    for task in tasks {
        outcomes.push(task.await.unwrap_or(Outcome::Failed));
    }
    outcomes
}

/// The RSS once a second for `AFTER`, and the first second at which it was back to at most
/// `BACK_TO_IDLE` times `idle`.
async fn follow(proc: Proc, idle: f64) -> (Vec<f64>, Option<u64>) {
    let start = tokio::time::Instant::now();
    let mut after = Vec::new();
    let mut back_in = None;
    for second in 1..=AFTER.as_secs() {
        tokio::time::sleep_until(start + Duration::from_secs(second)).await;
        let rss = proc.rss_mb();
        if back_in.is_none() && rss <= idle * BACK_TO_IDLE {
            back_in = Some(second);
        }
        after.push(rss);
    }
    (after, back_in)
}
