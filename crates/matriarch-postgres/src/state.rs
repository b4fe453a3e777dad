//! What [`crate::Postgres::observe`] reports about the local server.

use matriarch_model::{Lsn, MemberName, SystemId, Timeline};

use crate::role::PgRole;
use crate::sync_standby::SyncStandbyNames;
use crate::upstream::Upstream;

/// What the data directory says about a server that is not running.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DataDirectoryState {
    /// No database cluster: the directory is absent or empty, so the member
    /// must be bootstrapped or cloned.
    Empty,
    /// The server was shut down cleanly (`pg_controldata` reports
    /// "shut down" or "shut down in recovery"): it can be rewound or started.
    CleanShutdown,
    /// The server is gone without a clean shutdown: it crashed, was killed,
    /// or was stopped with [`crate::StopMode::Immediate`] (which PostgreSQL
    /// treats as a crash). The next start runs crash recovery, and
    /// pg_rewind needs that recovery to have happened first.
    Crashed,
}

/// Whether the server runs, and in which role.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ServerState {
    /// The server accepts connections in this role.
    Running(PgRole),
    /// The postmaster is alive but refuses connections: starting up,
    /// recovering after a crash, or shutting down. Its role is not known
    /// yet, so it must not be treated as a primary nor as a healthy replica.
    Unavailable,
    /// No postmaster runs on the data directory.
    NotRunning(DataDirectoryState),
}

/// WAL positions of the local server; each is `None` where it does not
/// apply (a primary receives nothing) or could not be read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct WalPositions {
    /// Primary: the current write position (`pg_current_wal_lsn()`).
    pub write: Option<Lsn>,
    /// Primary: WAL flushed to disk (`pg_current_wal_flush_lsn()`).
    pub flush: Option<Lsn>,
    /// Replica: WAL received and written to disk (`pg_last_wal_receive_lsn()`).
    pub received: Option<Lsn>,
    /// Replica: WAL replayed (`pg_last_wal_replay_lsn()`).
    pub replayed: Option<Lsn>,
}

/// A walsender's state (`pg_stat_replication.state`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum WalSenderState {
    /// Starting up.
    Startup,
    /// Catching up with the primary.
    Catchup,
    /// Streaming current WAL.
    Streaming,
    /// Sending a base backup.
    Backup,
    /// Stopping.
    Stopping,
    /// A state of a PostgreSQL version this crate does not know.
    Other(String),
}

impl From<&str> for WalSenderState {
    fn from(state: &str) -> Self {
        match state {
            "startup" => WalSenderState::Startup,
            "catchup" => WalSenderState::Catchup,
            "streaming" => WalSenderState::Streaming,
            "backup" => WalSenderState::Backup,
            "stopping" => WalSenderState::Stopping,
            other => WalSenderState::Other(other.to_owned()),
        }
    }
}

/// Whether the primary waits for a standby at commit (`pg_stat_replication.sync_state`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum StandbySyncState {
    /// Commits do not wait for it.
    Async,
    /// Would become synchronous if a synchronous standby failed (`FIRST` mode).
    Potential,
    /// Commits wait for it (`FIRST` mode).
    Sync,
    /// A candidate in a quorum (`ANY` mode): commits wait for enough of them.
    Quorum,
    /// A value this crate does not know; never counted as synchronous.
    Other(String),
}

impl From<&str> for StandbySyncState {
    fn from(state: &str) -> Self {
        match state {
            "async" => StandbySyncState::Async,
            "potential" => StandbySyncState::Potential,
            "sync" => StandbySyncState::Sync,
            "quorum" => StandbySyncState::Quorum,
            other => StandbySyncState::Other(other.to_owned()),
        }
    }
}

/// One replication connection to this server (a row of `pg_stat_replication`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ReplicationConnection {
    /// The client's `application_name`: a member's name for matriarch
    /// replicas, anything at all for other clients (pg_basebackup, pg_receivewal).
    pub application_name: String,
    /// What the walsender is doing.
    pub state: WalSenderState,
    /// Whether commits wait for this standby.
    pub sync_state: StandbySyncState,
    /// WAL sent to the standby.
    pub sent: Option<Lsn>,
    /// WAL the standby reported written.
    pub write: Option<Lsn>,
    /// WAL the standby reported flushed.
    pub flush: Option<Lsn>,
    /// WAL the standby reported replayed.
    pub replay: Option<Lsn>,
}

impl ReplicationConnection {
    /// The member this connection belongs to, if `application_name` is a
    /// valid member name (other clients' names are not).
    pub fn member(&self) -> Option<MemberName> {
        MemberName::new(self.application_name.as_str()).ok()
    }
}

/// Everything one [`crate::Postgres::observe`] call learned about the local server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalState {
    /// Whether it runs, and as what.
    pub server: ServerState,
    /// The current timeline; from `pg_controldata` when not running; `None`
    /// when unknown (empty data directory, server unavailable).
    pub timeline: Option<Timeline>,
    /// The database system identifier, read the same way as `timeline`.
    pub system_id: Option<SystemId>,
    /// WAL positions (only those that apply to the role and could be read).
    pub wal: WalPositions,
    /// The upstream that `primary_conninfo` points at, as matriarch last
    /// configured it (`start`, `follow`, `clone_replica`, `demote`, `rewind`);
    /// `None` when there is none or when `primary_conninfo` was not written by
    /// matriarch (the engine then re-points it with `follow`).
    pub upstream: Option<Upstream>,
    /// Replication connections to this server (empty unless it is running).
    pub replication: Vec<ReplicationConnection>,
    /// The `synchronous_standby_names` the server runs with; `None` when it
    /// is not running.
    pub synchronous_standby_names: Option<SyncStandbyNames>,
    /// A replica's WAL receiver is streaming from its upstream right now
    /// (`pg_stat_wal_receiver.status = 'streaming'`). A replica that follows
    /// an upstream but never streams may have diverged from it.
    pub receiving: bool,
    /// A replica's WAL replay is paused (`pg_is_wal_replay_paused()`);
    /// always `false` on a primary or a server that is not running.
    pub replay_paused: bool,
    /// When the last transaction replayed on a replica was committed on the
    /// primary (`pg_last_xact_replay_timestamp()`), in microseconds since
    /// the Unix epoch; `None` on a primary or before any replay.
    pub last_replay_unix_micros: Option<i64>,
    /// When the running server's postmaster started
    /// (`pg_postmaster_start_time()`), in microseconds since the Unix epoch.
    pub postmaster_start_unix_micros: Option<i64>,
    /// The running server's version (`server_version_num`: 150002 for 15.2).
    pub server_version_num: Option<u32>,
}

impl LocalState {
    /// The state of a server with an empty data directory: nothing known.
    pub fn empty() -> Self {
        LocalState {
            server: ServerState::NotRunning(DataDirectoryState::Empty),
            timeline: None,
            system_id: None,
            wal: WalPositions::default(),
            upstream: None,
            replication: Vec::new(),
            synchronous_standby_names: None,
            receiving: false,
            replay_paused: false,
            last_replay_unix_micros: None,
            postmaster_start_unix_micros: None,
            server_version_num: None,
        }
    }

    /// The role, if the server runs and accepts connections.
    pub fn role(&self) -> Option<PgRole> {
        match self.server {
            ServerState::Running(role) => Some(role),
            ServerState::Unavailable | ServerState::NotRunning(_) => None,
        }
    }

    /// Whether the server is gone without a clean shutdown.
    pub fn crashed(&self) -> bool {
        self.server == ServerState::NotRunning(DataDirectoryState::Crashed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_sync_state_is_kept_and_not_mistaken_for_sync() {
        assert_eq!(StandbySyncState::from("sync"), StandbySyncState::Sync);
        assert_eq!(StandbySyncState::from("quorum"), StandbySyncState::Quorum);
        assert_eq!(
            StandbySyncState::from("SYNC"),
            StandbySyncState::Other("SYNC".to_owned())
        );
        assert_eq!(WalSenderState::from("streaming"), WalSenderState::Streaming);
        assert_eq!(
            WalSenderState::from("rewinding"),
            WalSenderState::Other("rewinding".to_owned())
        );
    }

    #[test]
    fn only_valid_member_names_map_to_members() {
        let mut connection = ReplicationConnection {
            application_name: "pg-2".to_owned(),
            state: WalSenderState::Streaming,
            sync_state: StandbySyncState::Async,
            sent: None,
            write: None,
            flush: None,
            replay: None,
        };
        assert_eq!(connection.member(), Some(MemberName::new("pg-2").unwrap()));
        connection.application_name = "pg_basebackup 16".to_owned();
        assert_eq!(connection.member(), None);
    }

    #[test]
    fn an_unavailable_server_has_no_role_and_only_unclean_stops_are_crashes() {
        let mut state = LocalState::empty();
        assert_eq!(state.role(), None);
        assert!(!state.crashed());
        state.server = ServerState::Unavailable;
        assert_eq!(state.role(), None);
        state.server = ServerState::NotRunning(DataDirectoryState::Crashed);
        assert!(state.crashed());
        state.server = ServerState::Running(PgRole::Replica);
        assert_eq!(state.role(), Some(PgRole::Replica));
        assert!(!state.crashed());
    }
}
