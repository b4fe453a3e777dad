//! Two switchovers in a row: the second is asked for five seconds after the
//! first promotion, while the replicas' last restartpoint is still on the old
//! timeline (outside testers saw this loop, promoting the old leader again and
//! again, before replicas reported the timeline they replay).

mod common;

use std::time::{Duration, Instant};

use common::{etcd_get, Cluster, Options};

/// Asks `via` for a switchover from `leader` to `candidate`; returns how long it
/// took until `candidate` alone answers as primary.
fn switchover(cluster: &Cluster, via: usize, leader: usize, candidate: usize) -> Duration {
    let asked = Instant::now();
    cluster.switchover_ok(via, leader, candidate);
    assert!(
        cluster.wait_primary_is(candidate, Duration::from_secs(30)),
        "{} is not the only primary\n{}",
        cluster.nodes[candidate].name,
        cluster.logs()
    );
    asked.elapsed()
}

#[test]
fn a_second_switchover_right_after_a_promotion_completes_with_one_new_timeline_each() {
    let (cluster, first) = Cluster::healthy_on_etcd(3, Options::default(), Duration::from_secs(60));
    let start_timeline = cluster.nodes[first]
        .timeline()
        .expect("the leader's timeline");
    let second = (first + 1) % 3;
    let third = (first + 2) % 3;

    let took = switchover(&cluster, third, first, second);
    println!("first switchover: {took:?}");
    // Every replica follows the new primary before the next request.
    cluster.wait_healthy(2, Duration::from_secs(30));
    std::thread::sleep(Duration::from_secs(5));

    // The third node streams the second's timeline but its last restartpoint
    // is still on the first timeline.
    let took = switchover(&cluster, first, second, third);
    println!("second switchover: {took:?}");
    assert!(
        took < Duration::from_secs(10),
        "the second switchover took {took:?}\n{}",
        cluster.logs()
    );

    // Stable afterwards: no further promotions, exactly two history entries.
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(cluster.primary(), Some(third), "{}", cluster.logs());
    assert_eq!(
        cluster.nodes[third].timeline(),
        Some(start_timeline + 2),
        "{}",
        cluster.logs()
    );
    let history = cluster.nodes[third].get_json("/history");
    assert_eq!(
        history.as_array().map(Vec::len),
        Some(2),
        "{history}\n{}",
        cluster.logs()
    );
    // The request was carried out and cleared.
    assert_eq!(
        etcd_get(&cluster.etcd_url(), "/service/e2e/failover"),
        None,
        "{}",
        cluster.logs()
    );
}
