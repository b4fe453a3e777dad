//! `matriarch-bench` (run by `cargo xtask bench`): failover and stability benchmarks
//! of the `matriarch` daemon on the demo's three-node loopback cluster.
//!
//! ```text
//! matriarch-bench failover [--runs N] [--scenario NAME]... [--idle-seconds S]
//!                          [--bound SECS] [--matriarch PATH] [--out DIR]
//! matriarch-bench stability [--minutes M] [--matriarch PATH] [--out DIR]
//! ```
//!
//! `failover`: for each scenario (node-crash, postgres-crash, agent-kill, switchover,
//! sigterm; all by default) a fresh cluster, then N runs: a client writes a row every
//! 10 ms through the DNS name, the fault is injected into the primary and the
//! failover timed (see `matriarch_demo::failover`); after each run the faulted node
//! is restarted and the cluster healed (a primary, two streaming replicas, the DNS
//! name on the primary) for the next run; a failed run gets a fresh cluster. Before
//! the first scenario, each agent's idle memory (VmRSS) and CPU time (utime + stime)
//! are read over `--idle-seconds`. Results: `<out>/failover.json`, a plot per
//! scenario `<out>/failover-<scenario>.svg` (its median run), and a table on stdout.
//!
//! `stability`: a fresh cluster, `pgbench -i` and `pgbench -T <minutes>` at default
//! settings against the primary, while the leader key is watched; every change of
//! leadership is a failover that nothing caused. Results: `<out>/stability.json`.
//!
//! Exit status: 0 when every run completed (and, for stability, no leadership
//! changed); 1 otherwise; 2 for a usage error; 130 when interrupted.

use std::collections::BTreeSet;
use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use tokio::runtime::Handle;

use matriarch_demo::cluster::{Cluster, PG_PASSWORD, PG_USER};
use matriarch_demo::error::{DemoError, Result};
use matriarch_demo::failover::{self, acks_by_after, inject_and_measure, longest_gap, Fault};
use matriarch_demo::timeline::offset_ms;
use matriarch_demo::watch::{LeaderWatch, LockEvent};
use matriarch_demo::writer::{self, Target, Writer};
use matriarch_demo::{interrupt, procstat};

const USAGE: &str = "\
usage: matriarch-bench failover [--runs N] [--scenario NAME]... [--idle-seconds S] [--bound SECS]
                               [--matriarch PATH] [--out DIR]
       matriarch-bench stability [--minutes M] [--matriarch PATH] [--out DIR]

  --runs N           runs per scenario (default 5)
  --scenario NAME    node-crash, postgres-crash, agent-kill, switchover or sigterm;
                     repeat for several (default: all)
  --idle-seconds S   how long the agents' idle CPU and memory are measured (default 60)
  --bound SECS       a run fails when the failover is not complete within this (default 60)
  --minutes M        stability: how long pgbench runs (default 10; fractions allowed)
  --matriarch PATH   the matriarch binary (default: `matriarch` next to this program)
  --out DIR          results (default: target/bench, next to the binary's target/<profile>)
";

/// How often the client writes.
const WRITE_INTERVAL: Duration = Duration::from_millis(10);
/// How long the client writes before the fault.
const BEFORE: Duration = Duration::from_secs(2);
/// How long the client keeps writing once the failover is complete.
const AFTER: Duration = Duration::from_millis(2500);
/// Targets of issue 9 (median write unavailability), in milliseconds.
const TARGETS_MS: [(Fault, u64); 3] = [
    (Fault::NodeCrash, 5_000),
    (Fault::PostgresCrash, 2_000),
    (Fault::Switchover, 1_000),
];
/// Target for an agent's idle memory: 15 MB, taken as 15 MiB of VmRSS.
const RSS_TARGET_KB: u64 = 15 * 1024;

#[derive(Debug)]
enum Mode {
    Failover {
        runs: usize,
        scenarios: Vec<Fault>,
        idle: Duration,
        bound: Duration,
    },
    Stability {
        duration: Duration,
    },
}

#[derive(Debug)]
struct Args {
    mode: Mode,
    matriarch: PathBuf,
    out: PathBuf,
}

fn usage(message: impl std::fmt::Display) -> DemoError {
    DemoError::Usage(format!("{message}\n\n{USAGE}"))
}

fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Option<Args>> {
    let mut args = args.into_iter();
    let command = match args.next() {
        None => return Err(usage("a command is needed: failover or stability")),
        Some(c) if c == "-h" || c == "--help" => return Ok(None),
        Some(c) => c,
    };
    let mut runs = 5usize;
    let mut scenarios = Vec::new();
    let mut idle = 60.0f64;
    let mut bound = 60.0f64;
    let mut minutes = 10.0f64;
    let mut matriarch = None;
    let mut out = None;
    while let Some(flag) = args.next() {
        if flag == "-h" || flag == "--help" {
            return Ok(None);
        }
        let value = args
            .next()
            .ok_or_else(|| usage(format!("{flag} needs a value")))?;
        let number = |v: &str| {
            v.parse::<f64>()
                .ok()
                .filter(|n| n.is_finite() && *n > 0.0)
                .ok_or_else(|| usage(format!("{flag} needs a positive number, got `{v}`")))
        };
        match (command.as_str(), flag.as_str()) {
            (_, "--matriarch") => matriarch = Some(PathBuf::from(value)),
            (_, "--out") => out = Some(PathBuf::from(value)),
            ("failover", "--runs") => {
                runs = value.parse().ok().filter(|n| *n > 0).ok_or_else(|| {
                    usage(format!(
                        "--runs needs a positive whole number, got `{value}`"
                    ))
                })?;
            }
            ("failover", "--scenario") => {
                let fault = Fault::parse(&value)
                    .ok_or_else(|| usage(format!("unknown scenario `{value}`")))?;
                if !scenarios.contains(&fault) {
                    scenarios.push(fault);
                }
            }
            ("failover", "--idle-seconds") => idle = number(&value)?,
            ("failover", "--bound") => bound = number(&value)?,
            ("stability", "--minutes") => minutes = number(&value)?,
            _ => return Err(usage(format!("unknown argument `{flag}` for `{command}`"))),
        }
    }
    let mode = match command.as_str() {
        "failover" => Mode::Failover {
            runs,
            scenarios: if scenarios.is_empty() {
                Fault::ALL.to_vec()
            } else {
                scenarios
            },
            idle: Duration::from_secs_f64(idle),
            bound: Duration::from_secs_f64(bound),
        },
        "stability" => Mode::Stability {
            duration: Duration::from_secs_f64(minutes * 60.0),
        },
        other => return Err(usage(format!("unknown command `{other}`"))),
    };
    let exe_dir = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("."));
    let matriarch = matriarch.unwrap_or_else(|| exe_dir.join("matriarch"));
    // target/release/matriarch -> target/bench
    let out = out.unwrap_or_else(|| {
        matriarch
            .parent()
            .and_then(Path::parent)
            .map(|target| target.join("bench"))
            .unwrap_or_else(|| PathBuf::from("bench"))
    });
    Ok(Some(Args {
        mode,
        matriarch,
        out,
    }))
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(Some(args)) => args,
        Ok(None) => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("matriarch-bench: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("matriarch-bench: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = interrupt::install(runtime.handle()).and_then(|()| {
        fs::create_dir_all(&args.out)
            .map_err(|e| DemoError::io(format!("creating {}", args.out.display()), e))?;
        match &args.mode {
            Mode::Failover {
                runs,
                scenarios,
                idle,
                bound,
            } => failover_bench(&args, *runs, scenarios, *idle, *bound, runtime.handle()),
            Mode::Stability { duration } => stability_bench(&args, *duration, runtime.handle()),
        }
    });
    runtime.shutdown_timeout(Duration::from_secs(2));
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(DemoError::Interrupted) => {
            eprintln!("matriarch-bench: interrupted; everything was stopped");
            ExitCode::from(130)
        }
        Err(e @ DemoError::Usage(_)) => {
            eprintln!("matriarch-bench: {e}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("\nmatriarch-bench FAILED: {e}");
            ExitCode::FAILURE
        }
    }
}

// ---------------------------------------------------------------------------- common

/// A running cluster with the client's target and a watch of the leader key.
struct Bench {
    // Dropped first: the watch talks to the cluster's etcd.
    watch: LeaderWatch,
    target: Target,
    cluster: Cluster,
}

impl Bench {
    /// A fresh cluster, healthy, with the DNS name on the primary and an empty table.
    fn start(matriarch: &Path, logs: &Path, runtime: &Handle) -> Result<Bench> {
        let mut cluster = Cluster::start(matriarch, logs)?;
        let ready = Bench::ready(&mut cluster, runtime);
        let (primary, target) = match ready {
            Ok(ready) => ready,
            Err(e) => {
                if e.wants_logs() {
                    eprintln!("{}", cluster.log_tails(30));
                }
                return Err(e);
            }
        };
        let watch = LeaderWatch::start(&cluster.etcd.client_url(), &cluster.leader_key())?;
        let _ = primary;
        Ok(Bench {
            watch,
            target,
            cluster,
        })
    }

    fn ready(cluster: &mut Cluster, runtime: &Handle) -> Result<(usize, Target)> {
        let primary = cluster.wait_healthy(Duration::from_secs(180))?;
        cluster.wait_dns(cluster.nodes[primary].ip, Duration::from_secs(30))?;
        let target = Target {
            dns_server: cluster.dns_server(),
            name: cluster.writer_name(),
            port: cluster.nodes[primary].pg_port,
            user: PG_USER.to_owned(),
            password: PG_PASSWORD.to_owned(),
        };
        runtime
            .block_on(writer::fresh_table(&target))
            .map_err(|detail| DemoError::Sql {
                target: target.name.clone(),
                detail,
            })?;
        Ok((primary, target))
    }

    /// Restarts stopped agents and waits for a primary, two streaming replicas and
    /// the DNS name on the primary: the primary's index.
    fn heal(&mut self) -> Result<usize> {
        let matriarch = self.cluster.matriarch.clone();
        for node in &mut self.cluster.nodes {
            if !node.is_running() {
                node.start(&matriarch)?;
            }
        }
        let primary = self.cluster.wait_healthy(Duration::from_secs(180))?;
        self.cluster.settle()?;
        self.cluster
            .wait_dns(self.cluster.nodes[primary].ip, Duration::from_secs(30))?;
        Ok(primary)
    }
}

/// Median of sorted-or-not values (the mean of the middle two for an even count).
fn median(values: &[u64]) -> Option<f64> {
    let mut v = values.to_vec();
    v.sort_unstable();
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(v[n / 2] as f64),
        _ => Some((v[n / 2 - 1] + v[n / 2]) as f64 / 2.0),
    }
}

fn first_line_of(path: &str, prefix: &str) -> Option<String> {
    fs::read_to_string(path)
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(prefix))
        .map(|v| v.trim().trim_start_matches(':').trim().to_owned())
}

/// The machine the figures come from.
fn machine() -> Value {
    let output = |cmd: &str, args: &[&str]| {
        Command::new(cmd)
            .args(args)
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    json!({
        "nproc": output("nproc", &[]).and_then(|n| n.parse::<u64>().ok()),
        "kernel": output("uname", &["-r"]),
        "cpu_model": first_line_of("/proc/cpuinfo", "model name"),
        "memory": first_line_of("/proc/meminfo", "MemTotal"),
        "postgresql": output(
            &matriarch_testkit::bin_dir().join("postgres").display().to_string(),
            &["--version"]
        ),
    })
}

fn unix_time() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn write_json(path: &Path, value: &Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| DemoError::Setup(format!("cannot encode {}: {e}", path.display())))?;
    fs::write(path, text + "\n")
        .map_err(|e| DemoError::io(format!("writing {}", path.display()), e))
}

fn settings() -> Value {
    json!({
        "ttl_s": 5, "loop_wait_s": 1, "retry_timeout_s": 2,
        "replication": "asynchronous",
        "dns_record_ttl_s": 1,
        "write_interval_ms": WRITE_INTERVAL.as_millis() as u64,
    })
}

// ---------------------------------------------------------------------------- idle

/// Each agent's (and its fence watchdog's) memory and CPU over `idle`.
fn measure_idle(cluster: &mut Cluster, idle: Duration) -> Result<Value> {
    cluster.settle()?;
    let primary = cluster.primary();
    let mut procs: Vec<(String, String, u32, Option<u32>)> = Vec::new();
    for (i, node) in cluster.nodes.iter().enumerate() {
        let Some(pid) = node.agent_pid() else {
            continue;
        };
        let fence = procstat::children(pid)
            .into_iter()
            .find(|c| procstat::cmdline(*c).contains(" fence"));
        let role = if Some(i) == primary {
            "primary"
        } else {
            "replica"
        };
        procs.push((node.name.clone(), role.to_owned(), pid, fence));
    }
    let read = |pid: Option<u32>| pid.and_then(procstat::sample);
    let before: Vec<_> = procs.iter().map(|p| (read(Some(p.2)), read(p.3))).collect();
    let mut max_rss: Vec<u64> = before
        .iter()
        .map(|(a, _)| a.map_or(0, |s| s.rss_kb))
        .collect();
    let start = Instant::now();
    while start.elapsed() < idle {
        interrupt::sleep((idle - start.elapsed()).min(Duration::from_secs(1)))?;
        for (i, p) in procs.iter().enumerate() {
            if let Some(s) = read(Some(p.2)) {
                max_rss[i] = max_rss[i].max(s.rss_kb);
            }
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    let tick = procstat::ticks_per_second();
    let after: Vec<_> = procs.iter().map(|p| (read(Some(p.2)), read(p.3))).collect();
    let cpu = |b: Option<procstat::Sample>, a: Option<procstat::Sample>| {
        Some(a?.cpu_ticks.saturating_sub(b?.cpu_ticks) as f64 / tick)
    };
    let agents: Vec<Value> = procs
        .iter()
        .enumerate()
        .map(|(i, (name, role, pid, fence))| {
            let (b, bf) = before[i];
            let (a, af) = after[i];
            let cpu_s = cpu(b, a);
            json!({
                "name": name,
                "role": role,
                "pid": pid,
                "rss_kb": a.map(|s| s.rss_kb),
                "rss_max_kb": max_rss[i],
                "rss_peak_kb": a.map(|s| s.hwm_kb),
                "cpu_seconds": cpu_s,
                "cpu_percent": cpu_s.map(|c| c / seconds * 100.0),
                "fence": fence.map(|f| json!({
                    "pid": f,
                    "rss_kb": af.map(|s| s.rss_kb),
                    "cpu_seconds": cpu(bf, af),
                })),
            })
        })
        .collect();
    let worst_rss = max_rss.iter().copied().max().unwrap_or(0);
    Ok(json!({
        "seconds": seconds,
        "agents": agents,
        "rss_max_kb": worst_rss,
        "rss_target_kb": RSS_TARGET_KB,
        "rss_target_met": worst_rss > 0 && worst_rss <= RSS_TARGET_KB,
    }))
}

// ---------------------------------------------------------------------------- failover

/// One completed run.
struct RunOutcome {
    json: Value,
    unavailability_ms: u64,
    missing: usize,
    old_acks_after: Option<usize>,
    plot: matriarch_demo::plot::Plot,
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

fn failover_bench(
    args: &Args,
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
        "settings": settings(),
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
        let mut bench = Some(Bench::start(&args.matriarch, &logs(0), runtime)?);
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
                let b = Bench::start(&args.matriarch, &logs(generation), runtime)?;
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

// ---------------------------------------------------------------------------- stability

fn stability_bench(args: &Args, duration: Duration, runtime: &Handle) -> Result<bool> {
    println!(
        "matriarch-bench stability: pgbench for {:.1} min against the primary, watching the leader lock",
        duration.as_secs_f64() / 60.0
    );
    let logs = args.out.join("logs").join("stability");
    let mut bench = Bench::start(&args.matriarch, &logs, runtime)?;
    let primary = bench.cluster.wait_healthy(Duration::from_secs(60))?;
    let first = bench.cluster.nodes[primary].name.clone();
    let ip = bench.cluster.nodes[primary].ip;
    let port = bench.target.port;
    let pgbench = matriarch_testkit::bin_dir().join("pgbench");
    let pg = |extra: &[String]| {
        let mut cmd = Command::new(&pgbench);
        cmd.args([
            "-h",
            &ip.to_string(),
            "-p",
            &port.to_string(),
            "-U",
            PG_USER,
        ])
        .args(extra)
        .arg("postgres")
        .env("PGPASSWORD", PG_PASSWORD)
        .stdin(Stdio::null());
        cmd
    };
    println!("  primary: {first} ({ip}); pgbench -i ...");
    let init = pg(&["-i".to_owned(), "-q".to_owned()])
        .output()
        .map_err(|e| DemoError::io(format!("running {}", pgbench.display()), e))?;
    if !init.status.success() {
        return Err(DemoError::Setup(format!(
            "pgbench -i failed: {}",
            String::from_utf8_lossy(&init.stderr)
        )));
    }
    let secs = duration.as_secs().max(1);
    let log_path = logs.join("pgbench.log");
    let log = fs::File::create(&log_path)
        .map_err(|e| DemoError::io(format!("creating {}", log_path.display()), e))?;
    let log2 = log
        .try_clone()
        .map_err(|e| DemoError::io(format!("opening {}", log_path.display()), e))?;
    let start = Instant::now();
    println!("  pgbench -T {secs} (default settings: scale 1, 1 client) ...");
    let mut child = pg(&["-T".to_owned(), secs.to_string()])
        .stdout(log)
        .stderr(log2)
        .spawn()
        .map_err(|e| DemoError::io(format!("running {}", pgbench.display()), e))?;
    let mut reported = 0;
    let status = loop {
        if let Err(e) = interrupt::check() {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => {}
            Err(e) => return Err(DemoError::io("waiting for pgbench", e)),
        }
        let minutes = start.elapsed().as_secs() / 60;
        if minutes > reported {
            // A sign of life once a minute.
            reported = minutes;
            println!("  {minutes} min ...");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let took = start.elapsed();
    // Leadership changes seen by the watch: the lock deleted, or held by another.
    let mut holder = first.clone();
    let mut changes = Vec::new();
    for (at, event) in bench.watch.events_since(start) {
        let t = at.duration_since(start).as_secs_f64();
        match event {
            LockEvent::Released => {
                changes.push(json!({"t_s": t, "event": format!("lock of {holder} deleted")}))
            }
            LockEvent::Held(h) if h != holder => {
                changes.push(json!({"t_s": t, "event": format!("lock taken by {h}")}));
                holder = h;
            }
            LockEvent::Held(_) => {}
        }
    }
    let after = bench
        .cluster
        .primary()
        .map(|i| bench.cluster.nodes[i].name.clone());
    let failovers = changes
        .iter()
        .filter(|c| {
            c["event"]
                .as_str()
                .is_some_and(|e| e.starts_with("lock taken"))
        })
        .count();
    let lock_losses = changes.len() - failovers;
    let output = fs::read_to_string(&log_path).unwrap_or_default();
    let find = |prefix: &str| {
        output
            .lines()
            .find_map(|l| l.trim().strip_prefix(prefix))
            .map(|v| v.trim().to_owned())
    };
    let tps = find("tps = ").and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok());
    let transactions =
        find("number of transactions actually processed:").and_then(|v| v.parse::<u64>().ok());
    let failed = find("number of failed transactions:");
    let results = json!({
        "benchmark": "stability",
        "finished_at_unix": unix_time(),
        "machine": machine(),
        "matriarch": args.matriarch.display().to_string(),
        "settings": settings(),
        "minutes": took.as_secs_f64() / 60.0,
        "pgbench": {
            "command": format!("pgbench -i; pgbench -T {secs} (scale 1, 1 client, 1 thread) against the primary {ip}:{port}"),
            "exit": status.to_string(),
            "ok": status.success(),
            "tps": tps,
            "transactions": transactions,
            "failed_transactions": failed,
            "log": log_path.display().to_string(),
        },
        "primary_before": first,
        "primary_after": after,
        "leadership_changes": changes,
        "lock_losses": lock_losses,
        "failovers_without_cause": failovers,
    });
    let path = args.out.join("stability.json");
    write_json(&path, &results)?;
    bench.cluster.shutdown();
    println!(
        "\n  pgbench: {} ({} transactions, {} tps)\n  leadership changes: {}; failovers nothing caused: {failovers} (must be 0)\n  primary before: {first}, after: {}\nResults: {}",
        status,
        transactions.map_or_else(|| "?".into(), |t| t.to_string()),
        tps.map_or_else(|| "?".into(), |t| format!("{t:.0}")),
        changes.len(),
        after.as_deref().unwrap_or("none"),
        path.display()
    );
    Ok(status.success() && changes.is_empty() && after.as_deref() == Some(first.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(list: &[&str]) -> Result<Option<Args>> {
        parse_args(list.iter().map(|s| (*s).to_owned()))
    }

    #[test]
    fn arguments_are_parsed() {
        let args = parse(&[
            "failover",
            "--runs",
            "2",
            "--scenario",
            "switchover",
            "--idle-seconds",
            "2",
            "--matriarch",
            "/x/target/release/matriarch",
        ])
        .unwrap()
        .unwrap();
        assert_eq!(args.out, PathBuf::from("/x/target/bench"));
        match args.mode {
            Mode::Failover {
                runs,
                scenarios,
                idle,
                ..
            } => {
                assert_eq!(runs, 2);
                assert_eq!(scenarios, vec![Fault::Switchover]);
                assert_eq!(idle, Duration::from_secs(2));
            }
            other => panic!("{other:?}"),
        }
        let args = parse(&["stability", "--minutes", "0.5"]).unwrap().unwrap();
        assert!(
            matches!(args.mode, Mode::Stability { duration } if duration == Duration::from_secs(30))
        );
        assert!(parse(&["--help"]).unwrap().is_none());
        for bad in [
            &["failover", "--runs", "0"][..],
            &["failover", "--scenario", "meteor"],
            &["stability", "--runs", "3"],
            &["failover", "--idle-seconds"],
            &["dance"],
            &[],
        ] {
            assert!(matches!(parse(bad), Err(DemoError::Usage(_))), "{bad:?}");
        }
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3, 1, 2]), Some(2.0));
        assert_eq!(median(&[4, 1, 2, 3]), Some(2.5));
    }
}
