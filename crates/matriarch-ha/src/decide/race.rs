//! Nobody holds the lock: bootstrap, or decide whether this replica races for it.

use std::collections::BTreeMap;

use matriarch_model::{
    ClusterView, Initialize, Lsn, Member, MemberName, MemberState, SynchronousMode,
};

use super::action::{Action, DemoteMode};
use super::candidate::candidate_looks_able;
use super::failsafe::failsafe_verdict;
use super::inputs::Inputs;
use super::memory::Memory;
use super::observed::{LocalRole, PeerReport};
use super::plan::{Decision, EngineRole, Plan};
use super::promotion::push_promotion;
use super::standby::{config_unreadable, push_standby_race_win};
use super::start_timeout::handed_over_bar;
use super::switchover::after_switchover;
use super::sync::sync_verdict;
use super::view::{cluster_system_id, cluster_timeline, history_next_timeline, member};

pub(super) fn no_leader(inputs: &Inputs<'_>, view: &ClusterView, mut plan: Plan) -> Decision {
    let local = inputs.local;
    match cluster_system_id(view) {
        None => {
            if local.role == LocalRole::NoData {
                plan.push(Action::Bootstrap);
                return plan.done(EngineRole::Candidate, "no cluster yet: racing to bootstrap");
            }
            return plan.wait(
                EngineRole::Uncertain,
                "the initialize key is absent but data exists: waiting for an operator",
            );
        }
        Some(Err(())) => {
            return plan.wait(EngineRole::Uncertain, "the initialize key is unreadable")
        }
        Some(Ok(Initialize::InProgress)) => {
            return plan.wait(EngineRole::Uninitialized, "another member is bootstrapping");
        }
        Some(Ok(Initialize::Done(system_id))) => {
            if local.system_id.is_some_and(|own| own != system_id) {
                if local.role == LocalRole::Primary {
                    plan.push(Action::Demote(DemoteMode::Immediate));
                    plan.push(Action::Withdraw);
                }
                return plan.wait(
                    EngineRole::Uncertain,
                    format!("local data belongs to another cluster (system id is not {system_id})"),
                );
            }
        }
    }

    match &local.role {
        LocalRole::Primary => {
            // Failsafe: the lock expired while the DCS was unreachable, but
            // every member promised not to race until after this deadline:
            // take the lock again before anybody else may.
            let deadline = inputs.demotion_deadline();
            if inputs.config.failsafe_mode
                && inputs.memory.failsafe_acked_at.is_some()
                && deadline.is_some_and(|deadline| inputs.now < deadline)
            {
                plan.deadline = deadline;
                plan.push(Action::AcquireLock);
                return plan.done(
                    EngineRole::Leader,
                    "failsafe: the DCS is back and the lock expired meanwhile: the primary takes it again",
                );
            }
            // Without the lock this primary may not take writes, even if
            // nobody else leads: another member may be promoted any moment.
            plan.push(Action::Demote(DemoteMode::Immediate));
            plan.push(Action::Withdraw);
            plan.done(
                EngineRole::Demoting,
                "running as primary without the lock: demoting at once",
            )
        }
        LocalRole::Stopped { .. } => {
            if let Some(why) = handed_over_bar(inputs) {
                return plan.wait(EngineRole::Replica, why);
            }
            if let Some(decision) = after_switchover(inputs, view, &mut plan) {
                return decision;
            }
            plan.push(Action::StartReplica { upstream: None });
            plan.done(
                EngineRole::Replica,
                "no leader: starting read-only to join the race",
            )
        }
        LocalRole::NoData => plan.wait(EngineRole::Uninitialized, "no leader to clone from"),
        LocalRole::Unknown => {
            plan.wait(EngineRole::Uncertain, "no leader; PostgreSQL state unknown")
        }
        LocalRole::Replica { .. } if config_unreadable(view) => plan.wait(
            EngineRole::Replica,
            "leader gone; not racing: the config key is unreadable (it may declare a standby cluster)",
        ),
        LocalRole::Replica { .. } => match race_verdict(inputs, view) {
            Ok(()) if push_standby_race_win(inputs, &mut plan) => plan.done(
                EngineRole::Leader,
                "standby leader gone: this node is the best candidate to follow the source",
            ),
            Ok(()) => {
                plan.push(Action::AcquireLock);
                push_promotion(inputs, view, &mut plan);
                plan.done(
                    EngineRole::Candidate,
                    "leader gone: this node is the best candidate",
                )
            }
            Err(why) => plan.wait(
                EngineRole::Replica,
                format!("leader gone; not racing: {why}"),
            ),
        },
    }
}

/// Patroni's last check before a race: a former leader that still answers
/// as a running primary may still take writes, until its write fence stops
/// them. Its last renewal came before this node first read the lock free,
/// so the fence (armed until that renewal plus ttl minus the write-stop margin)
/// has provably expired a ttl after that read: then the answer no longer
/// matters (a primary whose agent hangs must not block failover forever).
pub(super) fn former_leader_verdict(inputs: &Inputs<'_>) -> Result<(), String> {
    let fence_expired = inputs
        .memory
        .lock_free_since
        .is_some_and(|since| inputs.now >= since.saturating_add(inputs.config.ttl));
    if fence_expired {
        return Ok(());
    }
    match inputs
        .peers
        .iter()
        .find(|(name, report)| report.running_primary && **name != inputs.node.name)
    {
        Some((name, _)) => Err(format!(
            "{name} still answers as a running primary and its write fence may not have expired"
        )),
        None => Ok(()),
    }
}

/// The newest position the former leader is known to have held: the one
/// remembered while it led (unless that was this node) or the `status` key's
/// optime.
fn former_leader_last_known(me: &MemberName, view: &ClusterView, memory: &Memory) -> Option<Lsn> {
    let remembered = memory
        .last_leader
        .as_ref()
        .filter(|last| &last.name != me)
        .and_then(|last| last.optime);
    let status = match &view.status {
        Some(Ok(status)) => Some(status.value.optime),
        _ => None,
    };
    remembered.into_iter().chain(status).max()
}

/// The member records a race ignores, with why: records of members that
/// did not answer the REST probe and claim what no member of this cluster can
/// hold (a position far beyond the former leader's last known one, or a
/// timeline beyond the history's next). A leftover or forged key must not
/// block every failover.
pub fn implausible_records(
    me: &MemberName,
    view: &ClusterView,
    peers: &BTreeMap<MemberName, PeerReport>,
    memory: &Memory,
) -> BTreeMap<MemberName, String> {
    // Records lag the leader by up to a loop of WAL: only a claim far beyond
    // what it was last known to hold is impossible.
    let ceiling = former_leader_last_known(me, view, memory)
        .map(|known| Lsn(known.0.saturating_add(IMPLAUSIBLE_LEAD_BYTES)));
    let next_timeline = history_next_timeline(view);
    view.healthy_records()
        .filter(|m| &m.name != me && !peers.contains_key(&m.name))
        .filter_map(|m| {
            let why = if let Some(position) =
                m.wal_position().filter(|p| ceiling.is_some_and(|c| *p > c))
            {
                format!("its position {position} is far beyond the former leader's last known one")
            } else if let Some(timeline) = m
                .timeline
                .filter(|t| next_timeline.is_some_and(|next| t.0 > next.0.saturating_add(1)))
            {
                format!("its timeline {timeline} is beyond the timeline history")
            } else {
                return None;
            };
            Some((
                m.name.clone(),
                format!("{why}, and its REST API did not answer"),
            ))
        })
        .collect()
}

/// How far beyond the former leader's last known position an unconfirmed
/// record may claim to be before a race ignores it (1 GiB: far more WAL than
/// a primary writes between two updates of its status).
pub(super) const IMPLAUSIBLE_LEAD_BYTES: u64 = 1 << 30;

/// Whether this running replica may race for a free lock, and why not.
pub(super) fn race_verdict(inputs: &Inputs<'_>, view: &ClusterView) -> Result<(), String> {
    let me = &inputs.node.name;
    let local = inputs.local;
    if let Some(why) = handed_over_bar(inputs) {
        return Err(why);
    }
    failsafe_verdict(inputs, view)?;
    former_leader_verdict(inputs)?;
    let forced_candidate = match &view.failover {
        Some(Ok(request)) => request.value.candidate.clone(),
        _ => None,
    };
    let implausible = implausible_records(me, view, inputs.peers, inputs.memory);
    if let Some(candidate) = forced_candidate
        .as_ref()
        .filter(|c| !implausible.contains_key(*c))
    {
        // Defer to the named candidate only while it looks able to take over;
        // a stale request must not leave the cluster leaderless.
        let able = member(view, candidate).is_some_and(|m| {
            // In synchronous mode a candidate behind another synchronous
            // standby refuses to race: then nobody should wait for it.
            let position = m
                .wal_position()
                .into_iter()
                .chain(inputs.peers.get(candidate).and_then(|p| p.wal_position))
                .max();
            let outrun = inputs.config.synchronous_mode != SynchronousMode::Off
                && local
                    .wal_position
                    .is_some_and(|own| position.is_none_or(|p| own > p));
            candidate_looks_able(inputs, view, m) && !outrun
        });
        if candidate != me && able {
            return Err(format!("a failover request names {candidate}"));
        }
    }
    if !inputs.node.tags.allows_failover() {
        return Err("tagged nofailover".to_owned());
    }
    let Some(own_position) = local.wal_position else {
        return Err("own WAL position unknown".to_owned());
    };
    if let Some(cluster) = cluster_timeline(view) {
        if local.timeline.is_none_or(|own| own < cluster) {
            return Err(format!("timeline behind the cluster's ({cluster})"));
        }
    }

    // What the former leader may have acknowledged: its last known position
    // (the `status` key's optime or its record, remembered while it led).
    // A replica further behind than maximum_lag_on_failover does not race,
    // as in Patroni: that bounds the loss of an asynchronous failover, at
    // the price of no automatic failover when every survivor is that far
    // behind; an operator's failover request naming this node overrides it.
    let last_known = former_leader_last_known(me, view, inputs.memory);
    if let Some(optime) = last_known.filter(|_| forced_candidate.as_ref() != Some(me)) {
        let lag = optime.bytes_ahead_of(own_position);
        if lag > inputs.config.maximum_lag_on_failover {
            return Err(format!(
                "{lag} bytes behind the former leader's last known position {optime}, more than maximum_lag_on_failover"
            ));
        }
    }

    // The freshest position anyone alive reports.
    let reported = |name: &MemberName, record: &Member| -> Option<Lsn> {
        let probed = inputs.peers.get(name).and_then(|p| p.wal_position);
        record.wal_position().into_iter().chain(probed).max()
    };
    let peers: Vec<(&Member, Option<Lsn>)> = view
        .healthy_records()
        .filter(|m| {
            &m.name != me && m.state == MemberState::Running && !implausible.contains_key(&m.name)
        })
        .map(|m| (m, reported(&m.name, m)))
        .collect();
    // Positions compare only along one history: a peer on an older timeline
    // holds WAL this node's timeline forked away from.
    let freshest = peers
        .iter()
        .filter(|(m, _)| m.timeline.is_some_and(|t| Some(t) >= local.timeline))
        .filter_map(|(_, p)| *p)
        .chain([own_position])
        .max()
        .unwrap_or(own_position);
    let lag = freshest.bytes_ahead_of(own_position);
    if lag > inputs.config.maximum_lag_on_failover {
        return Err(format!(
            "{lag} bytes behind the freshest member, more than maximum_lag_on_failover"
        ));
    }

    if inputs.config.synchronous_mode != SynchronousMode::Off {
        sync_verdict(inputs, view, &peers, own_position)?;
    }
    if forced_candidate.as_ref() == Some(me) {
        return Ok(());
    }

    let own_key = (own_position, inputs.node.tags.failover_priority);
    for (peer, position) in &peers {
        let Some(position) = position else { continue };
        // Only a peer that could win a race itself can be a better candidate
        // (a peer on an older timeline cannot, whatever its position).
        if !candidate_looks_able(inputs, view, peer) {
            continue;
        }
        let peer_key = (*position, peer.tags.failover_priority);
        let better = peer_key > own_key || (peer_key == own_key && peer.name < *me);
        if better {
            return Err(format!("{} is a better candidate", peer.name));
        }
    }
    Ok(())
}
