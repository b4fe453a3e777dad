//! The failover benchmark: per scenario (and system: matriarch, and Patroni with
//! `--against patroni`) a fresh cluster, then N runs of a fault injected into
//! the primary with a client writing every 10 ms, healed between runs; results
//! as JSON, a table and a plot of the median run.

use std::collections::BTreeSet;
use std::fs;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

use matriarch_testkit::cluster::Timing;
use serde_json::{json, Value};
use tokio::runtime::Handle;

use super::failover_table::{print_table, Row};
use super::idle::measure_idle;
use super::load::Load;
use super::system::System;
use super::{
    machine, median, settings_with, unix_time, write_json, Bench, Paths, AFTER, BEFORE, TARGETS_MS,
    WRITE_INTERVAL,
};
use crate::error::{DemoError, Result};
use crate::failover::{self, acks_by_after, inject_and_measure, longest_gap, Fault};
use crate::interrupt;
use crate::timeline::offset_ms;
use crate::writer::{self, Writer};

/// One completed run.
struct RunOutcome {
    json: Value,
    unavailability_ms: u64,
    missing: usize,
    old_acks_after: Option<usize>,
    plot: crate::plot::Plot,
}

/// Runs one fault on the healthy cluster (primary `old`).
fn one_run(
    bench: &mut Bench,
    old: usize,
    fault: Fault,
    load_log: Option<&Path>,
    run: usize,
    bound: Duration,
    runtime: &Handle,
) -> Result<RunOutcome> {
    let sql_error = |detail: String| DemoError::Sql {
        target: bench.target.name.clone(),
        detail,
    };
    runtime
        .block_on(writer::fresh_table(&bench.target))
        .map_err(sql_error)?;
    let old_name = bench.cluster.nodes[old].name.clone();
    let old_ip = bench.cluster.nodes[old].ip;
    let load = match load_log {
        Some(log) => {
            println!(
                "  run {run}: pgbench -i -s {} and pgbench at full speed on {old_name} ...",
                super::load::SCALE
            );
            let load = Load::start(&bench.target, old_ip, log, runtime)?;
            println!(
                "  run {run}: {:.0} MiB of shared_buffers dirty after {:.0} s of pgbench",
                load.dirty_bytes as f64 / 1048576.0,
                load.loaded_for.as_secs_f64()
            );
            Some(load)
        }
        None => None,
    };
    let writer = Writer::start(runtime, bench.target.clone(), WRITE_INTERVAL);
    interrupt::sleep(BEFORE)?;
    if writer.log().acks.is_empty() {
        let why = writer.log().failures.last().map(|f| f.message.clone());
        return Err(DemoError::Sql {
            target: bench.target.name.clone(),
            detail: format!(
                "the client could not write before the fault: {}",
                why.unwrap_or_default()
            ),
        });
    }
    let measured = inject_and_measure(
        &mut bench.cluster,
        old,
        fault,
        runtime,
        &bench.target,
        &bench.watch,
        &writer,
        bound,
        false,
    )?;
    interrupt::sleep(AFTER)?;
    let log = writer.stop();
    let fault_at = measured.fault;
    let marks = measured.marks;
    let (before, after) = longest_gap(&log.acks, fault_at, measured.done)
        .ok_or_else(|| DemoError::Setup("the client has no writes around the fault".into()))?;
    let unavailable = after.at.saturating_duration_since(before.at);
    // The new regime starts when another member holds the lock (or PostgreSQL
    // leaves recovery, if that was seen first): an acknowledgement by the old
    // primary after that is a write the new primary does not have.
    let promotion = match (marks.lock_taken, marks.promoted) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let old_acks_after = promotion.map(|t| acks_by_after(&log.acks, old_ip, t));
    let new = measured.new;
    let new_name = bench.cluster.nodes[new].name.clone();
    let new_ip = bench.cluster.nodes[new].ip;
    let load_json = load.map(|l| l.finish(&bench.target, fault_at, new_ip, runtime));
    let on_new = runtime
        .block_on(writer::table_ids(&bench.target, new_ip))
        .map_err(sql_error)?;
    let acked: BTreeSet<i64> = log.acks.iter().map(|a| a.id).collect();
    let missing: Vec<i64> = acked.difference(&on_new).copied().collect();
    let ms = |at: Option<Instant>| at.map(|t| offset_ms(fault_at, t));
    let mut events = measured.events.clone();
    events.sort_by_key(|e| e.at);
    let servers: Vec<(Ipv4Addr, String)> = bench
        .cluster
        .nodes
        .iter()
        .map(|n| (n.ip, n.name.clone()))
        .collect();
    let first_write_s = marks
        .first_write
        .map_or(5.0, |t| offset_ms(fault_at, t) as f64 / 1000.0);
    let plot = failover::plot(
        String::new(),
        String::new(),
        &servers,
        &log.acks,
        fault_at,
        &marks,
        (-2.0, first_write_s + 2.0),
    );
    let mut json = json!({
        "run": run,
        "ok": true,
        "old_primary": old_name,
        "new_primary": new_name,
        "unavailability_ms": unavailable.as_millis() as u64,
        "last_ack_before": {"id": before.id, "t_ms": offset_ms(fault_at, before.at), "server": before.server.to_string()},
        "first_ack_after": {"id": after.id, "t_ms": offset_ms(fault_at, after.at), "server": after.server.to_string()},
        "acknowledged": acked.len(),
        "sent": log.last_id,
        "failed_attempts": log.failures.len(),
        "missing_acknowledged": missing.len(),
        "missing_ids": missing.iter().take(50).collect::<Vec<_>>(),
        "old_primary_acks_after_promotion": old_acks_after,
        "marks_ms": {
            "lock_deleted": ms(marks.lock_lost),
            "lock_taken": ms(marks.lock_taken),
            "promoted": ms(marks.promoted),
            "restarted_in_place": ms(marks.restarted),
            "rest_primary": ms(marks.rest_primary),
            "dns_routed": ms(marks.routed),
            "first_failure": ms(marks.first_failure),
            "first_write": ms(marks.first_write),
            "switchover_answered": ms(marks.answered),
        },
        "events": events.iter().map(|e| json!({
            "t_ms": offset_ms(fault_at, e.at),
            "event": e.what,
            "seen_by": e.seen_by,
        })).collect::<Vec<_>>(),
    });
    if let Some(load) = load_json {
        json["load"] = load;
    }
    Ok(RunOutcome {
        json,
        unavailability_ms: unavailable.as_millis() as u64,
        missing: missing.len(),
        old_acks_after,
        plot,
    })
}

/// What one system did in one scenario.
struct SystemResult {
    /// `runs`, `summary`, `plot` (and `settings`) for failover.json.
    json: Value,
    /// The row of the printed table.
    row: Row,
}

/// A fault, with or without pgbench loading the primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scenario {
    /// What is done to the primary.
    pub fault: Fault,
    /// Whether pgbench loads it with about 1 GB of dirty shared_buffers
    /// (see [`super::load`]).
    pub under_load: bool,
}

impl Scenario {
    /// `node-crash-under-load`, the only loaded scenario.
    pub const NODE_CRASH_UNDER_LOAD: Scenario = Scenario {
        fault: Fault::NodeCrash,
        under_load: true,
    };

    /// The scenario named `name`: a fault's name, or `node-crash-under-load`.
    pub fn parse(name: &str) -> Option<Scenario> {
        if name == Scenario::NODE_CRASH_UNDER_LOAD.name() {
            return Some(Scenario::NODE_CRASH_UNDER_LOAD);
        }
        Fault::parse(name).map(|fault| Scenario {
            fault,
            under_load: false,
        })
    }

    /// Its name on the command line and in the results.
    pub fn name(self) -> &'static str {
        if self.under_load {
            "node-crash-under-load"
        } else {
            self.fault.name()
        }
    }

    /// What is done, in a sentence.
    pub fn description(self) -> String {
        if self.under_load {
            format!(
                "{}, with pgbench (TPC-B, {} clients, full speed) on it and about 1 GB of \
                 shared_buffers dirty",
                self.fault.description(),
                super::load::CLIENTS
            )
        } else {
            self.fault.description().to_owned()
        }
    }
}

/// What the benchmark runs.
#[derive(Debug, Clone)]
pub struct FailoverPlan {
    /// Runs per scenario and system.
    pub runs: usize,
    /// The scenarios.
    pub scenarios: Vec<Scenario>,
    /// How long the agents' memory and CPU are read at rest.
    pub idle: Duration,
    /// A run fails when its failover is not complete within this.
    pub bound: Duration,
    /// The system run side by side with matriarch (Patroni), if any.
    pub against: Option<System>,
    /// matriarch's lock timing.
    pub timing: Timing,
}

/// Runs `plan.runs` runs of `fault` on `system`, each on a healthy cluster
/// (healed after the previous run, or a fresh one); reads the agents at rest
/// first when `idle_json` is still null.
fn run_system(
    args: &Paths,
    system: &System,
    scenario: Scenario,
    plan: &FailoverPlan,
    idle_json: &mut Value,
    all_ok: &mut bool,
    runtime: &Handle,
) -> Result<SystemResult> {
    let runs = plan.runs;
    let fault = scenario.fault;
    let logs_root = match system {
        System::Matriarch { .. } => args.out.join("logs"),
        other => args.out.join("logs").join(other.name()),
    };
    let logs = |generation: usize| {
        if generation == 0 {
            logs_root.join(scenario.name())
        } else {
            logs_root.join(format!("{}-{generation}", scenario.name()))
        }
    };
    let parameters = if scenario.under_load {
        super::load::parameters()
    } else {
        Vec::new()
    };
    let start = |generation: usize| {
        let opts = system.options(&args.matriarch, &logs(generation), &parameters);
        Bench::start_with(&opts, true, runtime)
    };
    println!("  -- {}", system.name());
    let mut generation = 0;
    let mut bench = Some(start(0)?);
    if idle_json.is_null() {
        if let Some(b) = bench.as_mut() {
            println!(
                "  idle: reading each agent's memory and CPU for {:.0} s ...",
                plan.idle.as_secs_f64()
            );
            *idle_json = measure_idle(&mut b.cluster, plan.idle)?;
        }
    }
    let mut runs_json = Vec::new();
    let mut outcomes: Vec<RunOutcome> = Vec::new();
    for run in 1..=runs {
        interrupt::check()?;
        // A healthy cluster: healed after the previous run, or a fresh one.
        let healed = Instant::now();
        let mut primary = None;
        if let Some(b) = bench.as_mut() {
            match b.heal() {
                Ok(p) => primary = Some(p),
                Err(DemoError::Interrupted) => return Err(DemoError::Interrupted),
                Err(e) => {
                    println!("  run {run}: the cluster did not heal ({e}); starting a fresh one");
                    bench = None;
                }
            }
        }
        let fresh = primary.is_none();
        if bench.is_none() {
            generation += 1;
            bench = Some(start(generation)?);
        }
        let Some(b) = bench.as_mut() else { continue };
        let primary = match primary {
            Some(p) => p,
            None => b.heal()?,
        };
        let heal_ms = healed.elapsed().as_millis() as u64;
        let load_log = logs(generation).join(format!("pgbench-{run}.log"));
        let load = scenario.under_load.then_some(load_log.as_path());
        match one_run(b, primary, fault, load, run, plan.bound, runtime) {
            Ok(mut outcome) => {
                outcome.json["fresh_cluster"] = json!(fresh);
                outcome.json["heal_ms"] = json!(heal_ms);
                println!(
                    "  run {run}: {} -> {}: writes unavailable {:.3} s, {} acknowledged write(s) missing{}",
                    outcome.json["old_primary"].as_str().unwrap_or("?"),
                    outcome.json["new_primary"].as_str().unwrap_or("?"),
                    outcome.unavailability_ms as f64 / 1000.0,
                    outcome.missing,
                    outcome.old_acks_after.map_or_else(String::new, |n| format!(
                        ", {n} acknowledged by the old primary after the promotion"
                    )),
                );
                runs_json.push(outcome.json.clone());
                outcomes.push(outcome);
            }
            Err(DemoError::Interrupted) => return Err(DemoError::Interrupted),
            Err(e) => {
                *all_ok = false;
                println!("  run {run}: FAILED: {e}");
                let tails = b.cluster.log_tails(30);
                runs_json.push(json!({
                    "run": run, "ok": false, "error": e.to_string(),
                    "fresh_cluster": fresh, "log_tails": tails,
                }));
                // The next run gets a fresh cluster.
                bench = None;
            }
        }
    }
    drop(bench);
    let unavail: Vec<u64> = outcomes.iter().map(|o| o.unavailability_ms).collect();
    let med = median(&unavail);
    let worst = unavail.iter().copied().max();
    let missing_total: usize = outcomes.iter().map(|o| o.missing).sum();
    let old_acks_total: usize = outcomes.iter().filter_map(|o| o.old_acks_after).sum();
    let target_ms = TARGETS_MS
        .iter()
        .find(|(f, _)| *f == fault)
        .map(|(_, t)| *t)
        .filter(|_| matches!(system, System::Matriarch { .. }) && !scenario.under_load);
    let (target_text, target_met) = match (fault, target_ms, med) {
        (_, Some(t), Some(m)) => (
            format!(
                "median <= {:.0} s: {}",
                t as f64 / 1000.0,
                if m <= t as f64 { "met" } else { "NOT met" }
            ),
            Some(m <= t as f64),
        ),
        (Fault::AgentKill, _, Some(_)) => {
            let met = old_acks_total == 0 && missing_total == 0;
            (
                format!("0 writes lost: {}", if met { "met" } else { "NOT met" }),
                Some(met),
            )
        }
        (_, Some(t), None) => (
            format!("median <= {:.0} s: no data", t as f64 / 1000.0),
            Some(false),
        ),
        _ => ("-".to_owned(), None),
    };
    let plot_path = plot_median(args, system, scenario, runs, med, &outcomes)?;
    let json = json!({
        "settings": system.settings(),
        "runs": runs_json,
        "summary": {
            "runs": runs,
            "runs_ok": outcomes.len(),
            "unavailability_ms": unavail,
            "unavailability_median_ms": med,
            "unavailability_worst_ms": worst,
            "missing_acknowledged_total": missing_total,
            "missing_acknowledged_max": outcomes.iter().map(|o| o.missing).max(),
            "old_primary_acks_after_promotion_total": old_acks_total,
            "target": target_text,
            "target_ms": target_ms,
            "target_met": target_met,
        },
        "plot": plot_path,
    });
    Ok(SystemResult {
        json,
        row: Row {
            ok: outcomes.len(),
            runs,
            median_ms: med,
            worst_ms: worst,
            missing: missing_total,
            old_acks: old_acks_total,
            target: target_text,
        },
    })
}

/// Writes the plot of the run closest to the median `med`; its path (null
/// without runs).
fn plot_median(
    args: &Paths,
    system: &System,
    scenario: Scenario,
    runs: usize,
    med: Option<f64>,
    outcomes: &[RunOutcome],
) -> Result<Value> {
    let Some(m) = med else {
        return Ok(Value::Null);
    };
    let Some(o) = outcomes.iter().min_by(|a, b| {
        (a.unavailability_ms as f64 - m)
            .abs()
            .total_cmp(&(b.unavailability_ms as f64 - m).abs())
    }) else {
        return Ok(Value::Null);
    };
    let mut plot = o.plot.clone();
    plot.title = format!(
        "{} failover benchmark: {} (run {} of {}, the median)",
        system.name(),
        scenario.name(),
        o.json["run"],
        runs
    );
    plot.subtitle = format!(
        "{}; write unavailability {:.3} s (median {:.3} s); {} acknowledged writes missing",
        o.json["old_primary"].as_str().unwrap_or("?").to_owned()
            + " -> "
            + o.json["new_primary"].as_str().unwrap_or("?"),
        o.unavailability_ms as f64 / 1000.0,
        m / 1000.0,
        o.missing
    );
    let file = match system {
        System::Matriarch { .. } => format!("failover-{}.svg", scenario.name()),
        other => format!("failover-{}-{}.svg", scenario.name(), other.name()),
    };
    let path = args.out.join(file);
    fs::write(&path, plot.svg())
        .map_err(|e| DemoError::io(format!("writing {}", path.display()), e))?;
    println!("  plot: {}", path.display());
    Ok(json!(path.display().to_string()))
}

/// Runs each scenario of `plan` on matriarch (and on `plan.against`, right
/// after, in the same run), after reading the agents at rest for `plan.idle`;
/// writes `failover.json` and a plot per scenario and system into `args.out`
/// and prints a table. Whether every run completed.
pub fn failover_bench(args: &Paths, plan: &FailoverPlan, runtime: &Handle) -> Result<bool> {
    let started = Instant::now();
    let mut systems = vec![System::Matriarch {
        timing: plan.timing,
    }];
    systems.extend(plan.against.clone());
    println!(
        "matriarch-bench failover: {} run(s) of {} on a three-node loopback cluster of {}\n  results in {}",
        plan.runs,
        plan.scenarios.iter().map(|s| s.name()).collect::<Vec<_>>().join(", "),
        systems.iter().map(System::name).collect::<Vec<_>>().join(" and of "),
        args.out.display()
    );
    let results = |complete: bool, scenario_json: &[Value], idle_json: &[Value]| {
        let mut value = json!({
        "complete": complete,
        "benchmark": "failover",
        "finished_at_unix": unix_time(),
        "took_s": started.elapsed().as_secs(),
        "machine": machine(),
        "matriarch": args.matriarch.display().to_string(),
        "settings": settings_with(&plan.timing),
        "systems": systems.iter().map(System::settings).collect::<Vec<_>>(),
        "method": "one fresh three-node cluster per scenario and system (matriarch, then the one compared, in the same run, on the same etcd, loopback addresses and PostgreSQL settings); between runs the faulted node's agent is restarted and the cluster healed (a primary, two streaming replicas, for matriarch the DNS name on the primary); a failed run gets a fresh cluster. The client finds the primary before each connection by asking every node's REST API GET /primary (both systems alike); matriarch's DNS name is timed as an extra mark. Unavailability: the longest time without an acknowledged write that ends after the fault and starts before the failover is complete (for a crash: last write acknowledged before the fault -> first after it). Old-primary acks after promotion: writes the old primary acknowledged after another member took the lock or left recovery. ratio: the compared system's median over matriarch's.",
        "runs_per_scenario": plan.runs,
        "idle": idle_json[0],
        "scenarios": scenario_json,
        });
        if let Some(other) = &plan.against {
            value[format!("{}_idle", other.name())] = idle_json[1].clone();
        }
        value
    };
    let mut idle_json = vec![Value::Null; systems.len()];
    let mut scenario_json = Vec::new();
    let mut rows = Vec::new();
    let mut all_ok = true;
    for &scenario in &plan.scenarios {
        println!("\n== {}: {}", scenario.name(), scenario.description());
        let mut per_system = Vec::new();
        for (system, idle) in systems.iter().zip(idle_json.iter_mut()) {
            per_system.push(run_system(
                args,
                system,
                scenario,
                plan,
                idle,
                &mut all_ok,
                runtime,
            )?);
        }
        let mut entry = json!({
            "name": scenario.name(),
            "description": scenario.description(),
        });
        // matriarch's runs stay at the top level (as before the comparison).
        for (key, value) in per_system[0].json.as_object().into_iter().flatten() {
            entry[key] = value.clone();
        }
        if let (Some(other), Some(result)) = (&plan.against, per_system.get(1)) {
            entry[other.name()] = result.json.clone();
            entry["ratio_median"] = json!(ratio(per_system[0].row.median_ms, result.row.median_ms));
        }
        scenario_json.push(entry);
        rows.push((
            scenario.name(),
            per_system.into_iter().map(|r| r.row).collect::<Vec<_>>(),
        ));
        // What is done so far, in case a later scenario is interrupted.
        write_json(
            &args.out.join("failover.json"),
            &results(false, &scenario_json, &idle_json),
        )?;
    }
    let path = args.out.join("failover.json");
    write_json(&path, &results(true, &scenario_json, &idle_json))?;
    let names: Vec<&str> = systems.iter().map(System::name).collect();
    print_table(&names, &rows, &idle_json);
    println!(
        "\nResults: {} (took {:.0} s)",
        path.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(all_ok)
}

/// `other / matriarch`, both medians, to two decimals.
fn ratio(matriarch: Option<f64>, other: Option<f64>) -> Option<f64> {
    match (matriarch, other) {
        (Some(m), Some(o)) if m > 0.0 => Some((o / m * 100.0).round() / 100.0),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scenarios_have_names() {
        for fault in Fault::ALL {
            let scenario = Scenario::parse(fault.name()).unwrap();
            assert_eq!((scenario.fault, scenario.under_load), (fault, false));
        }
        let loaded = Scenario::parse("node-crash-under-load").unwrap();
        assert_eq!(loaded, Scenario::NODE_CRASH_UNDER_LOAD);
        assert_eq!(loaded.name(), "node-crash-under-load");
        assert!(loaded.description().contains("dirty"));
        assert_eq!(Scenario::parse("postgres-crash-under-load"), None);
    }

    #[test]
    fn the_ratio_is_the_other_median_over_matriarch_s() {
        assert_eq!(ratio(Some(5000.0), Some(21000.0)), Some(4.2));
        assert_eq!(ratio(Some(0.0), Some(1.0)), None);
        assert_eq!(ratio(None, Some(1.0)), None);
        assert_eq!(ratio(Some(1.0), None), None);
    }
}
