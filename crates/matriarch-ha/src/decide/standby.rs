//! Standby clusters (Patroni's `standby_cluster`): the member holding the
//! lock is a standby leader. It never promotes; it replicates from the
//! source the section names (another cluster's primary, or its archive),
//! and the other members follow it as they follow any leader. Removing the
//! section makes the lock holder an ordinary leader, which promotes.

use matriarch_model::{ClusterView, Member, Role, StandbyCluster};

use super::action::{Action, DemoteMode};
use super::inputs::Inputs;
use super::observed::LocalRole;
use super::plan::{Decision, EngineRole, Plan};

/// The section in force, if this is a standby cluster.
pub(super) fn standby_section<'a>(inputs: &Inputs<'a>) -> Option<&'a StandbyCluster> {
    inputs.config.standby_cluster.as_deref()
}

/// The `config` key exists but could not be read: it may declare a
/// standby cluster this node does not know of (the engine keeps the last
/// valid configuration, which may predate it). When in doubt, do not
/// promote.
pub(super) fn config_unreadable(view: &ClusterView) -> bool {
    matches!(view.config, Some(Err(_)))
}

/// The lock holder of a standby cluster: keeps (or makes) its PostgreSQL a
/// replica of the source. `None` when this is no standby cluster or the
/// local state is handled like any leader's (no data, unknown).
pub(super) fn standby_leader(inputs: &Inputs<'_>, plan: &mut Plan) -> Option<Decision> {
    let section = standby_section(inputs)?;
    let plan = plan.take();
    Some(match &inputs.local.role {
        LocalRole::Primary => demote_primary(plan),
        LocalRole::Stopped { .. } => follow_source(
            section,
            plan,
            "holding the lock in a standby cluster: starting as the standby leader",
        ),
        LocalRole::Replica { .. } if inputs.local.standby_source.as_ref() != Some(section) => {
            follow_source(
                section,
                plan,
                "holding the lock in a standby cluster: following the source as the standby leader",
            )
        }
        LocalRole::Replica { .. } => plan.done(
            EngineRole::Leader,
            "the standby leader with the lock, following the source",
        ),
        LocalRole::NoData | LocalRole::Unknown => return None,
    })
}

/// A primary cannot stay one in a standby cluster (the section was added
/// to a running cluster): stop it cleanly; the next loop starts it as a
/// replica of the source.
fn demote_primary(mut plan: Plan) -> Decision {
    plan.push(Action::Demote(DemoteMode::Graceful));
    plan.push(Action::Withdraw);
    plan.done(
        EngineRole::Demoting,
        "cannot be a real primary in a standby cluster: stopping to follow the source",
    )
}

fn follow_source(section: &StandbyCluster, mut plan: Plan, reason: &str) -> Decision {
    plan.push(Action::FollowStandbySource(Box::new(section.clone())));
    plan.done(EngineRole::Leader, reason)
}

/// The winner of a race in a standby cluster takes the lock and follows
/// the source instead of promoting (Patroni: "promoted self to a standby
/// leader by acquiring session lock"). `false` when this is no standby
/// cluster.
pub(super) fn push_standby_race_win(inputs: &Inputs<'_>, plan: &mut Plan) -> bool {
    let Some(section) = standby_section(inputs) else {
        return false;
    };
    plan.push(Action::AcquireLock);
    plan.push(Action::FollowStandbySource(Box::new(section.clone())));
    true
}

/// The lock holder of a standby cluster publishes the role
/// `standby_leader` while its PostgreSQL runs (or is about to run) as a
/// replica (what `patronictl list` shows as `Standby Leader`).
pub(super) fn mark_standby_leader(inputs: &Inputs<'_>, view: &ClusterView, record: &mut Member) {
    let holds_lock = view.leader_name() == Some(&inputs.node.name);
    if holds_lock
        && standby_section(inputs).is_some()
        && matches!(inputs.local.role, LocalRole::Replica { .. })
    {
        record.role = Role::StandbyLeader;
    }
}
