//! Failsafe mode end to end: real etcd (frozen with SIGSTOP for the outage),
//! real PostgreSQL, `matriarch run` processes.

mod common;

use std::time::{Duration, Instant};

use common::{etcd_get, three_with_a_replicated_row, wait_for, Cluster, ClusterChecks, Options};

/// ttl 4 s, loop_wait 1 s, retry_timeout 1.5 s (the harness's), failsafe on.
fn failsafe_options() -> Options {
    let mut options = Options::default();
    options.dcs.push_str("    failsafe_mode: true\n");
    options
}

/// The ttl of [`failsafe_options`].
const TTL: Duration = Duration::from_secs(4);

fn start() -> (Cluster, usize) {
    let (cluster, primary) =
        Cluster::healthy_on_etcd(3, failsafe_options(), Duration::from_secs(90));
    cluster.psql_ok(
        primary,
        "CREATE TABLE herd (id serial primary key, at timestamptz default now())",
    );
    // The leader lists every member in the failsafe key.
    let key = wait_for(Duration::from_secs(20), || {
        let (value, _) = etcd_get(&cluster.etcd_url(), "/service/e2e/failsafe")?;
        let members: serde_json::Value = serde_json::from_str(&value).ok()?;
        (members.as_object()?.len() == 3).then_some(members)
    })
    .unwrap_or_else(|| panic!("no failsafe key naming 3 members\n{}", cluster.logs()));
    for node in &cluster.nodes {
        let url = key[&node.name].as_str().unwrap_or_default();
        assert!(url.contains(&node.api_port.to_string()), "{key}");
    }
    // Both replicas stream from the primary (a heartbeat is acknowledged
    // only by a running replica of its sender).
    cluster.psql_ok(primary, "INSERT INTO herd DEFAULT VALUES");
    for i in (0..3).filter(|i| *i != primary) {
        assert!(
            cluster.wait_sql(i, "SELECT count(*) FROM herd", "1", Duration::from_secs(30)),
            "{} does not replicate\n{}",
            cluster.nodes[i].name,
            cluster.logs()
        );
        assert!(
            cluster.nodes[i].wait_status("/replica", 200, Duration::from_secs(20)),
            "{} is no healthy replica\n{}",
            cluster.nodes[i].name,
            cluster.logs()
        );
    }
    (cluster, primary)
}

fn insert(cluster: &Cluster, primary: usize) -> Result<String, String> {
    cluster.nodes[primary].psql("INSERT INTO herd DEFAULT VALUES RETURNING id")
}

#[test]
fn failsafe_keeps_the_primary_writable_through_a_full_etcd_outage_when_every_member_answers() {
    let (cluster, primary) = start();
    let replica = (primary + 1) % 3;

    // A replica acknowledges only heartbeats of the leader it follows, and
    // only from a peer that authenticates like for any change.
    let stranger = r#"{"name": "nobody", "conn_url": "", "api_url": ""}"#;
    assert_eq!(
        cluster.nodes[replica]
            .call("POST", "/failsafe", stranger, true)
            .status,
        409
    );
    assert_eq!(
        cluster.nodes[replica]
            .call("POST", "/failsafe", "[1, 2]", true)
            .status,
        400
    );
    // The primary is nobody's replica.
    let from_replica = format!(
        r#"{{"name": "{}", "conn_url": "", "api_url": ""}}"#,
        cluster.nodes[replica].name
    );
    assert_eq!(
        cluster.nodes[primary]
            .call("POST", "/failsafe", &from_replica, true)
            .status,
        409
    );

    // etcd freezes for three ttls: no renewal, no read, no lease expiry seen.
    cluster.etcd().pause().expect("SIGSTOP etcd");
    let paused = Instant::now();
    let mut writes = 0;
    let mut failures = Vec::new();
    let mut saw_failsafe = false;
    while paused.elapsed() < TTL * 3 {
        match insert(&cluster, primary) {
            Ok(_) => writes += 1,
            Err(e) => failures.push(format!("{:?}: {e}", paused.elapsed())),
        }
        if !saw_failsafe {
            saw_failsafe =
                cluster.nodes[primary].get_json("/patroni")["failsafe_mode_is_active"] == true;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    cluster.etcd().resume().expect("SIGCONT etcd");
    cluster.check(
        failures.is_empty(),
        &format!("writes failed during the outage ({writes} succeeded): {failures:?}"),
    );
    assert!(writes > 20, "only {writes} writes");
    cluster.check(saw_failsafe, "/patroni never said failsafe_mode_is_active");

    // etcd is back: the same primary holds the lock again, nobody was promoted.
    let holder = wait_for(Duration::from_secs(20), || {
        let (holder, _) = etcd_get(&cluster.etcd_url(), "/service/e2e/leader")?;
        (holder == cluster.nodes[primary].name).then_some(holder)
    });
    cluster.check(holder.is_some(), "the primary did not take the lock again");
    std::thread::sleep(TTL * 2);
    assert_eq!(cluster.primary(), Some(primary), "{}", cluster.logs());
    insert(&cluster, primary)
        .unwrap_or_else(|e| panic!("write after the outage: {e}\n{}", cluster.logs()));
    let status: serde_json::Value = serde_json::from_slice(
        &cluster.nodes[primary]
            .call("GET", "/patroni", "", false)
            .body,
    )
    .unwrap();
    assert_eq!(status["timeline"], 1, "a promotion happened: {status}");
    let history = cluster.nodes[primary].call("GET", "/history", "", false);
    assert_eq!(history.body_text().trim(), "[]", "{}", cluster.logs());
    for (i, node) in cluster.nodes.iter().enumerate() {
        if i != primary {
            assert_eq!(node.status("/replica"), 200, "{} is no replica", node.name);
        }
    }
}

#[test]
fn failsafe_primary_stops_writes_by_its_deadline_when_a_member_does_not_answer() {
    let (mut cluster, primary) = start();
    let silent = (primary + 1) % 3;
    insert(&cluster, primary).expect("write before the outage");

    // One replica's agent dies (its PostgreSQL dies with its fence), then etcd
    // freezes before the leader could drop it from the failsafe key.
    cluster.nodes[silent].kill_agent();
    cluster.etcd().pause().expect("SIGSTOP etcd");
    let paused = Instant::now();
    let mut last_write: Option<Duration> = None;
    let mut first_failure: Option<Duration> = None;
    while paused.elapsed() < TTL * 2 {
        let started = paused.elapsed();
        match insert(&cluster, primary) {
            Ok(_) => last_write = Some(paused.elapsed()),
            Err(_) => {
                first_failure.get_or_insert(started);
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    cluster.etcd().resume().expect("SIGCONT etcd");
    let first_failure = first_failure
        .unwrap_or_else(|| panic!("the primary kept taking writes\n{}", cluster.logs()));
    // The lock cannot expire before ttl after the last renewal, which came
    // before the freeze: writes must have stopped by then (plus the time one
    // psql call takes).
    let margin = Duration::from_millis(500);
    if let Some(last) = last_write {
        cluster.check(
            last < TTL + margin,
            &format!("a write succeeded {last:?} into the outage (ttl {TTL:?})"),
        );
    }
    cluster.check(
        first_failure < TTL,
        &format!("writes failed only {first_failure:?} into the outage"),
    );
    let log = cluster.nodes[primary].log_tail(400);
    assert!(
        log.contains("failsafe round: members did not acknowledge"),
        "{log}"
    );
    // Only the silent member was missing: the other replica acknowledged.
    let answering = (0..3)
        .find(|i| *i != primary && *i != silent)
        .unwrap_or_default();
    cluster.check(
        cluster.nodes[answering]
            .log_tail(400)
            .contains("failsafe heartbeat acknowledged"),
        "the answering member did not acknowledge a failsafe heartbeat",
    );
    // Once etcd is back, the cluster elects a primary again.
    let after = wait_for(Duration::from_secs(60), || cluster.primary());
    cluster.check(after.is_some(), "no primary after the outage");
}

#[test]
fn automatic_failover_reports_the_possible_loss_in_history_and_metrics() {
    let (mut cluster, old) = three_with_a_replicated_row(Duration::from_secs(90));
    // The whole node dies: its lock expires, a replica takes over.
    cluster.nodes[old].crash();
    let new = cluster.new_primary(old, Duration::from_secs(40));
    // /primary answers the moment PostgreSQL is promoted; the history entry
    // is written right after.
    let history: serde_json::Value = wait_for(Duration::from_secs(10), || {
        let history: serde_json::Value =
            serde_json::from_slice(&cluster.nodes[new].call("GET", "/history", "", false).body)
                .ok()?;
        (history.as_array().is_some_and(|rows| !rows.is_empty())).then_some(history)
    })
    .unwrap_or_else(|| panic!("no history entry after the failover\n{}", cluster.logs()));
    let row = &history[0];
    assert_eq!(row[4], cluster.nodes[new].name.as_str(), "{history}");
    assert_eq!(
        row[5]["failover_from"],
        cluster.nodes[old].name.as_str(),
        "{history}"
    );
    let loss = row[5]["possible_loss_bytes"]
        .as_u64()
        .unwrap_or_else(|| panic!("no loss reported: {history}"));
    assert!(
        row[2]
            .as_str()
            .is_some_and(|r| r.starts_with("automatic failover from ")),
        "{history}"
    );
    let metrics = cluster.nodes[new]
        .call("GET", "/metrics", "", false)
        .body_text();
    assert!(
        metrics.contains(&format!(
            "matriarch_last_failover_possible_loss_bytes{{scope=\"e2e\",name=\"{}\"}} {loss}",
            cluster.nodes[new].name
        )),
        "{metrics}"
    );
    let log = cluster.nodes[new].log_tail(400);
    assert!(
        log.contains("failover: the former leader may have held WAL"),
        "{log}"
    );
}
