//! Patroni's health checks as load balancers use them, on a real cluster
//! (etcd, three PostgreSQL 15 nodes): the query parameters and endpoints
//! Patroni answers, and how soon `/primary` follows a promotion.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{serial, wait_for, Cluster, DcsSpec, Options};
use matriarch_testkit::EtcdServer;

/// `path`'s status on every node, for failure messages.
fn statuses(cluster: &Cluster, path: &str) -> Vec<u16> {
    cluster.nodes.iter().map(|n| n.status(path)).collect()
}

/// Records a failed expectation (reported together at the end).
fn check(failures: &mut Vec<String>, line: u32, ok: bool, what: &str) {
    if !ok {
        failures.push(format!("line {line}: {what}"));
    }
}

/// Records `actual != expected`.
fn check_eq<T: PartialEq + std::fmt::Debug>(
    failures: &mut Vec<String>,
    line: u32,
    actual: T,
    expected: T,
) {
    if actual != expected {
        failures.push(format!(
            "line {line}: got {actual:?}, expected {expected:?}"
        ));
    }
}

#[test]
fn patroni_health_endpoints_answer_like_patroni() {
    let _serial = serial();
    let etcd = EtcdServer::start().expect("etcd");
    let cluster = Cluster::start(3, DcsSpec::Etcd(etcd.client_url()), Options::default());
    let primary = cluster.wait_healthy(2, Duration::from_secs(60));
    let replicas: Vec<usize> = (0..3).filter(|i| *i != primary).collect();
    // Every mismatch is collected, so one run shows them all.
    let mut failures: Vec<String> = Vec::new();

    // A streaming replica passes `replication_state=streaming` (a tag before).
    let streaming = wait_for(Duration::from_secs(15), || {
        replicas
            .iter()
            .all(|r| cluster.nodes[*r].status("/replica?replication_state=streaming") == 200)
            .then_some(())
    });
    check(
        &mut failures,
        line!(),
        streaming.is_some(),
        &format!(
            "/replica?replication_state=streaming on replicas: {:?}",
            statuses(&cluster, "/replica?replication_state=streaming")
        ),
    );
    for r in &replicas {
        check_eq(
            &mut failures,
            line!(),
            cluster.nodes[*r].status("/replica?replication_state=stopped"),
            503,
        );
    }
    check_eq(
        &mut failures,
        line!(),
        cluster.nodes[primary].status("/replica?replication_state=streaming"),
        503,
    );

    // No standby cluster here: 503 everywhere (404 before).
    check_eq(
        &mut failures,
        line!(),
        statuses(&cluster, "/standby-leader"),
        vec![503; 3],
    );
    check_eq(
        &mut failures,
        line!(),
        statuses(&cluster, "/standby_leader"),
        vec![503; 3],
    );

    // Asynchronous replicas within a lag bound (a freshly cloned replica
    // may still be catching up); never the primary.
    for path in ["/asynchronous?lag=1MB", "/readiness?lag=1MB"] {
        let within = wait_for(Duration::from_secs(10), || {
            replicas
                .iter()
                .all(|r| cluster.nodes[*r].status(path) == 200)
                .then_some(())
        });
        check(
            &mut failures,
            line!(),
            within.is_some(),
            &format!("{path}: {:?}", statuses(&cluster, path)),
        );
    }
    check_eq(
        &mut failures,
        line!(),
        cluster.nodes[primary].status("/asynchronous?lag=1MB"),
        503,
    );

    // No synchronous mode: no quorum or sync standby; the primary is a
    // read-only-sync target.
    check_eq(
        &mut failures,
        line!(),
        statuses(&cluster, "/quorum"),
        vec![503; 3],
    );
    for r in &replicas {
        check_eq(
            &mut failures,
            line!(),
            cluster.nodes[*r].status("/read-only-sync"),
            503,
        );
        check_eq(
            &mut failures,
            line!(),
            cluster.nodes[*r].status("/read-only-quorum"),
            503,
        );
    }
    check_eq(
        &mut failures,
        line!(),
        cluster.nodes[primary].status("/read-only-sync"),
        200,
    );
    check_eq(
        &mut failures,
        line!(),
        cluster.nodes[primary].status("/read-only-quorum"),
        200,
    );

    // failsafe_mode is off: 503, as Patroni.
    check_eq(
        &mut failures,
        line!(),
        statuses(&cluster, "/failsafe"),
        vec![503; 3],
    );

    // OPTIONS and HEAD: the health check's status, no body.
    let options = cluster.nodes[replicas[0]].call("OPTIONS", "/replica", "", false);
    check_eq(&mut failures, line!(), options.status, 200);
    check(
        &mut failures,
        line!(),
        options.body.is_empty(),
        "OPTIONS answered a body",
    );
    let options = cluster.nodes[primary].call("OPTIONS", "/replica", "", false);
    check_eq(&mut failures, line!(), options.status, 503);
    let head = cluster.nodes[primary].call("HEAD", "/primary", "", false);
    check_eq(&mut failures, line!(), head.status, 200);
    check(
        &mut failures,
        line!(),
        head.body.is_empty(),
        "HEAD answered a body",
    );

    // Promotion latency: the candidate's /primary against PostgreSQL itself.
    let candidate = replicas[0];
    let stop = Arc::new(AtomicBool::new(false));
    let promoted_at: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
    let api_at: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
    std::thread::scope(|scope| {
        let node = &cluster.nodes[candidate];
        {
            let (stop, promoted_at) = (Arc::clone(&stop), Arc::clone(&promoted_at));
            scope.spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if node.psql("SELECT pg_is_in_recovery()").as_deref() == Ok("f") {
                        *promoted_at.lock().unwrap_or_else(|e| e.into_inner()) =
                            Some(Instant::now());
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            });
        }
        {
            let (stop, api_at) = (Arc::clone(&stop), Arc::clone(&api_at));
            scope.spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if node.status("/primary") == 200 {
                        *api_at.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            });
        }
        let body = format!(
            "{{\"leader\": \"{}\", \"candidate\": \"{}\"}}",
            cluster.nodes[primary].name, cluster.nodes[candidate].name
        );
        let response = cluster.nodes[replicas[1]].call("POST", "/switchover", &body, true);
        assert_eq!(response.status, 200, "switchover: {}", response.body_text());
        let done = wait_for(Duration::from_secs(30), || {
            let both = promoted_at.lock().map(|p| p.is_some()).unwrap_or(false)
                && api_at.lock().map(|a| a.is_some()).unwrap_or(false);
            both.then_some(())
        });
        stop.store(true, Ordering::Relaxed);
        assert!(done.is_some(), "no promotion seen\n{}", cluster.logs());
    });
    let promoted = promoted_at.lock().unwrap_or_else(|e| e.into_inner());
    let answered = api_at.lock().unwrap_or_else(|e| e.into_inner());
    let (Some(promoted), Some(answered)) = (*promoted, *answered) else {
        panic!("no promotion seen");
    };
    let latency = answered.saturating_duration_since(promoted);
    println!("promotion to first /primary 200: {latency:?}");
    check(
        &mut failures,
        line!(),
        latency < Duration::from_millis(500),
        &format!("/primary answered 200 {latency:?} after PostgreSQL promoted"),
    );
    check_eq(
        &mut failures,
        line!(),
        cluster.nodes[primary].status("/primary"),
        503,
    );
    assert!(
        failures.is_empty(),
        "health checks differ from Patroni's:\n{}\n{}",
        failures.join("\n"),
        cluster.logs()
    );
}
