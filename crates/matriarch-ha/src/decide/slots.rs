//! Replication slots (Patroni's semantics): the leader keeps a physical
//! slot per member, for `member_slots_ttl` after the member was last seen,
//! and the permanent slots of `slots`; it drops every other slot that
//! `ignore_slots` does not cover. A replica keeps copies of the leader's
//! physical slots, advanced to the positions of the `status` key, so that
//! it has them if it is promoted.
//!
//! Cascading (Patroni's `_get_members_slots`): no member slot anywhere for
//! a `nostream` member; a replica keeps a slot for each member whose
//! `replicatefrom` names it; a replica tagged `nofailover` keeps only
//! those. With `member_slots_ttl` 0 the leader keeps slots only for the
//! members that stream from it (no `replicatefrom`, or one naming it or a
//! member that is gone); otherwise it keeps one for every member, and
//! advances the slot of a member tagged `replicatefrom` to the position it
//! reports (the slot is idle and would hold WAL for ever).

use std::collections::BTreeMap;

use matriarch_model::{ClusterView, DesiredSlots, MemberName, SlotKind, SlotsConfig};

use super::action::{Action, SlotPlan};
use super::inputs::Inputs;
use super::plan::Plan;
use super::view::member;

/// The leader with a running primary: keep its members' slots and the
/// permanent ones, drop the rest.
pub(super) fn push_leader_slots(inputs: &Inputs<'_>, view: &ClusterView, plan: &mut Plan) {
    if !inputs.config.postgresql.use_slots {
        return;
    }
    let (config, errors) = SlotsConfig::from_config(inputs.config);
    let me = &inputs.node.name;
    let now = inputs.now;
    // A new leader has not seen anyone yet: the members its predecessor
    // kept slots for count as seen now, so they get a full ttl.
    let mut seen = inputs.memory.slot_members_seen.clone().unwrap_or_else(|| {
        status_retained(view)
            .into_iter()
            .map(|slot| (slot, now))
            .collect()
    });
    let mut present = Vec::new();
    let mut unwanted = Vec::new();
    let mut advance_to = BTreeMap::new();
    for name in view.members.keys() {
        let Ok(name) = MemberName::new(name.clone()) else {
            continue;
        };
        if &name == me {
            continue;
        }
        let slot = name.slot_name();
        let record = member(view, &name);
        let tags = record.map(|m| &m.tags);
        let cascades = tags.and_then(|t| t.replicate_from(&name));
        let streams_from_me = cascades
            .is_none_or(|upstream| upstream == me.as_str() || !view.members.contains_key(upstream));
        if tags.is_some_and(|t| t.nostream)
            || (config.member_slots_ttl.is_zero() && !streams_from_me)
        {
            unwanted.push(slot);
            continue;
        }
        if let (Some(_), Some(at)) = (cascades, record.and_then(|m| m.xlog_location)) {
            advance_to.insert(slot.clone(), at);
        }
        seen.insert(slot.clone(), now);
        present.push(slot);
    }
    seen.retain(|slot, at| {
        !unwanted.contains(slot)
            && (present.contains(slot) || now.saturating_sub(*at) < config.member_slots_ttl)
    });
    seen.remove(&me.slot_name());
    let mut slots: BTreeMap<String, SlotKind> = config.permanent.clone();
    for slot in seen.keys() {
        slots.insert(slot.clone(), SlotKind::Physical);
    }
    plan.push(Action::ReconcileSlots(Box::new(SlotPlan {
        desired: DesiredSlots {
            slots,
            advance_to,
            drop_others: true,
            ignore: config.ignore,
        },
        members_seen: Some(seen),
        config_errors: errors.iter().map(ToString::to_string).collect(),
    })));
}

/// A running replica of `holder`: copies of the leader's physical slots
/// (its members' and the permanent ones), advanced to where the `status`
/// key says they are on the leader, and a slot for the leader itself,
/// advanced to its `optime`. Copies without a known position are not made
/// (they would hold WAL for ever). Plus a slot for each member that
/// streams from it (`replicatefrom`).
pub(super) fn push_replica_slots(
    inputs: &Inputs<'_>,
    view: &ClusterView,
    holder: &MemberName,
    plan: &mut Plan,
) {
    if !inputs.config.postgresql.use_slots {
        return;
    }
    // A replica that can never lead keeps no copies (Patroni: with
    // `nofailover`, only the slots of members that stream from it).
    let keeps_copies = inputs.node.tags.allows_failover();
    let status = match &view.status {
        Some(Ok(status)) => Some(&status.value),
        // Without positions nothing can be copied, and dropping copies
        // made earlier would lose them.
        _ if keeps_copies => return,
        _ => None,
    };
    let (config, errors) = SlotsConfig::from_config(inputs.config);
    let own = inputs.node.name.slot_name();
    let mut desired = DesiredSlots {
        drop_others: true,
        ignore: config.ignore,
        ..DesiredSlots::default()
    };
    push_downstream_slots(inputs, view, holder, &mut desired);
    if let Some(status) = status.filter(|_| keeps_copies) {
        for (name, kind) in &config.permanent {
            // Logical copies are PostgreSQL 17's slot synchronization's job (a
            // synced slot is never dropped); a logical slot left from when this
            // node was primary is dropped: it cannot follow the leader's, and
            // on 17+ it would keep the synchronized copy from being made.
            if *kind != SlotKind::Physical {
                continue;
            }
            desired.slots.insert(name.clone(), kind.clone());
            if let Some(at) = status.slots.get(name) {
                desired.advance_to.insert(name.clone(), *at);
            }
        }
        for (name, at) in &status.slots {
            if *name == own
                || config.permanent.contains_key(name)
                || desired.slots.contains_key(name)
            {
                continue;
            }
            desired.slots.insert(name.clone(), SlotKind::Physical);
            desired.advance_to.insert(name.clone(), *at);
        }
        let leader_slot = holder.slot_name();
        if leader_slot != own && status.optime.0 > 0 {
            desired
                .slots
                .insert(leader_slot.clone(), SlotKind::Physical);
            desired.advance_to.insert(leader_slot, status.optime);
        }
    }
    plan.push(Action::ReconcileSlots(Box::new(SlotPlan {
        desired,
        members_seen: None,
        config_errors: errors.iter().map(ToString::to_string).collect(),
    })));
}

/// A slot for each member whose `replicatefrom` names this replica (not
/// the leader, not a `nostream` one), advanced to the position the member
/// reports while it is idle.
fn push_downstream_slots(
    inputs: &Inputs<'_>,
    view: &ClusterView,
    holder: &MemberName,
    desired: &mut DesiredSlots,
) {
    let me = &inputs.node.name;
    for m in view.healthy_records() {
        if &m.name == holder
            || m.tags.nostream
            || m.tags.replicate_from(&m.name) != Some(me.as_str())
        {
            continue;
        }
        let slot = m.name.slot_name();
        desired.slots.insert(slot.clone(), SlotKind::Physical);
        if let Some(at) = m.xlog_location {
            desired.advance_to.insert(slot, at);
        }
    }
}

/// The slots the `status` key says the previous leader retained.
fn status_retained(view: &ClusterView) -> Vec<String> {
    match &view.status {
        Some(Ok(status)) => status.value.retain_slots.clone(),
        _ => Vec::new(),
    }
}
