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
    /// How long each switchover took (ms), for [`FaultKind::SecondSwitchover`].
    pub switchover_ms: Vec<f64>,
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
    timing: (u64, u64, u64),
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
                ..Injected::default()
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
                ..Injected::default()
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
                ..Injected::default()
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
                ..Injected::default()
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
                ..Injected::default()
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
                ..Injected::default()
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
                ..Injected::default()
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
                ..Injected::default()
            })
        }
        FaultKind::EtcdLeaderKill => {
            let leader = sys::wait_for(
                "a DCS leader",
                Duration::from_secs(10),
                Duration::from_millis(200),
                || cluster.dcs_leader(false),
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
                    "SIGKILL the {} leader {}; restarted after {hold:?}",
                    cluster.dcs.name(),
                    cluster.etcd[leader].name
                ),
                ..Injected::default()
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
                detail: format!("SIGSTOP all {} servers for {hold:?}", cluster.dcs.name()),
                ..Injected::default()
            })
        }
        FaultKind::SecondSwitchover => second_switchover(cluster, fault, primary),
        FaultKind::EditTiming => edit_timing(cluster, fault, primary, timing),
        FaultKind::EditSyncCount => edit_sync_count(cluster, fault, primary),
        FaultKind::MalformedKeys => malformed_keys(cluster, fault, primary),
        FaultKind::MalformedKey => {
            let (key, original) = match fault.bad_key {
                BadKey::Leader => (cluster.key("leader"), None),
                BadKey::Config => {
                    let key = cluster.key("config");
                    let value = cluster.dcs_get(&key)?;
                    (key, value.filter(|v| !v.is_empty()))
                }
                BadKey::Member => (
                    cluster.key(&format!("members/{}", cluster.nodes[primary].name)),
                    None,
                ),
            };
            cluster.dcs_put(&key, GARBAGE.as_bytes())?;
            let at_us = sys::now_us();
            let result = sys::sleep(hold);
            let repaired = match &original {
                Some(value) => cluster.dcs_put(&key, value),
                None => cluster.dcs_del(&key),
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
                ..Injected::default()
            })
        }
    }
}

/// How long a REST call that waits for a switchover may take.
const SWITCHOVER_TIMEOUT: Duration = Duration::from_secs(45);
/// How long the second switchover is retried while the API refuses it
/// (the new primary's view not settled yet).
const SECOND_SWITCHOVER_WINDOW: Duration = Duration::from_secs(5);

/// `POST /switchover` to `from`'s API (leader `from`, candidate `to`), retried
/// while it is refused (412, 503, no answer) until `retry_for` has passed; the
/// final status and body.
fn post_switchover(
    cluster: &Cluster<'_>,
    from: usize,
    to: usize,
    retry_for: Duration,
) -> (u16, String) {
    let started = std::time::Instant::now();
    let body = serde_json::json!({
        "leader": cluster.nodes[from].name,
        "candidate": cluster.nodes[to].name,
    });
    loop {
        let answer = cluster.nodes[from]
            .call("POST", "/switchover", &body, SWITCHOVER_TIMEOUT)
            .unwrap_or_else(|e| (0, e.to_string()));
        let refused = matches!(answer.0, 0 | 412 | 503);
        if !refused || started.elapsed() >= retry_for || sys::check_interrupt().is_err() {
            return answer;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The nodes the primary's `/patroni` lists as synchronous (or quorum) standbys.
fn synchronous_standbys(cluster: &Cluster<'_>, primary: usize) -> Vec<usize> {
    let Some(patroni) = cluster.nodes[primary].get_json("/patroni") else {
        return Vec::new();
    };
    let Some(replication) = patroni.get("replication").and_then(|r| r.as_array()) else {
        return Vec::new();
    };
    replication
        .iter()
        .filter(|r| {
            matches!(
                r.get("sync_state").and_then(serde_json::Value::as_str),
                Some("sync" | "quorum")
            )
        })
        .filter_map(|r| {
            r.get("application_name")
                .and_then(serde_json::Value::as_str)
        })
        .filter_map(|name| cluster.nodes.iter().position(|n| n.name == name))
        .collect()
}

/// Waits until `node` answers `/primary` with 200, or `posted` reports that
/// the switchover request was answered with a failure. The time it took.
fn wait_promoted(
    cluster: &Cluster<'_>,
    node: usize,
    posted: &std::sync::Mutex<Option<(u16, String)>>,
) -> Result<Duration> {
    let started = std::time::Instant::now();
    loop {
        sys::check_interrupt()?;
        if cluster.nodes[node].get("/primary").0 == 200 {
            return Ok(started.elapsed());
        }
        if let Some((status, body)) = posted.lock().ok().and_then(|g| g.clone()) {
            if !(200..300).contains(&status) {
                return Err(ChaosError::Client(format!(
                    "switchover to {} answered {status}: {}",
                    cluster.nodes[node].name,
                    body.trim()
                )));
            }
        }
        if started.elapsed() > SWITCHOVER_TIMEOUT + Duration::from_secs(5) {
            return Err(ChaosError::Client(format!(
                "{} did not answer /primary within {:?} of the switchover request",
                cluster.nodes[node].name,
                started.elapsed()
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// [`FaultKind::SecondSwitchover`]: primary -> replica A, and as soon as A answers
/// `/primary`, A -> the other replica B. Each request runs in its own thread so
/// that the second one is sent while the first request may still be waiting
/// for its answer, as an operator's second command would be.
fn second_switchover(
    cluster: &mut Cluster<'_>,
    fault: &PlannedFault,
    primary: usize,
) -> Result<Injected> {
    let drawn = resolve_target(Target::Replica((fault.variant % 2) as usize), primary);
    // In the synchronous modes only a synchronous standby may take over (the
    // leader waits for one; Patroni refuses any other candidate): an operator
    // picks one from `/patroni`, and so does this fault.
    let a = if cluster.mode.is_synchronous() {
        let sync = synchronous_standbys(cluster, primary);
        if sync.contains(&drawn) {
            drawn
        } else {
            sync.first().copied().unwrap_or(drawn)
        }
    } else {
        drawn
    };
    let b = (0..NODES)
        .find(|i| *i != primary && *i != a)
        .unwrap_or(primary);
    let cluster: &Cluster<'_> = cluster;
    let first_answer = std::sync::Mutex::new(None);
    let second_answer = std::sync::Mutex::new(None);
    let at_us = sys::now_us();
    std::thread::scope(|scope| -> Result<Injected> {
        scope.spawn(|| {
            let answer = post_switchover(cluster, primary, a, Duration::ZERO);
            if let Ok(mut slot) = first_answer.lock() {
                *slot = Some(answer);
            }
        });
        let first = wait_promoted(cluster, a, &first_answer)?;
        let promoted = std::time::Instant::now();
        scope.spawn(|| {
            let answer = post_switchover(cluster, a, b, SECOND_SWITCHOVER_WINDOW);
            if let Ok(mut slot) = second_answer.lock() {
                *slot = Some(answer);
            }
        });
        let second = wait_promoted(cluster, b, &second_answer)?;
        // The gap is what the operator's second command waited after the
        // promotion, its own retries included.
        let total_second = promoted.elapsed();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        Ok(Injected {
            at_us,
            node: Some(primary),
            detail: format!(
                "switchover {} -> {} took {:.0} ms; then {} -> {} requested at once, {} answered /primary {:.0} ms after {}'s promotion",
                cluster.nodes[primary].name,
                cluster.nodes[a].name,
                ms(first),
                cluster.nodes[a].name,
                cluster.nodes[b].name,
                cluster.nodes[b].name,
                ms(total_second),
                cluster.nodes[a].name,
            ),
            switchover_ms: vec![ms(first), ms(second)],
        })
    })
    .and_then(|injected| {
        // Both requests must have been answered with success: a switchover
        // the API accepted and then reported failed is a finding.
        for (what, slot) in [("first", &first_answer), ("second", &second_answer)] {
            match slot.lock().ok().and_then(|g| g.clone()) {
                Some((status, _)) if (200..300).contains(&status) => {}
                Some((status, body)) => {
                    return Err(ChaosError::Client(format!(
                        "the {what} switchover answered {status}: {}",
                        body.trim()
                    )))
                }
                None => {
                    return Err(ChaosError::Client(format!(
                        "the {what} switchover request got no answer"
                    )))
                }
            }
        }
        Ok(injected)
    })
}

/// `PATCH /config` with `body` through `node`'s API, retried for up to 10 s
/// while it gets no 200 (a node that is changing roles may not answer).
fn patch_config(cluster: &Cluster<'_>, node: usize, body: &serde_json::Value) -> Result<()> {
    let started = std::time::Instant::now();
    loop {
        // Any node's API writes the key; start at `node` and go round.
        let at = (node + (started.elapsed().as_secs() as usize)) % NODES;
        let answer = cluster.nodes[at].call("PATCH", "/config", body, Duration::from_secs(5));
        match answer {
            Ok((200, _)) => return Ok(()),
            Ok((400, text)) => {
                return Err(ChaosError::Client(format!(
                    "PATCH /config {body} refused: {}",
                    text.trim()
                )))
            }
            other if started.elapsed() > Duration::from_secs(10) => {
                return Err(ChaosError::Client(format!(
                    "PATCH /config {body} failed for 10 s: {other:?}"
                )))
            }
            _ => {}
        }
        sys::sleep(Duration::from_millis(300))?;
    }
}

/// The ttl/loop_wait/retry_timeout combinations [`FaultKind::EditTiming`] moves
/// to; each keeps loop_wait + 2 x retry_timeout <= ttl.
pub const TIMINGS: [(u64, u64, u64); 4] = [(8, 2, 3), (8, 1, 3), (7, 1, 3), (10, 2, 4)];

/// The combination `variant` picks, never `current`.
pub fn other_timing(variant: u64, current: (u64, u64, u64)) -> (u64, u64, u64) {
    let start = (variant % TIMINGS.len() as u64) as usize;
    (0..TIMINGS.len())
        .map(|k| TIMINGS[(start + k) % TIMINGS.len()])
        .find(|t| *t != current)
        .unwrap_or(TIMINGS[start])
}

fn timing_json(t: (u64, u64, u64)) -> serde_json::Value {
    serde_json::json!({"ttl": t.0, "loop_wait": t.1, "retry_timeout": t.2})
}

/// [`FaultKind::EditTiming`].
fn edit_timing(
    cluster: &mut Cluster<'_>,
    fault: &PlannedFault,
    primary: usize,
    timing: (u64, u64, u64),
) -> Result<Injected> {
    let hold = Duration::from_millis(fault.hold_ms);
    let new = other_timing(fault.variant, timing);
    patch_config(cluster, primary, &timing_json(new))?;
    let at_us = sys::now_us();
    let result = sys::sleep(hold);
    let restored = patch_config(cluster, primary, &timing_json(timing));
    result?;
    restored?;
    Ok(Injected {
        at_us,
        node: None,
        detail: format!(
            "PATCH /config ttl/loop_wait/retry_timeout {}/{}/{} -> {}/{}/{} for {hold:?}, then back",
            timing.0, timing.1, timing.2, new.0, new.1, new.2
        ),
        ..Injected::default()
    })
}

/// [`FaultKind::EditSyncCount`]: `synchronous_node_count` 1 <-> 2 (with two
/// replicas, 2 is the most) and `synchronous_mode_strict` toggled.
fn edit_sync_count(
    cluster: &mut Cluster<'_>,
    fault: &PlannedFault,
    primary: usize,
) -> Result<Injected> {
    let hold = Duration::from_millis(fault.hold_ms);
    let config = cluster.nodes[primary]
        .get_json("/config")
        .or_else(|| (0..NODES).find_map(|i| cluster.nodes[i].get_json("/config")))
        .ok_or_else(|| ChaosError::Client("no node answered GET /config".into()))?;
    let count = config
        .get("synchronous_node_count")
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(1);
    let strict = config
        .get("synchronous_mode_strict")
        .and_then(serde_json::Value::as_bool)
        .unwrap_or(false);
    let new_count = if count >= 2 { 1 } else { 2 };
    patch_config(
        cluster,
        primary,
        &serde_json::json!({"synchronous_node_count": new_count, "synchronous_mode_strict": !strict}),
    )?;
    let at_us = sys::now_us();
    // The most synchronous standbys the primary reported during the hold:
    // evidence that the agents applied the new count.
    let until = std::time::Instant::now() + hold;
    let mut most_sync = 0;
    let mut result = Ok(());
    while std::time::Instant::now() < until {
        if let Err(e) = sys::sleep(Duration::from_millis(250)) {
            result = Err(e);
            break;
        }
        let sync = cluster.nodes[primary]
            .get_json("/patroni")
            .and_then(|p| p.get("replication").and_then(|r| r.as_array().cloned()))
            .map(|r| {
                r.iter()
                    .filter(|x| {
                        matches!(
                            x.get("sync_state").and_then(serde_json::Value::as_str),
                            Some("sync" | "quorum")
                        )
                    })
                    .count()
            })
            .unwrap_or(0);
        most_sync = most_sync.max(sync);
    }
    let restored = patch_config(
        cluster,
        primary,
        &serde_json::json!({"synchronous_node_count": count, "synchronous_mode_strict": strict}),
    );
    result?;
    restored?;
    Ok(Injected {
        at_us,
        node: None,
        detail: format!(
            "PATCH /config synchronous_node_count {count} -> {new_count}, synchronous_mode_strict {strict} -> {} for {hold:?} (up to {most_sync} synchronous standbys seen), then back",
            !strict
        ),
        ..Injected::default()
    })
}

/// The garbage [`FaultKind::MalformedKeys`] writes into `key` (`config`, `sync`,
/// `failover`, `member`): random bytes (0), huge numbers (1) or wrong JSON
/// types (2), as `kind` says.
pub fn garbage(key: &str, kind: u64, rng: &mut Rng, leader: &str, other: &str) -> Vec<u8> {
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

/// [`FaultKind::MalformedKeys`].
fn malformed_keys(
    cluster: &mut Cluster<'_>,
    fault: &PlannedFault,
    primary: usize,
) -> Result<Injected> {
    let hold = Duration::from_millis(fault.hold_ms);
    let mut rng = Rng::new(fault.variant);
    let member = (fault.variant % NODES as u64) as usize;
    let other = resolve_target(Target::Replica(0), primary);
    let leader_name = cluster.nodes[primary].name.clone();
    let other_name = cluster.nodes[other].name.clone();
    let panics_before: Vec<usize> = (0..NODES).map(|i| panics(cluster, i)).collect();
    let config_key = cluster.key("config");
    let good_config = cluster
        .dcs_get(&config_key)?
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
        cluster.dcs_put(key, &value)?;
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
    let until = std::time::Instant::now() + hold;
    let mut lost_primary = None;
    while std::time::Instant::now() < until {
        sys::sleep(Duration::from_millis(250))?;
        let others: Vec<usize> = (0..NODES)
            .filter(|i| *i != primary && cluster.nodes[*i].get("/primary").0 == 200)
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
        if cluster.dcs_get(key).ok().flatten().as_ref() == Some(value) {
            kept.push(*what);
        }
    }
    let mut repair_errors = Vec::new();
    for (what, key) in &keys {
        let repaired = if *what == "config" {
            cluster.dcs_put(key, &good_config)
        } else {
            cluster.dcs_del(key)
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
        if !cluster.nodes[i].agent.running() {
            problems.push(format!(
                "the agent of {} is not running: {}",
                cluster.nodes[i].name,
                crate::cluster::tail(cluster.nodes[i].agent.log(), 5)
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
    Ok(Injected {
        at_us,
        node: Some(member),
        detail: format!(
            "garbage in {} for {hold:?} (still in place at the end: {}); config written back, the rest deleted; {} kept the primary, every agent alive",
            written.join(", "),
            if kept.is_empty() { "none".to_owned() } else { kept.join(", ") },
            leader_name
        ),
        ..Injected::default()
    })
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
        let a = plan(42, 20, 5000, &[]);
        assert_eq!(a, plan(42, 20, 5000, &[]));
        assert_ne!(a, plan(43, 20, 5000, &[]));
        let first: BTreeSet<FaultKind> = a[..FaultKind::ALL.len()].iter().map(|f| f.kind).collect();
        assert_eq!(first.len(), FaultKind::ALL.len());
        assert_eq!(plan(1, 3, 5000, &[]).len(), 3);
        for f in &a {
            match f.kind {
                FaultKind::AgentStop | FaultKind::EtcdStopAll => assert!(f.hold_ms > 5000),
                FaultKind::PostgresKill | FaultKind::SecondSwitchover => assert_eq!(f.hold_ms, 0),
                _ => assert!(f.hold_ms >= 1000),
            }
        }
    }

    #[test]
    fn kinds_restrict_the_plan_and_each_runs_once_first() {
        let only = [
            FaultKind::SecondSwitchover,
            FaultKind::EditTiming,
            FaultKind::EditSyncCount,
            FaultKind::MalformedKeys,
        ];
        let p = plan(41, 8, 5000, &only);
        assert_eq!(p.len(), 8);
        assert!(p.iter().all(|f| only.contains(&f.kind)));
        let first: BTreeSet<FaultKind> = p[..4].iter().map(|f| f.kind).collect();
        assert_eq!(first.len(), 4, "{p:?}");
        assert!(FaultKind::parse("edit-sync-count").is_ok());
        assert!(FaultKind::parse("no-such-kind").is_err());
        for k in FaultKind::ALL {
            assert_eq!(FaultKind::parse(k.name()).ok(), Some(k));
        }
    }

    #[test]
    fn other_timings_are_valid_and_differ() {
        for variant in 0..8 {
            for current in [(5, 1, 2), (8, 2, 3), (8, 1, 3)] {
                let t = other_timing(variant, current);
                assert_ne!(t, current);
                assert!(t.1 > 0 && t.2 > 0 && t.1 + 2 * t.2 <= t.0, "{t:?}");
            }
        }
    }

    #[test]
    fn garbage_is_what_it_says() {
        let mut rng = Rng::new(3);
        let bytes = garbage("config", 0, &mut rng, "node1", "node2");
        assert_eq!(bytes.len(), 64);
        assert!(!bytes.contains(&0));
        let huge: serde_json::Value =
            serde_json::from_slice(&garbage("config", 1, &mut rng, "node1", "node2"))
                .expect("huge numbers are JSON");
        assert!(huge["retry_timeout"].as_f64().is_some_and(|v| v >= 1e19));
        for key in ["config", "sync", "failover", "member"] {
            let typed: serde_json::Value =
                serde_json::from_slice(&garbage(key, 2, &mut rng, "node1", "node2"))
                    .expect("wrong types are JSON");
            assert!(typed.is_object());
        }
        let sync: serde_json::Value =
            serde_json::from_slice(&garbage("sync", 2, &mut rng, "node1", "node2")).unwrap();
        assert!(sync["leader"].is_number());
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
