//! pgBackRest end to end against a real PostgreSQL 15: continuous archiving and
//! full + incremental backups to a repository, then a restore into a fresh data
//! directory that, once started, has every committed row (those of the backups and
//! those only in the archived WAL).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use matriarch_testkit::{
    free_port, pg_command, run_pg_program, MotoS3, PgBackRest, PgBackRestRepo, PgOsUser,
    PostgresServer,
};

/// Runs `sql` with psql on the server listening on `socket_dir`/`port`; its
/// unaligned, tuples-only output.
fn psql(socket_dir: &Path, port: u16, sql: &str) -> String {
    let port = port.to_string();
    let socket = socket_dir.display().to_string();
    let mut args = vec!["-X", "-At", "-v", "ON_ERROR_STOP=1", "-U", "postgres"];
    args.extend(["-d", "postgres", "-h", &socket, "-p", &port, "-c", sql]);
    let out = run_pg_program("psql", args).unwrap_or_else(|e| panic!("psql `{sql}`: {e}"));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A server started with `pg_ctl` on a restored data directory; stopped
/// (immediate) on drop, also when the test fails.
struct RestoredServer {
    data_dir: PathBuf,
}

impl RestoredServer {
    fn start(data_dir: &Path, socket_dir: &Path, port: u16) -> RestoredServer {
        let mut pg_ctl = pg_command("pg_ctl").expect("pg_ctl");
        pg_ctl
            .arg("-D")
            .arg(data_dir)
            .arg("-l")
            .arg(socket_dir.join("restored.log"))
            .args(["-w", "-t", "120", "-o"])
            .arg(format!(
                "-p {port} -k {} -c listen_addresses=127.0.0.1",
                socket_dir.display()
            ))
            .arg("start");
        let server = RestoredServer {
            data_dir: data_dir.to_path_buf(),
        };
        let out = pg_ctl.output().expect("run pg_ctl start");
        let log = std::fs::read_to_string(socket_dir.join("restored.log")).unwrap_or_default();
        assert!(
            out.status.success(),
            "pg_ctl start: {out:?}\n--- restored server log ---\n{log}"
        );
        server
    }
}

impl Drop for RestoredServer {
    fn drop(&mut self) {
        if let Ok(mut pg_ctl) = pg_command("pg_ctl") {
            let _ = pg_ctl
                .arg("-D")
                .arg(&self.data_dir)
                .args(["-m", "immediate", "stop"])
                .output();
        }
    }
}

/// Runs `pgbackrest <args>`; how long it took.
fn timed_run(backrest: &PgBackRest, args: &[&str]) -> Duration {
    let started = Instant::now();
    if let Err(e) = backrest.run(args) {
        panic!("pgbackrest {}: {e}", args.join(" "));
    }
    started.elapsed()
}

/// Polls until the restored server has finished recovery (and promoted).
fn wait_until_promoted(socket_dir: &Path, port: u16) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while psql(socket_dir, port, "SELECT pg_is_in_recovery()") != "f" {
        assert!(
            Instant::now() < deadline,
            "the restored server is still in recovery after 120 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The chain: stanza-create, archiving on, check, full backup, rows, incremental
/// backup, more rows only in the archived WAL, restore, start, count.
fn backup_and_restore(repo: PgBackRestRepo<'_>, label: &str) {
    let pg = PostgresServer::start().expect("start PostgreSQL");
    let backrest = PgBackRest::configure("main", &pg, repo).expect("write pgbackrest.conf");
    let (socket, port) = (pg.socket_dir(), pg.port());
    psql(socket, port, "ALTER SYSTEM SET archive_mode = on");
    psql(
        socket,
        port,
        &format!(
            "ALTER SYSTEM SET archive_command = '{}'",
            backrest.archive_command()
        ),
    );
    pg.restart().expect("restart with archiving on");

    let stanza_create = timed_run(&backrest, &["stanza-create"]);
    let check = timed_run(&backrest, &["check"]);
    let full = timed_run(&backrest, &["--type=full", "backup"]);

    psql(
        socket,
        port,
        "CREATE TABLE kept (n int PRIMARY KEY); \
         INSERT INTO kept SELECT generate_series(1, 1000)",
    );
    psql(socket, port, "SELECT pg_switch_wal()");
    let incr = timed_run(&backrest, &["--type=incr", "backup"]);

    // Committed after the last backup: only the archive has these.
    psql(
        socket,
        port,
        "INSERT INTO kept SELECT generate_series(1001, 1500)",
    );
    // `check` switches WAL and waits until the segment is in the repository.
    backrest.run(&["check"]).expect("check after the inserts");

    let info = backrest
        .run(&["--output=json", "info"])
        .expect("pgbackrest info");
    let info: serde_json::Value =
        serde_json::from_slice(&info.stdout).expect("pgbackrest info is JSON");
    let types: Vec<&str> = info[0]["backup"]
        .as_array()
        .expect("backup list")
        .iter()
        .filter_map(|b| b["type"].as_str())
        .collect();
    assert_eq!(types, ["full", "incr"], "{info}");

    let user = PgOsUser::detect().expect("PostgreSQL OS user");
    let restore_dir = user.tempdir("matriarch-restore-").expect("restore dir");
    let data = restore_dir.path().join("data");
    let pg1_path = format!("--pg1-path={}", data.display());
    let restore = timed_run(&backrest, &[&pg1_path, "--archive-mode=off", "restore"]);

    let restored_port = free_port().expect("free port");
    let started = Instant::now();
    let _restored = RestoredServer::start(&data, restore_dir.path(), restored_port);
    wait_until_promoted(restore_dir.path(), restored_port);
    let recovery = started.elapsed();
    let rows = psql(
        restore_dir.path(),
        restored_port,
        "SELECT count(*), min(n), max(n) FROM kept",
    );
    assert_eq!(rows, "1500|1|1500");
    println!(
        "pgbackrest {label}: stanza-create {stanza_create:.1?}, check {check:.1?}, full backup {full:.1?}, \
         incremental backup {incr:.1?}, restore {restore:.1?}, start+WAL replay {recovery:.1?}"
    );
}

#[test]
fn archive_backup_and_restore_through_moto_s3_over_tls() {
    let s3 = MotoS3::start("matriarch-backups").expect("start moto S3 over HTTPS");
    let chain = std::panic::catch_unwind(|| {
        backup_and_restore(PgBackRestRepo::S3(&s3), "s3 (moto, https)")
    });
    if let Err(panic) = chain {
        eprintln!("--- last lines of moto's log ---\n{}", s3.log_tail());
        std::panic::resume_unwind(panic);
    }
}

#[test]
fn archive_backup_and_restore_through_a_posix_repository() {
    backup_and_restore(PgBackRestRepo::Posix, "posix");
}

/// Not in CI (`--ignored`): the time to build a replica of a database of
/// `MATRIARCH_BENCH_SCALE` pgbench scale (default 140, about 2 GB on disk)
/// from a full backup in moto's S3 (`pgbackrest restore --type=standby`) and
/// with `pg_basebackup` from the primary; prints both.
#[test]
#[ignore = "a benchmark: minutes and gigabytes"]
fn replica_build_time_from_s3_and_from_pg_basebackup() {
    let scale: u32 = std::env::var("MATRIARCH_BENCH_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(140);
    let s3 = MotoS3::start("matriarch-bench").expect("start moto S3 over HTTPS");
    let pg = PostgresServer::start().expect("start PostgreSQL");
    let backrest = PgBackRest::configure("bench", &pg, PgBackRestRepo::S3(&s3)).expect("config");
    let (socket, port) = (pg.socket_dir(), pg.port());
    psql(socket, port, "ALTER SYSTEM SET archive_mode = on");
    let set_command = format!(
        "ALTER SYSTEM SET archive_command = '{}'",
        backrest.archive_command()
    );
    psql(socket, port, &set_command);
    pg.restart().expect("restart with archiving on");
    // Before the load: archive-push fails until the stanza exists.
    timed_run(&backrest, &["stanza-create"]);
    let port_text = port.to_string();
    let socket_text = socket.display().to_string();
    let started = Instant::now();
    // Both programs reach the primary the same way.
    let connect = ["-h", &socket_text, "-p", &port_text, "-U", "postgres"];
    let scale_text = scale.to_string();
    let pgbench_args = ["-i", "-q", "-s", &scale_text];
    run_pg_program(
        "pgbench",
        pgbench_args.iter().chain(&connect).chain(&["postgres"]),
    )
    .expect("pgbench -i");
    let load = started.elapsed();
    let size = psql(socket, port, "SELECT pg_database_size('postgres')");
    // The load's WAL may still be on its way to the archive.
    let backup = timed_run(
        &backrest,
        &["--archive-timeout=900", "--type=full", "backup"],
    );

    let user = PgOsUser::detect().expect("PostgreSQL OS user");
    let target = user.tempdir("matriarch-bench-").expect("target dir");
    let restored = target.path().join("restored");
    let pg1_path = format!("--pg1-path={}", restored.display());
    let restore = timed_run(&backrest, &[&pg1_path, "--type=standby", "restore"]);
    let copied = target.path().join("copied");
    let started = Instant::now();
    let copied_text = copied.display().to_string();
    let basebackup_args = ["-D", &copied_text, "-X", "stream", "-c", "fast"];
    run_pg_program("pg_basebackup", basebackup_args.iter().chain(&connect)).expect("pg_basebackup");
    let basebackup = started.elapsed();
    println!(
        "replica build, pgbench scale {scale} ({size} bytes): load {load:.1?}; pgBackRest full backup \
         to S3 (moto, https, lz4, bundle) {backup:.1?}; replica by pgbackrest restore from S3 \
         {restore:.1?}; replica by pg_basebackup (local socket) {basebackup:.1?}"
    );
}
