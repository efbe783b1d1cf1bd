//! Configuration: environment variables over an optional TOML file, all validated before
//! anything binds.
//!
//! Every setting has one name. In the environment it is `CAUSEWAY_` + the upper-case name
//! (`CAUSEWAY_MAX_BODY`); in the TOML file it is the lower-case name (`max_body = "2MiB"`).
//! The environment wins over the file, as Kubernetes users expect. Every invalid value is
//! collected and reported together, so one restart fixes them all.

use std::{
    collections::HashMap,
    fmt,
    net::SocketAddr,
    path::{Path, PathBuf},
    str::FromStr,
    time::Duration,
};

use lapin::uri::{AMQPScheme, AMQPUri};
use serde::Deserialize;

use crate::subscription::{Subscription, SubscriptionSpec};

/// The variable that names the optional config file when `--config` is not given.
pub const CONFIG_FILE_VAR: &str = "CAUSEWAY_CONFIG";

/// The whole sidecar configuration, validated.
#[derive(Clone, Debug)]
pub struct Config {
    /// The service name: `source` of its events and prefix of its queues.
    pub service: String,
    /// The app-facing API listener (pod-local).
    pub api_addr: SocketAddr,
    /// The admin listener: `/healthz`, `/readyz`, `/metrics`.
    pub admin_addr: SocketAddr,
    /// The broker connection.
    pub broker: BrokerConfig,
    /// Base URL of the local app, for deliveries.
    pub app_url: String,
    /// Directory of the embedded store.
    pub data_dir: PathBuf,
    /// Optional shared dedup store (`redis://…`).
    pub dedup_url: Option<String>,
    /// Optional JSON Schema directory.
    pub schemas_dir: Option<PathBuf>,
    /// Whether event types without a schema are refused.
    pub schemas_strict: bool,
    /// When set, the API requires `Authorization: Bearer <token>`.
    pub api_token: Option<String>,
    /// Largest accepted request body, in bytes.
    pub max_body: usize,
    /// How long idempotency keys (and dedup records) are kept.
    pub dedup_retention: Duration,
    /// How long a drain may take after SIGTERM.
    pub shutdown_grace: Duration,
    /// Log line format.
    pub log_format: LogFormat,
    /// Threads running the sidecar's tasks. Broker I/O and the store's writes have threads
    /// of their own besides these.
    pub worker_threads: usize,
    /// The subscriptions of the config file (`[[subscriptions]]`).
    pub subscriptions: Vec<Subscription>,
    /// Things worth a warning once logging is up, such as a `CAUSEWAY_` variable that no
    /// setting reads (a typo, most likely).
    pub warnings: Vec<String>,
}

/// Everything the broker link needs.
#[derive(Clone, Debug)]
pub struct BrokerConfig {
    /// The brokers' AMQP URIs (one per node of a cluster, or one), with the heartbeat and
    /// frame size defaulted where the user gave none. Tried in a shuffled order.
    pub urls: Vec<String>,
    /// The durable topic exchange for all events.
    pub exchange: String,
    /// The alternate exchange and queue that keep unroutable events.
    pub unrouted: String,
    /// How long a publish may wait for the broker's confirm.
    pub confirm_timeout: Duration,
    /// How many publishes may wait for confirms at once.
    pub max_in_flight: usize,
    /// How long one connection attempt may take.
    pub connect_timeout: Duration,
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line (the default; for log pipelines).
    Json,
    /// Human-readable lines, for terminals.
    Text,
}

/// One invalid setting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invalid {
    /// Where the value came from: the variable name, or the key and the file.
    pub origin: String,
    /// What is wrong with it.
    pub problem: String,
}

/// All the invalid settings found, reported together.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError(pub Vec<Invalid>);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "invalid configuration ({} problem(s)):", self.0.len())?;
        for invalid in &self.0 {
            writeln!(f, "  {}: {}", invalid.origin, invalid.problem)?;
        }
        Ok(())
    }
}

/// The keys the file may hold; the same names, upper-cased, are the environment variables.
const KEYS: &[&str] = &[
    "service",
    "api_addr",
    "admin_addr",
    "amqp_url",
    "exchange",
    "unrouted_queue",
    "app_url",
    "data_dir",
    "dedup_url",
    "schemas_dir",
    "schemas_strict",
    "api_token",
    "max_body",
    "confirm_timeout",
    "max_in_flight",
    "connect_timeout",
    "dedup_retention",
    "shutdown_grace",
    "log_format",
    "worker_threads",
];

impl Config {
    /// Reads the process environment and, when named, the TOML file.
    pub fn from_env(file: Option<&Path>) -> Result<Self, ConfigError> {
        let env: HashMap<String, String> = std::env::vars().collect();
        let file = file
            .map(Path::to_path_buf)
            .or_else(|| env.get(CONFIG_FILE_VAR).map(PathBuf::from));
        Self::load(file.as_deref(), &env)
    }

    /// Builds the configuration from the given environment and optional file.
    pub fn load(file: Option<&Path>, env: &HashMap<String, String>) -> Result<Self, ConfigError> {
        let mut reader = Reader::new(env, file);
        let config = reader.read();
        match config {
            Some(config) if reader.errors.is_empty() => Ok(config),
            _ => Err(ConfigError(reader.errors)),
        }
    }
}

/// Collects values from the environment and the file, and the problems found with them.
struct Reader<'a> {
    env: &'a HashMap<String, String>,
    file: Option<(String, toml::Table)>,
    errors: Vec<Invalid>,
}

impl<'a> Reader<'a> {
    fn new(env: &'a HashMap<String, String>, path: Option<&Path>) -> Self {
        let mut reader = Reader {
            env,
            file: None,
            errors: Vec::new(),
        };
        if let Some(path) = path {
            reader.open_file(path);
        }
        reader
    }

    fn open_file(&mut self, path: &Path) {
        let name = path.display().to_string();
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(error) => {
                return self.invalid(name, format!("cannot read the config file: {error}"));
            }
        };
        let table = match text.parse::<toml::Table>() {
            Ok(table) => table,
            Err(error) => {
                let problem = format!("not valid TOML: {}", error.message());
                return self.invalid(name, problem);
            }
        };
        for key in table.keys() {
            if !KEYS.contains(&key.as_str()) && key != "subscriptions" {
                let problem = format!("unknown key (known keys: {})", KEYS.join(", "));
                self.invalid(format!("{key} in {name}"), problem);
            }
        }
        self.file = Some((name, table));
    }

    fn invalid(&mut self, origin: String, problem: String) {
        self.errors.push(Invalid { origin, problem });
    }

    /// The raw value of a key and where it came from; the environment wins over the file.
    fn raw(&mut self, key: &str) -> Option<(String, String)> {
        let var = format!("CAUSEWAY_{}", key.to_ascii_uppercase());
        if let Some(value) = self.env.get(&var) {
            return Some((var, value.clone()));
        }
        let (name, table) = self.file.as_ref()?;
        let origin = format!("{key} in {name}");
        match table.get(key)? {
            toml::Value::String(s) => Some((origin, s.clone())),
            toml::Value::Integer(i) => Some((origin, i.to_string())),
            toml::Value::Boolean(b) => Some((origin, b.to_string())),
            _ => {
                self.invalid(origin, "expected a string or a number".into());
                None
            }
        }
    }

    /// Parses a key, falling back to `default` when it is unset. Records a problem and
    /// returns `None` when the value is invalid or a required one is missing.
    fn get<T>(
        &mut self,
        key: &str,
        default: Option<&str>,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<T> {
        let (origin, value) = match self.raw(key) {
            Some(found) => found,
            None => match default {
                Some(default) => (format!("default of {key}"), default.to_owned()),
                None => {
                    let var = format!("CAUSEWAY_{}", key.to_ascii_uppercase());
                    self.invalid(var, "required but not set".into());
                    return None;
                }
            },
        };
        match parse(value.trim()) {
            Ok(parsed) => Some(parsed),
            Err(problem) => {
                let problem = with_value(key, &problem, &value);
                self.invalid(origin, problem);
                None
            }
        }
    }

    /// Like [`Reader::get`] for settings without a default: `None` when unset.
    fn optional<T>(
        &mut self,
        key: &str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<Option<T>> {
        let (origin, value) = match self.raw(key) {
            Some((_, value)) if value.trim().is_empty() => return Some(None),
            Some(found) => found,
            None => return Some(None),
        };
        match parse(value.trim()) {
            Ok(parsed) => Some(Some(parsed)),
            Err(problem) => {
                let problem = with_value(key, &problem, &value);
                self.invalid(origin, problem);
                None
            }
        }
    }

    fn read(&mut self) -> Option<Config> {
        // Read every key before combining, so that every problem is reported at once.
        let service = self.get("service", None, |v| parse_name(v, 100));
        let api_addr = self.get("api_addr", Some("127.0.0.1:7070"), parse_addr);
        let admin_addr = self.get("admin_addr", Some("0.0.0.0:7071"), parse_addr);
        let amqp_url = self.get(
            "amqp_url",
            Some("amqp://guest:guest@127.0.0.1:5672/%2f"),
            parse_amqp_urls,
        );
        let exchange = self.get("exchange", Some("causeway.events"), |v| parse_name(v, 200));
        let unrouted = self.get("unrouted_queue", Some("causeway.unrouted"), |v| {
            parse_name(v, 200)
        });
        let app_url = self.get("app_url", Some("http://127.0.0.1:8080"), parse_http_url);
        let data_dir = self.get("data_dir", Some("/var/lib/causeway"), parse_path);
        let dedup_url = self.optional("dedup_url", parse_redis_url);
        let schemas_dir = self.optional("schemas_dir", parse_path);
        let schemas_strict = self.get("schemas_strict", Some("false"), parse_bool);
        let api_token = self.optional("api_token", parse_token);
        let max_body = self.get("max_body", Some("1MiB"), parse_size);
        let confirm_timeout = self.get("confirm_timeout", Some("5s"), parse_duration);
        let max_in_flight = self.get("max_in_flight", Some("1024"), |v| parse_count(v, 65_535));
        let connect_timeout = self.get("connect_timeout", Some("5s"), parse_duration);
        let dedup_retention = self.get("dedup_retention", Some("7d"), parse_duration);
        let shutdown_grace = self.get("shutdown_grace", Some("20s"), parse_duration);
        let log_format = self.get("log_format", Some("json"), parse_log_format);
        // Two workers unless the pod's CPU limit (which the standard library reads from the
        // cgroup) allows only one: the broker I/O and the store have threads of their own.
        let default_workers = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(2)
            .to_string();
        let worker_threads = self.get("worker_threads", Some(&default_workers), |v| {
            parse_count(v, 64)
        });
        let subscriptions = self.subscriptions();
        Some(Config {
            service: service?,
            api_addr: api_addr?,
            admin_addr: admin_addr?,
            broker: BrokerConfig {
                urls: amqp_url?,
                exchange: exchange?,
                unrouted: unrouted?,
                confirm_timeout: confirm_timeout?,
                max_in_flight: max_in_flight?,
                connect_timeout: connect_timeout?,
            },
            app_url: app_url?,
            data_dir: data_dir?,
            dedup_url: dedup_url?,
            schemas_dir: schemas_dir?,
            schemas_strict: schemas_strict?,
            api_token: api_token?,
            max_body: max_body?,
            dedup_retention: dedup_retention?,
            shutdown_grace: shutdown_grace?,
            log_format: log_format?,
            worker_threads: worker_threads?,
            subscriptions: subscriptions?,
            warnings: self.unknown_variables(),
        })
    }

    /// `CAUSEWAY_*` variables no setting reads. Kubernetes adds `{SERVICE}_SERVICE_HOST` and
    /// `{SERVICE}_PORT…` for a Service named "causeway": those are expected, not typos.
    fn unknown_variables(&self) -> Vec<String> {
        let mut unknown: Vec<String> = self
            .env
            .keys()
            .filter_map(|name| name.strip_prefix("CAUSEWAY_").map(|rest| (name, rest)))
            .filter(|(_, rest)| {
                let key = rest.to_ascii_lowercase();
                !KEYS.contains(&key.as_str())
                    && !matches!(*rest, "CONFIG" | "API_URL")
                    && !rest.starts_with("MANAGEMENT_")
                    && !rest.starts_with("SERVICE_")
                    && !rest.starts_with("PORT")
            })
            .map(|(name, _)| format!("{name} is set but no setting reads it (a typo?)"))
            .collect();
        unknown.sort();
        unknown
    }

    /// The `[[subscriptions]]` of the file, each with a `name` and the fields of the API.
    fn subscriptions(&mut self) -> Option<Vec<Subscription>> {
        let Some((file, table)) = &self.file else {
            return Some(Vec::new());
        };
        let Some(value) = table.get("subscriptions") else {
            return Some(Vec::new());
        };
        let file = file.clone();
        let Some(entries) = value.as_array() else {
            self.invalid(
                format!("subscriptions in {file}"),
                "expected [[subscriptions]] tables".into(),
            );
            return None;
        };
        let mut problems = Vec::new();
        let mut subscriptions: Vec<Subscription> = Vec::new();
        for (index, entry) in entries.iter().enumerate() {
            let origin = format!("subscriptions[{index}] in {file}");
            let Some(mut fields) = entry.as_table().cloned() else {
                problems.push(Invalid {
                    origin,
                    problem: "expected a table".into(),
                });
                continue;
            };
            let name = match fields.remove("name") {
                Some(toml::Value::String(name)) => name,
                _ => {
                    problems.push(Invalid {
                        origin,
                        problem: "needs a name = \"...\"".into(),
                    });
                    continue;
                }
            };
            let origin = format!("subscriptions[{index}] ({name}) in {file}");
            let spec = match SubscriptionSpec::deserialize(toml::Value::Table(fields)) {
                Ok(spec) => spec,
                Err(error) => {
                    problems.push(Invalid {
                        origin,
                        problem: error.message().to_owned(),
                    });
                    continue;
                }
            };
            if subscriptions.iter().any(|s| s.name == name) {
                problems.push(Invalid {
                    origin,
                    problem: "the name is used twice".into(),
                });
                continue;
            }
            match Subscription::new(&name, spec) {
                Ok(subscription) => subscriptions.push(subscription),
                Err(fields) => problems.extend(fields.into_iter().map(|p| Invalid {
                    origin: format!("subscriptions[{index}] ({name}).{} in {file}", p.field),
                    problem: p.message,
                })),
            }
        }
        let ok = problems.is_empty();
        self.errors.extend(problems);
        ok.then_some(subscriptions)
    }
}

/// The problem, with the value that caused it unless the value may hold a secret (URLs
/// with credentials, the API token).
fn with_value(key: &str, problem: &str, value: &str) -> String {
    if matches!(key, "amqp_url" | "dedup_url" | "api_token") {
        format!("{problem} (value not shown: it may hold a secret)")
    } else {
        format!("{problem} (got {value:?})")
    }
}

/// A name usable in AMQP exchange and queue names: the service, the exchange.
fn parse_name(value: &str, max: usize) -> Result<String, String> {
    let valid = !value.is_empty()
        && value.len() <= max
        && value.starts_with(|c: char| c.is_ascii_alphanumeric())
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'));
    if valid {
        Ok(value.to_owned())
    } else {
        Err(format!(
            "expected 1-{max} characters of letters, digits, '-', '_', '.', ':', starting with a letter or digit"
        ))
    }
}

fn parse_addr(value: &str) -> Result<SocketAddr, String> {
    value
        .parse()
        .map_err(|_| "expected an IP address and port such as 127.0.0.1:7070".into())
}

/// Most broker addresses in `CAUSEWAY_AMQP_URL`.
const MAX_BROKER_URLS: usize = 16;

/// A comma-separated list of AMQP URIs, like the address lists of RabbitMQ's own clients:
/// the nodes of one cluster, each with its own credentials and vhost or the same.
fn parse_amqp_urls(value: &str) -> Result<Vec<String>, String> {
    let mut urls = Vec::new();
    for (index, part) in value.split(',').enumerate() {
        let part = part.trim();
        if part.is_empty() {
            return Err(format!("address {} of the list is empty", index + 1));
        }
        let url = parse_amqp_url(part).map_err(|problem| {
            if value.contains(',') {
                format!("address {} of the list: {problem}", index + 1)
            } else {
                problem
            }
        })?;
        if !urls.contains(&url) {
            urls.push(url);
        }
    }
    if urls.len() > MAX_BROKER_URLS {
        return Err(format!("expected at most {MAX_BROKER_URLS} addresses"));
    }
    Ok(urls)
}

/// Parses the AMQP URI and fills in two defaults the user did not set:
/// - `heartbeat=10`, so that a dead peer is noticed in seconds, not the broker's minute;
/// - `frame_max=16384`: the client keeps two buffers of 32 frames per connection, which
///   at the broker's 128 KiB frames is 8 MiB of memory per connection. Events are small;
///   a larger body is simply sent in more frames.
fn parse_amqp_url(value: &str) -> Result<String, String> {
    let uri = AMQPUri::from_str(value).map_err(|error| format!("not an AMQP URI: {error}"))?;
    if !matches!(uri.scheme, AMQPScheme::AMQP | AMQPScheme::AMQPS) {
        return Err("expected an amqp:// or amqps:// URI".into());
    }
    let mut url = value.to_owned();
    for (missing, default) in [
        (uri.query.heartbeat.is_none(), "heartbeat=10"),
        (uri.query.frame_max.is_none(), "frame_max=16384"),
    ] {
        if missing {
            url.push(if url.contains('?') { '&' } else { '?' });
            url.push_str(default);
        }
    }
    Ok(url)
}

/// The app's URL: plain HTTP, as the app shares the pod's loopback with the sidecar.
fn parse_http_url(value: &str) -> Result<String, String> {
    let rest = value
        .strip_prefix("http://")
        .ok_or("expected an http:// URL (the app is reached over the pod's loopback)")?;
    if rest.is_empty() || rest.starts_with('/') {
        return Err("the URL has no host".into());
    }
    Ok(value.trim_end_matches('/').to_owned())
}

fn parse_redis_url(value: &str) -> Result<String, String> {
    if value.starts_with("redis://") {
        Ok(value.to_owned())
    } else {
        Err("expected a redis:// URL (TLS to Redis is not supported)".into())
    }
}

fn parse_path(value: &str) -> Result<PathBuf, String> {
    if value.is_empty() {
        return Err("expected a path".into());
    }
    Ok(PathBuf::from(value))
}

fn parse_token(value: &str) -> Result<String, String> {
    if value.len() < 16 || !value.chars().all(|c| c.is_ascii_graphic()) {
        return Err("expected at least 16 printable ASCII characters without spaces".into());
    }
    Ok(value.to_owned())
}

/// A byte size: `1048576`, `512KiB`, `1MiB`, `1mb`.
fn parse_size(value: &str) -> Result<usize, String> {
    let problem = || String::from("expected a size such as 1048576, 512KiB or 1MiB");
    let split = value
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(value.len());
    let (digits, unit) = value.split_at(split);
    let number: usize = digits.parse().map_err(|_| problem())?;
    let factor = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1024,
        "m" | "mb" | "mib" => 1024 * 1024,
        _ => return Err(problem()),
    };
    let size = number.checked_mul(factor).ok_or_else(problem)?;
    if size == 0 || size > 64 * 1024 * 1024 {
        return Err("expected a size between 1 byte and 64MiB".into());
    }
    Ok(size)
}

/// A duration: `250ms`, `5s`, `7d`, `1h 30m`.
fn parse_duration(value: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(value)
        .map_err(|_| String::from("expected a duration such as 500ms, 5s, 10m or 7d"))?;
    if duration.is_zero() {
        return Err("expected a duration above zero".into());
    }
    Ok(duration)
}

fn parse_count(value: &str, max: usize) -> Result<usize, String> {
    match value.parse::<usize>() {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        _ => Err(format!("expected a whole number from 1 to {max}")),
    }
}

fn parse_bool(value: &str) -> Result<bool, String> {
    match value.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        _ => Err("expected true or false".into()),
    }
}

fn parse_log_format(value: &str) -> Result<LogFormat, String> {
    match value {
        "json" => Ok(LogFormat::Json),
        "text" => Ok(LogFormat::Text),
        _ => Err("expected json or text".into()),
    }
}

#[cfg(test)]
mod tests;
