//! `POST /restart` goes through the engine: a primary is started again only
//! while this member holds the leader lock with its write fence armed.

mod common;

use std::time::Duration;

use common::{etcd_put, wait_for, Cluster};

/// In pause the engine changes nothing, so whatever runs after the restart
/// is the restart's doing: a primary whose lock another member took must not
/// come back as a writable primary.
#[test]
fn restart_of_a_primary_that_lost_its_lock_does_not_start_a_writable_primary() {
    let cluster = Cluster::lone_primary_on_etcd(Duration::from_secs(60));
    let (url, node) = (cluster.etcd_url(), &cluster.nodes[0]);
    let paused = node.call("PATCH", "/config", r#"{"pause": true}"#, true);
    assert_eq!(paused.status, 200, "{}", paused.body_text());
    assert!(
        wait_for(Duration::from_secs(20), || {
            (node.get_json("/patroni")["pause"] == true).then_some(())
        })
        .is_some(),
        "not paused\n{}",
        cluster.logs()
    );
    etcd_put(&url, "/service/e2e/leader", "ghost");
    assert!(
        wait_for(Duration::from_secs(20), || {
            (node.get_json("/patroni")["leader"] == "ghost").then_some(())
        })
        .is_some(),
        "the agent did not see the other lock holder\n{}",
        cluster.logs()
    );
    let before = node.postmaster_pid();
    assert!(before.is_some(), "PostgreSQL is not running");

    let response = node.call("POST", "/restart", "{}", true);
    let after = node.postmaster_pid();
    let writable = node.psql("SELECT pg_is_in_recovery()").ok().as_deref() == Some("f");
    assert!(
        after == before || !writable,
        "restarted as a writable primary while ghost holds the lock: HTTP {} {}\n{}",
        response.status,
        response.body_text(),
        cluster.logs()
    );
    assert_eq!(
        response.status,
        503,
        "the refusal is not reported: {}",
        response.body_text()
    );
    assert!(
        response.body_text().contains("lock"),
        "the refusal does not say why: {}",
        response.body_text()
    );
}

/// A primary that holds its lock restarts as primary, through the engine.
#[test]
fn restart_of_the_leader_restarts_it_as_primary() {
    let cluster = Cluster::lone_primary_on_etcd(Duration::from_secs(60));
    let node = &cluster.nodes[0];
    let before = node.postmaster_pid();
    let response = node.call("POST", "/restart", "{}", true);
    cluster.assert_status(&response, 200);
    assert_ne!(node.postmaster_pid(), before, "not restarted");
    assert_eq!(
        node.psql("SELECT pg_is_in_recovery()").ok().as_deref(),
        Some("f")
    );
}
