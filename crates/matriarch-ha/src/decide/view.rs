//! What the cluster's keys say, read the same way by every situation.

use matriarch_model::{ClusterView, Initialize, Member, MemberName, Timeline};

/// The `initialize` key: the system id, `Err` when unreadable.
pub(super) fn cluster_system_id(view: &ClusterView) -> Option<Result<Initialize, ()>> {
    view.initialize
        .as_ref()
        .map(|entry| entry.as_ref().map(|v| v.value).map_err(|_| ()))
}

/// The newest timeline the cluster is known to have reached.
pub(super) fn cluster_timeline(view: &ClusterView) -> Option<Timeline> {
    let from_history = history_next_timeline(view);
    // A record more than one promotion beyond the history is impossible
    // (a leftover or forged key): it must not hold every member back.
    let from_members = view
        .healthy_records()
        .filter_map(|m| m.timeline)
        .filter(|t| from_history.is_none_or(|next| t.0 <= next.0.saturating_add(1)))
        .max();
    from_history.into_iter().chain(from_members).max()
}

/// The readable record of member `name`.
pub(super) fn member<'v>(view: &'v ClusterView, name: &MemberName) -> Option<&'v Member> {
    view.members
        .get(name.as_str())
        .and_then(|entry| entry.as_ref().ok())
        .map(|v| &v.value)
}

/// The timeline after the newest one the history key says ended: the
/// cluster's current timeline as the history knows it.
pub(super) fn history_next_timeline(view: &ClusterView) -> Option<Timeline> {
    match &view.history {
        Some(Ok(history)) => history
            .value
            .0
            .iter()
            .map(|entry| Timeline(entry.timeline.0.saturating_add(1)))
            .max(),
        _ => None,
    }
}

/// Whether `name` wrote the sync key (its leader field).
pub(super) fn wrote_sync_key(view: &ClusterView, name: &MemberName) -> bool {
    matches!(&view.sync, Some(Ok(sync)) if sync.value.leader.as_ref() == Some(name))
}

/// Whether the sync key names `name` as a synchronous standby.
pub(super) fn in_sync_key(view: &ClusterView, name: &MemberName) -> bool {
    matches!(&view.sync, Some(Ok(sync)) if sync.value.sync_standbys.contains(name))
}
