//! The one error type of this crate.

use std::fmt;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

use matriarch_model::SystemId;

use crate::role::PgRole;

/// Which [`crate::Postgres`] operation an error comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Operation {
    /// [`crate::Postgres::observe`].
    Observe,
    /// [`crate::Postgres::bootstrap`].
    Bootstrap,
    /// [`crate::Postgres::clone_replica`].
    CloneReplica,
    /// [`crate::Postgres::start`].
    Start,
    /// [`crate::Postgres::stop`].
    Stop,
    /// [`crate::Postgres::promote`].
    Promote,
    /// [`crate::Postgres::demote`].
    Demote,
    /// [`crate::Postgres::follow`].
    Follow,
    /// [`crate::Postgres::rewind`].
    Rewind,
    /// [`crate::Postgres::set_synchronous_standby_names`].
    SetSynchronousStandbyNames,
    /// [`crate::PgController::reload`].
    Reload,
    /// [`crate::PgController::restart`].
    Restart,
    /// [`crate::Postgres::reconcile_slots`].
    ReconcileSlots,
    /// A pgBackRest command of [`crate::PgController`] (`stanza-create`,
    /// `backup`, `check`).
    Backup,
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Operation::Observe => "observe",
            Operation::Bootstrap => "bootstrap",
            Operation::CloneReplica => "clone replica",
            Operation::Start => "start",
            Operation::Stop => "stop",
            Operation::Promote => "promote",
            Operation::Demote => "demote",
            Operation::Follow => "follow",
            Operation::Rewind => "rewind",
            Operation::SetSynchronousStandbyNames => "set synchronous_standby_names",
            Operation::Reload => "reload",
            Operation::Restart => "restart",
            Operation::ReconcileSlots => "reconcile replication slots",
            Operation::Backup => "pgbackrest",
        })
    }
}

/// Everything that can go wrong while controlling the local PostgreSQL.
///
/// The variants are the cases the HA engine reacts to differently; each
/// carries enough context (operation, program, data directory) to be logged
/// as it is.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PostgresError {
    /// The operation needs a running server and there is none.
    #[error("cannot {operation}: PostgreSQL is not running")]
    NotRunning {
        /// What was attempted.
        operation: Operation,
    },
    /// The operation needs a stopped server (pg_rewind, for one) and it is running.
    #[error("cannot {operation}: PostgreSQL is running and must be stopped first")]
    StillRunning {
        /// What was attempted.
        operation: Operation,
    },
    /// The server runs in a role the operation does not change on its own
    /// (for example `start` as primary while it runs as a replica: changing
    /// role is `promote`'s or `demote`'s job).
    #[error("cannot {operation}: PostgreSQL is running as {running_as}")]
    RoleConflict {
        /// What was attempted.
        operation: Operation,
        /// The role the server runs in.
        running_as: PgRole,
    },
    /// The data directory holds no database cluster to start, promote or rewind.
    #[error("cannot {operation}: data directory {} holds no database cluster", data_dir.display())]
    NotInitialized {
        /// What was attempted.
        operation: Operation,
        /// The data directory.
        data_dir: PathBuf,
    },
    /// `bootstrap` or `clone_replica` found a data directory that is not empty;
    /// nothing was changed, so no existing data is ever overwritten.
    #[error("cannot {operation}: data directory {} is not empty", data_dir.display())]
    NotEmpty {
        /// What was attempted.
        operation: Operation,
        /// The data directory.
        data_dir: PathBuf,
    },
    /// The operation did not finish in time; what it changed so far is
    /// unknown, so the engine must `observe` before acting on the outcome.
    #[error("{operation} did not finish within {after:?}")]
    Timeout {
        /// What was attempted.
        operation: Operation,
        /// How long it was given.
        after: Duration,
    },
    /// A long program (a replica creation method) made no progress (its
    /// data directory stopped growing) for too long and was killed.
    #[error("{operation}: {program} made no progress for {after:?} and was stopped")]
    Stalled {
        /// What was attempted.
        operation: Operation,
        /// The program.
        program: String,
        /// How long it made no progress.
        after: Duration,
    },
    /// A PostgreSQL program (initdb, pg_ctl, pg_basebackup, pg_rewind, ...) failed.
    #[error("{operation}: {program} failed ({status}): {stderr_tail}")]
    CommandFailed {
        /// What was attempted.
        operation: Operation,
        /// The program that was run.
        program: String,
        /// How it ended.
        status: ExitStatus,
        /// The last lines it wrote to stderr (the error is almost always there).
        stderr_tail: String,
    },
    /// A SQL connection or query failed.
    #[error("{operation}: query failed while {context}: {message}")]
    Query {
        /// What was attempted.
        operation: Operation,
        /// What the query was for, e.g. "reading pg_stat_replication".
        context: String,
        /// The server's or driver's message.
        message: String,
    },
    /// A `synchronous_standby_names` value that cannot be used, either
    /// given to [`crate::SyncStandbyNames`] or read back from PostgreSQL.
    #[error("invalid synchronous_standby_names {input:?}: {reason}")]
    InvalidSyncStandbyNames {
        /// The rejected text (or the rendering of the rejected value).
        input: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Reading or writing a file under PostgreSQL's control failed.
    #[error("{operation}: {context}: {source}")]
    Io {
        /// What was attempted.
        operation: Operation,
        /// What was being done, e.g. "writing postgresql.auto.conf in /var/lib/pg".
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A PostgreSQL program is not where the configuration says it is.
    #[error("{operation}: PostgreSQL program {program} not found at {}; check the configured bin directory", path.display())]
    MissingProgram {
        /// What was attempted.
        operation: Operation,
        /// The program, e.g. `pg_ctl`.
        program: String,
        /// Where it was looked for.
        path: PathBuf,
    },
    /// The data directory belongs to another OS user than the one
    /// PostgreSQL runs as; nothing was changed in it.
    #[error(
        "cannot {operation}: data directory {} is owned by uid {owner_uid}, not by the PostgreSQL OS user {expected_user} (uid {expected_uid}); refusing to touch it",
        data_dir.display()
    )]
    ForeignDataDirectory {
        /// What was attempted.
        operation: Operation,
        /// The data directory.
        data_dir: PathBuf,
        /// Its owner.
        owner_uid: u32,
        /// The OS user PostgreSQL runs as.
        expected_user: String,
        /// That user's uid.
        expected_uid: u32,
    },
    /// A cluster (the local data directory, or a source to clone or rewind
    /// from) has another database system identifier than expected: it
    /// belongs to another cluster. Nothing was changed.
    #[error("{operation}: {context} has system identifier {found}, expected {expected}")]
    SystemIdMismatch {
        /// What was attempted.
        operation: Operation,
        /// Whose identifier differs, e.g. "data directory /var/lib/pg".
        context: String,
        /// The identifier expected (the cluster's).
        expected: SystemId,
        /// The identifier found.
        found: SystemId,
    },
    /// A removal (reinitialize, re-clone) was asked for a directory that does
    /// not hold a PostgreSQL cluster this member can prove is its own (no
    /// `PG_VERSION`, no readable `global/pg_control`, not a directory).
    /// Nothing was changed.
    #[error("{operation}: refusing to remove the contents of {data_dir}: {reason}; it does not hold this member's PostgreSQL cluster")]
    NotOurCluster {
        /// What was attempted.
        operation: Operation,
        /// The directory that was left alone.
        data_dir: PathBuf,
        /// Why it is not this member's cluster.
        reason: String,
    },
    /// The controller's configuration cannot be used (a parameter name or
    /// value PostgreSQL's configuration file cannot hold, a parameter that
    /// matriarch manages itself, an OS user that does not exist).
    #[error("invalid PostgreSQL control configuration: {reason}")]
    InvalidConfig {
        /// What is wrong.
        reason: String,
    },
    /// PostgreSQL could not write for lack of disk space ("No space left on
    /// device" in its log): it stopped or cannot start until space is freed.
    /// Retrying in place does not help; the engine reports the cause.
    #[error(
        "cannot {operation}: no space left on device ({}: {}){}",
        path.display(),
        free_bytes.map_or_else(|| "free space unknown".to_owned(), |free| format!("{free} bytes free")),
        if detail.is_empty() { String::new() } else { format!(": {detail}") }
    )]
    NoSpace {
        /// What was attempted.
        operation: Operation,
        /// The fullest of the data directory and its pg_wal.
        path: PathBuf,
        /// Bytes free there for PostgreSQL, if they could be read.
        free_bytes: Option<u64>,
        /// The server log line that says so.
        detail: String,
    },
    /// PostgreSQL did something the contract does not allow for, e.g. it
    /// reported a timeline that went backwards after a promotion.
    #[error("{operation}: unexpected: {context}: {message}")]
    Unexpected {
        /// What was attempted.
        operation: Operation,
        /// Where it was noticed.
        context: String,
        /// What was seen.
        message: String,
    },
}
