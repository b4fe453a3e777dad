//! The failover and stability benchmarks of `matriarch-bench` (`cargo xtask
//! bench`), on the demo's three-node loopback cluster: [`failover`] times each
//! [`Fault`] run after run, [`idle`] reads the agents' memory and CPU at rest,
//! [`stability`] runs pgbench and counts failovers nothing caused (killing the
//! etcd leader with [`etcd_leader`] if asked). [`fleet`]
//! runs many clusters of in-process agents on one etcd.

pub mod etcd_leader;
pub mod failover;
mod failover_table;
pub mod fleet;
pub mod idle;
pub mod load;
pub mod pgbench;
pub mod stability;
pub mod system;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use tokio::runtime::Handle;

use matriarch_testkit::cluster::{LoopbackOptions, Timing};

use crate::cluster::Cluster;
use crate::error::{DemoError, Result};
use crate::failover::Fault;
use crate::watch::LeaderWatch;
use crate::writer::{self, Target};

/// Where a benchmark finds the daemon and puts its results.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    /// The `matriarch` binary.
    pub matriarch: PathBuf,
    /// The results directory.
    pub out: PathBuf,
}

/// How often the client writes.
pub const WRITE_INTERVAL: Duration = Duration::from_millis(10);
/// How long the client writes before the fault.
pub const BEFORE: Duration = Duration::from_secs(2);
/// How long the client keeps writing once the failover is complete.
pub const AFTER: Duration = Duration::from_millis(2500);
/// Targets of issue 9 (median write unavailability), in milliseconds.
pub const TARGETS_MS: [(Fault, u64); 3] = [
    (Fault::NodeCrash, 5_000),
    (Fault::PostgresCrash, 2_000),
    (Fault::Switchover, 1_000),
];
/// Target for an agent's idle memory: 15 MB, taken as 15 MiB of VmRSS.
pub const RSS_TARGET_KB: u64 = 15 * 1024;

/// A running cluster with the client's target and a watch of the leader key.
pub struct Bench {
    // Dropped first: the watch talks to the cluster's etcd.
    /// The leader key's watch.
    pub watch: LeaderWatch,
    /// The client's target (the DNS name).
    pub target: Target,
    /// The cluster.
    pub cluster: Cluster,
}

impl Bench {
    /// A fresh cluster, healthy, with the DNS name on the primary and an empty
    /// table; the client writes through the DNS name.
    pub fn start(matriarch: &Path, logs: &Path, runtime: &Handle) -> Result<Bench> {
        Bench::start_with(&Cluster::options(matriarch, logs), false, runtime)
    }

    /// A fresh cluster as `opts` describes, healthy (the DNS name on the
    /// primary, for matriarch), with an empty table; the client finds the
    /// primary through REST `GET /primary` when `rest_writer`, else through the
    /// DNS name.
    pub fn start_with(
        opts: &LoopbackOptions,
        rest_writer: bool,
        runtime: &Handle,
    ) -> Result<Bench> {
        let mut cluster = Cluster::start_with(opts)?;
        let ready = Bench::ready(&mut cluster, rest_writer, runtime);
        let (primary, target) = match ready {
            Ok(ready) => ready,
            Err(e) => {
                if e.wants_logs() {
                    eprintln!("{}", cluster.log_tails(30));
                }
                return Err(e);
            }
        };
        let watch = LeaderWatch::start(&cluster.etcd_endpoints(), &cluster.leader_key())?;
        let _ = primary;
        Ok(Bench {
            watch,
            target,
            cluster,
        })
    }

    /// Waits for a healthy cluster (whose primary the DNS name names, for
    /// matriarch), and gives the writer a fresh table; returns the primary's
    /// index and the target (REST `GET /primary` when `rest_writer`).
    pub fn ready(
        cluster: &mut Cluster,
        rest_writer: bool,
        runtime: &Handle,
    ) -> Result<(usize, Target)> {
        let primary = cluster.wait_healthy(Duration::from_secs(180))?;
        if cluster.routes_dns() {
            cluster.wait_dns(cluster.nodes[primary].ip, Duration::from_secs(30))?;
        }
        let target = if rest_writer {
            cluster.rest_target()
        } else {
            cluster.writer_target()
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
    pub fn heal(&mut self) -> Result<usize> {
        for node in &mut self.cluster.nodes {
            if !node.is_running() {
                node.start()?;
            }
        }
        let primary = self.cluster.wait_healthy(Duration::from_secs(180))?;
        self.cluster.settle()?;
        if self.cluster.routes_dns() {
            self.cluster
                .wait_dns(self.cluster.nodes[primary].ip, Duration::from_secs(30))?;
        }
        Ok(primary)
    }
}

/// The daemon's own check of a timing (`loop_wait + 2 × retry_timeout ≤ ttl`,
/// …) as a usage error: the agents would refuse to start with it.
pub fn check_timing(timing: &Timing) -> Result<()> {
    let Timing {
        ttl,
        loop_wait,
        retry_timeout,
    } = *timing;
    matriarch_model::ClusterConfig {
        ttl,
        loop_wait,
        retry_timeout,
        ..Default::default()
    }
    .validate()
    .map_err(|e| DemoError::Usage(e.to_string()))
}

/// Median of sorted-or-not values (the mean of the middle two for an even count).
pub fn median(values: &[u64]) -> Option<f64> {
    let mut v = values.to_vec();
    v.sort_unstable();
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(v[n / 2] as f64),
        _ => Some((v[n / 2 - 1] + v[n / 2]) as f64 / 2.0),
    }
}

/// The value of the first line of `path` that starts with `prefix` (after a `:`).
pub fn first_line_of(path: &str, prefix: &str) -> Option<String> {
    fs::read_to_string(path)
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(prefix))
        .map(|v| v.trim().trim_start_matches(':').trim().to_owned())
}

/// The machine the figures come from.
pub fn machine() -> Value {
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

/// Seconds since the epoch (0 if the clock is before it).
pub fn unix_time() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Writes `value` as pretty JSON to `path`.
pub fn write_json(path: &Path, value: &Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| DemoError::Setup(format!("cannot encode {}: {e}", path.display())))?;
    fs::write(path, text + "\n")
        .map_err(|e| DemoError::io(format!("writing {}", path.display()), e))
}

/// The cluster's and the client's settings, for the results (the default timing).
pub fn settings() -> Value {
    settings_with(&Timing::default())
}

/// [`settings`] with the lock's `timing`.
pub fn settings_with(timing: &Timing) -> Value {
    json!({
        "ttl_s": timing.ttl.as_secs_f64(),
        "loop_wait_s": timing.loop_wait.as_secs_f64(),
        "retry_timeout_s": timing.retry_timeout.as_secs_f64(),
        "replication": "asynchronous",
        "dns_record_ttl_s": 1,
        "write_interval_ms": WRITE_INTERVAL.as_millis() as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timing_the_daemon_refuses_is_a_usage_error() {
        assert!(check_timing(&Timing::default()).is_ok());
        assert!(check_timing(&Timing::from_secs_f64(4.0, 1.0, 1.5)).is_ok());
        let unsafe_timing = check_timing(&Timing::from_secs_f64(4.0, 1.0, 2.0));
        assert!(matches!(unsafe_timing, Err(DemoError::Usage(m)) if m.contains("exceeds ttl")));
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3, 1, 2]), Some(2.0));
        assert_eq!(median(&[4, 1, 2, 3]), Some(2.5));
    }
}
