//! The node configuration file (`matriarch run --config node.yaml`), in
//! Patroni's shape where it makes sense, with `MATRIARCH_*` environment
//! overrides.
//!
//! Every section refuses unknown keys (except `tags`, which holds custom tags
//! for `/replica?tag_key=value`). [`NodeConfig::load`] parses, applies the
//! environment, then [`NodeConfig::validate`]s every setting; an error names
//! the key and what is wrong, and nothing is started.

mod backup;
mod bootstrap;
mod check;
pub(crate) mod check_all;
mod dcs;
mod duplicates;
mod dynamic;
mod dynamic_auth;
pub(crate) mod from_patroni;
mod postgresql;
pub(crate) mod replica_methods;
mod restapi;
mod router;
#[cfg(test)]
mod tests;
mod unknown_key;
mod watchdog;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use matriarch_model::{ClusterConfig, KeyLayout, MemberName, Tags};
use serde::Deserialize;

use crate::error::ConfigError;

pub(crate) use backup::PgBackRestSection;
pub(crate) use bootstrap::BootstrapConfig;
use dcs::{Etcd3Config, ZooKeeperSection};
use postgresql::PostgresqlSection;
use restapi::RestApiConfig;
use router::RouterSection;
use watchdog::WatchdogConfig;

pub(crate) use dynamic::{
    check_requested_config_keys, cluster_config_from_json, dynamic_config_from_json,
};
pub(crate) use dynamic_auth::cluster_auth_lines;
pub(crate) use postgresql::PgRoleConfig;
pub(crate) use restapi::IpRange;
pub(crate) use watchdog::WatchdogMode;

/// The whole node configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NodeConfig {
    /// The cluster's name (the DCS scope).
    #[serde(default)]
    pub scope: String,
    /// The DCS namespace (`/service/` by default).
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// This member's name, unique in the cluster.
    #[serde(default)]
    pub name: String,
    /// Logging.
    #[serde(default)]
    pub log: LogConfig,
    /// The REST API.
    #[serde(default)]
    pub restapi: RestApiConfig,
    /// etcd (v3 API) as the DCS.
    #[serde(default)]
    pub etcd3: Option<Etcd3Config>,
    /// ZooKeeper as the DCS.
    #[serde(default)]
    pub zookeeper: Option<ZooKeeperSection>,
    /// What a new cluster is created with.
    #[serde(default)]
    pub bootstrap: BootstrapConfig,
    /// The local PostgreSQL.
    #[serde(default, deserialize_with = "replica_methods::deserialize_section")]
    pub postgresql: Option<PostgresqlSection>,
    /// This member's tags.
    #[serde(default)]
    pub tags: Tags,
    /// Where clients are sent (none: clients use the REST health checks).
    #[serde(default)]
    pub router: RouterSection,
    /// Commands run on events.
    #[serde(default)]
    pub callbacks: CallbacksConfig,
    /// The Linux watchdog armed while this node leads (off by default).
    #[serde(default)]
    pub watchdog: WatchdogConfig,
    /// The pgBackRest repository: archiving, backups, replicas restored from it.
    #[serde(default)]
    pub pgbackrest: Option<PgBackRestSection>,
}

fn default_namespace() -> String {
    "/service/".to_owned()
}

/// Log output.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LogConfig {
    /// `text` or `json`.
    #[serde(default)]
    pub format: LogFormat,
    /// A `tracing` filter: `info`, `debug`, `matriarch=debug,info`.
    #[serde(default = "default_log_level")]
    pub level: String,
    /// Also write the log to `<dir>/matriarch.log` (stderr goes on): Patroni's
    /// `log.dir`. Applied at start, not on reload.
    #[serde(default)]
    pub dir: Option<PathBuf>,
    /// How many rotated files (`matriarch.log.1` ...) to keep besides the
    /// current one, as Patroni's `log.file_num`.
    #[serde(default = "default_log_file_num")]
    pub file_num: u32,
    /// The size in bytes past which the file is rotated, as Patroni's
    /// `log.file_size`.
    #[serde(default = "default_log_file_size")]
    pub file_size: u64,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            level: default_log_level(),
            dir: None,
            file_num: default_log_file_num(),
            file_size: default_log_file_size(),
        }
    }
}

fn default_log_level() -> String {
    "info".to_owned()
}

/// Patroni's default.
fn default_log_file_num() -> u32 {
    4
}

/// Patroni's default (25 MB).
fn default_log_file_size() -> u64 {
    25_000_000
}

/// The log line format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object a line.
    Json,
}

/// `callbacks:`: commands run with `<action> <role> <scope>`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CallbacksConfig {
    /// After PostgreSQL started (asynchronous).
    #[serde(default)]
    pub on_start: Option<PathBuf>,
    /// After PostgreSQL stopped (asynchronous).
    #[serde(default)]
    pub on_stop: Option<PathBuf>,
    /// After this member changed role (asynchronous).
    #[serde(default)]
    pub on_role_change: Option<PathBuf>,
    /// After a restart the agent performed (REST API, `ctl restart`, a
    /// scheduled restart) started PostgreSQL again, in place of `on_stop`
    /// and `on_start` (asynchronous).
    #[serde(default)]
    pub on_restart: Option<PathBuf>,
    /// After the agent reloaded PostgreSQL's configuration (asynchronous).
    #[serde(default)]
    pub on_reload: Option<PathBuf>,
    /// Before a promotion (synchronous): a non-zero exit cancels it.
    #[serde(default)]
    pub pre_promote: Option<PathBuf>,
}

/// Everything derived and checked from a [`NodeConfig`]: what the daemon
/// starts with.
#[derive(Clone, Debug)]
pub(crate) struct Validated {
    /// The member name.
    pub name: MemberName,
    /// The DCS layout.
    pub layout: KeyLayout,
    /// The dynamic configuration for a bootstrap.
    pub bootstrap_dcs: ClusterConfig,
    /// How a bootstrap makes the data directory (`bootstrap.method`).
    pub bootstrap_method: matriarch_postgres::BootstrapMethod,
    /// Where the REST API listens.
    pub restapi_listen: SocketAddr,
    /// `http(s)://host:port` of this member's API.
    pub api_url: String,
    /// Allowlist ranges.
    pub allowlist: Vec<IpRange>,
    /// PostgreSQL's listen host and port.
    pub pg_listen: (String, u16),
    /// `postgres://host:port/postgres`.
    pub conn_url: String,
    /// The DNS server address.
    pub dns_server: Option<SocketAddr>,
}

/// The environment overrides: variable, key, and how it applies.
pub(crate) const ENV_OVERRIDES: &[(&str, &str)] = &[
    ("MATRIARCH_SCOPE", "scope"),
    ("MATRIARCH_NAMESPACE", "namespace"),
    ("MATRIARCH_NAME", "name"),
    ("MATRIARCH_LOG_LEVEL", "log.level"),
    ("MATRIARCH_LOG_FORMAT", "log.format"),
    ("MATRIARCH_LOG_DIR", "log.dir"),
    ("MATRIARCH_RESTAPI_LISTEN", "restapi.listen"),
    (
        "MATRIARCH_RESTAPI_CONNECT_ADDRESS",
        "restapi.connect_address",
    ),
    (
        "MATRIARCH_RESTAPI_USERNAME",
        "restapi.authentication.username",
    ),
    (
        "MATRIARCH_RESTAPI_PASSWORD",
        "restapi.authentication.password",
    ),
    ("MATRIARCH_ETCD3_HOSTS", "etcd3.hosts"),
    ("MATRIARCH_ETCD3_USERNAME", "etcd3.username"),
    ("MATRIARCH_ETCD3_PASSWORD", "etcd3.password"),
    ("MATRIARCH_ZOOKEEPER_HOSTS", "zookeeper.hosts"),
    ("MATRIARCH_POSTGRESQL_LISTEN", "postgresql.listen"),
    (
        "MATRIARCH_POSTGRESQL_CONNECT_ADDRESS",
        "postgresql.connect_address",
    ),
    ("MATRIARCH_POSTGRESQL_DATA_DIR", "postgresql.data_dir"),
    ("MATRIARCH_POSTGRESQL_BIN_DIR", "postgresql.bin_dir"),
    (
        "MATRIARCH_SUPERUSER_USERNAME",
        "postgresql.authentication.superuser.username",
    ),
    (
        "MATRIARCH_SUPERUSER_PASSWORD",
        "postgresql.authentication.superuser.password",
    ),
    (
        "MATRIARCH_REPLICATION_USERNAME",
        "postgresql.authentication.replication.username",
    ),
    (
        "MATRIARCH_REPLICATION_PASSWORD",
        "postgresql.authentication.replication.password",
    ),
    (
        "MATRIARCH_REWIND_USERNAME",
        "postgresql.authentication.rewind.username",
    ),
    (
        "MATRIARCH_REWIND_PASSWORD",
        "postgresql.authentication.rewind.password",
    ),
];

/// Sets `path` (dotted) in a YAML mapping, creating mappings on the way.
fn set_path(root: &mut serde_norway::Value, path: &str, value: serde_norway::Value) {
    let mut node = root;
    for segment in path.split('.') {
        if !node.is_mapping() {
            *node = serde_norway::Value::Mapping(serde_norway::Mapping::new());
        }
        let serde_norway::Value::Mapping(map) = node else {
            return;
        };
        node = map
            .entry(serde_norway::Value::String(segment.to_owned()))
            .or_insert(serde_norway::Value::Null);
    }
    *node = value;
}
impl NodeConfig {
    /// Reads `path`, applies `env` overrides (`MATRIARCH_*`), and validates.
    pub(crate) fn load(
        path: &Path,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<(NodeConfig, Validated), ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, env)
    }

    /// Parses YAML text, applies overrides, validates.
    pub(crate) fn parse(
        text: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<(NodeConfig, Validated), ConfigError> {
        let config = Self::parse_unvalidated(text, env)?;
        let validated = config.validate()?;
        Ok((config, validated))
    }

    /// Parses YAML text and applies overrides, without validating (for
    /// `matriarch check`, which reports every error: see [`check_all`]).
    pub(crate) fn parse_unvalidated(
        text: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<NodeConfig, ConfigError> {
        let overrides: Vec<(&str, &str, String)> = ENV_OVERRIDES
            .iter()
            .filter_map(|(var, key)| env(var).map(|value| (*var, *key, value)))
            .collect();
        // Without overrides, parse as written: errors carry line and column and the key path.
        let config: NodeConfig = if overrides.is_empty() {
            serde_norway::from_str(text).map_err(|e| duplicates::yaml_error(text, e))?
        } else {
            let mut value: serde_norway::Value =
                serde_norway::from_str(text).map_err(|e| duplicates::yaml_error(text, e))?;
            if value.is_null() {
                value = serde_norway::Value::Mapping(serde_norway::Mapping::new());
            }
            for (_, key, raw) in &overrides {
                set_path(&mut value, key, serde_norway::Value::String(raw.clone()));
            }
            // A file may leave required keys to the environment (a container
            // image's file does); an error the file has on its own is still
            // reported with its line.
            match serde_norway::from_value(value) {
                Ok(config) => config,
                Err(err) => {
                    if let Err(as_written) = serde_norway::from_str::<NodeConfig>(text) {
                        return Err(duplicates::yaml_error(text, as_written));
                    }
                    let vars: Vec<&str> = overrides.iter().map(|(var, _, _)| *var).collect();
                    return Err(ConfigError::Env {
                        vars: vars.join(", "),
                        message: err.to_string(),
                    });
                }
            }
        };
        Ok(config)
    }

    /// The PostgreSQL section; `validate` guarantees it is there.
    pub(crate) fn pg(&self) -> Result<&PostgresqlSection, ConfigError> {
        self.postgresql
            .as_ref()
            .ok_or_else(|| ConfigError::invalid("postgresql", "missing section"))
    }

    /// Refuses a PostgreSQL outside the supported majors or one that does not
    /// match the data directory (see
    /// [`PostgresqlSection::check_postgres_version`]); returns the major
    /// version. `run` and `check` call it; a reload does not.
    pub(crate) fn check_postgres_version(&self) -> Result<u32, ConfigError> {
        self.pg()?.check_postgres_version()
    }

    /// This node's PostgreSQL parameters: `postgresql.parameters` and, with
    /// `pgbackrest.archive`, `archive_mode` and `archive_command`.
    pub(crate) fn local_parameters(
        &self,
    ) -> Result<std::collections::BTreeMap<String, matriarch_model::ParameterValue>, ConfigError>
    {
        let pg = self.pg()?;
        let mut parameters = pg.parameters.clone();
        if let Some(archive) = self
            .pgbackrest
            .as_ref()
            .and_then(|b| b.archive_parameters(&pg.data_dir))
        {
            parameters.extend(archive);
        }
        Ok(parameters)
    }
}
