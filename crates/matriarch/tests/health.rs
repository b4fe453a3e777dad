//! Patroni's health checks as load balancers use them, on a real cluster
//! (etcd, three PostgreSQL 15 nodes): the query parameters and endpoints
//! Patroni answers, and how soon `/primary` follows a promotion.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{wait_for, Cluster, Options};

/// `path`'s status on every node, for failure messages.
fn statuses(cluster: &Cluster, path: &str) -> Vec<u16> {
    cluster.nodes.iter().map(|n| n.status(path)).collect()
}

/// Failed expectations, each with its line, reported together at the end so
/// that one run shows them all.
#[derive(Default)]
struct Failures(Vec<String>);

impl Failures {
    /// Records `what` unless `ok`.
    #[track_caller]
    fn check(&mut self, ok: bool, what: &str) {
        if !ok {
            let line = std::panic::Location::caller().line();
            self.0.push(format!("line {line}: {what}"));
        }
    }

    /// Records `actual != expected`.
    #[track_caller]
    fn eq<T: PartialEq + std::fmt::Debug>(&mut self, actual: T, expected: T) {
        if actual != expected {
            let line = std::panic::Location::caller().line();
            self.0.push(format!(
                "line {line}: got {actual:?}, expected {expected:?}"
            ));
        }
    }
}

/// Polls `happened` every 10 ms on a thread of `scope` until it holds, then
/// records the time in `at`; gives up when `stop` is set.
fn record_when<'scope, 'env>(
    scope: &'scope std::thread::Scope<'scope, 'env>,
    stop: &Arc<AtomicBool>,
    at: &Arc<Mutex<Option<Instant>>>,
    happened: impl Fn() -> bool + Send + 'scope,
) {
    let (stop, at) = (Arc::clone(stop), Arc::clone(at));
    scope.spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            if happened() {
                *at.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    });
}

#[test]
fn patroni_health_endpoints_answer_like_patroni() {
    let (cluster, primary) =
        Cluster::healthy_on_etcd(3, Options::default(), Duration::from_secs(60));
    let replicas: Vec<usize> = (0..3).filter(|i| *i != primary).collect();
    let mut failures = Failures::default();

    // A streaming replica passes `replication_state=streaming` (a tag before).
    let streaming = wait_for(Duration::from_secs(15), || {
        replicas
            .iter()
            .all(|r| cluster.nodes[*r].status("/replica?replication_state=streaming") == 200)
            .then_some(())
    });
    failures.check(
        streaming.is_some(),
        &format!(
            "/replica?replication_state=streaming on replicas: {:?}",
            statuses(&cluster, "/replica?replication_state=streaming")
        ),
    );
    for r in &replicas {
        failures.eq(
            cluster.nodes[*r].status("/replica?replication_state=stopped"),
            503,
        );
    }
    failures.eq(
        cluster.nodes[primary].status("/replica?replication_state=streaming"),
        503,
    );

    // No standby cluster here: 503 everywhere (404 before).
    failures.eq(statuses(&cluster, "/standby-leader"), vec![503; 3]);
    failures.eq(statuses(&cluster, "/standby_leader"), vec![503; 3]);

    // Asynchronous replicas within a lag bound (a freshly cloned replica
    // may still be catching up); never the primary.
    for path in ["/asynchronous?lag=1MB", "/readiness?lag=1MB"] {
        let within = wait_for(Duration::from_secs(10), || {
            replicas
                .iter()
                .all(|r| cluster.nodes[*r].status(path) == 200)
                .then_some(())
        });
        failures.check(
            within.is_some(),
            &format!("{path}: {:?}", statuses(&cluster, path)),
        );
    }
    failures.eq(cluster.nodes[primary].status("/asynchronous?lag=1MB"), 503);

    // No synchronous mode: no quorum or sync standby; the primary is a
    // read-only-sync target.
    failures.eq(statuses(&cluster, "/quorum"), vec![503; 3]);
    for r in &replicas {
        failures.eq(cluster.nodes[*r].status("/read-only-sync"), 503);
        failures.eq(cluster.nodes[*r].status("/read-only-quorum"), 503);
    }
    failures.eq(cluster.nodes[primary].status("/read-only-sync"), 200);
    failures.eq(cluster.nodes[primary].status("/read-only-quorum"), 200);

    // failsafe_mode is off: 503, as Patroni.
    failures.eq(statuses(&cluster, "/failsafe"), vec![503; 3]);

    // OPTIONS and HEAD: the health check's status, no body.
    let options = cluster.nodes[replicas[0]].call("OPTIONS", "/replica", "", false);
    failures.eq(options.status, 200);
    failures.check(options.body.is_empty(), "OPTIONS answered a body");
    let options = cluster.nodes[primary].call("OPTIONS", "/replica", "", false);
    failures.eq(options.status, 503);
    let head = cluster.nodes[primary].call("HEAD", "/primary", "", false);
    failures.eq(head.status, 200);
    failures.check(head.body.is_empty(), "HEAD answered a body");

    // Promotion latency: the candidate's /primary against PostgreSQL itself.
    let candidate = replicas[0];
    let stop = Arc::new(AtomicBool::new(false));
    let promoted_at: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
    let api_at: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
    std::thread::scope(|scope| {
        let node = &cluster.nodes[candidate];
        record_when(scope, &stop, &promoted_at, || {
            node.psql("SELECT pg_is_in_recovery()").as_deref() == Ok("f")
        });
        record_when(scope, &stop, &api_at, || node.status("/primary") == 200);
        cluster.switchover_ok(replicas[1], primary, candidate);
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
    failures.check(
        latency < Duration::from_millis(500),
        &format!("/primary answered 200 {latency:?} after PostgreSQL promoted"),
    );
    failures.eq(cluster.nodes[primary].status("/primary"), 503);
    assert!(
        failures.0.is_empty(),
        "health checks differ from Patroni's:\n{}\n{}",
        failures.0.join("\n"),
        cluster.logs()
    );
}
