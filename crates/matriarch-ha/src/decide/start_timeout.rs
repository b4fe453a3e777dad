//! A leader whose PostgreSQL stopped and does not start again as primary
//! (a full disk, a broken configuration): it restarts in place for
//! `primary_start_timeout`, then hands the lock to a healthy replica, if
//! one could take over. Without one it keeps restarting in place: a handover
//! nobody can take leaves the cluster leaderless for nothing.

use matriarch_model::{ClusterView, Member, MemberName, SynchronousMode};

use super::action::Action;
use super::candidate::candidate_looks_able;
use super::inputs::Inputs;
use super::plan::{Decision, EngineRole, Plan};
use super::view::in_sync_key;

/// The decision for a leader whose stopped PostgreSQL (that ran as primary)
/// has failed to start; `None` while no start has failed yet (the caller
/// starts it).
pub(super) fn primary_not_starting(
    inputs: &Inputs<'_>,
    view: &ClusterView,
    plan: &mut Plan,
) -> Option<Decision> {
    let since = inputs.memory.primary_start_failed_since?;
    let failing_for = inputs.now.saturating_sub(since);
    let timeout = inputs.config.primary_start_timeout;
    let cause = inputs
        .memory
        .start_failure
        .clone()
        .unwrap_or_else(|| "PostgreSQL does not start as primary".to_owned());
    let mut plan = plan.take();
    if failing_for < timeout {
        plan.start_primary_in_place(inputs);
        // No elapsed time in the text: `pending` is logged when it changes.
        return Some(plan.wait(
            EngineRole::Leader,
            format!("{cause}; restarting in place, handing over after primary_start_timeout ({timeout:?})"),
        ));
    }
    match successor(inputs, view) {
        Some(successor) => {
            plan.actions.retain(|a| *a != Action::RenewLock);
            plan.push(Action::ReleaseLock);
            plan.push(Action::Withdraw);
            let mut decision = plan.done(
                EngineRole::Demoting,
                format!(
                    "{cause}; not started for {failing_for:?} (primary_start_timeout {timeout:?}): handing the lock over ({successor} can take over)"
                ),
            );
            // Still a reason the primary does not run: shown until it runs.
            decision.pending = Some(cause);
            Some(decision)
        }
        None => {
            plan.start_primary_in_place(inputs);
            Some(plan.wait(
                EngineRole::Leader,
                format!("{cause}; no healthy replica can take over: restarting in place"),
            ))
        }
    }
}

/// A member that could win the race once the lock is free: a running
/// replica allowed to fail over, on the cluster's timeline, in synchronous
/// mode a synchronous standby, and asynchronously within
/// `maximum_lag_on_failover` of this node's last position.
fn successor(inputs: &Inputs<'_>, view: &ClusterView) -> Option<MemberName> {
    let me = &inputs.node.name;
    let able = |m: &&Member| {
        let sync_ok =
            inputs.config.synchronous_mode == SynchronousMode::Off || in_sync_key(view, &m.name);
        let lag_ok = inputs.config.synchronous_mode != SynchronousMode::Off
            || match (inputs.local.wal_position, m.wal_position()) {
                (Some(own), Some(theirs)) => {
                    own.bytes_ahead_of(theirs) <= inputs.config.maximum_lag_on_failover
                }
                (None, _) => true,
                (Some(_), None) => false,
            };
        &m.name != me && sync_ok && lag_ok && candidate_looks_able(inputs, view, m)
    };
    view.healthy_records()
        .filter(able)
        .map(|m| m.name.clone())
        .min()
}

/// Why this node, which handed the lock over because its PostgreSQL would
/// not start as primary, stays out of the race: for `2 × ttl` or
/// `primary_start_timeout`, whichever is longer, unless another member took
/// the lock first. After that it may race again (nobody took over).
pub(super) fn handed_over_bar(inputs: &Inputs<'_>) -> Option<String> {
    let at = inputs.memory.handed_over_at?;
    let bar = inputs
        .config
        .ttl
        .saturating_mul(2)
        .max(inputs.config.primary_start_timeout);
    (inputs.now < at.saturating_add(bar)).then(|| {
        let cause = inputs
            .memory
            .start_failure
            .as_deref()
            .unwrap_or("PostgreSQL did not start as primary");
        format!("{cause}; handed the lock over: not racing for it")
    })
}
