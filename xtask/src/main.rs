//! `cargo xtask`: project automation (installing test dependencies, the CI test run).
//!
//! Run `cargo xtask help` for the list of commands.

mod deps;
mod image;
mod package;
mod test_pool;

use deps::{deps, pg18};
pub(crate) use deps::{install_missing, package_installed, Requirement};

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

/// The scenario tests `cargo xtask test` runs again on PostgreSQL 18 (besides the
/// whole controller suite): a failover, a switchover and a rewind.
const PG18_SCENARIOS: &[&str] = &[
    "node_crash_fails_over_and_the_old_primary_rejoins",
    "switchover_by_rest_api_with_callbacks",
    "the_former_primary_rejoins_by_pg_rewind",
];

const USAGE: &str = "\
usage: cargo xtask <command> [args]

commands:
  deps          install missing test dependencies (Debian packages, the `postgres`
                OS user, the moto venv in target/moto-venv); skips what is present
  test [args]   deps, then cargo fmt --check, cargo clippy -D warnings, and every
                test binary of the workspace, 3 at a time (MATRIARCH_TEST_JOBS=N to
                change; logs in target/xtask-test/), with three suites again on
                PostgreSQL 18; with [args], cargo test --workspace [args] instead
  demo [--keep] deps, build matriarch and the demo, then run it: three nodes on
                loopback behind a DNS name, a node crash, the failover timeline
                (logs in target/demo); --keep leaves the cluster up until Ctrl-C
  sim [--seeds N] [--first-seed F] [--seed S] [--pre-fix]
                the deterministic cluster simulation (release build): N seeds of
                mixed faults from F (default 20000 from 1), or replay seed S with its trace;
                --pre-fix: every issue-14 regression planted back at once (default 400
                seeds), which of them an invariant finds and on which seed
  bench failover [--runs N] [--scenario NAME]... [--idle-seconds S] [--ttl S --loop-wait S --retry-timeout S]
                 [--against patroni [--patroni-timing minimum|defaults]]
                deps, release build, then the failover benchmark: N runs (default 5)
                of node-crash, postgres-crash, agent-kill, switchover, sigterm (and,
                when named, node-crash-under-load: pgbench with 1 GB of dirty
                shared_buffers); with --against patroni each scenario also runs on
                Patroni 4.1 (target/patroni-venv) in the same run, side by side;
                target/bench/failover.json, failover-<scenario>[-patroni].svg, a table
  bench stability [--minutes M] [--kill-etcd-leader-every S] [--ttl S --loop-wait S --retry-timeout S]
                pgbench -c 4 -j 2 for M minutes (default 10) against the primary of a cluster
                on a three-member etcd, optionally SIGKILLing the etcd leader every S seconds,
                counting failovers nothing caused; target/bench/stability.json
  bench fleet [--clusters N[,N...]] [--runs R] [--idle-seconds S]
                N clusters of three in-process agents (the engine with the in-memory
                PostgreSQL) on a three-member etcd, for each N (default 1,10,50,100,200):
                etcd writes/s, watch events, CPU and memory, R failovers of one cluster
                (default 5); target/bench/fleet.json, fleet.svg, a table
  chaos [--faults N] [--seed N] [--mode synchronous|strict|quorum|asynchronous] [--keep]
                as root: deps, build, then a three-node cluster (etcd x3, BIND,
                PostgreSQL) in network namespaces under N seeded faults (default 12):
                kills, stops, partitions, etcd outages, garbage keys; checks lost and
                deposed-primary writes; target/chaos/<run>.json, a table, exit 1 on a
                violation or a cluster that did not recover (also --ttl, --loop-wait,
                --retry-timeout S: the timing, 5/1/2 by default; --recovery-timeout S;
                --dcs etcd|zookeeper: a three-server etcd or ZooKeeper ensemble;
                --kinds a,b: draw the faults from these kinds only)
  image [--test]
                as root: a container image in Spilo's form (PostgreSQL 15 and
                matriarch, configured from the environment) built from Debian's
                packages with debootstrap and imported into podman (no registry);
                --test then runs etcd and three containers with host networking,
                kills the primary's container and checks the failover and that no
                acknowledged write was lost (target/image/failover.json)
  package [--check]
                release build, then the Debian package target/debian/matriarch_<version>_<arch>.deb
                (dpkg-deb; files from packaging/); --check, as root: dpkg -i it, run
                `matriarch check` on the packaged /etc/matriarch/node.yaml, dpkg --purge
  help          show this message
";

/// A failure with a message for the user.
struct Failure(String);

type Result<T = ()> = std::result::Result<T, Failure>;

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
        "deps" => no_args(cmd, rest).and_then(|()| deps()),
        "test" => test(rest),
        "demo" => demo(rest),
        "sim" => sim(rest),
        "bench" => bench(rest),
        "chaos" => chaos(rest),
        "package" => package::package(rest),
        "image" => image::image(rest),
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

fn no_args(cmd: &str, rest: &[String]) -> Result {
    if rest.is_empty() {
        Ok(())
    } else {
        Err(Failure(format!("`{cmd}` takes no arguments, got {rest:?}")))
    }
}

/// The workspace root: the parent of this crate's directory.
fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

fn is_root() -> bool {
    // SAFETY: geteuid cannot fail and touches no memory.
    unsafe { libc::geteuid() == 0 }
}

fn render(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs a command with inherited stdio; fails unless it exits 0.
fn run(cmd: &mut Command) -> Result {
    let what = render(cmd);
    let status = cmd
        .status()
        .map_err(|e| Failure(format!("cannot run `{what}`: {e}")))?;
    if status.success() {
        Ok(())
    } else {
        Err(Failure(format!("`{what}` failed ({status})")))
    }
}

// ---------------------------------------------------------------------------- demo

/// Runs a program that handles Ctrl-C itself (the demo and the benchmark stop
/// their cluster and clean up): Ctrl-C goes to the whole terminal group, so this
/// process ignores it while waiting instead of dying first.
fn run_owning_ctrl_c(cmd: &mut Command) -> Result<std::process::ExitStatus> {
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

/// Whether `args` is `[flag]` (`true`) or empty (`false`); anything else is a
/// usage error of `cargo xtask <cmd>`.
fn only_flag(cmd: &str, flag: &str, args: &[String]) -> Result<bool> {
    match args {
        [] => Ok(false),
        [given] if given == flag => Ok(true),
        other => Err(Failure(format!(
            "`{cmd}` takes only `{flag}`, got {other:?}"
        ))),
    }
}

/// The step `build` of `cargo xtask <name>`: `cargo build` of `matriarch` and
/// `packages` (`--release` when `release`). The workspace root and target dir.
fn build(name: &str, release: bool, packages: &[&str]) -> Result<(PathBuf, PathBuf)> {
    let root = workspace_root();
    println!(
        "==> cargo xtask {name}: {} build",
        if release { "release" } else { "debug" }
    );
    let mut cmd = cargo_command()?;
    cmd.arg("build");
    if release {
        cmd.arg("--release");
    }
    for package in std::iter::once(&"matriarch").chain(packages) {
        cmd.args(["-p", package]);
    }
    step("build", run(cmd.current_dir(&root)))?;
    let target = target_dir(&root);
    Ok((root, target))
}

/// Builds `matriarch` and `package` (`--release` when `release`), then runs the
/// built `program` (which owns Ctrl-C) with `args`, `--matriarch <the built
/// daemon>` and `<out_flag> target/<out>`: its exit status and `target/<out>`.
fn build_and_run(
    name: &str,
    release: bool,
    package: &str,
    program: &str,
    args: &[String],
    out_flag: &str,
    out: &str,
) -> Result<(std::process::ExitStatus, PathBuf)> {
    let (root, target) = build(name, release, &[package])?;
    let profile = if release { "release" } else { "debug" };
    let bin = target.join(profile);
    let out = target.join(out);
    let status = run_owning_ctrl_c(
        Command::new(bin.join(program))
            .args(args)
            .arg("--matriarch")
            .arg(bin.join("matriarch"))
            .arg(out_flag)
            .arg(&out)
            .current_dir(&root),
    )?;
    Ok((status, out))
}

/// What the exit status of a program that owns Ctrl-C means: 0 success, 130
/// an interrupt after which `what` cleaned up, any other code `failed(code)`.
fn judge_run(
    what: &str,
    status: std::process::ExitStatus,
    failed: impl FnOnce(Option<i32>) -> String,
) -> Result {
    match status.code() {
        Some(0) => Ok(()),
        Some(130) => Err(Failure(format!("interrupted; {what} stopped everything"))),
        code => Err(Failure(failed(code))),
    }
}

/// `cargo xtask demo [--keep]`: deps, then builds `matriarch` and `matriarch-demo`
/// and runs the demo (crate `crates/matriarch-demo`) with the built daemon.
fn demo(args: &[String]) -> Result {
    let keep = only_flag("demo", "--keep", args)?;
    step("deps", deps())?;
    let extra: Vec<String> = if keep {
        vec!["--keep".into()]
    } else {
        Vec::new()
    };
    let (status, logs) = build_and_run(
        "demo",
        false,
        "matriarch-demo",
        "matriarch-demo",
        &extra,
        "--logs",
        "demo",
    )?;
    judge_run("the demo", status, |_| {
        format!(
            "the demo failed ({status}); node logs are in {}",
            logs.display()
        )
    })
}

// ---------------------------------------------------------------------------- bench

/// `cargo xtask bench failover|stability|fleet [args]`: deps, a release build of
/// `matriarch` and `matriarch-bench` (these are figures), then the benchmark
/// (`crates/matriarch-demo/src/bin/bench.rs`) with the built daemon; results in target/bench.
fn bench(args: &[String]) -> Result {
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
    step("deps", deps())?;
    let (status, out) = build_and_run(
        "bench",
        true,
        "matriarch-demo",
        "matriarch-bench",
        args,
        "--out",
        "bench",
    )?;
    judge_run("the benchmark", status, |_| {
        format!(
            "the benchmark failed or missed a check ({status}); results and logs are in {}",
            out.display()
        )
    })
}

// ---------------------------------------------------------------------------- chaos

/// `cargo xtask chaos [--faults N] [--seed N] [--mode M] [--keep]`: as root, deps, a
/// debug build of `matriarch` and `matriarch-chaos`, then the chaos run (crate
/// `crates/matriarch-chaos`) with the built daemon; reports in target/chaos.
fn chaos(args: &[String]) -> Result {
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
    step("deps", deps())?;
    let (status, out) = build_and_run(
        "chaos",
        false,
        "matriarch-chaos",
        "matriarch-chaos",
        args,
        "--out",
        "chaos",
    )?;
    judge_run("the chaos run", status, |code| match code {
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

// ---------------------------------------------------------------------------- test

/// Runs the simulation test of matriarch-ha with the seeds asked for; with
/// `--pre-fix`, the run of the code before issue 14's fixes (its regressions
/// planted back), which reports per regression whether an invariant found it.
fn sim(args: &[String]) -> Result {
    let mut env: Vec<(&str, String)> = Vec::new();
    let mut pre_fix = false;
    let mut args = args.iter();
    while let Some(flag) = args.next() {
        let variable = match flag.as_str() {
            "--seeds" => "MATRIARCH_SIM_SEEDS",
            "--first-seed" => "MATRIARCH_SIM_FIRST_SEED",
            "--seed" => "MATRIARCH_SIM_SEED",
            "--pre-fix" => {
                pre_fix = true;
                continue;
            }
            other => {
                return Err(Failure(format!(
                    "unknown argument `{other}` (see `cargo xtask help`)"
                )))
            }
        };
        let value = args
            .next()
            .filter(|v| v.parse::<u64>().is_ok())
            .ok_or_else(|| Failure(format!("`{flag}` needs a whole number")))?;
        env.push((variable, value.clone()));
    }
    if !env
        .iter()
        .any(|(variable, _)| *variable == "MATRIARCH_SIM_SEEDS")
    {
        let seeds = if pre_fix { "400" } else { "20000" };
        env.push(("MATRIARCH_SIM_SEEDS", seeds.to_owned()));
    }
    let (test, ignored) = if pre_fix {
        ("pre_fix_regressions_are_found", Some("--ignored"))
    } else {
        ("simulation_of_mixed_faults_breaks_no_invariant", None)
    };
    let mut cmd = cargo_command()?;
    cmd.args([
        "test",
        "--release",
        "-p",
        "matriarch-ha",
        "--test",
        "simulation",
        test,
        "--",
        "--exact",
        "--nocapture",
    ])
    .args(ignored)
    .envs(env)
    .current_dir(workspace_root());
    run(&mut cmd)
}

fn test(extra: &[String]) -> Result {
    step("deps", deps())?;
    let root = workspace_root();
    let cargo_step = |name: &str, args: &[&str], extra: &[String]| -> Result {
        println!("==> cargo xtask test: {name}");
        let mut cmd = cargo_command()?;
        cmd.args(args).args(extra).current_dir(&root);
        step(name, run(&mut cmd))
    };
    cargo_step("fmt", &["fmt", "--all", "--", "--check"], &[])?;
    cargo_step(
        "clippy",
        &[
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
        &[],
    )?;
    if !extra.is_empty() {
        // A filter or a package choice: cargo's own sequential run, as asked.
        return cargo_step("test", &["test", "--workspace"], extra);
    }
    println!("==> cargo xtask test: build the tests");
    let jobs = step(
        "build the tests",
        test_pool::build_test_binaries(cargo_command()?, &root),
    )?;
    cargo_step("doc tests", &["test", "--workspace", "--doc"], &[])?;
    // The same controller suite, a failover, switchover and rewind, and the
    // replication slots with a logical consumer through a failover on
    // PostgreSQL 18 (the rest runs on Debian's 15; failover slots need 17+,
    // so on 15 that test skips itself).
    let pg18_bin = pg18()?;
    let mut pg18_jobs = Vec::new();
    for job in &jobs {
        let pg18_env = ("MATRIARCH_PG_BIN", pg18_bin.as_path());
        match job.name.as_str() {
            "matriarch-postgres::real_postgres" | "matriarch::slots" => {
                pg18_jobs.push(job.again("postgresql 18", &[], pg18_env));
            }
            "matriarch::scenarios" => {
                pg18_jobs.push(job.again("postgresql 18", PG18_SCENARIOS, pg18_env));
            }
            _ => {}
        }
    }
    if pg18_jobs.len() != 3 {
        return Err(Failure(format!(
            "expected the three PostgreSQL 18 suites, found {}",
            pg18_jobs.len()
        )));
    }
    println!(
        "==> cargo xtask test: test (PostgreSQL 18 ({}) for three suites)",
        pg18_bin.display()
    );
    let logs = target_dir(&root).join("xtask-test");
    step(
        "test",
        test_pool::run_all(jobs.into_iter().chain(pg18_jobs).collect(), &logs),
    )?;
    println!("==> cargo xtask test: all steps passed");
    Ok(())
}

/// A `cargo` command whose build scripts use the `protoc` and the well-known
/// `.proto` files shipped in the `protoc-bin-vendored` crate, never a system
/// protobuf: etcd-client's build script needs both, and a machine with only the
/// Rust toolchain has neither (Debian splits them over two packages).
fn cargo_command() -> Result<Command> {
    let protoc = protoc_bin_vendored::protoc_bin_path()
        .map_err(|e| Failure(format!("no vendored protoc for this platform: {e}")))?;
    let include = protoc_bin_vendored::include_path()
        .map_err(|e| Failure(format!("no vendored protobuf include files: {e}")))?;
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.env("PROTOC", protoc).env("PROTOC_INCLUDE", include);
    Ok(cmd)
}

/// Cargo's target directory: `$CARGO_TARGET_DIR` (relative to the workspace
/// root) or `<root>/target`.
fn target_dir(root: &Path) -> PathBuf {
    // Joining an absolute CARGO_TARGET_DIR replaces the root.
    root.join(std::env::var_os("CARGO_TARGET_DIR").unwrap_or_else(|| "target".into()))
}

fn step<T>(name: &str, r: Result<T>) -> Result<T> {
    r.map_err(|Failure(msg)| Failure(format!("step `{name}` failed: {msg}")))
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;
    use std::process::ExitStatus;

    use super::*;

    #[test]
    fn a_run_status_is_success_an_interrupt_or_the_callers_failure() {
        let exited = |code: i32| ExitStatus::from_raw(code << 8);
        assert!(judge_run("the demo", exited(0), |_| unreachable!()).is_ok());
        let Failure(interrupted) = judge_run("the demo", exited(130), |_| unreachable!())
            .expect_err("130 is an interrupt");
        assert_eq!(interrupted, "interrupted; the demo stopped everything");
        let Failure(failed) =
            judge_run("the demo", exited(1), |code| format!("code {code:?}")).expect_err("1");
        assert_eq!(failed, "code Some(1)");
    }
}
