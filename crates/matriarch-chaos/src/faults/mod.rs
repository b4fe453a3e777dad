//! The fault kinds, the seeded plan, and how each fault is injected and healed.
//!
//! The kinds and the plan are in `planned.rs`; what operators do (switchovers,
//! `PATCH /config`) is in `operator.rs`; garbage in several keys at once in
//! `keys.rs`.

mod injected;
mod keys;
mod operator;
pub(crate) mod planned;
#[cfg(test)]
mod tests;

use std::net::Ipv4Addr;
use std::time::Duration;

pub use self::injected::Injected;
pub use self::planned::{plan, resolve_target, BadKey, FaultKind, PlannedFault, Target};
use crate::cluster::{self, Cluster, NODES};
use crate::error::{ChaosError, Result};
use crate::sys;

/// Holds a fault that took effect just now for `hold`, then heals it with
/// `heal`, also when Ctrl-C cuts the hold short. When the fault took effect.
fn hold_then_heal(hold: Duration, heal: impl FnOnce() -> Result<()>) -> Result<u64> {
    let at_us = sys::now_us();
    let held = sys::sleep(hold);
    heal()?;
    held.map(|()| at_us)
}

/// How long a DCS may take to accept writes again after all its servers
/// were resumed, before the servers are restarted.
const DCS_SERVES_AFTER_HEAL: Duration = Duration::from_secs(30);

/// Whether the DCS accepts a write (of a probe key outside the cluster's
/// keys) within `within`.
fn dcs_serves_writes(cluster: &Cluster<'_>, within: Duration) -> bool {
    let started = std::time::Instant::now();
    let key = "/chaos-probe";
    loop {
        if cluster.dcs.put(key, b"probe").is_ok() {
            let _ = cluster.dcs.del(key);
            return true;
        }
        if started.elapsed() >= within || sys::check_interrupt().is_err() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Holds a fault for `hold`, then restarts node `n`'s agent.
fn restart_after(cluster: &mut Cluster<'_>, n: usize, hold: Duration) -> Result<()> {
    sys::sleep(hold)?;
    cluster.nodes[n].agent.start()?;
    Ok(())
}

/// The value written by [`FaultKind::MalformedKey`].
const GARBAGE: &str = "{\"chaos\": [unterminated";

/// Injects `fault` (the primary is `primary`), holds it, and heals it.
pub fn run_fault(
    cluster: &mut Cluster<'_>,
    fault: &PlannedFault,
    primary: usize,
    timing: (u64, u64, u64),
) -> Result<Injected> {
    let hold = fault.hold();
    let lab = cluster.lab;
    match fault.kind {
        FaultKind::NodeKill => {
            let n = resolve_target(fault.target, primary);
            let short = cluster.nodes[n].short.clone();
            lab.kill_all(&short);
            let at_us = sys::now_us();
            cluster.nodes[n].agent.kill();
            restart_after(cluster, n, hold)?;
            Ok(Injected::new(
                Some(n),
                at_us,
                format!(
                    "SIGKILL every process of {}; agent restarted after {hold:?}",
                    cluster.nodes[n].name
                ),
            ))
        }
        FaultKind::PostgresKill => {
            let n = resolve_target(fault.target, primary);
            let node = &cluster.nodes[n];
            let mut at_us = sys::now_us();
            let detail = match node.postmaster_pid() {
                Some(pid) => {
                    sys::signal(pid, libc::SIGKILL);
                    at_us = sys::now_us();
                    format!("SIGKILL the postmaster ({pid}) of {}", node.name)
                }
                None => format!("{} had no running postmaster", node.name),
            };
            Ok(Injected::new(Some(n), at_us, detail))
        }
        FaultKind::AgentKill | FaultKind::KillAgentGroup => {
            let node = &mut cluster.nodes[primary];
            let helpers = match (fault.kind, node.agent.pid()) {
                (FaultKind::KillAgentGroup, Some(agent)) => {
                    helpers_of(agent, &lab.pids(&node.short))
                }
                _ => Vec::new(),
            };
            for pid in &helpers {
                sys::signal(*pid, libc::SIGKILL);
            }
            node.agent.kill();
            let at_us = sys::now_us();
            restart_after(cluster, primary, hold)?;
            let name = &cluster.nodes[primary].name;
            let detail = if fault.kind == FaultKind::KillAgentGroup {
                format!(
                    "SIGKILL the agent of {name} and its {} helper processes; restarted after {hold:?}",
                    helpers.len()
                )
            } else {
                format!("SIGKILL the agent of {name}; restarted after {hold:?}")
            };
            Ok(Injected::new(Some(primary), at_us, detail))
        }
        FaultKind::AgentStop => {
            let stopped = cluster.nodes[primary].agent.signal(libc::SIGSTOP);
            let at_us = hold_then_heal(hold, || {
                cluster.nodes[primary].agent.signal(libc::SIGCONT);
                Ok(())
            })?;
            Ok(Injected::new(
                Some(primary),
                at_us,
                format!(
                    "SIGSTOP the agent of {} for {hold:?}{}",
                    cluster.nodes[primary].name,
                    if stopped { "" } else { " (it was not running)" }
                ),
            ))
        }
        FaultKind::PostgresStop => {
            let node = &cluster.nodes[primary];
            // The postmaster and every backend, walsender and helper process: the
            // open connections must freeze too, not only new ones.
            let postgres = |lab: &crate::netns::Lab| -> Vec<i32> {
                lab.pids(&node.short)
                    .into_iter()
                    .filter(|pid| {
                        std::fs::read_to_string(format!("/proc/{pid}/comm"))
                            .is_ok_and(|c| c.starts_with("postgres") || c.starts_with("postmaster"))
                    })
                    .collect()
            };
            let pids = postgres(lab);
            let mut at_us = sys::now_us();
            let detail = if pids.is_empty() {
                format!("{} had no running PostgreSQL", node.name)
            } else {
                for pid in &pids {
                    sys::signal(*pid, libc::SIGSTOP);
                }
                at_us = sys::now_us();
                let result = sys::sleep(hold);
                for pid in pids.iter().chain(postgres(lab).iter()) {
                    sys::signal(*pid, libc::SIGCONT);
                }
                result?;
                format!(
                    "SIGSTOP PostgreSQL of {} ({} processes) for {hold:?}",
                    node.name,
                    pids.len()
                )
            };
            Ok(Injected::new(Some(primary), at_us, detail))
        }
        FaultKind::IsolatePrimary => {
            let short = cluster.nodes[primary].short.clone();
            lab.isolate(&short)?;
            let at_us = hold_then_heal(hold, || lab.reconnect(&short))?;
            Ok(Injected::new(
                Some(primary),
                at_us,
                format!(
                    "{} cut off from everything for {hold:?}",
                    cluster.nodes[primary].name
                ),
            ))
        }
        FaultKind::CutPrimaryFromEtcd | FaultKind::CutPrimaryFromReplicas => {
            let short = cluster.nodes[primary].short.clone();
            let (peers, what): (Vec<Ipv4Addr>, &str) =
                if fault.kind == FaultKind::CutPrimaryFromEtcd {
                    ((0..NODES).map(cluster::etcd_ip).collect(), "etcd")
                } else {
                    (
                        (0..NODES)
                            .filter(|i| *i != primary)
                            .map(cluster::node_ip)
                            .collect(),
                        "the replicas",
                    )
                };
            lab.cut(&short, &peers)?;
            let at_us = hold_then_heal(hold, || lab.uncut(&short))?;
            Ok(Injected::new(
                Some(primary),
                at_us,
                format!(
                    "{} cut from {what} for {hold:?}",
                    cluster.nodes[primary].name
                ),
            ))
        }
        FaultKind::EtcdLeaderKill => {
            let leader = sys::wait_for(
                "a DCS leader",
                Duration::from_secs(10),
                Duration::from_millis(200),
                || cluster.dcs.leader(false),
            )?;
            cluster.dcs.servers[leader].proc.kill();
            let at_us = hold_then_heal(hold, || Ok(cluster.dcs.servers[leader].proc.start()?))?;
            Ok(Injected::new(
                None,
                at_us,
                format!(
                    "SIGKILL the {} leader {}; restarted after {hold:?}",
                    cluster.dcs.kind.name(),
                    cluster.dcs.servers[leader].name
                ),
            ))
        }
        FaultKind::EtcdStopAll => {
            for member in &mut cluster.dcs.servers {
                member.proc.signal(libc::SIGSTOP);
            }
            let at_us = hold_then_heal(hold, || {
                for member in &cluster.dcs.servers {
                    member.proc.signal(libc::SIGCONT);
                }
                Ok(())
            })?;
            let mut detail = format!(
                "SIGSTOP all {} servers for {hold:?}",
                cluster.dcs.kind.name()
            );
            // ZooKeeper 3.8.0 (Debian's) sometimes comes back from a stop of
            // every server with a leader that never commits again: sessions
            // are created and expire unanswered, for any client. No agent can
            // recover from a DCS that serves nothing; an operator restarts
            // the servers, and so does this fault, saying so.
            if !dcs_serves_writes(cluster, DCS_SERVES_AFTER_HEAL) {
                for member in &mut cluster.dcs.servers {
                    member.proc.kill();
                    member.proc.start()?;
                }
                detail.push_str(&format!(
                    "; the {} servers accepted no write {DCS_SERVES_AFTER_HEAL:?} after SIGCONT: restarted them (operator action)",
                    cluster.dcs.kind.name()
                ));
            }
            Ok(Injected::new(None, at_us, detail))
        }
        FaultKind::SecondSwitchover => operator::second_switchover(cluster, fault, primary),
        FaultKind::EditTiming => operator::edit_timing(cluster, fault, primary, timing),
        FaultKind::EditSyncCount => operator::edit_sync_count(cluster, fault, primary),
        FaultKind::MalformedKeys => keys::malformed_keys(cluster, fault, primary),
        FaultKind::MalformedKey => {
            let (key, original) = match fault.bad_key {
                BadKey::Leader => (cluster.key("leader"), None),
                BadKey::Config => {
                    let key = cluster.key("config");
                    let value = cluster.dcs.get(&key)?;
                    (key, value.filter(|v| !v.is_empty()))
                }
                BadKey::Member => (
                    cluster.key(&format!("members/{}", cluster.nodes[primary].name)),
                    None,
                ),
            };
            cluster.dcs.put(&key, GARBAGE.as_bytes())?;
            let at_us = sys::now_us();
            let result = sys::sleep(hold);
            let repaired = match &original {
                Some(value) => cluster.dcs.put(&key, value),
                None => cluster.dcs.del(&key),
            };
            result?;
            repaired.map_err(|e| ChaosError::Client(format!("repairing {key}: {e}")))?;
            Ok(Injected::new(
                (fault.bad_key == BadKey::Member).then_some(primary),
                at_us,
                format!(
                    "garbage in {key} for {hold:?}, then {}",
                    if original.is_some() {
                        "the original value written back"
                    } else {
                        "deleted"
                    }
                ),
            ))
        }
    }
}

/// The descendants of `agent` among `pids` that are not PostgreSQL (its
/// write fence, hook scripts, programs it runs), deepest first.
fn helpers_of(agent: i32, pids: &[i32]) -> Vec<i32> {
    let parent = |pid: i32| -> Option<i32> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        stat.get(stat.rfind(')')? + 1..)?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    let postgres = |pid: i32| {
        std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .is_ok_and(|c| c.starts_with("postgres") || c.starts_with("postmaster"))
    };
    let mut found: Vec<(usize, i32)> = Vec::new();
    for &pid in pids {
        // The depth below the agent, if it descends from it.
        let mut depth = 0;
        let mut at = pid;
        while depth < 64 {
            match parent(at) {
                Some(p) if p == agent => {
                    if !postgres(pid) {
                        found.push((depth, pid));
                    }
                    break;
                }
                Some(p) if p > 1 => {
                    at = p;
                    depth += 1;
                }
                _ => break,
            }
        }
    }
    found.sort_by(|a, b| b.cmp(a));
    found.into_iter().map(|(_, pid)| pid).collect()
}
