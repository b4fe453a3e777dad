//! An idle cluster on etcd writes (almost) nothing: outside testers measured
//! 4 etcd revisions a second for an idle 3-member cluster at loop_wait 1 s
//! (a put of every member record and of `status` every loop), against 0.15
//! for Patroni. The lock and the member keys live on leases kept alive by
//! keep-alives, which make no revision; records are rewritten only when they
//! change.

mod common;

use std::time::{Duration, Instant};

use common::{etcd_get, etcd_range, wait_for, Cluster, Options};

/// The bound: Patroni's 0.15 revisions a second, with room for the
/// WAL an idle PostgreSQL still writes now and then.
const MAX_REVISIONS_PER_SECOND: f64 = 0.3;
/// How long the idle cluster is watched.
const WINDOW: Duration = Duration::from_secs(60);

fn xlog_location(client_url: &str, member: &str) -> Option<u64> {
    let (value, _) = etcd_get(client_url, &format!("/service/e2e/members/{member}"))?;
    serde_json::from_str::<serde_json::Value>(&value).ok()?["xlog_location"].as_u64()
}

#[test]
fn an_idle_cluster_writes_no_more_etcd_revisions_than_patroni() {
    let (cluster, primary) =
        Cluster::healthy_on_etcd(3, Options::default(), Duration::from_secs(90));
    let url = cluster.etcd_url();
    // Let the start settle (slots, the first records of every member).
    std::thread::sleep(Duration::from_secs(8));
    let leader_before = etcd_get(&url, "/service/e2e/leader").expect("a leader key");

    let (start, _) = etcd_range(&url, "/service/e2e/");
    let started = Instant::now();
    std::thread::sleep(WINDOW);
    let (end, keys) = etcd_range(&url, "/service/e2e/");
    let seconds = started.elapsed().as_secs_f64();
    let rate = (end - start) as f64 / seconds;
    let written: Vec<String> = keys
        .iter()
        .filter(|(_, modified)| *modified > start)
        .map(|(key, modified)| format!("{key} (last at {modified})"))
        .collect();
    println!(
        "idle 3-member cluster: {} etcd revisions in {seconds:.1} s = {rate:.2}/s; keys written: {written:?}",
        end - start
    );
    assert!(
        rate <= MAX_REVISIONS_PER_SECOND,
        "an idle cluster wrote {rate:.2} etcd revisions a second (at most {MAX_REVISIONS_PER_SECOND}); keys written: {written:?}"
    );

    // Idle is still alive: the same lock on the same lease, every member
    // listed, the same primary.
    assert_eq!(
        etcd_get(&url, "/service/e2e/leader"),
        Some(leader_before),
        "the lock changed hands or lease while idle\n{}",
        cluster.logs()
    );
    for node in &cluster.nodes {
        let record = etcd_get(&url, &format!("/service/e2e/members/{}", node.name));
        assert!(
            record.is_some_and(|(_, lease)| lease != 0),
            "{}'s member key is gone or has no lease",
            node.name
        );
    }
    assert_eq!(cluster.primary(), Some(primary), "{}", cluster.logs());

    // What changes still reaches the others: after writes, every replica's
    // record shows the position it received.
    cluster.nodes[primary]
        .psql("CREATE TABLE idle_writes AS SELECT generate_series(1, 10000) AS i")
        .expect("write on the primary");
    let target: u64 = cluster.nodes[primary]
        .psql("SELECT pg_current_wal_lsn() - '0/0'")
        .expect("the primary's position")
        .parse()
        .expect("a number of bytes");
    for (i, node) in cluster.nodes.iter().enumerate() {
        let reached = wait_for(Duration::from_secs(10), || {
            xlog_location(&url, &node.name)
                .filter(|lsn| *lsn >= target)
                .map(|_| ())
        });
        assert!(
            reached.is_some(),
            "{} ({}) did not publish a position at or past {target}: {:?}\n{}",
            node.name,
            if i == primary { "primary" } else { "replica" },
            xlog_location(&url, &node.name),
            cluster.logs()
        );
    }
}
