//! `POST /restart` goes through the engine: a primary is started again only
//! while this member holds the leader lock with its write fence armed.

mod common;

use std::time::Duration;

use common::{serial, wait_for, Cluster, DcsSpec, Options};
use matriarch_testkit::{http_request, EtcdServer};

/// Writes `value` under `key` straight through etcd's JSON gateway, as
/// `etcdctl put` would (another member's lock, as far as the agent can tell).
fn etcd_put(client_url: &str, key: &str, value: &str) {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let body = serde_json::json!({ "key": b64.encode(key), "value": b64.encode(value) });
    let response = http_request(
        "POST",
        &format!("{client_url}/v3/kv/put"),
        &[("Content-Type", "application/json")],
        body.to_string().as_bytes(),
    )
    .expect("etcd answers /v3/kv/put");
    assert_eq!(response.status, 200, "{}", response.body_text());
}

fn get_json(node: &common::Node, path: &str) -> serde_json::Value {
    serde_json::from_slice(&node.call("GET", path, "", false).body)
        .unwrap_or(serde_json::Value::Null)
}

/// In pause the engine changes nothing, so whatever runs after the restart
/// is the restart's doing: a primary whose lock another member took must not
/// come back as a writable primary.
#[test]
fn restart_of_a_primary_that_lost_its_lock_does_not_start_a_writable_primary() {
    let _serial = serial();
    let etcd = EtcdServer::start().expect("etcd");
    let url = etcd.client_url();
    let cluster = Cluster::start(1, DcsSpec::Etcd(url.clone()), Options::default());
    let primary = cluster.wait_healthy(0, Duration::from_secs(60));
    let node = &cluster.nodes[primary];
    let paused = node.call("PATCH", "/config", r#"{"pause": true}"#, true);
    assert_eq!(paused.status, 200, "{}", paused.body_text());
    assert!(
        wait_for(Duration::from_secs(20), || {
            (get_json(node, "/patroni")["pause"] == true).then_some(())
        })
        .is_some(),
        "not paused\n{}",
        cluster.logs()
    );
    etcd_put(&url, "/service/e2e/leader", "ghost");
    assert!(
        wait_for(Duration::from_secs(20), || {
            (get_json(node, "/patroni")["leader"] == "ghost").then_some(())
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
    let _serial = serial();
    let etcd = EtcdServer::start().expect("etcd");
    let cluster = Cluster::start(1, DcsSpec::Etcd(etcd.client_url()), Options::default());
    let primary = cluster.wait_healthy(0, Duration::from_secs(60));
    let node = &cluster.nodes[primary];
    let before = node.postmaster_pid();
    let response = node.call("POST", "/restart", "{}", true);
    assert_eq!(
        response.status,
        200,
        "{}\n{}",
        response.body_text(),
        cluster.logs()
    );
    assert_ne!(node.postmaster_pid(), before, "not restarted");
    assert_eq!(
        node.psql("SELECT pg_is_in_recovery()").ok().as_deref(),
        Some("f")
    );
}
