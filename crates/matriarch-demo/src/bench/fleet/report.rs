//! The fleet benchmark's figures: rates, medians, the goal (failover time at
//! the largest fleet within 10 % of one cluster's), the JSON and the table.

use serde_json::{json, Value};

use super::agents::MEMBERS;
use crate::bench::median;

/// How much slower the largest fleet's median failover may be than one
/// cluster's (issue 20: within 10 %).
pub const GOAL_RATIO: f64 = 1.10;

/// One failover of the measured cluster, in milliseconds from the crash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FailoverRun {
    /// When etcd first showed the old leader's key gone (its lease expired).
    pub lock_expired_ms: Option<u64>,
    /// When etcd first showed a survivor holding the lock.
    pub lock_taken_ms: Option<u64>,
    /// When a survivor led with its PostgreSQL promoted.
    pub promoted_ms: u64,
}

impl FailoverRun {
    /// The run in one line.
    pub fn summary(&self) -> String {
        let ms = |v: Option<u64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v} ms"));
        format!(
            "lock expired {}, lock taken {}, promoted {} ms",
            ms(self.lock_expired_ms),
            ms(self.lock_taken_ms),
            self.promoted_ms
        )
    }
}

/// etcd and the agents over a measuring window.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Resources {
    /// The window, in seconds.
    pub seconds: f64,
    /// etcd revisions made in it (every write makes one).
    pub revisions: u64,
    /// Watch events the agents received.
    pub watch_events: u64,
    /// `Dcs::watch` calls of the agents (one per wait of their loop; none
    /// opens an etcd watch: each client keeps one stream open).
    pub watch_calls: u64,
    /// etcd watch streams the agents' clients opened (one per
    /// synchronisation of a client's scope cache).
    pub watch_streams: u64,
    /// Full range reads of a scope by the agents' clients.
    pub full_reads: u64,
    /// Views the agents' clients answered from their caches.
    pub cached_reads: u64,
    /// CPU time of the three etcd members together, in seconds.
    pub etcd_cpu_seconds: f64,
    /// The largest sampled sum of the etcd members' VmRSS, KiB.
    pub etcd_rss_max_kb: u64,
    /// CPU time of this process (every agent), in seconds.
    pub process_cpu_seconds: f64,
    /// The largest sampled VmRSS of this process, KiB.
    pub process_rss_max_kb: u64,
}

impl Resources {
    fn per_second(&self, count: f64) -> f64 {
        if self.seconds > 0.0 {
            count / self.seconds
        } else {
            0.0
        }
    }

    /// etcd writes (revisions) per second.
    pub fn writes_per_second(&self) -> f64 {
        self.per_second(self.revisions as f64)
    }

    /// Watch events delivered to the agents per second.
    pub fn watch_events_per_second(&self) -> f64 {
        self.per_second(self.watch_events as f64)
    }

    /// The window in one line.
    pub fn summary(&self) -> String {
        format!(
            "{:.2} etcd writes/s, {:.2} watch events/s, {:.2} watch waits/s, {:.2} watch streams opened/s, {:.2} full reads/s, {:.2} cached reads/s, etcd CPU {:.1} %, agents CPU {:.1} %",
            self.writes_per_second(),
            self.watch_events_per_second(),
            self.per_second(self.watch_calls as f64),
            self.per_second(self.watch_streams as f64),
            self.per_second(self.full_reads as f64),
            self.per_second(self.cached_reads as f64),
            self.etcd_cpu_percent(),
            self.process_cpu_percent(),
        )
    }

    /// The window as JSON.
    pub fn json(&self) -> Value {
        json!({
            "seconds": self.seconds,
            "etcd_revisions": self.revisions,
            "etcd_writes_per_second": self.writes_per_second(),
            "watch_events": self.watch_events,
            "watch_events_per_second": self.watch_events_per_second(),
            "watch_calls": self.watch_calls,
            "watch_streams_opened": self.watch_streams,
            "full_range_reads": self.full_reads,
            "cached_reads": self.cached_reads,
            "etcd_cpu_seconds": self.etcd_cpu_seconds,
            "etcd_cpu_percent": self.etcd_cpu_percent(),
            "etcd_rss_max_kb": self.etcd_rss_max_kb,
            "agents_cpu_seconds": self.process_cpu_seconds,
            "agents_cpu_percent": self.process_cpu_percent(),
            "process_rss_max_kb": self.process_rss_max_kb,
        })
    }

    /// The etcd members' CPU, in percent of one core.
    pub fn etcd_cpu_percent(&self) -> f64 {
        self.per_second(self.etcd_cpu_seconds) * 100.0
    }

    /// The agents' (this process's) CPU, in percent of one core.
    pub fn process_cpu_percent(&self) -> f64 {
        self.per_second(self.process_cpu_seconds) * 100.0
    }
}

/// Everything measured for one fleet size.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FleetFigures {
    /// Clusters of three agents.
    pub clusters: usize,
    /// From the first agent's start to every cluster healthy, in seconds.
    pub start_seconds: f64,
    /// The fleet at rest: no client writes.
    pub rest: Option<Resources>,
    /// The fleet while every cluster's client writes (failovers are measured then).
    pub writing: Option<Resources>,
    /// The completed failovers.
    pub failovers: Vec<FailoverRun>,
    /// Failovers that did not complete (the runs left are counted too).
    pub failed_failovers: usize,
    /// The failovers (each with the heal after it), while every client
    /// writes: their length and the revisions and watch events in it.
    pub failover_phase: Option<Resources>,
    /// This process's VmRSS growth from before the agents started, KiB.
    pub agents_rss_kb: u64,
    /// Why this size did not complete.
    pub error: Option<String>,
}

impl FleetFigures {
    /// A size that did not start or could not be measured.
    pub fn failed(clusters: usize, error: String) -> FleetFigures {
        FleetFigures {
            clusters,
            error: Some(error),
            ..FleetFigures::default()
        }
    }

    /// The agents in the fleet.
    pub fn agents(&self) -> usize {
        self.clusters * MEMBERS
    }

    /// The median time from the crash to the promotion, in milliseconds.
    pub fn failover_median_ms(&self) -> Option<f64> {
        let promoted: Vec<u64> = self.failovers.iter().map(|r| r.promoted_ms).collect();
        median(&promoted)
    }

    /// The median time from the crash to the lock seen gone in etcd, in milliseconds.
    pub fn lock_expired_median_ms(&self) -> Option<f64> {
        let expired: Vec<u64> = self
            .failovers
            .iter()
            .filter_map(|r| r.lock_expired_ms)
            .collect();
        median(&expired)
    }

    /// Memory per agent: the process's growth over the agents, KiB.
    pub fn rss_per_agent_kb(&self) -> Option<f64> {
        (self.agents() > 0 && self.agents_rss_kb > 0)
            .then(|| self.agents_rss_kb as f64 / self.agents() as f64)
    }

    /// One line for the console.
    pub fn summary(&self) -> String {
        format!(
            "  {} clusters: started in {:.1} s; failover median {}",
            self.clusters,
            self.start_seconds,
            seconds(self.failover_median_ms()),
        )
    }

    /// The figures as JSON.
    pub fn json(&self) -> Value {
        json!({
            "clusters": self.clusters,
            "agents": self.agents(),
            "start_seconds": self.start_seconds,
            "at_rest": self.rest.as_ref().map(Resources::json),
            "writing": self.writing.as_ref().map(Resources::json),
            "agents_rss_growth_kb": self.agents_rss_kb,
            "rss_per_agent_kb": self.rss_per_agent_kb(),
            "failovers": self.failovers.iter().map(|r| json!({
                "lock_expired_ms": r.lock_expired_ms,
                "lock_taken_ms": r.lock_taken_ms,
                "promoted_ms": r.promoted_ms,
            })).collect::<Vec<Value>>(),
            "failed_failovers": self.failed_failovers,
            "failover_median_ms": self.failover_median_ms(),
            "lock_expired_median_ms": self.lock_expired_median_ms(),
            "failover_phase": self.failover_phase.as_ref().map(Resources::json),
            "error": self.error,
        })
    }
}

/// `1.234 s`, or `-`.
fn seconds(ms: Option<f64>) -> String {
    ms.map_or_else(|| "-".to_owned(), |ms| format!("{:.3} s", ms / 1000.0))
}

/// The goal of issue 20: the largest fleet's median failover within
/// [`GOAL_RATIO`] of one cluster's.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Goal {
    /// The median at N = 1, in milliseconds.
    pub base_ms: f64,
    /// The largest N with a median.
    pub clusters: usize,
    /// Its median, in milliseconds.
    pub largest_ms: f64,
}

impl Goal {
    /// largest / base.
    pub fn ratio(&self) -> f64 {
        self.largest_ms / self.base_ms
    }

    /// Whether the goal is met.
    pub fn met(&self) -> bool {
        self.ratio() <= GOAL_RATIO
    }

    /// The goal in a sentence.
    pub fn sentence(&self) -> String {
        format!(
            "goal (failover at N = {} within {:.0} % of N = 1): {} ({:.3} s against {:.3} s, {:+.1} %)",
            self.clusters,
            (GOAL_RATIO - 1.0) * 100.0,
            if self.met() { "met" } else { "NOT met" },
            self.largest_ms / 1000.0,
            self.base_ms / 1000.0,
            (self.ratio() - 1.0) * 100.0
        )
    }

    /// The goal as JSON.
    pub fn json(&self) -> Value {
        json!({
            "base_clusters": 1,
            "base_median_ms": self.base_ms,
            "clusters": self.clusters,
            "median_ms": self.largest_ms,
            "ratio": self.ratio(),
            "allowed_ratio": GOAL_RATIO,
            "met": self.met(),
        })
    }
}

/// The goal, when N = 1 and a larger N both have a median.
pub fn goal(sizes: &[FleetFigures]) -> Option<Goal> {
    let base_ms = sizes
        .iter()
        .find(|s| s.clusters == 1)?
        .failover_median_ms()?;
    let largest = sizes
        .iter()
        .filter(|s| s.clusters > 1 && s.failover_median_ms().is_some())
        .max_by_key(|s| s.clusters)?;
    Some(Goal {
        base_ms,
        clusters: largest.clusters,
        largest_ms: largest.failover_median_ms()?,
    })
}

/// `rest / writing` of one figure of the two windows.
fn both(s: &FleetFigures, figure: impl Fn(&Resources) -> String) -> String {
    let one = |r: &Option<Resources>| r.as_ref().map_or_else(|| "-".to_owned(), &figure);
    format!("{} / {}", one(&s.rest), one(&s.writing))
}

/// The figures as a Markdown table (the one in docs/benchmarks.md).
pub fn table(sizes: &[FleetFigures]) -> String {
    let mut rows = vec![
        "| clusters | agents | start | etcd writes/s (rest / writing) | watch events/s (rest / writing) | etcd CPU (rest / writing) | agents CPU (rest / writing) | etcd RSS | agents RSS (per agent) | failover median (runs) | of which lock expiry (median) | each failover (s) |".to_owned(),
        "|---|---|---|---|---|---|---|---|---|---|---|---|".to_owned(),
    ];
    for s in sizes {
        if let Some(error) = &s.error {
            rows.push(format!(
                "| {} | {} | failed: {} ||||||||||",
                s.clusters,
                s.agents(),
                crate::plot::shorten(error, 120)
            ));
            continue;
        }
        let each: Vec<String> = s
            .failovers
            .iter()
            .map(|r| format!("{:.2}", r.promoted_ms as f64 / 1000.0))
            .collect();
        let runs = if s.failed_failovers > 0 {
            format!(
                "{}/{}",
                s.failovers.len(),
                s.failovers.len() + s.failed_failovers
            )
        } else {
            s.failovers.len().to_string()
        };
        let etcd_rss_kb = [s.rest, s.writing]
            .iter()
            .flatten()
            .map(|r| r.etcd_rss_max_kb)
            .max()
            .unwrap_or(0);
        rows.push(format!(
            "| {} | {} | {:.1} s | {} | {} | {} | {} | {:.0} MiB | {:.0} MiB ({}) | {} ({runs}) | {} | {} |",
            s.clusters,
            s.agents(),
            s.start_seconds,
            both(s, |r| format!("{:.1}", r.writes_per_second())),
            both(s, |r| format!("{:.1}", r.watch_events_per_second())),
            both(s, |r| format!("{:.1} %", r.etcd_cpu_percent())),
            both(s, |r| format!("{:.1} %", r.process_cpu_percent())),
            etcd_rss_kb as f64 / 1024.0,
            s.agents_rss_kb as f64 / 1024.0,
            s.rss_per_agent_kb()
                .map_or_else(|| "-".to_owned(), |kb| format!("{kb:.0} KiB")),
            seconds(s.failover_median_ms()),
            seconds(s.lock_expired_median_ms()),
            each.join(", "),
        ));
    }
    rows.join("\n")
}

#[cfg(test)]
mod tests;
