//! Becoming the primary: the actions of a promotion (the `sync` key emptied
//! first, strict mode's wait for any standby, the former leader withdrawn)
//! and the routes of a primary. Used by the race and by the lock holder.

use std::collections::BTreeSet;

use matriarch_model::{ClusterView, MemberName, MemberState, Role, SynchronousMode};

use super::action::{Action, Routes};
use super::inputs::Inputs;
use super::plan::Plan;

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
