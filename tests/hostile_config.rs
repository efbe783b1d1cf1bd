//! Hostile and careless configuration against the real binary: bytes that are not UTF-8,
//! URLs the client would misread, credentials in URLs, broker names that cannot be declared.
#![allow(clippy::unwrap_used)]

mod common;

use std::{
    ffi::OsString,
    os::unix::ffi::OsStringExt,
    process::{Command, Output},
};

use common::{Broker, Settings};

const SECRET: &str = "hunter2SECRET";

fn bytes(value: &[u8]) -> OsString {
    OsString::from_vec(value.to_vec())
}

/// Runs the binary with only the given variables and `args`.
fn causeway(env: &[(&str, OsString)], args: &[&str]) -> (Option<i32>, String, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = Command::new(env!("CARGO_BIN_EXE_causeway"))
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .args(args)
        .output()
        .unwrap();
    (
        status.code(),
        String::from_utf8_lossy(&stdout).into_owned(),
        String::from_utf8_lossy(&stderr).into_owned(),
    )
}

/// A free port now, to see that a refused configuration bound nothing.
fn free_addr() -> String {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    probe.local_addr().unwrap().to_string()
}

#[tokio::test]
async fn variables_that_are_not_utf8_and_read_by_nothing_are_ignored() {
    let mut password = SECRET.as_bytes().to_vec();
    password.push(0xff);
    let sidecar = Settings::new().start_with_env(&[
        (OsString::from("UNRELATED_DB_PASSWORD"), bytes(&password)),
        (OsString::from("LANG"), bytes(b"\xc3\x28")),
        // Read by the command-line tools, not by the sidecar.
        (OsString::from("CAUSEWAY_API_URL"), bytes(b"http://\xff")),
        (bytes(b"ODD_\xffNAME"), OsString::from("1")),
    ]);
    sidecar.wait_ready().await;
    let logs = sidecar.logs().join("\n");
    assert!(!logs.contains(SECRET), "{logs}");
    assert!(sidecar.error_lines().is_empty(), "{logs}");
    println!("ready with 4 variables that are not UTF-8 in its environment");
    sidecar.cleanup(&Broker::connect().await).await;
}

#[test]
fn a_setting_that_is_not_utf8_is_named_without_its_value_and_exits_64() {
    let with_secret = |before: &str| {
        let mut value = format!("{before}{SECRET}").into_bytes();
        value.push(0xff);
        bytes(&value)
    };
    let addr = free_addr();
    let (code, stdout, stderr) = causeway(
        &[
            ("CAUSEWAY_SERVICE", OsString::from("orders")),
            ("CAUSEWAY_API_ADDR", OsString::from(&addr)),
            ("CAUSEWAY_AMQP_URL", with_secret("amqp://user:")),
            ("CAUSEWAY_API_TOKEN", with_secret("0123456789abcdef")),
            ("OTEL_EXPORTER_OTLP_HEADERS", with_secret("authorization=")),
        ],
        &[],
    );
    assert_eq!(code, Some(64), "{stderr}");
    for name in [
        "CAUSEWAY_AMQP_URL",
        "CAUSEWAY_API_TOKEN",
        "OTEL_EXPORTER_OTLP_HEADERS",
    ] {
        assert!(stderr.contains(name), "{name} not named in:\n{stderr}");
    }
    assert!(stderr.contains("not valid UTF-8"), "{stderr}");
    assert!(!stderr.contains(SECRET), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stdout.is_empty(), "it logged as if it ran: {stdout}");
    assert!(std::net::TcpListener::bind(&addr).is_ok());
    println!("{stderr}");
}

#[test]
fn the_command_line_tools_name_a_variable_that_is_not_utf8() {
    let token = {
        let mut value = format!("{SECRET}{SECRET}").into_bytes();
        value.push(0xfe);
        bytes(&value)
    };
    let (code, _, stderr) = causeway(
        &[("CAUSEWAY_API_TOKEN", token.clone())],
        &["dlq", "list", "orders"],
    );
    assert_eq!(code, Some(64), "{stderr}");
    assert!(stderr.contains("CAUSEWAY_API_TOKEN"), "{stderr}");
    assert!(!stderr.contains(SECRET), "{stderr}");

    let (code, _, stderr) = causeway(
        &[("CAUSEWAY_MANAGEMENT_PASSWORD", token)],
        &["schema", "consumers", "OrderPlaced"],
    );
    assert_eq!(code, Some(64), "{stderr}");
    assert!(stderr.contains("CAUSEWAY_MANAGEMENT_PASSWORD"), "{stderr}");
    assert!(!stderr.contains(SECRET), "{stderr}");
}

#[test]
fn an_app_url_the_client_would_misread_is_refused_at_start() {
    for (url, problem) in [
        ("http://127.0.0.1:99999", "out of range"),
        ("http://127.0.0.1:", "empty"),
        ("http://127.0.0.1:8080/hooks?x=1", "query"),
        ("http://127.0.0.1:8080/a b", "not a valid URL"),
    ] {
        let addr = free_addr();
        let (code, _, stderr) = causeway(
            &[
                ("CAUSEWAY_SERVICE", OsString::from("orders")),
                ("CAUSEWAY_API_ADDR", OsString::from(&addr)),
                ("CAUSEWAY_APP_URL", OsString::from(url)),
            ],
            &[],
        );
        assert_eq!(code, Some(64), "{url}: {stderr}");
        assert!(stderr.contains("CAUSEWAY_APP_URL"), "{url}: {stderr}");
        assert!(stderr.contains(problem), "{url}: {stderr}");
        assert!(std::net::TcpListener::bind(&addr).is_ok());
    }
}

#[test]
fn credentials_in_urls_are_never_shown() {
    let (code, stdout, stderr) = causeway(
        &[
            ("CAUSEWAY_SERVICE", OsString::from("orders")),
            (
                "CAUSEWAY_APP_URL",
                OsString::from(format!("http://user:{SECRET}@127.0.0.1:8080")),
            ),
            (
                "CAUSEWAY_AMQP_URL",
                OsString::from(format!("amqp://a/%2f,amqp:{SECRET}")),
            ),
            (
                "CAUSEWAY_DEDUP_URL",
                OsString::from(format!("redis://:{SECRET}@/0")),
            ),
            ("RUST_LOG", OsString::from("trace")),
        ],
        &[],
    );
    assert_eq!(code, Some(64), "{stderr}");
    for name in [
        "CAUSEWAY_APP_URL",
        "CAUSEWAY_AMQP_URL",
        "CAUSEWAY_DEDUP_URL",
    ] {
        assert!(stderr.contains(name), "{name} not named in:\n{stderr}");
    }
    assert!(stderr.contains("credentials"), "{stderr}");
    assert!(!stderr.contains(SECRET), "{stderr}");
    assert!(!stdout.contains(SECRET), "{stdout}");
    println!("{stderr}");

    // The command-line tools show the URL they could not reach without its credentials.
    let closed = free_addr();
    let api = format!("http://user:{SECRET}@{closed}");
    let (code, _, stderr) = causeway(&[], &["dlq", "list", "orders", "--api", &api]);
    assert_eq!(code, Some(69), "{stderr}");
    assert!(stderr.contains(&format!("http://***@{closed}")), "{stderr}");
    assert!(!stderr.contains(SECRET), "{stderr}");
}

#[test]
fn broker_names_that_cannot_be_declared_are_refused_at_start() {
    for (exchange, unrouted, origin, problem) in [
        (
            "amq.topic",
            "orders.unrouted",
            "CAUSEWAY_EXCHANGE",
            "reserved",
        ),
        (
            "orders.events",
            "amq.unrouted",
            "CAUSEWAY_UNROUTED_QUEUE",
            "reserved",
        ),
        (
            "orders.events",
            "orders.events",
            "CAUSEWAY_UNROUTED_QUEUE",
            "events exchange",
        ),
    ] {
        let addr = free_addr();
        let (code, _, stderr) = causeway(
            &[
                ("CAUSEWAY_SERVICE", OsString::from("orders")),
                ("CAUSEWAY_API_ADDR", OsString::from(&addr)),
                ("CAUSEWAY_EXCHANGE", OsString::from(exchange)),
                ("CAUSEWAY_UNROUTED_QUEUE", OsString::from(unrouted)),
            ],
            &[],
        );
        assert_eq!(code, Some(64), "{exchange}/{unrouted}: {stderr}");
        assert!(
            stderr.contains(&format!("{origin}: ")) && stderr.contains(problem),
            "{exchange}/{unrouted}: {stderr}"
        );
        assert!(std::net::TcpListener::bind(&addr).is_ok());
    }
}

#[test]
fn a_bad_schemas_dir_is_a_plain_config_error_and_text_logs_have_no_colours_in_a_pipe() {
    let missing = std::env::temp_dir().join(common::unique("causeway-no-schemas"));
    let addr = free_addr();
    let (code, stdout, stderr) = causeway(
        &[
            ("CAUSEWAY_SERVICE", OsString::from("orders")),
            ("CAUSEWAY_API_ADDR", OsString::from(&addr)),
            ("CAUSEWAY_SCHEMAS_DIR", missing.clone().into_os_string()),
            ("CAUSEWAY_LOG_FORMAT", OsString::from("text")),
        ],
        &[],
    );
    assert_eq!(code, Some(64), "{stdout}{stderr}");
    assert!(
        stderr.starts_with("causeway: invalid configuration (1 problem(s)):\n"),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "  CAUSEWAY_SCHEMAS_DIR: {}: cannot read",
            missing.display()
        )),
        "{stderr}"
    );
    assert!(!stdout.contains("schemas"), "{stdout}");
    // What it logged before (text, to a pipe) is plain.
    assert!(stdout.contains("tracing ready"), "{stdout}");
    assert!(!stdout.contains("\x1b["), "{stdout:?}");
    assert!(std::net::TcpListener::bind(&addr).is_ok());
}
