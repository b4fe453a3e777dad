//! End-to-end scenarios: real etcd, real PostgreSQL, `matriarch run` processes.

mod common;

use std::time::{Duration, Instant};

use common::{
    etcd_get, healthy_pair, serial, three_with_a_replicated_row, wait_for, Cluster, ClusterChecks,
    DcsSpec, Options, RecordedCallbacks,
};

#[test]
fn bootstrap_and_replicate() {
    let (cluster, primary) =
        Cluster::healthy_on_etcd(3, Options::default(), Duration::from_secs(60));
    let p = &cluster.nodes[primary];
    p.psql("CREATE TABLE herd (id int primary key, name text); INSERT INTO herd VALUES (1, 'matriarch')")
        .unwrap_or_else(|e| panic!("write on the primary: {e}\n{}", cluster.logs()));
    for (i, node) in cluster.nodes.iter().enumerate() {
        if i == primary {
            continue;
        }
        assert!(
            cluster.wait_sql(
                i,
                "SELECT name FROM herd WHERE id = 1",
                "matriarch",
                Duration::from_secs(20)
            ),
            "the write is not visible on {}\n{}",
            node.name,
            cluster.logs()
        );
        // A replica refuses writes.
        let err = node
            .psql("INSERT INTO herd VALUES (2, 'calf')")
            .unwrap_err();
        assert!(err.contains("read-only"), "{err}");
    }
    // The REST API describes the cluster as Patroni does.
    let body: serde_json::Value =
        serde_json::from_slice(&p.call("GET", "/cluster", "", false).body).unwrap();
    let members = body["members"].as_array().unwrap();
    assert_eq!(members.len(), 3, "{body}");
    assert_eq!(
        members.iter().filter(|m| m["role"] == "leader").count(),
        1,
        "{body}"
    );
    let status: serde_json::Value =
        serde_json::from_slice(&p.call("GET", "/patroni", "", false).body).unwrap();
    assert_eq!(status["role"], "primary", "{status}");
    assert_eq!(status["state"], "running", "{status}");
    assert_eq!(status["patroni"]["scope"], "e2e", "{status}");
    assert!(status["xlog"]["location"].as_u64().is_some(), "{status}");
    // Secrets never reach the logs.
    for node in &cluster.nodes {
        let log = std::fs::read_to_string(&node.log).unwrap();
        for secret in [common::PG_PASSWORD, common::API_PASSWORD, "repl-secret"] {
            assert!(!log.contains(secret), "{} logged a secret", node.name);
        }
    }
    let metrics = p.call("GET", "/metrics", "", false).body_text();
    assert!(
        metrics.contains("matriarch_primary{scope=\"e2e\",name=\""),
        "{metrics}"
    );
    // HEAD and OPTIONS answer like GET.
    assert_eq!(p.call("OPTIONS", "/primary", "", false).status, 200);
    assert_eq!(p.call("HEAD", "/master", "", false).status, 200);
    assert_eq!(p.status("/replica"), 503);
    // Patroni's health checks, on the primary and on a replica.
    let r = &cluster.nodes[(primary + 1) % 3];
    for (path, on_primary, on_replica) in [
        ("/", 200, 503),
        ("/read-write", 200, 503),
        ("/leader", 200, 503),
        ("/replica", 503, 200),
        ("/replica?lag=100MB", 503, 200),
        ("/replica?lag=lots", 503, 503),
        ("/replica?nofailover=false", 503, 200),
        ("/replica?nofailover=true", 503, 503),
        ("/read-only", 200, 200),
        ("/synchronous", 503, 503),
        ("/asynchronous", 503, 200),
        ("/health", 200, 200),
        ("/liveness", 200, 200),
        ("/readiness", 200, 200),
        ("/nonexistent", 404, 404),
    ] {
        assert_eq!(p.status(path), on_primary, "primary {path}");
        assert_eq!(r.status(path), on_replica, "replica {path}");
    }
}

#[test]
fn node_crash_fails_over_and_the_old_primary_rejoins() {
    let (mut cluster, old) = three_with_a_replicated_row(Duration::from_secs(60));
    // The whole node dies: agent and PostgreSQL, no clean shutdown.
    cluster.nodes[old].crash();
    let crashed = Instant::now();
    let new = cluster.new_primary(old, Duration::from_secs(30));
    let took = crashed.elapsed();
    // ttl 4 s: the lock expires, a replica wins the race and is promoted.
    assert!(took < Duration::from_secs(20), "failover took {took:?}");
    cluster.psql_ok(new, "INSERT INTO t VALUES (2)");
    // The old primary comes back and rejoins as a replica of the new one.
    cluster.nodes[old].start(&[]);
    cluster.check(
        cluster.nodes[old].wait_status("/replica", 200, Duration::from_secs(60)),
        "the old primary did not rejoin",
    );
    cluster.check(
        cluster.wait_sql(old, "SELECT count(*) FROM t", "2", Duration::from_secs(30)),
        "the rejoined node does not see the new primary's write",
    );
    assert_eq!(cluster.primary(), Some(new));
}

#[test]
fn sigterm_on_the_primary_hands_over_without_waiting_for_the_ttl() {
    let _serial = serial();
    let options = Options {
        dcs: "    ttl: 30\n    loop_wait: 1\n    retry_timeout: 2\n".to_owned(),
        ..Options::default()
    };
    let (mut cluster, old) = Cluster::healthy_on_etcd(2, options, Duration::from_secs(60));
    cluster.nodes[old].signal(libc::SIGTERM);
    let stopped = Instant::now();
    let new = cluster.new_primary(old, Duration::from_secs(25));
    let took = stopped.elapsed();
    assert!(
        took < Duration::from_secs(15),
        "handover took {took:?}, not much less than the ttl of 30 s"
    );
    assert!(
        cluster.nodes[old].wait_exit(Duration::from_secs(20)),
        "the agent did not exit"
    );
    // PostgreSQL of the old primary was stopped cleanly.
    assert_eq!(cluster.nodes[old].postmaster_pid(), None);
    cluster.psql_ok(new, "CREATE TABLE after_handover (v int)");
}

#[test]
fn the_write_fence_stops_postgres_when_the_primary_agent_is_killed() {
    let (mut cluster, primary) =
        Cluster::healthy_on_etcd(2, Options::default(), Duration::from_secs(60));
    cluster.psql_ok(primary, "CREATE TABLE fenced (v int)");
    // The replica has the table before the primary is cut off (under load it
    // may lag, and a promoted replica without it would fail the last insert).
    let has_table = "SELECT count(*) FROM pg_tables WHERE tablename = 'fenced'";
    cluster.check(
        cluster.wait_sql(1 - primary, has_table, "1", Duration::from_secs(30)),
        "the replica does not have the table",
    );
    // Only the agent dies (kill -9); its PostgreSQL keeps running unless fenced.
    cluster.nodes[primary].kill_agent();
    let killed = Instant::now();
    let refused = wait_for(Duration::from_secs(10), || {
        cluster.nodes[primary]
            .psql("INSERT INTO fenced VALUES (1)")
            .err()
    });
    cluster.check(
        refused.is_some(),
        "the orphaned primary still accepts writes 10 s after its agent died",
    );
    // Well within the lock's ttl (4 s): before a replica could be promoted.
    assert!(
        killed.elapsed() < Duration::from_secs(4),
        "fenced after {:?}",
        killed.elapsed()
    );
    let new = cluster.new_primary(primary, Duration::from_secs(30));
    cluster.psql_ok(new, "INSERT INTO fenced VALUES (2)");
}

#[test]
fn switchover_by_rest_api_with_callbacks() {
    let _serial = serial();
    let recorded = RecordedCallbacks::new();
    let options = Options {
        extra: recorded.yaml(&["on_start", "on_stop", "on_role_change"]),
        ..Options::default()
    };
    let mut cluster = Cluster::configure_on_etcd(3, options);
    cluster.start_each_named();
    let old = cluster.wait_healthy(2, Duration::from_secs(60));
    let candidate = (old + 1) % 3;
    let response = cluster.switchover_ok((old + 2) % 3, old, candidate);
    assert!(
        response.body_text().contains("Successfully switched over"),
        "{}",
        response.body_text()
    );
    let new = wait_for(Duration::from_secs(30), || cluster.primary()).unwrap();
    assert_eq!(new, candidate, "{}", cluster.logs());
    cluster.check(
        cluster.nodes[old].wait_status("/replica", 200, Duration::from_secs(60)),
        "the old primary did not become a replica",
    );
    cluster.psql_ok(candidate, "CREATE TABLE switched (v int)");
    // History records the timeline switch.
    let history: serde_json::Value = serde_json::from_slice(
        &cluster.nodes[candidate]
            .call("GET", "/history", "", false)
            .body,
    )
    .unwrap();
    assert_eq!(history.as_array().map(Vec::len), Some(1), "{history}");
    // Callbacks: asynchronous, with `<action> <role> <scope>`.
    let calls = |i: usize| recorded.calls(&cluster.nodes[i].name).join("\n");
    let got = wait_for(Duration::from_secs(10), || {
        (calls(candidate).contains("on_role_change primary e2e")
            && calls(old).contains("on_role_change replica e2e"))
        .then_some(())
    });
    assert!(
        got.is_some(),
        "new primary: {:?}\nold primary: {:?}",
        calls(candidate),
        calls(old)
    );
    assert!(
        calls(old).contains("on_start primary e2e"),
        "{:?}",
        calls(old)
    );
    assert!(
        calls(candidate).contains("on_start replica e2e"),
        "{:?}",
        calls(candidate)
    );
}

#[test]
fn rest_api_refuses_unauthenticated_and_bad_changes_and_applies_good_ones() {
    let (cluster, primary, replica) = healthy_pair(Duration::from_secs(60));
    let p = &cluster.nodes[primary];
    let leader = &p.name;
    let candidate = &cluster.nodes[replica].name;
    let config_before = p.get_json("/config");
    assert_eq!(config_before["ttl"], 4, "{config_before}");
    let good = format!("{{\"leader\": \"{leader}\", \"candidate\": \"{candidate}\"}}");

    // Unauthenticated or wrongly authenticated: 401, nothing changes.
    assert_eq!(p.call("POST", "/switchover", &good, false).status, 401);
    let wrong = [
        ("Authorization", "Basic YWRtaW46d3Jvbmc="),
        ("Content-Type", "application/json"),
    ];
    let r = matriarch_testkit::http_request(
        "POST",
        &format!("{}/switchover", p.api()),
        &wrong,
        good.as_bytes(),
    )
    .unwrap();
    assert_eq!(r.status, 401);
    assert_eq!(
        p.call("PATCH", "/config", "{\"ttl\": 10}", false).status,
        401
    );
    assert_eq!(p.call("POST", "/restart", "", false).status, 401);

    // Bad input: 4xx with a message, nothing changes.
    let cases = [
        (
            "POST",
            "/switchover",
            "not json".to_owned(),
            400,
            "not valid JSON",
        ),
        (
            "POST",
            "/switchover",
            "[1, 2]".to_owned(),
            400,
            "JSON object",
        ),
        (
            "POST",
            "/switchover",
            format!("{{\"leader\": \"{leader}\", \"bogus\": 1}}"),
            400,
            "bogus",
        ),
        (
            "POST",
            "/switchover",
            format!("{{\"leader\": \"{leader}\", \"candidate\": 7}}"),
            400,
            "invalid",
        ),
        (
            "POST",
            "/switchover",
            format!("{{\"leader\": \"{leader}\", \"candidate\": \"ghost\"}}"),
            412,
            "ghost",
        ),
        (
            "POST",
            "/switchover",
            format!("{{\"leader\": \"{candidate}\"}}"),
            412,
            "does not match",
        ),
        (
            "POST",
            "/switchover",
            format!("{{\"leader\": \"{leader}\", \"scheduled_at\": \"tomorrow\"}}"),
            400,
            "scheduled_at",
        ),
        ("POST", "/failover", "{}".to_owned(), 400, "candidate"),
        (
            "POST",
            "/failover",
            "{\"candidate\": \"ghost\"}".to_owned(),
            412,
            "ghost",
        ),
        (
            "PATCH",
            "/config",
            "{\"ttl\": ".to_owned(),
            400,
            "not valid JSON",
        ),
        (
            "PATCH",
            "/config",
            "{\"ttl\": \"soon\"}".to_owned(),
            400,
            "config.ttl",
        ),
        (
            "PATCH",
            "/config",
            "{\"tll\": 10}".to_owned(),
            400,
            "config.tll",
        ),
        (
            "PATCH",
            "/config",
            "{\"loop_wait\": 10}".to_owned(),
            400,
            "exceeds ttl",
        ),
    ];
    for (method, path, body, status, needle) in cases {
        let r = p.call(method, path, &body, true);
        assert_eq!(
            r.status,
            status,
            "{method} {path} {body}: {}",
            r.body_text()
        );
        assert!(
            r.body_text().contains(needle),
            "{method} {path} {body}: {}",
            r.body_text()
        );
    }
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        cluster.primary(),
        Some(primary),
        "the leader changed\n{}",
        cluster.logs()
    );
    assert_eq!(p.get_json("/config"), config_before);
    assert!(p.get_json("/cluster").get("scheduled_switchover").is_none());

    // A good change reaches every node's engine: pause.
    let r = p.call("PATCH", "/config", "{\"pause\": true}", true);
    assert_eq!(r.status, 200, "{}", r.body_text());
    for node in &cluster.nodes {
        let paused = wait_for(Duration::from_secs(10), || {
            (node.get_json("/patroni")["pause"] == true).then_some(())
        });
        assert!(
            paused.is_some(),
            "{} did not adopt pause\n{}",
            node.name,
            cluster.logs()
        );
    }
    assert_eq!(
        p.get_json("/config")["ttl"],
        4,
        "the merge patch kept the other keys"
    );
    let r = p.call("PATCH", "/config", "{\"pause\": null}", true);
    assert_eq!(r.status, 200, "{}", r.body_text());
    assert_eq!(p.get_json("/config")["pause"], false);

    // POST /restart restarts PostgreSQL in place; the node stays primary.
    let r = p.call("POST", "/restart", "{}", true);
    assert_eq!(r.status, 200, "{}", r.body_text());
    assert_eq!(cluster.wait_healthy(1, Duration::from_secs(30)), primary);
    // POST /reinitialize: refused on the leader, re-clones a replica.
    p.psql("CREATE TABLE before_reinit (v int)").unwrap();
    let r = p.call("POST", "/reinitialize", "{}", true);
    assert_eq!(r.status, 503, "{}", r.body_text());
    let r = cluster.nodes[replica].call("POST", "/reinitialize", "{}", true);
    assert_eq!(r.status, 200, "{}", r.body_text());
    assert_eq!(cluster.wait_healthy(1, Duration::from_secs(60)), primary);
    cluster.check(
        cluster.wait_sql(
            replica,
            "SELECT count(*) FROM before_reinit",
            "0",
            Duration::from_secs(30),
        ),
        "the reinitialized replica does not have the primary's table",
    );
}

#[test]
fn a_duplicate_member_name_is_refused() {
    let cluster = Cluster::start_on_etcd(1, Options::default());
    cluster.wait_healthy(0, Duration::from_secs(60));
    let original = std::fs::read_to_string(&cluster.nodes[0].config).unwrap();
    let api_port = matriarch_testkit::free_port().unwrap();
    let dir = tempfile::tempdir().unwrap();
    // Its own data directory: the same one would be refused by its lock first.
    let twin = original
        .replace(
            &format!("listen: 127.0.0.1:{}", cluster.nodes[0].api_port),
            &format!("listen: 127.0.0.1:{api_port}"),
        )
        .replace(
            &format!("data_dir: {}", cluster.nodes[0].data_dir().display()),
            &format!("data_dir: {}", dir.path().join("data").display()),
        );
    assert!(twin.contains(&dir.path().display().to_string()), "{twin}");
    let path = dir.path().join("twin.yaml");
    std::fs::write(&path, twin).unwrap();
    let started = Instant::now();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_matriarch"))
        .args(["run", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("already in use"), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(15));
    // The original keeps running as primary.
    assert_eq!(cluster.primary(), Some(0));

    // SIGHUP reloads: the log level and tags apply at once, the log format
    // is reported as needing a restart, and a broken file is refused without
    // stopping.
    let node = &cluster.nodes[0];
    let config = std::fs::read_to_string(&node.config).unwrap();
    let changed = config
        .replace("level: info,matriarch=debug", "level: info")
        .replace("format: text", "format: json")
        + "  nosync: true\n";
    assert!(changed.contains("format: json"), "{changed}");
    std::fs::write(&node.config, changed).unwrap();
    node.signal(libc::SIGHUP);
    let reloaded = wait_for(Duration::from_secs(10), || {
        let log = std::fs::read_to_string(&node.log).ok()?;
        (log.contains("log level changed")
            && log.contains("tags changed: applying")
            && log.contains("take effect after a restart")
            && log.contains("log.format"))
        .then_some(())
    });
    assert!(reloaded.is_some(), "{}", node.log_tail(20));
    std::fs::write(&node.config, "scope: [broken").unwrap();
    node.signal(libc::SIGHUP);
    let refused = wait_for(Duration::from_secs(10), || {
        std::fs::read_to_string(&node.log)
            .ok()?
            .contains("reload refused")
            .then_some(())
    });
    assert!(refused.is_some(), "{}", node.log_tail(20));
    assert_eq!(cluster.primary(), Some(0));
}

#[test]
fn a_postgres_crash_with_the_agent_alive_recovers() {
    let (cluster, primary) =
        Cluster::healthy_on_etcd(2, Options::default(), Duration::from_secs(60));
    cluster.psql_ok(
        primary,
        "CREATE TABLE crash (v int); INSERT INTO crash VALUES (1)",
    );
    cluster.nodes[primary].kill_postgres();
    // The agent restarts PostgreSQL (or the replica takes over): either way
    // the cluster has a primary that takes writes and a replica again.
    let writable = wait_for(Duration::from_secs(40), || {
        let p = cluster.primary()?;
        cluster.nodes[p]
            .psql("INSERT INTO crash VALUES (2)")
            .ok()
            .map(|_| p)
    });
    let p = writable
        .unwrap_or_else(|| panic!("no writable primary after the crash\n{}", cluster.logs()));
    cluster.wait_healthy(1, Duration::from_secs(60));
    cluster.check(
        cluster.wait_sql(
            1 - p,
            "SELECT count(*) FROM crash",
            "2",
            Duration::from_secs(30),
        ),
        "the replica does not have the row written after the crash",
    );
}

#[test]
fn the_dns_router_points_the_writer_name_at_the_new_primary_after_a_failover() {
    let _serial = serial();
    let bind = matriarch_testkit::BindServer::start().expect("BIND");
    let writer = format!("primary.{}", bind.zone());
    let options = Options {
        distinct_ips: true,
        extra: format!(
            "router:\n  dns:\n    server: 127.0.0.1:{}\n    zone: {}\n    writer: {writer}\n    ttl: 1\n    tsig:\n      key_name: {}\n      algorithm: {}\n      secret: {}\n",
            bind.port(),
            bind.zone(),
            bind.tsig_key_name(),
            bind.tsig_algorithm(),
            bind.tsig_secret_base64()
        ),
        ..Options::default()
    };
    let (mut cluster, old) = Cluster::healthy_on_etcd(3, options, Duration::from_secs(60));
    let hosts: Vec<std::net::Ipv4Addr> = cluster
        .nodes
        .iter()
        .map(|n| n.pg_host.parse().unwrap())
        .collect();
    let points_at = |i: usize| {
        let want = hosts[i];
        wait_for(Duration::from_secs(20), || {
            (bind.query_a(&writer).ok()? == vec![want]).then_some(())
        })
        .is_some()
    };
    assert!(
        points_at(old),
        "{writer} does not point at the primary: {:?}\n{}",
        bind.query_a(&writer),
        cluster.logs()
    );
    cluster.nodes[old].crash();
    let new = cluster.new_primary(old, Duration::from_secs(30));
    assert!(
        points_at(new),
        "{writer} does not follow the failover: {:?}\n{}",
        bind.query_a(&writer),
        cluster.logs()
    );
}

#[test]
fn zookeeper_bootstrap_and_failover() {
    let _serial = serial();
    let zk = matriarch_testkit::ZooKeeperServer::start().expect("ZooKeeper");
    let options = Options {
        log_format: "json",
        ..Options::default()
    };
    let mut cluster = Cluster::start(2, DcsSpec::ZooKeeper(zk.connect_string()), options);
    let old = cluster.wait_healthy(1, Duration::from_secs(60));
    // JSON logs: one object a line, with the cluster and member fields.
    let log = std::fs::read_to_string(&cluster.nodes[old].log).unwrap();
    let started = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|l| l["fields"]["message"] == "matriarch started")
        .unwrap_or_else(|| panic!("no JSON start line in {log}"));
    assert_eq!(started["span"]["cluster"], "e2e", "{started}");
    assert_eq!(
        started["span"]["member"],
        cluster.nodes[old].name.as_str(),
        "{started}"
    );
    cluster.psql_ok(old, "CREATE TABLE zk (v int); INSERT INTO zk VALUES (1)");
    let other = 1 - old;
    assert!(cluster.wait_sql(
        other,
        "SELECT count(*) FROM zk",
        "1",
        Duration::from_secs(20)
    ));
    cluster.nodes[old].crash();
    let new = cluster.new_primary(old, Duration::from_secs(40));
    assert_eq!(new, other);
    cluster.psql_ok(new, "INSERT INTO zk VALUES (2)");
}

#[test]
fn an_etcd_outage_stops_writes_on_the_primary_before_its_lock_expires() {
    let (cluster, primary) =
        Cluster::healthy_on_etcd(2, Options::default(), Duration::from_secs(60));
    cluster.psql_ok(primary, "CREATE TABLE outage (v int)");
    cluster.etcd().pause().expect("pause etcd");
    let cut = Instant::now();
    // The lock was renewed at most `cut` ago and lives 4 s (ttl): the primary
    // must refuse writes by then. psql's own time is part of the measure.
    let refused = wait_for(Duration::from_secs(10), || {
        cluster.nodes[primary]
            .psql("INSERT INTO outage VALUES (1)")
            .err()
            .map(|_| cut.elapsed())
    });
    cluster.etcd().resume().expect("resume etcd");
    let refused =
        refused.unwrap_or_else(|| panic!("the primary kept taking writes\n{}", cluster.logs()));
    cluster.check(
        refused < Duration::from_secs(4),
        &format!("writes stopped only after {refused:?}"),
    );
    // Once etcd is back, the cluster has a primary again.
    cluster.wait_healthy(1, Duration::from_secs(60));
}

#[test]
fn a_nofailover_replica_is_never_promoted() {
    let mut cluster = Cluster::configure_on_etcd(2, Options::default());
    // node1 starts alone and bootstraps; node2 joins tagged nofailover.
    cluster.start_node1_as_primary(Duration::from_secs(60));
    let config = std::fs::read_to_string(&cluster.nodes[1].config).unwrap();
    std::fs::write(
        &cluster.nodes[1].config,
        format!("{config}  nofailover: true\n"),
    )
    .unwrap();
    cluster.nodes[1].start(&[]);
    assert_eq!(cluster.wait_healthy(1, Duration::from_secs(60)), 0);
    crash_node1_and_check_node2_stays_a_replica(&mut cluster);
    // The old primary comes back and leads again.
    cluster.nodes[0].start(&[]);
    cluster.check(
        cluster.wait_primary_is(0, Duration::from_secs(60)),
        "node1 does not lead again",
    );
}

#[test]
fn a_failing_pre_promote_cancels_the_promotion() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let allow = dir.path().join("allow");
    let calls = dir.path().join("calls");
    let script = dir.path().join("pre_promote.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho \"$@\" >> {}\ntest -e {}\n",
            calls.display(),
            allow.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let options = Options {
        extra: format!("callbacks:\n  pre_promote: {}\n", script.display()),
        ..Options::default()
    };
    let mut cluster = Cluster::configure_on_etcd(2, options);
    cluster.start_node1_first(Duration::from_secs(60));
    cluster.nodes[0].crash();
    // node2 wins the lock, but pre_promote refuses: no promotion.
    let called = wait_for(Duration::from_secs(20), || {
        std::fs::read_to_string(&calls)
            .ok()
            .filter(|c| c.contains("pre_promote primary e2e"))
    });
    cluster.check(called.is_some(), "pre_promote was not called");
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        cluster.nodes[1]
            .psql("CREATE TABLE refused (v int)")
            .is_err(),
        "promoted despite pre_promote"
    );
    // Once the script agrees, the next attempt promotes.
    std::fs::write(&allow, "").unwrap();
    cluster.check(
        wait_for(Duration::from_secs(30), || {
            cluster.nodes[1].psql("CREATE TABLE allowed (v int)").ok()
        })
        .is_some(),
        "not promoted after pre_promote agreed",
    );
}

#[test]
fn haproxy_with_httpchk_on_primary_sends_clients_to_the_new_primary() {
    let (mut cluster, old) =
        Cluster::healthy_on_etcd(3, Options::default(), Duration::from_secs(60));
    let haproxy = cluster.start_haproxy();
    let server_port = |expected: u16| {
        wait_for(Duration::from_secs(30), || {
            let port = common::psql_at("127.0.0.1", haproxy.port, "SELECT current_setting('port')")
                .ok()?;
            (port == expected.to_string()).then_some(())
        })
        .is_some()
    };
    let old_port = cluster.nodes[old].pg_port;
    cluster.check(server_port(old_port), "HAProxy does not reach the primary");
    cluster.nodes[old].crash();
    let new = cluster.new_primary(old, Duration::from_secs(30));
    let new_port = cluster.nodes[new].pg_port;
    cluster.check(
        server_port(new_port),
        "HAProxy does not send clients to the new primary",
    );
    common::psql_at(
        "127.0.0.1",
        haproxy.port,
        "CREATE TABLE through_haproxy (v int)",
    )
    .unwrap_or_else(|e| panic!("write through HAProxy: {e}"));
}

/// The DCS key of the pending switchover (Patroni's `failover`).
const FAILOVER_KEY: &str = "/service/e2e/failover";

/// A switchover scheduled a few seconds ahead is accepted at once (202),
/// changes nothing before its time and happens after it: the candidate
/// leads, the `failover` key is gone, the old primary follows. A time in
/// the past is refused (422) and leaves nothing behind.
#[test]
fn scheduled_switchover_happens_at_its_time() {
    let (cluster, old) = Cluster::healthy_on_etcd(3, Options::default(), Duration::from_secs(60));
    let candidate = (old + 1) % 3;
    let other = (old + 2) % 3;
    let leader_name = cluster.nodes[old].name.clone();
    let candidate_name = cluster.nodes[candidate].name.clone();
    let request = |at: chrono::DateTime<chrono::Utc>| {
        format!(
            "{{\"leader\": \"{leader_name}\", \"candidate\": \"{candidate_name}\", \"scheduled_at\": \"{}\"}}",
            at.to_rfc3339()
        )
    };

    // A time in the past is refused and leaves nothing behind.
    let past = chrono::Utc::now() - chrono::Duration::seconds(60);
    let r = cluster.nodes[other].call("POST", "/switchover", &request(past), true);
    assert_eq!(r.status, 422, "{}", r.body_text());
    assert!(r.body_text().contains("past"), "{}", r.body_text());
    assert_eq!(etcd_get(&cluster.etcd_url(), FAILOVER_KEY), None);

    // Scheduled 8 s ahead, through a replica's API: accepted at once.
    let at = chrono::Utc::now() + chrono::Duration::seconds(8);
    let posted = Instant::now();
    let r = cluster.nodes[other].call("POST", "/switchover", &request(at), true);
    cluster.assert_status(&r, 202);
    assert!(r.body_text().contains("scheduled"), "{}", r.body_text());
    assert!(
        posted.elapsed() < Duration::from_secs(5),
        "a scheduled switchover must not wait for its outcome"
    );
    assert!(etcd_get(&cluster.etcd_url(), FAILOVER_KEY).is_some());
    // Each node's /cluster shows it once its view refreshed.
    let scheduled = wait_for(Duration::from_secs(3), || {
        let s = cluster.nodes[old].get_json("/cluster")["scheduled_switchover"].clone();
        (!s.is_null()).then_some(s)
    })
    .unwrap_or_default();
    assert_eq!(scheduled["from"], leader_name.as_str(), "{scheduled}");
    assert_eq!(scheduled["to"], candidate_name.as_str(), "{scheduled}");

    // Until its time nothing changes; after it the candidate leads. Every
    // observation is checked against the wall clock it was made at (the
    // agents share this host's clock; 500 ms covers one poll).
    let mut checked_before = 0;
    let led_at = wait_for(Duration::from_secs(40), || {
        let now = chrono::Utc::now();
        let old_primary = cluster.nodes[old].status("/primary") == 200;
        let candidate_primary = cluster.nodes[candidate].status("/primary") == 200;
        if now < at - chrono::Duration::milliseconds(500) {
            assert!(
                old_primary && !candidate_primary,
                "the leader changed {} ms before the scheduled time\n{}",
                (at - now).num_milliseconds(),
                cluster.logs()
            );
            checked_before += 1;
        }
        candidate_primary.then_some(now)
    })
    .unwrap_or_else(|| panic!("the candidate never led\n{}", cluster.logs()));
    assert!(
        checked_before >= 10,
        "only {checked_before} checks before the time"
    );
    assert!(
        led_at >= at - chrono::Duration::milliseconds(500),
        "led at {led_at}, scheduled for {at}"
    );
    assert!(
        led_at < at + chrono::Duration::seconds(20),
        "led at {led_at}, long after {at}"
    );
    assert_eq!(cluster.primary(), Some(candidate), "{}", cluster.logs());

    // The request is consumed: the key is gone and /cluster shows no schedule.
    assert!(
        wait_for(Duration::from_secs(10), || etcd_get(
            &cluster.etcd_url(),
            FAILOVER_KEY
        )
        .is_none()
        .then_some(()))
        .is_some(),
        "the failover key outlived the switchover: {:?}",
        etcd_get(&cluster.etcd_url(), FAILOVER_KEY)
    );
    // /cluster answers from a view refreshed every loop_wait.
    assert!(wait_for(Duration::from_secs(10), || {
        cluster.nodes[candidate]
            .get_json("/cluster")
            .get("scheduled_switchover")
            .is_none()
            .then_some(())
    })
    .is_some());

    // The old primary follows the new one, and sees its writes.
    cluster.check(
        cluster.nodes[old].wait_status("/replica", 200, Duration::from_secs(60)),
        "the old primary did not rejoin as a replica",
    );
    cluster.psql_ok(
        candidate,
        "CREATE TABLE scheduled (v int); INSERT INTO scheduled VALUES (1)",
    );
    cluster.check(
        cluster.wait_sql(
            old,
            "SELECT count(*) FROM scheduled",
            "1",
            Duration::from_secs(30),
        ),
        "the old primary does not see the new primary's write",
    );
}

/// The WAL positions `/patroni` reports: the primary's location, or a
/// replica's (received, replayed).
fn positions(node: &common::Node) -> (Option<u64>, Option<u64>, Option<u64>) {
    let status = node.get_json("/patroni");
    let xlog = &status["xlog"];
    (
        xlog["location"].as_u64(),
        xlog["received_location"].as_u64(),
        xlog["replayed_location"].as_u64(),
    )
}

/// Between two replicas at the same WAL position, the one with the higher
/// `failover_priority` tag is promoted when the primary crashes.
#[test]
fn failover_priority_decides_between_equally_fresh_replicas() {
    let mut cluster = Cluster::configure_on_etcd(3, Options::default());
    // node1 bootstraps alone; node2 keeps failover_priority 1, node3 gets 5.
    // On a tie of position and priority the lower name wins, so without the
    // priority node2 would be promoted.
    cluster.edit_config(2, "  failover_priority: 1\n", "  failover_priority: 5\n");
    cluster.start_node1_first(Duration::from_secs(60));
    cluster.psql_ok(0, "CREATE TABLE prio (v int); INSERT INTO prio VALUES (1)");
    // No more writes: wait until both replicas have received and replayed
    // everything the primary wrote, and it stays so for a second.
    let all_caught_up = || {
        let (Some(primary), _, _) = positions(&cluster.nodes[0]) else {
            return false;
        };
        [1, 2].iter().all(|i| {
            let (_, received, replayed) = positions(&cluster.nodes[*i]);
            received == Some(primary) && replayed == Some(primary)
        })
    };
    let equal = wait_for(Duration::from_secs(30), || {
        if !all_caught_up() {
            return None;
        }
        let before = positions(&cluster.nodes[0]);
        std::thread::sleep(Duration::from_secs(1));
        (all_caught_up() && positions(&cluster.nodes[0]) == before).then_some(())
    });
    assert!(
        equal.is_some(),
        "the replicas did not catch up: {:?} {:?} {:?}\n{}",
        positions(&cluster.nodes[0]),
        positions(&cluster.nodes[1]),
        positions(&cluster.nodes[2]),
        cluster.logs()
    );
    cluster.nodes[0].crash();
    let new = cluster.new_primary(0, Duration::from_secs(30));
    assert_eq!(
        new,
        2,
        "the failover_priority 5 replica was not promoted\n{}",
        cluster.logs()
    );
    // The other replica follows it, and the cluster takes writes.
    cluster.psql_ok(2, "INSERT INTO prio VALUES (2)");
    cluster.check(
        cluster.wait_sql(1, "SELECT count(*) FROM prio", "2", Duration::from_secs(30)),
        "node2 does not follow node3",
    );
    assert_eq!(cluster.primary(), Some(2));
}

/// `failover_priority: 0` works like `nofailover`: the replica is neither
/// promoted when it is the last one left, nor accepted as a switchover
/// candidate.
#[test]
fn a_failover_priority_zero_replica_is_never_promoted() {
    let mut cluster = Cluster::configure_on_etcd(2, Options::default());
    cluster.edit_config(1, "  failover_priority: 1\n", "  failover_priority: 0\n");
    cluster.start_node1_first(Duration::from_secs(60));
    // Nor by request: a switchover to it is refused.
    let r = cluster.switchover(0, 0, 1);
    assert_eq!(r.status, 412, "{}", r.body_text());
    crash_node1_and_check_node2_stays_a_replica(&mut cluster);
    // The old primary comes back and leads again; node2 follows it.
    cluster.nodes[0].start(&[]);
    assert_eq!(cluster.wait_healthy(1, Duration::from_secs(60)), 0);
}

/// Crashes node1 (the primary): three ttls later node2, which may not be
/// promoted, is still a replica and refuses writes.
fn crash_node1_and_check_node2_stays_a_replica(cluster: &mut Cluster) {
    cluster.nodes[0].crash();
    // Three ttls later node2 is still a replica and refuses writes.
    std::thread::sleep(Duration::from_secs(12));
    assert_eq!(
        cluster.nodes[1].status("/primary"),
        503,
        "{}",
        cluster.logs()
    );
    assert!(cluster.nodes[1].psql("CREATE TABLE nope (v int)").is_err());
}

/// The ttl the etcd lease behind `key` was granted with.
fn lease_ttl_of(etcd_url: &str, key: &str) -> Option<i64> {
    let (_, lease) = etcd_get(etcd_url, key)?;
    common::etcd_lease_granted_ttl(etcd_url, lease)
}

/// HA loops node `i` ran during `window`.
fn loops_during(cluster: &Cluster, i: usize, window: Duration) -> u64 {
    let loops = || {
        cluster.nodes[i].get_json("/patroni")["loops"]
            .as_u64()
            .unwrap_or(0)
    };
    let before = loops();
    std::thread::sleep(window);
    loops() - before
}

/// PATCH /config through one node reaches every node: each serves it, each
/// engine reports it in force (`/patroni` `dynamic_config`) and acts on it
/// (its etcd lease follows the new ttl, its loop the new loop_wait).
#[test]
fn a_dynamic_config_change_reaches_every_node() {
    let (cluster, primary) =
        Cluster::healthy_on_etcd(3, Options::default(), Duration::from_secs(60));
    let url = cluster.etcd_url();
    for node in &cluster.nodes {
        let key = format!("/service/e2e/members/{}", node.name);
        assert_eq!(lease_ttl_of(&url, &key), Some(4), "{key}");
    }
    let fast = loops_during(&cluster, primary, Duration::from_secs(3));

    // The change goes through a replica's API: any node takes it.
    let through = (primary + 1) % 3;
    let change = "{\"ttl\": 12, \"loop_wait\": 3, \"retry_timeout\": 2, \"maximum_lag_on_failover\": 1048576}";
    let r = cluster.nodes[through].call("PATCH", "/config", change, true);
    cluster.assert_status(&r, 200);
    let answered: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(answered["loop_wait"], 3, "{answered}");

    for node in &cluster.nodes {
        // The cluster's configuration, as every node serves it...
        let config = node.get_json("/config");
        assert_eq!(config["ttl"], 12, "{}: {config}", node.name);
        assert_eq!(config["loop_wait"], 3, "{}: {config}", node.name);
        assert_eq!(
            config["maximum_lag_on_failover"], 1048576,
            "{}: {config}",
            node.name
        );
        // ... is the one its engine adopted ...
        let adopted = wait_for(Duration::from_secs(10), || {
            let in_force = node.get_json("/patroni")["dynamic_config"].clone();
            (in_force["ttl"] == 12
                && in_force["loop_wait"] == 3
                && in_force["retry_timeout"] == 2
                && in_force["maximum_lag_on_failover"] == 1048576)
                .then_some(())
        });
        assert!(
            adopted.is_some(),
            "{} did not adopt the change: {}\n{}",
            node.name,
            node.get_json("/patroni"),
            cluster.logs()
        );
        // ... and uses: its DCS keys now live 12 s.
        let key = format!("/service/e2e/members/{}", node.name);
        let renewed = wait_for(Duration::from_secs(15), || {
            (lease_ttl_of(&url, &key) == Some(12)).then_some(())
        });
        assert!(
            renewed.is_some(),
            "{key} is still on a {:?} s lease\n{}",
            lease_ttl_of(&url, &key),
            cluster.logs()
        );
    }
    assert_eq!(lease_ttl_of(&url, "/service/e2e/leader"), Some(12));
    // The engines loop every 3 s instead of every second.
    let slow = loops_during(&cluster, primary, Duration::from_secs(9));
    assert!(
        fast >= 2 && slow <= 5,
        "loops: {fast} in 3 s at loop_wait 1, {slow} in 9 s at loop_wait 3"
    );
    assert_eq!(cluster.primary(), Some(primary));
}

/// `postgresql.parameters` changed through the REST API (what `matriarch
/// ctl edit-config -p` sends) reach every running server by reload; one read
/// only at start is reported as pending until the node restarts; a parameter
/// matriarch manages itself is refused and changes nothing.
#[test]
fn a_postgresql_parameter_change_reaches_every_running_server() {
    let (cluster, primary) =
        Cluster::healthy_on_etcd(3, Options::default(), Duration::from_secs(60));
    let through = (primary + 1) % 3;
    let change = r#"{"postgresql": {"parameters": {"work_mem": "7MB", "max_connections": 123}}}"#;
    let r = cluster.nodes[through].call("PATCH", "/config", change, true);
    cluster.assert_status(&r, 200);
    for (i, node) in cluster.nodes.iter().enumerate() {
        assert!(
            cluster.wait_sql(i, "SHOW work_mem", "7MB", Duration::from_secs(15)),
            "{}: work_mem not reloaded\n{}",
            node.name,
            cluster.logs()
        );
        let pending = wait_for(Duration::from_secs(15), || {
            let body = node.get_json("/patroni");
            (body["pending_restart"] == true).then_some(body)
        });
        let body = pending.unwrap_or_else(|| {
            panic!(
                "{}: no pending_restart\n{}",
                node.name,
                node.get_json("/patroni")
            )
        });
        assert_eq!(
            body["pending_restart_reason"],
            serde_json::json!(["max_connections"]),
            "{}",
            node.name
        );
        assert_eq!(node.psql("SHOW max_connections").as_deref(), Ok("100"));
    }

    let refused = r#"{"postgresql": {"parameters": {"port": 6543, "work_mem": "9MB"}}}"#;
    let r = cluster.nodes[through].call("PATCH", "/config", refused, true);
    assert_eq!(r.status, 400, "{}", r.body_text());
    assert!(r.body_text().contains("port"), "{}", r.body_text());
    assert_eq!(
        cluster.nodes[through].get_json("/config")["postgresql"]["parameters"]["work_mem"],
        "7MB"
    );

    // A restart applies what waited for it, and the flag goes.
    let replica = &cluster.nodes[through];
    let r = replica.call("POST", "/restart", "{}", true);
    cluster.assert_status(&r, 200);
    cluster.check(
        cluster.wait_sql(
            through,
            "SHOW max_connections",
            "123",
            Duration::from_secs(30),
        ),
        "max_connections 123 not in force after the restart",
    );
    let cleared = wait_for(Duration::from_secs(15), || {
        replica
            .get_json("/patroni")
            .get("pending_restart")
            .is_none()
            .then_some(())
    });
    assert!(cleared.is_some(), "{}", replica.get_json("/patroni"));
    assert_eq!(
        cluster.nodes[through].psql("SHOW work_mem").as_deref(),
        Ok("7MB")
    );
}

/// SIGHUP applies a node's changed tags (its member record says so at the
/// next loop) and its own `postgresql.parameters` (PostgreSQL reloads),
/// without a restart of the agent or of PostgreSQL.
#[test]
fn sighup_applies_changed_tags_and_postgresql_parameters() {
    let (cluster, primary, replica) = healthy_pair(Duration::from_secs(60));
    let node = &cluster.nodes[replica];
    let postmaster = node.postmaster_pid();
    node.edit_config(
        "tags:\n  failover_priority: 1\n",
        "tags:\n  failover_priority: 1\n  nofailover: true\n",
    );
    node.edit_config(
        "    wal_keep_size: 128MB\n",
        "    wal_keep_size: 128MB\n    work_mem: 9MB\n",
    );
    node.signal(libc::SIGHUP);

    cluster.check(
        cluster.wait_sql(replica, "SHOW work_mem", "9MB", Duration::from_secs(15)),
        "work_mem 9MB not in force after SIGHUP",
    );
    let published = wait_for(Duration::from_secs(15), || {
        let body = cluster.nodes[primary].get_json("/cluster");
        let member = body["members"]
            .as_array()?
            .iter()
            .find(|m| m["name"] == node.name.as_str())?
            .clone();
        (member["tags"]["nofailover"] == true).then_some(member)
    });
    assert!(
        published.is_some(),
        "{}\n{}",
        cluster.nodes[primary].get_json("/cluster"),
        cluster.logs()
    );
    assert_eq!(node.get_json("/patroni")["tags"]["nofailover"], true);
    // Nothing restarted, and the primary's settings are its own.
    assert_eq!(node.postmaster_pid(), postmaster);
    assert_eq!(
        cluster.nodes[primary].psql("SHOW work_mem").as_deref(),
        Ok("4MB")
    );
}

/// A former primary whose data went further than the new primary's fork
/// (writes that no replica received) comes back by pg_rewind, not by a
/// new clone: its diverged rows are gone and it follows the new timeline.
#[test]
fn the_former_primary_rejoins_by_pg_rewind() {
    let mut cluster = Cluster::configure_on_etcd(2, Options::default());
    cluster.start_node1_first(Duration::from_secs(60));
    cluster.psql_ok(0, "CREATE TABLE rw (v int); INSERT INTO rw VALUES (1)");
    assert!(cluster.wait_sql(1, "SELECT count(*) FROM rw", "1", Duration::from_secs(20)));

    // node2 goes down entirely; node1 alone takes writes node2 never gets.
    cluster.nodes[1].crash();
    cluster.psql_ok(
        0,
        "INSERT INTO rw SELECT 100 + g FROM generate_series(1, 10) g",
    );
    // Then node1 dies too, without a clean shutdown.
    cluster.nodes[0].crash();

    // node2 comes back alone: once node1's lock expires it is promoted, on a
    // new timeline that forks before node1's last writes.
    cluster.nodes[1].start(&[]);
    let writable = wait_for(Duration::from_secs(40), || {
        cluster.nodes[1].psql("INSERT INTO rw VALUES (2)").ok()
    });
    cluster.check(writable.is_some(), "node2 was not promoted");
    assert_eq!(
        cluster.nodes[1].psql("SELECT count(*) FROM rw").unwrap(),
        "2",
        "node2 has node1's last writes: no divergence to test"
    );

    // node1 restarts: its data directory diverged, so it must rewind, then
    // follow node2.
    let log_before = std::fs::read_to_string(&cluster.nodes[0].log)
        .unwrap_or_default()
        .len();
    cluster.nodes[0].start(&[]);
    cluster.check(
        cluster.nodes[0].wait_status("/replica", 200, Duration::from_secs(60)),
        "node1 did not rejoin",
    );
    assert!(
        cluster.wait_sql(
            0,
            "SELECT string_agg(v::text, ',' ORDER BY v) FROM rw",
            "1,2",
            Duration::from_secs(30)
        ),
        "node1 does not hold exactly node2's rows: {:?}\n{}",
        cluster.nodes[0].psql("SELECT string_agg(v::text, ',' ORDER BY v) FROM rw"),
        cluster.logs()
    );
    let log = std::fs::read_to_string(&cluster.nodes[0].log).unwrap_or_default();
    let since_restart = &log[log_before..];
    assert!(
        since_restart.contains("rewinding with pg_rewind"),
        "no pg_rewind in node1's log:\n{since_restart}"
    );
    assert!(
        !since_restart.contains("cloning a replica"),
        "node1 was re-cloned, not rewound:\n{since_restart}"
    );
    // It is on node2's timeline now.
    let timeline = cluster.nodes[1].get_json("/patroni")["timeline"].clone();
    assert_eq!(timeline, 2, "node2 after one promotion");
    assert!(
        wait_for(Duration::from_secs(10), || {
            (cluster.nodes[0].get_json("/patroni")["timeline"] == timeline).then_some(())
        })
        .is_some(),
        "{}",
        cluster.nodes[0].get_json("/patroni")
    );
    cluster.psql_ok(1, "INSERT INTO rw VALUES (3)");
    assert!(cluster.wait_sql(0, "SELECT count(*) FROM rw", "3", Duration::from_secs(20)));
}
