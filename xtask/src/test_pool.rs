//! The test step of `cargo xtask test`: every test binary of the workspace, a
//! few at a time.
//!
//! `cargo test --workspace` runs one test binary after another, and most of
//! CI's time goes to end-to-end binaries that wait on real services
//! (PostgreSQL, etcd, BIND) with the cores idle. Running a few binaries at once
//! overlaps that waiting and keeps each binary's own rules: its test threads,
//! the `serial()` locks its clusters take, the services it shares between its
//! tests. Each binary's output goes to its own log, printed whole if it fails.

use std::collections::{HashMap, VecDeque};
use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::cmd::{render, Failure, Result};

/// How many test binaries run at once unless `MATRIARCH_TEST_JOBS` says
/// otherwise: on CI's two cores, three overlap the waiting without starving
/// the timing-sensitive tests.
const DEFAULT_JOBS: usize = 3;

/// Binaries known to take minutes, started first so that the run does not end
/// with one of them alone (matched against the job's name). Used when no
/// earlier run left its durations (see [`DURATIONS_FILE`]), and to order the
/// binaries that earlier run did not have.
const SLOW_FIRST: &[&str] = &[
    "matriarch::scenarios",
    "matriarch-ha::simulation",
    "matriarch-chaos::",
    "matriarch::idle_writes",
    "matriarch::patroni_migration",
    "matriarch::patroni_parity",
    "matriarch-postgres::real_postgres",
];

/// The file in the log directory where a run leaves each binary's duration in
/// seconds (a JSON object keyed by job name), for the next run's order.
const DURATIONS_FILE: &str = "durations.json";

/// One test binary to run, with its arguments and environment.
#[derive(Clone, Debug)]
pub(crate) struct Job {
    /// `<package>::<target>` (and a suffix for a second run of one binary).
    pub(crate) name: String,
    /// The compiled test binary.
    pub(crate) exe: PathBuf,
    /// The package's directory: `cargo test` runs a test binary there.
    pub(crate) package_dir: PathBuf,
    /// Arguments to the test harness (filters, `--exact`).
    pub(crate) args: Vec<String>,
    /// Extra environment.
    pub(crate) env: Vec<(String, OsString)>,
}

impl Job {
    /// The same binary again under another name, with extra arguments and
    /// environment (PostgreSQL 18's run of a suite).
    pub(crate) fn again(&self, suffix: &str, args: &[&str], env: (&str, &Path)) -> Job {
        Job {
            name: format!("{} ({suffix})", self.name),
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            env: vec![(env.0.to_owned(), env.1.into())],
            ..self.clone()
        }
    }
}

/// Builds every test target of the workspace (`cargo test --no-run`) and
/// returns a job per test binary.
pub(crate) fn build_test_binaries(mut cargo: Command, root: &Path) -> Result<Vec<Job>> {
    cargo
        .args([
            "test",
            "--workspace",
            "--no-run",
            "--message-format=json-render-diagnostics",
        ])
        .current_dir(root)
        .stdout(Stdio::piped());
    let what = render(&cargo);
    let mut child = cargo
        .spawn()
        .map_err(|e| Failure(format!("cannot run `{what}`: {e}")))?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| Failure(format!("`{what}`: no output pipe")))?;
    let mut jobs = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.map_err(|e| Failure(format!("`{what}`: reading its output: {e}")))?;
        if let Some(job) = job_from_artifact(&line) {
            jobs.push(job);
        }
    }
    let status = child
        .wait()
        .map_err(|e| Failure(format!("`{what}`: {e}")))?;
    if !status.success() {
        return Err(Failure(format!("`{what}` failed ({status})")));
    }
    Ok(jobs)
}

/// A job for a `compiler-artifact` message that names a test executable.
fn job_from_artifact(line: &str) -> Option<Job> {
    let message: serde_json::Value = serde_json::from_str(line).ok()?;
    if message["reason"] != "compiler-artifact" || message["profile"]["test"] != true {
        return None;
    }
    let exe = PathBuf::from(message["executable"].as_str()?);
    let manifest = PathBuf::from(message["manifest_path"].as_str()?);
    let package_dir = manifest.parent()?.to_path_buf();
    let package = package_dir.file_name()?.to_string_lossy().into_owned();
    let target = message["target"]["name"].as_str()?;
    let kinds = message["target"]["kind"].as_array()?;
    // A library's unit tests carry the library's name; say "lib" so that a
    // crate's unit tests and an integration test of the same name differ.
    let name = if kinds.iter().any(|k| k == "lib" || k == "rlib") {
        format!("{package}::lib")
    } else {
        format!("{package}::{target}")
    };
    Some(Job {
        name,
        exe,
        package_dir,
        args: Vec::new(),
        env: Vec::new(),
    })
}

/// What one binary's run came to.
struct Outcome {
    name: String,
    took: Duration,
    passed: u64,
    failed: u64,
    ignored: u64,
    ok: bool,
    log: PathBuf,
}

/// Runs `jobs`, `MATRIARCH_TEST_JOBS` (default 3) at a time, logging each to
/// `logs/<name>.log`; prints a line per finished binary, every failed
/// binary's log, and a summary. Fails if any binary failed.
pub(crate) fn run_all(mut jobs: Vec<Job>, logs: &Path) -> Result {
    let parallel = std::env::var("MATRIARCH_TEST_JOBS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|n| *n > 0)
        .unwrap_or(DEFAULT_JOBS);
    fs::create_dir_all(logs)
        .map_err(|e| Failure(format!("cannot create {}: {e}", logs.display())))?;
    slowest_first(&mut jobs, &previous_durations(logs));
    println!(
        "==> {} test binaries, {parallel} at a time (logs in {})",
        jobs.len(),
        logs.display()
    );
    let started = Instant::now();
    let queue = Arc::new(Mutex::new(VecDeque::from(jobs)));
    let outcomes = Arc::new(Mutex::new(Vec::new()));
    let workers: Vec<_> = (0..parallel)
        .map(|_| {
            let queue = Arc::clone(&queue);
            let outcomes = Arc::clone(&outcomes);
            let logs = logs.to_path_buf();
            std::thread::spawn(move || loop {
                let next = queue.lock().map(|mut q| q.pop_front()).unwrap_or(None);
                let Some(job) = next else { break };
                let outcome = run_one(&job, &logs);
                println!(
                    "    {} {} ({:.1} s: {} passed, {} failed, {} ignored)",
                    if outcome.ok { "ok    " } else { "FAILED" },
                    outcome.name,
                    outcome.took.as_secs_f64(),
                    outcome.passed,
                    outcome.failed,
                    outcome.ignored
                );
                if let Ok(mut all) = outcomes.lock() {
                    all.push(outcome);
                }
            })
        })
        .collect();
    for worker in workers {
        worker
            .join()
            .map_err(|_| Failure("a test worker thread panicked".into()))?;
    }
    let mut outcomes = std::mem::take(
        &mut *outcomes
            .lock()
            .map_err(|_| Failure("test outcomes poisoned".into()))?,
    );
    save_durations(&outcomes, logs);
    report(&mut outcomes, started.elapsed())
}

/// Orders `jobs` so that the slowest start first: by the previous run's
/// duration, longest first. A binary the previous run did not have (or every
/// binary, when there was no previous run) has no known duration and goes
/// first, since starting an unknown, possibly long binary late risks a run
/// that ends with it alone; among those, the hand-written [`SLOW_FIRST`]
/// decides.
fn slowest_first(jobs: &mut [Job], previous: &HashMap<String, f64>) {
    let known = |job: &Job| previous.get(&job.name).copied();
    let hand_rank = |job: &Job| {
        SLOW_FIRST
            .iter()
            .position(|slow| job.name.starts_with(slow))
            .unwrap_or(SLOW_FIRST.len())
    };
    jobs.sort_by(|a, b| match (known(a), known(b)) {
        (Some(a_took), Some(b_took)) => b_took.total_cmp(&a_took),
        (None, Some(_)) => std::cmp::Ordering::Less,
        (Some(_), None) => std::cmp::Ordering::Greater,
        (None, None) => hand_rank(a).cmp(&hand_rank(b)),
    });
}

/// The durations the previous run left in `logs` (empty when there was none
/// or its file cannot be read: the order is then the hand-written one).
fn previous_durations(logs: &Path) -> HashMap<String, f64> {
    let Ok(text) = fs::read_to_string(logs.join(DURATIONS_FILE)) else {
        return HashMap::new();
    };
    let Ok(serde_json::Value::Object(map)) = serde_json::from_str(&text) else {
        println!("    (ignoring an unreadable {DURATIONS_FILE}: the hand-written order applies)");
        return HashMap::new();
    };
    map.into_iter()
        .filter_map(|(name, seconds)| Some((name, seconds.as_f64()?)))
        .collect()
}

/// Leaves this run's durations for the next run's order; a failure to write
/// them only costs the next run its order, so it is reported, not fatal.
fn save_durations(outcomes: &[Outcome], logs: &Path) {
    let map: serde_json::Map<String, serde_json::Value> = outcomes
        .iter()
        .map(|o| (o.name.clone(), o.took.as_secs_f64().into()))
        .collect();
    let path = logs.join(DURATIONS_FILE);
    let text = serde_json::Value::Object(map).to_string();
    if let Err(e) = fs::write(&path, text) {
        println!("    (cannot save the durations to {}: {e})", path.display());
    }
}

fn run_one(job: &Job, logs: &Path) -> Outcome {
    let log = logs.join(format!("{}.log", file_safe(&job.name)));
    let started = Instant::now();
    let ok = File::create(&log)
        .and_then(|out| {
            let err = out.try_clone()?;
            Command::new(&job.exe)
                .args(&job.args)
                .envs(job.env.iter().map(|(k, v)| (k, v)))
                .env("CARGO_MANIFEST_DIR", &job.package_dir)
                .current_dir(&job.package_dir)
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err)
                .status()
        })
        .map(|status| status.success())
        .unwrap_or_else(|e| {
            let _ = fs::write(&log, format!("cannot run {}: {e}\n", job.exe.display()));
            false
        });
    let (passed, failed, ignored) = counts(&log);
    Outcome {
        name: job.name.clone(),
        took: started.elapsed(),
        passed,
        failed,
        ignored,
        ok,
        log,
    }
}

/// The totals of the harness's `test result:` lines in a log.
fn counts(log: &Path) -> (u64, u64, u64) {
    let text = fs::read_to_string(log).unwrap_or_default();
    let mut totals = (0, 0, 0);
    for line in text.lines().filter(|l| l.starts_with("test result:")) {
        let number_before = |word: &str| -> u64 {
            line.split(';')
                .find_map(|part| {
                    let part = part.trim().trim_start_matches("test result: ");
                    let part = part
                        .trim_start_matches("ok. ")
                        .trim_start_matches("FAILED. ");
                    part.strip_suffix(word)?.trim().parse().ok()
                })
                .unwrap_or(0)
        };
        totals.0 += number_before("passed");
        totals.1 += number_before("failed");
        totals.2 += number_before("ignored");
    }
    totals
}

fn report(outcomes: &mut [Outcome], wall: Duration) -> Result {
    let failed: Vec<String> = outcomes
        .iter()
        .filter(|o| !o.ok)
        .map(|o| o.name.clone())
        .collect();
    for outcome in outcomes.iter().filter(|o| !o.ok) {
        println!(
            "\n==> log of the failed test binary {} ({}):",
            outcome.name,
            outcome.log.display()
        );
        println!("{}", fs::read_to_string(&outcome.log).unwrap_or_default());
    }
    let sum = |f: fn(&Outcome) -> u64| outcomes.iter().map(f).sum::<u64>();
    println!(
        "==> tests: {} passed, {} failed, {} ignored in {} binaries, {:.0} s wall",
        sum(|o| o.passed),
        sum(|o| o.failed),
        sum(|o| o.ignored),
        outcomes.len(),
        wall.as_secs_f64()
    );
    outcomes.sort_by_key(|o| std::cmp::Reverse(o.took));
    let longest: Vec<String> = outcomes
        .iter()
        .take(5)
        .map(|o| format!("{} {:.0} s", o.name, o.took.as_secs_f64()))
        .collect();
    println!("    longest: {}", longest.join(", "));
    if failed.is_empty() {
        Ok(())
    } else {
        Err(Failure(format!("failed: {}", failed.join(", "))))
    }
}

/// A job name as a file name.
fn file_safe(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_test_artifact_becomes_a_job_named_by_package_and_target() {
        let line = r#"{"reason":"compiler-artifact","package_id":"x","manifest_path":"/w/crates/matriarch/Cargo.toml","target":{"kind":["test"],"name":"scenarios"},"profile":{"test":true},"executable":"/w/target/debug/deps/scenarios-abc"}"#;
        let job = job_from_artifact(line).expect("a job");
        assert_eq!(job.name, "matriarch::scenarios");
        assert_eq!(job.exe, PathBuf::from("/w/target/debug/deps/scenarios-abc"));
        assert_eq!(job.package_dir, PathBuf::from("/w/crates/matriarch"));
    }

    #[test]
    fn non_test_artifacts_and_other_messages_are_no_jobs() {
        let lib = r#"{"reason":"compiler-artifact","manifest_path":"/w/a/Cargo.toml","target":{"kind":["lib"],"name":"a"},"profile":{"test":false},"executable":null}"#;
        assert!(job_from_artifact(lib).is_none());
        assert!(job_from_artifact(r#"{"reason":"build-finished","success":true}"#).is_none());
        assert!(job_from_artifact("not json").is_none());
    }

    fn job(name: &str) -> Job {
        Job {
            name: name.to_owned(),
            exe: PathBuf::from("/bin/true"),
            package_dir: PathBuf::from("/"),
            args: Vec::new(),
            env: Vec::new(),
        }
    }

    fn names(jobs: &[Job]) -> Vec<&str> {
        jobs.iter().map(|j| j.name.as_str()).collect()
    }

    #[test]
    fn without_a_previous_run_the_hand_written_list_orders_the_binaries() {
        let mut jobs = vec![
            job("matriarch::lib"),
            job("matriarch-postgres::real_postgres"),
            job("matriarch::scenarios"),
        ];
        slowest_first(&mut jobs, &HashMap::new());
        assert_eq!(
            names(&jobs),
            [
                "matriarch::scenarios",
                "matriarch-postgres::real_postgres",
                "matriarch::lib"
            ]
        );
    }

    #[test]
    fn the_previous_run_orders_slowest_first_and_new_binaries_go_first() {
        let mut jobs = vec![
            job("matriarch::scenarios"),
            job("a::quick"),
            job("b::new"),
            job("c::slow"),
            job("matriarch-ha::simulation"),
        ];
        let previous = HashMap::from([
            ("matriarch::scenarios".to_owned(), 30.0),
            ("a::quick".to_owned(), 0.5),
            ("c::slow".to_owned(), 300.0),
        ]);
        slowest_first(&mut jobs, &previous);
        // The unknown binaries first (the hand-written list among them), then
        // the previous run's durations, longest first, whatever the hand list says.
        assert_eq!(
            names(&jobs),
            [
                "matriarch-ha::simulation",
                "b::new",
                "c::slow",
                "matriarch::scenarios",
                "a::quick"
            ]
        );
    }

    #[test]
    fn a_run_leaves_its_durations_for_the_next_and_bad_files_are_ignored() {
        let temp = tempfile::tempdir().expect("a temporary folder");
        let dir = temp.path();
        assert!(previous_durations(dir).is_empty(), "no file yet");
        let outcome = |name: &str, millis| Outcome {
            name: name.to_owned(),
            took: Duration::from_millis(millis),
            passed: 1,
            failed: 0,
            ignored: 0,
            ok: true,
            log: dir.join("x.log"),
        };
        save_durations(&[outcome("a::x", 1500), outcome("b::y", 250)], dir);
        let read = previous_durations(dir);
        assert_eq!(read.len(), 2);
        assert_eq!(read["a::x"], 1.5);
        assert_eq!(read["b::y"], 0.25);
        fs::write(dir.join(DURATIONS_FILE), "not json").expect("write");
        assert!(previous_durations(dir).is_empty(), "unreadable file");
    }

    #[test]
    fn the_harness_totals_are_summed_over_a_log() {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let log = dir.path().join("a.log");
        fs::write(
            &log,
            "running 3 tests\ntest result: ok. 3 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.1s\n\
             test result: FAILED. 2 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1s\n",
        )
        .expect("log");
        assert_eq!(counts(&log), (5, 1, 1));
    }
}
