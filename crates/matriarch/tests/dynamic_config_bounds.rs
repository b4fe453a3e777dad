//! Out-of-range dynamic settings: refused by `PATCH /config`, and ignored by
//! every agent (which stays alive, keeps its primary and says so once) when
//! written into etcd behind matriarch's back.

mod common;

use std::time::Duration;

use common::{etcd_get, etcd_put, Cluster, Options};

/// Per node: warnings about an out-of-range setting (" exceeds "), and how many of them
/// say the config key was ignored.
fn out_of_range_warnings(cluster: &Cluster) -> Vec<(usize, usize)> {
    cluster
        .nodes
        .iter()
        .map(|node| {
            let log = std::fs::read_to_string(&node.log).unwrap_or_default();
            let warned: Vec<&str> = log
                .lines()
                .filter(|line| {
                    (line.contains(" WARN ") || line.contains(" ERROR "))
                        && line.contains(" exceeds ")
                })
                .collect();
            let ignored = warned
                .iter()
                .filter(|line| line.contains("ignoring the DCS config key"))
                .count();
            (warned.len(), ignored)
        })
        .collect()
}

#[test]
fn out_of_range_dynamic_settings_are_refused_and_ignored() {
    let (mut cluster, primary) =
        Cluster::healthy_on_etcd(3, Options::default(), Duration::from_secs(60));
    let url = cluster.etcd_url();
    let (before, _) = etcd_get(&url, "/service/e2e/config").expect("the config key");

    // Through the API: 400 naming the setting, nothing written.
    for (patch, field) in [
        (r#"{"retry_timeout": 1e19}"#, "retry_timeout"),
        (r#"{"loop_wait": 1e19}"#, "loop_wait"),
        (r#"{"ttl": 1e12}"#, "ttl"),
        (r#"{"retry_timeout": -1}"#, "retry_timeout"),
    ] {
        let r = cluster.nodes[primary].call("PATCH", "/config", patch, true);
        assert_eq!(
            r.status,
            400,
            "{patch}: {}\n{}",
            r.body_text(),
            cluster.logs()
        );
        assert!(r.body_text().contains(field), "{patch}: {}", r.body_text());
    }
    let r = cluster.nodes[primary].call("PUT", "/config", r#"{"retry_timeout": 1e19}"#, true);
    assert_eq!(r.status, 400, "{}", r.body_text());
    assert_eq!(
        etcd_get(&url, "/service/e2e/config").map(|(v, _)| v),
        Some(before)
    );

    // Behind matriarch's back: every agent lives on with the last valid
    // configuration, the primary stays, and each node says so once per write.
    for (written, bad) in [
        (1, r#"{"ttl": 4, "loop_wait": 1, "retry_timeout": 1e19}"#),
        (2, r#"{"ttl": 1e12, "loop_wait": 1, "retry_timeout": 1.5}"#),
        (3, r#"{"ttl": 4, "loop_wait": 1e19, "retry_timeout": 1.5}"#),
    ] {
        etcd_put(&url, "/service/e2e/config", bad);
        // Longer than a ttl: a dead or demoted leader would show.
        std::thread::sleep(Duration::from_secs(8));
        for node in &mut cluster.nodes {
            let exited = node.agent.exited();
            assert!(
                exited.is_none() && node.pid().is_some(),
                "{} exited after {bad}: {exited:?}\n{}",
                node.name,
                node.log_tail(40)
            );
        }
        assert_eq!(cluster.primary(), Some(primary), "{}", cluster.logs());
        for node in &cluster.nodes {
            let in_force = node.get_json("/patroni")["dynamic_config"].clone();
            assert_eq!(in_force["ttl"], 4, "{}: {in_force}", node.name);
            assert_eq!(in_force["loop_wait"], 1, "{}: {in_force}", node.name);
            assert_eq!(in_force["retry_timeout"], 1.5, "{}: {in_force}", node.name);
        }
        // The leader's lease still follows the ttl in force.
        let (_, lease) = etcd_get(&url, "/service/e2e/leader").expect("a leader key");
        assert_eq!(common::etcd_lease_granted_ttl(&url, lease), Some(4));
        // One line per node and write, not one per loop or read.
        assert_eq!(
            out_of_range_warnings(&cluster),
            [(written, written); 3],
            "{}",
            cluster.logs()
        );
    }
}
