//! The README's first command: `scripts/demo` runs the order → inventory → payment story with
//! three sidecars and the example apps, and prints what happened. This test runs it with the
//! debug binary and checks what it printed: the causal chains, the skipped duplicate and the
//! dead letter. The demo picks its own names and ports, so it runs next to the other tests.
#![allow(clippy::unwrap_used)]

use std::{process::Stdio, time::Duration};

use tokio::{io::AsyncReadExt, process::Command};

/// A stuck demo gets SIGTERM from this test and 30 s to clean up after itself: both fit in
/// nextest's limit of 180 s for one test (.config/nextest.toml).
const TIMEOUT: Duration = Duration::from_secs(120);

const FLOW: [(&str, &str); 3] = [
    ("OrderPlaced", "order"),
    ("StockReserved", "inventory"),
    ("PaymentTaken", "payment"),
];

struct Demo {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

async fn run_demo() -> Demo {
    let mut child = Command::new("bash")
        .arg("scripts/demo")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("CAUSEWAY_BIN", env!("CARGO_BIN_EXE_causeway"))
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("bash runs scripts/demo");
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = tokio::spawn(async move {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text).await;
        text
    });
    let err = tokio::spawn(async move {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text).await;
        text
    });
    let status = match tokio::time::timeout(TIMEOUT, child.wait()).await {
        Ok(status) => status.unwrap(),
        Err(_) => {
            // The demo's trap stops its processes and deletes its queues on SIGTERM.
            let pid = child.id().unwrap().to_string();
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid])
                .status();
            if tokio::time::timeout(Duration::from_secs(30), child.wait())
                .await
                .is_err()
            {
                let _ = child.kill().await;
            }
            panic!(
                "scripts/demo did not finish within {TIMEOUT:?}\nstdout:\n{}\nstderr:\n{}",
                out.await.unwrap(),
                err.await.unwrap()
            );
        }
    };
    Demo {
        code: status.code(),
        stdout: out.await.unwrap(),
        stderr: err.await.unwrap(),
    }
}

#[derive(Debug)]
struct Event {
    event_type: String,
    service: String,
    event_id: String,
    caused_by: String,
}

#[derive(Debug, Default)]
struct Chain {
    order_id: String,
    correlation_id: String,
    events: Vec<Event>,
    notes: Vec<String>,
}

/// The lines of the section whose header starts with `title`.
fn section<'a>(stdout: &'a str, title: &str) -> Vec<&'a str> {
    let header = format!("== {title}");
    stdout
        .lines()
        .skip_while(|line| !line.starts_with(&header))
        .skip(1)
        .take_while(|line| !line.starts_with("== "))
        .collect()
}

fn chains(stdout: &str) -> Vec<Chain> {
    let mut chains: Vec<Chain> = Vec::new();
    for line in section(stdout, "Causal chains") {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["order", order_id, "correlation", correlation_id] => chains.push(Chain {
                order_id: order_id.to_string(),
                correlation_id: correlation_id.to_string(),
                ..Chain::default()
            }),
            // A seventh word and more would be a correlation id that differs from the order's.
            [event_type, service, event_id, "caused", "by", caused_by] => {
                chains.last_mut().unwrap().events.push(Event {
                    event_type: event_type.to_string(),
                    service: service.to_string(),
                    event_id: event_id.to_string(),
                    caused_by: caused_by.to_string(),
                })
            }
            [] => {}
            _ => chains
                .last_mut()
                .unwrap()
                .notes
                .push(line.trim().to_string()),
        }
    }
    chains
}

/// `key=value` from a line of words.
fn field<'a>(line: &'a str, key: &str) -> &'a str {
    let prefix = format!("{key}=");
    line.split_whitespace()
        .find_map(|word| word.strip_prefix(prefix.as_str()))
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
}

/// No process the demo started is still running, and nothing it declared is left on the
/// broker. Every sidecar's environment names the run's exchange, and every app's names its
/// journal in the run's temporary directory; both contain the run id.
async fn assert_cleaned_up(stdout: &str) {
    let run = stdout
        .lines()
        .find_map(|l| l.strip_prefix("run ")?.split(':').next())
        .unwrap()
        .to_string();
    let marker = format!(".{run}.");
    let tmp = stdout
        .lines()
        .find_map(|l| l.split("temporary files in ").nth(1))
        .unwrap()
        .trim()
        .to_string();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
                continue;
            };
            let environ = String::from_utf8_lossy(&environ);
            assert!(
                !environ.contains(&marker) && !environ.contains(&tmp),
                "process {:?} of the demo is still running",
                entry.file_name()
            );
        }
    }
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    for kind in ["queues", "exchanges"] {
        let listed: serde_json::Value = http
            .get(format!(
                "http://127.0.0.1:15672/api/{kind}/%2F?columns=name"
            ))
            .basic_auth("guest", Some("guest"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let left: Vec<&str> = listed
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|o| o["name"].as_str())
            .filter(|name| name.contains(&run))
            .collect();
        assert!(left.is_empty(), "the demo left {kind} behind: {left:?}");
    }
}

#[tokio::test]
async fn the_demo_shows_the_chains_a_skipped_duplicate_and_a_dead_letter() {
    let demo = run_demo().await;
    let context = format!("stdout:\n{}\nstderr:\n{}", demo.stdout, demo.stderr);
    assert_eq!(demo.code, Some(0), "{context}");
    let stdout = demo.stdout.as_str();

    // Three orders: two go through the three services, the unknown SKU stops at inventory.
    let chains = chains(stdout);
    assert_eq!(chains.len(), 3, "{context}");
    let (good, bad) = chains.split_at(2);
    for chain in good {
        let types: Vec<(&str, &str)> = chain
            .events
            .iter()
            .map(|e| (e.event_type.as_str(), e.service.as_str()))
            .collect();
        assert_eq!(types, FLOW, "{chain:?}\n{context}");
        assert_eq!(chain.events[0].caused_by, "-", "{chain:?}");
        for pair in chain.events.windows(2) {
            assert_eq!(pair[1].caused_by, pair[0].event_id, "{chain:?}");
            assert_ne!(pair[1].event_id, pair[0].event_id, "{chain:?}");
        }
        assert!(chain.notes.is_empty(), "{chain:?}");
        let status = format!("{}  paid", chain.order_id);
        assert!(
            section(stdout, "Waiting")
                .iter()
                .any(|l| l.trim() == status),
            "{status:?} not printed\n{context}"
        );
    }
    assert_ne!(good[0].correlation_id, good[1].correlation_id);
    let bad = &bad[0];
    assert_eq!(bad.events.len(), 1, "{bad:?}");
    assert_eq!(bad.events[0].event_type, "OrderPlaced");
    assert_eq!(bad.events[0].caused_by, "-");
    assert!(
        bad.notes
            .iter()
            .any(|n| n.contains("422") && n.contains("unknown SKU")),
        "{bad:?}"
    );

    // The copy of a delivered OrderPlaced was skipped, and the app saw the event once.
    let duplicate = section(stdout, "A duplicate")
        .into_iter()
        .find(|l| l.contains("duplicate_event_skipped"))
        .unwrap_or_else(|| panic!("no duplicate_event_skipped line\n{context}"));
    let skipped = field(duplicate, "event_id");
    let chain = good
        .iter()
        .find(|c| c.events.iter().any(|e| e.event_id == skipped))
        .unwrap_or_else(|| panic!("{skipped} is not in the chains\n{context}"));
    assert_eq!(chain.events[0].event_id, skipped);
    assert_eq!(field(duplicate, "correlation_id"), chain.correlation_id);
    assert!(
        section(stdout, "A duplicate")
            .iter()
            .any(|l| l.contains("received that event once")),
        "{context}"
    );

    // The unknown SKU's OrderPlaced is the one dead letter, rejected with the app's 422.
    let dead_letters: Vec<Vec<&str>> = section(stdout, "The dead letter")
        .into_iter()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|w| w.len() > 3 && w[1] == "OrderPlaced")
        .collect();
    assert_eq!(dead_letters.len(), 1, "{context}");
    assert_eq!(dead_letters[0][0], bad.events[0].event_id, "{context}");
    assert_eq!(dead_letters[0][2], "rejected", "{context}");
    assert_eq!(dead_letters[0][3], "422", "{context}");

    // Where is the bad order? The order app answers from its flow, and `causeway flow` shows
    // the hop it is stuck at, with the inventory app's own words.
    let flow = section(stdout, "Where is order");
    assert!(
        flow.iter()
            .any(|l| l.contains(r#""status": "failed""#) && l.contains(&bad.order_id)),
        "{context}"
    );
    let header = flow
        .iter()
        .find(|l| l.starts_with(&bad.order_id))
        .unwrap_or_else(|| panic!("no flow header\n{context}"));
    assert!(header.contains("stuck"), "{header}");
    assert!(header.contains("definition order: failed"), "{header}");
    assert!(
        flow.iter().any(|l| l.contains("/reserve-stock")
            && l.contains("dead_lettered")
            && l.contains("422: unknown SKU")),
        "{context}"
    );
    assert!(
        flow.iter()
            .any(|l| l.contains(&format!("/ui/#/flow/{}", bad.order_id))),
        "{context}"
    );

    assert_cleaned_up(stdout).await;
}
