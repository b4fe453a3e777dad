//! [`FaultKind::MalformedKeys`](super::FaultKind::MalformedKeys): garbage (random bytes, huge numbers, wrong JSON
//! types) in several DCS keys at once.

use std::time::Duration;

use super::injected::Injected;
use super::planned::{resolve_target, PlannedFault, Target};
use crate::cluster::{Cluster, NODES};
use crate::error::{ChaosError, Result};
use crate::sys::{self, Rng};

/// The garbage [`FaultKind::MalformedKeys`](super::FaultKind::MalformedKeys) writes into `key` (`config`, `sync`,
/// `failover`, `member`): random bytes (0), huge numbers (1) or wrong JSON
/// types (2), as `kind` says.
pub(super) fn garbage(key: &str, kind: u64, rng: &mut Rng, leader: &str, other: &str) -> Vec<u8> {
    match kind % 3 {
        0 => (0..64)
            // No NUL: etcdctl takes the value as an argument.
            .map(|_| 1 + rng.below(255) as u8)
            .collect(),
        1 => match key {
            "config" => "{\"ttl\": 5, \"loop_wait\": 1, \"retry_timeout\": 1e19, \"synchronous_node_count\": 18446744073709551616, \"maximum_lag_on_failover\": -1e300}"
                .to_owned(),
            "sync" => format!(
                "{{\"leader\": \"{leader}\", \"sync_standby\": \"{other}\", \"quorum\": 1e19}}"
            ),
            "failover" => format!(
                "{{\"leader\": \"{leader}\", \"member\": \"{other}\", \"scheduled_at\": 1e19}}"
            ),
            _ => "{\"role\": \"replica\", \"state\": \"running\", \"timeline\": 1e19, \"xlog_location\": 18446744073709551616000, \"conn_url\": \"postgres://x\"}".to_owned(),
        }
        .into_bytes(),
        _ => match key {
            "config" => "{\"ttl\": \"five\", \"loop_wait\": [1], \"retry_timeout\": {\"s\": 2}, \"synchronous_mode\": 7}",
            "sync" => "{\"leader\": 5, \"sync_standby\": [\"x\"], \"quorum\": \"one\"}",
            "failover" => "{\"leader\": true, \"member\": [], \"scheduled_at\": 42}",
            _ => "{\"role\": 1, \"state\": null, \"timeline\": \"2\", \"conn_url\": 5}",
        }
        .as_bytes()
        .to_vec(),
    }
}

/// How many times an agent's log says it panicked.
fn panics(cluster: &Cluster<'_>, node: usize) -> usize {
    std::fs::read(cluster.nodes[node].agent.log())
        .map(|t| String::from_utf8_lossy(&t).matches("panicked").count())
        .unwrap_or(0)
}

/// [`FaultKind::MalformedKeys`](super::FaultKind::MalformedKeys).
pub(super) fn malformed_keys(
    cluster: &mut Cluster<'_>,
    fault: &PlannedFault,
    primary: usize,
) -> Result<Injected> {
    let mut rng = Rng::new(fault.variant);
    let member = (fault.variant % NODES as u64) as usize;
    let other = resolve_target(Target::Replica(0), primary);
    let leader_name = cluster.nodes[primary].name.clone();
    let other_name = cluster.nodes[other].name.clone();
    let panics_before: Vec<usize> = (0..NODES).map(|i| panics(cluster, i)).collect();
    let config_key = cluster.key("config");
    let good_config = cluster
        .dcs
        .get(&config_key)?
        .filter(|v| !v.is_empty())
        .ok_or_else(|| ChaosError::Client(format!("{config_key} is empty before the fault")))?;
    let keys = [
        ("config", config_key.clone()),
        ("sync", cluster.key("sync")),
        ("failover", cluster.key("failover")),
        (
            "member",
            cluster.key(&format!("members/{}", cluster.nodes[member].name)),
        ),
    ];
    let mut written = Vec::new();
    let mut values = Vec::new();
    let mut at_us = 0;
    for (what, key) in &keys {
        let kind = rng.below(3);
        let value = garbage(what, kind, &mut rng, &leader_name, &other_name);
        cluster.dcs.put(key, &value)?;
        if at_us == 0 {
            at_us = sys::now_us();
        }
        written.push(format!(
            "{key}: {}",
            ["random bytes", "huge numbers", "wrong types"][kind as usize]
        ));
        values.push(value);
    }
    // The primary must stay the primary all along.
    let until = std::time::Instant::now() + fault.hold();
    let mut lost_primary = None;
    while std::time::Instant::now() < until {
        sys::sleep(Duration::from_millis(250))?;
        let others: Vec<usize> = (0..NODES)
            .filter(|i| *i != primary && cluster.nodes[*i].rest.is_primary())
            .collect();
        if lost_primary.is_none() && !others.is_empty() {
            lost_primary = Some(format!(
                "{} answered /primary while {} was the primary",
                cluster.nodes[others[0]].name, leader_name
            ));
        }
    }
    // Which garbage the cluster left in place (an agent rewrites its member
    // key and the primary the sync key; config and failover stay as written).
    let mut kept = Vec::new();
    for ((what, key), value) in keys.iter().zip(&values) {
        if cluster.dcs.get(key).ok().flatten().as_ref() == Some(value) {
            kept.push(*what);
        }
    }
    let mut repair_errors = Vec::new();
    for (what, key) in &keys {
        let repaired = if *what == "config" {
            cluster.dcs.put(key, &good_config)
        } else {
            cluster.dcs.del(key)
        };
        if let Err(e) = repaired {
            repair_errors.push(format!("repairing {key}: {e}"));
        }
    }
    // Agents die of a bad value slowly too (a panic in the next loop).
    sys::sleep(Duration::from_secs(2))?;
    let mut problems = repair_errors;
    problems.extend(lost_primary);
    for (i, before) in panics_before.iter().enumerate() {
        if !cluster.nodes[i].agent.is_running() {
            problems.push(format!(
                "the agent of {} is not running: {}",
                cluster.nodes[i].name,
                matriarch_testkit::cluster::tail(cluster.nodes[i].agent.log(), 5)
            ));
        }
        let new_panics = panics(cluster, i).saturating_sub(*before);
        if new_panics > 0 {
            problems.push(format!(
                "the agent of {} logged {new_panics} panics",
                cluster.nodes[i].name
            ));
        }
    }
    if !problems.is_empty() {
        return Err(ChaosError::Client(problems.join("; ")));
    }
    Ok(Injected::new(Some(member), at_us, format!(
            "garbage in {} for {:?} (still in place at the end: {}); config written back, the rest deleted; {} kept the primary, every agent alive",
            written.join(", "),
            fault.hold(),
            if kept.is_empty() { "none".to_owned() } else { kept.join(", ") },
            leader_name
        )))
}
