//! How a [`super::PgController`] is set up.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use matriarch_model::{MemberName, ParameterValue, SystemId};

use crate::error::PostgresError;
use crate::secret::Credentials;

/// Where Debian's `postgresql-15` package installs the server programs.
pub const DEFAULT_BIN_DIR: &str = "/usr/lib/postgresql/15/bin";

/// The OS user the server programs run as when matriarch runs as root.
pub const DEFAULT_OS_USER: &str = "postgres";

/// Parameters matriarch sets itself; configuring them is an error.
const RESERVED_PARAMETERS: &[&str] = &[
    "listen_addresses",
    "port",
    "unix_socket_directories",
    "unix_socket_permissions",
    "primary_conninfo",
    "primary_slot_name",
    "synchronous_standby_names",
    "data_directory",
    "config_file",
    "hba_file",
    "ident_file",
    "include",
    "include_if_exists",
    "include_dir",
];

/// Deadlines of the controller's operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PgTimeouts {
    /// Opening one SQL connection (local or to an upstream).
    pub connect: Duration,
    /// A whole [`crate::Postgres::observe`] call.
    pub observe: Duration,
    /// Starting the server until it accepts connections.
    pub start: Duration,
    /// Stopping the server (per attempt; `demote` escalates after it).
    pub stop: Duration,
    /// `pg_promote` until the server runs read-write.
    pub promote: Duration,
    /// Short programs: initdb, pg_controldata, single-user crash recovery.
    pub command: Duration,
    /// How long a replica creation method (pg_basebackup, pgBackRest's
    /// restore, a custom command) may go without its data directory growing
    /// before it is killed and the next method tried. The whole copy has no
    /// time limit: a large database takes as long as it takes.
    pub clone_stall: Duration,
    /// pg_rewind (both its dry run and the rewind itself).
    pub rewind: Duration,
    /// Waiting for a reloaded setting to be in force.
    pub reload: Duration,
}

impl Default for PgTimeouts {
    fn default() -> Self {
        PgTimeouts {
            connect: Duration::from_secs(3),
            observe: Duration::from_secs(5),
            start: Duration::from_secs(60),
            stop: Duration::from_secs(60),
            promote: Duration::from_secs(60),
            command: Duration::from_secs(120),
            clone_stall: Duration::from_secs(300),
            rewind: Duration::from_secs(1800),
            reload: Duration::from_secs(10),
        }
    }
}

/// Everything a [`super::PgController`] needs to know about its member and
/// its PostgreSQL server. `Debug` is safe to log: passwords print as `***`.
#[derive(Clone, Debug, PartialEq)]
pub struct PgControllerConfig {
    /// The cluster's name (`scope`), passed to custom replica methods as
    /// `--scope`.
    pub scope: String,
    /// This member's name: its `application_name` when it streams from an
    /// upstream, and (through [`MemberName::slot_name`]) its replication
    /// slot's name there.
    pub member: MemberName,
    /// The data directory (`PGDATA`).
    pub data_dir: PathBuf,
    /// The directory of initdb, pg_ctl, pg_basebackup, pg_rewind,
    /// pg_controldata and postgres ([`DEFAULT_BIN_DIR`] by default).
    pub bin_dir: PathBuf,
    /// `listen_addresses`: where the server accepts TCP connections.
    pub listen_addresses: String,
    /// The server's port (TCP and the Unix socket's name).
    pub port: u16,
    /// `unix_socket_directories`: the one directory of the server's Unix
    /// socket; the controller connects through it.
    pub socket_dir: PathBuf,
    /// The server log pg_ctl appends to; `None` for `<data_dir>.log` next to
    /// the data directory (outside it, so base backups do not copy it).
    pub server_log: Option<PathBuf>,
    /// The superuser the controller connects as (through the socket).
    pub superuser: Credentials,
    /// The role replicas stream and take base backups as.
    pub replication: Credentials,
    /// The role pg_rewind connects to a source as; `None` for the superuser.
    pub rewind: Option<Credentials>,
    /// PostgreSQL parameters written to the managed configuration file on
    /// every start (the dynamic configuration's `postgresql.parameters`).
    /// The parameters matriarch sets itself (`port`, `listen_addresses`,
    /// `primary_conninfo`, `synchronous_standby_names`, ...) are refused.
    pub parameters: BTreeMap<String, ParameterValue>,
    /// The OS user the server programs run as when this process runs as
    /// root ([`DEFAULT_OS_USER`] by default); files the controller writes
    /// belong to it. Otherwise they run as the current user.
    pub os_user: String,
    /// The cluster's system identifier, once known (the `initialize` key):
    /// a data directory or clone source with another identifier is refused.
    pub expected_system_id: Option<SystemId>,
    /// Extra `initdb` arguments (e.g. `--no-sync` for tests, `--locale=C`).
    pub initdb_args: Vec<String>,
    /// `pg_hba.conf` lines (first match wins), written before matriarch's own
    /// whenever the managed configuration is (start, reload, clone, ...);
    /// empty: the file is left as it is. See [`super::PgController::set_auth_lines`].
    pub pg_hba: Vec<String>,
    /// `pg_ident.conf` lines, written likewise; empty: the file is left as it is.
    pub pg_ident: Vec<String>,
    /// Deadlines.
    pub timeouts: PgTimeouts,
    /// How a replica is created, in order (Patroni's
    /// `create_replica_methods`); `[basebackup]` by default.
    pub replica_methods: Vec<crate::ReplicaMethod>,
    /// The pgBackRest repository, if the cluster has one: needed by
    /// [`crate::ReplicaMethod::PgBackRest`] and the backup commands.
    pub pgbackrest: Option<crate::PgBackRestConfig>,
}

impl PgControllerConfig {
    /// A configuration with the defaults: the Debian bin directory, the
    /// `postgres` OS user, listening on `127.0.0.1`, the server log next to
    /// the data directory, pg_rewind as the superuser, no parameters, and the
    /// default timeouts.
    pub fn new(
        member: MemberName,
        data_dir: impl Into<PathBuf>,
        port: u16,
        socket_dir: impl Into<PathBuf>,
        superuser: Credentials,
        replication: Credentials,
    ) -> Self {
        PgControllerConfig {
            scope: String::new(),
            member,
            data_dir: data_dir.into(),
            bin_dir: PathBuf::from(DEFAULT_BIN_DIR),
            listen_addresses: "127.0.0.1".to_owned(),
            port,
            socket_dir: socket_dir.into(),
            server_log: None,
            superuser,
            replication,
            rewind: None,
            parameters: BTreeMap::new(),
            os_user: DEFAULT_OS_USER.to_owned(),
            expected_system_id: None,
            initdb_args: Vec::new(),
            pg_hba: Vec::new(),
            pg_ident: Vec::new(),
            timeouts: PgTimeouts::default(),
            replica_methods: vec![crate::ReplicaMethod::Basebackup {
                options: Vec::new(),
            }],
            pgbackrest: None,
        }
    }

    /// The credentials pg_rewind uses.
    pub(crate) fn rewind_credentials(&self) -> &Credentials {
        self.rewind.as_ref().unwrap_or(&self.superuser)
    }

    /// The server log file.
    pub(crate) fn server_log_path(&self) -> PathBuf {
        match &self.server_log {
            Some(path) => path.clone(),
            None => {
                let mut name = self.data_dir.as_os_str().to_owned();
                name.push(".log");
                PathBuf::from(name)
            }
        }
    }

    /// Checks what can be checked without PostgreSQL.
    pub(crate) fn validate(&self) -> Result<(), PostgresError> {
        let invalid = |reason: String| Err(PostgresError::InvalidConfig { reason });
        if !self.data_dir.is_absolute() {
            return invalid(format!(
                "the data directory {} must be an absolute path",
                self.data_dir.display()
            ));
        }
        if !self.socket_dir.is_absolute() {
            return invalid(format!(
                "the socket directory {} must be an absolute path",
                self.socket_dir.display()
            ));
        }
        if self.port == 0 {
            return invalid("the port must not be 0".to_owned());
        }
        for (what, text) in [
            ("listen_addresses", self.listen_addresses.as_str()),
            (
                "the socket directory",
                self.socket_dir.to_str().unwrap_or("\n"),
            ),
            ("the superuser name", self.superuser.username.as_str()),
            (
                "the replication user name",
                self.replication.username.as_str(),
            ),
            (
                "the rewind user name",
                self.rewind_credentials().username.as_str(),
            ),
        ] {
            if text.is_empty() || text.contains(['\n', '\r', '\0']) {
                return invalid(format!("{what} is empty, not UTF-8 or holds a line break"));
            }
        }
        for (name, value) in &self.parameters {
            check_parameter(name, value)?;
        }
        super::auth_lines::check_lines("pg_hba", &self.pg_hba)?;
        super::auth_lines::check_lines("pg_ident", &self.pg_ident)?;
        if self.replica_methods.is_empty() {
            return invalid("create_replica_methods is empty".to_owned());
        }
        let restores = self
            .replica_methods
            .iter()
            .any(|m| matches!(m, crate::ReplicaMethod::PgBackRest { .. }));
        if restores && self.pgbackrest.is_none() {
            return invalid(
                "the pgbackrest replica method needs a pgBackRest repository (the pgbackrest section)"
                    .to_owned(),
            );
        }
        if let Some(backrest) = &self.pgbackrest {
            backrest.validate().or_else(invalid)?;
        }
        Ok(())
    }
}

/// Checks a user parameter: a name PostgreSQL could know, not one that
/// matriarch manages, and a value a configuration file can hold.
///
/// [`PostgresError::InvalidConfig`] names the parameter and what is wrong.
pub fn check_parameter(name: &str, value: &ParameterValue) -> Result<(), PostgresError> {
    let valid_name = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
        && !name.starts_with(|c: char| c.is_ascii_digit());
    if !valid_name {
        return Err(PostgresError::InvalidConfig {
            reason: format!("{name:?} is not a PostgreSQL parameter name"),
        });
    }
    if RESERVED_PARAMETERS.contains(&name.to_ascii_lowercase().as_str()) {
        return Err(PostgresError::InvalidConfig {
            reason: format!("parameter {name} is managed by matriarch and cannot be configured"),
        });
    }
    if let ParameterValue::Text(text) = value {
        if text.contains(['\n', '\r', '\0']) {
            return Err(PostgresError::InvalidConfig {
                reason: format!("the value of parameter {name} holds a line break"),
            });
        }
    }
    if let ParameterValue::Real(real) = value {
        if !real.is_finite() {
            return Err(PostgresError::InvalidConfig {
                reason: format!("the value of parameter {name} is not a finite number"),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> PgControllerConfig {
        PgControllerConfig::new(
            MemberName::new("pg-1").unwrap(),
            "/var/lib/pg/data",
            5432,
            "/run/pg",
            Credentials::new("postgres", "a"),
            Credentials::new("replicator", "b"),
        )
    }

    #[test]
    fn reserved_and_malformed_parameters_are_refused() {
        let mut c = config();
        assert!(c.validate().is_ok());
        c.parameters
            .insert("port".to_owned(), ParameterValue::Integer(1));
        assert!(c.validate().unwrap_err().to_string().contains("managed"));
        c.parameters.clear();
        c.parameters
            .insert("bad name".to_owned(), ParameterValue::Integer(1));
        assert!(c.validate().is_err());
        c.parameters.clear();
        c.parameters.insert(
            "work_mem".to_owned(),
            ParameterValue::Text("1MB\nport=1".to_owned()),
        );
        assert!(c.validate().is_err());
    }

    #[test]
    fn server_log_defaults_next_to_the_data_directory() {
        assert_eq!(
            config().server_log_path(),
            PathBuf::from("/var/lib/pg/data.log")
        );
    }
}
