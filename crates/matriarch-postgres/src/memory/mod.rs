//! An in-memory PostgreSQL: the twin of [`crate::PgController`] that the
//! simulation, the examples and tests run, held to the same
//! [`crate::conformance`] suite as the real one.
//!
//! A [`MemoryPostgresCluster`] holds the data directories of every member
//! (a timeline and a WAL of records); each [`MemoryPostgres`] is one
//! member's [`Postgres`]. It reports itself as real PostgreSQL does: roles,
//! the timeline a replica replays (also once its upstream is gone),
//! write/flush/replay positions, `pg_stat_replication`, and what start,
//! stop, promote, demote, follow and rewind do to them. A commit waits for
//! the standbys `synchronous_standby_names` names (`FIRST n`, `ANY n`, `*`)
//! and is not waited for when it is empty.
//!
//! It has no time of its own: WAL ships when its owner calls
//! [`Servers::replicate`] (a test on each step of its virtual clock, an
//! example every few milliseconds), as far as the cluster's [`Conditions`]
//! let it (lag, stalls, restartpoints, a pg_rewind that finds its WAL
//! gone), and stalls end on the [`MemoryClock`] it is given. A simulation
//! plants its faults there and through [`MemoryPostgresCluster::servers`]
//! (crashes, partitions), and keeps its own invariants on the same state.

mod clock;
mod conditions;
mod server;
mod servers;
mod slots;

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use matriarch_model::{DesiredSlots, MemberName, SlotReport, SystemId, Timeline};

pub use clock::{MemoryClock, RealClock};
pub use conditions::{Conditions, PerfectConditions, Shipment, ShippingLink, TimelineReport};
pub use server::{is_prefix, DataDirectory, MemorySlot, Server, WalRecord};
pub use servers::{Commit, Servers};

use crate::{
    BootstrapSpec, LocalState, Postgres, PostgresError, RewindOutcome, StartAs, StopMode,
    SyncStandbyNames, Upstream,
};

/// The servers of one cluster, shared by its members.
#[derive(Clone)]
pub struct MemoryPostgresCluster {
    servers: Arc<Mutex<Servers>>,
}

impl MemoryPostgresCluster {
    /// An empty cluster whose bootstrap creates `system_id`, on the real
    /// clock, with a perfect network.
    pub fn new(system_id: SystemId) -> Self {
        MemoryPostgresCluster::with(
            system_id,
            Box::new(RealClock::new()),
            Box::new(PerfectConditions),
        )
    }

    /// An empty cluster on `clock`, under `conditions`.
    pub fn with(
        system_id: SystemId,
        clock: Box<dyn MemoryClock>,
        conditions: Box<dyn Conditions>,
    ) -> Self {
        MemoryPostgresCluster {
            servers: Arc::new(Mutex::new(Servers {
                servers: Vec::new(),
                system_id,
                clock,
                conditions,
                timeline_report: TimelineReport::Replayed,
                next_write: 1,
            })),
        }
    }

    /// Sets which timeline running replicas report.
    pub fn set_timeline_report(&self, report: TimelineReport) {
        self.servers().timeline_report = report;
    }

    /// Adds member `name` with an empty data directory and returns its
    /// [`Postgres`]; an existing member's is returned again.
    pub fn member(&self, name: MemberName) -> MemoryPostgres {
        let mut servers = self.servers();
        let index = match servers.index_of(&name) {
            Some(index) => index,
            None => {
                servers.servers.push(Server::new(name));
                servers.servers.len() - 1
            }
        };
        MemoryPostgres {
            cluster: self.clone(),
            index,
        }
    }

    /// Every server, locked: to read, commit, ship WAL or plant a fault.
    /// Do not hold it across an `.await`.
    pub fn servers(&self) -> MutexGuard<'_, Servers> {
        // A panic elsewhere poisons the lock; the servers are still whole.
        self.servers.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One member's PostgreSQL in a [`MemoryPostgresCluster`].
#[derive(Clone)]
pub struct MemoryPostgres {
    cluster: MemoryPostgresCluster,
    index: usize,
}

impl MemoryPostgres {
    /// Its place in [`Servers::all`].
    pub fn index(&self) -> usize {
        self.index
    }

    /// The cluster it belongs to.
    pub fn cluster(&self) -> &MemoryPostgresCluster {
        &self.cluster
    }

    /// Commits a write on it (see [`Servers::commit`]).
    pub fn commit(&self) -> Commit {
        self.cluster.servers().commit(self.index)
    }

    /// Kills its server without a shutdown checkpoint.
    pub fn crash(&self) {
        self.cluster.servers().crash(self.index);
    }

    /// Empties its stopped data directory.
    pub fn remove_data(&self) -> Result<(), PostgresError> {
        self.cluster.servers().remove_data(self.index)
    }
}

#[async_trait]
impl Postgres for MemoryPostgres {
    async fn observe(&self) -> Result<LocalState, PostgresError> {
        Ok(self.cluster.servers().observe(self.index))
    }

    async fn bootstrap(&self, _spec: &BootstrapSpec) -> Result<SystemId, PostgresError> {
        self.cluster.servers().bootstrap(self.index)
    }

    async fn clone_replica(&self, source: &Upstream) -> Result<(), PostgresError> {
        self.cluster.servers().clone_replica(self.index, source)
    }

    async fn start(&self, as_role: StartAs) -> Result<(), PostgresError> {
        self.cluster.servers().start(self.index, &as_role)
    }

    async fn stop(&self, mode: StopMode) -> Result<(), PostgresError> {
        self.cluster.servers().stop(self.index, mode);
        Ok(())
    }

    async fn promote(&self) -> Result<Timeline, PostgresError> {
        self.cluster.servers().promote(self.index)
    }

    async fn demote(&self, mode: StopMode, follow: Option<Upstream>) -> Result<(), PostgresError> {
        self.cluster
            .servers()
            .demote(self.index, mode, follow.as_ref())
    }

    async fn follow(&self, upstream: &Upstream) -> Result<(), PostgresError> {
        self.cluster.servers().follow(self.index, upstream)
    }

    async fn rewind(&self, source: &Upstream) -> Result<RewindOutcome, PostgresError> {
        self.cluster.servers().rewind(self.index, source)
    }

    async fn set_synchronous_standby_names(
        &self,
        names: &SyncStandbyNames,
    ) -> Result<(), PostgresError> {
        self.cluster
            .servers()
            .set_synchronous_standby_names(self.index, names)
    }

    async fn reconcile_slots(&self, desired: &DesiredSlots) -> Result<SlotReport, PostgresError> {
        self.cluster.servers().reconcile_slots(self.index, desired)
    }

    async fn disk_full(&self) -> Option<PostgresError> {
        let servers = self.cluster.servers();
        let server = servers.server(self.index);
        server.disk_full.then(|| PostgresError::NoSpace {
            operation: crate::error::Operation::Observe,
            path: std::path::PathBuf::from(format!("/memory/{}/pg_wal", server.name)),
            free_bytes: Some(0),
            detail: "less than one WAL segment free".to_owned(),
        })
    }
}
