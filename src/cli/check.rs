//! `causeway check`: a doctor for a pod or a laptop. It reads the configuration the sidecar
//! would read, then tries each thing the sidecar needs — every broker address, the
//! management API, the schemas, the data directory, Redis, the app — and says for each what
//! it found and, when something is wrong, how to fix it. No secret is ever shown.

mod probes;

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Serialize;
use tokio::task::JoinSet;

use super::Output;
use crate::config::{CONFIG_FILE_VAR, Config, ConfigError};

/// What `causeway check` takes besides the configuration.
#[derive(Clone, Debug, clap::Args)]
pub struct CheckArgs {
    /// How long each probe (a connection, a ping, a request) may take, such as `2s`.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// `text`: one line per check; `json`: the same, for scripts.
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
    /// The RabbitMQ management API, as `causeway schema consumers` uses it: a base URL or
    /// a comma-separated list of them. Checked only when given.
    #[arg(long, env = "CAUSEWAY_MANAGEMENT_URL", hide_env_values = true)]
    pub management_url: Option<String>,
    /// Management API user.
    #[arg(long, env = "CAUSEWAY_MANAGEMENT_USER", default_value = "guest")]
    pub management_user: String,
    /// Management API password.
    #[arg(
        long,
        env = "CAUSEWAY_MANAGEMENT_PASSWORD",
        default_value = "guest",
        hide_env_values = true
    )]
    pub management_password: String,
}

/// How a check came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// As the sidecar needs it.
    Ok,
    /// Worth knowing, but the sidecar works: the app not listening yet (deliveries wait),
    /// a setting nothing reads. Does not change the exit code.
    Warn,
    /// The sidecar would not start, or would not do its job, until this is fixed.
    Fail,
    /// Not checked: not configured, or the configuration is invalid.
    Skip,
}

impl Status {
    fn word(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "fail",
            Status::Skip => "skip",
        }
    }
}

/// One configuration problem, as the sidecar would report it.
#[derive(Clone, Debug, Serialize)]
pub struct Problem {
    /// The variable, or the key and the file.
    pub origin: String,
    /// What is wrong with it.
    pub problem: String,
}

/// What one check found.
#[derive(Clone, Debug, Serialize)]
pub struct Finding {
    /// What was checked: `config`, `broker`, `management`, `schemas`, `store`, `redis`, `app`.
    pub check: &'static str,
    /// How it came out.
    pub status: Status,
    /// What was tried, when there are several of a kind (an address, a directory), without
    /// credentials.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// What was found.
    pub found: String,
    /// What to do about it, for `warn` and `fail`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
    /// Every problem of an invalid configuration.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<Problem>,
}

impl Finding {
    fn new(check: &'static str, status: Status, found: impl Into<String>) -> Self {
        Finding {
            check,
            status,
            target: None,
            found: found.into(),
            fix: None,
            problems: Vec::new(),
        }
    }

    fn ok(check: &'static str, found: impl Into<String>) -> Self {
        Finding::new(check, Status::Ok, found)
    }

    fn skip(check: &'static str, found: impl Into<String>) -> Self {
        Finding::new(check, Status::Skip, found)
    }

    fn fail(check: &'static str, found: impl Into<String>, fix: impl Into<String>) -> Self {
        Finding::new(check, Status::Fail, found).with_fix(fix)
    }

    fn warn(check: &'static str, found: impl Into<String>, fix: impl Into<String>) -> Self {
        Finding::new(check, Status::Warn, found).with_fix(fix)
    }

    fn on(mut self, target: impl Into<String>) -> Self {
        self.target = Some(target.into());
        self
    }

    fn with_fix(mut self, fix: impl Into<String>) -> Self {
        self.fix = Some(fix.into());
        self
    }
}

/// Exit code when a check failed.
pub const EXIT_FAILED: u8 = 1;
/// Exit code when the configuration is invalid, as the sidecar exits (EX_USAGE).
pub const EXIT_CONFIG: u8 = 64;

/// Every finding, in a fixed order.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// `ok` (warnings allowed) or `fail`.
    pub status: Status,
    /// The process' exit code: 0, 1 when a check failed, 64 when the configuration is
    /// invalid (the other checks are then skipped).
    pub exit_code: u8,
    /// One per check, per address for the broker and the management API.
    pub checks: Vec<Finding>,
}

impl Report {
    fn new(checks: Vec<Finding>) -> Self {
        let config_invalid = checks
            .iter()
            .any(|f| f.check == "config" && f.status == Status::Fail);
        let failed = checks.iter().any(|f| f.status == Status::Fail);
        let exit_code = if config_invalid {
            EXIT_CONFIG
        } else if failed {
            EXIT_FAILED
        } else {
            0
        };
        let status = if failed { Status::Fail } else { Status::Ok };
        Report {
            status,
            exit_code,
            checks,
        }
    }

    /// The report as `output` asks.
    pub fn render(&self, output: Output) -> String {
        match output {
            Output::Json => serde_json::to_string_pretty(self).unwrap_or_default() + "\n",
            Output::Text => self.text(),
        }
    }

    fn text(&self) -> String {
        const INDENT: &str = "                 ";
        let mut out = String::new();
        for finding in &self.checks {
            let what = match &finding.target {
                Some(target) => format!("{target}: {}", finding.found),
                None => finding.found.clone(),
            };
            let _ = writeln!(
                out,
                "{:<5} {:<10} {what}",
                finding.status.word(),
                finding.check
            );
            for problem in &finding.problems {
                let _ = writeln!(out, "{INDENT}{}: {}", problem.origin, problem.problem);
            }
            if let Some(fix) = &finding.fix {
                let _ = writeln!(out, "{INDENT}fix: {fix}");
            }
        }
        let count = |status| self.checks.iter().filter(|f| f.status == status).count();
        let (failed, warned) = (count(Status::Fail), count(Status::Warn));
        let _ = match (failed, warned) {
            (0, 0) => writeln!(out, "\nevery check passed"),
            (0, w) => writeln!(out, "\nevery check passed, with {w} warning(s)"),
            (f, w) => writeln!(out, "\n{f} check(s) failed, {w} warning(s)"),
        };
        out
    }
}

/// Reads the configuration as the sidecar would (`file`, else `CAUSEWAY_CONFIG`, and the
/// environment) and runs every check, each probe within `args.timeout`.
pub async fn run(file: Option<&Path>, args: &CheckArgs) -> Report {
    let config = match Config::from_env(file) {
        Ok(config) => config,
        Err(error) => return Report::new(invalid(&error)),
    };
    let mut checks = vec![valid(file, &config)];
    checks.extend(config.warnings.iter().map(|warning| {
        Finding::warn(
            "config",
            warning.clone(),
            "remove the variable, or correct its name (docs/configuration.md lists every setting)",
        )
    }));
    checks.extend(probe_all(config, args).await);
    Report::new(checks)
}

/// Runs the probes at once (a dead address costs its timeout once, not once per check) and
/// returns their findings in a fixed order.
async fn probe_all(config: Config, args: &CheckArgs) -> Vec<Finding> {
    let mut running: JoinSet<(usize, Vec<Finding>)> = JoinSet::new();
    let timeout = args.timeout;
    for (index, url) in config.broker.urls.iter().enumerate() {
        let url = url.clone();
        running.spawn(async move { (index, vec![probes::broker(&url, timeout).await]) });
    }
    let order = config.broker.urls.len();
    let management = args.clone();
    running.spawn(async move { (order, probes::management(&management).await) });
    let dir = config.schemas_dir.clone();
    let strict = config.schemas_strict;
    running.spawn(async move { (order + 1, vec![probes::schemas(dir, strict, timeout).await]) });
    let data_dir = config.data_dir.clone();
    running.spawn(async move { (order + 2, vec![probes::store(data_dir, timeout).await]) });
    let dedup_url = config.dedup_url.clone();
    running.spawn(async move { (order + 3, vec![probes::redis(dedup_url, timeout).await]) });
    let app_url = config.app_url.clone();
    running.spawn(async move { (order + 4, vec![probes::app(&app_url, timeout).await]) });
    let mut done = Vec::new();
    while let Some(joined) = running.join_next().await {
        match joined {
            Ok(findings) => done.push(findings),
            // A probe that panicked is a bug; say so rather than drop the line.
            Err(error) => done.push((
                usize::MAX,
                vec![Finding::fail(
                    "check",
                    format!("a probe stopped: {error}"),
                    "report this as a bug",
                )],
            )),
        }
    }
    done.sort_by_key(|(index, _)| *index);
    done.into_iter()
        .flat_map(|(_, findings)| findings)
        .collect()
}

/// The configuration is valid: what it amounts to, and where it came from.
fn valid(file: Option<&Path>, config: &Config) -> Finding {
    let file = file
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os(CONFIG_FILE_VAR).map(PathBuf::from));
    let found = match file {
        Some(file) => format!(
            "valid, from {} and the environment: service {}, {} subscription(s), {} flow(s)",
            file.display(),
            config.service,
            config.subscriptions.len(),
            config.flows.len()
        ),
        None => format!(
            "valid, from the environment (no config file): service {}",
            config.service
        ),
    };
    Finding::ok("config", found)
}

/// The configuration is invalid: every problem, and nothing else checked.
fn invalid(error: &ConfigError) -> Vec<Finding> {
    let mut config = Finding::fail(
        "config",
        format!("invalid: {} problem(s)", error.0.len()),
        "correct each setting named (docs/configuration.md); the sidecar would exit 64",
    );
    config.problems = error
        .0
        .iter()
        .map(|invalid| Problem {
            origin: invalid.origin.clone(),
            problem: invalid.problem.clone(),
        })
        .collect();
    let mut checks = vec![config];
    for check in ["broker", "management", "schemas", "store", "redis", "app"] {
        checks.push(Finding::skip(
            check,
            "not checked: the configuration is invalid",
        ));
    }
    checks
}

#[cfg(test)]
mod tests;
