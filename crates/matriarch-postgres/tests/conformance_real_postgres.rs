//! `PgController` passes the `Postgres` conformance suite against real
//! PostgreSQL: each check gets three members on free ports in throwaway
//! directories.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use matriarch_model::{MemberName, ParameterValue};
use matriarch_postgres::conformance::{Harness, MEMBERS};
use matriarch_postgres::{
    BootstrapSpec, Credentials, PgController, PgControllerConfig, PgTimeouts, Upstream,
};
use matriarch_testkit::{bin_dir, free_port, PgOsUser};
use tempfile::TempDir;
use tokio_postgres::NoTls;

const SUPERUSER_PASSWORD: &str = "conformance-super";
const REPLICATION_PASSWORD: &str = "conformance-repl";
const REWIND_PASSWORD: &str = "conformance-rewind";

struct Member {
    name: MemberName,
    port: u16,
    ctl: PgController,
    dir: TempDir,
}

impl Member {
    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        kill_postmaster(&self.data_dir());
    }
}

/// SIGKILLs the postmaster named in `data_dir`'s pid file and its group.
fn kill_postmaster(data_dir: &Path) {
    let Some(pid) = std::fs::read_to_string(data_dir.join("postmaster.pid"))
        .ok()
        .and_then(|text| text.lines().next()?.trim().parse::<i32>().ok())
    else {
        return;
    };
    // SAFETY: kill(2) involves no memory; the pid is this test's own server.
    unsafe {
        libc::kill(-pid, libc::SIGKILL);
        libc::kill(pid, libc::SIGKILL);
    }
}

struct RealHarness {
    members: Vec<Member>,
}

fn config(name: &MemberName, dir: &Path, port: u16) -> PgControllerConfig {
    let mut config = PgControllerConfig::new(
        name.clone(),
        dir.join("data"),
        port,
        dir,
        Credentials::new("postgres", SUPERUSER_PASSWORD),
        Credentials::new("replicator", REPLICATION_PASSWORD),
    );
    config.bin_dir = bin_dir();
    config.rewind = Some(Credentials::new("rewinder", REWIND_PASSWORD));
    config.os_user = PgOsUser::detect().expect("OS user").name().to_owned();
    config.initdb_args = ["--no-sync", "--locale=C", "-E", "UTF8"]
        .map(str::to_owned)
        .to_vec();
    config.parameters = [
        ("fsync", ParameterValue::Bool(false)),
        ("shared_buffers", ParameterValue::Text("16MB".to_owned())),
        ("max_connections", ParameterValue::Integer(30)),
        ("wal_keep_size", ParameterValue::Text("64MB".to_owned())),
        (
            "wal_retrieve_retry_interval",
            ParameterValue::Text("1s".to_owned()),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect::<BTreeMap<_, _>>();
    config.timeouts = PgTimeouts {
        start: Duration::from_secs(30),
        stop: Duration::from_secs(30),
        promote: Duration::from_secs(30),
        command: Duration::from_secs(60),
        clone: Duration::from_secs(120),
        rewind: Duration::from_secs(120),
        ..PgTimeouts::default()
    };
    config
}

async fn harness() -> RealHarness {
    let user = PgOsUser::detect().expect("PostgreSQL OS user");
    let members = (0..MEMBERS)
        .map(|index| {
            let name = MemberName::new(format!("pg-{index}")).expect("member name");
            let dir = user.tempdir("matriarch-conformance-").expect("tempdir");
            let port = free_port().expect("free port");
            let ctl = PgController::new(config(&name, dir.path(), port)).expect("controller");
            Member {
                name,
                port,
                ctl,
                dir,
            }
        })
        .collect();
    RealHarness { members }
}

#[async_trait]
impl Harness for RealHarness {
    type Postgres = PgController;

    fn member(&self, index: usize) -> &PgController {
        &self.members[index].ctl
    }

    fn upstream(&self, index: usize) -> Upstream {
        Upstream {
            member: self.members[index].name.clone(),
            host: "127.0.0.1".to_owned(),
            port: self.members[index].port,
        }
    }

    fn bootstrap_spec(&self) -> BootstrapSpec {
        BootstrapSpec {
            superuser: Credentials::new("postgres", SUPERUSER_PASSWORD),
            replication: Credentials::new("replicator", REPLICATION_PASSWORD),
            rewind: Some(Credentials::new("rewinder", REWIND_PASSWORD)),
            parameters: BTreeMap::new(),
            pg_hba: Vec::new(),
        }
    }

    async fn write(&self, index: usize) {
        let member = &self.members[index];
        let (client, connection) = tokio_postgres::Config::new()
            .host("127.0.0.1")
            .port(member.port)
            .user("postgres")
            .password(SUPERUSER_PASSWORD)
            .dbname("postgres")
            .connect_timeout(Duration::from_secs(5))
            .connect(NoTls)
            .await
            .unwrap_or_else(|err| panic!("connecting to {}: {err:?}", member.name));
        tokio::spawn(async move {
            let _ = connection.await;
        });
        client
            .batch_execute(
                "CREATE TABLE IF NOT EXISTS conformance (at timestamptz); \
                 INSERT INTO conformance VALUES (now())",
            )
            .await
            .unwrap_or_else(|err| panic!("writing on {}: {err:?}", member.name));
    }

    async fn crash(&self, index: usize) {
        kill_postmaster(&self.members[index].data_dir());
    }

    async fn pass_time(&self, duration: Duration) {
        tokio::time::sleep(duration).await;
    }
}

matriarch_postgres::postgres_conformance_tests!(harness());
