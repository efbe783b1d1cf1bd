//! The `causeway` binary: parses the command line and configuration, sets up logs, and runs
//! the sidecar until a signal drains it.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::{CommandFactory, Parser, Subcommand, error::ErrorKind};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use causeway::{
    cli::{
        self, ApiTarget, CliError, DlqCommand,
        check::CheckArgs,
        flow::{FlowCommand, ShowArgs, Verdict},
    },
    config::{Config, ConfigError, Invalid},
    shutdown,
    sidecar::{self, SidecarError},
    telemetry,
};

/// With the `mimalloc` feature, mimalloc rather than the C library's allocator: glibc's
/// malloc takes about a fifth of a publish's instructions, mimalloc a fifth of that, for a
/// larger peak resident memory (see docs/performance.md, "Publish CPU").
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit code for invalid configuration (EX_CONFIG would be 78; the contract says 64, EX_USAGE).
const EXIT_CONFIG: u8 = 64;

#[derive(Debug, Parser)]
#[command(name = "causeway", version, about = "Event sidecar for RabbitMQ")]
struct Cli {
    /// TOML configuration file (also CAUSEWAY_CONFIG).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the sidecar (the default).
    Run,
    /// Look at, replay or purge a subscription's dead letters, through a running sidecar.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
        #[command(flatten)]
        target: ApiTarget,
    },
    /// Show a flow (the events of one correlation id and where each went) as a tree, through
    /// a running sidecar; or replay its dead letters.
    #[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
    Flow {
        #[command(flatten)]
        show: ShowArgs,
        #[command(subcommand)]
        command: Option<FlowCommand>,
        #[command(flatten)]
        target: ApiTarget,
    },
    /// Check schema changes for safety, and find who consumes an event type.
    Schema {
        #[command(subcommand)]
        command: SchemaCommand,
    },
    /// Add the causeway native sidecar to the pods of Kubernetes manifests (or take it away),
    /// and print the manifests.
    Inject(cli::inject::InjectArgs),
    /// Check what the sidecar needs, with its configuration: each broker address, the
    /// schemas, the data directory, Redis, the app. Exits 1 when a check fails, 64 when
    /// the configuration is invalid.
    Check(CheckArgs),
}

#[derive(Debug, Subcommand)]
enum SchemaCommand {
    /// Is NEW safe for the consumers of OLD? Exits 1 when it breaks them.
    Check {
        /// The schema in use.
        old: PathBuf,
        /// The proposed schema.
        new: PathBuf,
        /// Print JSON, for tools.
        #[arg(long)]
        json: bool,
    },
    /// Which queues receive EVENT_TYPE, and which major versions, from the broker's
    /// bindings (needs the RabbitMQ management plugin).
    Consumers {
        /// The event type.
        event_type: String,
        /// The management API: a base URL, or a comma-separated list of them (the nodes of
        /// a cluster), tried in order until one answers.
        #[arg(
            long,
            env = "CAUSEWAY_MANAGEMENT_URL",
            default_value = "http://127.0.0.1:15672",
            hide_env_values = true
        )]
        management_url: String,
        /// Management API user.
        #[arg(long, env = "CAUSEWAY_MANAGEMENT_USER", default_value = "guest")]
        user: String,
        /// Management API password.
        #[arg(
            long,
            env = "CAUSEWAY_MANAGEMENT_PASSWORD",
            default_value = "guest",
            hide_env_values = true
        )]
        password: String,
        /// The virtual host.
        #[arg(long, default_value = "/")]
        vhost: String,
        /// The events exchange.
        #[arg(long, env = "CAUSEWAY_EXCHANGE", default_value = "causeway.events")]
        exchange: String,
        /// Print JSON, for tools.
        #[arg(long)]
        json: bool,
    },
}

/// How long buffered spans may take to export at exit.
const SPAN_FLUSH: Duration = Duration::from_secs(5);

/// Exit code when the sidecar's API cannot be reached (EX_UNAVAILABLE).
const EXIT_UNAVAILABLE: u8 = 69;
/// Exit code for a command that needs more (a purge without --yes), as clap uses.
const EXIT_USAGE: u8 = 2;
/// Exit code of `flow --watch` when the flow is still in progress at the timeout
/// (EX_TEMPFAIL).
const EXIT_IN_PROGRESS: u8 = 75;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => return command_line_error(&error),
    };
    match cli.command.unwrap_or(Command::Run) {
        Command::Run => run(cli.config),
        Command::Dlq { command, target } => dlq(command, &target),
        Command::Flow {
            show,
            command,
            target,
        } => flow(show, command, &target),
        Command::Schema { command } => schema(command),
        Command::Inject(args) => cli::inject::command(&args),
        Command::Check(args) => check(cli.config, &args),
    }
}

/// Clap's own message and exit code, except for a variable the command reads that is not
/// UTF-8: clap would blame "one or more arguments"; this names the variable (and never
/// shows its value), as a configuration error.
fn command_line_error(error: &clap::Error) -> ExitCode {
    let arguments_are_text = std::env::args_os().all(|arg| arg.into_string().is_ok());
    if error.kind() == ErrorKind::InvalidUtf8 && arguments_are_text {
        let mut names = Vec::new();
        env_not_utf8(&Cli::command(), &mut names);
        names.sort();
        names.dedup();
        if !names.is_empty() {
            eprintln!(
                "causeway: invalid configuration ({} problem(s)):",
                names.len()
            );
            for name in names {
                eprintln!("  {name}: the value is not valid UTF-8 (value not shown)");
            }
            return ExitCode::from(EXIT_CONFIG);
        }
    }
    let _ = error.print();
    ExitCode::from(u8::try_from(error.exit_code()).unwrap_or(EXIT_USAGE))
}

/// The variables that `command` and its subcommands read whose value is not UTF-8.
fn env_not_utf8(command: &clap::Command, names: &mut Vec<String>) {
    for arg in command.get_arguments() {
        if let Some(name) = arg.get_env() {
            let unreadable = std::env::var_os(name).is_some_and(|v| v.into_string().is_err());
            if unreadable {
                names.push(name.to_string_lossy().into_owned());
            }
        }
    }
    for sub in command.get_subcommands() {
        env_not_utf8(sub, names);
    }
}

fn schema(command: SchemaCommand) -> ExitCode {
    match command {
        SchemaCommand::Check { old, new, json } => match cli::schema::check(&old, &new, json) {
            Ok(report) => {
                print!("{}", report.output);
                if report.breaking.is_empty() {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                }
            }
            Err(error) => {
                eprintln!("causeway: {error}");
                ExitCode::from(EXIT_USAGE)
            }
        },
        SchemaCommand::Consumers {
            event_type,
            management_url,
            user,
            password,
            vhost,
            exchange,
            json,
        } => {
            let urls = match cli::schema::management_urls(&management_url) {
                Ok(urls) => urls,
                Err(error) => {
                    eprintln!("causeway: {error}");
                    return ExitCode::from(EXIT_USAGE);
                }
            };
            let management = cli::schema::Management {
                urls,
                user,
                password,
                vhost,
                exchange,
            };
            let Some(runtime) = runtime(&mut tokio::runtime::Builder::new_current_thread()) else {
                return ExitCode::FAILURE;
            };
            match runtime.block_on(cli::schema::consumers(&management, &event_type, json)) {
                Ok(output) => {
                    print!("{output}");
                    ExitCode::SUCCESS
                }
                Err(error) => {
                    eprintln!("causeway: {error}");
                    ExitCode::from(EXIT_UNAVAILABLE)
                }
            }
        }
    }
}

/// `causeway check`: prints the report; the exit code says whether anything failed.
fn check(config_file: Option<PathBuf>, args: &CheckArgs) -> ExitCode {
    let Some(runtime) = runtime(&mut tokio::runtime::Builder::new_current_thread()) else {
        return ExitCode::FAILURE;
    };
    let report = runtime.block_on(cli::check::run(config_file.as_deref(), args));
    // A probe of a volume that hangs may still be blocked in the kernel: not waited for.
    runtime.shutdown_background();
    print!("{}", report.render(args.output));
    ExitCode::from(report.exit_code)
}

fn dlq(command: DlqCommand, target: &ApiTarget) -> ExitCode {
    api_command(cli::dlq(target, command))
}

/// `causeway flow`: shows the flow once (exit 0 when it was found), or watches it (exit 0
/// when it settled, 1 when it is stuck or failed, 75 when still in progress); or replays it.
fn flow(show: ShowArgs, command: Option<FlowCommand>, target: &ApiTarget) -> ExitCode {
    match command {
        Some(FlowCommand::Replay { correlation_id }) => {
            api_command(cli::flow::replay(target, &correlation_id))
        }
        None if show.watch => {
            let Some(runtime) = runtime(&mut tokio::runtime::Builder::new_current_thread()) else {
                return ExitCode::FAILURE;
            };
            match runtime.block_on(cli::flow::watch(target, &show)) {
                Ok(Verdict::Settled) => ExitCode::SUCCESS,
                Ok(Verdict::Stuck) => ExitCode::FAILURE,
                Ok(Verdict::InProgress) => {
                    eprintln!(
                        "causeway: the flow is still in progress after {}",
                        humantime::format_duration(show.timeout)
                    );
                    ExitCode::from(EXIT_IN_PROGRESS)
                }
                Err(error) => api_error(&error),
            }
        }
        None => api_command(cli::flow::show(target, &show)),
    }
}

/// Runs a command against the sidecar's API and prints what it returns.
fn api_command(command: impl Future<Output = Result<String, CliError>>) -> ExitCode {
    let Some(runtime) = runtime(&mut tokio::runtime::Builder::new_current_thread()) else {
        return ExitCode::FAILURE;
    };
    match runtime.block_on(command) {
        Ok(output) => {
            print!("{output}");
            ExitCode::SUCCESS
        }
        Err(error) => api_error(&error),
    }
}

/// Says why an API command failed, with its exit code.
fn api_error(error: &CliError) -> ExitCode {
    eprintln!("causeway: {error}");
    match error {
        CliError::Unreachable { .. } => ExitCode::from(EXIT_UNAVAILABLE),
        CliError::Unconfirmed(_) => ExitCode::from(EXIT_USAGE),
        CliError::Refused { .. } => ExitCode::FAILURE,
    }
}

/// A runtime from `builder`, or `None` after saying why not.
fn runtime(builder: &mut tokio::runtime::Builder) -> Option<tokio::runtime::Runtime> {
    match builder.enable_all().build() {
        Ok(runtime) => Some(runtime),
        Err(error) => {
            eprintln!("causeway: cannot start the runtime: {error}");
            None
        }
    }
}

fn run(config_file: Option<PathBuf>) -> ExitCode {
    let config = match Config::from_env(config_file.as_deref()) {
        Ok(config) => config,
        Err(error) => {
            eprint!("causeway: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.worker_threads(config.worker_threads);
    let Some(runtime) = runtime(&mut builder) else {
        return ExitCode::FAILURE;
    };
    let result = runtime.block_on(async {
        let telemetry = match telemetry::init(config.log_format, &config.service) {
            Ok(telemetry) => telemetry,
            Err(error) => {
                eprintln!("causeway: {error}");
                return Err(ExitCode::from(EXIT_CONFIG));
            }
        };
        for warning in &config.warnings {
            warn!("{warning}");
        }
        info!(exporting = telemetry.exporting(), "tracing ready");
        let shutdown = CancellationToken::new();
        tokio::spawn(drain_on_signal(shutdown.clone()));
        let result = sidecar::run(config, shutdown).await;
        telemetry.shutdown(SPAN_FLUSH).await;
        Ok(result)
    });
    let result = match result {
        Ok(result) => result,
        Err(code) => return code,
    };
    match result {
        Ok(()) => {
            info!("stopped");
            ExitCode::SUCCESS
        }
        // Like every other configuration problem: on stderr, in words.
        Err(SidecarError::Schema(error)) => {
            let invalid = Invalid {
                origin: "CAUSEWAY_SCHEMAS_DIR".into(),
                problem: error.to_string(),
            };
            eprint!("causeway: {}", ConfigError(vec![invalid]));
            ExitCode::from(EXIT_CONFIG)
        }
        Err(error) => {
            error!(%error, "stopped on a fault");
            ExitCode::FAILURE
        }
    }
}

/// The first signal starts a drain; a second one ends the process at once.
async fn drain_on_signal(shutdown: CancellationToken) {
    let signal = shutdown::signalled().await;
    info!(signal, "shutdown requested");
    shutdown.cancel();
    let signal = shutdown::signalled().await;
    warn!(signal, "second signal: exiting without finishing the drain");
    std::process::exit(1);
}
