//! The fault kinds and a run's seeded plan of faults.

use std::time::Duration;

use serde::Serialize;

use crate::cluster::layout::NODES;
use crate::error::{ChaosError, Result};
use crate::sys::Rng;

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
    /// `POST /switchover` from the primary to a replica and, as soon as that
    /// replica answers `/primary`, a second one from it to the other replica.
    SecondSwitchover,
    /// `PATCH /config` of ttl/loop_wait/retry_timeout to another valid
    /// combination for the hold, then back.
    EditTiming,
    /// `PATCH /config` of `synchronous_node_count` (1 <-> 2) and
    /// `synchronous_mode_strict` (toggled) for the hold, then back.
    EditSyncCount,
    /// Garbage (random bytes, huge numbers, wrong JSON types) in the `config`,
    /// `sync`, `failover` and one member key at once; then `config` is written
    /// back and the others deleted. The primary must stay, every agent must live.
    MalformedKeys,
}

impl FaultKind {
    /// Every kind.
    pub const ALL: [FaultKind; 16] = [
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
        FaultKind::SecondSwitchover,
        FaultKind::EditTiming,
        FaultKind::EditSyncCount,
        FaultKind::MalformedKeys,
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
            FaultKind::SecondSwitchover => "second-switchover",
            FaultKind::EditTiming => "edit-timing",
            FaultKind::EditSyncCount => "edit-sync-count",
            FaultKind::MalformedKeys => "malformed-keys",
        }
    }

    /// The kind named `name` (as [`FaultKind::name`] spells it).
    pub fn parse(name: &str) -> Result<FaultKind> {
        FaultKind::ALL
            .into_iter()
            .find(|k| k.name() == name)
            .ok_or_else(|| {
                let all: Vec<&str> = FaultKind::ALL.iter().map(|k| k.name()).collect();
                ChaosError::Usage(format!(
                    "unknown fault kind {name:?} (kinds: {})",
                    all.join(", ")
                ))
            })
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
    /// Random bits for the newer kinds: the switchover's first candidate, the
    /// timing combination, the garbage of each key, the member key spoiled.
    pub variant: u64,
}

impl PlannedFault {
    /// How long the fault lasts before it is healed.
    pub fn hold(&self) -> Duration {
        Duration::from_millis(self.hold_ms)
    }
}

/// The faults of a run: a seeded shuffle of every kind of `only` (all kinds
/// when empty) first (cut to `count`), then kinds drawn at random from it. Hold
/// times are drawn around the ttl (`ttl_ms`).
pub fn plan(seed: u64, count: usize, ttl_ms: u64, only: &[FaultKind]) -> Vec<PlannedFault> {
    let mut rng = Rng::new(seed);
    let mut pool: Vec<FaultKind> = if only.is_empty() {
        FaultKind::ALL.to_vec()
    } else {
        only.to_vec()
    };
    pool.sort();
    pool.dedup();
    let mut first = pool.clone();
    rng.shuffle(&mut first);
    let mut kinds: Vec<FaultKind> = first.into_iter().take(count).collect();
    while kinds.len() < count {
        kinds.push(pool[rng.below(pool.len() as u64) as usize]);
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
            let variant = rng.next_u64();
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
                FaultKind::SecondSwitchover => 0,
                FaultKind::EditTiming | FaultKind::EditSyncCount | FaultKind::MalformedKeys => {
                    rng.range(3000, 8000)
                }
            };
            PlannedFault {
                kind,
                target,
                hold_ms,
                bad_key,
                variant,
            }
        })
        .collect()
}

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
