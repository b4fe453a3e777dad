//! A switchover whose candidate never takes over ends cleanly: the request
//! is cleared, the leader leads again on the same timeline (no promotion),
//! and the REST API says why instead of a bare 503 after its wait.

mod common;

use std::time::{Duration, Instant};

use common::{basic_auth, switchover_body, wait_for, Cluster, Options};
use matriarch_testkit::http_request_timeout;

#[test]
fn switchover_to_a_candidate_that_never_races_ends_with_the_same_leader_and_a_reason() {
    let (cluster, leader) =
        Cluster::healthy_on_etcd(2, Options::default(), Duration::from_secs(90));
    let candidate = 1 - leader;
    let timeline = cluster.nodes[leader].timeline();
    assert!(timeline.is_some(), "no timeline\n{}", cluster.logs());

    // The candidate's agent freezes: its record stays for a ttl, so the
    // leader steps down for it, but it never races.
    let streaming = wait_for(Duration::from_secs(60), || {
        let view = cluster.nodes[leader].get_json("/cluster");
        view["members"].as_array()?.iter().find(|m| {
            m["name"] == cluster.nodes[candidate].name.as_str() && m["state"] == "streaming"
        })?;
        Some(())
    });
    assert!(
        streaming.is_some(),
        "the candidate does not stream\n{}",
        cluster.logs()
    );
    cluster.nodes[candidate].signal(libc::SIGSTOP);
    let body = switchover_body(&cluster.nodes[leader].name, &cluster.nodes[candidate].name);
    let asked = Instant::now();
    let auth = basic_auth();
    let response = http_request_timeout(
        "POST",
        &format!("{}/switchover", cluster.nodes[leader].api()),
        &[
            ("Content-Type", "application/json"),
            ("Authorization", auth.as_str()),
        ],
        body.as_bytes(),
        Duration::from_secs(60),
    );
    let took = asked.elapsed();
    cluster.nodes[candidate].signal(libc::SIGCONT);
    let response = response.expect("the switchover request is answered");
    let text = response.body_text();
    assert_eq!(response.status, 503, "{text}\n{}", cluster.logs());
    assert!(
        text.contains(&format!(
            "candidate {} did not take over",
            cluster.nodes[candidate].name
        )) && text.contains(&format!("{} keeps leading", cluster.nodes[leader].name)),
        "the reason is not reported: {text}\n{}",
        cluster.logs()
    );
    assert!(
        took < Duration::from_secs(25),
        "answered only after {took:?}: {text}"
    );
    let node = &cluster.nodes[leader];
    let primary_again = wait_for(Duration::from_secs(20), || {
        (node.psql("SELECT pg_is_in_recovery()").ok().as_deref() == Some("f")).then_some(())
    });
    assert!(
        primary_again.is_some(),
        "the former leader does not run as primary\n{}",
        cluster.logs()
    );
    let timeline_now = wait_for(Duration::from_secs(10), || node.timeline());
    assert_eq!(timeline_now, timeline, "a new timeline\n{}", cluster.logs());
    let view = node.get_json("/cluster");
    assert!(
        view.get("scheduled_switchover")
            .is_none_or(serde_json::Value::is_null),
        "{view}"
    );
    assert_eq!(
        wait_for(Duration::from_secs(10), || cluster.primary()),
        Some(leader),
        "{}",
        cluster.logs()
    );
    assert!(
        node.get_json("/patroni")["last_switchover_failure"]
            .as_str()
            .is_some(),
        "no reason in /patroni"
    );
}
