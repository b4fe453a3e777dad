//! `matriarch`: the reference daemon of the matriarch toolkit, HA for
//! PostgreSQL streaming replication in Patroni's manner.
//!
//! - `matriarch run --config node.yaml` runs the agent of one member (see
//!   [`node`]).
//! - `matriarch ctl ...` drives a cluster through the REST API.
//! - `matriarch check --config node.yaml` checks a configuration and the
//!   PostgreSQL version; `matriarch version` prints the version.
//! - `matriarch fence --pid-file ...` is the write-fence watchdog the agent
//!   spawns (hidden; see [`fence`]).

mod api;
mod config;
mod ctl;
mod dcs;
mod error;
mod fence;
mod hooks;
mod http_client;
mod logging;
mod node;
mod params;
mod probe;
mod router;
mod secret;
mod watchdog;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// HA for PostgreSQL streaming replication.
#[derive(Parser, Debug)]
#[command(name = "matriarch", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Runs the agent of one member.
    Run {
        /// The node configuration (YAML).
        #[arg(long, short, env = "MATRIARCH_CONFIG")]
        config: PathBuf,
    },
    /// Checks a configuration file and exits (0 if valid).
    Check {
        /// The node configuration (YAML).
        #[arg(long, short, env = "MATRIARCH_CONFIG")]
        config: PathBuf,
    },
    /// Prints the version (as `--version` does).
    Version,
    /// Drives a cluster through its REST API (like patronictl).
    Ctl(ctl::CtlArgs),
    /// The write-fence watchdog (spawned by `run`).
    #[command(hide = true)]
    Fence {
        /// The postmaster.pid of the data directory to guard.
        #[arg(long)]
        pid_file: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Version = cli.command {
        println!("matriarch {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    if let Command::Fence { pid_file } = cli.command {
        // No runtime: the watchdog is a plain loop.
        return fence::run_watchdog(pid_file);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("matriarch: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        match cli.command {
            Command::Run { config } => node::run(config).await,
            Command::Check { config } => {
                match config::NodeConfig::load(&config, |var| std::env::var(var).ok())
                    .and_then(|(node, _)| node.check_postgres_version())
                {
                    Ok(major) => {
                        println!("{}: valid (PostgreSQL {major})", config.display());
                        ExitCode::SUCCESS
                    }
                    Err(error) => {
                        eprintln!("matriarch: {error}");
                        ExitCode::from(2)
                    }
                }
            }
            Command::Ctl(args) => ctl::run(args).await,
            Command::Fence { .. } | Command::Version => ExitCode::FAILURE,
        }
    })
}
