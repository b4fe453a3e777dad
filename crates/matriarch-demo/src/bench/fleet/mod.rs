//! The fleet benchmark (`matriarch-bench fleet`): N clusters of three agents,
//! all in this process, on one three-member etcd on loopback. For each N it
//! measures etcd's writes, the watch events the agents receive, the CPU and
//! memory of etcd and of the agents at rest, then the failover time of one
//! cluster (its primary's agent and PostgreSQL crash) while the others run.
//!
//! The agents are the real [`matriarch_ha::Engine`] (the loop `matriarch run`
//! drives) on the real etcd backend, one [`matriarch_etcd::EtcdDcs`] client
//! each, as in a deployment of one agent per host: a client owns one lease
//! (the member's TTL), so two agents cannot share one. PostgreSQL is the
//! in-memory twin of `matriarch_postgres::memory` (held to the same
//! conformance suite as the real controller), so that 600 agents fit on two
//! cores: the benchmark measures the agents and etcd, not PostgreSQL.

mod agents;
pub mod plot;
pub mod report;

use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use matriarch_dcs::Dcs;
use matriarch_etcd::{EtcdConfig, EtcdDcs};
use matriarch_model::ClusterConfig;
use matriarch_testkit::EtcdCluster;
use serde_json::{json, Value};
use tokio::runtime::Handle;

use self::agents::{CounterValues, Counters, FleetCluster, FleetSetup, MEMBERS};
use self::report::{FailoverRun, FleetFigures, Resources};
use super::{machine, unix_time, write_json};
use crate::error::{DemoError, Result};
use crate::{interrupt, procstat};

/// What `matriarch-bench fleet` runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FleetOptions {
    /// The fleet sizes, in clusters, run one after the other.
    pub clusters: Vec<usize>,
    /// How long the fleet is measured at rest.
    pub idle: Duration,
    /// Failovers per fleet size (the median is reported).
    pub runs: usize,
    /// A failover (or the fleet's start) fails when not complete within this.
    pub bound: Duration,
}

/// The fleet sizes run by default.
pub const DEFAULT_CLUSTERS: [usize; 5] = [1, 10, 50, 100, 200];

/// How often the in-memory primaries ship their WAL to the replicas and,
/// while the clients write, each cluster's client commits one write.
const CLIENT_TICK: Duration = Duration::from_millis(250);

/// How often a failover is polled for.
const FAILOVER_POLL: Duration = Duration::from_millis(10);

/// Runs every fleet size of `options`; writes `<out>/fleet.json`, `<out>/fleet.svg`
/// and prints a table. `Ok(true)` when every size started and every failover completed.
pub fn fleet_bench(out: &Path, options: &FleetOptions, runtime: &Handle) -> Result<bool> {
    let _context = runtime.enter();
    let mut sizes = Vec::new();
    let mut all_ok = true;
    for &clusters in &options.clusters {
        println!("fleet: {clusters} cluster(s) of {MEMBERS} agents on a three-member etcd");
        let etcd = EtcdCluster::start(3).map_err(|source| DemoError::Service {
            what: "etcd (three members)",
            source,
        })?;
        match run_size(&etcd, clusters, options, runtime) {
            Ok(figures) => {
                println!("{}", figures.summary());
                all_ok &= figures.failed_failovers == 0;
                sizes.push(figures);
            }
            Err(DemoError::Interrupted) => return Err(DemoError::Interrupted),
            Err(e) => {
                eprintln!("fleet: {clusters} cluster(s) failed: {e}");
                all_ok = false;
                sizes.push(FleetFigures::failed(clusters, e.to_string()));
            }
        }
    }
    let goal = report::goal(&sizes);
    let results = json!({
        "benchmark": "fleet",
        "unix_time": unix_time(),
        "machine": machine(),
        "settings": settings(options),
        "sizes": sizes.iter().map(FleetFigures::json).collect::<Vec<Value>>(),
        "goal": goal.as_ref().map(report::Goal::json),
    });
    write_json(&out.join("fleet.json"), &results)?;
    let svg = out.join("fleet.svg");
    fs::write(&svg, plot::fleet_svg(&sizes))
        .map_err(|e| DemoError::io(format!("writing {}", svg.display()), e))?;
    println!("\n{}", report::table(&sizes));
    match &goal {
        Some(goal) => println!("{}", goal.sentence()),
        None => println!("goal: needs a completed run at N = 1 and at a larger N"),
    }
    println!(
        "results: {} and {}",
        out.join("fleet.json").display(),
        svg.display()
    );
    Ok(all_ok)
}

/// The settings of every agent and of the run, for the results.
fn settings(options: &FleetOptions) -> Value {
    let config = ClusterConfig::default();
    json!({
        "members_per_cluster": MEMBERS,
        "etcd_members": 3,
        "ttl_s": config.ttl.as_secs_f64(),
        "loop_wait_s": config.loop_wait.as_secs_f64(),
        "retry_timeout_s": config.retry_timeout.as_secs_f64(),
        "idle_seconds": options.idle.as_secs_f64(),
        "failovers_per_size": options.runs,
        "bound_s": options.bound.as_secs_f64(),
        "postgres": "in-memory twin (matriarch_postgres::memory), WAL shipped every 250 ms",
        "client_commit_interval_ms_while_writing": CLIENT_TICK.as_millis() as u64,
        "dcs_clients": "one EtcdDcs per agent, endpoints rotated by member index",
    })
}

/// A reading of what one fleet size costs: etcd's revision, the watch
/// counters, each etcd member's and this process's CPU and memory.
struct Reading {
    at: Instant,
    revision: u64,
    counters: CounterValues,
    etcd: Vec<Option<procstat::Sample>>,
    process: Option<procstat::Sample>,
}

impl Reading {
    /// The etcd members' VmRSS together.
    fn etcd_rss_kb(&self) -> u64 {
        self.etcd.iter().flatten().map(|s| s.rss_kb).sum()
    }
}

/// Reads etcd's current revision (a read of an empty scope) and the rest.
fn read(
    probe: &EtcdDcs,
    etcd: &EtcdCluster,
    counters: &Counters,
    runtime: &Handle,
) -> Result<Reading> {
    let view = runtime
        .block_on(probe.read_view())
        .map_err(|e| DemoError::Setup(format!("reading etcd's revision: {e}")))?;
    Ok(Reading {
        at: Instant::now(),
        revision: view.revision,
        counters: counters.read(),
        etcd: etcd
            .members()
            .iter()
            .map(|m| m.pid().and_then(procstat::sample))
            .collect(),
        process: procstat::sample(std::process::id()),
    })
}

/// Waits until every cluster has a leader and two streaming replicas.
fn wait_all_healthy(clusters: &[FleetCluster], bound: Duration) -> Result<()> {
    let start = Instant::now();
    let mut last_report = Instant::now();
    interrupt::wait_for(
        "every cluster healthy",
        bound,
        Duration::from_millis(250),
        || {
            let healthy = clusters
                .iter()
                .filter(|c| c.healthy_leader().is_some())
                .count();
            if last_report.elapsed() >= Duration::from_secs(5) {
                println!(
                    "  {healthy}/{} clusters healthy after {:.0} s",
                    clusters.len(),
                    start.elapsed().as_secs_f64()
                );
                last_report = Instant::now();
            }
            (healthy == clusters.len()).then_some(())
        },
    )
}

/// Starts `count` clusters, measures them at rest, then fails one over `options.runs` times.
fn run_size(
    etcd: &EtcdCluster,
    count: usize,
    options: &FleetOptions,
    runtime: &Handle,
) -> Result<FleetFigures> {
    let counters = Arc::new(Counters::default());
    let setup = FleetSetup {
        endpoints: etcd.client_urls(),
        config: ClusterConfig::default(),
        counters: Arc::clone(&counters),
    };
    let probe = EtcdDcs::new(&EtcdConfig::new(etcd.client_urls(), "fleet-probe"))
        .map_err(|e| DemoError::Setup(format!("etcd probe client: {e}")))?;
    let rss_before_kb = procstat::sample(std::process::id()).map_or(0, |s| s.rss_kb);

    let started = Instant::now();
    let mut clusters = Vec::with_capacity(count);
    for index in 0..count {
        clusters.push(FleetCluster::start(&setup, index)?);
    }
    let writing = Arc::new(AtomicBool::new(false));
    let client = tokio::spawn(clients(
        clusters.iter().map(|c| c.postgres.clone()).collect(),
        Arc::clone(&writing),
    ));
    let start_bound = options.bound + Duration::from_millis(500) * count as u32;
    let healthy = wait_all_healthy(&clusters, start_bound);
    let start_seconds = started.elapsed().as_secs_f64();
    let result = healthy.and_then(|()| {
        println!("  all {count} clusters healthy after {start_seconds:.1} s");
        // Let the bootstrap's last writes (history, member records) drain.
        interrupt::sleep(Duration::from_secs(5))?;
        let rest = measure_idle(&probe, etcd, &counters, options.idle, runtime)?;
        println!("  at rest: {}", rest.summary());
        writing.store(true, Ordering::Relaxed);
        interrupt::sleep(Duration::from_secs(5))?;
        let loaded = measure_idle(&probe, etcd, &counters, options.idle, runtime)?;
        println!("  writing: {}", loaded.summary());
        let before = read(&probe, etcd, &counters, runtime)?;
        let mut runs = Vec::new();
        let mut failed = 0;
        for run in 0..options.runs {
            match fail_over(&setup, &mut clusters[0], run, options.bound, runtime) {
                Ok(r) => {
                    println!("  failover {}: {}", run + 1, r.summary());
                    runs.push(r);
                }
                Err(DemoError::Interrupted) => return Err(DemoError::Interrupted),
                Err(e) => {
                    // The cluster is left as it is: the next runs would not
                    // start from a healthy cluster.
                    eprintln!("  failover {} failed: {e}; no more runs", run + 1);
                    failed = options.runs - run;
                    break;
                }
            }
        }
        let after = read(&probe, etcd, &counters, runtime)?;
        Ok(FleetFigures {
            failover_phase: Some(resources(&before, &after, before.etcd_rss_kb(), 0)),
            clusters: count,
            start_seconds,
            rest: Some(rest),
            writing: Some(loaded),
            failovers: runs,
            failed_failovers: failed,
            agents_rss_kb: after
                .process
                .map_or(0, |s| s.rss_kb.saturating_sub(rss_before_kb)),
            error: None,
        })
    });
    client.abort();
    drop(clusters);
    result
}

/// Every cluster's client and WAL shipping: each tick, the primaries' WAL is
/// shipped to their replicas and, while `writing`, each running primary
/// commits one write (so that WAL positions, and member records, change).
async fn clients(
    postgres: Vec<matriarch_postgres::MemoryPostgresCluster>,
    writing: Arc<AtomicBool>,
) {
    loop {
        let write = writing.load(Ordering::Relaxed);
        for cluster in &postgres {
            let mut servers = cluster.servers();
            if write {
                if let Some(primary) =
                    (0..servers.all().len()).find(|&i| servers.server(i).is_running_primary())
                {
                    servers.commit(primary);
                }
            }
            servers.replicate();
        }
        tokio::time::sleep(CLIENT_TICK).await;
    }
}

/// etcd and the agents over `idle`: the readings before and after,
/// with RSS sampled every second (the largest kept).
fn measure_idle(
    probe: &EtcdDcs,
    etcd: &EtcdCluster,
    counters: &Counters,
    idle: Duration,
    runtime: &Handle,
) -> Result<Resources> {
    let before = read(probe, etcd, counters, runtime)?;
    let mut etcd_rss_max = before.etcd_rss_kb();
    let mut process_rss_max = before.process.map_or(0, |s| s.rss_kb);
    let end = before.at + idle;
    while let Some(left) = end.checked_duration_since(Instant::now()) {
        interrupt::sleep(left.min(Duration::from_secs(1)))?;
        let now = read(probe, etcd, counters, runtime)?;
        etcd_rss_max = etcd_rss_max.max(now.etcd_rss_kb());
        process_rss_max = process_rss_max.max(now.process.map_or(0, |s| s.rss_kb));
    }
    let after = read(probe, etcd, counters, runtime)?;
    Ok(resources(
        &before,
        &after,
        etcd_rss_max.max(after.etcd_rss_kb()),
        process_rss_max.max(after.process.map_or(0, |s| s.rss_kb)),
    ))
}

/// What happened between two readings, with the largest RSS sampled in between.
fn resources(
    before: &Reading,
    after: &Reading,
    etcd_rss_max_kb: u64,
    process_rss_max_kb: u64,
) -> Resources {
    let ticks = procstat::ticks_per_second();
    let cpu = |b: Option<procstat::Sample>, a: Option<procstat::Sample>| match (b, a) {
        (Some(b), Some(a)) => a.cpu_ticks.saturating_sub(b.cpu_ticks) as f64 / ticks,
        _ => 0.0,
    };
    let delta = |count: fn(&CounterValues) -> u64| {
        count(&after.counters).saturating_sub(count(&before.counters))
    };
    Resources {
        seconds: after.at.duration_since(before.at).as_secs_f64(),
        revisions: after.revision.saturating_sub(before.revision),
        watch_events: delta(|c| c.watch_events),
        watch_calls: delta(|c| c.watch_calls),
        watch_streams: delta(|c| c.watch_streams),
        full_reads: delta(|c| c.full_reads),
        cached_reads: delta(|c| c.cached_reads),
        etcd_cpu_seconds: before
            .etcd
            .iter()
            .zip(&after.etcd)
            .map(|(b, a)| cpu(*b, *a))
            .sum(),
        etcd_rss_max_kb,
        process_cpu_seconds: cpu(before.process, after.process),
        process_rss_max_kb,
    }
}

/// When, in milliseconds from the crash, etcd showed the old leader's key
/// gone and a survivor holding the lock.
#[derive(Debug, Default)]
struct LockSeen {
    expired_ms: Option<u64>,
    taken_ms: Option<u64>,
}

/// Reads `dcs`'s leader key every 20 ms from the crash until a member other
/// than `old` holds it, noting when it was first gone and when it was taken.
async fn watch_lock(
    dcs: EtcdDcs,
    old: matriarch_model::MemberName,
    crashed: Instant,
    seen: Arc<Mutex<LockSeen>>,
) {
    loop {
        if let Ok(view) = dcs.read_view().await {
            let elapsed_ms = crashed.elapsed().as_millis() as u64;
            let holder = view.leader_name();
            let mut seen = seen.lock().unwrap_or_else(PoisonError::into_inner);
            if holder != Some(&old) && seen.expired_ms.is_none() {
                seen.expired_ms = Some(elapsed_ms);
            }
            if holder.is_some_and(|h| *h != old) {
                seen.taken_ms = Some(elapsed_ms);
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Crashes the primary of `cluster` (its agent killed without stepping down,
/// its PostgreSQL crashed), times the failover, then restarts the crashed
/// member and waits for the cluster to be healthy again.
fn fail_over(
    setup: &FleetSetup,
    cluster: &mut FleetCluster,
    run: usize,
    bound: Duration,
    runtime: &Handle,
) -> Result<FailoverRun> {
    let old = interrupt::wait_for(
        &format!("{} healthy", cluster.scope),
        bound,
        Duration::from_millis(50),
        || cluster.healthy_leader(),
    )?;
    let observer = EtcdDcs::new(&EtcdConfig::new(
        setup.endpoints.clone(),
        cluster.scope.clone(),
    ))
    .map_err(|e| DemoError::Setup(format!("etcd observer client: {e}")))?;
    // Connected before the crash, so that the first read after it is not slowed.
    let _ = runtime.block_on(observer.read_view());
    // Spread the crash over the leader's renewal period (loop_wait): the
    // failover time depends on how long ago the lock was last renewed.
    interrupt::sleep(Duration::from_millis(1000 + (run as u64 * 373) % 1000))?;
    cluster.agents[old].kill();
    cluster.agents[old].postgres.crash();
    let crashed = Instant::now();
    let seen = Arc::new(Mutex::new(LockSeen::default()));
    let observing = tokio::spawn(watch_lock(
        observer,
        cluster.agents[old].name.clone(),
        crashed,
        Arc::clone(&seen),
    ));
    let promoted_ms = loop {
        interrupt::check()?;
        if cluster.new_leader(old).is_some() {
            break crashed.elapsed().as_millis() as u64;
        }
        if crashed.elapsed() > bound {
            observing.abort();
            return Err(DemoError::NoFailover {
                bound,
                missing: format!("no survivor of {} promoted", cluster.scope),
            });
        }
        std::thread::sleep(FAILOVER_POLL);
    };
    // The observer reads every 20 ms: give it time to see the lock taken.
    let _ = interrupt::wait_for("", Duration::from_secs(2), FAILOVER_POLL, || {
        observing.is_finished().then_some(())
    });
    observing.abort();
    let seen = std::mem::take(&mut *seen.lock().unwrap_or_else(PoisonError::into_inner));
    cluster.agents[old] = cluster.start_agent(setup, old)?;
    interrupt::wait_for(
        &format!("{} healed", cluster.scope),
        bound,
        Duration::from_millis(50),
        || cluster.healthy_leader(),
    )?;
    Ok(FailoverRun {
        lock_expired_ms: seen.expired_ms,
        lock_taken_ms: seen.taken_ms,
        promoted_ms,
    })
}
