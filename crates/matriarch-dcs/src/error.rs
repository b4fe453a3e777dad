//! What can go wrong talking to the DCS, in the terms the engine acts on.

use std::fmt;
use std::time::Duration;

use matriarch_model::{DecodeError, MemberName, Version};

/// The version a compare-and-swap expects a key to have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expected {
    /// The key must not exist.
    Absent,
    /// The key must exist at exactly this version.
    Version(Version),
    /// No condition.
    Any,
}

impl fmt::Display for Expected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expected::Absent => f.write_str("absent"),
            Expected::Version(version) => write!(f, "version {}", version.0),
            Expected::Any => f.write_str("any version"),
        }
    }
}

fn describe_found(version: &Option<Version>) -> String {
    match version {
        Some(version) => format!("version {}", version.0),
        None => "absent".to_owned(),
    }
}

fn describe_holder(holder: &Option<MemberName>) -> String {
    match holder {
        Some(name) => format!("it is held by {name}"),
        None => "it is free".to_owned(),
    }
}

/// Errors from a [`crate::Dcs`] call.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum DcsError {
    /// The DCS could not be reached. Nothing is known about the lock: the
    /// engine keeps its demotion deadline running.
    #[error("DCS unreachable ({backend}): {message}")]
    Unreachable {
        /// The backend (`etcd`, `zookeeper`, `memory`).
        backend: &'static str,
        /// What failed.
        message: String,
    },
    /// A call did not finish in time; treated like [`DcsError::Unreachable`].
    #[error("DCS call `{operation}` timed out after {after:?}")]
    Timeout {
        /// The operation.
        operation: &'static str,
        /// The bound that expired.
        after: Duration,
    },
    /// A compare-and-swap found another version; nothing was written.
    #[error("compare-and-swap on `{key}` failed: expected {expected}, found {}", describe_found(.found))]
    Conflict {
        /// The key, relative to the scope.
        key: String,
        /// What the caller expected.
        expected: Expected,
        /// What was there.
        found: Option<Version>,
    },
    /// A lock operation by a member that does not hold the lock.
    #[error("{member} does not hold the leader lock: {}", describe_holder(.holder))]
    LockNotHeld {
        /// Who asked.
        member: MemberName,
        /// Who holds it, when known and readable.
        holder: Option<MemberName>,
    },
    /// A stored value the operation depends on is malformed.
    #[error(transparent)]
    Malformed(#[from] DecodeError),
    /// The call itself was wrong (e.g. deleting the leader key through `delete`).
    #[error("invalid DCS request: {0}")]
    InvalidRequest(String),
    /// Any other backend failure.
    #[error("{backend} error: {message}")]
    Backend {
        /// The backend.
        backend: &'static str,
        /// What failed.
        message: String,
    },
}

impl DcsError {
    /// Whether the DCS could not be reached in time, so the state of the
    /// lock is unknown (as opposed to known to be lost).
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            DcsError::Unreachable { .. } | DcsError::Timeout { .. }
        )
    }
}
