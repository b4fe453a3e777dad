//! A node that holds back (does not race, does not follow, waits) says why in
//! `GET /patroni` (`pending`) and under `mctl list`'s table, not only at debug.

mod common;

use std::time::Duration;

use common::{serial, wait_for, Cluster, DcsSpec, Options};
use matriarch_testkit::EtcdServer;

#[test]
fn a_replica_that_does_not_race_says_why_in_patroni() {
    let _serial = serial();
    let etcd = EtcdServer::start().expect("etcd");
    let options = Options {
        tags: vec!["  nofailover: true\n".to_owned(); 2],
        ..Options::default()
    };
    let mut cluster = Cluster::start(2, DcsSpec::Etcd(etcd.client_url()), options);
    let primary = cluster.wait_healthy(1, Duration::from_secs(90));
    let replica = 1 - primary;
    cluster.nodes[primary].kill_agent();
    cluster.nodes[primary].kill_postgres();

    let pending = wait_for(Duration::from_secs(30), || {
        let body = cluster.nodes[replica]
            .call("GET", "/patroni", "", false)
            .body;
        let status: serde_json::Value = serde_json::from_slice(&body).ok()?;
        status["pending"]
            .as_str()
            .filter(|p| p.contains("not racing"))
            .map(str::to_owned)
    });
    let pending = pending.unwrap_or_else(|| {
        panic!(
            "/patroni never said why the replica holds back\n{}",
            cluster.logs()
        )
    });
    assert!(
        pending.contains("not racing") && pending.contains("nofailover"),
        "{pending}"
    );
    // Logged once at info when it began, not once per loop.
    let log = std::fs::read_to_string(&cluster.nodes[replica].log).unwrap_or_default();
    let lines = log
        .lines()
        .filter(|l| l.contains("holding back") && l.contains("nofailover"))
        .count();
    assert_eq!(lines, 1, "{}", cluster.logs());
}
