//! A custom bootstrap (Patroni's `bootstrap.<method>`) against real
//! PostgreSQL: a command restores a base backup, recovery replays the WAL
//! archive to a target LSN and promotes; a command that fails, or a
//! recovery that never reaches its target, leaves an empty data directory.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use matriarch_model::{MemberName, ParameterValue, SystemId, Timeline};
use matriarch_postgres::{
    BootstrapMethod, BootstrapSpec, CustomBootstrap, PgController, Postgres, PostgresError,
};
use matriarch_testkit::{free_port, run_pg_program, PgOsUser, PostgresServer};
use tempfile::TempDir;

use support::{kill_postmaster, Passwords};

const PASSWORDS: Passwords = Passwords {
    superuser: "custom-super",
    replication: "custom-repl",
    rewind: "custom-rewind",
};

/// Runs `sql` on the source with psql; its unaligned, tuples-only output.
fn psql(source: &PostgresServer, sql: &str) -> String {
    let port = source.port().to_string();
    let out = run_pg_program(
        "psql",
        [
            "-X",
            "-At",
            "-v",
            "ON_ERROR_STOP=1",
            "-U",
            "postgres",
            "-h",
            "127.0.0.1",
        ]
        .into_iter()
        .chain(["-p", &port, "-d", "postgres", "-c", sql]),
    )
    .unwrap_or_else(|e| panic!("psql `{sql}`: {e}"));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A member of the test's own; its server is killed when dropped.
struct Member {
    ctl: PgController,
    name: MemberName,
    port: u16,
    dir: TempDir,
}

impl Member {
    fn new(name: &str) -> Member {
        let user = PgOsUser::detect().expect("PostgreSQL OS user");
        let dir = user
            .tempdir("matriarch-custom-bootstrap-")
            .expect("tempdir");
        let name = MemberName::new(name).expect("member name");
        let port = free_port().expect("free port");
        // Hot standby needs at least the source's max_connections (100).
        let max_connections = ("max_connections", ParameterValue::Integer(100));
        let config = PASSWORDS.config(&name, dir.path(), port, &[max_connections]);
        let ctl = PgController::new(config).expect("controller");
        Member {
            ctl,
            name,
            port,
            dir,
        }
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// What is left in the data directory.
    fn leftovers(&self) -> Vec<String> {
        std::fs::read_dir(self.data_dir())
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The spec whose custom method runs `argv` and then recovers with `recovery_conf`.
    fn spec(argv: &[&str], recovery_conf: &[(&str, &str)]) -> BootstrapSpec {
        let recovery_conf: BTreeMap<String, ParameterValue> = recovery_conf
            .iter()
            .map(|(k, v)| ((*k).to_owned(), ParameterValue::Text((*v).to_owned())))
            .collect();
        BootstrapSpec {
            method: BootstrapMethod::Custom(CustomBootstrap {
                name: "restore".to_owned(),
                argv: argv.iter().map(|a| (*a).to_owned()).collect(),
                keep_existing_recovery_conf: false,
                recovery_conf: (!recovery_conf.is_empty()).then_some(recovery_conf),
                timeout: Duration::from_secs(60),
            }),
            ..PASSWORDS.spec()
        }
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        kill_postmaster(&self.data_dir(), libc::SIGKILL);
    }
}

/// A source archiving to a directory with a base backup taken before its
/// rows: (source, archive, backup directory, its system id).
fn source_with_backup() -> (PostgresServer, TempDir, TempDir, SystemId) {
    let source = PostgresServer::start().expect("start the source");
    let user = PgOsUser::detect().expect("PostgreSQL OS user");
    let archive = user.tempdir("matriarch-archive-").expect("archive dir");
    psql(&source, "ALTER SYSTEM SET archive_mode = on");
    psql(
        &source,
        &format!(
            "ALTER SYSTEM SET archive_command = 'cp %p {}/%f'",
            archive.path().display()
        ),
    );
    source.restart().expect("restart with archiving on");
    let backup = user.tempdir("matriarch-backup-").expect("backup dir");
    let base = backup.path().join("base");
    let port = source.port().to_string();
    run_pg_program(
        "pg_basebackup",
        [
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-U",
            "postgres",
            "-D",
            &base.display().to_string(),
            "--no-sync",
        ],
    )
    .expect("pg_basebackup");
    let system_id = psql(&source, "SELECT system_identifier FROM pg_control_system()");
    let system_id = SystemId(system_id.parse().expect("a system identifier"));
    (source, archive, backup, system_id)
}

/// Switches WAL and waits until the segment is in the archive.
fn archive_all(source: &PostgresServer) {
    let segment = psql(source, "SELECT pg_walfile_name(pg_switch_wal())");
    let deadline = Instant::now() + Duration::from_secs(30);
    while psql(
        source,
        "SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver",
    ) < segment
    {
        assert!(Instant::now() < deadline, "{segment} not archived in 30 s");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test]
async fn a_backup_is_restored_to_an_lsn_and_a_target_past_the_archive_fails_cleanly() {
    let (source, archive, backup, source_id) = source_with_backup();
    psql(&source, "CREATE TABLE t (n int PRIMARY KEY)");
    psql(&source, "INSERT INTO t VALUES (1)");
    psql(&source, "INSERT INTO t VALUES (2)");
    let target = psql(&source, "SELECT pg_current_wal_insert_lsn()");
    psql(&source, "INSERT INTO t VALUES (3)");
    archive_all(&source);

    let restore_command = format!("cp {}/%f %p", archive.path().display());
    let base = format!("{}/.", backup.path().join("base").display());

    let member = Member::new("pg-lsn");
    let data_dir = member.data_dir().display().to_string();
    let spec = Member::spec(
        &["cp", "-a", &base, &data_dir],
        &[
            ("restore_command", &restore_command),
            ("recovery_target_lsn", &target),
            ("recovery_target_inclusive", "off"),
        ],
    );
    let system_id = member.ctl.bootstrap(&spec).await.expect("bootstrap");
    assert_eq!(
        system_id, source_id,
        "a restored backup keeps its identifier"
    );
    let state = member.ctl.observe().await.expect("observe");
    assert_eq!(state.timeline, Some(Timeline(2)), "{state:?}");
    let client = PASSWORDS.client(&member.name, member.port).await;
    let rows = client
        .query_one(
            "SELECT string_agg(n::text, ',' ORDER BY n), current_setting('recovery_target_lsn') FROM t",
            &[],
        )
        .await
        .expect("rows");
    assert_eq!(
        rows.get::<_, String>(0),
        "1,2",
        "only the rows before {target}"
    );
    assert_eq!(rows.get::<_, String>(1), "", "the recovery target is gone");
    // The replication role exists with its password: a replication
    // connection as it works.
    let replicator = tokio_postgres::Config::new()
        .host("127.0.0.1")
        .port(member.port)
        .user("replicator")
        .password(PASSWORDS.replication)
        .dbname("postgres")
        .connect(tokio_postgres::NoTls)
        .await
        .map(drop);
    assert!(replicator.is_ok(), "{replicator:?}");
    assert!(!member.data_dir().join("recovery.signal").exists());

    // A target the archive never reaches: PostgreSQL stops, and so does the bootstrap.
    let member = Member::new("pg-never");
    let data_dir = member.data_dir().display().to_string();
    let spec = Member::spec(
        &["cp", "-a", &base, &data_dir],
        &[
            ("restore_command", &restore_command),
            ("recovery_target_lsn", "FFFF/0"),
        ],
    );
    let err = member
        .ctl
        .bootstrap(&spec)
        .await
        .expect_err("a target past the archive");
    assert!(
        err.to_string()
            .contains("recovery ended before configured recovery target was reached"),
        "{err}"
    );
    assert_eq!(member.leftovers(), Vec::<String>::new());
    assert!(!Path::new(&data_dir).join("postmaster.pid").exists());
}

#[tokio::test]
async fn a_failing_command_or_one_that_restores_nothing_leaves_an_empty_data_directory() {
    let member = Member::new("pg-fail");
    let data_dir = member.data_dir().display().to_string();
    let spec = Member::spec(
        &[
            "sh",
            "-c",
            "echo junk > \"$0/junk\"; echo 'no backup here' >&2; exit 3",
            &data_dir,
        ],
        &[],
    );
    let err = member
        .ctl
        .bootstrap(&spec)
        .await
        .expect_err("a failing command");
    assert!(
        matches!(err, PostgresError::CommandFailed { .. })
            && err.to_string().contains("no backup here"),
        "{err}"
    );
    assert_eq!(member.leftovers(), Vec::<String>::new());

    let err = member
        .ctl
        .bootstrap(&Member::spec(&["true"], &[]))
        .await
        .expect_err("a command that restores nothing");
    assert!(
        err.to_string().contains("left no PostgreSQL cluster"),
        "{err}"
    );
    assert_eq!(member.leftovers(), Vec::<String>::new());
}
