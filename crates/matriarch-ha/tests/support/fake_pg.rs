//! Stand-ins for the engine tests: a PostgreSQL that does what it is told
//! and logs promotions and demotions, and a write fence that records how
//! long it was armed for.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use matriarch_ha::{Fence, FenceError};
use matriarch_model::{Lsn, MemberName, SystemId, Timeline};
use matriarch_postgres::{
    BootstrapSpec, DataDirectoryState, LocalState, PgRole, Postgres, PostgresError, RewindOutcome,
    ServerState, StartAs, StopMode, SyncStandbyNames, Upstream, WalPositions,
};

use super::scene::SYSID;

fn name(n: &str) -> MemberName {
    MemberName::new(n).unwrap()
}

pub(crate) type Events = Arc<Mutex<Vec<String>>>;

#[derive(Debug)]
pub(crate) struct PgState {
    pub(crate) running: bool,
    pub(crate) primary: bool,
    pub(crate) timeline: u32,
    pub(crate) position: u64,
    pub(crate) upstream: Option<MemberName>,
    /// How far a replica's replay trails the WAL it received.
    pub(crate) replay_lag: u64,
    /// `synchronous_standby_names` as last set.
    pub(crate) sync: Option<SyncStandbyNames>,
    /// The cluster system ids the engine passed on, in order.
    pub(crate) told_system_ids: Vec<SystemId>,
}

/// A PostgreSQL that does what it is told and logs promotions and demotions.
#[derive(Clone)]
pub(crate) struct FakePg {
    pub(crate) state: Arc<Mutex<PgState>>,
    events: Events,
    /// Runs as each demotion begins (to look at the engine then).
    on_demote: Arc<Mutex<Option<DemoteHook>>>,
}

type DemoteHook = Box<dyn Fn() + Send>;

impl FakePg {
    pub(crate) fn replica_of(upstream: &str, position: u64, events: &Events) -> Self {
        FakePg {
            state: Arc::new(Mutex::new(PgState {
                running: true,
                primary: false,
                timeline: 1,
                position,
                upstream: Some(name(upstream)),
                replay_lag: 0,
                sync: None,
                told_system_ids: Vec::new(),
            })),
            events: Arc::clone(events),
            on_demote: Arc::default(),
        }
    }

    pub(crate) fn primary(position: u64, events: &Events) -> Self {
        let pg = FakePg::replica_of("x", position, events);
        {
            let mut state = pg.state.lock().unwrap();
            state.primary = true;
            state.upstream = None;
        }
        pg
    }

    /// Has `hook` run as each demotion begins.
    pub(crate) fn on_demote(&self, hook: impl Fn() + Send + 'static) {
        *self.on_demote.lock().unwrap() = Some(Box::new(hook));
    }

    pub(crate) fn is_writable_primary(&self) -> bool {
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
            local.synchronous_standby_names = state.sync.clone();
        } else {
            local.server = ServerState::Running(PgRole::Replica);
            local.wal.received = position;
            local.wal.replayed = Some(Lsn(state.position.saturating_sub(state.replay_lag)));
            local.receiving = true;
            local.upstream = state.upstream.clone().map(|member| Upstream {
                host: member.to_string(),
                member,
                port: 5432,
                standby_source: None,
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
    async fn start(&self, as_role: StartAs) -> Result<(), PostgresError> {
        let mut state = self.state.lock().unwrap();
        if !state.running {
            state.running = true;
            state.primary = as_role == StartAs::Primary;
        }
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
        if let Some(hook) = self.on_demote.lock().unwrap().as_ref() {
            hook();
        }
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
        names: &SyncStandbyNames,
    ) -> Result<(), PostgresError> {
        self.state.lock().unwrap().sync = Some(names.clone());
        Ok(())
    }
    fn set_cluster_system_id(&self, system_id: SystemId) {
        self.state.lock().unwrap().told_system_ids.push(system_id);
    }
}

/// A fence that notes each arming's validity, in order.
#[derive(Default)]
pub(crate) struct RecordingFence {
    pub(crate) armed: Mutex<Vec<Duration>>,
}

#[async_trait]
impl Fence for RecordingFence {
    async fn arm(&self, valid_for: Duration) -> Result<(), FenceError> {
        self.armed.lock().unwrap().push(valid_for);
        Ok(())
    }
    async fn disarm(&self) -> Result<(), FenceError> {
        Ok(())
    }
}
