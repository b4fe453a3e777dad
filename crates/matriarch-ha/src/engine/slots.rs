//! Carrying out [`Action::ReconcileSlots`] and the slot part of the
//! `status` key.

use matriarch_dcs::Dcs;
use matriarch_model::{LeaderStatus, Lsn};
use matriarch_postgres::Postgres;
use matriarch_router::Router;
use tracing::{debug, info, warn};

use super::state::Engine;
use super::timeouts::pg_bounded;
use crate::decide::SlotPlan;

impl<D, P, R> Engine<D, P, R>
where
    D: Dcs + 'static,
    P: Postgres + 'static,
    R: Router,
{
    /// Reconciles the local slots with `plan`. Never fails the plan: a
    /// slot problem must not stop the loop, and is retried next loop.
    pub(super) async fn reconcile_slots(&mut self, plan: &SlotPlan) {
        let me = self.name().clone();
        let cluster = self.dcs.layout().scope().to_owned();
        if plan.config_errors != self.memory.slot_config_errors {
            for error in &plan.config_errors {
                warn!(%cluster, member = %me, %error, "ignoring an invalid slot setting");
            }
        }
        let timeout = self.config.retry_timeout;
        match pg_bounded(timeout, self.postgres.reconcile_slots(&plan.desired)).await {
            Ok(report) => {
                if !report.created.is_empty()
                    || !report.dropped.is_empty()
                    || !report.advanced.is_empty()
                {
                    info!(%cluster, member = %me, created = ?report.created, dropped = ?report.dropped, advanced = ?report.advanced, "reconciled replication slots");
                }
                if !report.skipped.is_empty() {
                    debug!(%cluster, member = %me, skipped = ?report.skipped, "replication slots left as they are");
                }
                if plan.members_seen.is_some() {
                    self.memory.slot_positions = Some(report.positions());
                }
            }
            Err(error) => {
                warn!(%cluster, member = %me, %error, "could not reconcile replication slots");
            }
        }
    }

    /// The `status` key the leader writes: its position, and, once it has
    /// reconciled slots, their positions and the member slots it retains
    /// (so replicas can keep copies, and the next leader keeps the same).
    pub(super) fn leader_status(&self, optime: Lsn) -> LeaderStatus {
        LeaderStatus {
            optime,
            slots: self.memory.slot_positions.clone().unwrap_or_default(),
            retain_slots: self
                .memory
                .slot_members_seen
                .as_ref()
                .map(|seen| seen.keys().cloned().collect())
                .unwrap_or_default(),
        }
    }
}
