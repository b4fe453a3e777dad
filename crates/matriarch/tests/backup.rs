//! pgBackRest through matriarch, end to end: real agents, PostgreSQL 15,
//! etcd, pgBackRest and moto's S3 over TLS on 127.0.0.1. The agents write
//! pgBackRest's configuration from their `pgbackrest:` section (credentials
//! from the environment and a file), archive continuously, create the stanza
//! when they lead, take backups for `ctl backup`, and build replicas from the
//! repository.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{wait_for, Cluster, ClusterChecks, Options};
use matriarch_testkit::{backup_summary, run_pgbackrest, MotoS3, PgOsUser};

const STANZA: &str = "e2e";
const KEY_VAR: &str = "E2E_S3_KEY";
const WAIT: Duration = Duration::from_secs(40);

/// The `pgbackrest:` section for moto's bucket: the key from `E2E_S3_KEY`,
/// the secret from a file.
fn pgbackrest_yaml(s3: &MotoS3, secret_file: &Path) -> String {
    format!(
        "pgbackrest:\n  stanza: {STANZA}\n  repo:\n    type: s3\n    path: /{STANZA}\n    bucket: {}\n    endpoint: {}\n    port: {}\n    region: {}\n    uri_style: path\n    ca_file: {}\n    key: {{env: {KEY_VAR}}}\n    key_secret: {{file: {}}}\n  options:\n    compress-type: lz4\n    start-fast: 'y'\n    archive-timeout: 30\n",
        s3.bucket(),
        s3.host(),
        s3.port(),
        s3.region(),
        s3.ca_file().display(),
        secret_file.display(),
    )
}

/// moto's bucket, the secret file and a cluster of `n` unstarted nodes with
/// the `pgbackrest:` section.
fn configure(n: usize) -> (MotoS3, tempfile::TempDir, Cluster) {
    let s3 = MotoS3::start("matriarch-e2e").expect("moto S3 over HTTPS");
    let secrets = tempfile::tempdir().expect("temp dir");
    let secret_file = secrets.path().join("s3-secret");
    std::fs::write(&secret_file, format!("{}\n", s3.secret_access_key())).expect("secret file");
    std::fs::set_permissions(&secret_file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let options = Options {
        extra: pgbackrest_yaml(&s3, &secret_file),
        ..Options::default()
    };
    let cluster = Cluster::configure_on_etcd(n, options);
    (s3, secrets, cluster)
}

fn start(cluster: &mut Cluster, i: usize, s3: &MotoS3) {
    cluster.nodes[i].start(&[(KEY_VAR, s3.access_key_id())]);
}

/// Starts node `i` and waits until node1 leads `i` streaming replicas.
fn start_under_node1(cluster: &mut Cluster, i: usize, s3: &MotoS3) {
    start(cluster, i, s3);
    assert_eq!(cluster.wait_healthy(i, WAIT), 0, "{}", cluster.logs());
}

/// The pgBackRest configuration file the agent of node `i` wrote.
fn config_file(cluster: &Cluster, i: usize) -> PathBuf {
    PathBuf::from(format!(
        "{}.pgbackrest/pgbackrest.conf",
        cluster.nodes[i].data_dir().display()
    ))
}

/// `pgbackrest <args>` with node `i`'s configuration, as the PostgreSQL OS user.
fn pgbackrest(cluster: &Cluster, i: usize, args: &[&str]) -> Vec<u8> {
    let user = PgOsUser::detect().expect("PostgreSQL OS user");
    match run_pgbackrest(&user, &config_file(cluster, i), STANZA, args) {
        Ok(out) => out.stdout,
        Err(e) => panic!(
            "pgbackrest {args:?} on node{}: {e}\n{}",
            i + 1,
            cluster.logs()
        ),
    }
}

/// Waits until node `i` logged that the stanza exists (it runs
/// `stanza-create` when it becomes the leader).
fn wait_stanza(cluster: &Cluster, i: usize) {
    let created = wait_for(WAIT, || {
        std::fs::read_to_string(&cluster.nodes[i].log)
            .ok()?
            .contains("stanza-create done")
            .then_some(())
    });
    assert!(
        created.is_some(),
        "no stanza-create on node{}\n{}",
        i + 1,
        cluster.logs()
    );
}

fn ctl_backup(cluster: &Cluster, i: usize, kind: &str) {
    let out = cluster.nodes[i].ctl(&["backup", "--type", kind]);
    cluster.assert_ctl_ok(&out, &format!("ctl backup --type {kind}"));
}

/// No credential in an agent's log; the configuration file that holds them is 0600.
fn assert_secrets_kept(cluster: &Cluster, s3: &MotoS3) {
    for (i, node) in cluster.nodes.iter().enumerate() {
        let log = std::fs::read_to_string(&node.log).unwrap_or_default();
        assert!(
            !log.contains(s3.secret_access_key()),
            "secret in node{}'s log",
            i + 1
        );
        assert!(
            !log.contains(s3.access_key_id()),
            "key id in node{}'s log",
            i + 1
        );
        if let Ok(meta) = std::fs::metadata(config_file(cluster, i)) {
            assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        }
    }
}

/// `ctl backup` takes a full and then an incremental backup on the leader;
/// after a failover the new primary archives on timeline 2 into the same
/// repository and `pgbackrest check` passes against it.
#[test]
fn ctl_backup_full_then_incremental_and_archiving_survives_a_failover() {
    let (s3, _secrets, mut cluster) = configure(2);
    start_under_node1(&mut cluster, 0, &s3);
    start_under_node1(&mut cluster, 1, &s3);
    wait_stanza(&cluster, 0);

    ctl_backup(&cluster, 1, "full");
    cluster.psql_ok(0, "CREATE TABLE t AS SELECT generate_series(1, 1000) AS n");
    ctl_backup(&cluster, 1, "incr");
    let (types, _) =
        backup_summary(&pgbackrest(&cluster, 0, &["--output=json", "info"])).expect("info");
    assert_eq!(types, ["full", "incr"]);

    // Failover: the primary's agent stops (it steps down), node2 is promoted.
    cluster.nodes[0].signal(libc::SIGTERM);
    assert!(cluster.nodes[0].wait_exit(WAIT), "node1 did not stop");
    cluster.check(cluster.wait_primary_is(1, WAIT), "node2 not promoted");
    assert_eq!(cluster.nodes[1].timeline(), Some(2));
    // `check` switches WAL on the new primary and waits for it in the repository.
    pgbackrest(&cluster, 1, &["check"]);
    let (_, newest) =
        backup_summary(&pgbackrest(&cluster, 1, &["--output=json", "info"])).expect("info");
    let newest = newest.expect("WAL in the archive");
    assert!(
        newest.starts_with("00000002"),
        "newest archived WAL {newest} is not on timeline 2"
    );
    assert_secrets_kept(&cluster, &s3);
}

/// A replica whose `basebackup` method is refused (the primary's pg_hba
/// rejects replication connections) falls back to `pgbackrest`: it restores
/// from S3, replays the archive (rows written after the backup), and streams
/// from the leader once pg_hba lets it.
#[test]
fn a_replica_is_restored_from_s3_when_the_primary_refuses_base_backups() {
    let (s3, _secrets, mut cluster) = configure(2);
    let reject = "  pg_hba:\n  - host replication all 0.0.0.0/0 reject\n  parameters:\n";
    cluster.edit_config(0, "  parameters:\n", reject);
    cluster.edit_config(
        1,
        "  parameters:\n",
        "  create_replica_methods: [basebackup, pgbackrest]\n  clone_stall_timeout: 20\n  parameters:\n",
    );
    start_under_node1(&mut cluster, 0, &s3);
    wait_stanza(&cluster, 0);
    ctl_backup(&cluster, 0, "full");
    // Written after the backup: only the archive has them.
    cluster.psql_ok(
        0,
        "CREATE TABLE after_backup AS SELECT generate_series(1, 500) AS n",
    );
    pgbackrest(&cluster, 0, &["check"]);

    start(&mut cluster, 1, &s3);
    let restored = cluster.wait_sql(1, "SELECT count(*) FROM after_backup", "500", WAIT);
    cluster.check(restored, "node2 has not the archived rows");
    let log = std::fs::read_to_string(&cluster.nodes[1].log).unwrap_or_default();
    let fell_back = log
        .lines()
        .any(|l| l.contains("replica creation method failed") && l.contains("basebackup"));
    cluster.check(fell_back, "basebackup did not fail first");
    cluster.check(
        log.lines()
            .any(|l| l.contains("created a replica") && l.contains("pgbackrest")),
        "not created by pgbackrest",
    );
    assert_eq!(
        cluster.nodes[0]
            .psql("SELECT count(*) FROM pg_stat_replication")
            .as_deref(),
        Ok("0"),
        "node2 streams although the primary refuses replication"
    );

    // Replication allowed: node2 streams from the leader.
    let allow =
        "  pg_hba:\n  - host replication replicator 127.0.0.1/32 scram-sha-256\n  parameters:\n";
    cluster.edit_config(0, reject, allow);
    cluster.nodes[0].signal(libc::SIGHUP);
    let streaming = cluster.wait_sql(
        0,
        "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'",
        "1",
        WAIT,
    );
    cluster.check(streaming, "node2 does not stream");
    cluster.psql_ok(0, "INSERT INTO after_backup VALUES (501)");
    cluster.check(
        cluster.wait_sql(1, "SELECT count(*) FROM after_backup", "501", WAIT),
        "the streamed row did not arrive",
    );
    assert_secrets_kept(&cluster, &s3);
}
