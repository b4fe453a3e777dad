//! Renewing a held lock beside the loop, so that a slow PostgreSQL answer or
//! a slow action never delays the renewal (and the fence re-arm that goes
//! with it) past the fence's deadline on a healthy DCS.
//!
//! The renewer only keeps what the loop decided: it renews while the loop's
//! last plan kept this node leading a running primary, and stops once
//! PostgreSQL has not answered as one for [`postgres_silence_limit`], so a
//! hung primary still loses the lock (after its fence stopped it). While the
//! loop restarts a crashed primary in place it renews too, with fence windows
//! that end by `primary_start_timeout` after the first start: a crash
//! recovery may take longer than the fence's window after one renewal, and a
//! fence that kills the recovering postmaster turns a restart into a
//! failover; one that outlasts `primary_start_timeout` is fenced before the
//! loop can hand the lock over.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use matriarch_dcs::{Clock, Dcs, DcsError};
use matriarch_model::{ClusterConfig, MemberName};
use tokio::sync::Notify;
use tracing::{debug, error, warn};

use super::handles::Fence;
use super::timeouts::bounded;
use crate::decide::postgres_silence_limit;

/// The shortest wait between two renewals of a held lock, however short its
/// real life: a store that grants a lock for less than `2 × retry_timeout`
/// still gets a renewal this often rather than a busy loop.
pub(super) const MIN_RENEWAL_INTERVAL: Duration = Duration::from_millis(100);

/// What the loop tells the renewer, and the renewer tells the loop.
#[derive(Debug, Default)]
struct LeaseState {
    /// The loop's last plan kept this node leading a running primary.
    leading: bool,
    /// When (monotonic) PostgreSQL last answered as a running primary.
    primary_seen_at: Option<Duration>,
    /// When the last renewal that succeeded was sent, by either side.
    renewed_at: Option<Duration>,
    /// When the renewer last tried (so that a refusing DCS is not hammered).
    attempted_at: Option<Duration>,
    /// The configured ttl (what a renewal asks for).
    ttl: Duration,
    /// How long the lock counts after a renewal: `min(ttl, lock lifetime)`.
    lock_ttl: Duration,
    /// The bound on one DCS call.
    retry_timeout: Duration,
    /// How long the renewer renews on the strength of the last answer.
    silence_limit: Duration,
    /// The silence was already reported.
    silence_reported: bool,
    /// While the loop restarts its stopped primary in place: when (monotonic)
    /// the restart's `primary_start_timeout` runs out, counted from the first
    /// start of the run; cleared once PostgreSQL answers as a running primary
    /// or the loop stops leading.
    restart_ends_by: Option<Duration>,
    /// The cluster is paused: a renewal does not arm the fence.
    paused: bool,
    /// The fence was last told to suspend (the cluster is paused).
    fence_suspended: bool,
}

impl LeaseState {
    /// How long to wait before the next renewal; `None` while not leading.
    fn next_renewal(&self, now: Duration) -> Option<Duration> {
        if !self.leading {
            return None;
        }
        // The loop's timing rule: renew within lock_ttl − 2 × retry_timeout.
        let renew_within = self
            .lock_ttl
            .saturating_sub(self.retry_timeout.saturating_mul(2))
            .max(MIN_RENEWAL_INTERVAL);
        let due = self.renewed_at.map_or(now, |at| at + renew_within);
        let spaced = self.attempted_at.map_or(now, |at| {
            at + MIN_RENEWAL_INTERVAL.max(self.retry_timeout / 4)
        });
        Some(due.max(spaced).saturating_sub(now))
    }
}

/// The state shared by the loop and its renewer.
#[derive(Debug, Default)]
pub(super) struct Lease {
    state: Mutex<LeaseState>,
    /// Held across a renewal and its fence arm, and by the loop while it
    /// disarms the fence: a renewal never re-arms a fence just disarmed.
    in_flight: tokio::sync::Mutex<()>,
    changed: Notify,
}

impl Lease {
    fn lock(&self) -> MutexGuard<'_, LeaseState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes the timing in force and notes what PostgreSQL answered.
    pub(super) fn observed(
        &self,
        config: &ClusterConfig,
        lock_ttl: Duration,
        running_primary: bool,
        now: Duration,
    ) {
        let mut state = self.lock();
        state.ttl = config.ttl;
        state.lock_ttl = lock_ttl;
        state.retry_timeout = config.retry_timeout;
        state.silence_limit = postgres_silence_limit(config);
        state.paused = config.pause;
        if running_primary {
            state.primary_seen_at = Some(now);
            state.silence_reported = false;
            state.restart_ends_by = None;
        }
    }

    /// The loop restarts its stopped primary in place: renewals go on while
    /// a start runs, with fence windows that end by `ends_by` (the first
    /// start of the run plus `primary_start_timeout`).
    pub(super) fn restarting_in_place(&self, ends_by: Duration) {
        self.lock().restart_ends_by = Some(ends_by);
    }

    /// The last renewal that succeeded (the renewer's may be newer than the loop's).
    pub(super) fn renewed_at(&self) -> Option<Duration> {
        self.lock().renewed_at
    }

    /// The loop's plan keeps this node leading (`renewed_at`: the lock is
    /// held, renewed then) or not: the renewer starts or stops.
    pub(super) fn set_leading(&self, renewed_at: Option<Duration>) {
        {
            let mut state = self.lock();
            state.leading = renewed_at.is_some();
            if !state.leading {
                state.restart_ends_by = None;
            }
            state.renewed_at = match (state.renewed_at, renewed_at) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (_, at) => at,
            };
        }
        self.changed.notify_one();
    }

    /// Whether the fence was last told to suspend.
    pub(super) fn fence_suspended(&self) -> bool {
        self.lock().fence_suspended
    }

    /// Notes what the fence was last told: suspend (`true`) or disarm.
    pub(super) fn set_fence_suspended(&self, suspended: bool) {
        self.lock().fence_suspended = suspended;
    }

    /// Waits for a renewal in flight, so that the fence can be disarmed
    /// without the renewer arming it again right after.
    pub(super) async fn quiet(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.in_flight.lock().await
    }
}

/// Renews the lock while [`Lease`] says this node leads.
pub(super) struct Renewer<D> {
    pub(super) lease: Arc<Lease>,
    pub(super) dcs: Arc<D>,
    pub(super) fence: Option<Arc<dyn Fence>>,
    pub(super) clock: Arc<dyn Clock>,
    pub(super) me: MemberName,
    pub(super) scope: String,
}

impl<D: Dcs> Renewer<D> {
    /// Runs until dropped (the loop's end).
    pub(super) async fn run(self) {
        loop {
            let next = self.lease.lock().next_renewal(self.clock.now());
            match next {
                None => self.lease.changed.notified().await,
                Some(wait) if !wait.is_zero() => {
                    tokio::select! {
                        biased;
                        () = tokio::time::sleep(wait) => {}
                        () = self.lease.changed.notified() => {}
                    }
                }
                Some(_) => self.renew().await,
            }
        }
    }

    /// One renewal, and the fence re-armed from when it was sent.
    async fn renew(&self) {
        let _in_flight = self.lease.in_flight.lock().await;
        let sent_at = self.clock.now();
        let (ttl, lock_ttl, retry) = {
            let mut state = self.lease.lock();
            if state
                .next_renewal(sent_at)
                .is_none_or(|wait| !wait.is_zero())
            {
                return;
            }
            state.attempted_at = Some(sent_at);
            let silent_for = state
                .primary_seen_at
                .map(|seen| sent_at.saturating_sub(seen));
            // While restarting in place, only renewals whose fence window
            // ends by the restart's `primary_start_timeout`: past it the fence has
            // stopped whatever runs before the loop can hand the lock over.
            let window = state
                .lock_ttl
                .saturating_sub(matriarch_model::write_stop_margin(
                    state.lock_ttl,
                    state.retry_timeout,
                ));
            let restart_in_time = state
                .restart_ends_by
                .is_some_and(|ends_by| sent_at.saturating_add(window) <= ends_by);
            let silent_too_long = silent_for.is_none_or(|silent| silent >= state.silence_limit);
            if silent_too_long && !restart_in_time {
                // A renewal on the strength of an answer this old could keep
                // a hung primary leading for ever: the loop decides alone.
                if !state.silence_reported {
                    state.silence_reported = true;
                    warn!(cluster = %self.scope, member = %self.me, ?silent_for,
                        "PostgreSQL has not answered as a running primary for too long: only the HA loop renews the leader lock now");
                }
                return;
            }
            (state.ttl, state.lock_ttl, state.retry_timeout)
        };
        match bounded("renew_leader", retry, self.dcs.renew_leader(&self.me, ttl)).await {
            Ok(()) => {}
            Err(DcsError::LockNotHeld { holder, .. }) => {
                warn!(cluster = %self.scope, member = %self.me, ?holder, "lost the leader lock");
                self.lease.lock().leading = false;
                return;
            }
            Err(error) => {
                debug!(cluster = %self.scope, member = %self.me, %error, "could not renew the leader lock beside the loop");
                return;
            }
        }
        let (leading, paused) = {
            let state = self.lease.lock();
            (state.leading, state.paused)
        };
        if !leading {
            // The loop stepped down meanwhile: no fence for a demotion.
            return;
        }
        // In pause the fence stays suspended: the operator owns PostgreSQL.
        if let Some(fence) = self.fence.as_ref().filter(|_| !paused) {
            let lock_ttl = self
                .dcs
                .lock_lifetime()
                .map_or(lock_ttl, |lifetime| lifetime.min(lock_ttl));
            let margin = matriarch_model::write_stop_margin(lock_ttl, retry);
            let deadline = (sent_at + lock_ttl).saturating_sub(margin);
            let valid_for = deadline.saturating_sub(self.clock.now());
            if let Err(error) = fence.arm(valid_for).await {
                error!(cluster = %self.scope, member = %self.me, %error, "could not arm the write fence: giving up the leader lock");
                self.lease.lock().leading = false;
                if let Err(release) =
                    bounded("release_leader", retry, self.dcs.release_leader(&self.me)).await
                {
                    warn!(cluster = %self.scope, member = %self.me, error = %release, "could not release the lock; it expires by its ttl");
                }
                return;
            }
        }
        let mut state = self.lease.lock();
        state.renewed_at = Some(state.renewed_at.map_or(sent_at, |at| at.max(sent_at)));
    }
}
