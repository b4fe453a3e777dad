//! `cargo xtask test` (the CI run: fmt, clippy and every test binary) and
//! `cargo xtask sim` (the long runs of the deterministic simulation).

use crate::cmd::{cargo_command, run, step, Failure, Result};
use crate::deps::{deps, pg18};
use crate::paths::{target_dir, workspace_root};
use crate::test_pool;

/// The scenario tests `cargo xtask test` runs again on PostgreSQL 18 (besides the
/// whole controller suite): a failover, a switchover and a rewind.
const PG18_SCENARIOS: &[&str] = &[
    "node_crash_fails_over_and_the_old_primary_rejoins",
    "switchover_by_rest_api_with_callbacks",
    "the_former_primary_rejoins_by_pg_rewind",
];

/// Runs the simulation test of matriarch-ha with the seeds asked for; with
/// `--pre-fix`, the run of the code before issue 14's fixes (its regressions
/// planted back), which reports per regression whether an invariant found it.
pub(crate) fn sim(args: &[String]) -> Result {
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

/// `cargo xtask test [args]`: deps, fmt, clippy, then every test binary a few
/// at a time (with [`PG18_SCENARIOS`] and two suites again on PostgreSQL 18), or
/// with `extra`, `cargo test --workspace <extra>`.
pub(crate) fn test(extra: &[String]) -> Result {
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
