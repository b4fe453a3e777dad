//! The daemon's errors.

use std::path::PathBuf;

/// A configuration that cannot be used. Messages name the key.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConfigError {
    /// The file could not be read.
    #[error("cannot read the configuration file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The YAML is malformed, has an unknown key or a wrong type (the message
    /// carries the key path, line and column).
    #[error("invalid configuration: {0}")]
    Yaml(String),
    /// An environment override does not fit.
    #[error("invalid environment override ({vars}): {message}")]
    Env {
        /// The variables set.
        vars: String,
        /// What is wrong.
        message: String,
    },
    /// A setting has a wrong value.
    #[error("invalid configuration: `{key}`: {message}")]
    Invalid {
        /// The key, dotted.
        key: String,
        /// What is wrong.
        message: String,
    },
}

impl ConfigError {
    /// A wrong value for `key`.
    pub(crate) fn invalid(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key: key.into(),
            message: message.into(),
        }
    }

    /// A required key that is missing.
    pub(crate) fn missing(key: &str, env: &str) -> Self {
        ConfigError::invalid(key, format!("missing: set `{key}` in the file or {env}"))
    }

    /// A YAML parse error.
    pub(crate) fn yaml(err: serde_norway::Error) -> Self {
        ConfigError::Yaml(err.to_string())
    }
}

/// Why the daemon could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DaemonError {
    /// The configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The DCS client could not be built.
    #[error("DCS: {0}")]
    Dcs(String),
    /// The PostgreSQL controller could not be built.
    #[error("PostgreSQL: {0}")]
    Postgres(String),
    /// A router could not be built.
    #[error("router {router}: {message}")]
    Router {
        /// Which router.
        router: &'static str,
        /// What failed.
        message: String,
    },
    /// The REST API could not start.
    #[error("REST API on {addr}: {message}")]
    RestApi {
        /// The listen address.
        addr: String,
        /// What failed.
        message: String,
    },
    /// Another live agent already uses this member name.
    #[error(
        "member name {name:?} is already in use by a running agent at {api_url} (members/{name} in the DCS); \
         give this node another `name`"
    )]
    DuplicateName {
        /// The name.
        name: String,
        /// The other agent's API.
        api_url: String,
    },
    /// Another agent holds the data directory's lock file: it runs this
    /// data directory's PostgreSQL, which this agent must not touch.
    #[error(
        "data directory {} is in use by another matriarch agent (pid {holder}): \
         lock {} is held; check `postgresql.data_dir` in this node's configuration",
        data_dir.display(), lock.display()
    )]
    DataDirLocked {
        /// The data directory.
        data_dir: std::path::PathBuf,
        /// The lock file.
        lock: std::path::PathBuf,
        /// The pid the lock file names (as written by its holder), or `?`.
        holder: String,
    },
    /// The data directory's lock file could not be created or locked.
    #[error("data directory lock {}: {source}", lock.display())]
    DataDirLock {
        /// The lock file.
        lock: std::path::PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The write fence could not be started.
    #[error("write fence: {0}")]
    Fence(String),
    /// Signal handling.
    #[error("signals: {0}")]
    Signals(std::io::Error),
}
