//! What the tests against real PostgreSQL share: a controller configuration
//! for a throwaway member, the bootstrap spec of its users, a superuser
//! client, and killing a server.

// Each test file uses only part of this module.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use matriarch_model::{MemberName, ParameterValue};
use matriarch_postgres::{
    BootstrapMethod, BootstrapSpec, Credentials, PgController, PgControllerConfig, PgTimeouts,
    Upstream,
};
use matriarch_testkit::{bin_dir, free_port, PgOsUser};
use tempfile::TempDir;
use tokio_postgres::{Client, NoTls};

/// One member: a controller over a throwaway directory. On drop the
/// server (if any) is killed before the directory is removed.
pub(crate) struct Node {
    pub(crate) name: MemberName,
    pub(crate) port: u16,
    pub(crate) ctl: PgController,
    pub(crate) dir: TempDir,
}

impl Drop for Node {
    fn drop(&mut self) {
        kill_postmaster(&self.data_dir(), libc::SIGKILL);
    }
}

impl Node {
    /// Member `name` with the configuration `config` makes for its
    /// directory (owned by the PostgreSQL OS user) and a free port.
    pub(crate) fn build(
        name: &str,
        config: impl FnOnce(&MemberName, &Path, u16) -> PgControllerConfig,
    ) -> Node {
        let user = PgOsUser::detect().expect("PostgreSQL OS user");
        let dir = user
            .tempdir(&format!("matriarch-{name}-"))
            .expect("tempdir");
        let member = MemberName::new(name).expect("member name");
        let config = config(&member, dir.path(), free_port().expect("free port"));
        let port = config.port;
        let ctl = PgController::new(config).expect("controller");
        Node {
            name: member,
            port,
            ctl,
            dir,
        }
    }

    /// Its data directory.
    pub(crate) fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Where replicas find it.
    pub(crate) fn upstream(&self) -> Upstream {
        Upstream {
            member: self.name.clone(),
            host: "127.0.0.1".to_owned(),
            port: self.port,
            standby_source: None,
        }
    }
}

/// The passwords of a test cluster's `postgres`, `replicator` and
/// `rewinder` users.
pub(crate) struct Passwords {
    pub(crate) superuser: &'static str,
    pub(crate) replication: &'static str,
    pub(crate) rewind: &'static str,
}

impl Passwords {
    /// The bootstrap spec that creates the three users with these passwords.
    pub(crate) fn spec(&self) -> BootstrapSpec {
        BootstrapSpec {
            superuser: Credentials::new("postgres", self.superuser),
            replication: Credentials::new("replicator", self.replication),
            rewind: Some(Credentials::new("rewinder", self.rewind)),
            parameters: BTreeMap::new(),
            pg_hba: Vec::new(),
            method: BootstrapMethod::Initdb,
        }
    }

    /// The configuration of member `name` on `port` with its data directory
    /// in `dir/data`: a small, unsynced server that retries replication every
    /// second, run as the tests' PostgreSQL OS user, with `extra` parameters
    /// on top.
    pub(crate) fn config(
        &self,
        name: &MemberName,
        dir: &Path,
        port: u16,
        extra: &[(&str, ParameterValue)],
    ) -> PgControllerConfig {
        let mut config = PgControllerConfig::new(
            name.clone(),
            dir.join("data"),
            port,
            dir,
            Credentials::new("postgres", self.superuser),
            Credentials::new("replicator", self.replication),
        );
        config.bin_dir = bin_dir();
        config.rewind = Some(Credentials::new("rewinder", self.rewind));
        config.os_user = PgOsUser::detect().expect("OS user").name().to_owned();
        config.initdb_args = ["--no-sync", "--locale=C", "-E", "UTF8"]
            .map(str::to_owned)
            .to_vec();
        let common = [
            ("fsync", ParameterValue::Bool(false)),
            ("shared_buffers", ParameterValue::Text("16MB".to_owned())),
            ("max_connections", ParameterValue::Integer(30)),
            ("wal_keep_size", ParameterValue::Text("64MB".to_owned())),
            (
                "wal_retrieve_retry_interval",
                ParameterValue::Text("1s".to_owned()),
            ),
        ];
        config.parameters = common
            .iter()
            .chain(extra)
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect();
        config.timeouts = PgTimeouts {
            start: Duration::from_secs(30),
            stop: Duration::from_secs(30),
            promote: Duration::from_secs(30),
            command: Duration::from_secs(60),
            clone_stall: Duration::from_secs(120),
            rewind: Duration::from_secs(120),
            ..PgTimeouts::default()
        };
        config
    }

    /// A superuser connection to member `name`'s server on `port`.
    pub(crate) async fn client(&self, name: &MemberName, port: u16) -> Client {
        let (client, connection) = tokio_postgres::Config::new()
            .host("127.0.0.1")
            .port(port)
            .user("postgres")
            .password(self.superuser)
            .dbname("postgres")
            .connect_timeout(Duration::from_secs(5))
            .connect(NoTls)
            .await
            .unwrap_or_else(|err| panic!("connecting to {name}: {err:?}"));
        tokio::spawn(async move {
            let _ = connection.await;
        });
        client
    }
}

/// Sends `signal` to the postmaster named in `data_dir`'s pid file (and,
/// for SIGKILL, to its whole process group); its pid, or `None` without a
/// readable pid file.
pub(crate) fn kill_postmaster(data_dir: &Path, signal: libc::c_int) -> Option<i32> {
    let text = std::fs::read_to_string(data_dir.join("postmaster.pid")).ok()?;
    let pid: i32 = text.lines().next()?.trim().parse().ok()?;
    // SAFETY: kill(2) involves no memory; the pid is the test's own server.
    unsafe {
        if signal == libc::SIGKILL {
            libc::kill(-pid, signal);
        }
        libc::kill(pid, signal);
    }
    Some(pid)
}
