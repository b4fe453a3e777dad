//! End to end: the demo binary against the built `matriarch` daemon, with real etcd,
//! BIND and PostgreSQL. It must finish, print the failover timeline and the count of
//! lost acknowledged writes, show the crashed node rejoin, and leave nothing running.

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{matriarch_binary, processes_mentioning, run_ok_within, Finished};
// Two clusters of three PostgreSQL servers at once are too much for a
// two-core machine.
use matriarch_testkit::cluster::serial;

#[test]
fn the_demo_fails_over_reports_the_timeline_and_cleans_up() {
    let _serial = serial();
    let matriarch = matriarch_binary();
    let logs = tempfile::tempdir().expect("temp dir");
    // Under two minutes, as the README promises (on a loaded two-core machine).
    let Finished { stdout, context } = run_ok_within(
        Command::new(env!("CARGO_BIN_EXE_matriarch-demo"))
            .arg("--matriarch")
            .arg(&matriarch)
            .arg("--logs")
            .arg(logs.path()),
        Duration::from_secs(120),
    );
    for expected in [
        "`matriarch ctl list`",
        "| Leader ",
        "The failover timeline",
        "crashed (agent and PostgreSQL SIGKILLed)",
        "primary lost: ",
        "lock taken by node",
        "promoted: out of recovery",
        "DNS moved: primary.matriarch.test -> 127.0.0.",
        "first write accepted by node",
        "Write unavailability: ",
        "Acknowledged writes missing from the new primary: ",
        "streams from node",
        "(now a replica) has the same",
        "Stopped; data directories removed.",
        "The failover as a plot (writes per 100 ms, events marked): ",
    ] {
        assert!(stdout.contains(expected), "no `{expected}` in\n{context}");
    }
    // The plot.
    let svg = fs::read_to_string(logs.path().join("failover.svg")).expect("failover.svg");
    assert!(
        svg.starts_with("<svg ") && svg.contains("lock taken ("),
        "{svg}"
    );
    // The timeline, as JSON.
    let timeline: serde_json::Value = serde_json::from_str(
        &fs::read_to_string(logs.path().join("timeline.json")).expect("timeline.json"),
    )
    .expect("timeline.json is JSON");
    let unavailable = timeline["write_unavailability_ms"]
        .as_u64()
        .unwrap_or_else(|| panic!("no write unavailability in {timeline}"));
    // The lock's ttl (5 s) bounds it from below, the demo's 30 s bound from above.
    assert!(
        (3_000..30_000).contains(&unavailable),
        "{unavailable} ms\n{context}"
    );
    assert!(
        timeline["acknowledged_writes"].as_u64() > Some(100),
        "{timeline}"
    );
    // Asynchronous replication may lose writes acknowledged just before a crash; the
    // demo counts them. Here the count must at least be there.
    assert!(
        timeline["acknowledged_writes_missing"].as_u64().is_some(),
        "{timeline}"
    );
    // Nothing is left running: no agent (its command line names the logs directory),
    // no PostgreSQL or fence (they name the data directory).
    let config = fs::read_to_string(logs.path().join("node1.yaml")).expect("node1.yaml");
    let data_dir = config
        .lines()
        .find_map(|l| l.trim().strip_prefix("data_dir: "))
        .expect("data_dir in node1.yaml");
    let demo_dir = Path::new(data_dir)
        .parent()
        .and_then(Path::parent)
        .expect("the demo's directory");
    assert!(!demo_dir.exists(), "{} was not removed", demo_dir.display());
    let left: Vec<String> = [logs.path(), demo_dir]
        .iter()
        .flat_map(|p| processes_mentioning(&p.display().to_string()))
        .collect();
    assert!(left.is_empty(), "still running: {left:#?}");
}

#[test]
fn a_missing_daemon_is_a_clear_error() {
    let logs = tempfile::tempdir().expect("temp dir");
    let output = Command::new(env!("CARGO_BIN_EXE_matriarch-demo"))
        .args(["--matriarch", "/nonexistent/matriarch", "--logs"])
        .arg(logs.path())
        .output()
        .expect("run matriarch-demo");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("/nonexistent/matriarch does not exist"),
        "{stderr}"
    );
    let usage = Command::new(env!("CARGO_BIN_EXE_matriarch-demo"))
        .arg("--bogus")
        .output()
        .expect("run matriarch-demo");
    assert_eq!(usage.status.code(), Some(2));
}

#[test]
fn a_failover_slower_than_the_bound_fails_with_the_logs_and_cleans_up() {
    let _serial = serial();
    let matriarch = matriarch_binary();
    let logs = tempfile::tempdir().expect("temp dir");
    // The lock lives 5 s: no failover can complete within 1 s.
    let output = Command::new(env!("CARGO_BIN_EXE_matriarch-demo"))
        .arg("--matriarch")
        .arg(&matriarch)
        .arg("--logs")
        .arg(logs.path())
        .args(["--failover-bound", "1"])
        .output()
        .expect("run matriarch-demo");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let context = format!("--- stdout\n{stdout}\n--- stderr\n{stderr}");
    assert_eq!(output.status.code(), Some(1), "{context}");
    for expected in [
        "no failover within 1 s of the crash",
        "no survivor took the leader lock",
        "The end of the logs",
        "----- node1 agent",
        "----- etcd e1 -----",
    ] {
        assert!(stderr.contains(expected), "no `{expected}` in\n{context}");
    }
    assert!(
        stdout.contains("Stopped; data directories removed."),
        "{context}"
    );
    let left = processes_mentioning(&logs.path().display().to_string());
    assert!(left.is_empty(), "still running: {left:#?}");
}
