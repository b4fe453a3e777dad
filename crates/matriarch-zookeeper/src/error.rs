//! Errors of the ZooKeeper backend, and how ZooKeeper's errors map to
//! [`DcsError`].

use std::time::Duration;

use matriarch_dcs::DcsError;
use matriarch_model::ModelError;
use zookeeper_client as zk;

/// The backend name in [`DcsError`]s.
pub(crate) const BACKEND: &str = "zookeeper";

/// A [`crate::ZooKeeperConfig`] that cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// No server was given.
    #[error("ZooKeeper configuration: no servers given")]
    NoServers,
    /// A server address is not `host:port`.
    #[error("ZooKeeper configuration: invalid server `{server}`: {reason}")]
    InvalidServer {
        /// The address given.
        server: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The chroot is not an absolute ZooKeeper path.
    #[error("ZooKeeper configuration: invalid chroot `{chroot}`: {reason}")]
    InvalidChroot {
        /// The chroot given.
        chroot: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The digest credentials are unusable (the password is never shown).
    #[error("ZooKeeper configuration: invalid digest credentials: {0}")]
    InvalidAuth(String),
    /// A timeout is zero or out of range.
    #[error("ZooKeeper configuration: invalid {name} {value:?}")]
    InvalidTimeout {
        /// Which timeout.
        name: &'static str,
        /// Its value.
        value: Duration,
    },
    /// The namespace or scope cannot form paths.
    #[error("ZooKeeper configuration: {0}")]
    Layout(#[source] ModelError),
    /// The client was made outside a Tokio runtime.
    #[error("ZooKeeperDcs must be created inside a Tokio runtime")]
    NoRuntime,
}

/// Why [`crate::ZooKeeperDcs::connect`] failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ZooKeeperError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// No session could be established.
    #[error("could not open a ZooKeeper session for cluster `{scope}`: {source}")]
    Connect {
        /// The cluster scope.
        scope: String,
        /// What failed.
        #[source]
        source: DcsError,
    },
}

/// Maps an error of a ZooKeeper call made for `operation` (a short text
/// with the path) to the engine's terms.
pub(crate) fn map_zk(operation: &str, err: zk::Error) -> DcsError {
    match err {
        err if is_connection_failure(&err) => DcsError::Unreachable {
            backend: BACKEND,
            message: format!("{operation}: {err}"),
        },
        zk::Error::SessionExpired | zk::Error::SessionMoved | zk::Error::ClientClosed => {
            DcsError::Unreachable {
                backend: BACKEND,
                message: format!("{operation}: {err} (a new session is opened on the next call)"),
            }
        }
        other => DcsError::Backend {
            backend: BACKEND,
            message: format!("{operation}: {other}"),
        },
    }
}

/// Whether `err` says the connection failed (so the request may be retried
/// on the next connection): the client library reports transport failures of
/// in-flight requests (I/O errors, "no response from connection") as custom
/// errors, besides `ConnectionLoss`.
pub(crate) fn is_connection_failure(err: &zk::Error) -> bool {
    matches!(
        err,
        zk::Error::ConnectionLoss | zk::Error::NoHosts | zk::Error::Timeout | zk::Error::Custom(_)
    )
}

/// The error of a call that did not finish within `retry_timeout`.
pub(crate) fn timeout(operation: &'static str, after: Duration) -> DcsError {
    DcsError::Timeout { operation, after }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_problems_are_unreachable_and_others_are_backend_errors() {
        for err in [
            zk::Error::ConnectionLoss,
            zk::Error::SessionExpired,
            zk::Error::Timeout,
        ] {
            assert!(map_zk("get /x", err).is_unreachable());
        }
        let err = map_zk("create /service/pg/leader", zk::Error::NoAuth);
        assert!(matches!(err, DcsError::Backend { .. }), "{err}");
        assert!(err.to_string().contains("/service/pg/leader"), "{err}");
    }
}
