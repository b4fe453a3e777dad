//! The decision function: what was observed goes in, actions come out.
//!
//! [`decide`] does no I/O, reads no clock and draws no random numbers: the
//! loop (or a simulation) passes every fact in, so every branch is a unit test
//! and a simulation replays exactly.
//!
//! The situations (a leader, a follower, a race, the DCS unreachable, ...)
//! have files of their own; what they share lives beside them: the plan's
//! vocabulary (`action`), the plan and its [`Decision`] (`plan`), the
//! inputs (`inputs`) and what the cluster's keys say (`view`, `candidate`).

mod action;
mod candidate;
mod failsafe;
mod follow;
mod inputs;
mod leader;
mod memory;
mod observed;
mod paused;
mod plan;
mod promotion;
mod race;
mod slots;
mod standby;
mod start_timeout;
mod switchover;
mod sync;
mod upstream;
mod view;

use matriarch_model::ClusterView;

pub use action::{Action, DemoteMode, Routes, SlotPlan};
pub use follow::LOOPS_BEFORE_REWIND;
pub use inputs::{DcsObservation, Inputs};
pub use leader::postgres_silence_limit;
pub use memory::{Memory, Outcome};
pub use observed::{
    FailsafeInputs, FailsafeRound, LastLeader, LocalPostgres, LocalRole, NodeSettings, PeerReport,
    ReceivedHeartbeat,
};
pub use plan::{Decision, EngineRole};
pub use race::implausible_records;

use failsafe::dcs_unreachable;
use follow::follower;
use leader::leader;
use paused::paused;
use plan::Plan;
use race::no_leader;

/// Decides what this node does in this loop.
pub fn decide(inputs: &Inputs<'_>) -> Decision {
    let mut plan = Plan::new();
    let view = match inputs.dcs {
        DcsObservation::View(view) => view,
        DcsObservation::Unreachable => return dcs_unreachable(inputs, plan),
    };
    let mut record = inputs.member_record();
    standby::mark_standby_leader(inputs, view, &mut record);
    plan.push(Action::PublishMember(Box::new(record)));

    if inputs.config.pause {
        return paused(inputs, view, plan);
    }

    let mut decision = decide_with_view(inputs, view, plan);
    if decision.pending.is_none()
        && matches!(
            inputs.local.role,
            LocalRole::Stopped { .. } | LocalRole::NoData
        )
    {
        // PostgreSQL does not run and the last start said why (a full
        // disk): whatever this loop does, that is what holds it back.
        decision.pending = inputs.memory.start_failure.clone();
    }
    decision
}

fn decide_with_view(inputs: &Inputs<'_>, view: &ClusterView, mut plan: Plan) -> Decision {
    match &view.leader {
        Some(Err(_)) => {
            // An unreadable lock is neither ours nor free.
            if inputs.local.role == LocalRole::Primary {
                plan.push(Action::Demote(DemoteMode::Immediate));
                plan.push(Action::Withdraw);
                return plan.done(
                    EngineRole::Demoting,
                    "the leader key is unreadable: a primary without a readable lock stops taking writes",
                );
            }
            plan.wait(
                EngineRole::Uncertain,
                "the leader key is unreadable: waiting",
            )
        }
        Some(Ok(lock)) if lock.value.holder == inputs.node.name => leader(inputs, view, plan),
        Some(Ok(lock)) => {
            let holder = lock.value.holder.clone();
            follower(inputs, view, &holder, plan)
        }
        None => no_leader(inputs, view, plan),
    }
}
