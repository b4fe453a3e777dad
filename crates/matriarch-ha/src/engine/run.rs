//! The loop: observe, decide and act every `loop_wait`, woken early by a
//! change that can change a decision or a restart asked for.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use matriarch_dcs::Dcs;
use matriarch_model::{ClusterConfig, ClusterView, MemberName};
use matriarch_postgres::Postgres;
use matriarch_router::Router;
use tracing::warn;

use super::renewal::{Renewer, MIN_RENEWAL_INTERVAL};
use super::state::Engine;

/// The shortest pause between two loops woken by changes.
const MIN_LOOP_GAP: Duration = Duration::from_millis(20);

impl<D, P, R> Engine<D, P, R>
where
    D: Dcs + 'static,
    P: Postgres + 'static,
    R: Router,
{
    /// Runs the loop until `shutdown` resolves, then steps down cleanly: a
    /// leader stops PostgreSQL and releases the lock at once, so a replica
    /// takes over without waiting for the ttl. While the cluster is paused
    /// it leaves PostgreSQL and the lock alone (see [`Engine::step_down`]).
    ///
    /// Beside the loop, a renewer keeps a held lock renewed (and the fence
    /// armed) while the loop observes or acts slowly; it ends with the loop.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) {
        let renewer = Renewer {
            lease: Arc::clone(&self.lease),
            dcs: Arc::clone(&self.dcs),
            fence: self.fence.clone(),
            clock: Arc::clone(&self.clock),
            me: self.name().clone(),
            scope: self.dcs.layout().scope().to_string(),
        };
        // Biased: polled in a fixed order, so a simulation replays exactly.
        tokio::select! {
            biased;
            () = renewer.run() => {}
            () = self.run_loop(shutdown) => {}
        }
        // The renewer is gone: nothing renews behind the step-down.
        self.step_down().await;
    }

    /// The loop of [`Engine::run`], until `shutdown` resolves.
    async fn run_loop(&mut self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            let started = self.clock.now();
            let decision = self.run_once().await;
            let elapsed = self.clock.now().saturating_sub(started);
            if elapsed > self.config.loop_wait {
                warn!(cluster = %self.dcs.layout().scope(), member = %self.name(), ?elapsed, "HA loop overran loop_wait");
            }
            let mut wait = self.config.loop_wait.saturating_sub(elapsed);
            if self.memory.lock_renewed_at.is_some() {
                // Renew within the lock's real life (a store may grant less
                // than the ttl): the timing rule applied to that life.
                let renew_within = self
                    .memory
                    .lock_ttl(self.config.ttl)
                    .saturating_sub(self.config.retry_timeout.saturating_mul(2))
                    .max(MIN_RENEWAL_INTERVAL);
                wait = wait.min(renew_within.saturating_sub(elapsed));
            }
            if let Some(deadline) = decision.demotion_deadline {
                // Wake up in time to act on the deadline.
                wait = wait.min(deadline.saturating_sub(self.clock.now()));
            }
            let wake = Arc::clone(&self.restart_handle.wake);
            let waited = self.wait_for_relevant_change(wait);
            tokio::select! {
                biased;
                () = &mut shutdown => break,
                // A restart is carried out by the next loop, at once.
                () = wake.notified() => {}
                () = waited => {}
            }
        }
    }

    /// Waits up to `wait`, returning early when something that can change a
    /// decision changed (not merely a member's periodic refresh).
    async fn wait_for_relevant_change(&self, wait: Duration) {
        // Never panics, whatever the wait: one past the clock's range waits
        // at most the longest ttl.
        let now = tokio::time::Instant::now();
        let deadline = now
            .checked_add(wait)
            .or_else(|| now.checked_add(ClusterConfig::MAX_TTL))
            .unwrap_or(now);
        let Some(mut last) = self.last_view.clone() else {
            tokio::time::sleep(wait.min(Duration::from_millis(100))).await;
            return;
        };
        loop {
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            if remaining.is_zero() {
                return;
            }
            match self.dcs.watch(last.revision, remaining).await {
                Ok(matriarch_dcs::WatchOutcome::TimedOut) => return,
                Ok(matriarch_dcs::WatchOutcome::Changed) => {}
                Err(_) => {
                    tokio::time::sleep(remaining.min(Duration::from_millis(200))).await;
                    return;
                }
            }
            let Ok(view) = self.dcs.read_view().await else {
                return;
            };
            if relevant_change(&last, &view, self.name()) {
                // Let a burst of changes settle, and never spin.
                tokio::time::sleep(
                    MIN_LOOP_GAP
                        .min(deadline.saturating_duration_since(tokio::time::Instant::now())),
                )
                .await;
                return;
            }
            last = view;
        }
    }
}

/// A change another member made that can change a decision: a key that
/// steers the cluster, the member set, or (while there is no leader and the
/// race depends on them) another member's record. This node's own refresh
/// does not count, or each loop would wake the next at once.
fn relevant_change(before: &ClusterView, after: &ClusterView, me: &MemberName) -> bool {
    fn version<T>(
        entry: &Option<matriarch_model::Entry<T>>,
    ) -> Option<Option<matriarch_model::Version>> {
        entry.as_ref().map(|e| e.as_ref().ok().map(|v| v.version))
    }
    let keys_changed = version(&before.leader) != version(&after.leader)
        || version(&before.failover) != version(&after.failover)
        || version(&before.config) != version(&after.config)
        || version(&before.sync) != version(&after.sync)
        || version(&before.initialize) != version(&after.initialize);
    let names_before: BTreeSet<&String> = before.members.keys().collect();
    let names_after: BTreeSet<&String> = after.members.keys().collect();
    if keys_changed || names_before != names_after {
        return true;
    }
    let racing = after.leader.is_none();
    racing
        && after.members.iter().any(|(name, entry)| {
            name.as_str() != me.as_str()
                && before
                    .members
                    .get(name)
                    .map(|e| e.as_ref().ok().map(|v| &v.value))
                    != Some(entry.as_ref().ok().map(|v| &v.value))
        })
}
