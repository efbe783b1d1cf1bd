//! Part 1: publishing through the sidecar against raw lapin in this process, at 1 to 256
//! clients.

use serde_json::{Value, json};

use crate::{
    Bench, PAYLOAD_BYTES, RUN,
    baseline::{Raw, purge, raw_publish},
    client::{http_publish, ms},
    sidecar::Sidecar,
    tempdir,
};

/// The client counts of part 1.
const CLIENTS: [usize; 4] = [1, 16, 64, 256];

/// Runs part 1 and reports its rows, with the sidecar's CPU per 1,000 publishes and peak RSS.
pub async fn run(bench: &Bench) -> Value {
    println!("\n1. publish with confirms, {PAYLOAD_BYTES}-byte payloads, {RUN:?} per run");
    println!(
        "   baselines: raw lapin sending the bare payload, and a hand-rolled publisher sending \
         what causeway sends (envelope + properties), both in this process"
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
    let data = tempdir(&bench.id, "publish");
    let sidecar = Sidecar::start(&bench.publishing_env("p", &data));
    sidecar.wait_ready().await;
    let mut rows = Vec::new();
    let cpu_before = sidecar.cpu_seconds();
    let profile = sidecar.profile("publish");
    let mut published = 0u64;
    for clients in CLIENTS {
        let (connection, exchange) = (&bench.connection, bench.exchange.as_str());
        let bare = raw_publish(connection, exchange, clients, Raw::Bare).await;
        purge(&bench.admin, &bench.sink).await;
        let raw = raw_publish(connection, exchange, clients, Raw::HandRolled).await;
        purge(&bench.admin, &bench.sink).await;
        let via = http_publish(&sidecar.api, clients).await;
        published += via.count;
        purge(&bench.admin, &bench.sink).await;
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
        rows.push(json!({
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
    let cpu = (sidecar.cpu_seconds() - cpu_before) / published as f64 * 1000.0;
    let peak_rss_mb = sidecar.peak_rss_mb();
    drop(sidecar);
    let _ = std::fs::remove_dir_all(&data);
    json!({ "rows": rows, "cpu_seconds_per_1000": cpu, "peak_rss_mb": peak_rss_mb })
}
