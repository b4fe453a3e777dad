//! `PgController` passes the `Postgres` conformance suite against real
//! PostgreSQL: each check gets three members on free ports in throwaway
//! directories.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use matriarch_model::{MemberName, ParameterValue};
use matriarch_postgres::conformance::{Harness, MEMBERS};
use matriarch_postgres::{BootstrapSpec, PgController, PgControllerConfig, Upstream};
use matriarch_testkit::{free_port, PgOsUser};
use tempfile::TempDir;

use support::{kill_postmaster, Passwords};

const PASSWORDS: Passwords = Passwords {
    superuser: "conformance-super",
    replication: "conformance-repl",
    rewind: "conformance-rewind",
};

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
        kill_postmaster(&self.data_dir(), libc::SIGKILL);
    }
}

struct RealHarness {
    members: Vec<Member>,
}

fn config(name: &MemberName, dir: &Path, port: u16) -> PgControllerConfig {
    // The slot checks create a logical slot.
    let wal_level = ("wal_level", ParameterValue::Text("logical".to_owned()));
    PASSWORDS.config(name, dir, port, &[wal_level])
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
            standby_source: None,
        }
    }

    fn bootstrap_spec(&self) -> BootstrapSpec {
        PASSWORDS.spec()
    }

    async fn write(&self, index: usize) {
        let member = &self.members[index];
        PASSWORDS
            .client(&member.name, member.port)
            .await
            .batch_execute(
                "CREATE TABLE IF NOT EXISTS conformance (at timestamptz); \
                 INSERT INTO conformance VALUES (now())",
            )
            .await
            .unwrap_or_else(|err| panic!("writing on {}: {err:?}", member.name));
    }

    async fn crash(&self, index: usize) {
        kill_postmaster(&self.members[index].data_dir(), libc::SIGKILL);
    }

    async fn pass_time(&self, duration: Duration) {
        tokio::time::sleep(duration).await;
    }
}

matriarch_postgres::postgres_conformance_tests!(harness());
