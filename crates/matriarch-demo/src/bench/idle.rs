//! Each agent's (and its fence watchdog's) memory and CPU at rest.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::RSS_TARGET_KB;
use crate::cluster::Cluster;
use crate::error::Result;
use crate::{interrupt, procstat};

/// Each agent's (and its fence watchdog's) memory and CPU over `idle`.
pub fn measure_idle(cluster: &mut Cluster, idle: Duration) -> Result<Value> {
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
