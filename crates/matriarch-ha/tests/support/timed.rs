//! The engine on tokio's paused clock: a PostgreSQL whose answers and starts
//! take time or hang, and a write fence that keeps its deadline on that
//! clock, for the tests of the lock renewal's timing.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use matriarch_dcs::{Clock, Dcs, MemoryDcs, TokioClock};
use matriarch_ha::sim::member_settings;
use matriarch_ha::{Engine, Fence, FenceError};
use matriarch_model::{
    encode_initialize, ClusterConfig, Initialize, KeyLayout, MemberName, SystemId, Timeline,
};
use matriarch_postgres::{
    BootstrapSpec, LocalState, Operation, Postgres, PostgresError, RewindOutcome, StartAs,
    StopMode, SyncStandbyNames, Upstream,
};
use matriarch_router::RecordingRouter;

use super::fake_pg::{Events, FakePg};
use super::scene::SYSID;

/// A [`FakePg`] whose `observe` is slow every other call (it answers after
/// `slow`), or that hangs for ever once `hung` is set (`observe`, `demote`
/// and `stop` never answer, as a PostgreSQL stuck on its disk). A start
/// takes `start_takes` (a crash recovery), never ends once `start_hangs` is
/// set, and fails at once while `start_fails` is set.
#[derive(Clone)]
pub(crate) struct SlowPg {
    pub(crate) inner: FakePg,
    pub(crate) slow: Option<Duration>,
    pub(crate) start_takes: Option<Duration>,
    pub(crate) calls: Arc<AtomicUsize>,
    pub(crate) hung: Arc<AtomicBool>,
    pub(crate) start_hangs: Arc<AtomicBool>,
    pub(crate) start_fails: Arc<AtomicBool>,
}

impl SlowPg {
    pub(crate) fn new(inner: FakePg) -> Self {
        SlowPg {
            inner,
            slow: None,
            start_takes: None,
            calls: Arc::default(),
            hung: Arc::default(),
            start_hangs: Arc::default(),
            start_fails: Arc::default(),
        }
    }

    async fn hang_if_hung(&self) {
        if self.hung.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
    }
}

#[async_trait]
impl Postgres for SlowPg {
    async fn observe(&self) -> Result<LocalState, PostgresError> {
        self.hang_if_hung().await;
        let call = self.calls.fetch_add(1, Ordering::SeqCst);
        if let Some(slow) = self.slow.filter(|_| call % 2 == 1) {
            tokio::time::sleep(slow).await;
        }
        self.inner.observe().await
    }
    async fn bootstrap(&self, spec: &BootstrapSpec) -> Result<SystemId, PostgresError> {
        self.inner.bootstrap(spec).await
    }
    async fn clone_replica(&self, source: &Upstream) -> Result<(), PostgresError> {
        self.inner.clone_replica(source).await
    }
    async fn start(&self, as_role: StartAs) -> Result<(), PostgresError> {
        if self.start_hangs.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        if self.start_fails.load(Ordering::SeqCst) {
            return Err(PostgresError::Unexpected {
                operation: Operation::Start,
                context: "starting as primary".to_owned(),
                message: "the test makes it fail".to_owned(),
            });
        }
        if let Some(takes) = self.start_takes {
            tokio::time::sleep(takes).await;
        }
        self.inner.start(as_role).await
    }
    async fn stop(&self, mode: StopMode) -> Result<(), PostgresError> {
        self.hang_if_hung().await;
        self.inner.stop(mode).await
    }
    async fn promote(&self) -> Result<Timeline, PostgresError> {
        self.inner.promote().await
    }
    async fn demote(&self, mode: StopMode, follow: Option<Upstream>) -> Result<(), PostgresError> {
        self.hang_if_hung().await;
        self.inner.demote(mode, follow).await
    }
    async fn follow(&self, upstream: &Upstream) -> Result<(), PostgresError> {
        self.inner.follow(upstream).await
    }
    async fn rewind(&self, source: &Upstream) -> Result<RewindOutcome, PostgresError> {
        self.inner.rewind(source).await
    }
    async fn set_synchronous_standby_names(
        &self,
        names: &SyncStandbyNames,
    ) -> Result<(), PostgresError> {
        self.inner.set_synchronous_standby_names(names).await
    }
}

/// A fence that keeps its deadline on the test's clock, as the real one
/// does: an `arm` that comes at or after the deadline comes too late (the
/// real fence has killed the postmaster by then).
pub(crate) struct TimedFence {
    clock: Arc<dyn Clock>,
    /// The deadline armed last, if armed.
    deadline: Mutex<Option<Duration>>,
    /// The first deadline that passed while armed.
    fired_at: Mutex<Option<Duration>>,
}

impl TimedFence {
    pub(crate) fn new(clock: &Arc<dyn Clock>) -> Self {
        TimedFence {
            clock: Arc::clone(clock),
            deadline: Mutex::new(None),
            fired_at: Mutex::new(None),
        }
    }

    /// When the fence fired (stopped the postmaster), if it did.
    pub(crate) fn fired(&self) -> Option<Duration> {
        let now = self.clock.now();
        let mut fired = self.fired_at.lock().unwrap();
        if fired.is_none() {
            *fired = self.deadline.lock().unwrap().filter(|d| now >= *d);
        }
        *fired
    }
}

#[async_trait]
impl Fence for TimedFence {
    async fn arm(&self, valid_for: Duration) -> Result<(), FenceError> {
        self.fired();
        *self.deadline.lock().unwrap() = Some(self.clock.now() + valid_for);
        Ok(())
    }
    async fn disarm(&self) -> Result<(), FenceError> {
        self.fired();
        *self.deadline.lock().unwrap() = None;
        Ok(())
    }
}

/// Leader `a` running a primary at position 800 (a [`FakePg`] under a
/// [`SlowPg`]) on tokio's paused clock, with a [`TimedFence`]: where the
/// tests of the lock renewal's timing start. [`timed_leader_with`] returns
/// the engine beside it.
pub(crate) struct TimedLeader {
    pub(crate) store: MemoryDcs,
    /// The engine's own DCS client, to cut it off
    /// ([`MemoryDcs::set_reachable`]) while the store stays up for the others.
    pub(crate) connection: MemoryDcs,
    pub(crate) fence: Arc<TimedFence>,
    pub(crate) clock: Arc<dyn Clock>,
    /// The engine's PostgreSQL (a copy: its switches and its [`FakePg`] are
    /// shared with the engine's).
    pub(crate) pg: SlowPg,
    /// What the engine did to PostgreSQL besides starting it.
    events: Events,
}

/// The engine of a [`TimedLeader`].
pub(crate) type TimedEngine = Engine<MemoryDcs, SlowPg, RecordingRouter>;

/// A [`TimedLeader`] and its engine, whose [`SlowPg`] is set up by `shape`
/// first (slow answers, slow or failing starts).
pub(crate) async fn timed_leader_with(
    shape: impl FnOnce(&mut SlowPg),
) -> (TimedEngine, TimedLeader) {
    let events: Events = Arc::default();
    let mut pg = SlowPg::new(FakePg::primary(800, &events));
    shape(&mut pg);
    let clock: Arc<dyn Clock> = Arc::new(TokioClock::new());
    let store = MemoryDcs::with_clock(
        KeyLayout::new("service", "test").unwrap(),
        Arc::clone(&clock),
    );
    store.put_raw("initialize", &encode_initialize(&Initialize::Done(SYSID)));
    let config = ClusterConfig::default();
    assert!(store
        .connect()
        .acquire_leader(&MemberName::new("a").unwrap(), config.ttl)
        .await
        .unwrap());
    let fence = Arc::new(TimedFence::new(&clock));
    let connection = store.connect();
    let engine = Engine::new(
        connection.clone(),
        pg.clone(),
        RecordingRouter::new("recording"),
        member_settings(&MemberName::new("a").unwrap(), config),
        Arc::clone(&clock),
    )
    .with_fence(Arc::clone(&fence) as Arc<dyn Fence>);
    let leader = TimedLeader {
        store,
        connection,
        fence,
        clock,
        pg,
        events,
    };
    (engine, leader)
}

impl TimedLeader {
    /// Ticks every 100 ms of the paused clock, `ticks` times at most,
    /// calling `each_tick(now)` first (to inject a fault, or to check the
    /// primary); returns when the leader lock first read as not held by
    /// `a`, if it did.
    pub(crate) async fn tick_until_the_lock_is_lost(
        &self,
        ticks: usize,
        mut each_tick: impl FnMut(Duration),
    ) -> Option<Duration> {
        let me = MemberName::new("a").unwrap();
        for _ in 0..ticks {
            tokio::time::sleep(Duration::from_millis(100)).await;
            each_tick(self.clock.now());
            let view = self.store.connect().read_view().await.unwrap();
            if view.leader_name() != Some(&me) {
                return Some(self.clock.now());
            }
        }
        None
    }

    /// When the fence fired, which must be before the lock was free at
    /// `lock_free_at`: no promotion while the old primary may take writes.
    pub(crate) fn fired_before(&self, lock_free_at: Duration) -> Duration {
        let fired_at = self
            .fence
            .fired()
            .expect("the lock went without the fence firing");
        assert!(
            fired_at < lock_free_at,
            "the fence fired at {fired_at:?}, after the lock was free at {lock_free_at:?}"
        );
        fired_at
    }

    /// Asserts that the engine did nothing to PostgreSQL but start it (no
    /// demotion, no stop): the primary rode out whatever happened.
    pub(crate) fn assert_postgres_left_alone(&self) {
        let events = self.events.lock().unwrap();
        assert!(events.is_empty(), "{events:?}");
    }
}

/// Runs `engine` for `run_for` of the paused clock, with `check` beside it.
pub(crate) async fn run_beside(
    engine: TimedEngine,
    run_for: Duration,
    check: impl Future<Output = ()>,
) {
    tokio::join!(engine.run(tokio::time::sleep(run_for)), check);
}
