//! `cargo xtask`: project automation (installing test dependencies, the CI test run).
//!
//! Run `cargo xtask help` for the list of commands.

mod args;
mod cmd;
mod deps;
mod image;
mod imports;
mod package;
mod paths;
mod programs;
mod suite;
mod test_pool;
mod usage;

use std::process::ExitCode;

use cmd::Failure;
use usage::USAGE;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (cmd, rest) = match args.split_first() {
        Some((c, r)) => (c.as_str(), r),
        None => ("help", &[][..]),
    };
    let result = match cmd {
        "help" | "-h" | "--help" => {
            print!("{USAGE}");
            Ok(())
        }
        "deps" => args::no_args(cmd, rest).and_then(|()| deps::deps()),
        "test" => suite::test(rest),
        "demo" => programs::demo(rest),
        "sim" => suite::sim(rest),
        "bench" => programs::bench(rest),
        "chaos" => programs::chaos(rest),
        "package" => package::package(rest),
        "image" => image::image(rest),
        "imports" => {
            args::no_args(cmd, rest).and_then(|()| imports::imports(&paths::workspace_root()))
        }
        other => {
            eprintln!("cargo xtask: unknown command `{other}`\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure(msg)) => {
            eprintln!("cargo xtask {cmd}: {msg}");
            ExitCode::FAILURE
        }
    }
}
