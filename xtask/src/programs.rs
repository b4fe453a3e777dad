//! `cargo xtask demo`, `bench` and `chaos`: each builds the daemon and one
//! program of the workspace, then runs that program with the built daemon; the
//! program owns Ctrl-C (it stops its cluster and cleans up).

use std::path::Path;
use std::process::{Command, ExitStatus};

use crate::args::only_flag;
use crate::cmd::{build, is_root, render, step, Failure, Result};
use crate::deps::deps;
use crate::usage::USAGE;

/// A program of the workspace that `cargo xtask <name>` builds with the daemon
/// and runs with `--matriarch <the built daemon>` and `<out_flag> target/<name>`.
struct Program {
    /// The subcommand, also the output directory under target/.
    name: &'static str,
    /// What it is, for messages.
    what: &'static str,
    /// A release build (for figures) or a debug one.
    release: bool,
    /// Its package.
    package: &'static str,
    /// Its binary.
    binary: &'static str,
    /// Its flag taking the output directory.
    out_flag: &'static str,
}

/// The demo (crate `crates/matriarch-demo`); node logs in target/demo.
const DEMO: Program = Program {
    name: "demo",
    what: "the demo",
    release: false,
    package: "matriarch-demo",
    binary: "matriarch-demo",
    out_flag: "--logs",
};

/// The benchmarks (`crates/matriarch-demo/src/bin/bench.rs`), a release build
/// since they are figures; results in target/bench.
const BENCH: Program = Program {
    name: "bench",
    what: "the benchmark",
    release: true,
    package: "matriarch-demo",
    binary: "matriarch-bench",
    out_flag: "--out",
};

/// The chaos run (crate `crates/matriarch-chaos`); reports in target/chaos.
const CHAOS: Program = Program {
    name: "chaos",
    what: "the chaos run",
    release: false,
    package: "matriarch-chaos",
    binary: "matriarch-chaos",
    out_flag: "--out",
};

impl Program {
    /// The steps deps and build, then runs the program with `args`: `Ok` when it
    /// exits 0, else a failure, for an exit other than an interrupt the message
    /// `failed(its status, its output directory)`.
    fn deps_build_run(
        &self,
        args: &[String],
        failed: impl FnOnce(ExitStatus, &Path) -> String,
    ) -> Result {
        step("deps", deps())?;
        let (root, target) = build(self.name, self.release, &[self.package])?;
        let bin = target.join(if self.release { "release" } else { "debug" });
        let out = target.join(self.name);
        let status = run_owning_ctrl_c(
            Command::new(bin.join(self.binary))
                .args(args)
                .arg("--matriarch")
                .arg(bin.join("matriarch"))
                .arg(self.out_flag)
                .arg(&out)
                .current_dir(&root),
        )?;
        judge_run(self.what, status, |status| failed(status, &out))
    }
}

/// Runs a program that handles Ctrl-C itself (the demo and the benchmark stop
/// their cluster and clean up): Ctrl-C goes to the whole terminal group, so this
/// process ignores it while waiting instead of dying first.
fn run_owning_ctrl_c(cmd: &mut Command) -> Result<ExitStatus> {
    let what = render(cmd);
    let mut child = cmd
        .spawn()
        .map_err(|e| Failure(format!("cannot run `{what}`: {e}")))?;
    // SAFETY: setting a signal disposition to SIG_IGN and back installs no handler.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_IGN);
    }
    let status = child.wait();
    // SAFETY: as above.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_DFL);
    }
    status.map_err(|e| Failure(format!("waiting for `{what}`: {e}")))
}

/// What the exit status of a program that owns Ctrl-C means: 0 success, 130
/// an interrupt after which `what` cleaned up, any other `failed(status)`.
fn judge_run(what: &str, status: ExitStatus, failed: impl FnOnce(ExitStatus) -> String) -> Result {
    match status.code() {
        Some(0) => Ok(()),
        Some(130) => Err(Failure(format!("interrupted; {what} stopped everything"))),
        _ => Err(Failure(failed(status))),
    }
}

/// `cargo xtask demo [--keep]`: deps, then builds `matriarch` and `matriarch-demo`
/// and runs the demo with the built daemon.
pub(crate) fn demo(args: &[String]) -> Result {
    let keep = only_flag("demo", "--keep", args)?;
    let extra: Vec<String> = if keep {
        vec!["--keep".into()]
    } else {
        Vec::new()
    };
    DEMO.deps_build_run(&extra, |status, logs| {
        format!(
            "the demo failed ({status}); node logs are in {}",
            logs.display()
        )
    })
}

/// `cargo xtask bench failover|stability|fleet [args]`: deps, a release build of
/// `matriarch` and `matriarch-bench`, then the benchmark with the built daemon.
pub(crate) fn bench(args: &[String]) -> Result {
    match args.first().map(String::as_str) {
        Some("failover" | "stability" | "fleet") => {}
        Some("-h" | "--help") => {
            print!("{USAGE}");
            return Ok(());
        }
        other => {
            return Err(Failure(format!(
                "`bench` needs `failover`, `stability` or `fleet`, got {other:?} (see `cargo xtask help`)"
            )))
        }
    }
    BENCH.deps_build_run(args, |status, out| {
        format!(
            "the benchmark failed or missed a check ({status}); results and logs are in {}",
            out.display()
        )
    })
}

/// `cargo xtask chaos [--faults N] [--seed N] [--mode M] [--keep]`: as root, deps, a
/// debug build of `matriarch` and `matriarch-chaos`, then the chaos run with the
/// built daemon.
pub(crate) fn chaos(args: &[String]) -> Result {
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--faults" | "--seed" | "--ttl" | "--loop-wait" | "--retry-timeout"
            | "--recovery-timeout" => {
                if it.next().is_none_or(|v| v.parse::<u64>().is_err()) {
                    return Err(Failure(format!("`{flag}` needs a whole number")));
                }
            }
            "--mode" => {
                if !it.next().is_some_and(|v| {
                    ["synchronous", "strict", "quorum", "asynchronous"].contains(&v.as_str())
                }) {
                    return Err(Failure(
                        "`--mode` needs synchronous, strict, quorum or asynchronous".into(),
                    ));
                }
            }
            "--dcs" => {
                if !it
                    .next()
                    .is_some_and(|v| ["etcd", "zookeeper"].contains(&v.as_str()))
                {
                    return Err(Failure("`--dcs` needs etcd or zookeeper".into()));
                }
            }
            // The kinds' names are checked by matriarch-chaos itself.
            "--kinds" => {
                if it.next().is_none_or(|v| v.trim().is_empty()) {
                    return Err(Failure(
                        "`--kinds` needs a comma-separated list of fault kinds".into(),
                    ));
                }
            }
            "--keep" => {}
            "-h" | "--help" => {
                print!("{USAGE}");
                return Ok(());
            }
            other => {
                return Err(Failure(format!(
                    "unknown argument `{other}` (see `cargo xtask help`)"
                )))
            }
        }
    }
    if !is_root() {
        return Err(Failure(
            "`chaos` needs root (network namespaces, nftables, PostgreSQL as the `postgres` \
             user); rerun as root"
                .into(),
        ));
    }
    CHAOS.deps_build_run(args, |status, out| match status.code() {
        Some(1) => format!(
            "a check failed or the cluster did not recover (see above); reports and logs \
             are in {}",
            out.display()
        ),
        _ => format!(
            "the chaos run could not be carried out ({status}); logs are in {}",
            out.display()
        ),
    })
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;

    use super::*;

    #[test]
    fn a_run_status_is_success_an_interrupt_or_the_callers_failure() {
        let exited = |code: i32| ExitStatus::from_raw(code << 8);
        assert!(judge_run("the demo", exited(0), |_| unreachable!()).is_ok());
        let Failure(interrupted) = judge_run("the demo", exited(130), |_| unreachable!())
            .expect_err("130 is an interrupt");
        assert_eq!(interrupted, "interrupted; the demo stopped everything");
        let Failure(failed) = judge_run("the demo", exited(1), |status| {
            format!("code {:?}", status.code())
        })
        .expect_err("1");
        assert_eq!(failed, "code Some(1)");
    }
}
