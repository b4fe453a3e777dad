//! End to end: `matriarch-bench failover` with one quick switchover run against the
//! built `matriarch` daemon, with real etcd, BIND and PostgreSQL. It must write the
//! JSON results with every field, the plot, and leave nothing running.

mod common;

use std::fs;
use std::process::Command;
use std::time::Duration;

use common::{matriarch_binary, processes_mentioning, run_ok_within, Finished};

#[test]
fn one_switchover_run_writes_results_and_a_plot() {
    let matriarch = matriarch_binary();
    let out = tempfile::tempdir().expect("temp dir");
    let Finished { stdout, context } = run_ok_within(
        Command::new(env!("CARGO_BIN_EXE_matriarch-bench"))
            .args([
                "failover",
                "--runs",
                "1",
                "--scenario",
                "switchover",
                "--idle-seconds",
                "2",
                "--matriarch",
            ])
            .arg(&matriarch)
            .arg("--out")
            .arg(out.path()),
        Duration::from_secs(90),
    );
    for expected in ["switchover", "median", "Agents at idle", "failover.json"] {
        assert!(stdout.contains(expected), "no `{expected}` in\n{context}");
    }
    let results: serde_json::Value = serde_json::from_str(
        &fs::read_to_string(out.path().join("failover.json")).expect("failover.json"),
    )
    .expect("failover.json is JSON");
    assert_eq!(
        results["machine"]["nproc"].as_u64().map(|n| n > 0),
        Some(true)
    );
    let agents = results["idle"]["agents"].as_array().expect("idle agents");
    assert_eq!(agents.len(), 3, "{results}");
    for agent in agents {
        assert!(agent["rss_kb"].as_u64() > Some(0), "{agent}");
        assert!(agent["cpu_seconds"].as_f64().is_some(), "{agent}");
    }
    let scenarios = results["scenarios"].as_array().expect("scenarios");
    assert_eq!(scenarios.len(), 1);
    let scenario = &scenarios[0];
    assert_eq!(scenario["name"], "switchover");
    let summary = &scenario["summary"];
    assert_eq!(summary["runs_ok"], 1, "{scenario}");
    for field in [
        "unavailability_median_ms",
        "unavailability_worst_ms",
        "missing_acknowledged_total",
        "old_primary_acks_after_promotion_total",
        "target_met",
    ] {
        assert!(!summary[field].is_null(), "no {field} in {summary}");
    }
    let run = &scenario["runs"][0];
    assert!(run["unavailability_ms"].as_u64() > Some(0), "{run}");
    assert_ne!(run["old_primary"], run["new_primary"], "{run}");
    for mark in ["lock_taken", "promoted", "dns_routed", "first_write"] {
        assert!(
            run["marks_ms"][mark].as_i64().is_some(),
            "no {mark} in {run}"
        );
    }
    assert!(
        run["events"].as_array().is_some_and(|e| e.len() >= 5),
        "{run}"
    );
    let svg = fs::read_to_string(out.path().join("failover-switchover.svg"))
        .expect("failover-switchover.svg");
    assert!(
        svg.starts_with("<svg ") && svg.contains("first write ("),
        "{svg}"
    );
    let left = processes_mentioning(&out.path().display().to_string());
    assert!(left.is_empty(), "still running: {left:#?}");
}
