//! Cascading replication and archive-only replicas on a real cluster (etcd,
//! PostgreSQL, `matriarch run`): a replica tagged `replicatefrom` streams
//! from that member and falls back to the leader when it dies, with its
//! WAL intact; `ctl topology` draws what each member really follows; a
//! replica tagged `nostream` replays from the archive without streaming.

mod common;

use std::time::Duration;

use common::{wait_for, Cluster, Options};
use matriarch_testkit::PgOsUser;

/// The port of the server node `i` receives WAL from (`None` when no WAL
/// receiver runs).
fn sender_port(cluster: &Cluster, i: usize) -> Option<u16> {
    cluster.nodes[i]
        .psql("SELECT sender_port FROM pg_stat_wal_receiver WHERE status = 'streaming'")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The application names `pg_stat_replication` of node `i` lists, sorted.
fn downstream(cluster: &Cluster, i: usize) -> String {
    cluster.nodes[i]
        .psql("SELECT coalesce(string_agg(application_name, ',' ORDER BY application_name), '') FROM pg_stat_replication")
        .unwrap_or_default()
}

/// `ctl topology` through node `i`'s API, as `(depth, name)` per row.
fn topology(cluster: &Cluster, i: usize) -> Vec<(usize, String)> {
    let out = cluster.nodes[i].ctl(&["topology"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            // "| node1 |", "| + node2 |", "|   + node3 |"
            let cell = line.strip_prefix("| ")?.split(" |").next()?;
            let name = cell.trim_start_matches([' ', '+']).trim();
            if !name.starts_with("node") {
                return None;
            }
            let depth = match cell.find('+') {
                Some(at) => at / 2 + 1,
                None => 0,
            };
            Some((depth, name.to_owned()))
        })
        .collect()
}

#[test]
fn a_replicatefrom_replica_streams_from_its_member_and_falls_back_to_the_leader_without_loss() {
    let options = Options {
        tags: vec![
            String::new(),
            String::new(),
            "  replicatefrom: node2\n".to_owned(),
        ],
        ..Options::default()
    };
    let mut cluster = Cluster::configure_on_etcd(3, options);
    cluster.start_node1_first(Duration::from_secs(60));
    let (node2_port, node1_port) = (cluster.nodes[1].pg_port, cluster.nodes[0].pg_port);

    let cascading = wait_for(Duration::from_secs(20), || {
        (sender_port(&cluster, 2) == Some(node2_port) && downstream(&cluster, 1) == "node3")
            .then_some(())
    });
    assert!(
        cascading.is_some(),
        "node3 does not stream from node2: sender {:?}, node2 sends to {:?}, node1 to {:?}\n{}",
        sender_port(&cluster, 2),
        downstream(&cluster, 1),
        downstream(&cluster, 0),
        cluster.logs()
    );
    assert_eq!(
        downstream(&cluster, 0),
        "node2",
        "the leader sends to node2 only"
    );
    assert_eq!(
        cluster.nodes[1]
            .psql("SELECT active FROM pg_replication_slots WHERE slot_name = 'node3'")
            .as_deref(),
        Ok("t"),
        "node3 streams through its slot on node2"
    );
    let expected = vec![
        (0, "node1".to_owned()),
        (1, "node2".to_owned()),
        (2, "node3".to_owned()),
    ];
    let drawn = wait_for(Duration::from_secs(10), || {
        let now = topology(&cluster, 0);
        (now == expected).then_some(())
    });
    assert!(drawn.is_some(), "topology: {:?}", topology(&cluster, 0));

    cluster.nodes[0]
        .psql(
            "CREATE TABLE t (id integer primary key); INSERT INTO t SELECT generate_series(1, 100)",
        )
        .expect("write on the leader");
    assert!(
        cluster.wait_sql(2, "SELECT count(*) FROM t", "100", Duration::from_secs(20)),
        "the leader's writes did not reach node3 through node2"
    );

    // node2 dies (agent and PostgreSQL): node3 moves to the leader.
    cluster.nodes[1].crash();
    cluster.nodes[0]
        .psql("INSERT INTO t SELECT generate_series(101, 200)")
        .expect("write on the leader while node2 is down");
    let moved = wait_for(Duration::from_secs(30), || {
        (sender_port(&cluster, 2) == Some(node1_port)).then_some(())
    });
    assert!(
        moved.is_some(),
        "node3 did not move to the leader: sender {:?}\n{}",
        sender_port(&cluster, 2),
        cluster.logs()
    );
    assert!(
        cluster.wait_sql(
            2,
            "SELECT count(*), sum(id) FROM t",
            "200|20100",
            Duration::from_secs(20)
        ),
        "node3 lost WAL in the move: {:?}",
        cluster.nodes[2].psql("SELECT count(*), sum(id) FROM t")
    );
    // node2's record expires (ttl 4 s); the tree shows node3 under the
    // leader, as it streams, whatever its tag says.
    let expected = vec![(0, "node1".to_owned()), (1, "node3".to_owned())];
    let drawn = wait_for(Duration::from_secs(20), || {
        (topology(&cluster, 0) == expected).then_some(())
    });
    assert!(drawn.is_some(), "topology: {:?}", topology(&cluster, 0));
}

#[test]
fn a_nostream_replica_replays_from_the_archive_only() {
    let user = PgOsUser::detect().expect("the PostgreSQL OS user");
    let archive = user.tempdir("matriarch-archive-").expect("archive dir");
    let dir = archive.path().display();
    let options = Options {
        tags: vec![String::new(), "  nostream: true\n".to_owned()],
        ..Options::with_dcs(&format!(
            "    postgresql:\n      parameters:\n        archive_mode: 'on'\n        archive_command: 'test ! -f {dir}/%f && cp %p {dir}/%f'\n        restore_command: 'cp {dir}/%f %p'\n        wal_retrieve_retry_interval: 200ms\n",
        ))
    };
    let mut cluster = Cluster::configure_on_etcd(2, options);
    cluster.start_node1_first(Duration::from_secs(60));

    cluster.nodes[0]
        .psql(
            "CREATE TABLE t (id integer primary key); INSERT INTO t SELECT generate_series(1, 100)",
        )
        .expect("write on the leader");
    // After the commit (one psql call is one transaction): the segment
    // holding it goes to the archive.
    cluster.nodes[0]
        .psql("SELECT pg_switch_wal()")
        .expect("switch WAL on the leader");
    assert!(
        cluster.wait_sql(1, "SELECT count(*) FROM t", "100", Duration::from_secs(30)),
        "the archived WAL did not reach the nostream replica: {:?}, restore_command {:?}, archive {:?}, replay at {:?}\n{}",
        cluster.nodes[1].psql("SELECT count(*) FROM t"),
        cluster.nodes[1].psql("SHOW restore_command"),
        std::fs::read_dir(archive.path()).map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name()).collect::<Vec<_>>()),
        cluster.nodes[1].psql("SELECT pg_last_wal_replay_lsn()"),
        cluster.logs()
    );
    assert_eq!(
        cluster.nodes[1]
            .psql("SELECT count(*) FROM pg_stat_wal_receiver")
            .as_deref(),
        Ok("0"),
        "no WAL receiver on a nostream replica"
    );
    assert_eq!(
        downstream(&cluster, 0),
        "",
        "nothing streams from the leader"
    );
    assert_eq!(
        cluster.nodes[0]
            .psql("SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'node2'")
            .as_deref(),
        Ok("0"),
        "no slot for a nostream member on the leader"
    );
}
