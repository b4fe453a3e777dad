//! The control trait the HA engine drives ([`Postgres`]), with the start,
//! stop and rewind choices it takes and returns.

use async_trait::async_trait;
use matriarch_model::{DesiredSlots, SlotReport, SystemId, Timeline};

use crate::bootstrap::BootstrapSpec;
use crate::error::PostgresError;
use crate::state::LocalState;
use crate::sync_standby::SyncStandbyNames;
use crate::upstream::Upstream;

/// The role [`Postgres::start`] brings the server up in.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum StartAs {
    /// Read-write, without `standby.signal`.
    Primary,
    /// In recovery (`standby.signal`), streaming from this upstream.
    ReplicaOf(Upstream),
    /// In recovery (`standby.signal`) with no upstream (an empty
    /// `primary_conninfo`): read-only, replaying only the WAL it already has.
    ///
    /// For a stopped member that must report its WAL position (to join a
    /// failover race) while no primary is known. It never becomes read-write
    /// on its own; [`Postgres::promote`] or [`Postgres::follow`] move it on.
    Standby,
}

/// How to shut the server down (`pg_ctl stop -m ...`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StopMode {
    /// Wait for every client to disconnect, then shut down cleanly. Can wait
    /// forever on a connection pool.
    Smart,
    /// Disconnect clients (rolling back their transactions), write a
    /// checkpoint and shut down cleanly. The usual choice.
    Fast,
    /// Terminate at once, without a checkpoint. The fastest way to stop
    /// writes; the next start runs crash recovery.
    Immediate,
}

/// What [`Postgres::rewind`] did.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum RewindOutcome {
    /// pg_rewind made the data directory a consistent replica of the source.
    Rewound,
    /// The local WAL never left the source's history: nothing to undo, so
    /// pg_rewind changed no data files.
    NotNeeded,
    /// pg_rewind cannot repair this data directory (found before changing
    /// anything); the engine should clone it again instead.
    Impossible {
        /// Why, e.g. "data checksums and wal_log_hints are both off" or
        /// "the source no longer has WAL from 0/3000000 on timeline 2".
        reason: String,
    },
}

/// Control of the local PostgreSQL server: one data directory, one postmaster.
///
/// # Calling rules
///
/// The HA loop calls the methods that change something one at a time;
/// implementations need not make two of them safe to run concurrently.
/// [`Postgres::observe`] only reads, and may run at any time alongside them
/// (the REST API calls it).
///
/// # Time
///
/// Every method returns within a deadline the implementation is configured
/// with, returning [`PostgresError::Timeout`] instead of waiting longer. After
/// a timeout, what the operation changed is unknown unless its documentation
/// below says otherwise: the engine observes before acting on it.
///
/// # Fencing
///
/// PostgreSQL cannot tell who holds the leader lock, so the caller enforces
/// it: only the member holding the leader lock may call [`Postgres::promote`]
/// or [`Postgres::start`] with [`StartAs::Primary`]. In return,
/// [`Postgres::demote`] guarantees that writes have stopped when it returns
/// `Ok`, which is what lets a primary that lost its lock step down before
/// another member is promoted.
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
#[async_trait]
pub trait Postgres: Send + Sync {
    /// Reports the server's state in one round trip: one connection and one
    /// query when it runs; the data directory and `pg_controldata` when it
    /// does not.
    ///
    /// Never changes anything. A postmaster that is up but refuses
    /// connections (starting, recovering, shutting down) is reported as
    /// [`ServerState::Unavailable`], not as an error. Errors mean the state
    /// could not be determined (a query failed on a server that accepted the
    /// connection, the data directory could not be read, the deadline passed).
    async fn observe(&self) -> Result<LocalState, PostgresError>;

    /// Creates a new cluster: `initdb` with data checksums and `spec`'s
    /// superuser, `spec`'s parameters and `pg_hba` lines, a start, then the
    /// replication and rewind roles. Returns the new system identifier, for
    /// the `initialize` key.
    ///
    /// With [`BootstrapMethod::Custom`] a command restores a backup instead
    /// of initdb, and recovery replays the archive to its target and
    /// promotes before the roles are made: the cluster keeps its source's
    /// system identifier and runs on a later timeline.
    ///
    /// Precondition: the data directory is absent or empty, otherwise
    /// [`PostgresError::NotEmpty`] and nothing is touched; so a second call
    /// never overwrites a cluster. The engine calls it only after winning the
    /// DCS's initialize race.
    ///
    /// On `Ok` the server runs as primary (on timeline 1 after initdb). On any error the
    /// implementation stops what it started and empties the data directory,
    /// so that bootstrapping can be tried again.
    async fn bootstrap(&self, spec: &BootstrapSpec) -> Result<SystemId, PostgresError>;

    /// Creates a replica: `pg_basebackup` from `source` into the empty data
    /// directory, then configures it to follow `source` (`primary_conninfo`,
    /// `standby.signal`, its replication slot).
    ///
    /// Precondition: the data directory is absent or empty, otherwise
    /// [`PostgresError::NotEmpty`] and nothing is touched.
    ///
    /// On `Ok` the server is left stopped; the engine starts it with
    /// [`StartAs::ReplicaOf`]. On any error, including a timeout, the partial
    /// copy is removed, so it can never be started by mistake.
    async fn clone_replica(&self, source: &Upstream) -> Result<(), PostgresError>;

    /// Starts the server in the role `as_role` and waits until it accepts
    /// connections (a replica does once it reaches a consistent state).
    ///
    /// [`StartAs::Primary`] removes `standby.signal`: if the data directory
    /// was a replica's, this ends its recovery on a new timeline, just as
    /// [`Postgres::promote`] does, so the fencing rule applies.
    /// [`StartAs::ReplicaOf`] writes `primary_conninfo` and `standby.signal`
    /// first; [`StartAs::Standby`] writes `standby.signal` and an empty
    /// `primary_conninfo`. A crashed data directory starts with crash
    /// recovery.
    ///
    /// Idempotent: on a server already running in the requested role it
    /// returns `Ok` without a restart (re-pointing a replica at a different
    /// upstream as [`Postgres::follow`] does for [`StartAs::ReplicaOf`]; a
    /// running replica is left as it is for [`StartAs::Standby`], whatever
    /// it follows). On a server running in the
    /// other role it returns [`PostgresError::RoleConflict`] and changes
    /// nothing: changing role is `promote`'s and `demote`'s job.
    /// [`PostgresError::NotInitialized`] if there is no cluster to start.
    ///
    /// On timeout the server is left starting (not stopped).
    async fn start(&self, as_role: StartAs) -> Result<(), PostgresError>;

    /// Shuts the server down in `mode` and waits until the postmaster has exited.
    ///
    /// Idempotent: `Ok` at once if no server runs. Afterwards `observe`
    /// reports [`DataDirectoryState::CleanShutdown`], or
    /// [`DataDirectoryState::Crashed`] after [`StopMode::Immediate`].
    ///
    /// Does not escalate on its own: on timeout the server may still be
    /// running or shutting down, and the caller chooses whether to stop again
    /// with [`StopMode::Immediate`]. ([`Postgres::demote`] does escalate.)
    async fn stop(&self, mode: StopMode) -> Result<(), PostgresError>;

    /// Promotes a replica to primary and waits until it runs read-write;
    /// returns the timeline it now runs on (higher than the one it ran on).
    ///
    /// Idempotent: on a primary it returns its current timeline and changes
    /// nothing. [`PostgresError::NotRunning`] if the server does not accept
    /// connections. Only the leader-lock holder may call it (see Fencing).
    ///
    /// On timeout the promotion was requested and may still complete: the
    /// caller must treat the server as possibly read-write.
    async fn promote(&self) -> Result<Timeline, PostgresError>;

    /// Takes a primary out of read-write service: stops it in `mode`, then,
    /// if `follow` is `Some`, starts it again as a replica of that upstream;
    /// with `None` it stays stopped.
    ///
    /// Safety rule: when `demote` returns `Ok`, the server accepts no writes
    /// (it is stopped, or running in recovery). To keep that promise within
    /// the deadline, if `mode` has not stopped the server in time the
    /// implementation escalates to [`StopMode::Immediate`] and then kills the
    /// postmaster; `standby.signal` is written only after the server has
    /// stopped, so it can never come back read-write.
    ///
    /// Errors: [`PostgresError::Timeout`] during the stop means even killing
    /// the postmaster failed, so the server may still accept writes. Any
    /// other error, or a timeout while starting as a replica, comes after the
    /// stop, when the server no longer takes writes; the engine observes to
    /// tell which.
    ///
    /// Idempotent: a stopped server with `follow` `None` is `Ok` at once; a
    /// replica already following `follow` is left as it is. A stopped server
    /// with `follow` `Some` is started as a replica.
    ///
    /// Does not rewind: a former primary that wrote WAL the new primary never
    /// received will start but fail to stream; the engine detects that with
    /// `observe` and calls [`Postgres::rewind`].
    async fn demote(&self, mode: StopMode, follow: Option<Upstream>) -> Result<(), PostgresError>;

    /// Points a replica at `upstream`: rewrites `primary_conninfo` (and the
    /// replication slot) and reloads; restarts instead on PostgreSQL before
    /// 13, which cannot change `primary_conninfo` on reload.
    ///
    /// Idempotent: if `upstream` is already followed, nothing is rewritten,
    /// reloaded or restarted. On a stopped server it writes the configuration
    /// (with `standby.signal`) so that the next start comes up as a replica of
    /// `upstream`, and does not start it. On a running primary it returns
    /// [`PostgresError::RoleConflict`] and changes nothing: only
    /// [`Postgres::demote`] takes a primary out of read-write service.
    /// [`PostgresError::NotInitialized`] if there is no cluster.
    async fn follow(&self, upstream: &Upstream) -> Result<(), PostgresError>;

    /// Repairs a former primary that diverged from `source` with pg_rewind,
    /// so it can follow `source`.
    ///
    /// Precondition: the server is stopped, otherwise
    /// [`PostgresError::StillRunning`]. A crashed data directory is first
    /// taken through crash recovery (pg_rewind requires a clean shutdown).
    ///
    /// [`RewindOutcome::Rewound`] and [`RewindOutcome::NotNeeded`] leave the
    /// server stopped and configured to follow `source`; the engine then
    /// starts it with [`StartAs::ReplicaOf`]. [`RewindOutcome::Impossible`]
    /// changes nothing and means the engine should clone again.
    ///
    /// On an error after pg_rewind began rewriting files (a failed pg_rewind,
    /// a timeout), PostgreSQL makes no promise about the data directory: the
    /// engine must not start it, and should clone again.
    async fn rewind(&self, source: &Upstream) -> Result<RewindOutcome, PostgresError>;

    /// Sets `synchronous_standby_names` and, on a running server, waits
    /// until the server reports the new value (a reload is asynchronous, and
    /// the engine publishes the synchronous standbys only once PostgreSQL
    /// enforces them).
    ///
    /// `names` is validated first ([`SyncStandbyNames::validate`]): an
    /// invalid value is [`PostgresError::InvalidSyncStandbyNames`] and nothing
    /// changes. Idempotent: an unchanged value is not rewritten or reloaded.
    /// On a stopped server the value is written and applies from the next
    /// start. On timeout the value is written but possibly not yet in force.
    async fn set_synchronous_standby_names(
        &self,
        names: &SyncStandbyNames,
    ) -> Result<(), PostgresError>;

    /// The cluster's system identifier as the `initialize` key says now,
    /// passed on by the HA engine at every loop where the key is readable
    /// and complete. An implementation that refuses a data directory or
    /// clone source of another cluster checks against the latest one, so a
    /// corrected key counts without a restart. The default ignores it.
    fn set_cluster_system_id(&self, _system_id: SystemId) {}

    /// Makes the running server's replication slots match `desired`:
    /// creates the missing ones, advances copies to
    /// [`DesiredSlots::advance_to`] (never backwards), and with
    /// [`DesiredSlots::drop_others`] drops every slot neither wanted nor
    /// ignored, except temporary ones, active ones (retried next time) and
    /// ones PostgreSQL 17's slot synchronization keeps. Returns every slot
    /// afterwards with its position, and what changed.
    ///
    /// Never touches a slot [`DesiredSlots::ignore`] matches. A wanted slot
    /// that cannot be made right this time (a logical copy on a standby of
    /// a version that cannot decode there, a slot of the wrong kind under a
    /// wanted name) is reported in [`SlotReport::skipped`], not an error.
    /// Errors: [`PostgresError::NotRunning`] without a running server,
    /// [`PostgresError::Query`] when reading the slots fails.
    ///
    /// The default does nothing and reports no slot: an implementation
    /// without slot support.
    async fn reconcile_slots(&self, _desired: &DesiredSlots) -> Result<SlotReport, PostgresError> {
        Ok(SlotReport::default())
    }

    /// [`PostgresError::NoSpace`] when the data directory or its pg_wal has
    /// less free space than one WAL segment: a replica there cannot write
    /// the WAL it receives, and stopping it to rewind does not help. The
    /// engine asks when a running replica receives nothing. The default:
    /// never full.
    async fn disk_full(&self) -> Option<PostgresError> {
        None
    }
}

#[cfg(test)]
mod tests;
