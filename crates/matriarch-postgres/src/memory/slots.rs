//! Replication slots of the in-memory servers, as PostgreSQL 15 keeps them:
//! physical slots anywhere, logical slots only on a primary.

use matriarch_model::{DesiredSlots, Lsn, SlotKind, SlotReport, SlotState};

use super::server::MemorySlot;
use super::servers::Servers;
use crate::error::{Operation, PostgresError};

impl Servers {
    /// [`crate::Postgres::reconcile_slots`] on server `index`.
    pub fn reconcile_slots(
        &mut self,
        index: usize,
        desired: &DesiredSlots,
    ) -> Result<SlotReport, PostgresError> {
        let operation = Operation::ReconcileSlots;
        let server = &self.servers[index];
        if !server.running || server.data.is_none() {
            return Err(PostgresError::NotRunning { operation });
        }
        let own_position = server.position().unwrap_or_default();
        let in_recovery = server.in_recovery;
        // A slot is active while a running replica streams from this server
        // through it (its primary_slot_name is its member's slot name).
        let streaming: Vec<(String, Lsn)> = self
            .servers
            .iter()
            .filter(|other| other.streams_from() == Some(&server.name))
            .map(|other| (other.name.slot_name(), other.position().unwrap_or_default()))
            .collect();
        let active = |name: &str| streaming.iter().find(|(slot, _)| slot == name);
        let mut report = SlotReport::default();
        let slots = &mut self.servers[index].slots;
        // A replica streaming through a physical slot moves it on.
        for (name, slot) in slots.iter_mut() {
            if let (Some((_, at)), SlotKind::Physical) = (active(name), &slot.kind) {
                slot.position = slot.position.max(*at);
            }
        }
        let names: Vec<String> = slots.keys().cloned().collect();
        for name in names {
            let Some(slot) = slots.get(&name) else {
                continue;
            };
            if desired.ignored(&name, &slot.kind) {
                continue;
            }
            let wanted = desired.slots.get(&name);
            if wanted.is_none() && desired.drop_others {
                if active(&name).is_some() {
                    report
                        .skipped
                        .insert(name.clone(), "in use: not dropped".to_owned());
                } else {
                    slots.remove(&name);
                    report.dropped.insert(name);
                    continue;
                }
            }
            if let Some(kind) = wanted.filter(|kind| **kind != slot.kind) {
                report.skipped.insert(
                    name.clone(),
                    format!(
                        "exists as another kind of slot ({:?}), wanted {kind:?}",
                        slot.kind
                    ),
                );
            }
        }
        for (name, kind) in &desired.slots {
            if slots.contains_key(name) || desired.ignored(name, kind) {
                continue;
            }
            if in_recovery && *kind != SlotKind::Physical {
                report.skipped.insert(
                    name.clone(),
                    "a logical slot is not copied to a standby (PostgreSQL 17+ synchronizes failover slots itself)".to_owned(),
                );
                continue;
            }
            slots.insert(
                name.clone(),
                MemorySlot {
                    kind: kind.clone(),
                    position: own_position,
                },
            );
            report.created.insert(name.clone());
        }
        for (name, target) in &desired.advance_to {
            let Some(slot) = slots.get_mut(name) else {
                continue;
            };
            if active(name).is_some()
                || slot.position >= *target
                || (in_recovery && slot.kind != SlotKind::Physical)
            {
                continue;
            }
            // Never past what this server has.
            let to = (*target).min(own_position);
            if to > slot.position {
                slot.position = to;
                report.advanced.insert(name.clone());
            }
        }
        for (name, slot) in slots.iter() {
            if desired.ignored(name, &slot.kind) {
                continue;
            }
            report.slots.insert(
                name.clone(),
                SlotState {
                    kind: slot.kind.clone(),
                    active: active(name).is_some(),
                    position: Some(slot.position),
                },
            );
        }
        Ok(report)
    }
}
