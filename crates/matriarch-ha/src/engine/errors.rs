//! The engine's errors: what its helpers report (the write fence), what a
//! restart through the REST API answers, and why an action of a plan failed.

use std::time::Duration;

use matriarch_dcs::DcsError;
use matriarch_model::MemberName;
use matriarch_postgres::PostgresError;
use matriarch_router::RouterError;

/// The source of an error a [`crate::Fence`] implementation passes on as it is
/// (an I/O error, a watchdog device's own error type).
pub type BoxedError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a write fence could not be armed or disarmed. An `arm` that fails
/// makes the engine give up the leader lock: this node may not lead unguarded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FenceError {
    /// The fence process died; the PostgreSQL it guarded died with it.
    #[error("the write fence process died (PostgreSQL died with it)")]
    Died,
    /// The pipe to the fence is closed (it is being shut down).
    #[error("the pipe to the write fence is closed")]
    PipeClosed,
    /// Writing the command to the fence failed: it is gone.
    #[error("could not send {command:?} to the write fence: {source}")]
    Send {
        /// The command (`arm`, `disarm`).
        command: &'static str,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A fence found dead could not be replaced.
    #[error("could not start a new write fence: {source}")]
    Restart {
        /// Why it did not start.
        #[source]
        source: BoxedError,
    },
    /// The watchdog device failed (or could not be opened).
    #[error("the watchdog failed: {source}")]
    Watchdog {
        /// The device's error.
        #[source]
        source: BoxedError,
    },
    /// Both fences of a combined fence failed.
    #[error("{first}; {second}")]
    Both {
        /// The process fence's error.
        first: Box<FenceError>,
        /// The watchdog's error.
        second: Box<FenceError>,
    },
}

/// A PostgreSQL operation the engine bounds by a timeout did not succeed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PostgresCallError {
    /// PostgreSQL (or its controller) refused or failed.
    #[error(transparent)]
    Failed(#[from] PostgresError),
    /// No answer in time.
    #[error("PostgreSQL did not answer within {after:?}")]
    Timeout {
        /// The bound.
        after: Duration,
    },
}

/// Why a restart asked through [`crate::RestartHandle`] did not happen.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RestartError {
    /// The engine is not running (stopped, or not started yet).
    #[error("the HA engine is not running")]
    EngineGone,
    /// The engine did not carry it out in time.
    #[error("the HA engine did not restart PostgreSQL within {0:?}")]
    Timeout(Duration),
    /// Refused; nothing was changed.
    #[error("not restarted: {0}")]
    Refused(RestartRefusal),
    /// Stopping or starting failed; the engine decides what runs next.
    #[error("restart failed: {0}")]
    Failed(RestartFailure),
}

/// Why a restart was refused (nothing was changed).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RestartRefusal {
    /// Another restart request is already waiting for the engine.
    #[error("another restart is waiting")]
    AnotherWaiting,
    /// A bootstrap, clone or rewind is running.
    #[error("a bootstrap, clone or rewind is running")]
    LongActionRunning,
    /// This primary does not hold the leader lock.
    #[error("this primary does not hold the leader lock ({reason})")]
    NotLeader {
        /// The last decision's reason.
        reason: String,
    },
    /// The lock could not be renewed with the write fence armed.
    #[error("the leader lock could not be renewed with the write fence armed")]
    LockNotRenewed,
    /// The replica's upstream has no known connection address.
    #[error("no connection address for the upstream {upstream}")]
    NoUpstreamAddress {
        /// The upstream.
        upstream: MemberName,
    },
    /// PostgreSQL is not running.
    #[error("PostgreSQL is not running")]
    NotRunning,
    /// PostgreSQL's state is unknown.
    #[error("PostgreSQL's state is unknown")]
    StateUnknown,
}

/// Why a restart that began did not complete.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RestartFailure {
    /// Stopping PostgreSQL failed.
    #[error("stopping PostgreSQL: {0}")]
    Stop(#[source] PostgresCallError),
    /// Starting PostgreSQL failed.
    #[error("starting PostgreSQL: {0}")]
    Start(#[source] PostgresCallError),
    /// Stopped, then the lock could not be renewed: no primary is started.
    #[error("stopped, then the leader lock could not be renewed with the write fence armed: not starting a primary")]
    LockLostWhileStopped,
}

/// Why one action of a plan failed (the plan stops there; logged).
#[derive(Debug, thiserror::Error)]
pub(crate) enum ActionError {
    /// The DCS refused or did not answer.
    #[error(transparent)]
    Dcs(#[from] DcsError),
    /// PostgreSQL refused or did not answer.
    #[error(transparent)]
    Postgres(#[from] PostgresCallError),
    /// A router refused or did not answer.
    #[error(transparent)]
    Router(#[from] RouterError),
    /// The write fence could not be armed: the lock was given up.
    #[error("could not arm the write fence: {0}")]
    Fence(#[from] FenceError),
    /// Another member won the race for the lock.
    #[error("another member holds the lock")]
    LockTaken,
    /// The lock is no longer ours.
    #[error("lock lost")]
    LockLost,
    /// A member's record has no usable connection address.
    #[error("no connection address for {member}")]
    NoAddress {
        /// The member.
        member: MemberName,
    },
    /// Long actions are started by the loop, not executed in line.
    #[error("long actions run in the background")]
    RunsInBackground,
}
