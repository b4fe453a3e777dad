//! The loop: observe, decide, act, through the `Dcs`, `Postgres` and `Router`
//! traits. It never names a backend.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use matriarch_dcs::{Clock, Dcs, DcsError, Expected};
use matriarch_model::{
    ClusterConfig, ClusterView, DcsKey, DecodeError, FailsafeHeartbeat, HistoryEntry, LeaderStatus,
    Lsn, Member, MemberName, Record, SyncState, SynchronousMode, Timeline, TimelineHistory,
};
use matriarch_postgres::{
    BootstrapSpec, DataDirectoryState, LocalState, PgRole, Postgres, PostgresError, RewindOutcome,
    ServerState, StartAs, StopMode, SyncStandbyNames, Upstream,
};
use matriarch_router::{Endpoint, Router};
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio::task::JoinHandle;
use tracing::{debug, error, info, warn};

use crate::decide::{
    decide, implausible_records, Action, DcsObservation, Decision, DemoteMode, EngineRole,
    FailsafeInputs, FailsafeRound, Inputs, LocalPostgres, LocalRole, Memory, NodeSettings, Outcome,
    PeerReport, ReceivedHeartbeat, Routes,
};

/// Stops a primary's PostgreSQL from acknowledging writes when its agent stops
/// renewing (killed, paused, cut off), independently of the agent: the one
/// guarantee an agent cannot give about itself.
#[async_trait]
pub trait Fence: Send + Sync {
    /// Allows writes for `valid_for` from now; after that, PostgreSQL must
    /// stop acknowledging them unless armed again.
    async fn arm(&self, valid_for: Duration) -> Result<(), String>;
    /// This node no longer leads: nothing to guard.
    async fn disarm(&self) -> Result<(), String>;
}

/// Asks peers directly for their WAL positions, fresher than their records.
#[async_trait]
pub trait PeerProbe: Send + Sync {
    /// Reports of the members that answered in time.
    async fn probe(&self, members: &[Member]) -> BTreeMap<MemberName, PeerReport>;
}

/// Sends failsafe heartbeats (`POST /failsafe`) to the members of the
/// `failsafe` key while the DCS is unreachable.
#[async_trait]
pub trait FailsafeSender: Send + Sync {
    /// Sends `heartbeat` to every member (name, REST API URL) at once, each
    /// bounded by `timeout`; returns the members that acknowledged it (200).
    async fn send(
        &self,
        members: &[(MemberName, String)],
        heartbeat: &FailsafeHeartbeat,
        timeout: Duration,
    ) -> BTreeSet<MemberName>;
}

/// Why a failsafe heartbeat was not acknowledged.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FailsafeRefusal {
    /// `failsafe_mode` is off on this node.
    #[error("failsafe mode is off")]
    Disabled,
    /// This node is not a running replica of the sender.
    #[error("not a running replica of {sender}")]
    NotAReplicaOf {
        /// The member that sent the heartbeat.
        sender: MemberName,
    },
}

#[derive(Debug, Default)]
struct FailsafeShared {
    enabled: bool,
    /// The member this node runs as a replica of, as the last loop decided.
    following: Option<MemberName>,
    last: Option<ReceivedHeartbeat>,
}

/// The receiving end of failsafe heartbeats: the REST API hands each
/// `POST /failsafe` to [`FailsafeHandle::receive`]; the engine reads the last
/// acknowledged one at every decision. Clones share the state.
#[derive(Clone)]
pub struct FailsafeHandle {
    shared: Arc<Mutex<FailsafeShared>>,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for FailsafeHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FailsafeHandle").finish_non_exhaustive()
    }
}

impl FailsafeHandle {
    fn new(clock: Arc<dyn Clock>) -> Self {
        FailsafeHandle {
            shared: Arc::default(),
            clock,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FailsafeShared> {
        self.shared.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records a heartbeat and acknowledges it (`Ok`: answer 200) only when
    /// failsafe mode is on and this node runs as a replica of its sender;
    /// from then on this node does not race for the lock for a ttl.
    pub fn receive(&self, heartbeat: &FailsafeHeartbeat) -> Result<(), FailsafeRefusal> {
        let mut shared = self.lock();
        if !shared.enabled {
            return Err(FailsafeRefusal::Disabled);
        }
        if shared.following.as_ref() != Some(&heartbeat.name) {
            return Err(FailsafeRefusal::NotAReplicaOf {
                sender: heartbeat.name.clone(),
            });
        }
        shared.last = Some(ReceivedHeartbeat {
            leader: heartbeat.name.clone(),
            received_at: self.clock.now(),
        });
        Ok(())
    }

    /// The last heartbeat acknowledged.
    pub fn last(&self) -> Option<ReceivedHeartbeat> {
        self.lock().last.clone()
    }

    fn set_acceptance(&self, enabled: bool, following: Option<MemberName>) {
        let mut shared = self.lock();
        shared.enabled = enabled;
        shared.following = following;
    }
}

/// Changes this node's settings (tags, URLs) while the engine runs: the
/// daemon calls [`SettingsHandle::set_node`] on SIGHUP; the engine applies
/// the new settings at the start of its next loop and publishes them in its
/// member record. The member name cannot change (a different name is ignored
/// with a warning).
#[derive(Clone, Debug)]
pub struct SettingsHandle(Arc<watch::Sender<NodeSettings>>);

impl SettingsHandle {
    /// Replaces the node settings from the next loop on.
    pub fn set_node(&self, node: NodeSettings) {
        self.0.send_replace(node);
    }

    /// The settings the engine will use from its next loop on.
    pub fn node(&self) -> NodeSettings {
        self.0.borrow().clone()
    }
}

/// Why a restart asked through [`RestartHandle`] did not happen.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RestartError {
    /// The engine is not running (stopped, or not started yet).
    #[error("the HA engine is not running")]
    EngineGone,
    /// The engine did not carry it out in time.
    #[error("the HA engine did not restart PostgreSQL within {0:?}")]
    Timeout(Duration),
    /// Refused; nothing was changed.
    #[error("not restarted: {0}")]
    Refused(String),
    /// Stopping or starting failed; the engine decides what runs next.
    #[error("restart failed: {0}")]
    Failed(String),
}

type RestartReply = oneshot::Sender<Result<String, RestartError>>;

/// Asks the engine to restart PostgreSQL in its own loop, where the lock and
/// the write fence are known: a primary is stopped and started again only
/// while this member holds the lock, renewed (and the fence re-armed) just
/// before the start; nothing else can demote or promote meanwhile.
#[derive(Clone, Debug)]
pub struct RestartHandle {
    requests: mpsc::Sender<RestartReply>,
    wake: Arc<Notify>,
}

impl RestartHandle {
    /// Restarts PostgreSQL in the role it runs in, waiting up to `timeout`
    /// for the engine; returns what was done.
    pub async fn restart(&self, timeout: Duration) -> Result<String, RestartError> {
        let (reply, answer) = oneshot::channel();
        self.requests.try_send(reply).map_err(|error| match error {
            mpsc::error::TrySendError::Full(_) => {
                RestartError::Refused("another restart is waiting".to_owned())
            }
            mpsc::error::TrySendError::Closed(_) => RestartError::EngineGone,
        })?;
        self.wake.notify_one();
        match tokio::time::timeout(timeout, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(RestartError::EngineGone),
            Err(_) => Err(RestartError::Timeout(timeout)),
        }
    }
}

/// The shortest wait between two renewals of a held lock, however short its
/// real life: a store that grants a lock for less than `2 × retry_timeout`
/// still gets a renewal this often rather than a busy loop.
const MIN_RENEWAL_INTERVAL: Duration = Duration::from_millis(100);

/// What the engine needs besides the three traits.
#[derive(Clone, Debug)]
pub struct EngineSettings {
    /// This node.
    pub node: NodeSettings,
    /// The dynamic configuration a bootstrap writes, and the one in force
    /// until the DCS holds a valid one.
    pub bootstrap_config: ClusterConfig,
    /// How a bootstrap creates the cluster.
    pub bootstrap: BootstrapSpec,
    /// The bound on slow PostgreSQL operations (start, promote, clone).
    pub postgres_timeout: Duration,
}

/// The engine's state as the REST API and metrics read it.
#[derive(Clone, Debug, PartialEq)]
pub struct EngineStatus {
    /// The role this node plays.
    pub role: EngineRole,
    /// Why, from the last decision.
    pub reason: String,
    /// The lock holder, if known.
    pub leader: Option<MemberName>,
    /// The local timeline.
    pub timeline: Option<Timeline>,
    /// The local WAL position.
    pub wal_position: Option<Lsn>,
    /// Whether the last DCS read succeeded.
    pub dcs_reachable: bool,
    /// Whether the cluster is paused.
    pub paused: bool,
    /// Loops run so far.
    pub loops: u64,
    /// The dynamic configuration the engine decides with.
    pub config: ClusterConfig,
    /// This node leads on failsafe: the DCS is unreachable and every member
    /// acknowledged its last heartbeat.
    pub failsafe_active: bool,
    /// How long the leader lock counts after a renewal: the ttl, or the
    /// shorter lifetime the DCS reported for it. The watchdog timeout
    /// follows it.
    pub lock_ttl: Duration,
    /// How many bytes of WAL the former leader was last known to hold beyond
    /// this node's position when this node last promoted in a failover
    /// (`None`: no failover by this node, or the position was unknown).
    pub last_failover_possible_loss_bytes: Option<u64>,
    /// Why the last switchover this node stepped down for did not complete
    /// (nobody took over, so it leads again on the same timeline).
    pub last_switchover_failure: Option<String>,
    /// PostgreSQL runs read-write under this node's leadership: set the
    /// moment a promotion completes, cleared before a demotion or any
    /// decision not to lead is acted on (not only at the loop's end), so
    /// the REST role checks follow the engine without lag.
    pub writable: bool,
    /// Why this node holds back, from the last decision ([`Decision::pending`]).
    pub pending: Option<String>,
}

/// A cheap read handle on [`EngineStatus`].
#[derive(Clone, Debug)]
pub struct StatusHandle(watch::Receiver<EngineStatus>);

impl StatusHandle {
    /// The latest status.
    pub fn get(&self) -> EngineStatus {
        self.0.borrow().clone()
    }

    /// Waits until the status changes.
    pub async fn changed(&mut self) -> bool {
        self.0.changed().await.is_ok()
    }
}

/// The shortest pause between two loops woken by changes.
const MIN_LOOP_GAP: Duration = Duration::from_millis(20);

type LongTask = JoinHandle<(Action, Outcome, Duration)>;

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
) -> Result<T, String> {
    match tokio::time::timeout(after, future).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(err)) => Err(err.to_string()),
        Err(_) => Err(format!("no answer within {after:?}")),
    }
}

/// `postgres://host:port/...` → (host, port).
fn host_port(conn_url: &str) -> Option<(String, u16)> {
    let rest = conn_url.split_once("://")?.1;
    let authority = rest.split(['/', '?']).next()?;
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(']') || host.starts_with('[') => {
            (host, port.parse().ok()?)
        }
        _ => (authority, 5432),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    (!host.is_empty()).then(|| (host.to_owned(), port))
}

/// Translates what PostgreSQL reports into what [`decide`] needs.
pub fn local_postgres(state: &LocalState) -> LocalPostgres {
    let role = match state.server {
        ServerState::Running(PgRole::Primary) => LocalRole::Primary,
        ServerState::Running(PgRole::Replica) => LocalRole::Replica {
            upstream: state.upstream.as_ref().map(|u| u.member.clone()),
        },
        ServerState::Unavailable => LocalRole::Unknown,
        ServerState::NotRunning(DataDirectoryState::Empty) => LocalRole::NoData,
        ServerState::NotRunning(DataDirectoryState::CleanShutdown) => {
            LocalRole::Stopped { crashed: false }
        }
        ServerState::NotRunning(DataDirectoryState::Crashed) => {
            LocalRole::Stopped { crashed: true }
        }
    };
    let wal = &state.wal;
    let wal_position = [wal.write, wal.flush, wal.received, wal.replayed]
        .into_iter()
        .flatten()
        .max();
    let streaming_standbys = state
        .replication
        .iter()
        .filter(|c| c.state == matriarch_postgres::WalSenderState::Streaming)
        .filter_map(|c| c.member())
        .collect();
    let sync_standbys = state
        .synchronous_standby_names
        .as_ref()
        .map(|names| {
            names
                .names()
                .iter()
                .filter_map(|n| MemberName::new(n.as_str()).ok())
                .collect()
        })
        .unwrap_or_default();
    LocalPostgres {
        role,
        system_id: state.system_id,
        timeline: state.timeline,
        wal_position,
        streaming_standbys,
        sync_standbys,
        sync_count: state
            .synchronous_standby_names
            .as_ref()
            .map_or(0, SyncStandbyNames::count),
        sync_any_standby: state
            .synchronous_standby_names
            .as_ref()
            .is_some_and(|names| names.names().iter().any(|n| n == "*")),
        receiving: state.receiving,
        standby_flush: state
            .replication
            .iter()
            .filter_map(|c| Some((c.member()?, c.flush?)))
            .collect(),
    }
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
            writable: false,
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
    pub fn with_fence(mut self, fence: Arc<dyn Fence>) -> Self {
        self.fence = Some(fence);
        self
    }

    /// Asks peers directly for their positions when the leader is gone.
    pub fn with_peer_probe(mut self, probe: Arc<dyn PeerProbe>) -> Self {
        self.probe = Some(probe);
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
    /// takes over without waiting for the ttl.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) {
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
        self.step_down().await;
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

    /// One loop: observe, decide, act. Returns the decision it acted on.
    pub async fn run_once(&mut self) -> Decision {
        self.collect_long_task().await;
        self.apply_node_settings();
        let retry = self.config.retry_timeout;
        let failsafe_enabled = self.config.failsafe_mode;
        let was_following = matches!(self.last_role, EngineRole::Replica | EngineRole::Uncertain);
        let observe = async {
            let state = pg_bounded(retry, self.postgres.observe()).await;
            // A replica that was not racing acknowledges heartbeats of the
            // upstream it streams from now, without waiting for a DCS read
            // that may hang (checked again after deciding, and before racing).
            if let Ok(state) = &state {
                let following = match local_postgres(state).role {
                    LocalRole::Replica { upstream } if was_following => upstream,
                    _ => None,
                };
                self.failsafe.set_acceptance(failsafe_enabled, following);
            }
            state
        };
        let ((view, round), state) = tokio::join!(self.read_view_or_failsafe(), observe);
        let dcs = match view {
            Ok(view) => {
                self.adopt_config(&view);
                self.memory.saw_view(&view, &self.settings.node.name);
                self.memory.saw_lock(&view, self.clock.now());
                // An unreadable key keeps the last set (and stops every
                // replica from racing); an absent one empties it.
                match &view.failsafe {
                    Some(Ok(key)) => self.failsafe_set = key.value.0.clone(),
                    None => self.failsafe_set.clear(),
                    Some(Err(_)) => {}
                }
                // The config key's error is reported by adopt_config, once.
                self.report_unreadable_keys(&view);
                self.last_view = Some(view.clone());
                DcsObservation::View(Box::new(view))
            }
            Err(error) => {
                warn!(cluster = %self.dcs.layout().scope(), member = %self.name(), %error, "DCS unreachable");
                DcsObservation::Unreachable
            }
        };
        let local = match state {
            Ok(state) => local_postgres(&state),
            Err(error) => {
                warn!(member = %self.name(), %error, "could not observe PostgreSQL");
                LocalPostgres {
                    role: LocalRole::Unknown,
                    ..LocalPostgres::no_data()
                }
            }
        };
        self.memory.observed(&local);
        self.last_local = (local.timeline, local.wal_position);
        let peers = self.probe_peers(&dcs).await;
        // Read before the time: a heartbeat acknowledged up to now counts.
        let failsafe = FailsafeInputs {
            round: if matches!(dcs, DcsObservation::Unreachable) {
                round
            } else {
                None
            },
            heartbeat: self.failsafe.last(),
            listening_since: self.started_at,
        };
        let now = self.clock.now();
        let wall_clock =
            self.wall_start + chrono::Duration::from_std(now).unwrap_or(chrono::Duration::zero());
        let decision = (self.decider)(&Inputs {
            node: &self.settings.node,
            config: &self.config,
            dcs: &dcs,
            local: &local,
            peers: &peers,
            memory: &self.memory,
            now,
            wall_clock,
            failsafe: &failsafe,
        });
        debug!(member = %self.name(), role = ?decision.role, reason = %decision.reason, actions = ?decision.actions, "decided");
        self.report_holding_back(&decision, &dcs, &peers);
        // Acknowledge heartbeats only as a replica that is not about to race.
        let following = match (&local.role, decision.role) {
            (LocalRole::Replica { upstream }, EngineRole::Replica | EngineRole::Uncertain) => {
                upstream.clone()
            }
            _ => None,
        };
        self.failsafe
            .set_acceptance(self.config.failsafe_mode, following);
        self.last_role = decision.role;
        self.act(&decision, &local).await;
        self.serve_restart(&decision, &local).await;
        if decision.role == EngineRole::Leader
            && local.role == LocalRole::Primary
            && self.history_incomplete(local.timeline)
        {
            if let Some(timeline) = local.timeline {
                self.record_history(timeline, None, None).await;
            }
        }
        self.loops += 1;
        let leader = match &dcs {
            DcsObservation::View(view) => view.leader_name().cloned(),
            DcsObservation::Unreachable => None,
        };
        // As act() left it: a promotion in this loop set it. (Read before
        // sending: a borrow held across the send would deadlock.)
        let writable = decision.role == EngineRole::Leader && self.status.borrow().writable;
        self.status.send_replace(EngineStatus {
            role: decision.role,
            reason: decision.reason.clone(),
            leader,
            timeline: local.timeline,
            wal_position: local.wal_position,
            dcs_reachable: matches!(dcs, DcsObservation::View(_)),
            paused: self.config.pause,
            loops: self.loops,
            config: self.config.clone(),
            failsafe_active: decision
                .actions
                .iter()
                .any(|a| matches!(a, Action::FailsafeExtend { .. })),
            last_failover_possible_loss_bytes: self.last_failover_loss,
            last_switchover_failure: self.last_switchover_failure.clone(),
            writable,
            pending: decision.pending.clone(),
            lock_ttl: self.lock_ttl(),
        });
        decision
    }

    /// Carries out a restart asked for through [`RestartHandle`], after this
    /// loop's plan.
    async fn serve_restart(&mut self, decision: &Decision, local: &LocalPostgres) {
        let Ok(reply) = self.restarts.try_recv() else {
            return;
        };
        let result = self.restart_postgres(decision, local).await;
        match &result {
            Ok(done) => {
                info!(cluster = %self.dcs.layout().scope(), member = %self.name(), %done, "restart through the REST API")
            }
            Err(error) => {
                warn!(cluster = %self.dcs.layout().scope(), member = %self.name(), %error, "restart through the REST API")
            }
        }
        let _ = reply.send(result);
    }

    /// Stops PostgreSQL cleanly and starts it again in the same role. A
    /// primary only while this member leads: the lock is renewed and the
    /// fence armed before stopping (a refusal changes nothing) and again
    /// before starting (a lock lost meanwhile leaves it stopped for the next
    /// loop to decide).
    async fn restart_postgres(
        &mut self,
        decision: &Decision,
        local: &LocalPostgres,
    ) -> Result<String, RestartError> {
        if self.long_task.is_some() {
            return Err(RestartError::Refused(
                "a bootstrap, clone or rewind is running".to_owned(),
            ));
        }
        let timeout = self.settings.postgres_timeout;
        match &local.role {
            LocalRole::Primary => {
                if decision.role != EngineRole::Leader || self.memory.lock_renewed_at.is_none() {
                    return Err(RestartError::Refused(format!(
                        "this primary does not hold the leader lock ({})",
                        decision.reason
                    )));
                }
                if !self.renew_for_restart(local).await {
                    return Err(RestartError::Refused(
                        "the leader lock could not be renewed with the write fence armed"
                            .to_owned(),
                    ));
                }
                pg_bounded(timeout, self.postgres.stop(StopMode::Fast))
                    .await
                    .map_err(RestartError::Failed)?;
                // Stopping may take long: the lock and the fence again, right
                // before a writable primary starts.
                if !self.renew_for_restart(local).await {
                    return Err(RestartError::Failed(
                        "stopped, then the leader lock could not be renewed with the write fence armed: not starting a primary".to_owned(),
                    ));
                }
                let sent_at = self.clock.now();
                let started = pg_bounded(timeout, self.postgres.start(StartAs::Primary)).await;
                let outcome = if started.is_ok() {
                    Outcome::Done
                } else {
                    Outcome::Failed
                };
                self.memory.record(&Action::StartPrimary, &outcome, sent_at);
                started.map_err(RestartError::Failed)?;
                Ok("restarted as primary".to_owned())
            }
            LocalRole::Replica { upstream } => {
                let start_as = match upstream {
                    Some(name) => match self.upstream(name) {
                        Some(upstream) => StartAs::ReplicaOf(upstream),
                        None => {
                            return Err(RestartError::Refused(format!(
                                "no connection address for the upstream {name}"
                            )))
                        }
                    },
                    None => StartAs::Standby,
                };
                pg_bounded(timeout, self.postgres.stop(StopMode::Fast))
                    .await
                    .map_err(RestartError::Failed)?;
                pg_bounded(timeout, self.postgres.start(start_as))
                    .await
                    .map_err(RestartError::Failed)?;
                Ok("restarted as a replica".to_owned())
            }
            LocalRole::NoData | LocalRole::Stopped { .. } => Err(RestartError::Refused(
                "PostgreSQL is not running".to_owned(),
            )),
            LocalRole::Unknown => Err(RestartError::Refused(
                "PostgreSQL's state is unknown".to_owned(),
            )),
        }
    }

    /// Renews the lock and arms the fence, as [`Action::RenewLock`] does.
    async fn renew_for_restart(&mut self, local: &LocalPostgres) -> bool {
        let sent_at = self.clock.now();
        let outcome = self.execute(&Action::RenewLock, local).await;
        self.memory.record(&Action::RenewLock, &outcome, sent_at);
        outcome == Outcome::Done
    }

    /// A failsafe heartbeat acknowledged less than ttl ago.
    fn heartbeat_fresh(&self) -> bool {
        self.failsafe
            .last()
            .is_some_and(|hb| self.clock.now() < hb.received_at.saturating_add(self.config.ttl))
    }

    /// Applies settings changed through [`SettingsHandle`] (not the name).
    fn apply_node_settings(&mut self) {
        if !self.node_settings.has_changed().unwrap_or(false) {
            return;
        }
        let mut node = self.node_settings.borrow_and_update().clone();
        if node.name != self.settings.node.name {
            warn!(member = %self.name(), ignored = %node.name, "the member name cannot change while running: keeping it");
            node.name = self.settings.node.name.clone();
        }
        if node != self.settings.node {
            info!(cluster = %self.dcs.layout().scope(), member = %self.name(), tags = ?node.tags, "node settings changed");
            self.settings.node = node;
        }
    }

    /// Reads the view; when it has not answered after half of
    /// `retry_timeout` and this node leads in failsafe mode, sends a round of
    /// failsafe heartbeats meanwhile, so the round is sent well before the
    /// demotion deadline even on the first loop of an outage.
    async fn read_view_or_failsafe(
        &self,
    ) -> (Result<ClusterView, DcsError>, Option<FailsafeRound>) {
        let retry = self.config.retry_timeout;
        let read = bounded("read_view", retry, self.dcs.read_view());
        let eligible = self.config.failsafe_mode
            && self.memory.lock_renewed_at.is_some()
            && self.memory.ran_as_primary
            && self.failsafe_sender.is_some();
        if !eligible {
            return (read.await, None);
        }
        tokio::pin!(read);
        tokio::select! {
            biased;
            result = &mut read => {
                // A DCS refusing at once: the round goes now.
                let round = match &result {
                    Ok(_) => None,
                    Err(_) => self.failsafe_round(retry / 2).await,
                };
                (result, round)
            }
            () = tokio::time::sleep(retry / 2) => {
                let (result, round) = tokio::join!(read, self.failsafe_round(retry / 2));
                (result, round)
            }
        }
    }

    /// One round of heartbeats to every other member of the failsafe set.
    ///
    /// No round without a known failsafe set: replicas race freely while the
    /// key is absent, so nobody's silence could be taken for a promise.
    async fn failsafe_round(&self, timeout: Duration) -> Option<FailsafeRound> {
        let sender = self.failsafe_sender.as_ref()?;
        if self.failsafe_set.is_empty() {
            debug!(member = %self.name(), "failsafe: no failsafe key known: no round");
            return None;
        }
        let me = self.name();
        let members: Vec<(MemberName, String)> = self
            .failsafe_set
            .iter()
            .filter(|(name, _)| *name != me)
            .map(|(name, url)| (name.clone(), url.clone()))
            .collect();
        let heartbeat = FailsafeHeartbeat {
            name: me.clone(),
            conn_url: self.settings.node.conn_url.clone(),
            api_url: self.settings.node.api_url.clone(),
            timeline: self.last_local.0,
            xlog_location: self.last_local.1,
        };
        let sent_at = self.clock.now();
        let acknowledged =
            tokio::time::timeout(timeout, sender.send(&members, &heartbeat, timeout))
                .await
                .unwrap_or_default();
        let missing = members
            .iter()
            .map(|(name, _)| name.clone())
            .filter(|name| !acknowledged.contains(name))
            .collect::<BTreeSet<_>>();
        let acknowledged = acknowledged
            .into_iter()
            .filter(|name| self.failsafe_set.contains_key(name) && name != me)
            .collect::<BTreeSet<_>>();
        if missing.is_empty() {
            debug!(member = %me, acknowledged = acknowledged.len(), "failsafe round acknowledged by every member");
        } else {
            warn!(cluster = %self.dcs.layout().scope(), member = %me, ?missing, "failsafe round: members did not acknowledge");
        }
        Some(FailsafeRound {
            sent_at,
            acknowledged,
            missing,
        })
    }

    /// Logs each unreadable key (the `config` key aside: `adopt_config`
    /// reports it) once per change of its error, with a bounded excerpt: a
    /// huge or garbage value must not flood the log every loop.
    fn report_unreadable_keys(&mut self, view: &ClusterView) {
        let config_key = DcsKey::Config.relative_path();
        let mut seen = BTreeMap::new();
        for error in view.errors().into_iter().filter(|e| e.key != config_key) {
            let hash = text_hash(&error.reason);
            if self.reported_bad_keys.get(&error.key) != Some(&hash) {
                let excerpt = excerpt(&error.reason);
                warn!(cluster = %self.dcs.layout().scope(), member = %self.name(), key = %error.key, error = %excerpt,
                    "unreadable DCS value: ignored until it changes");
            }
            seen.insert(error.key.clone(), hash);
        }
        // A key readable again (or gone) is reported anew if it breaks again.
        self.reported_bad_keys = seen;
    }

    /// Logs at info, once when it begins, what this node holds back for
    /// (not racing, not following, waiting), and at warn, once per
    /// record, each member record a race ignores.
    fn report_holding_back(
        &mut self,
        decision: &Decision,
        dcs: &DcsObservation,
        peers: &BTreeMap<MemberName, PeerReport>,
    ) {
        if decision.pending != self.last_pending {
            if let Some(pending) = &decision.pending {
                info!(cluster = %self.dcs.layout().scope(), member = %self.name(), role = ?decision.role, reason = %excerpt(pending), "holding back");
            } else if let Some(before) = &self.last_pending {
                info!(cluster = %self.dcs.layout().scope(), member = %self.name(), role = ?decision.role, before = %excerpt(before), "no longer holding back");
            }
            self.last_pending = decision.pending.clone();
        }
        let ignored = match dcs {
            DcsObservation::View(view) if view.leader.is_none() => {
                implausible_records(&self.settings.node.name, view, peers, &self.memory)
            }
            _ => BTreeMap::new(),
        };
        for (name, why) in &ignored {
            let hash = text_hash(why);
            if self.reported_implausible.get(name) != Some(&hash) {
                warn!(cluster = %self.dcs.layout().scope(), member = %self.name(), record = %name, why = %excerpt(why),
                    "ignoring a member record for the leader race");
            }
        }
        if !matches!(dcs, DcsObservation::View(view) if view.leader.is_some()) {
            self.reported_implausible = ignored
                .into_iter()
                .map(|(name, why)| (name, text_hash(&why)))
                .collect();
        }
    }

    /// Takes up a valid `config` key. One that does not parse or breaks a
    /// bound (written behind matriarch's back: `PATCH /config` refuses it)
    /// changes nothing: the last valid configuration stays in force, and
    /// the refusal is logged once per distinct error, not once per loop.
    fn adopt_config(&mut self, view: &ClusterView) {
        match &view.config {
            Some(Ok(config)) => {
                self.rejected_config = None;
                if config.value != self.config {
                    info!(cluster = %self.dcs.layout().scope(), member = %self.name(), "dynamic configuration changed");
                    self.config = config.value.clone();
                }
            }
            Some(Err(error)) => {
                if self.rejected_config.as_ref() != Some(error) {
                    warn!(cluster = %self.dcs.layout().scope(), member = %self.name(), error = %excerpt(&error.to_string()),
                        "ignoring the DCS config key: keeping the last valid dynamic configuration");
                    self.rejected_config = Some(error.clone());
                }
            }
            None => self.rejected_config = None,
        }
    }

    async fn probe_peers(&self, dcs: &DcsObservation) -> BTreeMap<MemberName, PeerReport> {
        let (Some(probe), DcsObservation::View(view)) = (&self.probe, dcs) else {
            return BTreeMap::new();
        };
        // Only a race needs fresher positions than the records give.
        if view.leader.is_some() {
            return BTreeMap::new();
        }
        let members: Vec<Member> = view
            .healthy_records()
            .filter(|m| &m.name != self.name())
            .cloned()
            .collect();
        tokio::time::timeout(self.config.retry_timeout, probe.probe(&members))
            .await
            .unwrap_or_default()
    }

    async fn collect_long_task(&mut self) {
        let finished = self.long_task.as_ref().is_some_and(JoinHandle::is_finished);
        if !finished {
            return;
        }
        if let Some(task) = self.long_task.take() {
            match task.await {
                Ok((action, outcome, sent_at)) => {
                    info!(member = %self.name(), ?action, ?outcome, "long action finished");
                    if action == Action::Bootstrap && outcome == Outcome::Done {
                        // The bootstrap took the lock.
                        self.note_lock_lifetime();
                    }
                    self.memory.record(&action, &outcome, sent_at);
                }
                Err(error) => {
                    warn!(member = %self.name(), %error, "long action panicked or was cancelled")
                }
            }
        }
    }

    async fn act(&mut self, decision: &Decision, local: &LocalPostgres) {
        let decided_at = self.clock.now();
        self.failing_over_from = None;
        // Published before acting: a demotion is announced before it starts.
        let writable = decision.role == EngineRole::Leader && local.role == LocalRole::Primary;
        self.status.send_if_modified(|status| {
            let changed = status.writable != writable;
            status.writable = writable;
            changed
        });
        for action in &decision.actions {
            // A plan is only as good as the observation it came from: after a
            // pause (GC, SIGSTOP, a slow disk) the rest of it may be wrong.
            // (A slow promotion is no pause: only a gap as long as the lock's
            // own lifetime makes the rest of the plan suspect.)
            if self.clock.now().saturating_sub(decided_at) > self.lock_ttl() {
                warn!(member = %self.name(), ?action, "plan went stale: deciding again");
                break;
            }
            if *action == Action::AcquireLock && self.heartbeat_fresh() {
                // Acknowledged after this decision read the heartbeats: the
                // promise not to race holds.
                warn!(member = %self.name(), "a failsafe heartbeat was acknowledged while deciding: not racing");
                break;
            }
            let busy = self.long_task.is_some();
            if busy && !matches!(action, Action::PublishMember(_) | Action::RenewLock) {
                debug!(member = %self.name(), ?action, "skipped while a long action runs");
                break;
            }
            let sent_at = self.clock.now();
            if matches!(
                action,
                Action::Bootstrap | Action::CloneFrom(_) | Action::Rewind(_)
            ) {
                self.start_long_task(action.clone(), sent_at);
                break;
            }
            let outcome = self.execute(action, local).await;
            self.memory.record(action, &outcome, sent_at);
            if outcome != Outcome::Done {
                debug!(member = %self.name(), ?action, ?outcome, "plan stopped");
                break;
            }
        }
    }

    fn start_long_task(&mut self, action: Action, sent_at: Duration) {
        let dcs = Arc::clone(&self.dcs);
        let postgres = Arc::clone(&self.postgres);
        let clock = Arc::clone(&self.clock);
        let me = self.name().clone();
        let config = self.config.clone();
        let spec = self.settings.bootstrap.clone();
        let timeout = self.settings.postgres_timeout;
        let upstream = match &action {
            Action::CloneFrom(name) | Action::Rewind(name) => self.upstream(name),
            _ => None,
        };
        info!(member = %me, ?action, "starting long action");
        self.long_task = Some(tokio::spawn(async move {
            let (outcome, at) = match &action {
                Action::Bootstrap => {
                    bootstrap(&*dcs, &*postgres, &me, &config, &spec, timeout, &*clock).await
                }
                Action::CloneFrom(_) => match upstream {
                    Some(upstream) => {
                        match pg_bounded(timeout, postgres.clone_replica(&upstream)).await {
                            Ok(()) => (Outcome::Done, sent_at),
                            Err(error) => {
                                warn!(member = %me, %error, "clone failed");
                                (Outcome::Failed, sent_at)
                            }
                        }
                    }
                    None => (Outcome::Failed, sent_at),
                },
                Action::Rewind(_) => match upstream {
                    Some(upstream) => match pg_bounded(timeout, postgres.rewind(&upstream)).await {
                        Ok(RewindOutcome::Rewound | RewindOutcome::NotNeeded) => {
                            (Outcome::Done, sent_at)
                        }
                        Ok(RewindOutcome::Impossible { reason }) => {
                            warn!(member = %me, %reason, "rewind impossible");
                            (Outcome::RewindImpossible, sent_at)
                        }
                        Err(error) => {
                            warn!(member = %me, %error, "rewind failed");
                            (Outcome::Failed, sent_at)
                        }
                    },
                    None => (Outcome::Failed, sent_at),
                },
                _ => (Outcome::Failed, sent_at),
            };
            (action, outcome, at)
        }));
    }

    async fn execute(&mut self, action: &Action, local: &LocalPostgres) -> Outcome {
        let me = self.name().clone();
        let ttl = self.config.ttl;
        let retry = self.config.retry_timeout;
        let pg_timeout = self.settings.postgres_timeout;
        let result: Result<(), String> = match action {
            Action::PublishMember(member) => bounded(
                "publish_member",
                retry,
                self.dcs.publish_member(member, ttl),
            )
            .await
            .map_err(|e| e.to_string()),
            Action::AcquireLock => {
                let sent_at = self.clock.now();
                match bounded("acquire_leader", retry, self.dcs.acquire_leader(&me, ttl)).await {
                    Ok(true) => {
                        info!(cluster = %self.dcs.layout().scope(), member = %me, "took the leader lock");
                        self.note_lock_lifetime();
                        self.arm_fence_or_give_up(sent_at).await
                    }
                    Ok(false) => Err("another member holds the lock".to_owned()),
                    Err(e) => Err(e.to_string()),
                }
            }
            Action::RenewLock => {
                let sent_at = self.clock.now();
                match bounded("renew_leader", retry, self.dcs.renew_leader(&me, ttl)).await {
                    Ok(()) => {
                        self.note_lock_lifetime();
                        if self.arm_fence_or_give_up(sent_at).await.is_err() {
                            // Logged there; the lock is released.
                            return Outcome::Failed;
                        }
                        if let Some(optime) = local
                            .wal_position
                            .filter(|_| local.role == LocalRole::Primary)
                        {
                            let value = LeaderStatus {
                                optime,
                                ..LeaderStatus::default()
                            };
                            // Written only when it changed (as Patroni does):
                            // an idle primary's loop makes no DCS write.
                            let stored = self
                                .last_view
                                .as_ref()
                                .and_then(|view| view.status.as_ref())
                                .and_then(|status| status.as_ref().ok())
                                .is_some_and(|status| status.value == value);
                            if !stored {
                                let status = Record::Status(value);
                                let written = bounded(
                                    "write status",
                                    retry,
                                    self.dcs.write(&status, Expected::Any),
                                )
                                .await;
                                if let Err(error) = written {
                                    debug!(member = %me, %error, "could not write status");
                                }
                            }
                        }
                        Ok(())
                    }
                    Err(DcsError::LockNotHeld { holder, .. }) => {
                        warn!(cluster = %self.dcs.layout().scope(), member = %me, ?holder, "lost the leader lock");
                        self.memory.lock_lost();
                        Err("lock lost".to_owned())
                    }
                    Err(e) => Err(e.to_string()),
                }
            }
            Action::ReleaseLock => {
                let result = bounded("release_leader", retry, self.dcs.release_leader(&me)).await;
                self.disarm_fence().await;
                match result {
                    Ok(()) | Err(DcsError::LockNotHeld { .. }) => Ok(()),
                    Err(e) => Err(e.to_string()),
                }
            }
            Action::Promote => {
                let result = pg_bounded(pg_timeout, self.postgres.promote()).await;
                if let Ok(timeline) = &result {
                    info!(cluster = %self.dcs.layout().scope(), member = %me, %timeline, "promoted");
                    // Published at once: health checks must not wait for the
                    // rest of the loop (history, routes).
                    let new_timeline = *timeline;
                    self.status.send_modify(|status| {
                        status.role = EngineRole::Leader;
                        status.writable = true;
                        status.timeline = Some(new_timeline);
                    });
                    let reason = self.failover_report(local.wal_position);
                    self.record_history(*timeline, local.wal_position, reason)
                        .await;
                }
                result.map(|_| ())
            }
            Action::StartPrimary => {
                pg_bounded(pg_timeout, self.postgres.start(StartAs::Primary)).await
            }
            Action::StartReplica { upstream } => {
                let start_as = match upstream {
                    Some(name) => match self.upstream(name) {
                        Some(upstream) => StartAs::ReplicaOf(upstream),
                        None => return Outcome::Failed,
                    },
                    None => StartAs::Standby,
                };
                pg_bounded(pg_timeout, self.postgres.start(start_as)).await
            }
            Action::Follow(name) => match self.upstream(name) {
                Some(upstream) => pg_bounded(pg_timeout, self.postgres.follow(&upstream)).await,
                None => Err(format!("no connection address for {name}")),
            },
            Action::Demote(mode) => {
                // Not writable from now on, whatever the decision's role.
                self.status.send_modify(|status| status.writable = false);
                let stop = match mode {
                    DemoteMode::Graceful | DemoteMode::Switchover => StopMode::Fast,
                    DemoteMode::Immediate => StopMode::Immediate,
                };
                // Bounded by retry_timeout: the timing rule counts on it.
                let result = pg_bounded(retry, self.postgres.demote(stop, None)).await;
                if result.is_ok() {
                    warn!(cluster = %self.dcs.layout().scope(), member = %me, ?mode, "demoted");
                    self.disarm_fence().await;
                }
                result
            }
            Action::Route(routes) => self.route(routes).await,
            Action::Withdraw => match self.endpoint(&me) {
                Some(endpoint) => self
                    .router
                    .withdraw(&endpoint)
                    .await
                    .map_err(|e| e.to_string()),
                None => Err("no endpoint for this node".to_owned()),
            },
            Action::SetSyncStandbys {
                standbys,
                count,
                any_standby,
                ..
            } => {
                let mut names: Vec<String> =
                    standbys.iter().map(|n| n.as_str().to_owned()).collect();
                if *any_standby {
                    // Patroni's `*`: strict mode waits for any standby.
                    names.push("*".to_owned());
                }
                let setting = if names.is_empty() {
                    Ok(SyncStandbyNames::Off)
                } else if self.config.synchronous_mode == SynchronousMode::Quorum {
                    SyncStandbyNames::any(*count, names)
                } else {
                    SyncStandbyNames::first(*count, names)
                };
                match setting {
                    Ok(setting) => {
                        pg_bounded(retry, self.postgres.set_synchronous_standby_names(&setting))
                            .await
                    }
                    Err(e) => Err(e.to_string()),
                }
            }
            Action::WriteSyncState {
                standbys,
                count,
                expected,
            } => {
                let record = Record::Sync(SyncState {
                    leader: Some(me.clone()),
                    sync_standbys: standbys.clone(),
                    quorum: Some(*count),
                });
                let expected = expected.map_or(Expected::Absent, Expected::Version);
                bounded("write sync", retry, self.dcs.write(&record, expected))
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
            Action::ClearFailoverRequest(version) => bounded(
                "clear failover",
                retry,
                self.dcs
                    .delete(&DcsKey::Failover, Expected::Version(*version)),
            )
            .await
            .map_err(|e| e.to_string()),
            Action::WriteFailsafe(members) => {
                // Rounds include the members being written even if the write
                // times out and applies later: asking one more is only stricter.
                for (name, url) in &members.0 {
                    self.failsafe_set.insert(name.clone(), url.clone());
                }
                bounded(
                    "write failsafe",
                    retry,
                    self.dcs
                        .write(&Record::Failsafe(members.clone()), Expected::Any),
                )
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
            }
            Action::FailsafeExtend { round_sent_at } => {
                self.arm_fence(*round_sent_at).await;
                Ok(())
            }
            Action::SwitchoverAbandoned(reason) => {
                warn!(cluster = %self.dcs.layout().scope(), member = %me, %reason, "switchover abandoned");
                self.last_switchover_failure = Some(reason.clone());
                Ok(())
            }
            Action::WithdrawFormerLeader(former) => {
                self.failing_over_from = Some(former.clone());
                self.withdraw_former_leader(former).await;
                Ok(())
            }
            Action::Bootstrap | Action::CloneFrom(_) | Action::Rewind(_) => {
                Err("long actions run in the background".to_owned())
            }
        };
        match result {
            Ok(()) => Outcome::Done,
            Err(error) => {
                warn!(cluster = %self.dcs.layout().scope(), member = %me, ?action, %error, "action failed");
                Outcome::Failed
            }
        }
    }

    /// Takes the former leader out of the writer routes, bounded by
    /// `retry_timeout`; a failure is logged and the failover goes on.
    async fn withdraw_former_leader(&self, former: &MemberName) {
        let conn_url = self
            .last_view
            .as_ref()
            .and_then(|view| view.members.get(former.as_str()))
            .and_then(|entry| entry.as_ref().ok())
            .map(|m| m.value.conn_url.clone())
            .or_else(|| {
                self.memory
                    .last_leader
                    .as_ref()
                    .filter(|l| &l.name == former)
                    .and_then(|l| l.conn_url.clone())
            });
        let Some((host, port)) = conn_url.as_deref().and_then(host_port) else {
            warn!(cluster = %self.dcs.layout().scope(), member = %self.name(), former = %former, "no address for the former leader: cannot withdraw it from the routers");
            return;
        };
        let endpoint = Endpoint {
            member: former.clone(),
            host,
            port,
        };
        match tokio::time::timeout(self.config.retry_timeout, self.router.withdraw(&endpoint)).await
        {
            Ok(Ok(())) => {
                info!(cluster = %self.dcs.layout().scope(), member = %self.name(), former = %former, "withdrew the former leader from the routers")
            }
            Ok(Err(error)) => {
                warn!(cluster = %self.dcs.layout().scope(), member = %self.name(), former = %former, %error, "could not withdraw the former leader: promoting anyway")
            }
            Err(_) => {
                warn!(cluster = %self.dcs.layout().scope(), member = %self.name(), former = %former, "withdrawing the former leader timed out: promoting anyway")
            }
        }
    }

    /// In a failover, how much WAL the former leader was last known to hold
    /// beyond the promoted position: logged, kept for the status, and
    /// returned as the history entry's reason.
    fn failover_report(&mut self, promoted_at: Option<Lsn>) -> Option<String> {
        let former = self.failing_over_from.take()?;
        let known = self
            .memory
            .last_leader
            .as_ref()
            .filter(|l| l.name == former)
            .and_then(|l| l.optime);
        let (Some(known), Some(promoted_at)) = (known, promoted_at) else {
            warn!(cluster = %self.dcs.layout().scope(), member = %self.name(), former = %former, "failover: the former leader's last position or our own is unknown: possible loss not reported");
            return None;
        };
        let loss = known.bytes_ahead_of(promoted_at);
        warn!(
            cluster = %self.dcs.layout().scope(),
            member = %self.name(),
            former = %former,
            former_last_known = %known,
            promoted_at = %promoted_at,
            possible_loss_bytes = loss,
            synchronous = self.config.synchronous_mode != SynchronousMode::Off,
            "failover: the former leader may have held WAL this promotion does not have"
        );
        self.last_failover_loss = Some(loss);
        Some(HistoryEntry::failover_reason(&former, loss))
    }

    async fn route(&self, routes: &Routes) -> Result<(), String> {
        let primary = self
            .endpoint(&routes.primary)
            .ok_or_else(|| format!("no endpoint for {}", routes.primary))?;
        let replicas = routes
            .replicas
            .iter()
            .filter_map(|name| self.endpoint(name))
            .collect();
        self.router
            .route(&matriarch_router::Routes { primary, replicas })
            .await
            .map_err(|e| e.to_string())
    }

    /// Makes the `history` key list every timeline before `timeline`: the one
    /// this node just ended with its promotion at `switch_lsn`, and any that a
    /// leader before it failed to record. A switch point that is not known is
    /// taken as the previous one: lower than the truth, so a replica may rewind
    /// needlessly (pg_rewind then finds nothing to do) but never follows a
    /// history it diverged from.
    ///
    /// `reason` replaces the default reason of the entry for the timeline
    /// just ended (a failover's report, [`HistoryEntry::failover_reason`]).
    async fn record_history(
        &self,
        timeline: Timeline,
        switch_lsn: Option<Lsn>,
        reason: Option<String>,
    ) {
        let retry = self.config.retry_timeout;
        for _ in 0..3 {
            let view = match bounded("read history", retry, self.dcs.read_view()).await {
                Ok(view) => view,
                Err(error) => {
                    warn!(member = %self.name(), %error, "could not read the timeline history");
                    return;
                }
            };
            let (mut history, expected) = match &view.history {
                Some(Ok(history)) => (history.value.clone(), Expected::Version(history.version)),
                Some(Err(error)) => {
                    warn!(member = %self.name(), %error, "the timeline history is unreadable: not rewriting it");
                    return;
                }
                None => (TimelineHistory::default(), Expected::Absent),
            };
            let ended = timeline.0.saturating_sub(1);
            let mut changed = false;
            for missing in 1..=ended {
                if history.0.iter().any(|entry| entry.timeline.0 == missing) {
                    continue;
                }
                let previous = history
                    .0
                    .iter()
                    .filter(|entry| entry.timeline.0 < missing)
                    .map(|entry| entry.switch_lsn)
                    .max()
                    .unwrap_or_default();
                let known = (missing == ended).then_some(switch_lsn).flatten();
                history.0.push(HistoryEntry {
                    timeline: Timeline(missing),
                    switch_lsn: known.unwrap_or(previous),
                    reason: if let (Some(reason), true) = (&reason, missing == ended) {
                        reason.clone()
                    } else if known.is_some() {
                        "promoted by matriarch".to_owned()
                    } else {
                        "switch point unknown; recorded by a later leader".to_owned()
                    },
                    timestamp: Some(Utc::now().fixed_offset()),
                    new_leader: (missing == ended).then(|| self.name().clone()),
                });
                changed = true;
            }
            if !changed {
                return;
            }
            history.0.sort_by_key(|entry| entry.timeline);
            match bounded(
                "write history",
                retry,
                self.dcs.write(&Record::History(history), expected),
            )
            .await
            {
                Ok(_) => return,
                Err(DcsError::Conflict { .. }) => continue,
                Err(error) => {
                    warn!(member = %self.name(), %error, "could not record the timeline switch");
                    return;
                }
            }
        }
    }

    /// A leader checks each loop that the history names every timeline
    /// before its own.
    fn history_incomplete(&self, timeline: Option<Timeline>) -> bool {
        let (Some(timeline), Some(view)) = (timeline, &self.last_view) else {
            return false;
        };
        let recorded: BTreeSet<u32> = match &view.history {
            Some(Ok(history)) => history.value.0.iter().map(|e| e.timeline.0).collect(),
            Some(Err(_)) => return false,
            None => BTreeSet::new(),
        };
        (1..timeline.0).any(|t| !recorded.contains(&t))
    }

    /// Allows writes until the demotion deadline of a lock renewed by a
    /// request sent at `renewed_at` (the memory records the same time after
    /// the action; the fence must not wait for that).
    async fn arm_fence(&self, renewed_at: Duration) {
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
    async fn arm_fence_or_give_up(&self, renewed_at: Duration) -> Result<(), String> {
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
        Err(format!("could not arm the write fence: {error}"))
    }

    /// Remembers how long the DCS keeps the lock just acquired or renewed.
    fn note_lock_lifetime(&mut self) {
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
    fn lock_ttl(&self) -> Duration {
        self.memory.lock_ttl(self.config.ttl)
    }

    async fn disarm_fence(&self) {
        if let Some(fence) = &self.fence {
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

/// Races for `initialize`, runs the bootstrap, records the system id, writes
/// the configuration and takes the lock. A failed bootstrap gives the race up.
async fn bootstrap<D: Dcs + ?Sized, P: Postgres + ?Sized>(
    dcs: &D,
    postgres: &P,
    me: &MemberName,
    config: &ClusterConfig,
    spec: &BootstrapSpec,
    timeout: Duration,
    clock: &dyn Clock,
) -> (Outcome, Duration) {
    let retry = config.retry_timeout;
    let started = clock.now();
    match bounded("try_initialize", retry, dcs.try_initialize()).await {
        Ok(true) => {}
        Ok(false) => return (Outcome::Failed, started),
        Err(error) => {
            warn!(member = %me, %error, "initialize race failed");
            return (Outcome::Failed, started);
        }
    }
    info!(member = %me, "won the initialize race: bootstrapping");
    let system_id = match pg_bounded(timeout, postgres.bootstrap(spec)).await {
        Ok(id) => id,
        Err(error) => {
            warn!(member = %me, %error, "bootstrap failed: giving the race up");
            let _ = bounded("cancel_initialize", retry, dcs.cancel_initialize()).await;
            return (Outcome::Failed, started);
        }
    };
    if let Err(error) = bounded(
        "complete_initialize",
        retry,
        dcs.complete_initialize(system_id),
    )
    .await
    {
        warn!(member = %me, %error, "could not record the system id");
        return (Outcome::Failed, started);
    }
    let _ = bounded(
        "write config",
        retry,
        dcs.write(&Record::Config(config.clone()), Expected::Absent),
    )
    .await;
    let sent_at = clock.now();
    match bounded("acquire_leader", retry, dcs.acquire_leader(me, config.ttl)).await {
        Ok(true) => (Outcome::Done, sent_at),
        _ => (Outcome::Failed, started),
    }
}

/// The longest excerpt of a DCS value (or an error quoting it) that goes
/// into a log line.
const EXCERPT_BYTES: usize = 200;

/// The first [`EXCERPT_BYTES`] of `text` (cut at a character boundary),
/// with the full length when cut.
fn excerpt(text: &str) -> String {
    if text.len() <= EXCERPT_BYTES {
        return text.to_owned();
    }
    let mut end = EXCERPT_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes in all)", &text[..end], text.len())
}

/// A hash of `text`, to tell a changed error from a repeated one without
/// keeping a copy of a huge value.
fn text_hash(text: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut hasher);
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::host_port;

    #[test]
    fn connection_urls_give_host_and_port() {
        assert_eq!(
            host_port("postgres://10.0.0.5:5433/postgres"),
            Some(("10.0.0.5".into(), 5433))
        );
        assert_eq!(
            host_port("postgresql://u:p@db.example:6000/x?sslmode=require"),
            Some(("db.example".into(), 6000))
        );
        assert_eq!(
            host_port("postgres://127.0.0.1/postgres"),
            Some(("127.0.0.1".into(), 5432))
        );
        assert_eq!(
            host_port("postgres://[::1]:5432/postgres"),
            Some(("::1".into(), 5432))
        );
        assert_eq!(host_port("not a url"), None);
        assert_eq!(host_port("postgres://:5432/"), None);
        assert_eq!(host_port("postgres://h:notaport/"), None);
    }
}
