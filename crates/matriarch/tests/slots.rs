//! Replication slots on a real cluster (etcd, PostgreSQL, `matriarch run`):
//! the leader keeps a slot per member and the permanent slots of `slots`,
//! drops a member's slot `member_slots_ttl` after the member left, drops
//! stray slots but never an ignored one, publishes the positions in the
//! `status` key, and bounds the WAL slots retain.

mod common;

use std::time::Duration;

use common::{etcd_get, wait_for, Cluster, Options};

/// The slots on node `i`, sorted, comma-separated.
fn slots(cluster: &Cluster, i: usize) -> Option<String> {
    cluster.nodes[i]
        .psql("SELECT coalesce(string_agg(slot_name, ',' ORDER BY slot_name), '') FROM pg_replication_slots")
        .ok()
}

fn wait_slots(cluster: &Cluster, i: usize, expected: &str, timeout: Duration) -> bool {
    wait_for(timeout, || {
        (slots(cluster, i).as_deref() == Some(expected)).then_some(())
    })
    .is_some()
}

#[test]
fn the_leader_drops_a_gone_members_slot_after_member_slots_ttl_and_keeps_permanent_and_ignored_ones(
) {
    let options = Options::with_dcs(
        "    member_slots_ttl: 2s\n    slots:\n      keeper:\n        type: physical\n      cdc:\n        type: logical\n        database: postgres\n        plugin: test_decoding\n    ignore_slots:\n      - name: foreign\n    postgresql:\n      parameters:\n        wal_level: logical\n",
    );
    let mut cluster = Cluster::start_on_etcd(3, options);
    let primary = cluster.wait_healthy(2, Duration::from_secs(120));
    let replicas: Vec<usize> = (0..3).filter(|i| *i != primary).collect();
    let (gone, staying) = (replicas[0], replicas[1]);
    let (gone_name, staying_name) = (
        cluster.nodes[gone].name.clone(),
        cluster.nodes[staying].name.clone(),
    );
    let all = format!("cdc,keeper,{}", {
        let mut members = [gone_name.clone(), staying_name.clone()];
        members.sort();
        members.join(",")
    });
    assert!(
        wait_slots(&cluster, primary, &all, Duration::from_secs(30)),
        "the primary has the member slots and the permanent ones: {:?}\n{}",
        slots(&cluster, primary),
        cluster.logs()
    );
    assert_eq!(
        cluster.nodes[primary]
            .psql("SHOW max_slot_wal_keep_size")
            .as_deref(),
        Ok("8GB"),
        "retained WAL is bounded by default"
    );

    // A stray slot is dropped; an ignored one is left alone.
    cluster.nodes[primary]
        .psql("SELECT pg_create_physical_replication_slot('stray'), pg_create_physical_replication_slot('foreign')")
        .expect("create two slots by hand");
    assert!(
        wait_for(Duration::from_secs(15), || {
            let now = slots(&cluster, primary)?;
            (!now.split(',').any(|s| s == "stray")).then_some(())
        })
        .is_some(),
        "the stray slot was not dropped: {:?}",
        slots(&cluster, primary)
    );
    assert!(
        slots(&cluster, primary)
            .unwrap_or_default()
            .split(',')
            .any(|s| s == "foreign"),
        "the ignored slot was dropped"
    );

    // The status key carries the slots' positions and the retained members.
    let status = wait_for(Duration::from_secs(15), || {
        let (value, _) = etcd_get(&cluster.etcd_url(), "/service/e2e/status")?;
        let status: serde_json::Value = serde_json::from_str(&value).ok()?;
        (status["slots"]["keeper"].is_u64() && status["slots"]["cdc"].is_u64()).then_some(status)
    })
    .unwrap_or_else(|| panic!("no slot positions in the status key\n{}", cluster.logs()));
    let retained: Vec<&str> = status["retain_slots"]
        .as_array()
        .map(|names| names.iter().filter_map(|n| n.as_str()).collect())
        .unwrap_or_default();
    assert!(
        retained.contains(&gone_name.as_str()) && retained.contains(&staying_name.as_str()),
        "{status}"
    );

    // The member leaves for good: its key expires after ttl (4 s), its slot
    // goes member_slots_ttl (2 s) later; the others stay.
    cluster.nodes[gone].crash();
    let expected = format!("cdc,foreign,keeper,{staying_name}");
    assert!(
        wait_slots(&cluster, primary, &expected, Duration::from_secs(30)),
        "the gone member's slot was not dropped: {:?}\n{}",
        slots(&cluster, primary),
        cluster.logs()
    );
}

/// The major version of the PostgreSQL the tests run (`$MATRIARCH_PG_BIN`).
fn major_version() -> u32 {
    let output = std::process::Command::new(matriarch_testkit::bin_dir().join("postgres"))
        .arg("--version")
        .output()
        .expect("postgres --version");
    // "postgres (PostgreSQL) 18.1"
    String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .last()
        .and_then(|version| version.split('.').next())
        .and_then(|major| major.parse().ok())
        .unwrap_or(0)
}

/// pg_recvlogical streaming slot `cdc` of node `i` into `file`.
fn recvlogical(cluster: &Cluster, i: usize, file: &std::path::Path) -> std::process::Child {
    let node = &cluster.nodes[i];
    std::process::Command::new(matriarch_testkit::bin_dir().join("pg_recvlogical"))
        .args(["-h", &node.pg_host, "-p", &node.pg_port.to_string()])
        .args([
            "-U", "postgres", "-d", "postgres", "--slot", "cdc", "--start",
        ])
        // Confirm what it received every second.
        .args(["-s", "1", "-F", "1", "-f"])
        .arg(file)
        .env("PGPASSWORD", common::PG_PASSWORD)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start pg_recvlogical")
}

/// The ids of the inserts into `t` that `file` holds (test_decoding's
/// `table public.t: INSERT: id[integer]:7`), in order.
fn decoded_ids(file: &std::path::Path) -> Vec<u32> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.strip_prefix("table public.t: INSERT: id[integer]:"))
        .filter_map(|id| id.trim().parse().ok())
        .collect()
}

fn stop(mut child: std::process::Child) {
    // SAFETY: kill(2) on our own child: SIGTERM lets it flush its file.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let _ = child.wait();
}

/// A logical consumer keeps its place through a failover: PostgreSQL 17+
/// failover slots. pg_recvlogical consumes the permanent slot `cdc` on the
/// primary; once the standby's synchronized copy has caught up with what it
/// confirmed, the primary crashes; the consumer resumes on the promoted
/// standby and receives every change exactly once.
#[test]
fn a_logical_consumer_resumes_on_the_promoted_replica_without_losing_or_repeating_a_change() {
    let major = major_version();
    if major < 17 {
        eprintln!(
            "skipped: failover slots need PostgreSQL 17+, this is {major} (set MATRIARCH_PG_BIN)"
        );
        return;
    }
    let options = Options::with_dcs(
        "    slots:\n      cdc:\n        type: logical\n        database: postgres\n        plugin: test_decoding\n    postgresql:\n      parameters:\n        wal_level: logical\n",
    );
    let mut cluster = Cluster::start_on_etcd(2, options);
    let primary = cluster.wait_healthy(1, Duration::from_secs(120));
    let replica = 1 - primary;
    let has_cdc =
        "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'cdc' AND NOT temporary";
    assert!(
        cluster.wait_sql(primary, has_cdc, "1", Duration::from_secs(30)),
        "no permanent slot cdc on the primary\n{}",
        cluster.logs()
    );
    assert_eq!(
        cluster.nodes[primary]
            .psql("SELECT failover FROM pg_replication_slots WHERE slot_name = 'cdc'")
            .as_deref(),
        Ok("t"),
        "a failover slot"
    );
    cluster.nodes[primary]
        .psql("CREATE TABLE t (id integer primary key)")
        .expect("create table");
    let dir = tempfile::tempdir().expect("temp dir");
    let before_file = dir.path().join("before.txt");
    let consumer = recvlogical(&cluster, primary, &before_file);
    for id in 1..=50 {
        cluster.nodes[primary]
            .psql(&format!("INSERT INTO t VALUES ({id})"))
            .expect("insert");
    }
    let end = cluster.nodes[primary]
        .psql("SELECT pg_current_wal_lsn()")
        .expect("the primary's position");
    assert!(
        wait_for(Duration::from_secs(30), || (decoded_ids(&before_file)
            .len()
            >= 50)
            .then_some(()))
        .is_some(),
        "the consumer did not receive the 50 changes: {:?}",
        decoded_ids(&before_file)
    );
    // The consumer confirmed everything, and the standby's copy knows.
    let confirmed = format!(
        "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'cdc' AND confirmed_flush_lsn >= '{end}'"
    );
    assert!(
        cluster.wait_sql(primary, &confirmed, "1", Duration::from_secs(30)),
        "the consumer did not confirm {end} on the primary"
    );
    let synced = format!("{confirmed} AND synced AND NOT temporary");
    assert!(
        cluster.wait_sql(replica, &synced, "1", Duration::from_secs(60)),
        "the standby's copy of cdc did not reach {end}: {:?}\n{}",
        cluster.nodes[replica].psql(
            "SELECT slot_name, synced, temporary, confirmed_flush_lsn FROM pg_replication_slots"
        ),
        cluster.logs()
    );
    stop(consumer);

    cluster.nodes[primary].crash();
    let promoted = cluster.new_primary(primary, Duration::from_secs(60));
    assert_eq!(promoted, replica);
    for id in 51..=100 {
        cluster.nodes[promoted]
            .psql(&format!("INSERT INTO t VALUES ({id})"))
            .expect("insert on the new primary");
    }
    let after_file = dir.path().join("after.txt");
    let consumer = recvlogical(&cluster, promoted, &after_file);
    let received = wait_for(Duration::from_secs(30), || {
        decoded_ids(&after_file).contains(&100).then_some(())
    });
    stop(consumer);
    assert!(
        received.is_some(),
        "the consumer did not resume on the new primary: {:?}\n{}",
        decoded_ids(&after_file),
        cluster.logs()
    );
    let mut all = decoded_ids(&before_file);
    all.extend(decoded_ids(&after_file));
    let expected: Vec<u32> = (1..=100).collect();
    assert_eq!(all, expected, "every change once, in order");
}
