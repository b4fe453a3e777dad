//! The DCS is unreachable: a primary keeps leading until its demotion
//! deadline, or longer in failsafe mode while every member acknowledges it.

use std::collections::BTreeMap;
use std::time::Duration;

use matriarch_model::{ClusterView, Failsafe, MemberName};

use super::action::{Action, DemoteMode};
use super::inputs::Inputs;
use super::observed::LocalRole;
use super::plan::{Decision, EngineRole, Plan};

pub(super) fn dcs_unreachable(inputs: &Inputs<'_>, mut plan: Plan) -> Decision {
    let holds_lock = inputs.memory.lock_renewed_at.is_some();
    if inputs.local.role == LocalRole::Primary {
        let deadline = inputs.demotion_deadline();
        if let Some(decision) = failsafe_leading(inputs, deadline, &mut plan) {
            return decision;
        }
        match deadline {
            Some(deadline) if inputs.now < deadline && !inputs.config.pause => {
                plan.deadline = Some(deadline);
                plan.push(Action::RenewLock);
                return plan.done(
                    EngineRole::Leader,
                    "DCS unreachable: retrying the renewal before the demotion deadline",
                );
            }
            _ if inputs.config.pause && holds_lock => {
                return plan.done(
                    EngineRole::Leader,
                    "DCS unreachable in pause: changing nothing",
                );
            }
            _ => {
                plan.push(Action::Demote(DemoteMode::Immediate));
                plan.push(Action::Withdraw);
                return plan.done(
                    EngineRole::Demoting,
                    "DCS unreachable past the demotion deadline: stopping writes before the lock can expire",
                );
            }
        }
    }
    plan.wait(EngineRole::Uncertain, "DCS unreachable: waiting")
}

/// Failsafe mode: a primary cut off from the DCS keeps leading while every
/// member of the failsafe set acknowledges its heartbeats, each round sent
/// before the deadline the previous one (or the last renewal) allowed.
pub(super) fn failsafe_leading(
    inputs: &Inputs<'_>,
    deadline: Option<Duration>,
    plan: &mut Plan,
) -> Option<Decision> {
    // Only a lock holder extends; one that heard the lock is gone only
    // keeps the deadline it had.
    if !inputs.config.failsafe_mode
        || inputs.config.pause
        || inputs.memory.lock_renewed_at.is_none()
    {
        return None;
    }
    let deadline = deadline?;
    let round = inputs.failsafe.round.as_ref()?;
    if !round.all_acknowledged() {
        let missing: Vec<&str> = round.missing.iter().map(MemberName::as_str).collect();
        plan.reason_note = Some(format!(
            "failsafe: no acknowledgement from {}",
            missing.join(", ")
        ));
        return None;
    }
    if round.sent_at >= deadline {
        // Too late: the promise not to race came after writes had to stop.
        return None;
    }
    let margin = inputs
        .config
        .write_stop_margin(inputs.memory.lock_ttl(inputs.config.ttl));
    let extended = (round.sent_at + inputs.config.ttl).saturating_sub(margin);
    if inputs.now >= extended {
        return None;
    }
    plan.deadline = Some(extended);
    plan.push(Action::FailsafeExtend {
        round_sent_at: round.sent_at,
    });
    let reason = format!(
        "DCS unreachable: failsafe mode, all {} other member(s) acknowledged: keeping the primary",
        round.acknowledged.len()
    );
    let decision = Decision {
        actions: std::mem::take(&mut plan.actions),
        role: EngineRole::Leader,
        reason,
        demotion_deadline: plan.deadline,
        pending: None,
        restart_in_place_since: None,
    };
    Some(decision)
}

/// Failsafe mode: a member that acknowledged a heartbeat less than ttl ago
/// promised the primary (cut off from the DCS, still writing) not to race; a
/// member missing from the `failsafe` key was never asked, so the primary may
/// be writing without its knowledge.
pub(super) fn failsafe_verdict(inputs: &Inputs<'_>, view: &ClusterView) -> Result<(), String> {
    if let Some(heartbeat) = inputs.fresh_heartbeat() {
        // Kept even when failsafe_mode was switched off since: a promise.
        return Err(format!(
            "acknowledged a failsafe heartbeat from {} {:?} ago",
            heartbeat.leader,
            inputs.now.saturating_sub(heartbeat.received_at)
        ));
    }
    if !inputs.config.failsafe_mode {
        return Ok(());
    }
    let listening_for = inputs.now.saturating_sub(inputs.failsafe.listening_since);
    if listening_for < inputs.config.ttl {
        return Err(format!(
            "failsafe mode: this agent started {listening_for:?} ago and may have acknowledged a heartbeat before"
        ));
    }
    match &view.failsafe {
        Some(Ok(key))
            if !key.value.0.is_empty() && !key.value.0.contains_key(&inputs.node.name) =>
        {
            Err("failsafe mode: not a member of the failsafe key".to_owned())
        }
        Some(Err(_)) => Err("failsafe mode: the failsafe key is unreadable".to_owned()),
        _ => Ok(()),
    }
}

/// The `failsafe` key a leader keeps: itself and every member with a REST API URL.
pub(super) fn desired_failsafe(inputs: &Inputs<'_>, view: &ClusterView) -> Failsafe {
    let mut members: BTreeMap<MemberName, String> = view
        .healthy_records()
        .filter(|m| m.name != inputs.node.name && !m.api_url.is_empty())
        .map(|m| (m.name.clone(), m.api_url.clone()))
        .collect();
    members.insert(inputs.node.name.clone(), inputs.node.api_url.clone());
    Failsafe(members)
}
