//! Another member holds the lock: follow it, rewind or clone to be able to.

use matriarch_model::{ClusterView, MemberName, MemberState, Role};

use super::action::{Action, DemoteMode};
use super::inputs::Inputs;
use super::observed::LocalRole;
use super::plan::{Decision, EngineRole, Plan};
use super::slots::push_replica_slots;
use super::upstream::node_to_follow;
use super::view::member;

/// After this many loops following an upstream without streaming from it, a
/// replica is taken for diverged and stopped to be rewound (pg_rewind finds
/// nothing to do if it was only slow to connect).
pub const LOOPS_BEFORE_REWIND: u32 = 3;

pub(super) fn follower(
    inputs: &Inputs<'_>,
    view: &ClusterView,
    holder: &MemberName,
    mut plan: Plan,
) -> Decision {
    match &inputs.local.role {
        LocalRole::Primary => {
            plan.push(Action::Demote(DemoteMode::Immediate));
            plan.push(Action::Withdraw);
            plan.done(
                EngineRole::Demoting,
                format!("running as primary while {holder} holds the lock: demoting at once"),
            )
        }
        LocalRole::Replica { upstream } => {
            if let Some(cause) = inputs
                .memory
                .start_failure
                .as_ref()
                .filter(|_| !inputs.local.receiving)
            {
                // A full disk: stopping, rewinding and starting again would
                // cycle without ever receiving WAL. Say why and wait.
                return plan.wait(
                    EngineRole::Replica,
                    format!("{cause}: not receiving WAL from {holder}; not stopping to rewind"),
                );
            }
            if inputs.memory.ran_as_primary {
                // Our timeline may have diverged: stop, rewind, then follow.
                plan.push(Action::Demote(DemoteMode::Graceful));
                return plan.done(EngineRole::Demoting, "former primary: stopping to rewind");
            }
            // Only a leader on a newer timeline can have a history this
            // replica diverged from; on the same timeline a silent upstream is
            // just down (a dead leader must not make its replicas stop).
            let leader_ahead = member(view, holder)
                .and_then(|m| m.timeline)
                .is_some_and(|theirs| inputs.local.timeline.is_none_or(|ours| theirs > ours));
            if upstream.as_ref() == Some(holder)
                && leader_ahead
                && inputs.memory.loops_not_streaming >= LOOPS_BEFORE_REWIND
            {
                plan.push(Action::Demote(DemoteMode::Graceful));
                return plan.done(
                    EngineRole::Demoting,
                    format!("following {holder} without receiving WAL: stopping to rewind"),
                );
            }
            // Two forks may carry the same timeline number (a promotion whose
            // history never reached the DCS, then another from the older
            // timeline), or the leader may run on an older timeline than a
            // promotion this replica followed: nothing streams. Once
            // the leader has looked alive for two ttls (a dead one would have
            // lost its lock), stop and let pg_rewind compare the histories.
            let leader_alive_on_our_timeline = member(view, holder).is_some_and(|m| {
                m.role == Role::Primary
                    && m.state == MemberState::Running
                    && m.timeline.is_some_and(|theirs| {
                        inputs.local.timeline.is_some_and(|ours| theirs <= ours)
                    })
            });
            let silent_for = inputs
                .config
                .loop_wait
                .saturating_mul(inputs.memory.loops_not_streaming);
            if upstream.as_ref() == Some(holder)
                && !inputs.local.receiving
                && leader_alive_on_our_timeline
                && silent_for >= inputs.config.ttl.saturating_mul(2)
            {
                plan.push(Action::Demote(DemoteMode::Graceful));
                return plan.done(
                    EngineRole::Demoting,
                    format!(
                        "following {holder} (not on a newer timeline) without receiving WAL for two ttls: stopping to rewind"
                    ),
                );
            }
            if replica_diverged(inputs, view) {
                plan.push(Action::Demote(DemoteMode::Graceful));
                return plan.done(
                    EngineRole::Demoting,
                    "received WAL past the point where the cluster's timeline forked: stopping to rewind",
                );
            }
            let target = node_to_follow(inputs, view, holder);
            match (&target, upstream) {
                (Some(target), _) if upstream.as_ref() != Some(target) => {
                    plan.push(Action::Follow(target.clone()));
                    let reason = if target == holder {
                        format!("following the new leader {holder}")
                    } else {
                        format!("streaming from {target} (replicatefrom), leader {holder}")
                    };
                    return plan.done(EngineRole::Replica, reason);
                }
                (None, Some(streaming_from)) => {
                    // A running replica cannot drop primary_conninfo without
                    // a restart on every version: stop, then start without it.
                    plan.push(Action::Demote(DemoteMode::Graceful));
                    return plan.done(
                        EngineRole::Replica,
                        format!("tagged nostream but streaming from {streaming_from}: restarting without streaming"),
                    );
                }
                _ => {}
            }
            let Some(target) = target else {
                push_replica_slots(inputs, view, holder, &mut plan);
                return plan.done(
                    EngineRole::Replica,
                    format!("replaying WAL from the archive only (nostream), leader {holder}"),
                );
            };
            if !inputs.local.receiving && inputs.memory.loops_not_streaming >= LOOPS_BEFORE_REWIND {
                // No loop count in the reason: it is logged when it changes.
                return plan.wait(
                    EngineRole::Replica,
                    format!("following {target} without receiving WAL"),
                );
            }
            push_replica_slots(inputs, view, holder, &mut plan);
            if &target == holder {
                plan.done(EngineRole::Replica, format!("following {holder}"))
            } else {
                plan.done(
                    EngineRole::Replica,
                    format!("streaming from {target} (replicatefrom), leader {holder}"),
                )
            }
        }
        LocalRole::Stopped { .. } => {
            if inputs.memory.rewind_impossible {
                plan.push(Action::CloneFrom(clone_source(inputs, view, holder)));
                return plan.done(EngineRole::Replica, "rewind impossible: cloning anew");
            }
            // Any stopped data directory may hold WAL the leader never had
            // (an agent restart forgets that it ran as primary): check its
            // timeline against the leader's before streaming. pg_rewind
            // reports NotNeeded quickly when nothing diverged.
            if inputs.memory.timeline_checked_against.as_ref() != Some(holder) {
                plan.push(Action::Rewind(holder.clone()));
                return plan.done(
                    EngineRole::Replica,
                    format!("checking the timeline against {holder} before rejoining"),
                );
            }
            let target = node_to_follow(inputs, view, holder);
            let reason = match &target {
                Some(target) if target == holder => format!("rejoining as a replica of {holder}"),
                Some(target) => {
                    format!("rejoining as a replica of {holder}, streaming from {target}")
                }
                None => format!("rejoining as a replica of {holder}, without streaming (nostream)"),
            };
            plan.push(Action::StartReplica { upstream: target });
            plan.done(EngineRole::Replica, reason)
        }
        LocalRole::NoData => {
            let leader_running =
                member(view, holder).is_some_and(|m| m.state == MemberState::Running);
            if !leader_running {
                return plan.wait(
                    EngineRole::Uninitialized,
                    "waiting for a running leader to clone from",
                );
            }
            plan.push(Action::CloneFrom(clone_source(inputs, view, holder)));
            plan.done(EngineRole::Uninitialized, "cloning a new replica")
        }
        LocalRole::Unknown => plan.wait(EngineRole::Uncertain, "PostgreSQL state unknown"),
    }
}

/// A replica on an older timeline that holds WAL past the point where that
/// timeline ended (the old primary sent it more than the new primary had)
/// cannot stream from the new primary until it is rewound. Patroni checks
/// the same against the timeline history.
pub(super) fn replica_diverged(inputs: &Inputs<'_>, view: &ClusterView) -> bool {
    let (Some(own_timeline), Some(position)) = (inputs.local.timeline, inputs.local.wal_position)
    else {
        return false;
    };
    let Some(Ok(history)) = &view.history else {
        return false;
    };
    // A fork of our timeline matters only if the leader left it: a leader
    // still on it (the fork's primary was lost since) has our WAL past the
    // stale fork point too.
    let leader_timeline = view
        .leader_name()
        .and_then(|holder| member(view, holder))
        .and_then(|m| m.timeline);
    if leader_timeline.is_some_and(|theirs| theirs <= own_timeline) {
        return false;
    }
    history
        .value
        .0
        .iter()
        .any(|entry| entry.timeline == own_timeline && position > entry.switch_lsn)
}

/// A running replica tagged `clonefrom` on the cluster's timeline, else the leader.
pub(super) fn clone_source(
    inputs: &Inputs<'_>,
    view: &ClusterView,
    holder: &MemberName,
) -> MemberName {
    view.healthy_records()
        .filter(|m| {
            m.tags.clonefrom
                && m.name != inputs.node.name
                && m.role == Role::Replica
                && m.state == MemberState::Running
        })
        .map(|m| m.name.clone())
        .min()
        .unwrap_or_else(|| holder.clone())
}
