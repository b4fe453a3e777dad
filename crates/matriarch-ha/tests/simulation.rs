//! The deterministic cluster simulation: thousands of seeds of mixed faults
//! find no broken invariant, and a planted bug is found.
//!
//! `MATRIARCH_SIM_SEEDS=N` runs N seeds (default 2000), starting at
//! `MATRIARCH_SIM_FIRST_SEED` (default 1); `MATRIARCH_SIM_SEED=S` replays one
//! seed and prints its trace. `cargo xtask sim --seeds N` sets these.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use std::time::Duration;

use matriarch_ha::sim::{run, ModelBug, SimConfig, SimReport};
use matriarch_ha::{decide, Action, DcsObservation, Decision, Inputs, Memory};
use matriarch_model::Lsn;

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// Runs `seeds` on every core; stops early after `stop_after` failing seeds.
fn run_seeds(
    seeds: Vec<u64>,
    config: impl Fn(u64) -> SimConfig + Sync,
    stop_after: usize,
) -> (usize, Vec<SimReport>) {
    let next = AtomicU64::new(0);
    let failures = Mutex::new(Vec::new());
    let ran = AtomicU64::new(0);
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst) as usize;
                if i >= seeds.len() || failures.lock().unwrap().len() >= stop_after {
                    return;
                }
                let report = run(&config(seeds[i]));
                ran.fetch_add(1, Ordering::SeqCst);
                if !report.violations.is_empty() {
                    failures.lock().unwrap().push(report);
                }
            });
        }
    });
    (
        ran.load(Ordering::SeqCst) as usize,
        failures.into_inner().unwrap(),
    )
}

#[test]
fn simulation_of_mixed_faults_breaks_no_invariant() {
    if let Some(seed) = env_u64("MATRIARCH_SIM_SEED") {
        let report = run(&SimConfig::mixed(seed));
        println!("{report}");
        for line in &report.trace {
            println!("  {line}");
        }
        assert!(report.violations.is_empty());
        return;
    }
    let count = env_u64("MATRIARCH_SIM_SEEDS").unwrap_or(2000);
    let first = env_u64("MATRIARCH_SIM_FIRST_SEED").unwrap_or(1);
    let seeds: Vec<u64> = (first..first + count).collect();
    let started = std::time::Instant::now();
    let (ran, failures) = run_seeds(seeds, SimConfig::mixed, 3);
    println!(
        "simulated {ran} seeds of mixed faults in {:?}",
        started.elapsed()
    );
    for report in &failures {
        println!("{report}");
    }
    assert!(
        failures.is_empty(),
        "{} seed(s) broke an invariant (see above)",
        failures.len()
    );
}

/// Promotes without ever taking the lock.
fn promote_without_lock(inputs: &Inputs<'_>) -> Decision {
    let mut decision = decide(inputs);
    decision.actions.retain(|a| *a != Action::AcquireLock);
    decision
}

#[test]
fn planted_bug_promoting_without_the_lock_is_caught() {
    let seeds: Vec<u64> = (1..=2000).collect();
    let (ran, failures) = run_seeds(
        seeds,
        |seed| SimConfig {
            decider: Some(promote_without_lock),
            ..SimConfig::mixed(seed)
        },
        1,
    );
    let report = failures
        .first()
        .unwrap_or_else(|| panic!("no violation found in {ran} seeds"));
    println!("caught after {ran} seed(s):\n{report}");
    assert!(
        report
            .violations
            .iter()
            .any(|v| v.contains("without holding the lock")),
        "{report}"
    );
}

/// In synchronous mode, lets a standby that is not in the sync key race anyway.
fn ignore_sync_key(inputs: &Inputs<'_>) -> Decision {
    let mut decision = decide(inputs);
    if decision.reason.contains("synchronous standby") {
        decision.actions.push(Action::AcquireLock);
        decision.actions.push(Action::Promote);
    }
    decision
}

#[test]
fn planted_bug_promoting_an_asynchronous_standby_in_synchronous_mode_is_caught() {
    let seeds: Vec<u64> = (1..=2000).collect();
    let (ran, failures) = run_seeds(
        seeds,
        |seed| SimConfig {
            decider: Some(ignore_sync_key),
            synchronous: true,
            ..SimConfig::mixed(seed)
        },
        1,
    );
    let report = failures
        .first()
        .unwrap_or_else(|| panic!("no violation found in {ran} seeds"));
    println!("caught after {ran} seed(s):\n{report}");
    assert!(
        report
            .violations
            .iter()
            .any(|v| v.contains("acknowledged write")),
        "{report}"
    );
}

#[test]
fn the_same_seed_replays_the_same_run() {
    let a = run(&SimConfig::mixed(7));
    let b = run(&SimConfig::mixed(7));
    assert_eq!(a.trace, b.trace);
    assert_eq!(
        (a.acknowledged_writes, a.promotions),
        (b.acknowledged_writes, b.promotions)
    );
    let _ = Arc::new(());
}

fn failsafe_seeds(reach_all: bool) {
    let count = env_u64("MATRIARCH_SIM_FAILSAFE_SEEDS").unwrap_or(40);
    let seeds: Vec<u64> = (1..=count).collect();
    let (ran, failures) = run_seeds(seeds, |seed| SimConfig::failsafe_outage(seed, reach_all), 3);
    println!("simulated {ran} failsafe outage(s), every member reachable: {reach_all}");
    for report in &failures {
        println!("{report}");
    }
    assert!(
        failures.is_empty(),
        "{} seed(s) broke an invariant (see above)",
        failures.len()
    );
}

#[test]
fn failsafe_dcs_outage_with_every_member_reachable_keeps_the_primary_writable() {
    failsafe_seeds(true);
}

#[test]
fn failsafe_dcs_outage_with_a_member_unreachable_stops_writes_within_ttl() {
    failsafe_seeds(false);
}

/// Failsafe mode where the primary keeps leading without asking anyone.
fn failsafe_without_acknowledgements(inputs: &Inputs<'_>) -> Decision {
    let mut failsafe = inputs.failsafe.clone();
    if let Some(round) = failsafe.round.as_mut() {
        round.missing.clear();
    }
    decide(&Inputs {
        failsafe: &failsafe,
        ..inputs.clone()
    })
}

#[test]
fn planted_bug_failsafe_ignoring_a_silent_member_is_caught() {
    let seeds: Vec<u64> = (1..=50).collect();
    let (ran, failures) = run_seeds(
        seeds,
        |seed| SimConfig {
            decider: Some(failsafe_without_acknowledgements),
            ..SimConfig::failsafe_outage(seed, false)
        },
        1,
    );
    let report = failures
        .first()
        .unwrap_or_else(|| panic!("no violation found in {ran} seeds"));
    println!("caught after {ran} seed(s):\n{report}");
    assert!(
        report
            .violations
            .iter()
            .any(|v| v.contains("still writable") || v.contains("two writable")),
        "{report}"
    );
}

/// Runs `seeds` seeds of `config` and returns the first report with a
/// violation, asserting that some violation names one of `invariants`.
fn caught(seeds: u64, config: impl Fn(u64) -> SimConfig + Sync, invariants: &[&str]) {
    let seeds: Vec<u64> = (1..=seeds).collect();
    let (ran, failures) = run_seeds(seeds, config, 1);
    let report = failures
        .first()
        .unwrap_or_else(|| panic!("no violation found in {ran} seeds"));
    println!("caught after {ran} seed(s):\n{report}");
    assert!(
        report
            .violations
            .iter()
            .any(|v| invariants.iter().any(|i| v.contains(i))),
        "{report}"
    );
}

const SINGLE_WRITER: &str = "two writable primaries";
const LOST_WRITE: &str = "acknowledged write";
const RECOVERY: &str = "after faults stopped";
/// The invariant that only the lock holder runs as primary.
const WITHOUT_LOCK: &str = "without holding the lock";

/// Shrinks (or fills) the sync key as soon as PostgreSQL names the new
/// standbys, without waiting for them to hold the commits acknowledged
/// before: it pretends they flushed past the change already.
fn shrink_sync_key_early(inputs: &Inputs<'_>) -> Decision {
    let memory = Memory {
        sync_standbys_since: inputs.memory.sync_standbys_since.map(|_| Lsn(0)),
        ..inputs.memory.clone()
    };
    decide(&Inputs {
        memory: &memory,
        ..inputs.clone()
    })
}

#[test]
fn planted_bug_shrinking_the_sync_key_early_is_caught() {
    caught(
        800,
        |seed| SimConfig {
            decider: Some(shrink_sync_key_early),
            synchronous: true,
            dynamic: true,
            ..SimConfig::mixed(seed)
        },
        &[LOST_WRITE],
    );
}

/// Changes the synchronous count in the wrong order: PostgreSQL lowers it
/// before the key does, and the key raises it before PostgreSQL does.
fn count_change_in_wrong_order(inputs: &Inputs<'_>) -> Decision {
    let mut decision = decide(inputs);
    let DcsObservation::View(view) = inputs.dcs else {
        return decision;
    };
    let Some(Ok(sync)) = &view.sync else {
        return decision;
    };
    let key_quorum = sync.value.quorum.unwrap_or(1);
    for action in &mut decision.actions {
        match action {
            Action::WriteSyncState { count, .. } if *count < key_quorum => {
                *action = Action::SetSyncStandbys {
                    standbys: inputs.local.sync_standbys.clone(),
                    count: *count,
                    at: None,
                    any_standby: false,
                };
            }
            Action::SetSyncStandbys {
                standbys, count, ..
            } if *count > key_quorum && *standbys == sync.value.sync_standbys => {
                *action = Action::WriteSyncState {
                    standbys: standbys.clone(),
                    count: *count,
                    expected: Some(sync.version),
                };
            }
            _ => {}
        }
    }
    decision
}

#[test]
fn planted_bug_changing_the_sync_count_in_the_wrong_order_is_caught() {
    caught(
        400,
        |seed| SimConfig {
            decider: Some(count_change_in_wrong_order),
            synchronous: true,
            nodes: 5,
            dynamic: true,
            ..SimConfig::mixed(seed)
        },
        &[LOST_WRITE],
    );
}

/// Strict mode without an eligible standby sets an empty
/// `synchronous_standby_names` (asynchronous) instead of `*`.
fn strict_with_empty_names(inputs: &Inputs<'_>) -> Decision {
    let mut decision = decide(inputs);
    for action in &mut decision.actions {
        if let Action::SetSyncStandbys { any_standby, .. } = action {
            *any_standby = false;
        }
    }
    decision
}

/// Not caught: in the simulated world a primary keeps its WAL, and with an
/// empty key nobody else may be promoted, so a commit acknowledged without a
/// standby is never lost; only losing the primary's disk would show it, and
/// that also leaves a correct strict cluster (key empty under `*`) without a
/// candidate, which the recovery invariant cannot tell apart.
#[test]
#[ignore = "not caught by the simulation's invariants (see the comment)"]
fn planted_bug_strict_mode_with_empty_names_is_caught() {
    caught(
        400,
        |seed| SimConfig {
            decider: Some(strict_with_empty_names),
            synchronous: true,
            strict: true,
            ..SimConfig::mixed(seed)
        },
        &[LOST_WRITE, SINGLE_WRITER],
    );
}

#[test]
fn planted_bug_deadline_from_the_config_ttl_is_caught() {
    caught(
        400,
        |seed| SimConfig {
            model_bug: Some(ModelBug::HideLockLifetime),
            max_ttl: Some(Duration::from_secs(12)),
            ..SimConfig::mixed(seed)
        },
        &[SINGLE_WRITER],
    );
}

#[test]
fn planted_bug_replica_timeline_from_the_restartpoint_is_caught() {
    caught(
        400,
        |seed| SimConfig {
            model_bug: Some(ModelBug::TimelineFromRestartpoint),
            ..SimConfig::mixed(seed)
        },
        &[SINGLE_WRITER, LOST_WRITE, RECOVERY],
    );
}

#[test]
fn planted_bug_restart_starting_a_primary_without_the_lock_is_caught() {
    caught(
        400,
        |seed| SimConfig {
            model_bug: Some(ModelBug::RestartBypassesEngine),
            ..SimConfig::mixed(seed)
        },
        &[SINGLE_WRITER, LOST_WRITE, RECOVERY, WITHOUT_LOCK],
    );
}
