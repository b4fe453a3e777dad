//! A standby cluster on real PostgreSQL 15 and etcd: a second cluster (its
//! own scope on the same etcd) replicates from a source cluster, follows it
//! across a failover, and is promoted by removing `standby_cluster`.
//!
//! After the source fails over, the standby cluster is pointed at the
//! source's new primary with `PATCH /config` (what `ctl edit-config` does):
//! `host`/`port` name one server, and nothing in the standby cluster can
//! know where another cluster's primary went. A connect address that moves
//! with the source's leader (a router, a DNS name) would spare that step.

use std::time::{Duration, Instant};

mod common;
use common::{wait_for, Cluster, DcsSpec, Options};

const WAIT: Duration = Duration::from_secs(30);

/// Waits until every member of `cluster` has `rows` rows in `t`; `when`
/// says which write, for the failure message.
fn assert_rows_everywhere(cluster: &Cluster, rows: &str, when: &str) {
    for (i, node) in cluster.nodes.iter().enumerate() {
        assert!(
            cluster.wait_sql(i, "SELECT count(*) FROM t", rows, WAIT),
            "{when}: {} has {:?} rows, not {rows}\n{}",
            node.name,
            node.psql("SELECT count(*) FROM t").ok(),
            cluster.logs()
        );
    }
}

/// The index of the node answering 200 on `/standby-leader`, if one does.
fn standby_leader(cluster: &Cluster) -> Option<usize> {
    (0..cluster.nodes.len()).find(|i| cluster.nodes[*i].status("/standby-leader") == 200)
}

#[test]
fn a_standby_cluster_follows_its_source_across_a_failover_and_is_promoted() {
    let started = Instant::now();
    let source_options = Options {
        scope: "source",
        member_prefix: "src",
        ..Options::default()
    };
    let (mut source, old_primary) = Cluster::healthy_on_etcd(2, source_options, WAIT);
    let primary = &source.nodes[old_primary];
    primary
        .psql("CREATE TABLE t (id int); INSERT INTO t VALUES (1)")
        .expect("write on the source");

    let standby_options = Options {
        scope: "standby",
        member_prefix: "sb",
        ..Options::with_dcs(&format!(
            "    standby_cluster:\n      host: {}\n      port: {}\n",
            primary.pg_host, primary.pg_port
        ))
    };
    let standby = Cluster::start(2, DcsSpec::Etcd(source.etcd_url()), standby_options);

    // Its first member cloned the source and leads as a standby leader.
    let leader = wait_for(WAIT, || standby_leader(&standby))
        .unwrap_or_else(|| panic!("no standby leader\n{}", standby.logs()));
    let other = 1 - leader;
    let status = standby.nodes[leader].get_json("/patroni");
    assert_eq!(status["role"], "standby_leader", "{status}");
    assert_eq!(standby.nodes[leader].status("/primary"), 503);
    assert_eq!(standby.nodes[leader].status("/leader"), 200);
    assert!(
        standby.nodes[other].wait_status("/replica", 200, WAIT),
        "the second member does not replicate\n{}",
        standby.logs()
    );
    assert_eq!(standby.nodes[other].status("/standby-leader"), 503);
    assert_eq!(standby.primary(), None, "a standby cluster has no primary");
    let list = standby.nodes[leader].ctl(&["list"]);
    let list = String::from_utf8_lossy(&list.stdout);
    assert!(list.contains("Standby Leader"), "{list}");

    // Rows written on the source reach both standby members.
    primary
        .psql("INSERT INTO t VALUES (2)")
        .expect("write on the source");
    assert_rows_everywhere(&standby, "2", "a row written on the source");
    // Writes are refused: the standby leader is read-only.
    assert!(standby.nodes[leader]
        .psql("INSERT INTO t VALUES (99)")
        .is_err());

    // The source fails over; the standby cluster is pointed at its new primary.
    source.nodes[old_primary].crash();
    let new_primary = source.new_primary(old_primary, WAIT);
    let moved = &source.nodes[new_primary];
    let patch = format!(
        r#"{{"standby_cluster": {{"host": "{}", "port": {}}}}}"#,
        moved.pg_host, moved.pg_port
    );
    let response = standby.nodes[other].call("PATCH", "/config", &patch, true);
    standby.assert_status(&response, 200);
    moved
        .psql("INSERT INTO t VALUES (3)")
        .expect("write on the source's new primary");
    assert_rows_everywhere(&standby, "3", "a row written after the source's failover");
    assert_eq!(standby_leader(&standby), Some(leader));

    // An invalid section is refused by name and changes nothing.
    let refused = standby.nodes[leader].call(
        "PATCH",
        "/config",
        r#"{"standby_cluster": {"port": "x"}}"#,
        true,
    );
    standby.assert_status(&refused, 400);
    assert!(
        refused.body_text().contains("standby_cluster.port"),
        "{}",
        refused.body_text()
    );

    // Removing the section promotes the standby leader: a normal cluster.
    let response =
        standby.nodes[other].call("PATCH", "/config", r#"{"standby_cluster": null}"#, true);
    standby.assert_status(&response, 200);
    assert!(
        standby.wait_primary_is(leader, WAIT),
        "the standby leader was not promoted\n{}",
        standby.logs()
    );
    standby.nodes[leader]
        .psql("INSERT INTO t VALUES (4)")
        .expect("the promoted cluster takes writes");
    assert!(
        standby.wait_sql(other, "SELECT count(*) FROM t", "4", WAIT),
        "the promoted cluster's replica does not follow it\n{}",
        standby.logs()
    );
    assert_eq!(standby_leader(&standby), None);
    eprintln!("standby cluster scenario: {:?}", started.elapsed());
}
