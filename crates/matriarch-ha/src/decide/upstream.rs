//! Which member a replica streams from: Patroni's `_get_node_to_follow`
//! for a cluster with a leader (`replicatefrom`, `nostream`).
//!
//! One function on purpose: a standby cluster's choice (a remote member)
//! goes in front of it.

use std::collections::BTreeSet;

use matriarch_model::{ClusterView, Member, MemberName, MemberState, Role};

use super::inputs::Inputs;
use super::view::member;

/// The member this replica should stream from while `holder` leads, or
/// `None` when it must not stream at all (`nostream`: it replays what
/// `restore_command` fetches from the archive).
///
/// `replicatefrom: X` picks X while X is a usable upstream: its record is
/// there, it runs, and it is the leader or a replica that streams. A
/// member that is gone or unusable, or a chain of `replicatefrom` tags
/// that leads back to this member (a cycle nobody could stream in), gives
/// the leader instead; the next loop switches back once X is usable again.
/// Patroni falls back to the leader only when X has no record; checking
/// that X streams keeps a cascade from waiting on a dead or stuck upstream.
pub(super) fn node_to_follow(
    inputs: &Inputs<'_>,
    view: &ClusterView,
    holder: &MemberName,
) -> Option<MemberName> {
    let me = &inputs.node.name;
    let tags = &inputs.node.tags;
    if tags.nostream {
        return None;
    }
    let Some(wanted) = tags.replicate_from(me) else {
        return Some(holder.clone());
    };
    if wanted == holder.as_str() {
        return Some(holder.clone());
    }
    let usable = view
        .healthy_records()
        .find(|m| m.name.as_str() == wanted)
        .filter(|m| streams(m) && !leads_back_to(view, m, me));
    Some(usable.map_or_else(|| holder.clone(), |m| m.name.clone()))
}

/// A running replica whose record says it streams.
fn streams(m: &Member) -> bool {
    m.state == MemberState::Running
        && m.role == Role::Replica
        && m.replication_state.as_deref() == Some("streaming")
}

/// Whether following `replicatefrom` tags from `start` reaches `me`.
fn leads_back_to(view: &ClusterView, start: &Member, me: &MemberName) -> bool {
    let mut seen = BTreeSet::new();
    let mut current = start;
    while seen.insert(current.name.clone()) {
        let Some(next) = current.tags.replicate_from(&current.name) else {
            return false;
        };
        if next == me.as_str() {
            return true;
        }
        let Some(next) = MemberName::new(next).ok().and_then(|n| member(view, &n)) else {
            return false;
        };
        current = next;
    }
    false
}
