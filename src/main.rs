//! The `causeway` binary: parses the command line and configuration, sets up logs, and runs
//! the sidecar until a signal drains it.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use causeway::{
    cli::{self, ApiTarget, CliError, DlqCommand},
    config::Config,
    shutdown, sidecar, telemetry,
};

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
        action: DlqAction,
        /// The sidecar's API.
        #[arg(
            long,
            global = true,
            env = "CAUSEWAY_API_URL",
            default_value = "http://127.0.0.1:7070"
        )]
        api: String,
        /// The API's bearer token, when it requires one.
        #[arg(
            long,
            global = true,
            env = "CAUSEWAY_API_TOKEN",
            hide_env_values = true
        )]
        token: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum DlqAction {
    /// List the oldest dead letters, with why each one failed.
    List {
        /// The subscription's name.
        subscription: String,
        /// How many to show (at most 1000).
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Send dead letters back for delivery, with attempts reset: all, or the given ids.
    Replay {
        /// The subscription's name.
        subscription: String,
        /// Event ids to replay; all when none are given.
        event_ids: Vec<String>,
    },
    /// Delete every dead letter of a subscription, for good.
    Purge {
        /// The subscription's name.
        subscription: String,
        /// Confirm the deletion.
        #[arg(long)]
        yes: bool,
    },
}

/// How long buffered spans may take to export at exit.
const SPAN_FLUSH: Duration = Duration::from_secs(5);

/// Exit code when the sidecar's API cannot be reached (EX_UNAVAILABLE).
const EXIT_UNAVAILABLE: u8 = 69;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Run) {
        Command::Run => run(cli.config),
        Command::Dlq { action, api, token } => dlq(action, ApiTarget { url: api, token }),
    }
}

fn dlq(action: DlqAction, target: ApiTarget) -> ExitCode {
    let command = match action {
        DlqAction::List {
            subscription,
            limit,
        } => DlqCommand::List {
            subscription,
            limit,
        },
        DlqAction::Replay {
            subscription,
            event_ids,
        } => DlqCommand::Replay {
            subscription,
            event_ids,
        },
        DlqAction::Purge { subscription, yes } => {
            if !yes {
                eprintln!(
                    "causeway: purge deletes every dead letter of {subscription} for good; add --yes to do it"
                );
                return ExitCode::from(2);
            }
            DlqCommand::Purge { subscription }
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("causeway: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli::dlq(&target, command)) {
        Ok(output) => {
            print!("{output}");
            ExitCode::SUCCESS
        }
        Err(error @ CliError::Unreachable { .. }) => {
            eprintln!("causeway: {error}");
            ExitCode::from(EXIT_UNAVAILABLE)
        }
        Err(error) => {
            eprintln!("causeway: {error}");
            ExitCode::FAILURE
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
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("causeway: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
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
