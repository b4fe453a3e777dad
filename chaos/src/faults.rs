//! The fault kinds, the seeded plan, and how each fault is injected and healed.

use std::net::Ipv4Addr;
use std::time::Duration;

use serde::Serialize;

use crate::cluster::{self, Cluster, NODES};
use crate::error::{ChaosError, Result};
use crate::sys::{self, Rng};

/// What a fault does. [`FaultKind::ALL`] lists them in a fixed order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultKind {
    /// SIGKILL every process of a node (agent, fence, PostgreSQL); restart the
    /// agent after the hold.
    NodeKill,
    /// SIGKILL a node's postmaster only; its agent restarts it.
    PostgresKill,
    /// SIGKILL the primary's agent only (its write fence then kills PostgreSQL);
    /// restart the agent after the hold.
    AgentKill,
    /// SIGKILL the primary's agent and every helper process it started (its
    /// write fence, hooks; what `pkill -9 matriarch` or an OOM kill of the
    /// unit's group does), fence first, so that the fence cannot act on its
    /// pipe closing: PostgreSQL must die with its fence. Restart the agent
    /// after the hold.
    KillAgentGroup,
    /// SIGSTOP the primary's agent for longer than the ttl, then SIGCONT.
    AgentStop,
    /// SIGSTOP the primary's PostgreSQL (the postmaster's process group), then SIGCONT.
    PostgresStop,
    /// Take the primary's link down on the switch: it reaches nobody.
    IsolatePrimary,
    /// Drop, in the primary's namespace, all traffic to and from the etcd members.
    CutPrimaryFromEtcd,
    /// Drop, in the primary's namespace, all traffic to and from the replicas.
    CutPrimaryFromReplicas,
    /// SIGKILL the etcd leader (found with `etcdctl endpoint status`); restart it.
    EtcdLeaderKill,
    /// SIGSTOP all three etcd members for longer than the ttl, then SIGCONT.
    EtcdStopAll,
    /// Write garbage into the leader, config or a member key; repair it later.
    MalformedKey,
}

impl FaultKind {
    /// Every kind.
    pub const ALL: [FaultKind; 12] = [
        FaultKind::NodeKill,
        FaultKind::PostgresKill,
        FaultKind::AgentKill,
        FaultKind::KillAgentGroup,
        FaultKind::AgentStop,
        FaultKind::PostgresStop,
        FaultKind::IsolatePrimary,
        FaultKind::CutPrimaryFromEtcd,
        FaultKind::CutPrimaryFromReplicas,
        FaultKind::EtcdLeaderKill,
        FaultKind::EtcdStopAll,
        FaultKind::MalformedKey,
    ];

    /// The kebab-case name used in the report.
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::NodeKill => "node-kill",
            FaultKind::PostgresKill => "postgres-kill",
            FaultKind::AgentKill => "agent-kill",
            FaultKind::KillAgentGroup => "kill-agent-group",
            FaultKind::AgentStop => "agent-stop",
            FaultKind::PostgresStop => "postgres-stop",
            FaultKind::IsolatePrimary => "isolate-primary",
            FaultKind::CutPrimaryFromEtcd => "cut-primary-from-etcd",
            FaultKind::CutPrimaryFromReplicas => "cut-primary-from-replicas",
            FaultKind::EtcdLeaderKill => "etcd-leader-kill",
            FaultKind::EtcdStopAll => "etcd-stop-all",
            FaultKind::MalformedKey => "malformed-key",
        }
    }
}

/// Which node a node fault hits, relative to the roles at injection time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Target {
    /// The primary.
    Primary,
    /// The first (0) or second (1) replica in name order.
    Replica(usize),
}

/// Which key [`FaultKind::MalformedKey`] spoils.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BadKey {
    /// `/service/<scope>/leader` (repaired by deleting it: the lock is free again).
    Leader,
    /// `/service/<scope>/config` (repaired by writing the original value back).
    Config,
    /// The primary's `/service/<scope>/members/<name>` (repaired by deleting it:
    /// the agent publishes it again).
    Member,
}

/// One planned fault: everything random about it is drawn from the seed up front.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct PlannedFault {
    /// What.
    pub kind: FaultKind,
    /// Which node, for [`FaultKind::NodeKill`] and [`FaultKind::PostgresKill`]
    /// (the others hit the primary or etcd).
    pub target: Target,
    /// How long the fault lasts before it is healed, in milliseconds.
    pub hold_ms: u64,
    /// The key, for [`FaultKind::MalformedKey`].
    pub bad_key: BadKey,
}

/// The faults of a run: a seeded shuffle of every kind first (cut to `count`),
/// then kinds drawn at random. Hold times are drawn around the ttl (`ttl_ms`).
pub fn plan(seed: u64, count: usize, ttl_ms: u64) -> Vec<PlannedFault> {
    let mut rng = Rng::new(seed);
    let mut first = FaultKind::ALL.to_vec();
    rng.shuffle(&mut first);
    let mut kinds: Vec<FaultKind> = first.into_iter().take(count).collect();
    while kinds.len() < count {
        kinds.push(FaultKind::ALL[rng.below(FaultKind::ALL.len() as u64) as usize]);
    }
    kinds
        .into_iter()
        .map(|kind| {
            let target = match rng.below(3) {
                0 => Target::Replica(rng.below(2) as usize),
                _ => Target::Primary,
            };
            let bad_key = match rng.below(3) {
                0 => BadKey::Leader,
                1 => BadKey::Config,
                _ => BadKey::Member,
            };
            let hold_ms = match kind {
                FaultKind::PostgresKill => 0,
                FaultKind::NodeKill | FaultKind::AgentKill | FaultKind::KillAgentGroup => {
                    rng.range(1000, ttl_ms + 3000)
                }
                FaultKind::AgentStop | FaultKind::EtcdStopAll => {
                    rng.range(ttl_ms + 1000, ttl_ms + 4000)
                }
                FaultKind::PostgresStop => rng.range(1000, ttl_ms + 4000),
                FaultKind::IsolatePrimary
                | FaultKind::CutPrimaryFromEtcd
                | FaultKind::CutPrimaryFromReplicas => rng.range(2000, ttl_ms + 5000),
                FaultKind::EtcdLeaderKill => rng.range(1000, 5000),
                FaultKind::MalformedKey => rng.range(2000, 6000),
            };
            PlannedFault {
                kind,
                target,
                hold_ms,
                bad_key,
            }
        })
        .collect()
}

/// What an injected fault did: the node it hit, a description, and when it took
/// effect.
#[derive(Clone, Debug, Default)]
pub struct Injected {
    /// The node hit, if a node was.
    pub node: Option<usize>,
    /// What was done.
    pub detail: String,
    /// When the fault took effect (µs since the epoch; right after the signal,
    /// link change, rule or write that makes it).
    pub at_us: u64,
}

/// The value written by [`FaultKind::MalformedKey`].
const GARBAGE: &str = "{\"chaos\": [unterminated";

/// The node `target` names when `primary` is the primary.
pub fn resolve_target(target: Target, primary: usize) -> usize {
    match target {
        Target::Primary => primary,
        Target::Replica(k) => {
            let replicas: Vec<usize> = (0..NODES).filter(|i| *i != primary).collect();
            replicas[k.min(replicas.len() - 1)]
        }
    }
}

/// Injects `fault` (the primary is `primary`), holds it, and heals it.
pub fn run_fault(
    cluster: &mut Cluster<'_>,
    fault: &PlannedFault,
    primary: usize,
) -> Result<Injected> {
    let hold = Duration::from_millis(fault.hold_ms);
    let lab = cluster.lab;
    match fault.kind {
        FaultKind::NodeKill => {
            let n = resolve_target(fault.target, primary);
            let short = cluster.nodes[n].short.clone();
            lab.kill_all(&short);
            let at_us = sys::now_us();
            cluster.nodes[n].agent.kill();
            sys::sleep(hold)?;
            cluster.nodes[n].agent.start()?;
            Ok(Injected {
                at_us,
                node: Some(n),
                detail: format!(
                    "SIGKILL every process of {}; agent restarted after {hold:?}",
                    cluster.nodes[n].name
                ),
            })
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
            Ok(Injected {
                at_us,
                node: Some(n),
                detail,
            })
        }
        FaultKind::AgentKill => {
            cluster.nodes[primary].agent.kill();
            let at_us = sys::now_us();
            sys::sleep(hold)?;
            cluster.nodes[primary].agent.start()?;
            Ok(Injected {
                at_us,
                node: Some(primary),
                detail: format!(
                    "SIGKILL the agent of {}; restarted after {hold:?}",
                    cluster.nodes[primary].name
                ),
            })
        }
        FaultKind::KillAgentGroup => {
            let node = &mut cluster.nodes[primary];
            let helpers = match node.agent.pid() {
                Some(agent) => helpers_of(agent, &lab.pids(&node.short)),
                None => Vec::new(),
            };
            for pid in &helpers {
                sys::signal(*pid, libc::SIGKILL);
            }
            node.agent.kill();
            let at_us = sys::now_us();
            sys::sleep(hold)?;
            cluster.nodes[primary].agent.start()?;
            Ok(Injected {
                at_us,
                node: Some(primary),
                detail: format!(
                    "SIGKILL the agent of {} and its {} helper processes; restarted after {hold:?}",
                    cluster.nodes[primary].name,
                    helpers.len()
                ),
            })
        }
        FaultKind::AgentStop => {
            let stopped = cluster.nodes[primary].agent.signal(libc::SIGSTOP);
            let at_us = sys::now_us();
            let result = sys::sleep(hold);
            cluster.nodes[primary].agent.signal(libc::SIGCONT);
            result?;
            Ok(Injected {
                at_us,
                node: Some(primary),
                detail: format!(
                    "SIGSTOP the agent of {} for {hold:?}{}",
                    cluster.nodes[primary].name,
                    if stopped { "" } else { " (it was not running)" }
                ),
            })
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
            Ok(Injected {
                at_us,
                node: Some(primary),
                detail,
            })
        }
        FaultKind::IsolatePrimary => {
            let short = cluster.nodes[primary].short.clone();
            lab.isolate(&short)?;
            let at_us = sys::now_us();
            let result = sys::sleep(hold);
            lab.reconnect(&short)?;
            result?;
            Ok(Injected {
                at_us,
                node: Some(primary),
                detail: format!(
                    "{} cut off from everything for {hold:?}",
                    cluster.nodes[primary].name
                ),
            })
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
            let at_us = sys::now_us();
            let result = sys::sleep(hold);
            lab.uncut(&short)?;
            result?;
            Ok(Injected {
                at_us,
                node: Some(primary),
                detail: format!(
                    "{} cut from {what} for {hold:?}",
                    cluster.nodes[primary].name
                ),
            })
        }
        FaultKind::EtcdLeaderKill => {
            let leader = sys::wait_for(
                "an etcd leader",
                Duration::from_secs(10),
                Duration::from_millis(200),
                || cluster.etcd_leader(false),
            )?;
            cluster.etcd[leader].proc.kill();
            let at_us = sys::now_us();
            let result = sys::sleep(hold);
            cluster.etcd[leader].proc.start()?;
            result?;
            Ok(Injected {
                at_us,
                node: None,
                detail: format!(
                    "SIGKILL the etcd leader {}; restarted after {hold:?}",
                    cluster.etcd[leader].name
                ),
            })
        }
        FaultKind::EtcdStopAll => {
            for member in &mut cluster.etcd {
                member.proc.signal(libc::SIGSTOP);
            }
            let at_us = sys::now_us();
            let result = sys::sleep(hold);
            for member in &mut cluster.etcd {
                member.proc.signal(libc::SIGCONT);
            }
            result?;
            Ok(Injected {
                at_us,
                node: None,
                detail: format!("SIGSTOP all etcd members for {hold:?}"),
            })
        }
        FaultKind::MalformedKey => {
            let (key, original) = match fault.bad_key {
                BadKey::Leader => (cluster.key("leader"), None),
                BadKey::Config => {
                    let key = cluster.key("config");
                    let value = cluster.etcdctl(&["get", &key, "--print-value-only"])?;
                    let value = value.trim_end_matches('\n').to_owned();
                    (key, (!value.is_empty()).then_some(value))
                }
                BadKey::Member => (
                    cluster.key(&format!("members/{}", cluster.nodes[primary].name)),
                    None,
                ),
            };
            cluster.etcdctl(&["put", &key, GARBAGE])?;
            let at_us = sys::now_us();
            let result = sys::sleep(hold);
            let repaired = match &original {
                Some(value) => cluster.etcdctl(&["put", &key, value]),
                None => cluster.etcdctl(&["del", &key]),
            };
            result?;
            repaired.map_err(|e| ChaosError::Client(format!("repairing {key}: {e}")))?;
            Ok(Injected {
                at_us,
                node: (fault.bad_key == BadKey::Member).then_some(primary),
                detail: format!(
                    "garbage in {key} for {hold:?}, then {}",
                    if original.is_some() {
                        "the original value written back"
                    } else {
                        "deleted"
                    }
                ),
            })
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn the_first_pass_covers_every_kind_and_seeds_replay() {
        let a = plan(42, 15, 5000);
        assert_eq!(a, plan(42, 15, 5000));
        assert_ne!(a, plan(43, 15, 5000));
        let first: BTreeSet<FaultKind> = a[..FaultKind::ALL.len()].iter().map(|f| f.kind).collect();
        assert_eq!(first.len(), FaultKind::ALL.len());
        assert_eq!(plan(1, 3, 5000).len(), 3);
        for f in &a {
            match f.kind {
                FaultKind::AgentStop | FaultKind::EtcdStopAll => assert!(f.hold_ms > 5000),
                FaultKind::PostgresKill => assert_eq!(f.hold_ms, 0),
                _ => assert!(f.hold_ms >= 1000),
            }
        }
    }

    #[test]
    fn the_helpers_of_an_agent_are_its_descendants() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("spawn sleep");
        let me = std::process::id() as i32;
        let pid = child.id() as i32;
        assert_eq!(helpers_of(me, &[pid, 1]), vec![pid]);
        assert!(helpers_of(pid, &[me]).is_empty());
        let _ = child.kill();
        let _ = child.wait();
    }

    #[test]
    fn targets_resolve_against_the_primary() {
        assert_eq!(resolve_target(Target::Primary, 1), 1);
        assert_eq!(resolve_target(Target::Replica(0), 0), 1);
        assert_eq!(resolve_target(Target::Replica(1), 0), 2);
        assert_eq!(resolve_target(Target::Replica(1), 2), 1);
    }
}
