//! Configuration: environment variables over an optional TOML file, all validated before
//! anything binds.
//!
//! Every setting has one name. In the environment it is `CAUSEWAY_` + the upper-case name
//! (`CAUSEWAY_MAX_BODY`); in the TOML file it is the lower-case name (`max_body = "2MiB"`).
//! The environment wins over the file, as Kubernetes users expect. Every invalid value is
//! collected and reported together, so one restart fixes them all.
//!
//! The environment is read as bytes: a variable that is not UTF-8 is a problem named by the
//! variable when something reads it, and is ignored otherwise. No problem repeats a value
//! that may hold a secret.

mod app_url;
mod env;
mod flows;
mod values;

use std::{
    collections::HashMap,
    ffi::OsString,
    fmt,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;

pub use app_url::AppUrl;
use env::{Environment, PREFIX};
pub use values::without_credentials;
use values::{
    parse_addr, parse_amqp_urls, parse_bool, parse_broker_name, parse_count, parse_duration,
    parse_log_format, parse_name, parse_path, parse_redis_url, parse_size, parse_token, with_value,
};

use crate::{
    flow::FlowDefinition,
    subscription::{Subscription, SubscriptionSpec},
};

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
    /// The limits of both HTTP listeners.
    pub http: HttpConfig,
    /// Base URL of the local app, for deliveries.
    pub app_url: AppUrl,
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
    /// Whether flow receipts are written.
    pub flow_receipts: bool,
    /// How long flow receipts are kept.
    pub flow_retention: Duration,
    /// A hop pending or retrying longer than this makes its flow stuck.
    pub flow_stuck_after: Duration,
    /// The flow definitions of the config file (`[[flows]]`).
    pub flows: Vec<FlowDefinition>,
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

/// The limits of the HTTP listeners, which keep their memory and file descriptors bounded
/// whatever clients do.
#[derive(Clone, Copy, Debug)]
pub struct HttpConfig {
    /// Most connections open at once on the API listener.
    pub api_max_connections: usize,
    /// Most connections open at once on the admin listener.
    pub admin_max_connections: usize,
    /// How long a client may take to send a whole request, header and body, from its first
    /// byte; for a connection's first request, from the connection's opening.
    pub read_timeout: Duration,
    /// How long a connection may stay open without a request after an answer.
    pub idle_timeout: Duration,
    /// The API's budget of requests in flight: each counts one, plus one per 64 KiB of body.
    pub api_max_requests: usize,
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

/// Most connections a listener may be allowed: each takes a file descriptor, and the
/// process' limit on those is rarely above a million.
const MAX_CONNECTIONS: usize = 1_000_000;

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
    "api_max_connections",
    "admin_max_connections",
    "read_timeout",
    "idle_timeout",
    "api_max_requests",
    "log_format",
    "worker_threads",
    "flow_receipts",
    "flow_retention",
    "flow_stuck_after",
];

impl Config {
    /// Reads the process environment and, when named, the TOML file.
    pub fn from_env(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::from_vars(file, std::env::vars_os())
    }

    /// Builds the configuration from environment variables as the process got them (any
    /// bytes) and the optional file; `file` wins over `CAUSEWAY_CONFIG`.
    pub fn from_vars(
        file: Option<&Path>,
        vars: impl IntoIterator<Item = (OsString, OsString)>,
    ) -> Result<Self, ConfigError> {
        Self::build(file, &Environment::read(vars))
    }

    /// Builds the configuration from the given environment and optional file.
    pub fn load(file: Option<&Path>, env: &HashMap<String, String>) -> Result<Self, ConfigError> {
        Self::build(file, &Environment::from_text(env))
    }

    fn build(file: Option<&Path>, env: &Environment) -> Result<Self, ConfigError> {
        let file = file.map(Path::to_path_buf).or(env.config_file.clone());
        let mut reader = Reader::new(env, file.as_deref());
        let config = reader.read();
        match config {
            Some(config) if reader.errors.is_empty() => Ok(config),
            _ => Err(ConfigError(reader.errors)),
        }
    }
}

/// Collects values from the environment and the file, and the problems found with them.
struct Reader<'a> {
    env: &'a Environment,
    file: Option<(String, toml::Table)>,
    /// A config file was named but could not be read or parsed: what it would have set is
    /// unknown, so a required setting is not reported missing on top of the file's problem.
    file_failed: bool,
    errors: Vec<Invalid>,
}

impl<'a> Reader<'a> {
    fn new(env: &'a Environment, path: Option<&Path>) -> Self {
        let mut reader = Reader {
            env,
            file: None,
            file_failed: false,
            errors: env.unreadable.clone(),
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
                self.file_failed = true;
                return self.invalid(name, format!("cannot read the config file: {error}"));
            }
        };
        let table = match text.parse::<toml::Table>() {
            Ok(table) => table,
            Err(error) => {
                self.file_failed = true;
                return self.invalid(name, toml_problem(&text, &error));
            }
        };
        for key in table.keys() {
            if !KEYS.contains(&key.as_str()) && key != "subscriptions" && key != "flows" {
                let problem = format!("unknown key (known keys: {})", KEYS.join(", "));
                self.invalid(format!("{key} in {name}"), problem);
            }
        }
        self.file = Some((name, table));
    }

    fn invalid(&mut self, origin: String, problem: String) {
        self.errors.push(Invalid { origin, problem });
    }

    /// Whether the key's variable is set to something that is not UTF-8 (already reported).
    fn unreadable(&self, key: &str) -> bool {
        let var = format!("{PREFIX}{}", key.to_ascii_uppercase());
        self.env
            .unreadable
            .iter()
            .any(|invalid| invalid.origin == var)
    }

    /// The raw value of a key and where it came from; the environment wins over the file.
    fn raw(&mut self, key: &str) -> Option<(String, String)> {
        let var = format!("{PREFIX}{}", key.to_ascii_uppercase());
        if let Some(value) = self.env.text.get(&var) {
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
        if self.unreadable(key) {
            return None;
        }
        let (origin, value) = match self.raw(key) {
            Some(found) => found,
            None => match default {
                Some(default) => (format!("default of {key}"), default.to_owned()),
                None => {
                    // The file that failed may well set it: its problem is the one to fix.
                    if !self.file_failed {
                        let var = format!("{PREFIX}{}", key.to_ascii_uppercase());
                        self.invalid(var, "required but not set".into());
                    }
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
        if self.unreadable(key) {
            return None;
        }
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
        let exchange = self.get("exchange", Some("causeway.events"), parse_broker_name);
        let unrouted = self.get(
            "unrouted_queue",
            Some("causeway.unrouted"),
            parse_broker_name,
        );
        let app_url = self.get("app_url", Some("http://127.0.0.1:8080"), AppUrl::parse);
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
        let http = self.http();
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
        let flow_receipts = self.get("flow_receipts", Some("true"), parse_bool);
        let flow_retention = self.get("flow_retention", Some("7d"), parse_duration);
        let flow_stuck_after = self.get("flow_stuck_after", Some("5m"), parse_duration);
        let flows = self.flows();
        let subscriptions = self.subscriptions();
        self.check_names(
            service.as_deref(),
            exchange.as_deref(),
            unrouted.as_deref(),
            subscriptions.as_deref(),
        );
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
            http: http?,
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
            flow_receipts: flow_receipts?,
            flow_retention: flow_retention?,
            flow_stuck_after: flow_stuck_after?,
            flows: flows?,
            warnings: self.unknown_variables(),
        })
    }

    /// The HTTP listeners' limits. The defaults fit a sidecar in 128 MiB: see
    /// docs/configuration.md for the memory each allows.
    fn http(&mut self) -> Option<HttpConfig> {
        let count = |v: &str| parse_count(v, MAX_CONNECTIONS);
        let api_max_connections = self.get("api_max_connections", Some("1024"), count);
        let admin_max_connections = self.get("admin_max_connections", Some("64"), count);
        let read_timeout = self.get("read_timeout", Some("10s"), parse_duration);
        let idle_timeout = self.get("idle_timeout", Some("60s"), parse_duration);
        let api_max_requests =
            self.get("api_max_requests", Some("256"), |v| parse_count(v, 65_535));
        Some(HttpConfig {
            api_max_connections: api_max_connections?,
            admin_max_connections: admin_max_connections?,
            read_timeout: read_timeout?,
            idle_timeout: idle_timeout?,
            api_max_requests: api_max_requests?,
        })
    }

    /// `CAUSEWAY_*` variables no setting reads. Kubernetes adds `{SERVICE}_SERVICE_HOST` and
    /// `{SERVICE}_PORT…` for a Service named "causeway": those are expected, not typos. So
    /// are the variables of the command-line tools.
    fn unknown_variables(&self) -> Vec<String> {
        let mut unknown: Vec<String> = self
            .env
            .causeway_names()
            .filter_map(|name| name.strip_prefix(PREFIX).map(|rest| (name, rest)))
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

    /// The events exchange and the unrouted exchange must differ: the sidecar declares one
    /// as a topic and the other as a fanout exchange, and the broker refuses the second
    /// declaration of a name with another type, every time, so the sidecar would never
    /// become ready. The unrouted queue must not be a subscription's queue either, or the
    /// subscription would receive every unrouted event.
    fn check_names(
        &mut self,
        service: Option<&str>,
        exchange: Option<&str>,
        unrouted: Option<&str>,
        subscriptions: Option<&[Subscription]>,
    ) {
        let Some(unrouted) = unrouted else {
            return;
        };
        if exchange == Some(unrouted) {
            let origin = self.origin("unrouted_queue");
            let problem = format!(
                "the events exchange is also named {unrouted:?}: the unrouted exchange and queue need a name of their own"
            );
            self.invalid(origin, problem);
        }
        let (Some(service), Some(subscriptions)) = (service, subscriptions) else {
            return;
        };
        for subscription in subscriptions {
            let queue = format!("{service}.{}", subscription.name);
            if unrouted == queue || unrouted.starts_with(&format!("{queue}.")) {
                let origin = self.origin("unrouted_queue");
                let problem = format!(
                    "{unrouted:?} is a queue of subscription {:?}: the unrouted queue needs a name of its own",
                    subscription.name
                );
                self.invalid(origin, problem);
            }
        }
    }

    /// Where a key's value came from, for a problem found when combining settings.
    fn origin(&self, key: &str) -> String {
        let var = format!("{PREFIX}{}", key.to_ascii_uppercase());
        if self.env.text.contains_key(&var) {
            return var;
        }
        match &self.file {
            Some((name, table)) if table.contains_key(key) => format!("{key} in {name}"),
            _ => format!("default of {key}"),
        }
    }

    /// The `[[flows]]` of the file.
    fn flows(&mut self) -> Option<Vec<FlowDefinition>> {
        let Some((file, table)) = &self.file else {
            return Some(Vec::new());
        };
        let Some(value) = table.get("flows") else {
            return Some(Vec::new());
        };
        match flows::definitions(file, value) {
            Ok(definitions) => Some(definitions),
            Err(problems) => {
                self.errors.extend(problems);
                None
            }
        }
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

/// The TOML parser's complaint with where it is in the file (line and column, both from
/// 1), and without the parser's snippet of the file, which may show a password.
fn toml_problem(text: &str, error: &toml::de::Error) -> String {
    let message = error.message().trim_end();
    let Some(mut start) = error.span().map(|span| span.start.min(text.len())) else {
        return format!("not valid TOML: {message}");
    };
    while !text.is_char_boundary(start) {
        start -= 1;
    }
    let before = &text[..start];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
    format!("not valid TOML at line {line}, column {column}: {message}")
}

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;
