//! The probes of `causeway check`: each tries one thing the sidecar needs, within a bound,
//! and says what it found without any credential.

use std::{
    io::{ErrorKind, Write as _},
    path::{Path, PathBuf},
    time::Duration,
};

use reqwest::{StatusCode, Url};
use serde_json::Value;

use super::{CheckArgs, Finding};
use crate::{
    broker::{Dialer, OwnedConnection, address},
    cli::schema::management_urls,
    config::{AppUrl, without_credentials},
    errors::chain,
    schema::SchemaRegistry,
};

/// The embedded store's file in the data directory (see `store::embedded`).
const STORE_FILE: &str = "causeway.redb";

/// Connects to one broker address, logs in, and closes.
pub(super) async fn broker(url: &str, timeout: Duration) -> Finding {
    let target = address(url);
    let dialer = Dialer::new(&[url.to_owned()], timeout, "causeway check");
    match dialer.dial().await {
        Ok(dialed) => {
            let vhost = dialed.connection.status().vhost();
            OwnedConnection::new(dialed.connection).close().await;
            Finding::ok(
                "broker",
                format!("connected and logged in to vhost {:?}", vhost.as_str()),
            )
            .on(target)
        }
        Err(error) => {
            let problem = without_credentials(&error.error);
            let fix = broker_fix(&problem);
            Finding::fail("broker", problem, fix).on(target)
        }
    }
}

/// What to do about a broker address that did not take a connection.
pub(super) fn broker_fix(problem: &str) -> &'static str {
    let problem = problem.to_ascii_lowercase();
    if problem.contains("access_refused") || problem.contains("access-refused") {
        "the broker refused the user name or password: correct them in CAUSEWAY_AMQP_URL (or its Secret)"
    } else if problem.contains("vhost") || problem.contains("not_allowed") {
        "the virtual host does not exist or the user may not use it: create it and grant the user permissions, or correct the path of CAUSEWAY_AMQP_URL (%2f is the default vhost)"
    } else if problem.contains("refused") {
        "nothing listens there: start RabbitMQ, or correct the host and port in CAUSEWAY_AMQP_URL (or remove the address from the list)"
    } else if problem.contains("no answer within") {
        "the address did not answer in time: check the host, firewalls and NetworkPolicies, and that the port is RabbitMQ's AMQP port (5672, 5671 for amqps)"
    } else if problem.contains("lookup") || problem.contains("resolve") || problem.contains("dns") {
        "the host name does not resolve: correct it in CAUSEWAY_AMQP_URL"
    } else if problem.contains("tls") || problem.contains("certificate") {
        "the TLS handshake failed: check the broker's certificate and that amqps:// points at its TLS port"
    } else {
        "check that RabbitMQ runs at this address and that CAUSEWAY_AMQP_URL is right"
    }
}

/// Asks each management API address for its overview, when a list is given.
pub(super) async fn management(args: &CheckArgs) -> Vec<Finding> {
    let Some(list) = &args.management_url else {
        return vec![Finding::skip(
            "management",
            "CAUSEWAY_MANAGEMENT_URL is not set (the sidecar does not need it; `causeway schema consumers` does)",
        )];
    };
    let urls = match management_urls(list) {
        Ok(urls) => urls,
        Err(error) => {
            return vec![Finding::fail(
                "management",
                error.to_string(),
                "give base URLs such as http://rabbitmq:15672, separated by commas",
            )];
        }
    };
    let client = match reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(args.timeout)
        .timeout(args.timeout)
        .build()
    {
        Ok(client) => client,
        Err(error) => {
            let found = format!("cannot set up an HTTP client: {}", describe(error));
            return vec![Finding::fail("management", found, "report this as a bug")];
        }
    };
    let mut findings = Vec::new();
    for url in &urls {
        findings.push(overview(&client, args, url).await.on(shown(url)));
    }
    findings
}

/// One management address: `GET /api/overview`.
async fn overview(client: &reqwest::Client, args: &CheckArgs, base: &Url) -> Finding {
    let url = format!("{}/api/overview", base.as_str().trim_end_matches('/'));
    let mut request = client.get(url);
    // An address with its own user is sent with it (the client takes it from the URL).
    if base.username().is_empty() {
        request = request.basic_auth(&args.management_user, Some(&args.management_password));
    }
    let response = match request.send().await {
        Ok(response) => response,
        Err(error) => {
            return Finding::fail(
                "management",
                describe(error),
                "enable the plugin (rabbitmq-plugins enable rabbitmq_management) and check the address and port (15672)",
            );
        }
    };
    match response.status() {
        StatusCode::OK => {
            let overview: Value = response.json().await.unwrap_or(Value::Null);
            let version = overview["rabbitmq_version"].as_str().unwrap_or("unknown");
            Finding::ok("management", format!("answered (RabbitMQ {version})"))
        }
        StatusCode::UNAUTHORIZED => Finding::fail(
            "management",
            "refused the user name or password (401)",
            "set CAUSEWAY_MANAGEMENT_USER and CAUSEWAY_MANAGEMENT_PASSWORD to a user tagged monitoring or management",
        ),
        status => Finding::fail(
            "management",
            format!("answered {status}"),
            "check that the address is the management listener (port 15672)",
        ),
    }
}

/// A management address as shown: without credentials.
fn shown(url: &Url) -> String {
    let mut url = url.clone();
    let _ = url.set_username("");
    let _ = url.set_password(None);
    url.as_str().trim_end_matches('/').to_owned()
}

/// A client error with its causes, without the URL.
fn describe(error: reqwest::Error) -> String {
    if error.is_timeout() {
        return "no answer in time".into();
    }
    without_credentials(&chain(&error.without_url()))
}

/// Runs `probe`, which reads files, on a blocking thread within `timeout`: a volume that
/// hangs (a lost NFS server) is found, not waited for.
async fn blocking(
    check: &'static str,
    target: String,
    timeout: Duration,
    probe: impl FnOnce() -> Finding + Send + 'static,
) -> Finding {
    match tokio::time::timeout(timeout, tokio::task::spawn_blocking(probe)).await {
        Ok(Ok(finding)) => finding.on(target),
        Ok(Err(error)) => Finding::fail(
            check,
            format!("the check stopped: {error}"),
            "report this as a bug",
        ),
        Err(_) => Finding::fail(
            check,
            format!(
                "no answer within {}: the volume hangs",
                humantime::format_duration(timeout)
            ),
            "check the volume mounted there (a network file system that lost its server?)",
        )
        .on(target),
    }
}

/// Loads and compiles every schema, as the sidecar does at start.
pub(super) async fn schemas(dir: Option<PathBuf>, strict: bool, timeout: Duration) -> Finding {
    let Some(dir) = dir else {
        return Finding::skip(
            "schemas",
            "CAUSEWAY_SCHEMAS_DIR is not set: payloads are checked against the payload grammar only",
        );
    };
    let shown = dir.display().to_string();
    blocking("schemas", shown, timeout, move || schemas_now(&dir, strict)).await
}

fn schemas_now(dir: &Path, strict: bool) -> Finding {
    match SchemaRegistry::load(Some(dir), strict) {
        Ok(registry) => {
            let types = registry.list();
            let count: usize = types.values().map(Vec::len).sum();
            if count == 0 {
                let found = "no schema in the directory";
                let fix = "schemas are <dir>/<EventType>/<MAJOR.MINOR>.json files; with CAUSEWAY_SCHEMAS_STRICT on, every publish is refused without one";
                return Finding::warn("schemas", found, fix);
            }
            let found = format!("{count} schema(s) of {} event type(s), valid", types.len());
            Finding::ok("schemas", found)
        }
        Err(error) if error.path == dir => Finding::fail(
            "schemas",
            error.problem,
            "mount the schemas there (a ConfigMap volume, say), or correct CAUSEWAY_SCHEMAS_DIR",
        ),
        Err(error) => Finding::fail(
            "schemas",
            error.to_string(),
            "correct or remove the file named; schemas are <dir>/<EventType>/<MAJOR.MINOR>.json JSON Schemas (the sidecar would exit 64)",
        ),
    }
}

/// Whether the data directory takes writes, and whether its store opens.
pub(super) async fn store(dir: PathBuf, timeout: Duration) -> Finding {
    let shown = dir.display().to_string();
    blocking("store", shown, timeout, move || store_now(&dir)).await
}

fn store_now(dir: &Path) -> Finding {
    const MOUNT: &str = "mount a writable volume there (an emptyDir or a PersistentVolumeClaim), or set CAUSEWAY_DATA_DIR to a writable directory";
    if !dir.exists() {
        // The sidecar creates it; the nearest existing parent must let it.
        let Some(parent) = dir.ancestors().skip(1).find(|a| a.is_dir()) else {
            return Finding::fail("store", "no parent directory exists", MOUNT);
        };
        return match write_probe(parent) {
            Ok(()) => Finding::ok(
                "store",
                format!(
                    "does not exist yet; the sidecar creates it ({} takes writes)",
                    parent.display()
                ),
            ),
            Err(error) => Finding::fail(
                "store",
                format!(
                    "does not exist, and {} does not take writes: {error}",
                    parent.display()
                ),
                MOUNT,
            ),
        };
    }
    if !dir.is_dir() {
        return Finding::fail("store", "is not a directory", MOUNT);
    }
    if let Err(error) = write_probe(dir) {
        return Finding::fail("store", format!("does not take writes: {error}"), MOUNT);
    }
    open_store(&dir.join(STORE_FILE))
}

/// Creates, writes, syncs and removes a file of its own in `dir`.
fn write_probe(dir: &Path) -> std::io::Result<()> {
    let path = dir.join(format!(".causeway-check-{}", uuid::Uuid::now_v7().simple()));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .and_then(|mut file| {
            file.write_all(b"causeway check\n")?;
            file.sync_all()
        });
    let removed = std::fs::remove_file(&path);
    written.and(removed)
}

/// Opens the store read-only, which never changes it. A running sidecar holds the file's
/// lock: that is found, not failed.
fn open_store(path: &Path) -> Finding {
    if !path.exists() {
        return Finding::ok(
            "store",
            "takes writes; no store yet (the sidecar creates it)",
        );
    }
    let opened = redb::Builder::new()
        .set_cache_size(1024 * 1024)
        .open_read_only(path);
    match opened {
        Ok(db) => {
            let _ = db.close();
            Finding::ok(
                "store",
                "takes writes; the store opens (no sidecar is using it)",
            )
        }
        Err(redb::DatabaseError::DatabaseAlreadyOpen) => Finding::ok(
            "store",
            "takes writes; the store is in use by a running sidecar (its lock is held)",
        ),
        // What a sidecar leaves when it is killed (or exits before its store's writer
        // thread closed the file): it checks and repairs the file when it starts.
        Err(redb::DatabaseError::RepairAborted) => Finding::ok(
            "store",
            "takes writes; the store was not closed cleanly, and is repaired when the sidecar starts (longer on a large file)",
        ),
        Err(error) => Finding::fail(
            "store",
            format!("takes writes, but the store does not open: {error}"),
            format!(
                "move {} aside (the sidecar starts with an empty store: dedup records and API subscriptions are lost)",
                path.display()
            ),
        ),
    }
}

/// Connects to Redis and sends PING, when a shared dedup store is configured.
pub(super) async fn redis(url: Option<String>, timeout: Duration) -> Finding {
    let Some(url) = url else {
        return Finding::skip(
            "redis",
            "CAUSEWAY_DEDUP_URL is not set: dedup records are in the embedded store",
        );
    };
    let target = without_credentials(&url);
    let ping = async {
        let client = redis::Client::open(url.as_str())?;
        let mut connection = client.get_multiplexed_async_connection().await?;
        redis::cmd("PING")
            .query_async::<String>(&mut connection)
            .await
    };
    let problem = match tokio::time::timeout(timeout, ping).await {
        Ok(Ok(_)) => return Finding::ok("redis", "answered PING").on(target),
        Ok(Err(error)) => without_credentials(&error.to_string()),
        Err(_) => format!("no answer within {}", humantime::format_duration(timeout)),
    };
    let lower = problem.to_ascii_lowercase();
    let fix = if lower.contains("noauth") || lower.contains("wrongpass") || lower.contains("auth") {
        "Redis refused the credentials: correct the password (and user) in CAUSEWAY_DEDUP_URL"
    } else if lower.contains("refused") {
        "nothing listens there: start Redis, or correct the host and port in CAUSEWAY_DEDUP_URL"
    } else {
        "check that Redis runs at this address and that CAUSEWAY_DEDUP_URL is right; until it answers, deliveries wait"
    };
    Finding::fail("redis", problem, fix).on(target)
}

/// Opens a TCP connection to the app. An app that is not listening yet is a warning: the
/// sidecar starts, and deliveries wait for it without using attempts.
pub(super) async fn app(url: &AppUrl, timeout: Duration) -> Finding {
    let connect = tokio::net::TcpStream::connect(url.address.as_str());
    match tokio::time::timeout(timeout, connect).await {
        Ok(Ok(_)) => Finding::ok("app", "accepts connections").on(url.base.clone()),
        Ok(Err(error)) if error.kind() == ErrorKind::ConnectionRefused => Finding::warn(
            "app",
            format!("nothing listens on {}", url.address),
            "start the app, or correct CAUSEWAY_APP_URL; until it listens, deliveries wait",
        )
        .on(url.base.clone()),
        Ok(Err(error)) => Finding::fail(
            "app",
            format!("cannot connect to {}: {error}", url.address),
            "correct the host in CAUSEWAY_APP_URL (the app is normally on the pod's loopback, 127.0.0.1)",
        )
        .on(url.base.clone()),
        Err(_) => Finding::fail(
            "app",
            format!(
                "{} did not answer within {}",
                url.address,
                humantime::format_duration(timeout)
            ),
            "correct the host and port in CAUSEWAY_APP_URL (the app is normally on the pod's loopback, 127.0.0.1)",
        )
        .on(url.base.clone()),
    }
}
