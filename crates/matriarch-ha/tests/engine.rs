//! The engine loop on `MemoryDcs` with a stand-in PostgreSQL: failover plans
//! carried out in order, failover loss reports, node settings changed while
//! running, failsafe rounds that keep the write fence armed.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use matriarch_dcs::{Clock, Dcs, Expected, ManualClock, MemoryDcs};
use matriarch_ha::sim::{member_settings, running_member};
use matriarch_ha::*;
use matriarch_model::*;
use matriarch_postgres::{Postgres, SyncStandbyNames};
use matriarch_router::{Endpoint, RecordingRouter, Router, RouterCall, RouterError, Routes};

mod support;
use support::fake_pg::{Events, FakePg, RecordingFence};
use support::scene::SYSID;
use support::timed::{run_beside, timed_leader_with};
use support::LogCapture;

fn name(n: &str) -> MemberName {
    MemberName::new(n).unwrap()
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
    member_settings(&name(me), config)
}

fn store(clock: &Arc<ManualClock>) -> MemoryDcs {
    let store = MemoryDcs::with_clock(
        KeyLayout::new("service", "test").unwrap(),
        Arc::clone(clock) as Arc<dyn Clock>,
    );
    store.put_raw("initialize", &encode_initialize(&Initialize::Done(SYSID)));
    store
}

/// A store on a manual clock and the log of what the fakes did: what the
/// engines of one test share.
struct Rig {
    clock: Arc<ManualClock>,
    store: MemoryDcs,
    events: Events,
}

impl Rig {
    fn new() -> Rig {
        let clock = Arc::new(ManualClock::new());
        Rig {
            store: store(&clock),
            clock,
            events: Arc::default(),
        }
    }

    fn clock(&self) -> Arc<dyn Clock> {
        Arc::clone(&self.clock) as Arc<dyn Clock>
    }

    /// Member `me`'s engine over `pg` on `connection`, with `config` as its
    /// bootstrap configuration and a recording router.
    fn engine<P: Postgres + 'static>(
        &self,
        connection: MemoryDcs,
        pg: P,
        me: &str,
        config: ClusterConfig,
    ) -> Engine<MemoryDcs, P, RecordingRouter> {
        Engine::new(
            connection,
            pg,
            RecordingRouter::new("recording"),
            settings(me, config),
            self.clock(),
        )
    }

    /// Leader `a`'s engine (not run yet) over a primary at position 800,
    /// with `a` holding the lock under `config`; also its PostgreSQL and its
    /// connection to the store.
    async fn leader_a(
        &self,
        config: &ClusterConfig,
    ) -> (
        Engine<MemoryDcs, FakePg, RecordingRouter>,
        FakePg,
        MemoryDcs,
    ) {
        let connection = self.store.connect();
        let pg = FakePg::primary(800, &self.events);
        let engine = self.engine(connection.clone(), pg.clone(), "a", config.clone());
        assert!(connection
            .acquire_leader(&name("a"), config.ttl)
            .await
            .unwrap());
        (engine, pg, connection)
    }

    /// Replica `b`'s engine over a replica of `a` at position 500, while
    /// `a` leads (its record at 550, its status at 600).
    async fn replica_b(&self, config: ClusterConfig) -> Engine<MemoryDcs, FakePg, RecordingRouter> {
        let pg = FakePg::replica_of("a", 500, &self.events);
        let engine = self.engine(self.store.connect(), pg, "b", config);
        other_leader(&self.store, "a", 550, 600).await;
        engine
    }
}

fn failsafe_config() -> ClusterConfig {
    ClusterConfig {
        failsafe_mode: true,
        ..ClusterConfig::default()
    }
}

/// Another member `n` leads with its record at `position` and `status` at `optime`.
async fn other_leader(store: &MemoryDcs, n: &str, position: u64, optime: u64) -> MemoryDcs {
    let client = store.connect();
    let ttl = ClusterConfig::default().ttl;
    assert!(client.acquire_leader(&name(n), ttl).await.unwrap());
    let member = running_member(&name(n), Role::Primary, position, 1);
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
    let Rig {
        clock,
        store,
        events,
    } = Rig::new();
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
    let rig = Rig::new();
    let pg = FakePg::replica_of("a", 700, &rig.events);
    let mut engine = rig.engine(rig.store.connect(), pg, "b", ClusterConfig::default());
    other_leader(&rig.store, "a", 650, 600).await;
    engine.run_once().await;
    rig.clock.advance(Duration::from_secs(6));
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

#[tokio::test]
async fn failsafe_rounds_keep_the_primary_and_its_fence_until_a_member_goes_silent() {
    let rig = Rig::new();
    let (clock, store) = (&rig.clock, &rig.store);
    let config = failsafe_config();
    let peers = Arc::new(Peers::default());
    let fence = Arc::new(RecordingFence::default());
    // The primary holds the lock, renews it and writes the failsafe key.
    let (engine, pg, connection) = rig.leader_a(&config).await;
    let mut engine = engine
        .with_fence(Arc::clone(&fence) as Arc<dyn Fence>)
        .with_failsafe_sender(Arc::clone(&peers) as Arc<dyn FailsafeSender>);
    // Replica b's record, with its REST API.
    publish_replica(store, "b", 800, 1).await;
    engine.run_once().await;
    let view = store.read_view().await.unwrap();
    let key = view.failsafe.unwrap().unwrap().value;
    assert_eq!(
        key.0.keys().cloned().collect::<Vec<_>>(),
        [name("a"), name("b")]
    );

    // The DCS goes away for this node; a renewal or an acknowledged round
    // allows writes for ttl minus the write-stop margin: 3.5 s.
    let window = config.ttl - config.write_stop_margin(config.ttl);
    connection.set_reachable(false);
    for _ in 0..4 {
        clock.advance(Duration::from_secs(2));
        let decision = engine.run_once().await;
        assert_eq!(decision.role, EngineRole::Leader, "{decision:?}");
        assert!(engine.status().get().failsafe_active);
        // Re-armed for that window after the round.
        assert_eq!(fence.armed.lock().unwrap().last(), Some(&window));
        assert!(pg.is_writable_primary());
    }
    let rounds = peers.rounds.lock().unwrap().clone();
    assert_eq!(rounds.len(), 4);
    assert_eq!(rounds[0].0, [name("b")]);
    assert_eq!(rounds[0].1.name, name("a"));
    assert_eq!(rounds[0].1.xlog_location, Some(Lsn(800)));

    // b stops answering: the last acknowledged round allows writes until
    // `window` after it.
    peers.silent.lock().unwrap().insert(name("b"));
    clock.advance(Duration::from_secs(2));
    let decision = engine.run_once().await;
    assert_eq!(decision.actions, [Action::RenewLock]);
    assert!(pg.is_writable_primary());
    clock.advance(window - Duration::from_secs(2));
    let decision = engine.run_once().await;
    assert_eq!(decision.role, EngineRole::Demoting, "{decision:?}");
    assert!(!pg.is_writable_primary());
}

#[tokio::test]
async fn failsafe_heartbeat_is_acknowledged_only_by_a_replica_of_its_sender() {
    let mut f = failover_setup().await;
    let handle = f.engine.failsafe_handle();
    // Failsafe mode is off in this cluster.
    f.engine.run_once().await;
    assert_eq!(
        handle.receive(&heartbeat("a")),
        Err(FailsafeRefusal::Disabled)
    );

    let rig = Rig::new();
    let (clock, events) = (&rig.clock, &rig.events);
    let mut engine = rig.replica_b(failsafe_config()).await;
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

/// A failsafe heartbeat from `n`.
fn heartbeat(n: &str) -> FailsafeHeartbeat {
    FailsafeHeartbeat {
        name: name(n),
        conn_url: String::new(),
        api_url: String::new(),
        timeline: None,
        xlog_location: None,
    }
}

/// `decide`, with a heartbeat from `a` acknowledged just after the inputs were read.
fn heartbeat_while_deciding(inputs: &Inputs<'_>) -> Decision {
    if let Some(handle) = LATE_HEARTBEAT.get() {
        let _ = handle.receive(&heartbeat("a"));
    }
    decide(inputs)
}

#[tokio::test]
async fn failsafe_heartbeat_acknowledged_while_deciding_stops_the_race() {
    let rig = Rig::new();
    let (clock, store, events) = (&rig.clock, &rig.store, &rig.events);
    let mut engine = rig
        .replica_b(failsafe_config())
        .await
        .with_decider(heartbeat_while_deciding);
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
    async fn arm(&self, _valid_for: Duration) -> Result<(), FenceError> {
        Err(FenceError::Watchdog {
            source: "the watchdog device is gone".into(),
        })
    }
    async fn disarm(&self) -> Result<(), FenceError> {
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

/// The store keeps a lock for less than the ttl in force (a ZooKeeper server
/// whose `maxSessionTimeout` is below the ttl): the primary must have stopped
/// taking writes, and its fence must have run out, before the lock expires and
/// another member can take it.
#[tokio::test]
async fn a_primary_whose_lock_lives_shorter_than_the_ttl_stops_writes_before_it_expires() {
    let rig = Rig::new();
    let (clock, store) = (&rig.clock, &rig.store);
    let lifetime = Duration::from_secs(6);
    store.set_max_ttl(Some(lifetime));
    let config = ClusterConfig {
        ttl: Duration::from_secs(30),
        loop_wait: Duration::from_secs(1),
        retry_timeout: Duration::from_secs(2),
        ..ClusterConfig::default()
    };
    let fence = Arc::new(RecordingFence::default());
    let (engine, pg, connection) = rig.leader_a(&config).await;
    let mut engine = engine.with_fence(Arc::clone(&fence) as Arc<dyn Fence>);
    // Renewed at 0 s: the lock lives until 6 s, whatever the ttl says.
    let decision = engine.run_once().await;
    assert_eq!(decision.role, EngineRole::Leader, "{decision:?}");
    assert!(pg.is_writable_primary());
    let first_arm = fence.armed.lock().unwrap().last().copied();
    // The watchdog's timeout follows the lock's real lifetime, not the ttl.
    assert_eq!(engine.status().get().lock_ttl, lifetime);

    // Cut off from the store. At 5.5 s the lock has 0.5 s left, less than
    // the write-stop margin (an eighth of its 6 s): writes must stop now.
    let margin = config.write_stop_margin(lifetime);
    assert_eq!(margin, Duration::from_millis(750));
    connection.set_reachable(false);
    clock.advance(Duration::from_millis(5500));
    let decision = engine.run_once().await;
    let writable_at_5_5 = pg.is_writable_primary();

    // At 6.5 s the lock is gone from the store: another member takes it.
    clock.advance(Duration::from_secs(1));
    let other = store.connect();
    assert!(
        other.acquire_leader(&name("b"), config.ttl).await.unwrap(),
        "the store kept the lock longer than its limit"
    );
    assert!(
        !writable_at_5_5,
        "the primary still took writes 5.5 s after its last renewal, with its lock \
         expiring at 6 s and another member free to take it then: {decision:?}"
    );
    assert_eq!(decision.role, EngineRole::Demoting, "{decision:?}");
    // The fence armed at the renewal ran out before the lock did.
    assert_eq!(
        first_arm,
        Some(lifetime - margin),
        "fence window after a renewal"
    );
}

/// A leader `a` and its replica `b` on one store and clock.
struct Pair {
    a: Engine<MemoryDcs, FakePg, RecordingRouter>,
    b: Engine<MemoryDcs, FakePg, RecordingRouter>,
    a_pg: FakePg,
    clock: Arc<ManualClock>,
}

impl Pair {
    /// Runs `n` loops a second apart, checking that `a` leads as a writable
    /// primary and `b` follows; returns the configurations they decide with.
    async fn loops(&mut self, n: usize) -> (ClusterConfig, ClusterConfig) {
        for _ in 0..n {
            let decision = self.a.run_once().await;
            assert_eq!(decision.role, EngineRole::Leader, "{decision:?}");
            let decision = self.b.run_once().await;
            assert_eq!(decision.role, EngineRole::Replica, "{decision:?}");
            assert!(self.a_pg.is_writable_primary());
            self.clock.advance(Duration::from_secs(1));
        }
        (self.a.config().clone(), self.b.config().clone())
    }
}

/// Leader `a` and replica `b` run with `config` (from the DCS) for a few
/// loops; then `bad` is written into the `config` key behind matriarch's
/// back. Both keep the last valid configuration for longer than its ttl,
/// `a` keeps leading, nobody is promoted, and each says so once.
async fn bad_config_written_behind_our_back_changes_nothing(bad: &str) {
    let logs = LogCapture::default();
    let _logging = logs.capture_this_thread();
    let rig = Rig::new();
    let (store, events) = (&rig.store, &rig.events);
    let config = ClusterConfig {
        ttl: Duration::from_secs(8),
        ..ClusterConfig::default()
    };
    store
        .connect()
        .write(&Record::Config(config.clone()), Expected::Absent)
        .await
        .unwrap();
    let a_dcs = store.connect();
    let a_pg = FakePg::primary(800, events);
    assert!(a_dcs.acquire_leader(&name("a"), config.ttl).await.unwrap());
    let b_pg = FakePg::replica_of("a", 800, events);
    let mut pair = Pair {
        a: rig.engine(a_dcs, a_pg.clone(), "a", ClusterConfig::default()),
        b: rig.engine(store.connect(), b_pg, "b", ClusterConfig::default()),
        a_pg,
        clock: Arc::clone(&rig.clock),
    };
    assert_eq!(pair.loops(3).await, (config.clone(), config.clone()));

    store.put_raw("config", bad.as_bytes());
    // Longer than the ttl in force: the leader renews with it all along.
    assert_eq!(pair.loops(12).await, (config.clone(), config.clone()));
    assert!(
        !events.lock().unwrap().iter().any(|e| e == "promote"),
        "{:?}",
        events.lock().unwrap()
    );
    assert_eq!(pair.a.status().get().config, config);
    let view = store.read_view().await.unwrap();
    assert_eq!(view.leader.unwrap().unwrap().value.holder, name("a"));
    for member in ["a", "b"] {
        let warnings = logs.config_warnings(member);
        assert_eq!(warnings.len(), 1, "{member}: {warnings:#?}");
    }

    // A valid configuration written afterwards is taken up again.
    let next = ClusterConfig {
        ttl: Duration::from_secs(9),
        ..config.clone()
    };
    store
        .connect()
        .write(&Record::Config(next.clone()), Expected::Any)
        .await
        .unwrap();
    assert_eq!(pair.loops(2).await, (next.clone(), next));
}

#[tokio::test]
async fn huge_retry_timeout_written_into_the_dcs_is_ignored() {
    bad_config_written_behind_our_back_changes_nothing(
        r#"{"ttl": 8, "loop_wait": 1, "retry_timeout": 1e19}"#,
    )
    .await;
}

#[tokio::test]
async fn huge_loop_wait_written_into_the_dcs_is_ignored() {
    bad_config_written_behind_our_back_changes_nothing(
        r#"{"ttl": 8, "loop_wait": 1e19, "retry_timeout": 2}"#,
    )
    .await;
}

#[tokio::test]
async fn ttl_no_dcs_can_hold_written_into_the_dcs_is_ignored() {
    bad_config_written_behind_our_back_changes_nothing(
        r#"{"ttl": 1e12, "loop_wait": 1, "retry_timeout": 2}"#,
    )
    .await;
}

/// Replica `b`'s record as the leader sees it: running, at `position` on `timeline`.
async fn publish_replica(store: &MemoryDcs, n: &str, position: u64, timeline: u32) {
    let member = running_member(&name(n), Role::Replica, position, timeline);
    store
        .connect()
        .publish_member(&member, Duration::from_secs(3600))
        .await
        .unwrap();
}

/// Writes the `failover` key (none there yet): a switchover from `a` to `candidate`.
async fn request_switchover(connection: &MemoryDcs, candidate: &str) {
    connection
        .write(
            &Record::Failover(FailoverRequest {
                leader: Some(name("a")),
                candidate: Some(name(candidate)),
                scheduled_at: None,
            }),
            Expected::Absent,
        )
        .await
        .unwrap();
}

/// Peers that answer their REST API with what their records say.
struct RecordProbe;

#[async_trait]
impl PeerProbe for RecordProbe {
    async fn probe(&self, members: &[Member]) -> BTreeMap<MemberName, PeerReport> {
        members
            .iter()
            .map(|m| {
                (
                    m.name.clone(),
                    PeerReport {
                        wal_position: m.wal_position(),
                        timeline: m.timeline,
                        running_primary: false,
                    },
                )
            })
            .collect()
    }
}

/// The reported loop: a switchover requested soon after a promotion, whose
/// candidate misreads its timeline while nobody leads (it reports the one
/// before the promotion) and so never races. The leader must end up leading
/// again on the same timeline, without a promotion, with the request gone
/// and the reason reported.
#[tokio::test]
async fn switchover_whose_candidate_never_races_ends_with_the_same_leader_and_timeline() {
    let rig = Rig::new();
    let (clock, store, events) = (&rig.clock, &rig.store, &rig.events);
    let config = ClusterConfig::default();
    let (engine, pg, connection) = rig.leader_a(&config).await;
    pg.state.lock().unwrap().timeline = 2;
    let fence = Arc::new(RecordingFence::default());
    let mut engine = engine
        .with_fence(Arc::clone(&fence) as Arc<dyn Fence>)
        .with_peer_probe(Arc::new(RecordProbe));
    // The earlier promotion ended timeline 1.
    connection
        .write(
            &Record::History(TimelineHistory(vec![HistoryEntry {
                timeline: Timeline(1),
                switch_lsn: Lsn(100),
                reason: "promoted by matriarch".to_owned(),
                timestamp: None,
                new_leader: Some(name("a")),
            }])),
            Expected::Any,
        )
        .await
        .unwrap();
    publish_replica(store, "b", 800, 2).await;
    engine.run_once().await;
    assert!(pg.is_writable_primary());
    request_switchover(&connection, "b").await;

    let mut stepped_down = false;
    for _ in 0..40 {
        let view = store.read_view().await.unwrap();
        let leading = view.leader.is_some();
        // b reports the right timeline while it follows a leader, the old
        // one while nobody leads.
        let timeline = if leading {
            pg.state.lock().unwrap().timeline
        } else {
            1
        };
        publish_replica(store, "b", 800, timeline).await;
        let decision = engine.run_once().await;
        stepped_down |= decision.role == EngineRole::Demoting;
        clock.advance(config.loop_wait);
    }
    assert!(stepped_down, "the leader never stepped down");
    let view = store.read_view().await.unwrap();
    let events = events.lock().unwrap().clone();
    assert!(
        !events.iter().any(|e| e == "promote"),
        "promoted again: {events:?}"
    );
    assert_eq!(pg.state.lock().unwrap().timeline, 2, "a new timeline");
    assert_eq!(view.leader_name(), Some(&name("a")));
    assert!(pg.is_writable_primary(), "a does not run as primary");
    assert!(view.failover.is_none(), "the failover key is still there");
    let failure = engine.status().get().last_switchover_failure;
    assert!(
        failure.as_deref().is_some_and(|f| f.contains('b')),
        "no reason reported: {failure:?}"
    );
}

/// Strict synchronous mode on a primary with no standby (just promoted or
/// bootstrapped): PostgreSQL is set to wait for any standby (`*`, as
/// Patroni does), so no commit is acknowledged by the primary alone, and the
/// setting stays while no standby appears.
#[tokio::test]
async fn strict_synchronous_primary_without_standbys_waits_for_any_standby() {
    let rig = Rig::new();
    let (clock, store) = (&rig.clock, &rig.store);
    let config = ClusterConfig {
        synchronous_mode: SynchronousMode::On,
        synchronous_mode_strict: true,
        ..ClusterConfig::default()
    };
    let (engine, pg, _connection) = rig.leader_a(&config).await;
    let mut engine = engine.with_fence(Arc::new(RecordingFence::default()) as Arc<dyn Fence>);
    for _ in 0..4 {
        engine.run_once().await;
        clock.advance(config.loop_wait);
    }
    let any = SyncStandbyNames::first(1, ["*"]).unwrap();
    assert_eq!(pg.state.lock().unwrap().sync, Some(any));
    let view = store.read_view().await.unwrap();
    match &view.sync {
        Some(Ok(sync)) => assert!(sync.value.sync_standbys.is_empty(), "{sync:?}"),
        other => panic!("no sync key: {other:?}"),
    }
}

/// A fence that can be broken while the engine runs.
#[derive(Default)]
struct BreakableFence {
    broken: std::sync::atomic::AtomicBool,
    armed: Mutex<Vec<Duration>>,
}

#[async_trait]
impl Fence for BreakableFence {
    async fn arm(&self, valid_for: Duration) -> Result<(), FenceError> {
        if self.broken.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(FenceError::Watchdog {
                source: "the watchdog device is gone".into(),
            });
        }
        self.armed.lock().unwrap().push(valid_for);
        Ok(())
    }
    async fn disarm(&self) -> Result<(), FenceError> {
        Ok(())
    }
}

/// Leader `a` with a running primary, one loop run.
async fn restart_setup() -> (
    Engine<MemoryDcs, FakePg, RecordingRouter>,
    FakePg,
    Arc<BreakableFence>,
    MemoryDcs,
) {
    let rig = Rig::new();
    let fence = Arc::new(BreakableFence::default());
    let (engine, pg, _connection) = rig.leader_a(&ClusterConfig::default()).await;
    let mut engine = engine.with_fence(Arc::clone(&fence) as Arc<dyn Fence>);
    let decision = engine.run_once().await;
    assert_eq!(decision.role, EngineRole::Leader, "{decision:?}");
    (engine, pg, fence, rig.store)
}

#[tokio::test]
async fn restart_of_the_leader_renews_the_lock_and_arms_the_fence_before_starting() {
    let (mut engine, pg, fence, _store) = restart_setup().await;
    let handle = engine.restart_handle();
    let armed_before = fence.armed.lock().unwrap().len();
    let (result, _) = tokio::join!(handle.restart(Duration::from_secs(5)), engine.run_once());
    assert!(
        matches!(&result, Ok(done) if done == "restarted as primary"),
        "{result:?}"
    );
    assert!(pg.is_writable_primary());
    // The loop's renewal, then one before stopping and one before starting.
    assert_eq!(fence.armed.lock().unwrap().len(), armed_before + 3);
}

#[tokio::test]
async fn restart_of_a_primary_that_cannot_arm_its_fence_is_refused_and_changes_nothing() {
    let (mut engine, pg, fence, _store) = restart_setup().await;
    let handle = engine.restart_handle();
    fence
        .broken
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let (result, _) = tokio::join!(handle.restart(Duration::from_secs(5)), engine.run_once());
    assert!(
        matches!(
            &result,
            Err(RestartError::Refused(RestartRefusal::LockNotRenewed))
        ),
        "{result:?}"
    );
    // Not stopped by the restart (the engine demotes it on its own next).
    assert!(pg.is_writable_primary());
}

#[tokio::test]
async fn restart_of_a_primary_whose_lock_another_member_holds_is_refused() {
    let (mut engine, pg, _fence, store) = restart_setup().await;
    let handle = engine.restart_handle();
    // In pause the engine leaves the primary alone: only the restart could touch it.
    store
        .connect()
        .write(
            &Record::Config(ClusterConfig {
                pause: true,
                ..ClusterConfig::default()
            }),
            Expected::Any,
        )
        .await
        .unwrap();
    store.put_raw("leader", b"b");
    let (result, decision) =
        tokio::join!(handle.restart(Duration::from_secs(5)), engine.run_once());
    assert_ne!(decision.role, EngineRole::Leader, "{decision:?}");
    assert!(
        matches!(
            &result,
            Err(RestartError::Refused(RestartRefusal::NotLeader { .. }))
        ),
        "{result:?}"
    );
    assert!(pg.is_writable_primary(), "touched by the refused restart");
}

/// The `status` key an observer reads.
async fn stored_status(store: &MemoryDcs) -> Versioned<LeaderStatus> {
    store
        .connect()
        .read_view()
        .await
        .unwrap()
        .status
        .expect("a status key")
        .expect("a readable status key")
}

/// An idle primary's loop writes no `status` (it was rewritten every loop:
/// with the member records, 4 etcd revisions a second for an idle 3-member
/// cluster); a new position is still written by the next loop.
#[tokio::test]
async fn an_idle_leader_rewrites_status_only_when_its_position_changes() {
    let (mut engine, pg, _fence, store) = restart_setup().await;
    // The first loop found no status; the second reads the one written.
    engine.run_once().await;
    let idle = stored_status(&store).await;
    assert_eq!(idle.value.optime, Lsn(800));
    for _ in 0..3 {
        let decision = engine.run_once().await;
        assert_eq!(decision.role, EngineRole::Leader, "{decision:?}");
    }
    assert_eq!(
        stored_status(&store).await.version,
        idle.version,
        "an idle loop rewrote the status key"
    );

    pg.state.lock().unwrap().position = 900;
    engine.run_once().await;
    assert_eq!(stored_status(&store).await.value.optime, Lsn(900));
}

// ---- hostile records, log amplification, silent waits ----

/// A permanent record (no lease) of a running replica `n` at `position`.
fn leftover_record(store: &MemoryDcs, n: &str, position: u64, timeline: u32) {
    let member = Member {
        api_url: String::new(),
        ..running_member(&name(n), Role::Replica, position, timeline)
    };
    store.put_raw(&format!("members/{n}"), &encode_member(&member));
}

#[tokio::test]
async fn a_leftover_record_far_ahead_does_not_block_failover_and_is_reported_once() {
    let logs = LogCapture::default();
    let _logging = logs.capture_this_thread();
    let mut f = failover_setup().await;
    leftover_record(&f.store, "ghost", 1 << 50, 1);
    f.leader_dies().await;
    let mut promoted = false;
    for _ in 0..3 {
        let decision = f.engine.run_once().await;
        promoted |= decision.actions.contains(&Action::Promote);
        f.clock.advance(Duration::from_secs(1));
    }
    assert!(promoted, "{:?}", f.events.lock().unwrap());
    let reports = logs.lines("WARN", "b", "ghost");
    assert_eq!(reports.len(), 1, "{reports:#?}");
}

#[tokio::test]
async fn garbage_in_leader_sync_and_failover_is_logged_once_per_key_with_a_bounded_excerpt() {
    let logs = LogCapture::default();
    let _logging = logs.capture_this_thread();
    let mut f = failover_setup().await;
    f.engine.run_once().await;
    let garbage = "x".repeat(1 << 20);
    for key in ["leader", "sync", "failover"] {
        f.store.put_raw(key, garbage.as_bytes());
    }
    for _ in 0..20 {
        let decision = f.engine.run_once().await;
        assert!(!decision.actions.contains(&Action::Promote), "{decision:?}");
        f.clock.advance(Duration::from_millis(250));
    }
    for key in ["leader", "sync", "failover"] {
        let warnings = logs.lines("WARN", "b", &format!(" key={key} "));
        assert_eq!(warnings.len(), 1, "{key}: {} warnings", warnings.len());
        assert!(
            warnings[0].len() < 1000,
            "{key}: {} bytes",
            warnings[0].len()
        );
    }
}

/// Every key a replica reads, filled with a 1 MB value, then changed to
/// another one: no promotion, and at most one warning per key and change,
/// each bounded in size (not the value: 1 MB a loop on every node before).
#[tokio::test]
async fn garbage_in_every_key_is_logged_at_most_once_per_change_with_a_bounded_excerpt() {
    let keys: Vec<&str> = support::CLUSTER_KEYS
        .into_iter()
        .chain(["members/ghost"])
        .collect();
    let logs = LogCapture::default();
    let _logging = logs.capture_this_thread();
    let mut f = failover_setup().await;
    f.engine.run_once().await;
    let warnings = |logs: &LogCapture| -> Vec<String> {
        logs.all()
            .into_iter()
            .filter(|line| line.starts_with("WARN") || line.starts_with("ERROR"))
            .collect()
    };
    let before = warnings(&logs).len();
    for (change, filler) in ["x", "y"].into_iter().enumerate() {
        let garbage = filler.repeat(1 << 20);
        for &key in &keys {
            f.store.put_raw(key, garbage.as_bytes());
        }
        for _ in 0..20 {
            let decision = f.engine.run_once().await;
            assert!(!decision.actions.contains(&Action::Promote), "{decision:?}");
            assert!(
                !decision.actions.contains(&Action::AcquireLock),
                "{decision:?}"
            );
            f.clock.advance(Duration::from_millis(250));
        }
        let lines = warnings(&logs);
        let logged = lines.len() - before;
        assert_eq!(
            logged,
            keys.len() * (change + 1),
            "after change {change}: {lines:#?}"
        );
        for &key in &keys {
            // The config warning names the key in its error text.
            let tag = match key {
                "config" => "under `config`".to_owned(),
                _ => format!(" key={key} "),
            };
            let named = lines.iter().filter(|line| line.contains(&tag)).count();
            assert_eq!(named, change + 1, "{key} after change {change}");
        }
        for line in &lines {
            assert!(line.len() < 1000, "{} bytes: {}", line.len(), &line[..200]);
        }
    }
}

#[tokio::test]
async fn a_repeated_reason_not_to_race_is_logged_once_and_shown_in_the_status() {
    let logs = LogCapture::default();
    let _logging = logs.capture_this_thread();
    let mut f = failover_setup().await;
    leftover_record(&f.store, "c", 700, 1);
    f.leader_dies().await;
    for _ in 0..5 {
        let decision = f.engine.run_once().await;
        assert!(!decision.actions.contains(&Action::Promote), "{decision:?}");
        f.clock.advance(Duration::from_secs(1));
    }
    let lines = logs.lines("INFO", "b", "c is a better candidate");
    assert_eq!(lines.len(), 1, "{lines:#?}");
    let pending = f.engine.status().get().pending.unwrap_or_default();
    assert!(pending.contains("c is a better candidate"), "{pending}");
}

/// Issue 21, item 4 (found at 5/1/2, where the fence then fired 3 s after a
/// renewal): one loop waits loop_wait, the next one's observe takes
/// retry_timeout, every other loop: a renewal that waits behind observing
/// comes late, and the fence kills a healthy primary on a healthy DCS.
#[tokio::test(start_paused = true)]
async fn a_slow_postgres_answer_does_not_delay_the_lock_renewal_past_the_fence() {
    let config = ClusterConfig::default();
    let (engine, leader) = timed_leader_with(|pg| pg.slow = Some(config.retry_timeout)).await;
    let check = async {
        let lost = leader
            .tick_until_the_lock_is_lost(300, |_| {
                assert_eq!(
                    leader.fence.fired(),
                    None,
                    "the fence fired on a healthy primary"
                );
            })
            .await;
        assert_eq!(lost, None, "the lock was lost");
    };
    run_beside(engine, Duration::from_secs(31), check).await;
    assert!(leader.pg.calls.load(std::sync::atomic::Ordering::SeqCst) > 10);
    leader.assert_postgres_left_alone();
}

/// The other side of the same rule: a primary whose PostgreSQL no longer
/// answers at all must not keep the lock for ever. Its renewals stop, the
/// fence stops writes, and only then does the lock expire (no promotion
/// while the hung primary may still take writes).
#[tokio::test(start_paused = true)]
async fn a_hung_postgres_is_fenced_and_then_loses_the_lock() {
    let (engine, leader) = timed_leader_with(|_| {}).await;
    let hung_at = Duration::from_secs(10);
    let check = async {
        let lock_free_at = leader
            .tick_until_the_lock_is_lost(400, |now| {
                if now >= hung_at {
                    leader
                        .pg
                        .hung
                        .store(true, std::sync::atomic::Ordering::SeqCst);
                } else {
                    assert_eq!(leader.fence.fired(), None);
                }
            })
            .await
            .expect("a hung primary kept the leader lock for 30 s");
        assert!(lock_free_at >= hung_at, "lost the lock before hanging");
        leader.fired_before(lock_free_at);
    };
    run_beside(engine, Duration::from_secs(41), check).await;
}

/// Issue 21, item 8: a `failover` key naming a member that does not exist
/// stayed for ever, without a log line. The leader shows it as pending,
/// keeps leading, and clears it once it waited a ttl for the member.
#[tokio::test]
async fn a_failover_request_naming_a_nonexistent_member_is_shown_then_cleared() {
    let rig = Rig::new();
    let (clock, store, events) = (&rig.clock, &rig.store, &rig.events);
    let (mut engine, pg, connection) = rig.leader_a(&ClusterConfig::default()).await;
    engine.run_once().await;
    request_switchover(&connection, "ghost").await;
    let decision = engine.run_once().await;
    assert_eq!(decision.role, EngineRole::Leader, "{decision:?}");
    let pending = engine.status().get().pending.unwrap_or_default();
    assert!(pending.contains("ghost"), "pending: {pending:?}");
    assert!(store.read_view().await.unwrap().failover.is_some());

    // Still there after a few loops, less than a ttl after it was seen.
    for _ in 0..3 {
        clock.advance(Duration::from_secs(1));
        engine.run_once().await;
    }
    assert!(store.read_view().await.unwrap().failover.is_some());
    // A ttl later the leader clears it, and keeps leading.
    for _ in 0..3 {
        clock.advance(Duration::from_secs(1));
        engine.run_once().await;
    }
    assert!(
        store.read_view().await.unwrap().failover.is_none(),
        "the request naming a nonexistent member is still there"
    );
    assert_eq!(engine.status().get().pending, None);
    assert!(pg.is_writable_primary());
    assert!(events.lock().unwrap().is_empty(), "{:?}", events);
}

/// Issue 21, item 8: the system id PostgreSQL is checked against (a data
/// directory or a clone source of another cluster is refused) was read from
/// the `initialize` key once, at start, so a corrected key counted only
/// after a restart. The engine passes the key on at every loop.
#[tokio::test]
async fn a_corrected_initialize_key_is_passed_on_at_the_next_loop() {
    let rig = Rig::new();
    let store = &rig.store;
    other_leader(store, "a", 550, 600).await;
    let pg = FakePg::replica_of("a", 500, &rig.events);
    let mut engine = rig.engine(store.connect(), pg.clone(), "b", ClusterConfig::default());
    let told = |pg: &FakePg| pg.state.lock().unwrap().told_system_ids.last().copied();
    let wrong = SystemId(SYSID.0 ^ 1);
    store.put_raw("initialize", &encode_initialize(&Initialize::Done(wrong)));
    engine.run_once().await;
    assert_eq!(told(&pg), Some(wrong));
    // An operator corrects the key: the next loop passes the right one on.
    store.put_raw("initialize", &encode_initialize(&Initialize::Done(SYSID)));
    engine.run_once().await;
    assert_eq!(told(&pg), Some(SYSID));
    // A garbage value changes nothing: the last one read stays.
    store.put_raw("initialize", b"\xff not an id");
    engine.run_once().await;
    assert_eq!(told(&pg), Some(SYSID));
}

/// Records what the engine tells the fence, in order.
#[derive(Default)]
struct ModeFence {
    calls: Mutex<Vec<&'static str>>,
}

#[async_trait]
impl Fence for ModeFence {
    async fn arm(&self, _valid_for: Duration) -> Result<(), FenceError> {
        self.calls.lock().unwrap().push("arm");
        Ok(())
    }
    async fn disarm(&self) -> Result<(), FenceError> {
        self.calls.lock().unwrap().push("disarm");
        Ok(())
    }
    async fn suspend(&self) -> Result<(), FenceError> {
        self.calls.lock().unwrap().push("suspend");
        Ok(())
    }
}

/// In pause (Patroni's maintenance mode) the operator owns PostgreSQL: the
/// leader's fence is suspended instead of armed, and a stop of the agent
/// leaves PostgreSQL running and the leader key in place. At resume the
/// fence is armed again before the agent acts.
#[tokio::test]
async fn a_paused_leader_suspends_its_fence_and_stops_without_touching_postgres_or_the_lock() {
    let rig = Rig::new();
    let paused = ClusterConfig {
        pause: true,
        ..ClusterConfig::default()
    };
    rig.store
        .connect()
        .write(&Record::Config(paused.clone()), Expected::Any)
        .await
        .unwrap();
    let (engine, pg, _connection) = rig.leader_a(&paused).await;
    let fence = Arc::new(ModeFence::default());
    let mut engine = engine.with_fence(Arc::clone(&fence) as Arc<dyn Fence>);
    let decision = engine.run_once().await;
    assert_eq!(decision.role, EngineRole::Leader, "{decision:?}");
    rig.clock.advance(Duration::from_secs(2));
    engine.run_once().await;
    assert_eq!(*fence.calls.lock().unwrap(), ["suspend"]);

    // Resumed: disarmed (out of pause), then armed by the renewal.
    rig.store
        .connect()
        .write(&Record::Config(ClusterConfig::default()), Expected::Any)
        .await
        .unwrap();
    rig.clock.advance(Duration::from_secs(2));
    engine.run_once().await;
    assert_eq!(*fence.calls.lock().unwrap(), ["suspend", "disarm", "arm"]);

    // Paused again, then the agent stops.
    rig.store
        .connect()
        .write(&Record::Config(paused), Expected::Any)
        .await
        .unwrap();
    rig.clock.advance(Duration::from_secs(2));
    engine.run_once().await;
    assert_eq!(fence.calls.lock().unwrap().last(), Some(&"suspend"));
    engine.step_down().await;
    assert!(
        pg.is_writable_primary(),
        "a stop in pause stopped PostgreSQL"
    );
    let view = rig.store.read_view().await.unwrap();
    assert_eq!(
        view.leader_name(),
        Some(&name("a")),
        "a stop in pause released the leader key"
    );
    assert_eq!(fence.calls.lock().unwrap().last(), Some(&"suspend"));
}
