//! The Grafana dashboard (deploy/grafana/causeway.json) and the alert rules
//! (deploy/prometheus/alerts.yaml, and their PrometheusRule copy): the dashboard has the shape
//! Grafana needs to import it, and every PromQL expression of both selects only metrics that a
//! running sidecar exposes.
#![allow(clippy::unwrap_used)]

mod common;
#[path = "dashboard/promql.rs"]
mod promql;

use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    path::Path,
    time::{Duration, Instant},
};

use common::{Broker, Settings, app::TestApp};
use serde_json::Value;

const ARRIVES: Duration = Duration::from_secs(30);

/// Grafana's own variables, usable in any query.
const GLOBAL_VARIABLES: &[&str] = &[
    "__rate_interval",
    "__interval",
    "__interval_ms",
    "__range",
    "__range_s",
    "__range_ms",
];

/// Panel types the dashboard may use: Grafana's built-in ones, no plugins to install.
const PANEL_TYPES: &[&str] = &[
    "row",
    "timeseries",
    "stat",
    "state-timeline",
    "gauge",
    "bargauge",
    "table",
    "text",
];

/// What the dashboard must show, by metric.
const SHOWN: &[&str] = &[
    "causeway_publishes_total",
    "causeway_publish_duration_seconds_bucket",
    "causeway_deliveries_total",
    "causeway_delivery_duration_seconds_bucket",
    "causeway_end_to_end_seconds_bucket",
    "causeway_queue_depth",
    "causeway_dead_letter_depth",
    "causeway_broker_connected",
    "causeway_subscription_state",
    "causeway_store_up",
    "causeway_store_errors_total",
    "causeway_flow_receipts_total",
];

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn dashboard() -> Value {
    let path = root().join("deploy/grafana/causeway.json");
    let text = std::fs::read_to_string(&path).unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn int(value: &Value, what: &str) -> i64 {
    value
        .as_i64()
        .unwrap_or_else(|| panic!("{what} is not an integer: {value}"))
}

/// Every PromQL expression of the dashboard, named by where it is: panel targets and the
/// queries of the query variables.
fn dashboard_queries(dashboard: &Value) -> Vec<(String, String, promql::Refs)> {
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap_or_default().to_owned();
            let place = format!("panel {:?} target {}", panel["title"], target["refId"]);
            let refs = promql::refs(&expr).unwrap_or_else(|e| panic!("{place}: {e}"));
            queries.push((place, expr, refs));
        }
    }
    for variable in dashboard["templating"]["list"].as_array().unwrap() {
        if variable["type"] == "query" {
            let query = variable["query"].as_str().unwrap_or_default().to_owned();
            let place = format!("variable {}", variable["name"]);
            let refs =
                promql::variable_query_refs(&query).unwrap_or_else(|e| panic!("{place}: {e}"));
            queries.push((place, query, refs));
        }
    }
    queries
}

/// The `expr` of every rule in a rules file (or PrometheusRule), for the YAML these files
/// use: `expr: <one line>` or a block scalar (`expr: >-`) on the lines indented below it.
fn rule_exprs(path: &Path) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let mut exprs = Vec::new();
    let mut alert = String::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        i += 1;
        if let Some(name) = trimmed.strip_prefix("- alert: ") {
            alert = name.trim().to_owned();
        } else if let Some(value) = trimmed.strip_prefix("expr: ") {
            let value = value.trim();
            let expr = if value.starts_with('>') || value.starts_with('|') {
                let mut block = Vec::new();
                while i < lines.len() {
                    let next = lines[i];
                    let next_indent = next.len() - next.trim_start().len();
                    if !next.trim().is_empty() && next_indent <= indent {
                        break;
                    }
                    block.push(next.trim());
                    i += 1;
                }
                block.join("\n")
            } else {
                assert!(
                    !value.starts_with('"') && !value.starts_with('\''),
                    "{}: quoted exprs are not read by this test",
                    path.display()
                );
                value.to_owned()
            };
            exprs.push((alert.clone(), expr));
        }
    }
    let alerts = lines
        .iter()
        .filter(|l| l.trim_start().starts_with("- alert: "))
        .count();
    assert_eq!(
        exprs.len(),
        alerts,
        "{}: one expr per alert",
        path.display()
    );
    exprs
}

fn alert_files() -> [std::path::PathBuf; 2] {
    [
        root().join("deploy/prometheus/alerts.yaml"),
        root().join("deploy/kubernetes/example/monitoring.yaml"),
    ]
}

#[test]
fn the_dashboard_has_the_structure_grafana_imports() {
    let dashboard = dashboard();
    assert!(
        dashboard["title"].as_str().is_some_and(|t| !t.is_empty()),
        "no title"
    );
    let uid = dashboard["uid"].as_str().expect("a uid");
    assert!(
        (1..=40).contains(&uid.len())
            && uid
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
        "uid {uid:?}: Grafana takes up to 40 letters, digits, - and _"
    );
    assert!(
        int(&dashboard["schemaVersion"], "schemaVersion") >= 36,
        "schemaVersion below Grafana 9's"
    );
    // An id belongs to one Grafana's database: an exported dashboard has none.
    assert!(dashboard["id"].is_null(), "id must be null");
    assert!(dashboard["time"]["from"].is_string() && dashboard["time"]["to"].is_string());

    let panels = dashboard["panels"].as_array().expect("panels");
    let mut ids = HashSet::new();
    let mut cells: BTreeMap<(i64, i64), String> = BTreeMap::new();
    for panel in panels {
        let title = panel["title"].as_str().expect("every panel has a title");
        let id = int(&panel["id"], "panel id");
        assert!(
            id > 0 && ids.insert(id),
            "panel {title:?}: id {id} repeated"
        );
        let kind = panel["type"].as_str().unwrap_or_default();
        assert!(
            PANEL_TYPES.contains(&kind),
            "panel {title:?}: type {kind:?}"
        );
        let grid = &panel["gridPos"];
        let [h, w, x, y] = ["h", "w", "x", "y"].map(|k| int(&grid[k], "gridPos"));
        assert!(
            h >= 1 && (1..=24).contains(&w) && x >= 0 && x + w <= 24 && y >= 0,
            "panel {title:?}: gridPos {grid} is outside the 24-column grid"
        );
        for row in y..y + h {
            for column in x..x + w {
                if let Some(other) = cells.insert((row, column), title.to_owned()) {
                    panic!("panels {other:?} and {title:?} overlap at row {row}, column {column}");
                }
            }
        }
        if kind == "row" {
            assert_eq!((h, w, x), (1, 24, 0), "row {title:?} spans the width");
            assert!(
                panel["panels"].as_array().is_some_and(Vec::is_empty),
                "row {title:?}: an open row holds no panels of its own"
            );
            continue;
        }
        assert_eq!(
            panel["datasource"]["uid"], "${datasource}",
            "panel {title:?} uses the datasource variable"
        );
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "panel {title:?} has no query");
        let mut refs = HashSet::new();
        for target in targets {
            let ref_id = target["refId"].as_str().expect("a refId");
            assert!(
                refs.insert(ref_id),
                "panel {title:?}: refId {ref_id} repeated"
            );
            assert!(
                target["expr"]
                    .as_str()
                    .is_some_and(|e| !e.trim().is_empty()),
                "panel {title:?} target {ref_id} has no expr"
            );
            assert_eq!(target["datasource"]["uid"], "${datasource}");
        }
    }

    let variables = dashboard["templating"]["list"]
        .as_array()
        .expect("templating.list");
    let mut names = BTreeSet::new();
    for variable in variables {
        let name = variable["name"].as_str().expect("a variable name");
        assert!(names.insert(name), "variable {name} repeated");
        match variable["type"].as_str() {
            Some("datasource") => assert_eq!(variable["query"], "prometheus"),
            Some("query") => {
                assert_eq!(variable["datasource"]["uid"], "${datasource}");
                assert!(variable["query"].is_string(), "variable {name}: query");
            }
            other => panic!("variable {name}: type {other:?}"),
        }
    }
    for wanted in ["datasource", "namespace", "job", "pod", "subscription"] {
        assert!(names.contains(wanted), "no {wanted} variable");
    }

    let mut shown = BTreeSet::new();
    for (place, _, refs) in dashboard_queries(&dashboard) {
        for variable in &refs.variables {
            assert!(
                names.contains(variable.as_str()) || GLOBAL_VARIABLES.contains(&variable.as_str()),
                "{place}: ${variable} is not a variable of the dashboard"
            );
        }
        shown.extend(refs.metrics);
    }
    for metric in SHOWN {
        assert!(shown.contains(*metric), "no panel shows {metric}");
    }
}

/// The metric names a scrape declares: each `# TYPE` family with the suffixes its samples
/// carry in the OpenMetrics text format.
fn declared(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let (family, kind) = rest.split_once(' ').unwrap();
        let suffixes: &[&str] = match kind {
            "counter" => &["_total", "_created"],
            "histogram" | "gaugehistogram" => &["_bucket", "_sum", "_count", "_created"],
            "summary" => &["", "_sum", "_count", "_created"],
            "info" => &["_info"],
            _ => &[""],
        };
        names.extend(suffixes.iter().map(|s| format!("{family}{s}")));
    }
    names
}

/// The metric names that have at least one sample in a scrape.
fn sampled(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap().to_owned())
        .collect()
}

/// Every metric name that the dashboard's queries and the alert rules use, by where it is used.
fn used_metrics() -> BTreeMap<String, Vec<String>> {
    let mut used: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (place, _, refs) in dashboard_queries(&dashboard()) {
        for metric in refs.metrics {
            used.entry(metric).or_default().push(place.clone());
        }
    }
    for file in alert_files() {
        for (alert, expr) in rule_exprs(&file) {
            let refs = promql::refs(&expr).unwrap_or_else(|e| panic!("{alert}: {e}"));
            assert!(!refs.metrics.is_empty(), "{alert}: selects no metric");
            for metric in refs.metrics {
                let place = format!("{} {alert}", file.file_name().unwrap().to_string_lossy());
                used.entry(metric).or_default().push(place);
            }
        }
    }
    used
}

/// A sidecar with a subscription that delivers, one that dead-letters, a publish of each and
/// one that nothing receives, so that every family has samples; then each metric name of the
/// dashboard and of the alerts must be declared by its `/metrics` and have a sample.
#[tokio::test]
async fn every_metric_the_dashboard_and_the_alerts_query_is_exposed_by_a_running_sidecar() {
    let used = used_metrics();
    let app = TestApp::start().await;
    app.always("/no", 422);
    let sidecar = Settings::new()
        .app(&app.url)
        .config_file(
            "[[subscriptions]]\nname = \"yes\"\nevent_type = \"Good\"\nroute = \"/yes\"\n\n\
             [[subscriptions]]\nname = \"no\"\nevent_type = \"Bad\"\nroute = \"/no\"\n",
        )
        .start();
    sidecar.wait_ready().await;
    let broker = Broker::connect().await;

    for event_type in ["Good", "Bad", "Nobody"] {
        let answer = sidecar.publish(event_type, "{}", &[]).await;
        assert_eq!(answer.status, 202, "{answer:?}");
    }
    app.wait_for("/yes", 1, ARRIVES).await;
    sidecar.wait_dead_letters("no", 1, ARRIVES).await;

    let deadline = Instant::now() + ARRIVES;
    let (text, missing) = loop {
        let text = sidecar.metrics_text().await;
        let sampled = sampled(&text);
        let missing: Vec<&String> = used.keys().filter(|m| !sampled.contains(*m)).collect();
        if missing.is_empty() || Instant::now() > deadline {
            break (text, missing.into_iter().cloned().collect::<Vec<_>>());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };

    let declared = declared(&text);
    let undeclared: Vec<_> = sampled(&text)
        .into_iter()
        .filter(|name| !declared.contains(name))
        .collect();
    assert!(
        undeclared.is_empty(),
        "samples without a # TYPE family: {undeclared:?}"
    );
    let unknown: Vec<String> = used
        .iter()
        .filter(|(metric, _)| !declared.contains(*metric))
        .map(|(metric, places)| format!("{metric} (in {})", places.join(", ")))
        .collect();
    assert!(
        unknown.is_empty(),
        "queries use metrics the sidecar does not expose:\n{}\n\n/metrics:\n{text}",
        unknown.join("\n")
    );
    assert!(
        missing.is_empty(),
        "exposed but without a sample after {ARRIVES:?}: {missing:?}\n\n/metrics:\n{text}"
    );

    sidecar.cleanup_subscription(&broker, "yes").await;
    sidecar.cleanup_subscription(&broker, "no").await;
    sidecar.cleanup(&broker).await;
}
