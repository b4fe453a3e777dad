//! The write fence and the lock's lifetime, and a clean step-down.

use std::time::Duration;

use matriarch_dcs::Dcs;
use matriarch_postgres::{Postgres, StopMode};
use matriarch_router::Router;
use tracing::{error, info, warn};

use super::errors::FenceError;
use super::{bounded, pg_bounded, Engine};

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
        let Some(fence) = &self.fence else {
            return;
        };
        let deadline = renewed_at
            .saturating_add(self.config.ttl)
            .saturating_sub(self.config.retry_timeout);
        let valid_for = deadline.saturating_sub(self.clock.now());
        if let Err(error) = fence.arm(valid_for).await {
            warn!(member = %self.name(), %error, "could not arm the write fence");
        }
    }

    /// Arms the fence after the lock was taken or renewed; when it cannot
    /// be armed (its process died, a required watchdog failed) this node
    /// may not lead unguarded: the lock is released at once, so that the
    /// next loop demotes (a primary without the lock) and another member
    /// can take over, and the action fails (no promotion follows).
    pub(super) async fn arm_fence_or_give_up(
        &self,
        renewed_at: Duration,
    ) -> Result<(), FenceError> {
        let Some(fence) = &self.fence else {
            return Ok(());
        };
        let deadline = renewed_at
            .saturating_add(self.lock_ttl())
            .saturating_sub(self.config.retry_timeout);
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

    pub(super) async fn disarm_fence(&self) {
        if let Some(fence) = &self.fence {
            // A renewal in flight must not arm it again right after.
            let _quiet = self.lease.quiet().await;
            if let Err(error) = fence.disarm().await {
                warn!(member = %self.name(), %error, "could not disarm the write fence");
            }
        }
    }

    /// A clean stop: stop PostgreSQL, hand the lock over, leave the cluster.
    pub async fn step_down(&mut self) {
        if let Some(task) = self.long_task.take() {
            task.abort();
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
