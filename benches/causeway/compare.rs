//! Parts 4 to 6: the sidecar against itself with a feature on and off (tracing, flow
//! receipts, CloudEvents).

use serde_json::{Value, json};

use crate::{
    Bench,
    baseline::purge,
    client::{Sample, http_publish, http_publish_with},
    delivery::sidecar_delivery,
    sidecar::{Sidecar, otlp_sink},
    tempdir,
};

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

async fn compare(bench: &Bench, tag: &str, variants: [Variant; 2]) -> Compared {
    let mut publish = [Vec::new(), Vec::new()];
    let mut delivery = [Vec::new(), Vec::new()];
    for round in 0..2 {
        for (slot, variant) in variants.iter().enumerate() {
            let data = tempdir(&bench.id, &format!("{tag}-{round}-{slot}"));
            let mut env = bench.publishing_env(tag, &data);
            env.extend(variant.env.iter().cloned());
            let sidecar = Sidecar::start(&env);
            sidecar.wait_ready().await;
            let cpu_before = sidecar.cpu_seconds();
            let sample = http_publish_with(&sidecar.api, 64, variant.headers).await;
            let cpu = (sidecar.cpu_seconds() - cpu_before) / sample.count as f64 * 1000.0;
            publish[slot].push((sample.rate(), cpu));
            purge(&bench.admin, &bench.sink).await;
            drop(sidecar);
            let _ = std::fs::remove_dir_all(&data);
            let delivered = sidecar_delivery(
                bench,
                &format!("{tag}{round}{slot}"),
                &variant.env,
                variant.subscription,
            )
            .await;
            delivery[slot].push((delivered.sample.rate(), delivered.cpu_per_1000));
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
pub async fn receipts_cost(bench: &Bench) -> Value {
    let receipts = |on: &str| Variant {
        env: vec![("CAUSEWAY_FLOW_RECEIPTS", on.to_owned())],
        headers: "",
        subscription: "",
    };
    let compared = compare(bench, "r", [receipts("false"), receipts("true")]).await;
    report_compared(&compared, ("off", "on"))
}

/// The attributes of a CloudEvent in HTTP binary mode, as header lines (the body is the
/// same payload as the native publish's).
const CLOUDEVENT_HEADERS: &str = "ce-specversion: 1.0\r\nce-id: bench-0001\r\nce-source: https://bench.example/orders\r\nce-type: Bench\r\nce-time: 2026-11-27T12:00:00Z\r\n";

/// Publish at 64 clients, native and as CloudEvents in binary mode, and delivery in
/// causeway's format and in `cloudevents-binary`.
pub async fn cloudevents_cost(bench: &Bench) -> Value {
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
    let compared = compare(bench, "ce", variants).await;
    report_compared(&compared, ("native", "cloudevents"))
}

/// Publishing at 64 clients with spans off, then with every span sampled and exported to a
/// local OTLP receiver that accepts and discards. Returns (on, off).
pub async fn tracing_cost(bench: &Bench) -> (Sample, Sample) {
    let otlp = otlp_sink().await;
    let mut samples = Vec::new();
    for (what, sampler) in [("off", "always_off"), ("on", "always_on")] {
        let data = tempdir(&bench.id, &format!("trace-{what}"));
        let mut env = bench.publishing_env("t", &data);
        env.retain(|(name, _)| *name != "OTEL_TRACES_SAMPLER");
        env.push(("OTEL_TRACES_SAMPLER", sampler.to_owned()));
        if what == "on" {
            env.push(("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.clone()));
        }
        let sidecar = Sidecar::start(&env);
        sidecar.wait_ready().await;
        samples.push(http_publish(&sidecar.api, 64).await);
        purge(&bench.admin, &bench.sink).await;
        drop(sidecar);
        let _ = std::fs::remove_dir_all(&data);
    }
    let on = samples.pop().unwrap();
    let off = samples.pop().unwrap();
    (on, off)
}
