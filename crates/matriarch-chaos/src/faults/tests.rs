//! The fault plan, the operator faults' helpers and the garbage, checked.

use super::keys::garbage;
use super::operator::other_timing;
use super::*;
use crate::sys::Rng;
use std::collections::BTreeSet;

#[test]
fn the_first_pass_covers_every_kind_and_seeds_replay() {
    let a = plan(42, 20, 5000, &[]);
    assert_eq!(a, plan(42, 20, 5000, &[]));
    assert_ne!(a, plan(43, 20, 5000, &[]));
    let first: BTreeSet<FaultKind> = a[..FaultKind::ALL.len()].iter().map(|f| f.kind).collect();
    assert_eq!(first.len(), FaultKind::ALL.len());
    assert_eq!(plan(1, 3, 5000, &[]).len(), 3);
    for f in &a {
        match f.kind {
            FaultKind::AgentStop | FaultKind::EtcdStopAll => assert!(f.hold_ms > 5000),
            FaultKind::PostgresKill | FaultKind::SecondSwitchover => assert_eq!(f.hold_ms, 0),
            _ => assert!(f.hold_ms >= 1000),
        }
    }
}

#[test]
fn kinds_restrict_the_plan_and_each_runs_once_first() {
    let only = [
        FaultKind::SecondSwitchover,
        FaultKind::EditTiming,
        FaultKind::EditSyncCount,
        FaultKind::MalformedKeys,
    ];
    let p = plan(41, 8, 5000, &only);
    assert_eq!(p.len(), 8);
    assert!(p.iter().all(|f| only.contains(&f.kind)));
    let first: BTreeSet<FaultKind> = p[..4].iter().map(|f| f.kind).collect();
    assert_eq!(first.len(), 4, "{p:?}");
    assert!(FaultKind::parse("edit-sync-count").is_ok());
    assert!(FaultKind::parse("no-such-kind").is_err());
    for k in FaultKind::ALL {
        assert_eq!(FaultKind::parse(k.name()).ok(), Some(k));
    }
}

#[test]
fn other_timings_are_valid_and_differ() {
    for variant in 0..8 {
        for current in [(5, 1, 2), (8, 2, 3), (8, 1, 3)] {
            let t = other_timing(variant, current);
            assert_ne!(t, current);
            assert!(t.1 > 0 && t.2 > 0 && t.1 + 2 * t.2 <= t.0, "{t:?}");
        }
    }
}

#[test]
fn garbage_is_what_it_says() {
    let mut rng = Rng::new(3);
    let bytes = garbage("config", 0, &mut rng, "node1", "node2");
    assert_eq!(bytes.len(), 64);
    assert!(!bytes.contains(&0));
    let huge: serde_json::Value =
        serde_json::from_slice(&garbage("config", 1, &mut rng, "node1", "node2"))
            .expect("huge numbers are JSON");
    assert!(huge["retry_timeout"].as_f64().is_some_and(|v| v >= 1e19));
    for key in ["config", "sync", "failover", "member"] {
        let typed: serde_json::Value =
            serde_json::from_slice(&garbage(key, 2, &mut rng, "node1", "node2"))
                .expect("wrong types are JSON");
        assert!(typed.is_object());
    }
    let sync: serde_json::Value =
        serde_json::from_slice(&garbage("sync", 2, &mut rng, "node1", "node2")).unwrap();
    assert!(sync["leader"].is_number());
}

#[test]
fn the_helpers_of_an_agent_are_its_descendants() {
    let mut child = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .expect("spawn sleep");
    let me = std::process::id() as i32;
    let pid = child.id() as i32;
    assert_eq!(helpers_of(me, &[pid, 1]), vec![pid]);
    assert!(helpers_of(pid, &[me]).is_empty());
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn targets_resolve_against_the_primary() {
    assert_eq!(resolve_target(Target::Primary, 1), 1);
    assert_eq!(resolve_target(Target::Replica(0), 0), 1);
    assert_eq!(resolve_target(Target::Replica(1), 0), 2);
    assert_eq!(resolve_target(Target::Replica(1), 2), 1);
}
