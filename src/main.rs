//! The `causeway` binary: parses the command line and configuration, sets up logs, and runs
//! the sidecar until a signal drains it.

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use causeway::{config::Config, shutdown, sidecar, telemetry};

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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Run) {
        Command::Run => run(cli.config),
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
    telemetry::init_logs(config.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            error!(%error, "cannot start the runtime");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let shutdown = CancellationToken::new();
        tokio::spawn(drain_on_signal(shutdown.clone()));
        sidecar::run(config, shutdown).await
    });
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
