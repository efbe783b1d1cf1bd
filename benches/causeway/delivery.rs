//! Part 2: causeway's delivery of a backlog to a local app, against the raw consumer.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
use serde_json::{Value, json};

use crate::{
    Bench, DELIVERIES,
    baseline::{preload, raw_consume},
    client::Sample,
    sidecar::{Sidecar, app},
    tempdir,
};

/// One delivery run of the sidecar: its rate, its CPU seconds per 1,000 deliveries and its
/// peak RSS.
pub struct Delivered {
    pub sample: Sample,
    pub cpu_per_1000: f64,
    pub peak_rss_mb: f64,
}

/// The raw consumer, then the sidecar, on the same backlog.
pub async fn run(bench: &Bench) -> Value {
    let (raw, raw_cpu) = raw_consume(&bench.connection, &bench.admin, &bench.id).await;
    let raw_cpu = raw_cpu / raw.count as f64 * 1000.0;
    let via = sidecar_delivery(bench, "d", &[], "").await;
    let ratio = via.sample.rate() / raw.rate();
    println!(
        "raw consume+ack {:>8.0}/s | causeway delivery {:>8.0}/s | ratio {ratio:.2}",
        raw.rate(),
        via.sample.rate()
    );
    println!(
        "CPU s per 1,000: raw consumer {raw_cpu:.3} (the benchmark process, /proc/self/stat) | \
         sidecar {:.3}",
        via.cpu_per_1000
    );
    json!({
        "raw_rate": raw.rate(), "causeway_rate": via.sample.rate(), "ratio": ratio,
        "cpu_seconds_per_1000": via.cpu_per_1000,
        "raw_cpu_seconds_per_1000": raw_cpu,
        "raw_cpu_source": "/proc/self/stat of the benchmark process (utime + stime, all threads)",
        "peak_rss_mb": via.peak_rss_mb,
    })
}

/// Causeway's delivery of a preloaded backlog to a local app answering 200, by a sidecar
/// named after `tag` with `extra` settings and `subscription` lines added to its
/// subscription.
pub async fn sidecar_delivery(
    bench: &Bench,
    tag: &str,
    extra: &[(&'static str, String)],
    subscription: &str,
) -> Delivered {
    let id = &bench.id;
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
    preload(&bench.connection, &queue).await;
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
    let peak_rss_mb = sidecar.peak_rss_mb();
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
        let _ = bench
            .admin
            .queue_delete(name.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    for name in [&exchange, &unrouted] {
        let _ = bench
            .admin
            .exchange_delete(name.as_str().into(), ExchangeDeleteOptions::default())
            .await;
    }
    let _ = std::fs::remove_dir_all(&data);
    let sample = Sample {
        count: DELIVERIES as u64 - 1,
        elapsed,
        latencies: Vec::new(),
    };
    Delivered {
        cpu_per_1000: cpu / sample.count as f64 * 1000.0,
        sample,
        peak_rss_mb,
    }
}
