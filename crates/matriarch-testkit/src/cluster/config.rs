//! A `matriarch run` node configuration (the Patroni-shaped YAML), written the
//! same way for the demo's loopback cluster and the chaos run's namespaces.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{IoContext, Result};

/// The DCS the agents use, with its client addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DcsHosts {
    /// etcd v3: `host:port` or `http://host:port` per member.
    Etcd(Vec<String>),
    /// ZooKeeper: `host:port` per server.
    ZooKeeper(Vec<String>),
}

/// The leader lock's timing (`bootstrap.dcs`); written in seconds, fractions
/// allowed (`retry_timeout: 1.5`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// How long the leader lock lives.
    pub ttl: Duration,
    /// How long an agent sleeps between HA loops.
    pub loop_wait: Duration,
    /// How long DCS and PostgreSQL operations are retried.
    pub retry_timeout: Duration,
}

impl Timing {
    /// A timing from seconds (fractions allowed).
    pub fn from_secs_f64(ttl: f64, loop_wait: f64, retry_timeout: f64) -> Timing {
        Timing {
            ttl: Duration::from_secs_f64(ttl),
            loop_wait: Duration::from_secs_f64(loop_wait),
            retry_timeout: Duration::from_secs_f64(retry_timeout),
        }
    }
}

impl Default for Timing {
    /// The daemon's defaults: ttl 4, loop_wait 1, retry_timeout 1.5.
    fn default() -> Self {
        Timing::from_secs_f64(4.0, 1.0, 1.5)
    }
}

/// The REST API's and PostgreSQL's users and passwords, the same on every node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The REST API user.
    pub api_user: String,
    /// Its password.
    pub api_password: String,
    /// The PostgreSQL superuser.
    pub pg_user: String,
    /// Its password.
    pub pg_password: String,
    /// The replication user's password (the user is `replicator`).
    pub replication_password: String,
}

impl Credentials {
    /// `admin` / `<prefix>-api` for the REST API, `postgres` / `<prefix>-pg` for
    /// PostgreSQL, `<prefix>-replication` for `replicator`.
    pub fn with_prefix(prefix: &str) -> Credentials {
        Credentials {
            api_user: "admin".into(),
            api_password: format!("{prefix}-api"),
            pg_user: "postgres".into(),
            pg_password: format!("{prefix}-pg"),
            replication_password: format!("{prefix}-replication"),
        }
    }
}

/// The DNS router of a node (`router.dns`): RFC 2136 updates signed with TSIG.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsRoute {
    /// BIND's address.
    pub server: SocketAddr,
    /// The zone.
    pub zone: String,
    /// The name the leader points at itself.
    pub writer: String,
    /// The TSIG key's name.
    pub key_name: String,
    /// Its algorithm (`hmac-sha256`).
    pub algorithm: String,
    /// Its secret, base64.
    pub secret: String,
}

/// One node's configuration file.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The first line's comment: who wrote the file.
    pub written_by: String,
    /// The cluster's name (the DCS scope).
    pub scope: String,
    /// The member's name.
    pub name: String,
    /// Where the REST API listens.
    pub api_listen: SocketAddr,
    /// Users and passwords.
    pub credentials: Credentials,
    /// The DCS.
    pub dcs: DcsHosts,
    /// The lock's timing.
    pub timing: Timing,
    /// More `bootstrap.dcs` lines (e.g. `synchronous_mode: true`), one setting each.
    pub bootstrap_dcs: Vec<String>,
    /// Where PostgreSQL listens.
    pub pg_listen: SocketAddr,
    /// The data directory.
    pub data_dir: PathBuf,
    /// PostgreSQL's programs.
    pub bin_dir: PathBuf,
    /// More `postgresql.parameters` (name, YAML value), after `fsync: 'off'` and
    /// `wal_keep_size: 128MB` (processes die in these clusters, not machines).
    pub pg_parameters: Vec<(String, String)>,
    /// The DNS router, if the leader updates a name.
    pub dns: Option<DnsRoute>,
}

impl AgentConfig {
    /// The YAML text.
    pub fn to_yaml(&self) -> String {
        let (dcs_key, hosts) = match &self.dcs {
            DcsHosts::Etcd(hosts) => ("etcd3", hosts),
            DcsHosts::ZooKeeper(hosts) => ("zookeeper", hosts),
        };
        let hosts = hosts
            .iter()
            .map(|h| format!("'{h}'"))
            .collect::<Vec<_>>()
            .join(", ");
        // Whole seconds print without a fraction (`5`), others with it (`1.5`).
        let [ttl, loop_wait, retry_timeout] = [
            self.timing.ttl,
            self.timing.loop_wait,
            self.timing.retry_timeout,
        ]
        .map(|d| d.as_secs_f64());
        let AgentConfig {
            written_by,
            scope,
            name,
            api_listen,
            credentials: c,
            ..
        } = self;
        let (api_user, api_password) = (&c.api_user, &c.api_password);
        let mut yaml = format!(
            "# matriarch node {name} (written by {written_by}).
scope: {scope}
name: {name}
log:
  level: info
restapi:
  listen: {api_listen}
  authentication:
    username: {api_user}
    password: {api_password}
{dcs_key}:
  hosts: [{hosts}]
bootstrap:
  initdb: [--no-sync]
  dcs:
    ttl: {ttl}
    loop_wait: {loop_wait}
    retry_timeout: {retry_timeout}
"
        );
        for line in &self.bootstrap_dcs {
            yaml.push_str(&format!("    {line}\n"));
        }
        let (listen, data_dir, bin_dir) = (
            self.pg_listen,
            self.data_dir.display(),
            self.bin_dir.display(),
        );
        let (pg_user, pg_password, replication) =
            (&c.pg_user, &c.pg_password, &c.replication_password);
        yaml.push_str(&format!(
            "postgresql:
  listen: {listen}
  data_dir: {data_dir}
  bin_dir: {bin_dir}
  authentication:
    superuser: {{username: {pg_user}, password: {pg_password}}}
    replication: {{username: replicator, password: {replication}}}
  parameters:
    fsync: 'off'
    wal_keep_size: 128MB
"
        ));
        for (name, value) in &self.pg_parameters {
            yaml.push_str(&format!("    {name}: {value}\n"));
        }
        if let Some(DnsRoute {
            server,
            zone,
            writer,
            key_name,
            algorithm,
            secret,
        }) = &self.dns
        {
            yaml.push_str(&format!(
                "router:
  dns:
    server: {server}
    zone: {zone}
    writer: {writer}
    ttl: 1
    tsig:
      key_name: {key_name}
      algorithm: {algorithm}
      secret: {secret}
"
            ));
        }
        yaml
    }

    /// Writes [`AgentConfig::to_yaml`] to `path`.
    pub fn write(&self, path: &Path) -> Result<()> {
        std::fs::write(path, self.to_yaml()).ctx(|| format!("writing {}", path.display()))
    }
}

/// A complete node configuration for the harness's own tests.
#[cfg(test)]
pub(crate) fn sample_config() -> AgentConfig {
    tests::config()
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn config() -> AgentConfig {
        AgentConfig {
            written_by: "a test".into(),
            scope: "demo".into(),
            name: "node2".into(),
            api_listen: "127.0.0.1:8008".parse().unwrap(),
            credentials: Credentials::with_prefix("demo"),
            dcs: DcsHosts::Etcd(vec!["http://127.0.0.1:2379".into()]),
            timing: Timing::default(),
            bootstrap_dcs: vec!["synchronous_mode: quorum".into()],
            pg_listen: "127.0.0.2:5432".parse().unwrap(),
            data_dir: "/tmp/n2/data".into(),
            bin_dir: "/usr/lib/postgresql/15/bin".into(),
            pg_parameters: vec![("log_line_prefix".into(), "'%n [%p] '".into())],
            dns: Some(DnsRoute {
                server: "127.0.0.1:53".parse().unwrap(),
                zone: "matriarch.test".into(),
                writer: "primary.matriarch.test".into(),
                key_name: "k".into(),
                algorithm: "hmac-sha256".into(),
                secret: "c2VjcmV0".into(),
            }),
        }
    }

    #[test]
    fn the_yaml_carries_every_setting_in_its_section() {
        let yaml = config().to_yaml();
        for expected in [
            "scope: demo\nname: node2\n",
            "  listen: 127.0.0.1:8008\n  authentication:\n    username: admin\n    password: demo-api\n",
            "etcd3:\n  hosts: ['http://127.0.0.1:2379']\n",
            "    ttl: 4\n    loop_wait: 1\n    retry_timeout: 1.5\n    synchronous_mode: quorum\npostgresql:\n",
            "  listen: 127.0.0.2:5432\n  data_dir: /tmp/n2/data\n",
            "superuser: {username: postgres, password: demo-pg}",
            "replication: {username: replicator, password: demo-replication}",
            "    wal_keep_size: 128MB\n    log_line_prefix: '%n [%p] '\nrouter:\n",
            "    writer: primary.matriarch.test\n",
            "      secret: c2VjcmV0\n",
        ] {
            assert!(yaml.contains(expected), "{expected:?} missing from\n{yaml}");
        }
    }

    #[test]
    fn a_fractional_retry_timeout_is_written_as_such() {
        let mut c = config();
        c.timing = Timing::from_secs_f64(4.0, 1.0, 1.5);
        let yaml = c.to_yaml();
        assert!(
            yaml.contains("    ttl: 4\n    loop_wait: 1\n    retry_timeout: 1.5\n"),
            "{yaml}"
        );
    }

    #[test]
    fn zookeeper_and_no_router() {
        let mut c = config();
        c.dcs = DcsHosts::ZooKeeper(vec!["127.1.0.21:2181".into(), "127.1.0.22:2181".into()]);
        c.dns = None;
        let yaml = c.to_yaml();
        assert!(yaml.contains("zookeeper:\n  hosts: ['127.1.0.21:2181', '127.1.0.22:2181']\n"));
        assert!(!yaml.contains("etcd3"));
        assert!(!yaml.contains("router:"));
    }
}
