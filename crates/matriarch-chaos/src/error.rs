//! The errors of a chaos run.

use std::time::Duration;

/// Why a chaos run could not be set up, carried out or evaluated.
///
/// A run that completes but finds violations is not an error: it returns a
/// [`crate::Report`] whose [`crate::Report::passed`] is false.
#[derive(Debug, thiserror::Error)]
pub enum ChaosError {
    /// The machine cannot host the run (not root, no `ip netns`, a program missing).
    #[error("cannot run the chaos test here: {0}")]
    Setup(String),
    /// An external command could not be started.
    #[error("cannot run `{command}`: {source}")]
    Spawn {
        /// The command line.
        command: String,
        /// Why.
        source: std::io::Error,
    },
    /// An external command exited with a failure.
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// How it ended.
        status: String,
        /// What it printed on stderr (trimmed).
        stderr: String,
    },
    /// A file or directory operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// Why it failed.
        source: std::io::Error,
    },
    /// A service of the testkit (the PostgreSQL OS user) failed.
    #[error("{context}: {source}")]
    Testkit {
        /// What was being done.
        context: String,
        /// Why it failed.
        source: matriarch_testkit::TestkitError,
    },
    /// Something did not happen in time.
    #[error("timed out after {waited:?} waiting for {what}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long.
        waited: Duration,
    },
    /// The client (the writer) failed in a way that stops the run.
    #[error("the client failed: {0}")]
    Client(String),
    /// An answer from a service could not be understood.
    #[error("cannot parse {what}: {detail}")]
    Parse {
        /// What was parsed.
        what: String,
        /// Why it failed.
        detail: String,
    },
    /// Ctrl-C or SIGTERM.
    #[error("interrupted")]
    Interrupted,
    /// A command-line argument is wrong.
    #[error("{0}")]
    Usage(String),
}

impl ChaosError {
    /// `command` could not be started.
    pub fn spawn(command: &str, source: std::io::Error) -> ChaosError {
        ChaosError::Spawn {
            command: command.to_owned(),
            source,
        }
    }

    /// An I/O error with what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> ChaosError {
        ChaosError::Io {
            context: context.into(),
            source,
        }
    }
}

impl From<matriarch_testkit::TestkitError> for ChaosError {
    /// A failure of the test kit's cluster harness (starting a program, writing
    /// a configuration).
    fn from(source: matriarch_testkit::TestkitError) -> ChaosError {
        ChaosError::Testkit {
            context: "the cluster harness".into(),
            source,
        }
    }
}

/// `Result` with [`ChaosError`].
pub type Result<T, E = ChaosError> = std::result::Result<T, E>;
