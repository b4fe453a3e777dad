//! This node holds the leader lock: renew it, keep (or make) the primary,
//! its routes, its synchronous standbys and its `failsafe` key.

use std::collections::BTreeSet;
use std::time::Duration;

use matriarch_model::{ClusterConfig, ClusterView, MemberName, MemberState, Role, SynchronousMode};

use super::failsafe::desired_failsafe;
use super::observed::LocalRole;
use super::race::race_verdict;
use super::switchover::{planned_switchover, unknown_candidate, UnknownCandidate};
use super::sync::maintain_sync;
use super::{Action, Decision, DemoteMode, EngineRole, Inputs, Plan, Routes};

pub(super) fn leader(inputs: &Inputs<'_>, view: &ClusterView, mut plan: Plan) -> Decision {
    let me = &inputs.node.name;
    plan.deadline = inputs.demotion_deadline();
    if let Some(deadline) = plan.deadline {
        if inputs.now >= deadline && inputs.local.role == LocalRole::Primary {
            // The lock may be about to expire on the server although it still
            // reads as ours: stop writes first, renew after.
            plan.push(Action::Demote(DemoteMode::Immediate));
            plan.push(Action::Withdraw);
            return plan.done(
                EngineRole::Demoting,
                "the lock was not renewed in time: stopping writes before it can expire",
            );
        }
    }
    plan.push(Action::RenewLock);

    match &inputs.local.role {
        LocalRole::Primary => {}
        LocalRole::Replica { .. } => {
            // The lock may have been taken on a decision that went stale
            // (a pause between deciding and acquiring): check again.
            if let Err(why) = race_verdict(inputs, view) {
                plan.actions.retain(|a| *a != Action::RenewLock);
                plan.push(Action::ReleaseLock);
                return plan.done(
                    EngineRole::Replica,
                    format!(
                        "holding the lock but no longer the right candidate ({why}): releasing it"
                    ),
                );
            }
            push_promotion(inputs, view, &mut plan);
            return plan.done(EngineRole::Candidate, "holding the lock: promoting");
        }
        LocalRole::Stopped { .. } | LocalRole::Unknown => {
            if inputs.memory.primary_start_failures >= 2 {
                plan.actions.retain(|a| *a != Action::RenewLock);
                plan.push(Action::ReleaseLock);
                plan.push(Action::Withdraw);
                return plan.done(
                    EngineRole::Demoting,
                    "PostgreSQL does not start as primary: handing the lock over",
                );
            }
            if inputs.local.role == LocalRole::Unknown {
                let answered_at = inputs
                    .memory
                    .postgres_answered_at
                    .unwrap_or(inputs.failsafe.listening_since);
                let silent_for = inputs.now.saturating_sub(answered_at);
                if silent_for >= postgres_silence_limit(inputs.config) {
                    // Taken for hung: no more renewals. If it cannot even be
                    // stopped, its fence stops it before the lock expires.
                    plan.actions.retain(|a| *a != Action::RenewLock);
                    plan.push(Action::Demote(DemoteMode::Immediate));
                    plan.push(Action::Withdraw);
                    plan.push(Action::ReleaseLock);
                    return plan.done(
                        EngineRole::Demoting,
                        format!("PostgreSQL has not answered for {silent_for:?}: stopping it and handing the lock over"),
                    );
                }
                return plan.done(
                    EngineRole::Leader,
                    "holding the lock; PostgreSQL state unknown",
                );
            }
            if !inputs.memory.ran_as_primary {
                // A replica's data directory started as primary would skip
                // promotion and every check of the race.
                plan.actions.retain(|a| *a != Action::RenewLock);
                plan.push(Action::ReleaseLock);
                return plan.done(
                    EngineRole::Replica,
                    "holding the lock with a stopped replica: releasing it for a proper race",
                );
            }
            plan.push(Action::StartPrimary);
            return plan.done(
                EngineRole::Leader,
                "holding the lock: restarting PostgreSQL as primary",
            );
        }
        LocalRole::NoData => {
            plan.actions.retain(|a| *a != Action::RenewLock);
            plan.push(Action::ReleaseLock);
            return plan.done(
                EngineRole::Uninitialized,
                "holding the lock without data: releasing it",
            );
        }
    }

    // A running primary holding the lock.
    if let Some(decision) = planned_switchover(inputs, view, &mut plan) {
        return decision;
    }
    maintain_sync(inputs, view, &mut plan);
    push_route(inputs, view, &mut plan);
    if inputs.config.failsafe_mode {
        let desired = desired_failsafe(inputs, view);
        let current = match &view.failsafe {
            Some(Ok(key)) => Some(&key.value),
            _ => None,
        };
        if current != Some(&desired) {
            plan.push(Action::WriteFailsafe(desired));
        }
    }
    if let Some(Ok(request)) = &view.failover {
        // A request naming us as the candidate has been carried out; one
        // naming another leader is stale.
        let stale = request.value.leader.as_ref().is_some_and(|l| l != me)
            || request.value.candidate.as_ref() == Some(me);
        if stale {
            plan.push(Action::ClearFailoverRequest(request.version));
        }
    }
    match unknown_candidate(inputs, view, &mut plan) {
        Some(UnknownCandidate::Waiting(why)) => {
            let mut decision = plan.done(EngineRole::Leader, "holding the lock as primary");
            decision.pending = Some(why);
            decision
        }
        Some(UnknownCandidate::Cleared(why)) => plan.done(EngineRole::Leader, why),
        None => plan.done(EngineRole::Leader, "holding the lock as primary"),
    }
}

/// Promotion, preceded in synchronous mode by emptying the `sync` key: until
/// this node waits for standbys of its own, no other member may be promoted
/// on the strength of the previous leader's key. In strict mode PostgreSQL is
/// first set to wait for any standby, so no commit is acknowledged by the
/// new primary alone.
pub(super) fn push_promotion(inputs: &Inputs<'_>, view: &ClusterView, plan: &mut Plan) {
    if let Some(former) = failover_from(inputs, view) {
        plan.push(Action::WithdrawFormerLeader(former));
    }
    let key_is_empty_and_ours = matches!(&view.sync,
        Some(Ok(sync)) if sync.value.sync_standbys.is_empty() && sync.value.leader.as_ref() == Some(&inputs.node.name));
    if inputs.config.synchronous_mode != SynchronousMode::Off && !key_is_empty_and_ours {
        let expected = match &view.sync {
            Some(Ok(sync)) => Some(sync.version),
            _ => None,
        };
        plan.push(Action::WriteSyncState {
            standbys: BTreeSet::new(),
            count: inputs.config.synchronous_node_count,
            expected,
        });
    }
    if inputs.config.synchronous_mode != SynchronousMode::Off
        && inputs.config.synchronous_mode_strict
    {
        // As Patroni: from its first commit the new primary waits for a
        // standby (`*`) until its leader upkeep names its own.
        plan.push(Action::SetSyncStandbys {
            standbys: BTreeSet::new(),
            count: 1,
            at: None,
            any_standby: true,
        });
    }
    plan.push(Action::Promote);
    push_route(inputs, view, plan);
}

/// The former leader this promotion replaces in a failover; `None` for a
/// planned switchover (the `failover` key names the leader stepping down,
/// which withdrew itself) or when no other leader was ever seen.
pub(super) fn failover_from(inputs: &Inputs<'_>, view: &ClusterView) -> Option<MemberName> {
    let former = inputs.memory.last_leader.as_ref()?;
    if former.name == inputs.node.name {
        return None;
    }
    let planned = matches!(&view.failover,
        Some(Ok(request)) if request.value.leader.as_ref() == Some(&former.name));
    (!planned).then(|| former.name.clone())
}

pub(super) fn push_route(inputs: &Inputs<'_>, view: &ClusterView, plan: &mut Plan) {
    let routes = Routes {
        primary: inputs.node.name.clone(),
        replicas: view
            .healthy_records()
            .filter(|m| {
                m.name != inputs.node.name
                    && m.role == Role::Replica
                    && m.state == MemberState::Running
                    && !m.tags.noloadbalance
            })
            .map(|m| m.name.clone())
            .collect(),
    };
    if inputs.memory.routed.as_ref() != Some(&routes) {
        plan.push(Action::Route(routes));
    }
}

/// How long a leader keeps renewing its lock while its PostgreSQL does not
/// answer (an observation that fails or times out): one ttl. Longer, a hung
/// primary would keep the lock for ever and the cluster would have no
/// working primary; the fence then stops it before the lock can expire.
pub fn postgres_silence_limit(config: &ClusterConfig) -> Duration {
    config.ttl
}
