//! The demo's errors.

use std::time::Duration;

use matriarch_testkit::TestkitError;

/// Why the demo stopped early.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// Bad command line.
    #[error("{0}")]
    Usage(String),
    /// Something the demo needs is missing or unusable.
    #[error("{0}")]
    Setup(String),
    /// A service (etcd, BIND) did not start.
    #[error("cannot start {what}: {source}")]
    Service {
        /// Which service.
        what: &'static str,
        /// The test kit's error (it names the missing program and how to install it).
        #[source]
        source: TestkitError,
    },
    /// A file or process operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The cluster did not reach a state in time.
    #[error("{what} did not happen within {} s", waited.as_secs())]
    Timeout {
        /// What was waited for.
        what: String,
        /// How long.
        waited: Duration,
    },
    /// The failover did not complete within its bound.
    #[error("no failover within {} s of the crash: {missing}", bound.as_secs())]
    NoFailover {
        /// The bound.
        bound: Duration,
        /// The steps that did not happen.
        missing: String,
    },
    /// An agent exited on its own.
    #[error("the agent of {name} exited ({status})")]
    AgentExited {
        /// The member.
        name: String,
        /// Its exit status.
        status: String,
    },
    /// A SQL statement failed.
    #[error("SQL on {target} failed: {detail}")]
    Sql {
        /// Where.
        target: String,
        /// The error.
        detail: String,
    },
    /// Ctrl-C or SIGTERM.
    #[error("interrupted")]
    Interrupted,
}

impl DemoError {
    /// An [`DemoError::Io`] with context.
    pub fn io(what: impl Into<String>, source: std::io::Error) -> DemoError {
        DemoError::Io {
            what: what.into(),
            source,
        }
    }

    /// Whether the node logs help to understand the error.
    pub fn wants_logs(&self) -> bool {
        matches!(
            self,
            DemoError::Timeout { .. }
                | DemoError::NoFailover { .. }
                | DemoError::AgentExited { .. }
                | DemoError::Sql { .. }
        )
    }
}

impl From<TestkitError> for DemoError {
    /// A failure of the test kit's cluster harness (starting an agent, a service).
    fn from(source: TestkitError) -> DemoError {
        DemoError::Service {
            what: "the cluster",
            source,
        }
    }
}

/// The demo's result type.
pub type Result<T, E = DemoError> = std::result::Result<T, E>;
