//! The error type of the testkit.

use std::path::PathBuf;
use std::time::Duration;

/// Result type used throughout the testkit.
pub type Result<T, E = TestkitError> = std::result::Result<T, E>;

/// Everything that can go wrong while starting, driving or stopping a test service.
///
/// `Debug` prints the same text as `Display`, so `.unwrap()`/`.expect()` in a test
/// shows the full message (with the service's log tail) instead of a struct dump.
#[derive(thiserror::Error)]
pub enum TestkitError {
    /// A program the testkit needs is not installed.
    #[error(
        "program `{program}` is not installed (looked for {path}); run `cargo xtask deps` to install the test dependencies"
    )]
    MissingProgram {
        /// Short name of the missing program (e.g. `etcd`).
        program: String,
        /// Path (or description of the search) that was checked.
        path: PathBuf,
    },

    /// An I/O operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What the testkit was doing.
        context: String,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },

    /// A service did not become ready before its deadline.
    #[error("{service} did not become ready within {waited:?}: {detail}\n--- last lines of {service} log ---\n{log_tail}")]
    NotReady {
        /// Which service (e.g. `etcd e1`).
        service: String,
        /// How long the testkit waited.
        waited: Duration,
        /// The last readiness probe failure.
        detail: String,
        /// The last lines of the service's log.
        log_tail: String,
    },

    /// A service process exited while it was expected to run.
    #[error(
        "{service} exited unexpectedly ({status})\n--- last lines of {service} log ---\n{log_tail}"
    )]
    Exited {
        /// Which service.
        service: String,
        /// The exit status as text.
        status: String,
        /// The last lines of the service's log.
        log_tail: String,
    },

    /// A helper command ran but failed.
    #[error(
        "command `{command}` failed ({status})\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}"
    )]
    CommandFailed {
        /// The command line, for humans.
        command: String,
        /// The exit status as text.
        status: String,
        /// Captured standard output.
        stdout: String,
        /// Captured standard error.
        stderr: String,
    },

    /// Output of a program or server could not be understood.
    #[error("{context}: unexpected output: {detail}")]
    Parse {
        /// What was being parsed.
        context: String,
        /// What was wrong with it.
        detail: String,
    },

    /// A required OS user does not exist.
    #[error(
        "OS user `{user}` does not exist; run `cargo xtask deps` (as root it creates the user)"
    )]
    MissingUser {
        /// The user name.
        user: String,
    },

    /// An argument given to the testkit was invalid.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// The machine cannot host a test cluster: what is missing and how to get it.
    #[error("{0}")]
    Setup(String),
}

impl std::fmt::Debug for TestkitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)?;
        if let Some(source) = std::error::Error::source(self) {
            // Io's message already includes its source; show deeper causes only.
            let mut next = source.source();
            while let Some(cause) = next {
                write!(f, "\ncaused by: {cause}")?;
                next = cause.source();
            }
        }
        Ok(())
    }
}

impl TestkitError {
    /// Builds an [`TestkitError::Io`] with context.
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        TestkitError::Io {
            context: context.into(),
            source,
        }
    }
}

/// Adds context to `std::io::Result`s.
pub(crate) trait IoContext<T> {
    /// Attaches a description of what was being done.
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| TestkitError::io(context(), e))
    }
}
