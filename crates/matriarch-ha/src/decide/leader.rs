//! This node holds the leader lock: renew it, keep (or make) the primary,
//! its routes, its synchronous standbys and its `failsafe` key.

use std::time::Duration;

use matriarch_model::{ClusterConfig, ClusterView};

use super::action::{Action, DemoteMode};
use super::failsafe::desired_failsafe;
use super::inputs::Inputs;
use super::observed::LocalRole;
use super::plan::{Decision, EngineRole, Plan};
use super::promotion::{push_promotion, push_route};
use super::race::race_verdict;
use super::slots::push_leader_slots;
use super::standby::{config_unreadable, standby_leader};
use super::start_timeout::primary_not_starting;
use super::switchover::{planned_switchover, unknown_candidate, UnknownCandidate};
use super::sync::maintain_sync;

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
    if let Some(decision) = standby_leader(inputs, &mut plan) {
        return decision;
    }

    match &inputs.local.role {
        LocalRole::Primary => {}
        LocalRole::Replica { .. } => {
            if config_unreadable(view) {
                return plan.wait(
                    EngineRole::Replica,
                    "holding the lock, but the config key is unreadable (it may declare a standby cluster): not promoting",
                );
            }
            // The lock may have been taken on a decision that went stale
            // (a pause between deciding and acquiring): check again.
            if let Err(why) = race_verdict(inputs, view) {
                return plan.release_lock(
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
                return plan.release_lock(
                    EngineRole::Replica,
                    "holding the lock with a stopped replica: releasing it for a proper race",
                );
            }
            if let Some(decision) = primary_not_starting(inputs, view, &mut plan) {
                return decision;
            }
            plan.start_primary_in_place(inputs);
            return plan.done(
                EngineRole::Leader,
                "holding the lock: restarting PostgreSQL as primary",
            );
        }
        LocalRole::NoData => {
            return plan.release_lock(
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
    push_leader_slots(inputs, view, &mut plan);
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

/// How long a leader keeps renewing its lock while its PostgreSQL does not
/// answer (an observation that fails or times out): one ttl. Longer, a hung
/// primary would keep the lock for ever and the cluster would have no
/// working primary; the fence then stops it before the lock can expire.
pub fn postgres_silence_limit(config: &ClusterConfig) -> Duration {
    config.ttl
}
