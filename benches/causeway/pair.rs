//! Part 7: two HTTP publishers side by side, each a process of its own: the sidecar, and the
//! hand-rolled publisher an app could write instead ([`crate::publisher`]). Both are driven
//! by the same load generator, the benchmark's lean client and `wrk`, at 64 and 256
//! connections, in rounds that alternate, with the CPU each process spent per publish.

use serde_json::{Value, json};

use crate::{
    Bench, RUN,
    baseline::purge,
    client::{http_publish, ms},
    process::Proc,
    publisher::Publisher,
    sidecar::Sidecar,
    tempdir, wrk,
};

const CONNECTIONS: [usize; 2] = [64, 256];

/// The load generator of a row.
#[derive(Clone, Copy)]
enum Generator {
    /// The benchmark's own client, in this process.
    Lean,
    /// `wrk`, a process of its own.
    Wrk,
}

impl Generator {
    fn name(self) -> &'static str {
        match self {
            Generator::Lean => "lean",
            Generator::Wrk => "wrk",
        }
    }
}

/// What one run against one publisher measured.
#[derive(Default)]
struct Run {
    rate: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// Answers other than 2xx and errors (counted by wrk only).
    failed: u64,
    /// The publisher process's CPU seconds per 1,000 accepted publishes.
    cpu_per_1000: f64,
    /// Publishes answered 202.
    accepted: u64,
}

impl Run {
    /// The mean of runs.
    fn mean(runs: &[Run]) -> Run {
        let n = runs.len() as f64;
        let mean = |f: fn(&Run) -> f64| runs.iter().map(f).sum::<f64>() / n;
        Run {
            rate: mean(|r| r.rate),
            p50_ms: mean(|r| r.p50_ms),
            p99_ms: mean(|r| r.p99_ms),
            failed: runs.iter().map(|r| r.failed).sum(),
            cpu_per_1000: mean(|r| r.cpu_per_1000),
            accepted: runs.iter().map(|r| r.accepted).sum(),
        }
    }

    fn json(&self) -> Value {
        json!({
            "rate": self.rate, "p50_ms": self.p50_ms, "p99_ms": self.p99_ms,
            "failed": self.failed, "cpu_seconds_per_1000": self.cpu_per_1000,
        })
    }
}

/// Runs part 7 against a sidecar and a hand-rolled publisher of their own.
pub async fn run(bench: &Bench) -> Value {
    println!(
        "\n7. HTTP publishers side by side: causeway and a hand-rolled hyper + lapin publisher \
         (processes of their own), {RUN:?} per run, rounds in the order A B B A"
    );
    let data = tempdir(&bench.id, "pair");
    let sidecar = Sidecar::start(&bench.publishing_env("h", &data));
    sidecar.wait_ready().await;
    let publisher = Publisher::start(&bench.exchange);
    let idle = [sidecar.proc().rss_mb(), publisher.proc().rss_mb()];
    let mut generators = vec![Generator::Lean];
    if wrk::available() {
        generators.push(Generator::Wrk);
    }
    println!(
        "{:>5} {:>5} | {:>9} {:>7} {:>7} {:>7} | {:>10} {:>7} {:>7} {:>7} | {:>6} {:>8} | {:>6}",
        "gen",
        "conns",
        "hand /s",
        "p50 ms",
        "p99 ms",
        "CPU/1k",
        "causeway/s",
        "p50 ms",
        "p99 ms",
        "CPU/1k",
        "ratio",
        "+p50 ms",
        "failed"
    );
    let targets = [
        (publisher.api.as_str(), publisher.proc()),
        (sidecar.api.as_str(), sidecar.proc()),
    ];
    let mut rows = Vec::new();
    for generator in generators {
        for connections in CONNECTIONS {
            let mut runs: [Vec<Run>; 2] = [Vec::new(), Vec::new()];
            // A B B A: a drift in the machine's load over the four runs hits both alike.
            for side in [1, 0, 0, 1] {
                let (api, proc) = targets[side];
                runs[side].push(one(generator, api, proc, connections).await);
                purge(&bench.admin, &bench.sink).await;
            }
            let [hand, via] = runs.map(|r| Run::mean(&r));
            let ratio = via.rate / hand.rate;
            let added = via.p50_ms - hand.p50_ms;
            println!(
                "{:>5} {connections:>5} | {:>9.0} {:>7.2} {:>7.2} {:>7.3} | {:>10.0} {:>7.2} {:>7.2} {:>7.3} | {ratio:>6.2} {added:>8.2} | {:>6}",
                generator.name(),
                hand.rate,
                hand.p50_ms,
                hand.p99_ms,
                hand.cpu_per_1000,
                via.rate,
                via.p50_ms,
                via.p99_ms,
                via.cpu_per_1000,
                hand.failed + via.failed,
            );
            rows.push(json!({
                "generator": generator.name(), "connections": connections,
                "hand_rolled": hand.json(), "causeway": via.json(),
                "ratio": ratio, "added_p50_ms": added,
            }));
        }
    }
    let peak = [sidecar.peak_rss_mb(), publisher.proc().peak_rss_mb()];
    println!(
        "RSS: causeway {:.1} MB idle, {:.1} MB peak | hand-rolled publisher {:.1} MB idle, {:.1} MB peak",
        idle[0], peak[0], idle[1], peak[1]
    );
    drop(publisher);
    drop(sidecar);
    let _ = std::fs::remove_dir_all(&data);
    json!({
        "rows": rows,
        "causeway_idle_rss_mb": idle[0], "causeway_peak_rss_mb": peak[0],
        "hand_rolled_idle_rss_mb": idle[1], "hand_rolled_peak_rss_mb": peak[1],
    })
}

/// One run of `generator` against the publisher at `api`, whose process is `proc`.
async fn one(generator: Generator, api: &str, proc: Proc, connections: usize) -> Run {
    let cpu_before = proc.cpu_seconds();
    let mut run = match generator {
        Generator::Lean => {
            let sample = http_publish(api, connections).await;
            Run {
                rate: sample.rate(),
                p50_ms: ms(sample.percentile(0.5)),
                p99_ms: ms(sample.percentile(0.99)),
                accepted: sample.count,
                ..Run::default()
            }
        }
        Generator::Wrk => {
            let measured = wrk::publish(api, connections).await;
            Run {
                rate: measured.ok as f64 / measured.seconds,
                p50_ms: measured.p50_ms,
                p99_ms: measured.p99_ms,
                failed: measured.failed,
                accepted: measured.ok,
                ..Run::default()
            }
        }
    };
    run.cpu_per_1000 = (proc.cpu_seconds() - cpu_before) / run.accepted.max(1) as f64 * 1000.0;
    run
}
