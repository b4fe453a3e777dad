//! The failover benchmark: per scenario a fresh cluster, then N runs of a fault
//! injected into the primary with a client writing every 10 ms, healed between
//! runs; results as JSON, a table and a plot of the median run.

use std::collections::BTreeSet;
use std::fs;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use matriarch_testkit::cluster::Timing;
use serde_json::{json, Value};
use tokio::runtime::Handle;

use super::idle::measure_idle;
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
    let json = json!({
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
    Ok(RunOutcome {
        json,
        unavailability_ms: unavailable.as_millis() as u64,
        missing: missing.len(),
        old_acks_after,
        plot,
    })
}

/// A row of the printed table.
struct Row {
    scenario: &'static str,
    ok: usize,
    runs: usize,
    median_ms: Option<f64>,
    worst_ms: Option<u64>,
    missing: usize,
    old_acks: usize,
    target: String,
}

/// Runs `runs` runs of each of `scenarios` (a fault must be over within `bound`),
/// after reading the agents at rest for `idle`; writes `failover.json` and a plot
/// per scenario into `args.out` and prints a table. Whether every run completed.
/// The clusters use the lock's `timing`.
pub fn failover_bench(
    args: &Paths,
    timing: Timing,
    runs: usize,
    scenarios: &[Fault],
    idle: Duration,
    bound: Duration,
    runtime: &Handle,
) -> Result<bool> {
    let started = Instant::now();
    println!(
        "matriarch-bench failover: {} run(s) of {} on a three-node loopback cluster\n  results in {}",
        runs,
        scenarios.iter().map(|f| f.name()).collect::<Vec<_>>().join(", "),
        args.out.display()
    );
    let logs_root = args.out.join("logs");
    let results = |complete: bool, scenario_json: &[Value], idle_json: &Value| {
        json!({
        "complete": complete,
        "benchmark": "failover",
        "finished_at_unix": unix_time(),
        "took_s": started.elapsed().as_secs(),
        "machine": machine(),
        "matriarch": args.matriarch.display().to_string(),
        "settings": settings_with(&timing),
        "method": "one fresh three-node cluster per scenario; between runs the faulted node's agent is restarted and the cluster healed (a primary, two streaming replicas, the DNS name on the primary); a failed run gets a fresh cluster. Unavailability: the longest time without an acknowledged write that ends after the fault and starts before the failover is complete (for a crash: last write acknowledged before the fault -> first after it). Old-primary acks after promotion: writes the old primary acknowledged after another member took the lock or left recovery.",
        "runs_per_scenario": runs,
        "idle": idle_json,
        "scenarios": scenario_json,
        })
    };
    let mut idle_json = Value::Null;
    let mut scenario_json = Vec::new();
    let mut rows = Vec::new();
    let mut all_ok = true;
    for fault in scenarios {
        println!("\n== {}: {}", fault.name(), fault.description());
        let mut generation = 0;
        let logs = |generation: usize| {
            if generation == 0 {
                logs_root.join(fault.name())
            } else {
                logs_root.join(format!("{}-{generation}", fault.name()))
            }
        };
        let mut bench = Some(Bench::start_with(
            &args.matriarch,
            &logs(0),
            timing,
            1,
            runtime,
        )?);
        if idle_json.is_null() {
            if let Some(b) = bench.as_mut() {
                println!(
                    "  idle: reading each agent's memory and CPU for {:.0} s ...",
                    idle.as_secs_f64()
                );
                idle_json = measure_idle(&mut b.cluster, idle)?;
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
                        println!(
                            "  run {run}: the cluster did not heal ({e}); starting a fresh one"
                        );
                        bench = None;
                    }
                }
            }
            let fresh = primary.is_none();
            if bench.is_none() {
                generation += 1;
                let b = Bench::start_with(&args.matriarch, &logs(generation), timing, 1, runtime)?;
                bench = Some(b);
            }
            let Some(b) = bench.as_mut() else { continue };
            let primary = match primary {
                Some(p) => p,
                None => b.heal()?,
            };
            let heal_ms = healed.elapsed().as_millis() as u64;
            match one_run(b, primary, *fault, run, bound, runtime) {
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
                    all_ok = false;
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
        let target_ms = TARGETS_MS.iter().find(|(f, _)| f == fault).map(|(_, t)| *t);
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
        // The plot: the median run.
        let mut plot_path = Value::Null;
        if let Some(m) = med {
            let pick = outcomes
                .iter()
                .enumerate()
                .min_by(|a, b| {
                    (a.1.unavailability_ms as f64 - m)
                        .abs()
                        .total_cmp(&(b.1.unavailability_ms as f64 - m).abs())
                })
                .map(|(i, _)| i);
            if let Some(i) = pick {
                let o = &outcomes[i];
                let mut plot = o.plot.clone();
                plot.title = format!(
                    "matriarch failover benchmark: {} (run {} of {}, the median)",
                    fault.name(),
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
                let path = args.out.join(format!("failover-{}.svg", fault.name()));
                fs::write(&path, plot.svg())
                    .map_err(|e| DemoError::io(format!("writing {}", path.display()), e))?;
                println!("  plot: {}", path.display());
                plot_path = json!(path.display().to_string());
            }
        }
        scenario_json.push(json!({
            "name": fault.name(),
            "description": fault.description(),
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
        }));
        rows.push(Row {
            scenario: fault.name(),
            ok: outcomes.len(),
            runs,
            median_ms: med,
            worst_ms: worst,
            missing: missing_total,
            old_acks: old_acks_total,
            target: target_text,
        });
        // What is done so far, in case a later scenario is interrupted.
        write_json(
            &args.out.join("failover.json"),
            &results(false, &scenario_json, &idle_json),
        )?;
    }
    let path = args.out.join("failover.json");
    write_json(&path, &results(true, &scenario_json, &idle_json))?;
    print_table(&rows, &idle_json);
    println!(
        "\nResults: {} (took {:.0} s)",
        path.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(all_ok)
}

/// Prints the scenarios' rows and the agents' idle figures.
fn print_table(rows: &[Row], idle: &Value) {
    let secs =
        |ms: Option<f64>| ms.map_or_else(|| "-".to_owned(), |m| format!("{:.3} s", m / 1000.0));
    let headers = [
        "scenario",
        "runs ok",
        "median",
        "worst",
        "missing acked",
        "old-primary acks after promotion",
        "target",
    ];
    let cells: Vec<[String; 7]> = rows
        .iter()
        .map(|r| {
            [
                r.scenario.to_owned(),
                format!("{}/{}", r.ok, r.runs),
                secs(r.median_ms),
                secs(r.worst_ms.map(|w| w as f64)),
                r.missing.to_string(),
                r.old_acks.to_string(),
                r.target.clone(),
            ]
        })
        .collect();
    let mut widths = headers.map(str::len);
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.len());
        }
    }
    let line = |c: [&str; 7]| {
        c.iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    println!(
        "\nWrite unavailability (last acknowledged write before the fault -> first after it):"
    );
    println!("{}", line(headers));
    println!(
        "{}",
        line(widths.map(|w| "-".repeat(w)).each_ref().map(String::as_str))
    );
    for row in &cells {
        println!("{}", line(row.each_ref().map(String::as_str)));
    }
    if let Some(agents) = idle["agents"].as_array() {
        println!(
            "\nAgents at idle over {:.0} s (VmRSS; CPU = utime + stime):",
            idle["seconds"].as_f64().unwrap_or(0.0)
        );
        for a in agents {
            println!(
                "  {} ({}): RSS {:.1} MiB (max {:.1} MiB), CPU {:.2} s = {:.2} %; fence watchdog RSS {}",
                a["name"].as_str().unwrap_or("?"),
                a["role"].as_str().unwrap_or("?"),
                a["rss_kb"].as_f64().unwrap_or(0.0) / 1024.0,
                a["rss_max_kb"].as_f64().unwrap_or(0.0) / 1024.0,
                a["cpu_seconds"].as_f64().unwrap_or(0.0),
                a["cpu_percent"].as_f64().unwrap_or(0.0),
                a["fence"]["rss_kb"]
                    .as_f64()
                    .map_or_else(|| "-".to_owned(), |kb| format!("{:.1} MiB", kb / 1024.0)),
            );
        }
        println!(
            "  target: RSS <= 15 MiB: {}",
            if idle["rss_target_met"].as_bool() == Some(true) {
                "met"
            } else {
                "NOT met"
            }
        );
    }
}
