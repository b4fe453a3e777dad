//! The engine loop on `MemoryDcs` with a stand-in PostgreSQL: failover plans
//! carried out in order, failover loss reports, node settings changed while
//! running, failsafe rounds that keep the write fence armed.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use matriarch_dcs::{Clock, Dcs, Expected, ManualClock, MemoryDcs};
use matriarch_ha::*;
use matriarch_model::*;
use matriarch_postgres::{
    BootstrapSpec, Credentials, DataDirectoryState, LocalState, PgRole, Postgres, PostgresError,
    RewindOutcome, ServerState, StartAs, StopMode, SyncStandbyNames, Upstream, WalPositions,
};
use matriarch_router::{Endpoint, RecordingRouter, Router, RouterCall, RouterError, Routes};

const SYSID: SystemId = SystemId(7_000_000_000_000_000_001);

fn name(n: &str) -> MemberName {
    MemberName::new(n).unwrap()
}

type Events = Arc<Mutex<Vec<String>>>;

#[derive(Debug)]
struct PgState {
    running: bool,
    primary: bool,
    timeline: u32,
    position: u64,
    upstream: Option<MemberName>,
}

/// A PostgreSQL that does what it is told and logs promotions and demotions.
#[derive(Clone)]
struct FakePg {
    state: Arc<Mutex<PgState>>,
    events: Events,
}

impl FakePg {
    fn replica_of(upstream: &str, position: u64, events: &Events) -> Self {
        FakePg {
            state: Arc::new(Mutex::new(PgState {
                running: true,
                primary: false,
                timeline: 1,
                position,
                upstream: Some(name(upstream)),
            })),
            events: Arc::clone(events),
        }
    }

    fn primary(position: u64, events: &Events) -> Self {
        let pg = FakePg::replica_of("x", position, events);
        {
            let mut state = pg.state.lock().unwrap();
            state.primary = true;
            state.upstream = None;
        }
        pg
    }

    fn is_writable_primary(&self) -> bool {
        let state = self.state.lock().unwrap();
        state.running && state.primary
    }
}

#[async_trait]
impl Postgres for FakePg {
    async fn observe(&self) -> Result<LocalState, PostgresError> {
        let state = self.state.lock().unwrap();
        let position = Some(Lsn(state.position));
        let mut local = LocalState {
            timeline: Some(Timeline(state.timeline)),
            system_id: Some(SYSID),
            ..LocalState::empty()
        };
        if !state.running {
            local.server = ServerState::NotRunning(DataDirectoryState::CleanShutdown);
            return Ok(local);
        }
        if state.primary {
            local.server = ServerState::Running(PgRole::Primary);
            local.wal = WalPositions {
                write: position,
                flush: position,
                ..WalPositions::default()
            };
        } else {
            local.server = ServerState::Running(PgRole::Replica);
            local.wal.received = position;
            local.wal.replayed = position;
            local.receiving = true;
            local.upstream = state.upstream.clone().map(|member| Upstream {
                host: member.to_string(),
                member,
                port: 5432,
            });
        }
        Ok(local)
    }
    async fn bootstrap(&self, _spec: &BootstrapSpec) -> Result<SystemId, PostgresError> {
        Ok(SYSID)
    }
    async fn clone_replica(&self, _source: &Upstream) -> Result<(), PostgresError> {
        Ok(())
    }
    async fn start(&self, _as_role: StartAs) -> Result<(), PostgresError> {
        self.state.lock().unwrap().running = true;
        Ok(())
    }
    async fn stop(&self, _mode: StopMode) -> Result<(), PostgresError> {
        self.state.lock().unwrap().running = false;
        Ok(())
    }
    async fn promote(&self) -> Result<Timeline, PostgresError> {
        self.events.lock().unwrap().push("promote".to_owned());
        let mut state = self.state.lock().unwrap();
        state.primary = true;
        state.upstream = None;
        state.timeline += 1;
        Ok(Timeline(state.timeline))
    }
    async fn demote(
        &self,
        _mode: StopMode,
        _follow: Option<Upstream>,
    ) -> Result<(), PostgresError> {
        self.events.lock().unwrap().push("demote".to_owned());
        let mut state = self.state.lock().unwrap();
        state.primary = false;
        state.running = false;
        Ok(())
    }
    async fn follow(&self, upstream: &Upstream) -> Result<(), PostgresError> {
        self.state.lock().unwrap().upstream = Some(upstream.member.clone());
        Ok(())
    }
    async fn rewind(&self, _source: &Upstream) -> Result<RewindOutcome, PostgresError> {
        Ok(RewindOutcome::NotNeeded)
    }
    async fn set_synchronous_standby_names(
        &self,
        _names: &SyncStandbyNames,
    ) -> Result<(), PostgresError> {
        Ok(())
    }
}

/// A [`RecordingRouter`] that also logs into the shared event list, so the
/// order between router calls and PostgreSQL calls shows.
#[derive(Clone)]
struct LoggedRouter {
    inner: RecordingRouter,
    events: Events,
}

#[async_trait]
impl Router for LoggedRouter {
    fn name(&self) -> &str {
        self.inner.name()
    }
    async fn route(&self, routes: &Routes) -> Result<(), RouterError> {
        self.events
            .lock()
            .unwrap()
            .push(format!("route {}", routes.primary.member));
        self.inner.route(routes).await
    }
    async fn withdraw(&self, member: &Endpoint) -> Result<(), RouterError> {
        self.events
            .lock()
            .unwrap()
            .push(format!("withdraw {}", member.member));
        self.inner.withdraw(member).await
    }
}

fn settings(me: &str, config: ClusterConfig) -> EngineSettings {
    EngineSettings {
        node: NodeSettings {
            name: name(me),
            tags: Tags::default(),
            conn_url: format!("postgres://{me}:5432/postgres"),
            api_url: format!("http://{me}:8008/patroni"),
        },
        bootstrap_config: config,
        bootstrap: BootstrapSpec {
            superuser: Credentials::without_password("postgres"),
            replication: Credentials::without_password("replicator"),
            rewind: None,
            parameters: Default::default(),
            pg_hba: Vec::new(),
        },
        postgres_timeout: Duration::from_secs(10),
    }
}

fn store(clock: &Arc<ManualClock>) -> MemoryDcs {
    let store = MemoryDcs::with_clock(
        KeyLayout::new("service", "test").unwrap(),
        Arc::clone(clock) as Arc<dyn Clock>,
    );
    store.put_raw("initialize", &encode_initialize(&Initialize::Done(SYSID)));
    store
}

/// Another member `n` leads with its record at `position` and `status` at `optime`.
async fn other_leader(store: &MemoryDcs, n: &str, position: u64, optime: u64) -> MemoryDcs {
    let client = store.connect();
    let ttl = ClusterConfig::default().ttl;
    assert!(client.acquire_leader(&name(n), ttl).await.unwrap());
    let mut member = Member::new(
        name(n),
        format!("postgres://{n}:5432/postgres"),
        format!("http://{n}:8008/patroni"),
    );
    member.role = Role::Primary;
    member.state = MemberState::Running;
    member.xlog_location = Some(Lsn(position));
    member.timeline = Some(Timeline(1));
    client.publish_member(&member, ttl).await.unwrap();
    client
        .write(
            &Record::Status(LeaderStatus {
                optime: Lsn(optime),
                ..LeaderStatus::default()
            }),
            Expected::Any,
        )
        .await
        .unwrap();
    client
}

struct Failover {
    engine: Engine<MemoryDcs, FakePg, LoggedRouter>,
    router: RecordingRouter,
    events: Events,
    store: MemoryDcs,
    clock: Arc<ManualClock>,
}

/// Replica `b` at position 500 follows leader `a` (record at 550, status at
/// 600) for one loop; then `a`'s lock and record expire.
async fn failover_setup() -> Failover {
    let clock = Arc::new(ManualClock::new());
    let store = store(&clock);
    let events: Events = Arc::default();
    let router = RecordingRouter::new("recording");
    let engine = Engine::new(
        store.connect(),
        FakePg::replica_of("a", 500, &events),
        LoggedRouter {
            inner: router.clone(),
            events: Arc::clone(&events),
        },
        settings("b", ClusterConfig::default()),
        Arc::clone(&clock) as Arc<dyn Clock>,
    );
    other_leader(&store, "a", 550, 600).await;
    Failover {
        engine,
        router,
        events,
        store,
        clock,
    }
}

impl Failover {
    async fn leader_dies(&mut self) {
        let decision = self.engine.run_once().await;
        assert_eq!(decision.role, EngineRole::Replica, "{decision:?}");
        self.clock
            .advance(ClusterConfig::default().ttl + Duration::from_secs(1));
    }
}

#[tokio::test]
async fn failover_withdraws_the_old_primary_from_the_router_before_promoting() {
    let mut f = failover_setup().await;
    f.leader_dies().await;
    let decision = f.engine.run_once().await;
    assert!(
        decision
            .actions
            .contains(&Action::WithdrawFormerLeader(name("a"))),
        "{decision:?}"
    );
    assert_eq!(
        *f.events.lock().unwrap(),
        ["withdraw a", "promote", "route b"]
    );
    let calls = f.router.calls();
    assert!(matches!(&calls[0], RouterCall::Withdraw(e)
        if e.member == name("a") && e.host == "a" && e.port == 5432));
    assert!(matches!(&calls[1], RouterCall::Route(r) if r.primary.member == name("b")));
}

#[tokio::test]
async fn router_failure_while_withdrawing_the_old_primary_does_not_stop_the_promotion() {
    let mut f = failover_setup().await;
    f.leader_dies().await;
    f.router.fail_next(
        1,
        RouterError::Unreachable {
            router: "recording".to_owned(),
            message: "down".to_owned(),
        },
    );
    f.engine.run_once().await;
    assert_eq!(
        *f.events.lock().unwrap(),
        ["withdraw a", "promote", "route b"]
    );
    assert!(f.engine.memory().ran_as_primary);
}

#[tokio::test]
async fn failover_reports_the_possible_loss_in_history_and_status() {
    let mut f = failover_setup().await;
    f.leader_dies().await;
    let status = f.engine.status();
    f.engine.run_once().await;
    // The status key (600) was newer than a's record (550); b promoted at 500.
    assert_eq!(status.get().last_failover_possible_loss_bytes, Some(100));
    let view = f.store.read_view().await.unwrap();
    let history = view.history.unwrap().unwrap().value;
    assert_eq!(history.0.len(), 1);
    assert_eq!(history.0[0].timeline, Timeline(1));
    assert_eq!(history.0[0].switch_lsn, Lsn(500));
    assert_eq!(history.0[0].possible_loss_bytes(), Some(100));
    assert_eq!(history.0[0].failover_from(), Some(name("a")));
    assert_eq!(history.0[0].new_leader, Some(name("b")));
}

#[tokio::test]
async fn replica_ahead_of_the_last_known_leader_position_reports_no_loss() {
    let clock = Arc::new(ManualClock::new());
    let store = store(&clock);
    let events: Events = Arc::default();
    let mut engine = Engine::new(
        store.connect(),
        FakePg::replica_of("a", 700, &events),
        RecordingRouter::new("recording"),
        settings("b", ClusterConfig::default()),
        Arc::clone(&clock) as Arc<dyn Clock>,
    );
    other_leader(&store, "a", 650, 600).await;
    engine.run_once().await;
    clock.advance(Duration::from_secs(6));
    engine.run_once().await;
    assert_eq!(
        engine.status().get().last_failover_possible_loss_bytes,
        Some(0)
    );
}

#[tokio::test]
async fn changed_nofailover_tag_takes_effect_on_the_next_loop_and_is_published() {
    let mut f = failover_setup().await;
    f.engine.run_once().await;
    let record = |view: &ClusterView| view.members["b"].as_ref().unwrap().value.tags.clone();
    assert!(!record(&f.store.read_view().await.unwrap()).nofailover);

    let handle = f.engine.settings_handle();
    let mut node = handle.node();
    node.tags.nofailover = true;
    handle.set_node(node);
    f.engine.run_once().await;
    assert!(record(&f.store.read_view().await.unwrap()).nofailover);

    // The leader dies: the tag keeps this node out of the race.
    f.clock.advance(Duration::from_secs(6));
    let decision = f.engine.run_once().await;
    assert!(
        decision.reason.contains("nofailover"),
        "{}",
        decision.reason
    );
    assert!(!f.events.lock().unwrap().contains(&"promote".to_owned()));
}

#[tokio::test]
async fn settings_handle_cannot_rename_the_member() {
    let mut f = failover_setup().await;
    let handle = f.engine.settings_handle();
    let mut node = handle.node();
    node.name = name("zz");
    handle.set_node(node);
    f.engine.run_once().await;
    let view = f.store.read_view().await.unwrap();
    assert!(view.members.contains_key("b"));
    assert!(!view.members.contains_key("zz"));
}

/// Acknowledges for every member except those in `silent`; records the rounds.
#[derive(Default)]
struct Peers {
    silent: Mutex<BTreeSet<MemberName>>,
    rounds: Mutex<Vec<(Vec<MemberName>, FailsafeHeartbeat)>>,
}

#[async_trait]
impl FailsafeSender for Peers {
    async fn send(
        &self,
        members: &[(MemberName, String)],
        heartbeat: &FailsafeHeartbeat,
        _timeout: Duration,
    ) -> BTreeSet<MemberName> {
        self.rounds.lock().unwrap().push((
            members.iter().map(|(n, _)| n.clone()).collect(),
            heartbeat.clone(),
        ));
        let silent = self.silent.lock().unwrap();
        members
            .iter()
            .map(|(n, _)| n.clone())
            .filter(|n| !silent.contains(n))
            .collect()
    }
}

#[derive(Default)]
struct RecordingFence {
    armed: Mutex<Vec<Duration>>,
}

#[async_trait]
impl Fence for RecordingFence {
    async fn arm(&self, valid_for: Duration) -> Result<(), String> {
        self.armed.lock().unwrap().push(valid_for);
        Ok(())
    }
    async fn disarm(&self) -> Result<(), String> {
        Ok(())
    }
}

#[tokio::test]
async fn failsafe_rounds_keep_the_primary_and_its_fence_until_a_member_goes_silent() {
    let clock = Arc::new(ManualClock::new());
    let store = store(&clock);
    let events: Events = Arc::default();
    let config = ClusterConfig {
        failsafe_mode: true,
        ..ClusterConfig::default()
    };
    let connection = store.connect();
    let pg = FakePg::primary(800, &events);
    let peers = Arc::new(Peers::default());
    let fence = Arc::new(RecordingFence::default());
    let mut engine = Engine::new(
        connection.clone(),
        pg.clone(),
        RecordingRouter::new("recording"),
        settings("a", config.clone()),
        Arc::clone(&clock) as Arc<dyn Clock>,
    )
    .with_fence(Arc::clone(&fence) as Arc<dyn Fence>)
    .with_failsafe_sender(Arc::clone(&peers) as Arc<dyn FailsafeSender>);
    // Replica b's record, with its REST API.
    let mut b = Member::new(
        name("b"),
        "postgres://b:5432/postgres",
        "http://b:8008/patroni",
    );
    b.role = Role::Replica;
    b.state = MemberState::Running;
    store
        .connect()
        .publish_member(&b, Duration::from_secs(3600))
        .await
        .unwrap();

    // The primary holds the lock, renews it and writes the failsafe key.
    assert!(connection
        .acquire_leader(&name("a"), config.ttl)
        .await
        .unwrap());
    engine.run_once().await;
    let view = store.read_view().await.unwrap();
    let key = view.failsafe.unwrap().unwrap().value;
    assert_eq!(
        key.0.keys().cloned().collect::<Vec<_>>(),
        [name("a"), name("b")]
    );

    // The DCS goes away for this node; the renewal 1 s ago allowed writes for 3 s.
    connection.set_reachable(false);
    for _ in 0..4 {
        clock.advance(Duration::from_secs(2));
        let decision = engine.run_once().await;
        assert_eq!(decision.role, EngineRole::Leader, "{decision:?}");
        assert!(engine.status().get().failsafe_active);
        // Re-armed until ttl − retry_timeout after the round: 3 s.
        assert_eq!(
            fence.armed.lock().unwrap().last(),
            Some(&Duration::from_secs(3))
        );
        assert!(pg.is_writable_primary());
    }
    let rounds = peers.rounds.lock().unwrap().clone();
    assert_eq!(rounds.len(), 4);
    assert_eq!(rounds[0].0, [name("b")]);
    assert_eq!(rounds[0].1.name, name("a"));
    assert_eq!(rounds[0].1.xlog_location, Some(Lsn(800)));

    // b stops answering: the last acknowledged round (2 s ago) allows 1 s more.
    peers.silent.lock().unwrap().insert(name("b"));
    clock.advance(Duration::from_secs(2));
    let decision = engine.run_once().await;
    assert_eq!(decision.actions, [Action::RenewLock]);
    assert!(pg.is_writable_primary());
    clock.advance(Duration::from_secs(1));
    let decision = engine.run_once().await;
    assert_eq!(decision.role, EngineRole::Demoting, "{decision:?}");
    assert!(!pg.is_writable_primary());
}

#[tokio::test]
async fn failsafe_heartbeat_is_acknowledged_only_by_a_replica_of_its_sender() {
    let mut f = failover_setup().await;
    let handle = f.engine.failsafe_handle();
    let heartbeat = |n: &str| FailsafeHeartbeat {
        name: name(n),
        conn_url: String::new(),
        api_url: String::new(),
        timeline: None,
        xlog_location: None,
    };
    // Failsafe mode is off in this cluster.
    f.engine.run_once().await;
    assert_eq!(
        handle.receive(&heartbeat("a")),
        Err(FailsafeRefusal::Disabled)
    );

    let clock = Arc::new(ManualClock::new());
    let store = store(&clock);
    let events: Events = Arc::default();
    let config = ClusterConfig {
        failsafe_mode: true,
        ..ClusterConfig::default()
    };
    let mut engine = Engine::new(
        store.connect(),
        FakePg::replica_of("a", 500, &events),
        RecordingRouter::new("recording"),
        settings("b", config),
        Arc::clone(&clock) as Arc<dyn Clock>,
    );
    other_leader(&store, "a", 550, 600).await;
    engine.run_once().await;
    let handle = engine.failsafe_handle();
    assert_eq!(
        handle.receive(&heartbeat("c")),
        Err(FailsafeRefusal::NotAReplicaOf { sender: name("c") })
    );
    assert_eq!(handle.receive(&heartbeat("a")), Ok(()));
    assert_eq!(handle.last().map(|h| h.leader), Some(name("a")));

    // The lock expires less than ttl after the heartbeat: no race.
    clock.advance(Duration::from_secs(4));
    handle.receive(&heartbeat("a")).unwrap();
    clock.advance(Duration::from_secs(2));
    let decision = engine.run_once().await;
    assert!(
        decision.reason.contains("failsafe heartbeat from a"),
        "{}",
        decision.reason
    );
    assert!(events.lock().unwrap().is_empty());
    // Once it is older than ttl, the race goes on.
    clock.advance(Duration::from_secs(4));
    engine.run_once().await;
    assert_eq!(*events.lock().unwrap(), ["promote"]);
}

static LATE_HEARTBEAT: std::sync::OnceLock<FailsafeHandle> = std::sync::OnceLock::new();

/// `decide`, with a heartbeat from `a` acknowledged just after the inputs were read.
fn heartbeat_while_deciding(inputs: &Inputs<'_>) -> Decision {
    if let Some(handle) = LATE_HEARTBEAT.get() {
        let _ = handle.receive(&FailsafeHeartbeat {
            name: name("a"),
            conn_url: String::new(),
            api_url: String::new(),
            timeline: None,
            xlog_location: None,
        });
    }
    decide(inputs)
}

#[tokio::test]
async fn failsafe_heartbeat_acknowledged_while_deciding_stops_the_race() {
    let clock = Arc::new(ManualClock::new());
    let store = store(&clock);
    let events: Events = Arc::default();
    let config = ClusterConfig {
        failsafe_mode: true,
        ..ClusterConfig::default()
    };
    let mut engine = Engine::new(
        store.connect(),
        FakePg::replica_of("a", 500, &events),
        RecordingRouter::new("recording"),
        settings("b", config),
        Arc::clone(&clock) as Arc<dyn Clock>,
    )
    .with_decider(heartbeat_while_deciding);
    other_leader(&store, "a", 550, 600).await;
    // Past the restart guard (ttl after the agent started), following a.
    clock.advance(Duration::from_secs(1));
    engine.run_once().await;
    LATE_HEARTBEAT.set(engine.failsafe_handle()).unwrap();
    clock.advance(Duration::from_secs(5));
    let decision = engine.run_once().await;
    assert!(
        decision.actions.contains(&Action::AcquireLock),
        "{decision:?}"
    );
    assert!(events.lock().unwrap().is_empty(), "promoted");
    assert!(store.read_view().await.unwrap().leader.is_none());
}

/// A fence that cannot be armed (its process died, a required watchdog
/// failed).
struct BrokenFence;

#[async_trait]
impl Fence for BrokenFence {
    async fn arm(&self, _valid_for: Duration) -> Result<(), String> {
        Err("the watchdog device is gone".to_owned())
    }
    async fn disarm(&self) -> Result<(), String> {
        Ok(())
    }
}

#[tokio::test]
async fn a_lock_taken_without_an_armed_fence_is_given_back_and_nobody_is_promoted() {
    let mut f = failover_setup().await;
    f.engine = f.engine.with_fence(Arc::new(BrokenFence));
    f.leader_dies().await;
    let decision = f.engine.run_once().await;
    assert!(
        decision.actions.contains(&Action::AcquireLock),
        "{decision:?}"
    );
    assert!(
        !f.events.lock().unwrap().iter().any(|e| e == "promote"),
        "{:?}",
        f.events.lock().unwrap()
    );
    let view = f.store.connect().read_view().await.unwrap();
    assert!(
        view.leader.is_none(),
        "the lock was kept: {:?}",
        view.leader
    );
}
