//! The loop: observe, decide, act, through the `Dcs`, `Postgres` and `Router`
//! traits. It never names a backend.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use matriarch_dcs::{Clock, Dcs, DcsError, Expected};
use matriarch_model::{
    ClusterConfig, ClusterView, DcsKey, HistoryEntry, LeaderStatus, Lsn, Member, MemberName,
    Record, SyncState, SynchronousMode, Timeline, TimelineHistory,
};
use matriarch_postgres::{
    BootstrapSpec, DataDirectoryState, LocalState, PgRole, Postgres, PostgresError, RewindOutcome,
    ServerState, StartAs, StopMode, SyncStandbyNames, Upstream,
};
use matriarch_router::{Endpoint, Router};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::decide::{
    decide, Action, DcsObservation, Decision, DemoteMode, EngineRole, Inputs, LocalPostgres,
    LocalRole, Memory, NodeSettings, Outcome, PeerReport, Routes,
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
    last_view: Option<ClusterView>,
    long_task: Option<LongTask>,
    status: watch::Sender<EngineStatus>,
    loops: u64,
    decider: Decider,
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
        });
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
            last_view: None,
            long_task: None,
            status,
            loops: 0,
            decider: decide,
        }
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
            if let Some(deadline) = decision.demotion_deadline {
                // Wake up in time to act on the deadline.
                wait = wait.min(deadline.saturating_sub(self.clock.now()));
            }
            let waited = self.wait_for_relevant_change(wait);
            tokio::select! {
                biased;
                () = &mut shutdown => break,
                () = waited => {}
            }
        }
        self.step_down().await;
    }

    /// Waits up to `wait`, returning early when something that can change a
    /// decision changed (not merely a member's periodic refresh).
    async fn wait_for_relevant_change(&self, wait: Duration) {
        let deadline = tokio::time::Instant::now() + wait;
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
        let retry = self.config.retry_timeout;
        let (view, state) = tokio::join!(
            bounded("read_view", retry, self.dcs.read_view()),
            pg_bounded(retry, self.postgres.observe()),
        );
        let dcs = match view {
            Ok(view) => {
                self.adopt_config(&view);
                for error in view.errors() {
                    warn!(cluster = %self.dcs.layout().scope(), member = %self.name(), %error, "unreadable DCS value");
                }
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
        let peers = self.probe_peers(&dcs).await;
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
        });
        debug!(member = %self.name(), role = ?decision.role, reason = %decision.reason, actions = ?decision.actions, "decided");
        self.act(&decision, &local).await;
        if decision.role == EngineRole::Leader
            && local.role == LocalRole::Primary
            && self.history_incomplete(local.timeline)
        {
            if let Some(timeline) = local.timeline {
                self.record_history(timeline, None).await;
            }
        }
        self.loops += 1;
        let leader = match &dcs {
            DcsObservation::View(view) => view.leader_name().cloned(),
            DcsObservation::Unreachable => None,
        };
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
        });
        decision
    }

    fn adopt_config(&mut self, view: &ClusterView) {
        match &view.config {
            Some(Ok(config)) if config.value != self.config => {
                info!(cluster = %self.dcs.layout().scope(), member = %self.name(), "dynamic configuration changed");
                self.config = config.value.clone();
            }
            Some(Err(error)) => {
                warn!(cluster = %self.dcs.layout().scope(), member = %self.name(), %error, "keeping the last valid configuration");
            }
            _ => {}
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
        for action in &decision.actions {
            // A plan is only as good as the observation it came from: after a
            // pause (GC, SIGSTOP, a slow disk) the rest of it may be wrong.
            // (A slow promotion is no pause: only a gap as long as the lock's
            // own lifetime makes the rest of the plan suspect.)
            if self.clock.now().saturating_sub(decided_at) > self.config.ttl {
                warn!(member = %self.name(), ?action, "plan went stale: deciding again");
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
                        self.arm_fence(sent_at).await;
                        Ok(())
                    }
                    Ok(false) => Err("another member holds the lock".to_owned()),
                    Err(e) => Err(e.to_string()),
                }
            }
            Action::RenewLock => {
                let sent_at = self.clock.now();
                match bounded("renew_leader", retry, self.dcs.renew_leader(&me, ttl)).await {
                    Ok(()) => {
                        self.arm_fence(sent_at).await;
                        if let Some(optime) = local
                            .wal_position
                            .filter(|_| local.role == LocalRole::Primary)
                        {
                            let status = Record::Status(LeaderStatus {
                                optime,
                                ..LeaderStatus::default()
                            });
                            if let Err(error) = bounded(
                                "write status",
                                retry,
                                self.dcs.write(&status, Expected::Any),
                            )
                            .await
                            {
                                debug!(member = %me, %error, "could not write status");
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
                    self.record_history(*timeline, local.wal_position).await;
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
                let stop = match mode {
                    DemoteMode::Graceful => StopMode::Fast,
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
                standbys, count, ..
            } => {
                let names: Vec<String> = standbys.iter().map(|n| n.as_str().to_owned()).collect();
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
    async fn record_history(&self, timeline: Timeline, switch_lsn: Option<Lsn>) {
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
                    reason: if known.is_some() {
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
        let deadline = (renewed_at + self.config.ttl).saturating_sub(self.config.retry_timeout);
        let valid_for = deadline.saturating_sub(self.clock.now());
        if let Err(error) = fence.arm(valid_for).await {
            warn!(member = %self.name(), %error, "could not arm the write fence");
        }
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
