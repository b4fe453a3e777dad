//! The stability benchmark: pgbench at full speed against the primary of a
//! cluster on a three-member etcd, optionally killing the etcd leader at a fixed
//! period, while the leader key, the etcd leader and both client paths (REST
//! `/primary`, the DNS name) are watched. Every change of the leader key's
//! holder is a failover nothing caused: an etcd leader election is not a cause,
//! the primary must ride it out.

use std::fs;
use std::path::Path;
use std::process::{Child, ExitStatus};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use matriarch_testkit::cluster::Timing;
use serde_json::{json, Value};
use tokio::runtime::Handle;

use super::etcd_leader::{kill_leader_every, watch_leader, DOWN_FOR};
use super::pgbench::{summary, Pgbench, PgbenchReport, Segment};
use super::{check_timing, machine, settings_with, unix_time, write_json, Bench, Paths};
use crate::cluster::Cluster;
use crate::error::{DemoError, Result};
use crate::interrupt;
use crate::watch::LockEvent;

/// What [`stability_bench`] runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StabilityOptions {
    /// How long pgbench runs.
    pub duration: Duration,
    /// The lock's timing.
    pub timing: Timing,
    /// How many etcd members.
    pub etcd_members: usize,
    /// Kill the etcd leader this often (`None`: never).
    pub kill_etcd_leader_every: Option<Duration>,
    /// pgbench's clients (`-c`); also the scale of `pgbench -i`.
    pub clients: u32,
    /// pgbench's threads (`-j`).
    pub threads: u32,
}

impl Default for StabilityOptions {
    /// Ten minutes, the default timing, three etcd members, no kills, `-c 4 -j 2`.
    fn default() -> Self {
        StabilityOptions {
            duration: Duration::from_secs(600),
            timing: Timing::default(),
            etcd_members: 3,
            kill_etcd_leader_every: None,
            clients: 4,
            threads: 2,
        }
    }
}

/// How often the client paths are sampled.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// What an agent logs when its primary stopped taking writes because the
/// lock was not renewed in time (an etcd election it did not ride out).
const DEADLINE_MISSED: &str = "not renewed by its deadline";
/// What the write fence (`matriarch fence`, logging into the agent's log)
/// says when it kills PostgreSQL for want of a renewal.
const FENCE_KILL: &str = "did not renew in time: killing the postmaster";

/// What one client path (REST `/primary`, the DNS name) showed over time: each
/// change of the member it leads to, and how long it led nowhere.
struct PathLog {
    last: Option<Option<String>>,
    since: Instant,
    changes: Vec<Value>,
    missing: Duration,
}

impl PathLog {
    fn new(start: Instant) -> PathLog {
        PathLog {
            last: None,
            since: start,
            changes: Vec::new(),
            missing: Duration::ZERO,
        }
    }

    /// At `now`, the path leads to `member` (`None`: to no member).
    fn note(&mut self, start: Instant, now: Instant, member: Option<String>) {
        if self.last.as_ref() == Some(&member) {
            return;
        }
        if let Some(None) = self.last {
            self.missing += now - self.since;
        }
        let t = (now - start).as_secs_f64();
        self.changes.push(json!({"t_s": t, "member": member}));
        self.last = Some(member);
        self.since = now;
    }

    fn finish(mut self, now: Instant) -> Value {
        if let Some(None) = self.last {
            self.missing += now - self.since;
        }
        json!({
            "changes": self.changes,
            "seconds_without_a_primary": self.missing.as_secs_f64(),
        })
    }
}

/// Runs pgbench for `opts.duration` against the primary of a fresh cluster
/// (see the module doc); writes `stability.json` into `args.out`. Whether
/// pgbench ran through without an error, leadership never changed and the
/// primary stayed the first.
pub fn stability_bench(args: &Paths, opts: &StabilityOptions, runtime: &Handle) -> Result<bool> {
    check_timing(&opts.timing)?;
    let Timing {
        ttl,
        loop_wait,
        retry_timeout,
    } = opts.timing;
    println!(
        "matriarch-bench stability: pgbench -c {} -j {} for {:.1} min against the primary; ttl {:?}, \
         loop_wait {:?}, retry_timeout {:?}; {} etcd members; etcd leader killed {}",
        opts.clients,
        opts.threads,
        opts.duration.as_secs_f64() / 60.0,
        ttl,
        loop_wait,
        retry_timeout,
        opts.etcd_members,
        opts.kill_etcd_leader_every
            .map_or_else(|| "never".to_owned(), |e| format!("every {e:?}")),
    );
    let logs = args.out.join("logs").join("stability");
    let mut cluster_opts = Cluster::options(&args.matriarch, &logs);
    cluster_opts.timing = opts.timing;
    cluster_opts.etcd_members = opts.etcd_members;
    let mut bench = Bench::start_with(&cluster_opts, false, runtime)?;
    let primary = bench.cluster.wait_healthy(Duration::from_secs(60))?;
    let first = bench.cluster.nodes[primary].name.clone();
    println!(
        "  primary: {first} ({}); pgbench -i -s {} ...",
        bench.cluster.nodes[primary].ip, opts.clients
    );
    Pgbench::new(&bench.cluster.nodes[primary], opts.clients, opts.threads).initialize()?;
    let log_sizes = agent_log_sizes(&bench.cluster);
    let started_at_unix_ms = unix_time_ms();
    let start = Instant::now();
    let stop = AtomicBool::new(false);
    let (segments, paths, etcd_leaders, etcd_kills) = std::thread::scope(|scope| {
        let etcd = &bench.cluster.etcd;
        let (stop, start) = (&stop, start);
        let leaders = scope.spawn(move || watch_leader(etcd, start, stop));
        let kills = opts
            .kill_etcd_leader_every
            .map(|every| scope.spawn(move || kill_leader_every(etcd, every, start, stop)));
        let load = run_load(&bench.cluster, opts, &logs, primary, start);
        stop.store(true, Ordering::Relaxed);
        let leaders = leaders.join().unwrap_or_default();
        let kills = kills.map(|k| k.join().unwrap_or_default());
        load.map(|(segments, paths)| (segments, paths, leaders, kills))
    })?;
    let took = start.elapsed();
    let lock = lock_history(&bench, start, &first);
    let watch_alive = bench.watch.is_running();
    let after = bench
        .cluster
        .primary()
        .map(|i| bench.cluster.nodes[i].name.clone());
    let warnings = agent_warnings(&bench.cluster, &log_sizes);
    let pgbench = summary(&segments);
    let failovers = lock.failovers;
    let clean = pgbench["ok"] == true
        && lock.changes.is_empty()
        && after.as_deref() == Some(first.as_str())
        && watch_alive;
    let results = json!({
        "benchmark": "stability",
        "started_at_unix_ms": started_at_unix_ms,
        "finished_at_unix": unix_time(),
        "machine": machine(),
        "load_average_at_end": fs::read_to_string("/proc/loadavg").ok().map(|l| l.trim().to_owned()),
        "matriarch": args.matriarch.display().to_string(),
        "settings": settings_with(&opts.timing),
        "etcd": {
            "members": opts.etcd_members,
            "kill_leader_every_s": opts.kill_etcd_leader_every.map(|e| e.as_secs_f64()),
            "killed_leader_down_for_s": DOWN_FOR.as_secs_f64(),
            "kills": etcd_kills,
            "leader_changes": etcd_leaders,
        },
        "minutes": took.as_secs_f64() / 60.0,
        "pgbench": pgbench,
        "primary_before": first,
        "primary_after": after,
        "leader_key_watch_alive_at_end": watch_alive,
        "leadership_changes": lock.changes,
        "lock_losses": lock.changes.len() - failovers,
        "failovers_without_cause": failovers,
        "client_paths": paths,
        "agent_warnings": warnings,
        "clean": clean,
    });
    let path = args.out.join("stability.json");
    write_json(&path, &results)?;
    bench.cluster.shutdown();
    println!(
        "\n  pgbench: {} transactions, {:.0} tps, {} restarts, {} errors\n  leadership changes: {}; \
         failovers nothing caused: {failovers} (must be 0)\n  primary before: {first}, after: {}\n  \
         {}\nResults: {}",
        results["pgbench"]["transactions"],
        results["pgbench"]["tps"].as_f64().unwrap_or(0.0),
        results["pgbench"]["restarts"],
        results["pgbench"]["errors"].as_array().map_or(0, Vec::len),
        lock.changes.len(),
        after.as_deref().unwrap_or("none"),
        if clean { "clean" } else { "NOT clean" },
        path.display()
    );
    Ok(clean)
}

/// Milliseconds since the epoch (0 if the clock is before it): to line the
/// run's `t_s` up with the agents' log timestamps.
fn unix_time_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}

/// pgbench until `opts.duration` after `start`, against the primary (the
/// first, `primary`, when no node answers as one); a run that ends early is
/// followed by another for the time left. Meanwhile the client paths are
/// sampled. The runs and the paths' histories.
fn run_load(
    cluster: &Cluster,
    opts: &StabilityOptions,
    logs: &Path,
    primary: usize,
    start: Instant,
) -> Result<(Vec<Segment>, Value)> {
    let end = start + opts.duration;
    let mut paths = ClientPaths::new(cluster, start);
    let mut segments: Vec<Segment> = Vec::new();
    loop {
        let left = end.saturating_duration_since(Instant::now());
        if left < Duration::from_secs(2) {
            return Ok((segments, paths.finish()));
        }
        let target = cluster.primary().unwrap_or(primary);
        let pgbench = Pgbench::new(&cluster.nodes[target], opts.clients, opts.threads);
        let log = logs.join(match segments.len() {
            0 => "pgbench.log".to_owned(),
            n => format!("pgbench-{}.log", n + 1),
        });
        let secs = left.as_secs().max(1);
        let command = format!(
            "pgbench {} against {}",
            pgbench.run_args(secs).join(" "),
            pgbench.address()
        );
        println!("  {command} ...");
        let began = start.elapsed().as_secs_f64();
        let mut child = pgbench.spawn(secs, &log)?;
        let status = paths.sample_until_exit(&mut child)?;
        let report = PgbenchReport::read(&log);
        let ended = start.elapsed().as_secs_f64();
        let ok = status.success() && report.aborted.is_empty();
        if !ok {
            println!("  pgbench ended at {ended:.1} s ({status}); starting it again");
            // A primary that is just coming back: give it a moment.
            paths.sample_for(Duration::from_secs(if ended - began < 5.0 { 5 } else { 1 }))?;
        }
        segments.push(Segment {
            span_s: [began, ended],
            command,
            exit: status.to_string(),
            ok,
            log,
            report,
        });
    }
}

/// Both client paths, sampled once a second: REST `/primary` on every node,
/// and the DNS name.
struct ClientPaths<'a> {
    cluster: &'a Cluster,
    start: Instant,
    rest: PathLog,
    dns: PathLog,
    sampled: Option<Instant>,
    reported_minutes: u64,
}

impl<'a> ClientPaths<'a> {
    fn new(cluster: &'a Cluster, start: Instant) -> ClientPaths<'a> {
        ClientPaths {
            cluster,
            start,
            rest: PathLog::new(start),
            dns: PathLog::new(start),
            sampled: None,
            reported_minutes: 0,
        }
    }

    /// Samples both paths if a second has passed since the last time.
    fn sample(&mut self) {
        if self.sampled.is_some_and(|at| at.elapsed() < SAMPLE_EVERY) {
            return;
        }
        let cluster = self.cluster;
        let now = Instant::now();
        self.sampled = Some(now);
        let primary = cluster.primary().map(|i| cluster.nodes[i].name.clone());
        self.rest.note(self.start, now, primary);
        let resolved = matriarch_testkit::dns::resolve_a(
            cluster.dns_server(),
            &cluster.writer_name(),
            Duration::from_millis(500),
        )
        .ok()
        .and_then(|ips| match ips[..] {
            [ip] => cluster.node_at(ip).map(|i| cluster.nodes[i].name.clone()),
            _ => None,
        });
        self.dns.note(self.start, Instant::now(), resolved);
        let minutes = self.start.elapsed().as_secs() / 60;
        if minutes > self.reported_minutes {
            // A sign of life once a minute.
            self.reported_minutes = minutes;
            println!("  {minutes} min ...");
        }
    }

    /// Samples until `child` exits (every 200 ms a look at it); its status.
    fn sample_until_exit(&mut self, child: &mut Child) -> Result<ExitStatus> {
        loop {
            if let Err(e) = interrupt::check() {
                let _ = child.kill();
                let _ = child.wait();
                return Err(e);
            }
            match child.try_wait() {
                Ok(Some(status)) => return Ok(status),
                Ok(None) => {}
                Err(e) => return Err(DemoError::io("waiting for pgbench", e)),
            }
            self.sample();
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Samples for `duration`.
    fn sample_for(&mut self, duration: Duration) -> Result<()> {
        let end = Instant::now() + duration;
        while Instant::now() < end {
            self.sample();
            interrupt::sleep(Duration::from_millis(200))?;
        }
        Ok(())
    }

    fn finish(self) -> Value {
        let now = Instant::now();
        json!({"rest_primary": self.rest.finish(now), "dns": self.dns.finish(now)})
    }
}

/// How long each agent's log is now: where the run's lines begin.
fn agent_log_sizes(cluster: &Cluster) -> Vec<u64> {
    cluster
        .nodes
        .iter()
        .map(|n| fs::metadata(n.log()).map_or(0, |m| m.len()))
        .collect()
}

/// Per agent, the WARN and ERROR lines its log got after `sizes`: how many,
/// how many say its primary stopped taking writes for want of a renewal
/// ([`DEADLINE_MISSED`]), and the first ten; and how often its write fence
/// killed PostgreSQL ([`FENCE_KILL`]).
fn agent_warnings(cluster: &Cluster, sizes: &[u64]) -> Value {
    let mut out = serde_json::Map::new();
    for (node, size) in cluster.nodes.iter().zip(sizes) {
        let text = fs::read(node.log()).unwrap_or_default();
        let from = usize::try_from(*size).unwrap_or(0).min(text.len());
        let text = String::from_utf8_lossy(&text[from..]).into_owned();
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
            .collect();
        let first: Vec<&str> = lines.iter().take(10).copied().collect();
        let missed = lines.iter().filter(|l| l.contains(DEADLINE_MISSED)).count();
        let fence_kills = text.lines().filter(|l| l.contains(FENCE_KILL)).count();
        out.insert(
            node.name.clone(),
            json!({
                "count": lines.len(),
                "renewal_deadline_missed": missed,
                "fence_kills": fence_kills,
                "first": first,
            }),
        );
    }
    Value::Object(out)
}

/// The leader key over the run.
struct LockHistory {
    /// Each deletion of the key and each new holder, as `{"t_s", "event"}`.
    changes: Vec<Value>,
    /// How many of the changes are a new holder.
    failovers: usize,
}

/// The leader key's history since `start` from the watch; `first` held it then.
fn lock_history(bench: &Bench, start: Instant, first: &str) -> LockHistory {
    let mut holder = first.to_owned();
    let mut history = LockHistory {
        changes: Vec::new(),
        failovers: 0,
    };
    for (at, event) in bench.watch.events_since(start) {
        let t = at.duration_since(start).as_secs_f64();
        match event {
            LockEvent::Released => history
                .changes
                .push(json!({"t_s": t, "event": format!("lock of {holder} deleted")})),
            LockEvent::Held(h) if h != holder => {
                history
                    .changes
                    .push(json!({"t_s": t, "event": format!("lock taken by {h}")}));
                history.failovers += 1;
                holder = h;
            }
            // The holder wrote the key again (renewals are lease keep-alives: no write).
            LockEvent::Held(_) => {}
        }
    }
    history
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_that_leads_nowhere_is_timed() {
        let start = Instant::now();
        let mut log = PathLog::new(start);
        log.note(start, start, Some("node1".into()));
        log.note(start, start + Duration::from_secs(1), Some("node1".into()));
        log.note(start, start + Duration::from_secs(2), None);
        log.note(start, start + Duration::from_secs(5), Some("node1".into()));
        let done = log.finish(start + Duration::from_secs(9));
        assert_eq!(done["seconds_without_a_primary"], 3.0);
        assert_eq!(done["changes"].as_array().map(Vec::len), Some(3));
    }
}
