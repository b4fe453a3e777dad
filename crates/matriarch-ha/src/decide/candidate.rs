//! Whether another member could take over.

use matriarch_model::{ClusterView, Member, MemberState, Role, SynchronousMode};

use super::inputs::Inputs;
use super::view::{cluster_timeline, in_sync_key, wrote_sync_key};

/// Whether another member's record says it could win a race: running as a
/// replica, allowed to fail over, on the cluster's timeline, and in
/// synchronous mode named by the sync key (or its writer).
pub(super) fn candidate_looks_able(
    inputs: &Inputs<'_>,
    view: &ClusterView,
    candidate: &Member,
) -> bool {
    let timeline_ok = match (cluster_timeline(view), candidate.timeline) {
        (Some(cluster), Some(own)) => own >= cluster,
        (Some(_), None) => false,
        (None, _) => true,
    };
    let sync_ok = inputs.config.synchronous_mode == SynchronousMode::Off
        || in_sync_key(view, &candidate.name)
        || wrote_sync_key(view, &candidate.name);
    // In failsafe mode a member missing from the failsafe key does not race.
    let failsafe_ok = !inputs.config.failsafe_mode
        || match &view.failsafe {
            Some(Ok(key)) => key.value.0.is_empty() || key.value.0.contains_key(&candidate.name),
            Some(Err(_)) => false,
            None => true,
        };
    candidate.state == MemberState::Running
        && candidate.role == Role::Replica
        && failsafe_ok
        && candidate.tags.allows_failover()
        && candidate.wal_position().is_some()
        && timeline_ok
        && sync_ok
}
