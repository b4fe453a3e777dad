//! Patroni 4.1 from the venv `cargo xtask deps` makes (`target/patroni-venv`):
//! a member's YAML file for loopback, its agent as a [`Supervised`] process run
//! as PostgreSQL's OS user, and `patronictl`. Used by the migration test
//! (Patroni and matriarch on the same hosts) and by the failover benchmark's
//! side-by-side runs ([`super::AgentKind::Patroni`]).

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use super::agent::Supervised;
use super::config::{Credentials, Timing};
use crate::error::{IoContext, Result, TestkitError};
use crate::postgres::PgOsUser;

/// Patroni's smallest legal timing (Patroni 4.1's validator: ttl >= 20,
/// loop_wait >= 1, retry_timeout >= 3).
pub const PATRONI_MIN_TIMING: Timing = Timing {
    ttl: Duration::from_secs(20),
    loop_wait: Duration::from_secs(1),
    retry_timeout: Duration::from_secs(3),
};

/// Patroni's default timing: ttl 30, loop_wait 10, retry_timeout 10.
pub const PATRONI_DEFAULT_TIMING: Timing = Timing {
    ttl: Duration::from_secs(30),
    loop_wait: Duration::from_secs(10),
    retry_timeout: Duration::from_secs(10),
};

/// The Patroni venv: `$MATRIARCH_PATRONI_VENV`, else
/// `<workspace>/target/patroni-venv`; an error saying to run `cargo xtask deps`
/// when it has no `bin/patroni`.
pub fn patroni_venv() -> Result<PathBuf> {
    let venv = std::env::var_os("MATRIARCH_PATRONI_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            super::setup::workspace_root()
                .join("target")
                .join("patroni-venv")
        });
    let program = venv.join("bin").join("patroni");
    if program.is_file() {
        Ok(venv)
    } else {
        Err(TestkitError::MissingProgram {
            program: "patroni".into(),
            path: program,
        })
    }
}

/// One Patroni member's configuration file, for a cluster on loopback.
#[derive(Debug, Clone)]
pub struct PatroniConfig {
    /// The cluster's name (`scope`; the leader key is `/service/<scope>/leader`).
    pub scope: String,
    /// The member's name.
    pub name: String,
    /// Where the REST API listens (also its connect address).
    pub api_listen: SocketAddr,
    /// Users and passwords (the REST API's also for `patronictl`).
    pub credentials: Credentials,
    /// etcd's client addresses, `host:port` each.
    pub etcd_hosts: Vec<String>,
    /// `bootstrap.dcs` timing.
    pub timing: Timing,
    /// More `bootstrap.dcs` lines (e.g. `maximum_lag_on_failover: 104857600`).
    pub bootstrap_dcs: Vec<String>,
    /// Where PostgreSQL listens (also its connect address).
    pub pg_listen: SocketAddr,
    /// The data directory.
    pub data_dir: PathBuf,
    /// PostgreSQL's programs.
    pub bin_dir: PathBuf,
    /// Where the member's own files go: its Unix socket, its `.pgpass`.
    pub node_dir: PathBuf,
    /// More `postgresql.parameters` (name, YAML value), after `fsync: 'off'`,
    /// `wal_keep_size: 128MB` and the socket directory: the same settings as
    /// the loopback cluster's matriarch nodes.
    pub pg_parameters: Vec<(String, String)>,
}

impl PatroniConfig {
    /// The YAML text.
    pub fn to_yaml(&self) -> String {
        let PatroniConfig {
            scope,
            name,
            api_listen,
            credentials: c,
            timing,
            pg_listen,
            ..
        } = self;
        let hosts = self.etcd_hosts.join(",");
        let (api_user, api_password) = (&c.api_user, &c.api_password);
        let mut yaml = format!(
            "# Patroni member {name} (written by matriarch-testkit).
scope: {scope}
namespace: /service/
name: {name}
log:
  level: INFO
restapi:
  listen: {api_listen}
  connect_address: {api_listen}
  authentication:
    username: {api_user}
    password: {api_password}
ctl:
  authentication:
    username: {api_user}
    password: {api_password}
etcd3:
  hosts: {hosts}
bootstrap:
  initdb:
    - encoding: UTF8
    - no-sync
  dcs:
    ttl: {ttl}
    loop_wait: {loop_wait}
    retry_timeout: {retry_timeout}
    postgresql:
      use_pg_rewind: true
",
            // Patroni's validator takes whole seconds.
            ttl = timing.ttl.as_secs(),
            loop_wait = timing.loop_wait.as_secs(),
            retry_timeout = timing.retry_timeout.as_secs(),
        );
        for line in &self.bootstrap_dcs {
            yaml.push_str(&format!("    {line}\n"));
        }
        yaml.push_str(&format!(
            "postgresql:
  listen: {pg_listen}
  connect_address: {pg_listen}
  data_dir: {data_dir}
  bin_dir: {bin_dir}
  pgpass: {pgpass}
  authentication:
    superuser:
      username: {pg_user}
      password: {pg_password}
    replication:
      username: replicator
      password: {replication}
  parameters:
    fsync: 'off'
    wal_keep_size: 128MB
    unix_socket_directories: {socket_dir}
",
            data_dir = self.data_dir.display(),
            bin_dir = self.bin_dir.display(),
            pgpass = self.node_dir.join("patroni.pgpass").display(),
            pg_user = c.pg_user,
            pg_password = c.pg_password,
            replication = c.replication_password,
            socket_dir = self.node_dir.display(),
        ));
        for (name, value) in &self.pg_parameters {
            yaml.push_str(&format!("    {name}: {value}\n"));
        }
        yaml.push_str(
            "  pg_hba:
    - local all all trust
    - host all all 127.0.0.0/8 scram-sha-256
    - host replication replicator 127.0.0.0/8 scram-sha-256
",
        );
        yaml
    }

    /// Writes [`PatroniConfig::to_yaml`] to `path`, owned by `user` (Patroni
    /// runs as that user and reads it).
    pub fn write(&self, path: &Path, user: &PgOsUser) -> Result<()> {
        std::fs::write(path, self.to_yaml()).ctx(|| format!("writing {}", path.display()))?;
        user.chown(path)
    }
}

impl Supervised {
    /// Patroni on the file `yaml` (from the venv `venv`), run as `user`,
    /// appending to `log`; not started.
    pub fn patroni(venv: &Path, yaml: &Path, log: PathBuf, user: &PgOsUser) -> Supervised {
        let argv: Vec<OsString> = vec![venv.join("bin").join("patroni").into(), yaml.into()];
        Supervised::new(argv, log).run_as(user.clone())
    }
}

/// `patronictl -c <yaml> ARGS` from the venv `venv` (the file's `ctl`
/// section has the REST API's credentials), with its output.
pub fn patronictl(venv: &Path, yaml: &Path, args: &[&str]) -> Result<Output> {
    let mut cmd = Command::new(venv.join("bin").join("patronictl"));
    cmd.arg("-c").arg(yaml).args(args).stdin(Stdio::null());
    let what = crate::process::describe(&cmd);
    cmd.output().ctx(|| format!("running `{what}`"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_yaml_has_the_members_addresses_timing_and_settings() {
        let config = PatroniConfig {
            scope: "bench".into(),
            name: "node2".into(),
            api_listen: "127.0.0.1:8009".parse().unwrap(),
            credentials: Credentials::with_prefix("t"),
            etcd_hosts: vec!["127.0.0.1:2379".into()],
            timing: PATRONI_MIN_TIMING,
            bootstrap_dcs: vec!["maximum_lag_on_failover: 104857600".into()],
            pg_listen: "127.0.0.2:5433".parse().unwrap(),
            data_dir: "/tmp/x/node2/data".into(),
            bin_dir: "/usr/lib/postgresql/15/bin".into(),
            node_dir: "/tmp/x/node2".into(),
            pg_parameters: vec![("shared_buffers".into(), "1GB".into())],
        };
        let yaml = config.to_yaml();
        for line in [
            "  connect_address: 127.0.0.1:8009\n",
            "  hosts: 127.0.0.1:2379\n",
            "    ttl: 20\n    loop_wait: 1\n    retry_timeout: 3\n",
            "    maximum_lag_on_failover: 104857600\n",
            "  connect_address: 127.0.0.2:5433\n",
            "    unix_socket_directories: /tmp/x/node2\n    shared_buffers: 1GB\n  pg_hba:\n",
            "      password: t-replication\n",
        ] {
            assert!(yaml.contains(line), "{line:?} missing from\n{yaml}");
        }
    }
}
