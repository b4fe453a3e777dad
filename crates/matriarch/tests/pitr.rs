//! A new matriarch cluster bootstraps from a pgBackRest backup (Patroni's
//! custom bootstrap method): to a point in time between two commits, and to
//! the end of the archive; a replica of the restored cluster then joins by
//! basebackup. The source is a plain PostgreSQL 15 archiving to moto's S3 (https), as
//! Spilo does with a real bucket.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use common::{etcd_get, psql_at, Cluster, DcsSpec, Options};
use matriarch_testkit::{MotoS3, PgBackRest, PgBackRestRepo, PgOsUser, PostgresServer, PGBACKREST};

/// Rows committed on the source, one transaction each.
const ROWS: u32 = 6;
/// The target time lies between the commits of rows `BEFORE` and `BEFORE + 1`.
const BEFORE: u32 = 3;

/// Runs `sql` on the source (trust authentication over TCP).
fn source_sql(source: &PostgresServer, sql: &str) -> String {
    psql_at(source.host(), source.port(), sql).unwrap_or_else(|e| panic!("`{sql}`: {e}"))
}

/// The rows of the test table, `1,2,...`.
const ROWS_SQL: &str = "SELECT string_agg(n::text, ',' ORDER BY n) FROM t";

/// `1,2,...,last`.
fn rows_up_to(last: u32) -> String {
    (1..=last)
        .map(|n| n.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// Starts node1 of `cluster` alone with `method` (the YAML under `bootstrap:`,
/// indented by 2) added to its file; how long it took until it led.
fn bootstrap_node1_with(cluster: &mut Cluster, method: &str) -> Duration {
    cluster.edit_config(0, "bootstrap:\n", &format!("bootstrap:\n{method}"));
    let started = Instant::now();
    cluster.start_node1_as_primary(Duration::from_secs(60));
    started.elapsed()
}

#[test]
fn a_new_cluster_bootstraps_from_a_backup_to_a_point_in_time_or_the_archives_end() {
    let started = Instant::now();
    let _serial = common::serial();

    // The source: archiving to an S3 repository (moto's, over https), a full backup, then rows
    // whose commit times are recorded.
    let source = PostgresServer::start().expect("start the source");
    let s3 = MotoS3::start("pitr").expect("moto's S3 over https");
    let backrest =
        PgBackRest::configure("main", &source, PgBackRestRepo::S3(&s3)).expect("pgbackrest.conf");
    source_sql(&source, "ALTER SYSTEM SET archive_mode = on");
    source_sql(
        &source,
        &format!(
            "ALTER SYSTEM SET archive_command = '{}'",
            backrest.archive_command()
        ),
    );
    source_sql(&source, "ALTER SYSTEM SET track_commit_timestamp = on");
    source.restart().expect("restart with archiving on");
    backrest.run(&["stanza-create"]).expect("stanza-create");
    backrest
        .run(&["--type=full", "backup"])
        .expect("full backup");
    source_sql(&source, "CREATE TABLE t (n int PRIMARY KEY)");
    for n in 1..=ROWS {
        source_sql(&source, &format!("INSERT INTO t VALUES ({n})"));
        // Commits apart, so that a time between two of them is not one of them.
        std::thread::sleep(Duration::from_millis(50));
    }
    let commit_times = source_sql(
        &source,
        "SELECT string_agg(pg_xact_commit_timestamp(xmin)::text, ' | ' ORDER BY n) FROM t",
    );
    let target = source_sql(
        &source,
        &format!(
            "SELECT (a + (b - a) / 2)::text FROM \
             (SELECT pg_xact_commit_timestamp(xmin) AS a FROM t WHERE n = {BEFORE}) x, \
             (SELECT pg_xact_commit_timestamp(xmin) AS b FROM t WHERE n = {}) y",
            BEFORE + 1
        ),
    );
    let source_id = source_sql(&source, "SELECT system_identifier FROM pg_control_system()");
    // `check` switches WAL and waits until the segment is in the repository.
    backrest
        .run(&["check"])
        .expect("check: the last WAL archived");
    let source_ready = started.elapsed();
    let config = backrest.config_file().display().to_string();

    // To a point in time: pgBackRest restores (archiving off), matriarch
    // writes the recovery settings of recovery_conf.
    let mut pitr = Cluster::configure_on_etcd(
        2,
        Options {
            scope: "pitr-time",
            member_prefix: "time",
            ..Options::default()
        },
    );
    let data_dir = pitr.nodes[0].data_dir().display().to_string();
    // pgBackRest checks that it runs for the server of pg1-path.
    let restore_command = format!(
        "{PGBACKREST} --config={config} --stanza=main --pg1-path={data_dir} archive-get %f \"%p\""
    );
    let pitr_bootstrap = bootstrap_node1_with(
        &mut pitr,
        &format!(
            "  method: pitr\n  pitr:\n    command: {PGBACKREST} restore\n    no_params: true\n    \
             config: {config}\n    stanza: main\n    pg1-path: {data_dir}\n    archive-mode: 'off'\n    \
             recovery_conf:\n      restore_command: '{restore_command}'\n      \
             recovery_target_time: '{target}'\n      recovery_target_action: promote\n",
        ),
    );
    let primary = &pitr.nodes[0];
    assert_eq!(
        primary.psql(ROWS_SQL).as_deref(),
        Ok(rows_up_to(BEFORE).as_str()),
        "the rows committed before {target} (commits: {commit_times})"
    );
    assert_eq!(
        primary
            .psql("SELECT system_identifier FROM pg_control_system()")
            .as_deref(),
        Ok(source_id.as_str()),
        "a restored backup keeps its source's system identifier"
    );
    let initialize = etcd_get(&pitr.etcd_url(), "/service/pitr-time/initialize");
    assert_eq!(initialize.map(|(id, _)| id), Some(source_id.clone()));
    assert_eq!(
        primary.psql("SELECT current_setting('recovery_target_time'), current_setting('restore_command')").as_deref(),
        Ok("|"),
        "the recovery settings are gone once the restored server promoted"
    );
    assert!(
        primary.timeline().is_some_and(|tl| tl >= 2),
        "promoted on a new timeline"
    );

    // A replica of the restored cluster joins by basebackup and streams.
    let replica_started = Instant::now();
    pitr.nodes[1].start(&[]);
    pitr.wait_healthy(1, Duration::from_secs(60));
    pitr.nodes[0]
        .psql("INSERT INTO t VALUES (100)")
        .expect("a write on the restored primary");
    let expected = format!("{},100", rows_up_to(BEFORE));
    assert!(
        pitr.wait_sql(1, ROWS_SQL, &expected, Duration::from_secs(20)),
        "the replica has {:?}\n{}",
        pitr.nodes[1].psql(ROWS_SQL),
        pitr.logs()
    );
    let replica_join = replica_started.elapsed();

    // To the end of the archive: pgBackRest's own recovery settings are kept
    // (keep_existing_recovery_conf), and the command gets Patroni's
    // --scope/--datadir. Its first run fails after leaving a file behind: the
    // retry only wins the initialize race and finds an empty data directory
    // if the failure released the one and emptied the other.
    let mut end = Cluster::configure(
        1,
        DcsSpec::Etcd(pitr.etcd_url()),
        Options {
            scope: "pitr-end",
            member_prefix: "end",
            ..Options::default()
        },
    );
    let script = end.nodes[0].dir.join("restore.sh");
    let marker = end.nodes[0].dir.join("failed-once");
    fs::write(
        &script,
        format!(
            "#!/bin/sh\nset -eu\nfor arg in \"$@\"; do case \"$arg\" in --datadir=*) datadir=\"${{arg#--datadir=}}\";; esac; done\n\
             if [ ! -e {marker} ]; then touch {marker}; echo junk > \"$datadir/junk\"; echo 'simulated restore failure' >&2; exit 3; fi\n\
             exec {PGBACKREST} --config={config} --stanza=main --pg1-path=\"$datadir\" --archive-mode=off restore\n",
            marker = marker.display(),
        ),
    )
    .expect("write the restore script");
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).expect("chmod the script");
    PgOsUser::detect()
        .expect("PostgreSQL OS user")
        .chown(&script)
        .expect("chown the script");
    let end_bootstrap = bootstrap_node1_with(
        &mut end,
        &format!(
            "  method: backup\n  backup:\n    command: {}\n    keep_existing_recovery_conf: true\n",
            script.display()
        ),
    );
    let node = &end.nodes[0];
    assert_eq!(
        node.psql(ROWS_SQL).as_deref(),
        Ok(rows_up_to(ROWS).as_str()),
        "every archived row"
    );
    assert!(!node.data_dir().join("junk").exists());
    let log = fs::read_to_string(&node.log).expect("the agent log");
    assert_eq!(
        log.matches("simulated restore failure").count(),
        1,
        "the failure is logged once\n{log}"
    );
    println!(
        "source and backup {source_ready:.1?}, bootstrap to a time {pitr_bootstrap:.1?}, replica \
         joined {replica_join:.1?}, bootstrap to the archive's end after a failure \
         {end_bootstrap:.1?}, total {:.1?}",
        started.elapsed()
    );
}
