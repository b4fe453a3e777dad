//! The write fence and the lock's lifetime, and a clean step-down.

use std::time::Duration;

use matriarch_dcs::Dcs;
use matriarch_postgres::{Postgres, StopMode};
use matriarch_router::Router;
use tracing::{error, info, warn};

use super::errors::FenceError;
use super::state::Engine;
use super::timeouts::{bounded, pg_bounded};

impl<D, P, R> Engine<D, P, R>
where
    D: Dcs + 'static,
    P: Postgres + 'static,
    R: Router,
{
    /// Allows writes until the demotion deadline of a lock renewed by a
    /// request sent at `renewed_at` (the memory records the same time after
    /// the action; the fence must not wait for that).
    pub(super) async fn arm_fence(&self, renewed_at: Duration) {
        let Some(fence) = self.fence.as_ref().filter(|_| !self.config.pause) else {
            return;
        };
        let deadline = renewed_at
            .saturating_add(self.config.ttl)
            .saturating_sub(self.write_stop_margin());
        let valid_for = deadline.saturating_sub(self.clock.now());
        if let Err(error) = fence.arm(valid_for).await {
            warn!(member = %self.name(), %error, "could not arm the write fence");
        }
    }

    /// Arms the fence after the lock was taken or renewed; when it cannot
    /// be armed (its process died, a required watchdog failed) this node
    /// may not lead unguarded: the lock is released at once, so that the
    /// next loop demotes (a primary without the lock) and another member
    /// can take over, and the action fails (no promotion follows). In
    /// pause the fence stays suspended (see [`Self::sync_fence_with_pause`]).
    pub(super) async fn arm_fence_or_give_up(
        &self,
        renewed_at: Duration,
    ) -> Result<(), FenceError> {
        let Some(fence) = self.fence.as_ref().filter(|_| !self.config.pause) else {
            return Ok(());
        };
        let deadline = renewed_at
            .saturating_add(self.lock_ttl())
            .saturating_sub(self.write_stop_margin());
        let valid_for = deadline.saturating_sub(self.clock.now());
        let Err(error) = fence.arm(valid_for).await else {
            return Ok(());
        };
        let me = self.name().clone();
        error!(cluster = %self.dcs.layout().scope(), member = %me, %error, "could not arm the write fence: giving up the leader lock");
        let retry = self.config.retry_timeout;
        if let Err(release) = bounded("release_leader", retry, self.dcs.release_leader(&me)).await {
            warn!(member = %me, error = %release, "could not release the lock; it expires by its ttl");
        }
        Err(error)
    }

    /// Remembers how long the DCS keeps the lock just acquired or renewed.
    pub(super) fn note_lock_lifetime(&mut self) {
        let lifetime = self.dcs.lock_lifetime();
        if let Some(lifetime) = lifetime.filter(|l| *l < self.config.ttl) {
            if self.memory.lock_lifetime != Some(lifetime) {
                warn!(cluster = %self.dcs.layout().scope(), member = %self.name(), ?lifetime, ttl = ?self.config.ttl,
                    "the DCS keeps the leader lock for less than the ttl: deadlines count from the shorter");
            }
        }
        self.memory.lock_lifetime = lifetime;
    }

    /// How long the lock counts after a renewal: `min(ttl, lock lifetime)`.
    pub(super) fn lock_ttl(&self) -> Duration {
        self.memory.lock_ttl(self.config.ttl)
    }

    /// How long before the lock can expire writes stop (the fence's margin).
    pub(super) fn write_stop_margin(&self) -> Duration {
        self.config.write_stop_margin(self.lock_ttl())
    }

    /// A primary whose lock was not renewed in time stops answering as one
    /// (REST `/primary`) at its demotion deadline, when its fence fires: not
    /// after this loop's observation, which an unreachable DCS may hold up
    /// for `retry_timeout`. Renewals made beside the loop count, as do
    /// failsafe rounds, as in the decision's deadline.
    pub(super) fn unpublish_writable_past_deadline(&self) {
        if !self.status.borrow().writable {
            return;
        }
        let renewed = self
            .memory
            .lock_renewed_at
            .into_iter()
            .chain(self.lease.renewed_at())
            .max()
            .map(|at| at.saturating_add(self.lock_ttl()));
        let failsafe = self
            .memory
            .failsafe_acked_at
            .map(|at| at.saturating_add(self.config.ttl));
        let deadline = renewed
            .into_iter()
            .chain(failsafe)
            .max()
            .map(|until| until.saturating_sub(self.write_stop_margin()));
        if deadline.is_some_and(|deadline| self.clock.now() >= deadline) {
            warn!(cluster = %self.dcs.layout().scope(), member = %self.name(),
                "the leader lock was not renewed by its deadline: no longer answering as the primary");
            self.status.send_modify(|status| status.writable = false);
        }
    }

    pub(super) async fn disarm_fence(&self) {
        if let Some(fence) = &self.fence {
            // A renewal in flight must not arm it again right after.
            let _quiet = self.lease.quiet().await;
            if let Err(error) = fence.disarm().await {
                warn!(member = %self.name(), %error, "could not disarm the write fence");
            }
        }
    }

    /// Keeps the fence in step with the pause, before this loop acts:
    /// suspended while the cluster is paused (the operator owns PostgreSQL,
    /// which must outlive this agent), disarmed at resume (then armed again
    /// by the first renewal, as any leader's).
    pub(super) async fn sync_fence_with_pause(&self) {
        let Some(fence) = &self.fence else {
            return;
        };
        let paused = self.config.pause;
        if self.lease.fence_suspended() == paused {
            return;
        }
        // A renewal in flight must not arm it again right after.
        let _quiet = self.lease.quiet().await;
        let (result, what) = if paused {
            (
                fence.suspend().await,
                "suspended: PostgreSQL outlives this agent while the cluster is paused",
            )
        } else {
            (
                fence.disarm().await,
                "back in force: the cluster is resumed",
            )
        };
        match result {
            Ok(()) => {
                self.lease.set_fence_suspended(paused);
                info!(cluster = %self.dcs.layout().scope(), member = %self.name(), "write fence {what}");
            }
            Err(error) => {
                warn!(cluster = %self.dcs.layout().scope(), member = %self.name(), %error, paused, "could not change the write fence's mode for the pause")
            }
        }
    }

    /// A clean stop: stop PostgreSQL, hand the lock over, leave the cluster.
    /// While the cluster is paused, nothing: PostgreSQL keeps running, and
    /// the leader key stays until its ttl (or this member comes back and
    /// renews it), as under Patroni.
    pub async fn step_down(&mut self) {
        if let Some(task) = self.long_task.take() {
            task.abort();
        }
        // With a fence that could not be suspended, PostgreSQL dies with
        // it anyway: then a clean stop and a released lock are better.
        if self.config.pause && (self.fence.is_none() || self.lease.fence_suspended()) {
            info!(cluster = %self.dcs.layout().scope(), member = %self.name(),
                "the cluster is paused: PostgreSQL keeps running and the leader key is not released");
            return;
        }
        self.status.send_modify(|status| status.writable = false);
        let me = self.name().clone();
        let retry = self.config.retry_timeout;
        let holds_lock = self.memory.lock_renewed_at.is_some();
        if holds_lock {
            if let Some(endpoint) = self.endpoint(&me) {
                let _ = self.router.withdraw(&endpoint).await;
            }
        }
        if let Err(error) = pg_bounded(
            self.settings.postgres_timeout,
            self.postgres.stop(StopMode::Fast),
        )
        .await
        {
            warn!(member = %me, %error, "could not stop PostgreSQL cleanly");
        }
        if holds_lock {
            match bounded("release_leader", retry, self.dcs.release_leader(&me)).await {
                Ok(()) => {
                    info!(cluster = %self.dcs.layout().scope(), member = %me, "released the leader lock")
                }
                Err(error) => warn!(member = %me, %error, "could not release the lock"),
            }
            self.disarm_fence().await;
        }
        let _ = bounded("remove_member", retry, self.dcs.remove_member(&me)).await;
        self.memory.lock_lost();
    }
}
