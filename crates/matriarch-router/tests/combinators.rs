//! The combinators' behaviour, as the engine relies on it.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use matriarch_model::MemberName;
use matriarch_router::{
    Endpoint, FanOut, RecordingRouter, Retry, Router, RouterCall, RouterError, Routes,
};
use tokio::sync::Barrier;
use tokio::time::Instant;

fn endpoint(member: &str, host: &str) -> Endpoint {
    Endpoint {
        member: MemberName::new(member).unwrap(),
        host: host.to_owned(),
        port: 5432,
    }
}

fn routes() -> Routes {
    Routes {
        primary: endpoint("pg-1", "10.0.0.1"),
        replicas: vec![
            endpoint("pg-2", "10.0.0.2"),
            endpoint("pg-3", "pg-3.internal"),
        ],
    }
}

fn unreachable(router: &str) -> RouterError {
    RouterError::Unreachable {
        router: router.to_owned(),
        message: "connection refused".to_owned(),
    }
}

fn throttled(router: &str) -> RouterError {
    RouterError::Throttled {
        router: router.to_owned(),
    }
}

fn rejected(router: &str) -> RouterError {
    RouterError::Rejected {
        router: router.to_owned(),
        message: "AccessDenied".to_owned(),
    }
}

fn fan_out(routers: &[&RecordingRouter]) -> FanOut {
    FanOut::new(
        routers
            .iter()
            .map(|router| Arc::new((*router).clone()) as Arc<dyn Router>),
    )
}

#[tokio::test]
async fn fan_out_calls_every_router_even_when_the_first_fails_and_names_it() {
    let [elb, dns, proxy] = ["elb", "dns", "proxy"].map(RecordingRouter::new);
    elb.fail_next(1, unreachable("elb"));
    let router = fan_out(&[&elb, &dns, &proxy]);

    let error = router.route(&routes()).await.unwrap_err();

    assert_eq!(
        error,
        RouterError::Partial {
            failures: vec![("elb".to_owned(), unreachable("elb"))]
        }
    );
    for backend in [&elb, &dns, &proxy] {
        assert_eq!(
            backend.calls(),
            [RouterCall::Route(routes())],
            "{}",
            backend.name()
        );
    }
}

#[tokio::test]
async fn fan_out_names_every_failed_router_and_succeeds_only_when_all_do() {
    let [elb, dns, proxy] = ["elb", "dns", "proxy"].map(RecordingRouter::new);
    dns.fail_next(1, rejected("dns"));
    proxy.fail_next(1, throttled("proxy"));
    let router = fan_out(&[&elb, &dns, &proxy]);
    let me = endpoint("pg-1", "10.0.0.1");

    let error = router.withdraw(&me).await.unwrap_err();
    assert_eq!(
        error,
        RouterError::Partial {
            failures: vec![
                ("dns".to_owned(), rejected("dns")),
                ("proxy".to_owned(), throttled("proxy")),
            ]
        }
    );
    assert_eq!(elb.calls(), [RouterCall::Withdraw(me.clone())]);

    router.withdraw(&me).await.unwrap();
    for backend in [&elb, &dns, &proxy] {
        assert_eq!(backend.calls().len(), 2, "{}", backend.name());
    }
    assert_eq!(router.name(), "fan-out(elb, dns, proxy)");
}

/// A router whose call only finishes once every router sharing its barrier
/// has been called too.
struct WaitsForOthers {
    name: &'static str,
    barrier: Arc<Barrier>,
}

#[async_trait]
impl Router for WaitsForOthers {
    fn name(&self) -> &str {
        self.name
    }

    async fn route(&self, _routes: &Routes) -> Result<(), RouterError> {
        self.barrier.wait().await;
        Ok(())
    }

    async fn withdraw(&self, _member: &Endpoint) -> Result<(), RouterError> {
        self.barrier.wait().await;
        Ok(())
    }
}

#[tokio::test]
async fn fan_out_calls_routers_concurrently_so_a_slow_one_does_not_hold_back_the_others() {
    let barrier = Arc::new(Barrier::new(2));
    let router = FanOut::new([
        Arc::new(WaitsForOthers {
            name: "a",
            barrier: barrier.clone(),
        }) as Arc<dyn Router>,
        Arc::new(WaitsForOthers { name: "b", barrier }) as Arc<dyn Router>,
    ]);

    // Called one after the other, the first would wait for the second forever.
    let outcome = tokio::time::timeout(Duration::from_secs(5), router.route(&routes())).await;
    assert_eq!(
        outcome.expect("routers were not called concurrently"),
        Ok(())
    );
}

#[tokio::test]
async fn recording_router_records_calls_in_order_including_failed_ones() {
    let recorder = RecordingRouter::new("test");
    let shared = recorder.clone();
    let me = endpoint("pg-1", "10.0.0.1");
    recorder.fail_next(1, throttled("test"));
    recorder.fail_next(1, rejected("test"));

    assert_eq!(shared.route(&routes()).await, Err(throttled("test")));
    assert_eq!(shared.withdraw(&me).await, Err(rejected("test")));
    assert_eq!(shared.route(&routes()).await, Ok(()));

    assert_eq!(
        recorder.calls(),
        [
            RouterCall::Route(routes()),
            RouterCall::Withdraw(me),
            RouterCall::Route(routes()),
        ]
    );
}

/// How [`Retry`] treats a backend that fails its first calls.
struct RetryCase {
    name: &'static str,
    /// The backend router's name.
    backend: &'static str,
    /// Its first `fails` calls fail with `error`.
    fails: usize,
    error: RouterError,
    max_attempts: u32,
    backoff: Duration,
    /// Withdraw an endpoint rather than route.
    withdraw: bool,
    result: Result<(), RouterError>,
    calls: usize,
    /// Time spent backing off (the clock is paused).
    elapsed: Duration,
}

#[tokio::test(start_paused = true)]
async fn retry_backs_off_on_retryable_errors_and_gives_up_on_the_others() {
    let cases = [
        RetryCase {
            name: "retries throttled errors with backoff until success",
            backend: "dns",
            fails: 2,
            error: throttled("dns"),
            max_attempts: 5,
            backoff: Duration::from_secs(1),
            withdraw: false,
            result: Ok(()),
            calls: 3,
            elapsed: Duration::from_secs(2),
        },
        RetryCase {
            name: "gives up at once on rejected",
            backend: "elb",
            fails: 1,
            error: rejected("elb"),
            max_attempts: 5,
            backoff: Duration::from_secs(1),
            withdraw: true,
            result: Err(rejected("elb")),
            calls: 1,
            elapsed: Duration::ZERO,
        },
        RetryCase {
            name: "returns the last error after max attempts",
            backend: "elb",
            fails: 10,
            error: unreachable("elb"),
            max_attempts: 3,
            backoff: Duration::from_millis(500),
            withdraw: false,
            result: Err(unreachable("elb")),
            calls: 3,
            elapsed: Duration::from_secs(1),
        },
    ];
    for case in cases {
        let name = case.name;
        let backend = RecordingRouter::new(case.backend);
        backend.fail_next(case.fails, case.error.clone());
        let router = Retry::new(backend.clone(), case.max_attempts, case.backoff).unwrap();
        let started = Instant::now();

        let result = if case.withdraw {
            router.withdraw(&endpoint("pg-1", "10.0.0.1")).await
        } else {
            router.route(&routes()).await
        };

        assert_eq!(result, case.result, "{name}");
        assert_eq!(backend.calls().len(), case.calls, "{name}");
        assert_eq!(started.elapsed(), case.elapsed, "{name}");
        assert_eq!(router.name(), case.backend, "{name}");
    }
}

#[tokio::test(start_paused = true)]
async fn retry_around_a_fan_out_repeats_a_transient_partial_failure() {
    let (elb, dns) = (RecordingRouter::new("elb"), RecordingRouter::new("dns"));
    dns.fail_next(1, throttled("dns"));
    let router = Retry::new(fan_out(&[&elb, &dns]), 3, Duration::from_secs(1)).unwrap();

    assert_eq!(router.route(&routes()).await, Ok(()));

    assert_eq!(dns.calls().len(), 2);
    assert_eq!(elb.calls().len(), 2);
}

#[test]
fn retry_needs_at_least_one_attempt() {
    let error = Retry::new(RecordingRouter::new("elb"), 0, Duration::from_secs(1)).unwrap_err();
    assert!(
        matches!(&error, RouterError::Config { message } if message.contains("elb")),
        "{error}"
    );
}
