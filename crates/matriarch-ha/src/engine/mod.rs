//! The loop: observe, decide, act, through the `Dcs`, `Postgres` and `Router`
//! traits. It never names a backend.

mod act;
mod apply;
mod errors;
mod handles;
mod lock;
mod observe;
mod record;
mod renewal;
mod restart;
mod slots;
mod start_failure;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use matriarch_dcs::{Clock, Dcs, DcsError};
use matriarch_model::{ClusterConfig, ClusterView, DecodeError, Lsn, MemberName, Timeline};
use matriarch_postgres::{Postgres, PostgresError, Upstream};
use matriarch_router::{Endpoint, Router};
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinHandle;
use tracing::warn;

use crate::decide::{decide, Action, Decision, EngineRole, Inputs, Memory, NodeSettings, Outcome};

pub use errors::{
    BoxedError, FenceError, PostgresCallError, RestartError, RestartFailure, RestartRefusal,
};
pub use handles::{
    EngineSettings, EngineStatus, FailsafeHandle, FailsafeRefusal, FailsafeSender, Fence,
    MemberExtras, PeerProbe, RestartHandle, SettingsHandle, StatusHandle,
};
pub use observe::local_postgres;

use handles::RestartReply;
use renewal::{Lease, Renewer};

/// The shortest wait between two renewals of a held lock, however short its
/// real life: a store that grants a lock for less than `2 × retry_timeout`
/// still gets a renewal this often rather than a busy loop.
const MIN_RENEWAL_INTERVAL: Duration = Duration::from_millis(100);

/// The shortest pause between two loops woken by changes.
const MIN_LOOP_GAP: Duration = Duration::from_millis(20);

/// A bootstrap, clone or rewind running beside the loop: what it did, how
/// it ended, when it was sent, and why it failed when the loop reports it.
type LongTask = JoinHandle<(Action, Outcome, Duration, Option<errors::ActionError>)>;

/// The HA engine of one node.
pub struct Engine<D, P, R> {
    dcs: Arc<D>,
    postgres: Arc<P>,
    router: R,
    settings: EngineSettings,
    clock: Arc<dyn Clock>,
    wall_start: DateTime<Utc>,
    fence: Option<Arc<dyn Fence>>,
    probe: Option<Arc<dyn PeerProbe>>,
    member_extras: Option<Arc<dyn MemberExtras>>,
    memory: Memory,
    config: ClusterConfig,
    /// Why the `config` key was last refused, so that a bad value is
    /// reported once per change of the key, not once per loop.
    rejected_config: Option<DecodeError>,
    last_view: Option<ClusterView>,
    long_task: Option<LongTask>,
    status: watch::Sender<EngineStatus>,
    loops: u64,
    decider: Decider,
    failsafe: FailsafeHandle,
    failsafe_sender: Option<Arc<dyn FailsafeSender>>,
    /// The failsafe set last read from the DCS, plus any written since.
    failsafe_set: BTreeMap<MemberName, String>,
    node_settings: watch::Receiver<NodeSettings>,
    node_settings_tx: Arc<watch::Sender<NodeSettings>>,
    /// Restarts asked for through [`RestartHandle`], carried out in the loop.
    restarts: mpsc::Receiver<RestartReply>,
    restart_handle: RestartHandle,
    /// The former leader the plan being carried out fails over from.
    failing_over_from: Option<MemberName>,
    last_failover_loss: Option<u64>,
    /// Why the last switchover this node stepped down for did not complete.
    last_switchover_failure: Option<String>,
    /// Unreadable keys already reported, with a hash of their error: each
    /// is logged once per change, not once per loop.
    reported_bad_keys: BTreeMap<String, u64>,
    /// Member records a race ignored, already reported (hash of the why).
    reported_implausible: BTreeMap<MemberName, u64>,
    /// What the last decision held back for: logged when it changes.
    last_pending: Option<String>,
    /// The local timeline and WAL position last observed (for heartbeats).
    last_local: (Option<Timeline>, Option<Lsn>),
    /// When (monotonic) this engine was made.
    started_at: Duration,
    /// The role the last decision gave.
    last_role: EngineRole,
    /// Shared with the renewer that keeps a held lock renewed beside the loop.
    lease: Arc<Lease>,
}

/// A decision function with [`decide`]'s signature.
pub type Decider = fn(&Inputs<'_>) -> Decision;

async fn bounded<T, E: From<DcsError>>(
    operation: &'static str,
    after: Duration,
    future: impl Future<Output = Result<T, E>>,
) -> Result<T, E> {
    match tokio::time::timeout(after, future).await {
        Ok(result) => result,
        Err(_) => Err(DcsError::Timeout { operation, after }.into()),
    }
}

async fn pg_bounded<T>(
    after: Duration,
    future: impl Future<Output = Result<T, PostgresError>>,
) -> Result<T, PostgresCallError> {
    match tokio::time::timeout(after, future).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(PostgresCallError::Timeout { after }),
    }
}

/// `postgres://host:port/...` → (host, port).
fn host_port(conn_url: &str) -> Option<(String, u16)> {
    let rest = conn_url.split_once("://")?.1;
    let authority = rest.split(['/', '?']).next()?;
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    let address = matriarch_model::HostPort::parse_with_default_port(authority, 5432).ok()?;
    Some((address.host, address.port))
}

impl<D, P, R> Engine<D, P, R>
where
    D: Dcs + 'static,
    P: Postgres + 'static,
    R: Router,
{
    /// An engine for one node; `clock` is monotonic time (a simulation
    /// passes a virtual one).
    pub fn new(
        dcs: D,
        postgres: P,
        router: R,
        settings: EngineSettings,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let (status, _) = watch::channel(EngineStatus {
            role: EngineRole::Uninitialized,
            reason: "starting".to_owned(),
            leader: None,
            timeline: None,
            wal_position: None,
            dcs_reachable: false,
            paused: false,
            loops: 0,
            config: settings.bootstrap_config.clone(),
            failsafe_active: false,
            lock_ttl: settings.bootstrap_config.ttl,
            last_failover_possible_loss_bytes: None,
            last_switchover_failure: None,
            pending: None,
            creating_replica: false,
            writable: false,
            postgres: None,
            view: None,
            view_read_at: None,
        });
        let (node_settings_tx, node_settings) = watch::channel(settings.node.clone());
        let (restart_requests, restarts) = mpsc::channel(1);
        let failsafe = FailsafeHandle::new(Arc::clone(&clock));
        let started_at = clock.now();
        Engine {
            dcs: Arc::new(dcs),
            postgres: Arc::new(postgres),
            router,
            config: settings.bootstrap_config.clone(),
            settings,
            clock,
            wall_start: Utc::now(),
            fence: None,
            probe: None,
            member_extras: None,
            memory: Memory::default(),
            rejected_config: None,
            last_view: None,
            long_task: None,
            status,
            loops: 0,
            decider: decide,
            failsafe,
            failsafe_sender: None,
            failsafe_set: BTreeMap::new(),
            node_settings,
            node_settings_tx: Arc::new(node_settings_tx),
            restarts,
            restart_handle: RestartHandle {
                requests: restart_requests,
                wake: Arc::new(Notify::new()),
            },
            failing_over_from: None,
            last_failover_loss: None,
            last_switchover_failure: None,
            reported_bad_keys: BTreeMap::new(),
            reported_implausible: BTreeMap::new(),
            last_pending: None,
            last_local: (None, None),
            started_at,
            last_role: EngineRole::Uninitialized,
            lease: Arc::default(),
        }
    }

    /// Sends failsafe heartbeats through `sender` when this node leads and
    /// the DCS is unreachable with `failsafe_mode` on. Without one, a primary
    /// cut off from the DCS demotes by its deadline as in non-failsafe mode.
    pub fn with_failsafe_sender(mut self, sender: Arc<dyn FailsafeSender>) -> Self {
        self.failsafe_sender = Some(sender);
        self
    }

    /// The handle the REST API passes received failsafe heartbeats to.
    pub fn failsafe_handle(&self) -> FailsafeHandle {
        self.failsafe.clone()
    }

    /// A handle the REST API asks for PostgreSQL restarts through.
    pub fn restart_handle(&self) -> RestartHandle {
        self.restart_handle.clone()
    }

    /// A handle to change this node's settings (tags) while the engine runs.
    pub fn settings_handle(&self) -> SettingsHandle {
        SettingsHandle(Arc::clone(&self.node_settings_tx))
    }

    /// Replaces [`decide`] with another policy: for simulations that prove
    /// the harness catches a broken one, or for teams with their own rules.
    pub fn with_decider(mut self, decider: Decider) -> Self {
        self.decider = decider;
        self
    }

    /// Guards writes with a fence that outlives this agent.
    ///
    /// A primary's writes stop [`ClusterConfig::write_stop_margin`] before
    /// its lock can expire: a margin that counts on the fence stopping them
    /// at once. Without a fence only the loop's demotion stops them, and it
    /// may take up to `retry_timeout`: give every engine that runs a real
    /// primary a fence.
    pub fn with_fence(mut self, fence: Arc<dyn Fence>) -> Self {
        self.fence = Some(fence);
        self
    }

    /// Asks peers directly for their positions when the leader is gone.
    pub fn with_peer_probe(mut self, probe: Arc<dyn PeerProbe>) -> Self {
        self.probe = Some(probe);
        self
    }

    /// Writes what the node knows besides the engine (a pending or a
    /// scheduled restart) into every member record it publishes.
    pub fn with_member_extras(mut self, extras: Arc<dyn MemberExtras>) -> Self {
        self.member_extras = Some(extras);
        self
    }

    /// Sets the wall-clock time that monotonic time zero stands for (for
    /// scheduled switchovers in a simulation).
    pub fn with_wall_start(mut self, wall_start: DateTime<Utc>) -> Self {
        self.wall_start = wall_start;
        self
    }

    /// A read handle on the engine's status.
    pub fn status(&self) -> StatusHandle {
        StatusHandle(self.status.subscribe())
    }

    /// What the engine remembers, for tests and diagnostics.
    pub fn memory(&self) -> &Memory {
        &self.memory
    }

    /// The configuration in force.
    pub fn config(&self) -> &ClusterConfig {
        &self.config
    }

    fn name(&self) -> &MemberName {
        &self.settings.node.name
    }

    fn upstream(&self, name: &MemberName) -> Option<Upstream> {
        let view = self.last_view.as_ref()?;
        let member = view.members.get(name.as_str())?.as_ref().ok()?;
        let (host, port) = host_port(&member.value.conn_url)?;
        Some(Upstream {
            member: name.clone(),
            host,
            port,
            standby_source: None,
        })
    }

    fn endpoint(&self, name: &MemberName) -> Option<Endpoint> {
        let conn_url = if name == self.name() {
            self.settings.node.conn_url.clone()
        } else {
            let view = self.last_view.as_ref()?;
            view.members
                .get(name.as_str())?
                .as_ref()
                .ok()?
                .value
                .conn_url
                .clone()
        };
        let (host, port) = host_port(&conn_url)?;
        Some(Endpoint {
            member: name.clone(),
            host,
            port,
        })
    }

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

#[cfg(test)]
mod tests;
