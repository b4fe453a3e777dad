//! The engine on tokio's paused clock: a PostgreSQL whose answers and starts
//! take time or hang, and a write fence that keeps its deadline on that
//! clock, for the tests of the lock renewal's timing.

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

use super::fake_pg::FakePg;
use super::scene::SYSID;

/// A [`FakePg`] whose `observe` is slow every other call (it answers after
/// `slow`), or that hangs for ever once `hung` is set (`observe`, `demote`
/// and `stop` never answer, as a PostgreSQL stuck on its disk). A start
/// takes `start_takes` (a crash recovery), never ends once `start_hangs` is
/// set, and fails at once while `start_fails` is set.
#[derive(Clone)]
pub(crate) struct SlowPg {
    pub(crate) inner: FakePg,
    slow: Option<Duration>,
    pub(crate) start_takes: Option<Duration>,
    pub(crate) calls: Arc<AtomicUsize>,
    pub(crate) hung: Arc<AtomicBool>,
    pub(crate) start_hangs: Arc<AtomicBool>,
    pub(crate) start_fails: Arc<AtomicBool>,
}

impl SlowPg {
    pub(crate) fn new(inner: FakePg, slow: Option<Duration>) -> Self {
        SlowPg {
            inner,
            slow,
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

/// A leader `a` over `pg`, on tokio's (paused) clock, with a [`TimedFence`].
pub(crate) async fn timed_leader(
    pg: SlowPg,
) -> (
    Engine<MemoryDcs, SlowPg, RecordingRouter>,
    MemoryDcs,
    Arc<TimedFence>,
    Arc<dyn Clock>,
) {
    let (engine, store, _connection, fence, clock) = timed_leader_with_connection(pg).await;
    (engine, store, fence, clock)
}

/// [`timed_leader`], and the engine's own DCS client, to cut it off
/// ([`MemoryDcs::set_reachable`]) while the store stays up for the others.
pub(crate) async fn timed_leader_with_connection(
    pg: SlowPg,
) -> (
    Engine<MemoryDcs, SlowPg, RecordingRouter>,
    MemoryDcs,
    MemoryDcs,
    Arc<TimedFence>,
    Arc<dyn Clock>,
) {
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
        pg,
        RecordingRouter::new("recording"),
        member_settings(&MemberName::new("a").unwrap(), config),
        Arc::clone(&clock),
    )
    .with_fence(Arc::clone(&fence) as Arc<dyn Fence>);
    (engine, store, connection, fence, clock)
}

/// Ticks every 100 ms of the paused clock, `ticks` times at most, calling
/// `each_tick(now)` first (to inject a fault, or to check the primary);
/// returns when the leader lock first read as not held by `a`, if it did.
pub(crate) async fn tick_until_the_lock_is_lost(
    store: &MemoryDcs,
    clock: &Arc<dyn Clock>,
    ticks: usize,
    mut each_tick: impl FnMut(Duration),
) -> Option<Duration> {
    let me = MemberName::new("a").unwrap();
    for _ in 0..ticks {
        tokio::time::sleep(Duration::from_millis(100)).await;
        each_tick(clock.now());
        let view = store.connect().read_view().await.unwrap();
        if view.leader_name() != Some(&me) {
            return Some(clock.now());
        }
    }
    None
}

/// When the fence fired, which must be before the lock was free at
/// `lock_free_at`: no promotion while the old primary may take writes.
pub(crate) fn fired_before(fence: &TimedFence, lock_free_at: Duration) -> Duration {
    let fired_at = fence
        .fired()
        .expect("the lock went without the fence firing");
    assert!(
        fired_at < lock_free_at,
        "the fence fired at {fired_at:?}, after the lock was free at {lock_free_at:?}"
    );
    fired_at
}
