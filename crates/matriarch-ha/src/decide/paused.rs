//! A paused cluster (`pause: true`): the agent changes nothing but the lock.

use matriarch_model::ClusterView;

use super::action::Action;
use super::inputs::Inputs;
use super::observed::LocalRole;
use super::plan::{Decision, EngineRole, Plan};

/// The decision while the cluster is paused.
pub(super) fn paused(inputs: &Inputs<'_>, view: &ClusterView, mut plan: Plan) -> Decision {
    match view.leader_name() {
        Some(holder) if holder == &inputs.node.name => {
            plan.deadline = inputs.demotion_deadline();
            plan.push(Action::RenewLock);
            plan.done(
                EngineRole::Leader,
                "paused: keeping the lock, changing nothing",
            )
        }
        None if inputs.local.role == LocalRole::Primary && view.leader.is_none() => {
            plan.push(Action::AcquireLock);
            plan.done(
                EngineRole::Leader,
                "paused: the running primary takes the free lock",
            )
        }
        _ => plan.done(EngineRole::Replica, "paused: observing only"),
    }
}
