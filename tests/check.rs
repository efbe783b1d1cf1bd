//! `causeway check` against the real broker, Redis and a real app on loopback: every check
//! passes when everything is there; each thing that is not is named on a line of its own,
//! with the exit code; no credential is ever shown.
#![allow(clippy::unwrap_used)]

mod common;

use std::{path::PathBuf, process::Command, time::Duration};

use common::{AMQP_URL, Broker, Settings, app::TestApp, unique};
use serde_json::Value;

const SECRET: &str = "hunter2SECRET";
const REDIS_URL: &str = "redis://127.0.0.1:6379/";
const MANAGEMENT_URL: &str = "http://127.0.0.1:15672";

/// Runs `causeway check` with the settings' variables only (and `args`), off the test's
/// runtime: the binary probes with timeouts of its own.
async fn check(settings: &Settings, args: &[&str]) -> (i32, String, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_causeway"));
    command
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(&settings.env)
        .arg("check")
        .args(["--timeout", "3s"])
        .args(args);
    let output = tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// The findings of a `--output json` run.
fn findings(stdout: &str) -> Vec<Value> {
    let report: Value = serde_json::from_str(stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    report["checks"].as_array().unwrap().clone()
}

/// The status of each finding of `check`, with its target.
fn statuses(findings: &[Value], check: &str) -> Vec<(String, String)> {
    findings
        .iter()
        .filter(|f| f["check"] == check)
        .map(|f| {
            (
                f["status"].as_str().unwrap().to_owned(),
                f["target"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

/// A port nothing listens on.
fn closed_port() -> u16 {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    probe.local_addr().unwrap().port()
}

/// A schemas directory with one valid schema.
fn schemas_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(unique("causeway-check-schemas"));
    std::fs::create_dir_all(dir.join("OrderPlaced")).unwrap();
    std::fs::write(
        dir.join("OrderPlaced/1.0.json"),
        r#"{"type":"object","required":["order_id"]}"#,
    )
    .unwrap();
    dir
}

/// Settings where every check can pass: the local broker, Redis, management API, schemas,
/// and an app that listens.
fn healthy(app: &TestApp, schemas: &std::path::Path) -> Settings {
    Settings::new()
        .app(&app.url)
        .set("CAUSEWAY_DEDUP_URL", REDIS_URL)
        .set("CAUSEWAY_SCHEMAS_DIR", schemas.to_str().unwrap())
        .set("CAUSEWAY_MANAGEMENT_URL", MANAGEMENT_URL)
}

#[tokio::test]
async fn every_check_passes_when_everything_is_there() {
    let app = TestApp::start().await;
    let schemas = schemas_dir();
    let settings = healthy(&app, &schemas);

    let (code, out, err) = check(&settings, &[]).await;
    assert_eq!(code, 0, "{out}{err}");
    for check in [
        "config",
        "broker",
        "management",
        "schemas",
        "store",
        "redis",
        "app",
    ] {
        assert!(
            out.lines()
                .any(|line| line.starts_with(&format!("ok    {check} "))),
            "no ok line for {check}:\n{out}"
        );
    }
    assert!(
        !out.lines()
            .any(|l| l.starts_with("fail") || l.starts_with("warn")),
        "{out}"
    );
    assert!(out.contains("1 schema(s) of 1 event type(s)"), "{out}");
    assert!(out.ends_with("every check passed\n"), "{out}");
    println!("{out}");

    let (code, out, _) = check(&settings, &["--output", "json"]).await;
    assert_eq!(code, 0, "{out}");
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["status"], "ok");
    assert_eq!(report["exit_code"], 0);
    assert!(findings(&out).iter().all(|f| f["status"] == "ok"), "{out}");
    std::fs::remove_dir_all(schemas).unwrap();
}

#[tokio::test]
async fn a_dead_broker_address_among_good_ones_is_named_and_fails() {
    let app = TestApp::start().await;
    let dead = closed_port();
    let list = format!("{AMQP_URL},amqp://guest:{SECRET}@127.0.0.1:{dead}/%2f");
    let settings = Settings::new()
        .app(&app.url)
        .set("CAUSEWAY_AMQP_URL", &list);

    let (code, out, _) = check(&settings, &["--output", "json"]).await;
    assert_eq!(code, 1, "{out}");
    let found = findings(&out);
    assert_eq!(
        statuses(&found, "broker"),
        [
            ("ok".to_owned(), "amqp://127.0.0.1:5672//".to_owned()),
            ("fail".to_owned(), format!("amqp://127.0.0.1:{dead}//")),
        ]
    );
    let failed = found.iter().find(|f| f["status"] == "fail").unwrap();
    assert!(
        failed["fix"].as_str().unwrap().contains("nothing listens"),
        "{failed}"
    );
    assert!(
        found
            .iter()
            .filter(|f| f["check"] != "broker")
            .all(|f| f["status"] != "fail"),
        "{out}"
    );
    assert!(!out.contains(SECRET), "{out}");

    let (code, text, _) = check(&settings, &[]).await;
    assert_eq!(code, 1, "{text}");
    assert!(
        text.lines()
            .any(|line| line.starts_with(&format!("fail  broker     amqp://127.0.0.1:{dead}//: "))),
        "{text}"
    );
    assert!(text.contains("1 check(s) failed"), "{text}");
    assert!(!text.contains(SECRET), "{text}");
}

#[tokio::test]
async fn redis_on_a_dead_port_fails_without_its_password() {
    let app = TestApp::start().await;
    let dead = closed_port();
    let settings = Settings::new().app(&app.url).set(
        "CAUSEWAY_DEDUP_URL",
        &format!("redis://:{SECRET}@127.0.0.1:{dead}/0"),
    );

    let (code, out, _) = check(&settings, &["--output", "json"]).await;
    assert_eq!(code, 1, "{out}");
    let found = findings(&out);
    let redis = found.iter().find(|f| f["check"] == "redis").unwrap();
    assert_eq!(redis["status"], "fail", "{out}");
    assert_eq!(redis["target"], format!("redis://***@127.0.0.1:{dead}/0"));
    assert!(
        redis["fix"].as_str().unwrap().contains("start Redis"),
        "{redis}"
    );
    assert_eq!(statuses(&found, "broker")[0].0, "ok", "{out}");
    assert!(!out.contains(SECRET), "{out}");
}

#[tokio::test]
async fn a_schemas_dir_that_cannot_be_read_or_holds_a_bad_schema_fails() {
    let app = TestApp::start().await;
    // Not a directory: reading it fails, as for one the sidecar may not read.
    let file = std::env::temp_dir().join(unique("causeway-check-not-a-dir"));
    std::fs::write(&file, "x").unwrap();
    let missing = std::env::temp_dir().join(unique("causeway-check-missing"));
    let bad = schemas_dir();
    std::fs::write(bad.join("OrderPlaced/2.0.json"), "{ not json").unwrap();

    for (dir, problem) in [
        (&file, "cannot read"),
        (&missing, "cannot read"),
        (&bad, "2.0.json: not valid JSON"),
    ] {
        let settings = Settings::new()
            .app(&app.url)
            .set("CAUSEWAY_SCHEMAS_DIR", dir.to_str().unwrap());
        let (code, out, _) = check(&settings, &[]).await;
        assert_eq!(code, 1, "{out}");
        let line = out
            .lines()
            .find(|line| line.starts_with("fail  schemas"))
            .unwrap_or_else(|| panic!("no failed schemas line:\n{out}"));
        assert!(line.contains(problem), "{line}");
        assert!(line.contains(dir.to_str().unwrap()), "{line}");
        assert_eq!(
            out.lines().filter(|line| line.starts_with("fail")).count(),
            1,
            "{out}"
        );
    }
    std::fs::remove_file(file).unwrap();
    std::fs::remove_dir_all(bad).unwrap();
}

#[tokio::test]
async fn an_invalid_configuration_lists_every_problem_and_exits_64() {
    let settings = Settings::new().set("CAUSEWAY_MAX_BODY", "lots").set(
        "CAUSEWAY_AMQP_URL",
        &format!("http://guest:{SECRET}@rabbit"),
    );
    let (code, out, _) = check(&settings, &[]).await;
    assert_eq!(code, 64, "{out}");
    assert!(
        out.starts_with("fail  config     invalid: 2 problem(s)"),
        "{out}"
    );
    assert!(out.contains("CAUSEWAY_MAX_BODY: expected a size"), "{out}");
    assert!(out.contains("CAUSEWAY_AMQP_URL: "), "{out}");
    assert!(
        out.contains("skip  broker     not checked: the configuration is invalid"),
        "{out}"
    );
    assert!(!out.contains(SECRET), "{out}");

    // A config file that is not TOML: where, and no invented missing service.
    let settings = Settings::new();
    let dir = PathBuf::from(settings.get("CAUSEWAY_DATA_DIR"));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("causeway.toml");
    std::fs::write(&file, "service = \"orders\"\nexchange = [\n").unwrap();
    let mut settings = settings.set("CAUSEWAY_CONFIG", file.to_str().unwrap());
    settings.env.remove("CAUSEWAY_SERVICE");
    let (code, out, _) = check(&settings, &["--output", "json"]).await;
    assert_eq!(code, 64, "{out}");
    let config = &findings(&out)[0];
    let problems = config["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 1, "{out}");
    assert_eq!(problems[0]["origin"], file.to_str().unwrap());
    assert!(
        problems[0]["problem"]
            .as_str()
            .unwrap()
            .starts_with("not valid TOML at line 2, column 13: unclosed array"),
        "{out}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn credentials_never_show_even_where_they_are_refused() {
    let dead = closed_port();
    let settings = Settings::new()
        .set(
            "CAUSEWAY_AMQP_URL",
            &format!("amqp://guest:{SECRET}@127.0.0.1:5672/%2f"),
        )
        .set(
            "CAUSEWAY_MANAGEMENT_URL",
            &format!("http://guest:{SECRET}@127.0.0.1:{dead},{MANAGEMENT_URL}"),
        )
        .set("CAUSEWAY_MANAGEMENT_PASSWORD", SECRET);
    for output in ["text", "json"] {
        let (code, out, err) = check(&settings, &["--output", output]).await;
        assert_eq!(code, 1, "{out}");
        assert!(!out.contains(SECRET), "{out}");
        assert!(!err.contains(SECRET), "{err}");
    }
    let (_, out, _) = check(&settings, &["--output", "json"]).await;
    let found = findings(&out);
    let broker = found.iter().find(|f| f["check"] == "broker").unwrap();
    assert_eq!(broker["status"], "fail", "{out}");
    assert!(
        broker["fix"]
            .as_str()
            .unwrap()
            .contains("user name or password"),
        "{broker}"
    );
    assert_eq!(
        statuses(&found, "management"),
        [
            ("fail".to_owned(), format!("http://127.0.0.1:{dead}")),
            ("fail".to_owned(), MANAGEMENT_URL.to_owned()),
        ],
        "{out}"
    );
    let refused = found
        .iter()
        .find(|f| f["target"] == MANAGEMENT_URL)
        .unwrap();
    assert!(
        refused["found"].as_str().unwrap().contains("401"),
        "{refused}"
    );
}

#[tokio::test]
async fn the_store_of_a_running_sidecar_is_in_use_not_failed_and_a_silent_app_warns() {
    let mut sidecar = Settings::new().start();
    sidecar.wait_ready().await;
    // The app URL is the default, where nothing listens here: a warning, not a failure.
    let dead = closed_port();
    let settings = sidecar
        .settings
        .again()
        .set("CAUSEWAY_APP_URL", &format!("http://127.0.0.1:{dead}"));
    let (code, out, _) = check(&settings, &[]).await;
    assert_eq!(code, 0, "{out}");
    let store = out
        .lines()
        .find(|line| line.starts_with("ok    store"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(store.contains("in use by a running sidecar"), "{store}");
    assert!(
        out.lines()
            .any(|line| line.starts_with("warn  app") && line.contains("nothing listens")),
        "{out}"
    );
    assert!(out.contains("with 1 warning(s)"), "{out}");

    // Once it has stopped, the store is no longer in use.
    sidecar.terminate();
    let status = sidecar.wait_exit(Duration::from_secs(20)).await;
    assert!(status.success(), "{status}");
    let (code, out, _) = check(&settings, &[]).await;
    assert_eq!(code, 0, "{out}");
    let store = out
        .lines()
        .find(|line| line.starts_with("ok    store"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(!store.contains("in use"), "{store}");
    // The drain closed the file: the next start needs no repair pass over it.
    assert!(!store.contains("not closed cleanly"), "{store}");
    sidecar.cleanup(&Broker::connect().await).await;
}

#[tokio::test]
async fn a_store_that_does_not_open_fails_and_one_closed_cleanly_opens() {
    let app = TestApp::start().await;
    let settings = Settings::new().app(&app.url);
    let dir = PathBuf::from(settings.get("CAUSEWAY_DATA_DIR"));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("causeway.redb");

    drop(redb::Database::create(&file).unwrap());
    let (code, out, _) = check(&settings, &[]).await;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.lines()
            .any(|line| line.starts_with("ok    store") && line.contains("the store opens")),
        "{out}"
    );

    std::fs::write(&file, vec![0x5a; 8192]).unwrap();
    let (code, out, _) = check(&settings, &["--output", "json"]).await;
    assert_eq!(code, 1, "{out}");
    let found = findings(&out);
    let store = found.iter().find(|f| f["check"] == "store").unwrap();
    assert_eq!(store["status"], "fail", "{out}");
    assert!(
        store["found"].as_str().unwrap().contains("does not open"),
        "{store}"
    );
    assert!(store["fix"].as_str().unwrap().contains("aside"), "{store}");
    std::fs::remove_dir_all(dir).unwrap();
}
