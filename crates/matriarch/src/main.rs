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
mod backup;
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
    /// Works on configuration files.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// The write-fence watchdog (spawned by `run`).
    #[command(hide = true)]
    Fence {
        /// The postmaster.pid of the data directory to guard.
        #[arg(long)]
        pid_file: PathBuf,
    },
}

/// `matriarch check`: every error on a line of its own, exit 2 if any.
fn check(path: &std::path::Path) -> ExitCode {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(source) => {
            let error = error::ConfigError::Read {
                path: path.to_owned(),
                source,
            };
            eprintln!("matriarch: {error}");
            return ExitCode::from(2);
        }
    };
    let report = config::check_all::check_text(&text, |var| std::env::var(var).ok());
    for error in &report.errors {
        eprintln!("matriarch: {error}");
    }
    match (report.errors.len(), report.postgres_major) {
        (0, Some(major)) => {
            println!("{}: valid (PostgreSQL {major})", path.display());
            ExitCode::SUCCESS
        }
        (count, _) => {
            eprintln!("matriarch: {}: {count} error(s)", path.display());
            ExitCode::from(2)
        }
    }
}

/// `matriarch config ...`.
#[derive(Subcommand, Debug)]
enum ConfigCommand {
    /// Writes a matriarch node file from a Patroni node file (patroni.yml),
    /// listing on stderr every key mapped or dropped.
    FromPatroni {
        /// The Patroni file.
        patroni: PathBuf,
        /// Where to write the node file (mode 0600); stdout if absent.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Config {
        command: ConfigCommand::FromPatroni { patroni, output },
    } = &cli.command
    {
        return config::from_patroni::run(patroni, output.as_deref());
    }
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
            Command::Check { config } => check(&config),
            Command::Ctl(args) => ctl::run(args).await,
            Command::Fence { .. } | Command::Version | Command::Config { .. } => ExitCode::FAILURE,
        }
    })
}
