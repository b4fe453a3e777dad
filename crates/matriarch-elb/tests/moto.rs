//! `ElbRouter` against moto's AWS emulator (started by the testkit).

mod common;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{
    assert_targets, client, config, endpoints, lab, only_a, routes, strings, targets,
    test_credentials, Lab,
};
use matriarch_elb::sdk;
use matriarch_elb::{ElbRouter, ElbRouterConfig};
use matriarch_router::conformance::assert_rejected;
use matriarch_router::{Router, RouterError};
use matriarch_testkit::{free_port, MotoServer};
use sdk::config::interceptors::BeforeSerializationInterceptorContextRef;
use sdk::config::{ConfigBag, Intercept};
use sdk::error::BoxError;
use sdk::operation::deregister_targets::DeregisterTargetsInput;
use sdk::operation::describe_target_health::DescribeTargetHealthInput;
use sdk::operation::register_targets::RegisterTargetsInput;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Counts the router's ELB operations by name.
#[derive(Clone, Default)]
struct CallCounter(Arc<Mutex<BTreeMap<&'static str, usize>>>);

impl fmt::Debug for CallCounter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.snapshot())
    }
}

impl CallCounter {
    fn snapshot(&self) -> BTreeMap<&'static str, usize> {
        self.0.lock().map(|m| m.clone()).unwrap_or_default()
    }

    fn take(&self) -> BTreeMap<&'static str, usize> {
        self.0
            .lock()
            .map(|mut m| std::mem::take(&mut *m))
            .unwrap_or_default()
    }
}

impl Intercept for CallCounter {
    fn name(&self) -> &'static str {
        "CallCounter"
    }

    fn read_before_execution(
        &self,
        context: &BeforeSerializationInterceptorContextRef<'_>,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let input = context.input();
        let operation = if input.downcast_ref::<RegisterTargetsInput>().is_some() {
            "RegisterTargets"
        } else if input.downcast_ref::<DeregisterTargetsInput>().is_some() {
            "DeregisterTargets"
        } else if input.downcast_ref::<DescribeTargetHealthInput>().is_some() {
            "DescribeTargetHealth"
        } else {
            "other"
        };
        if let Ok(mut map) = self.0.lock() {
            *map.entry(operation).or_default() += 1;
        }
        Ok(())
    }
}

/// A router with test credentials (not from the environment) and a call counter.
async fn make_router(config: ElbRouterConfig) -> (ElbRouter, CallCounter) {
    let counter = CallCounter::default();
    let sdk_config = ElbRouter::client_config(&config)
        .await
        .expect("client config")
        .credentials_provider(test_credentials())
        .interceptor(counter.clone())
        .build();
    let router =
        ElbRouter::from_client(sdk::Client::from_conf(sdk_config), config).expect("router");
    (router, counter)
}

/// Routes to member `a` alone through a router on `config`, which must fail
/// (`why`): the error, and how long it took to come.
async fn failed_route(config: ElbRouterConfig, why: &str) -> (RouterError, Duration) {
    let (router, _) = make_router(config).await;
    let started = Instant::now();
    let error = router.route(&only_a()).await.expect_err(why);
    let elapsed = started.elapsed();
    eprintln!("{error}");
    (error, elapsed)
}

/// moto with a lab, a client for the test's own checks, and a router on the
/// lab's groups with its call counter.
async fn fixture() -> (MotoServer, Lab, sdk::Client, ElbRouter, CallCounter) {
    let moto = MotoServer::start().expect("start moto");
    let lab = lab(&moto).await;
    let elb = client(&moto);
    let (router, counter) = make_router(config(&moto, &lab)).await;
    (moto, lab, elb, router, counter)
}

#[tokio::test]
async fn route_moves_the_writer_group_from_a_to_b() {
    let (_moto, lab, elb, router, _counter) = fixture().await;
    assert_eq!(router.name(), "elb:pg-writer");
    let [a, b] = endpoints(["10.0.1.10", "10.0.1.11"]);

    router.route(&routes(&a, &[])).await.expect("route to A");
    assert_targets(&elb, &lab.writer_arn, &["10.0.1.10:5432"]).await;

    router.route(&routes(&b, &[])).await.expect("route to B");
    assert_targets(&elb, &lab.writer_arn, &["10.0.1.11:5432"]).await;

    // Strangers in the writer group (left by an operator) go too. (Not the same
    // address on another port: moto keys targets by id alone, AWS by id and port.)
    elb.register_targets()
        .target_group_arn(&lab.writer_arn)
        .targets(
            sdk::types::TargetDescription::builder()
                .id("10.0.1.99")
                .port(6432)
                .build(),
        )
        .targets(
            sdk::types::TargetDescription::builder()
                .id("10.0.2.98")
                .port(5432)
                .build(),
        )
        .send()
        .await
        .expect("register strangers");
    router
        .route(&routes(&b, &[]))
        .await
        .expect("route to B again");
    assert_targets(&elb, &lab.writer_arn, &["10.0.1.11:5432"]).await;
}

#[tokio::test]
async fn reader_group_follows_the_replicas() {
    let (_moto, lab, elb, router, _counter) = fixture().await;
    let [a, b, c, d] = endpoints(["10.0.1.10", "10.0.1.11", "10.0.2.12", "10.0.2.13"]);
    router.route(&routes(&a, &[&b, &c])).await.expect("route");
    assert_targets(&elb, &lab.reader_arn, &["10.0.1.11:5432", "10.0.2.12:5432"]).await;
    router
        .route(&routes(&a, &[&c, &d]))
        .await
        .expect("replica change");
    assert_targets(&elb, &lab.reader_arn, &["10.0.2.12:5432", "10.0.2.13:5432"]).await;
    router
        .route(&routes(&c, &[&a, &d]))
        .await
        .expect("failover to c");
    assert_targets(&elb, &lab.writer_arn, &["10.0.2.12:5432"]).await;
    assert_targets(&elb, &lab.reader_arn, &["10.0.1.10:5432", "10.0.2.13:5432"]).await;
    router.route(&routes(&c, &[])).await.expect("no replicas");
    assert_targets(&elb, &lab.reader_arn, &[]).await;
}

#[tokio::test]
async fn routing_again_makes_no_register_or_deregister_call() {
    let (moto, lab, elb, router, counter) = fixture().await;
    let [a, b] = endpoints(["10.0.1.10", "10.0.1.11"]);
    router.route(&routes(&a, &[&b])).await.expect("route");
    let first = counter.take();
    assert_eq!(first.get("RegisterTargets"), Some(&2), "{first:?}");

    router.route(&routes(&a, &[&b])).await.expect("route again");
    let second = counter.take();
    assert_eq!(
        second,
        BTreeMap::from([("DescribeTargetHealth", 2)]),
        "one describe per group and nothing else"
    );
    assert_targets(&elb, &lab.writer_arn, &["10.0.1.10:5432"]).await;
    assert_targets(&elb, &lab.reader_arn, &["10.0.1.11:5432"]).await;

    // Without a reader group: exactly one read.
    let mut writer_only = config(&moto, &lab);
    writer_only.reader_target_group_arn = None;
    let (router, counter) = make_router(writer_only).await;
    router.route(&routes(&a, &[&b])).await.expect("route");
    assert_eq!(
        counter.take(),
        BTreeMap::from([("DescribeTargetHealth", 1)])
    );
}

#[tokio::test]
async fn withdraw_deregisters_only_that_member_from_the_writer_group() {
    let (_moto, lab, elb, router, counter) = fixture().await;
    let [a, b] = endpoints(["10.0.1.10", "10.0.1.11"]);
    router.route(&routes(&a, &[&b])).await.expect("route");
    counter.take();

    router.withdraw(&b).await.expect("withdraw a non-writer");
    assert_eq!(
        counter.take(),
        BTreeMap::from([("DescribeTargetHealth", 1)])
    );
    assert_targets(&elb, &lab.writer_arn, &["10.0.1.10:5432"]).await;

    router.withdraw(&a).await.expect("withdraw the writer");
    assert_targets(&elb, &lab.writer_arn, &[]).await;
    assert_eq!(
        targets(&elb, &lab.reader_arn).await,
        strings(&["10.0.1.11:5432"]),
        "the reader group was touched"
    );
}

#[tokio::test]
async fn setup_makes_deregistered_targets_lose_traffic_fast() {
    let (_moto, lab, elb, router, _counter) = fixture().await;
    router.setup().await.expect("setup");
    router.setup().await.expect("setup again");
    for arn in [&lab.writer_arn, &lab.reader_arn] {
        let attributes = elb
            .describe_target_group_attributes()
            .target_group_arn(arn)
            .send()
            .await
            .expect("describe attributes");
        let map: BTreeMap<&str, &str> = attributes
            .attributes()
            .iter()
            .filter_map(|a| Some((a.key()?, a.value()?)))
            .collect();
        assert_eq!(
            map.get("deregistration_delay.timeout_seconds"),
            Some(&"0"),
            "{map:?}"
        );
        assert_eq!(
            map.get("deregistration_delay.connection_termination.enabled"),
            Some(&"true"),
            "{map:?}"
        );
    }
}

#[tokio::test]
async fn a_nonexistent_target_group_is_rejected() {
    let moto = MotoServer::start().expect("start moto");
    let _lab = lab(&moto).await;
    let mut config = fake_config(moto.endpoint_url());
    config.writer_target_group_arn =
        "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/missing/0123456789abcdef"
            .to_owned();
    let (router, _) = make_router(config).await;
    assert_rejected(router.route(&only_a()).await, "TargetGroupNotFound");
    assert_rejected(router.setup().await, "TargetGroupNotFound");
}

#[tokio::test]
async fn a_host_name_endpoint_is_a_configuration_error_before_any_call() {
    let (_moto, lab, elb, router, counter) = fixture().await;
    let [a, b] = endpoints(["10.0.1.10", "db-b.example.internal"]);
    let error = router
        .route(&routes(&a, &[&b]))
        .await
        .expect_err("a host name cannot be an ip target");
    assert!(matches!(error, RouterError::Config { .. }), "{error:?}");
    assert!(counter.snapshot().is_empty(), "{counter:?}");
    assert_targets(&elb, &lab.writer_arn, &[]).await;
}

#[tokio::test]
async fn an_unreachable_endpoint_is_reported_in_time() {
    let closed_port = free_port().expect("a port nothing listens on");
    let mut config = fake_config(format!("http://127.0.0.1:{closed_port}"));
    config.aws.max_attempts = 2;
    let (error, elapsed) = failed_route(config, "nothing listens").await;
    assert!(
        matches!(error, RouterError::Unreachable { .. }),
        "{error:?}"
    );
    assert!(error.is_retryable());
    assert!(elapsed < Duration::from_secs(10), "{elapsed:?}");
}

/// A fake endpoint that answers every request with `status` and an AWS query
/// protocol error `code`, or accepts connections and never answers; counts requests.
async fn fake_aws(status: u16, code: &'static str, silent: bool) -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let requests = Arc::new(AtomicUsize::new(0));
    let seen = requests.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut buffer = Vec::new();
                let mut chunk = [0u8; 4096];
                // Read until the headers and the body (Content-Length) are in.
                loop {
                    let Ok(n) = socket.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buffer.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buffer).to_string();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let length = text[..end]
                            .lines()
                            .find_map(|l| {
                                let (k, v) = l.split_once(':')?;
                                k.eq_ignore_ascii_case("content-length")
                                    .then(|| v.trim().parse::<usize>().ok())
                                    .flatten()
                            })
                            .unwrap_or(0);
                        if buffer.len() >= end + 4 + length {
                            break;
                        }
                    }
                }
                seen.fetch_add(1, Ordering::SeqCst);
                if silent {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    return;
                }
                let body = format!(
                    "<ErrorResponse xmlns=\"http://elasticloadbalancing.amazonaws.com/doc/2015-12-01/\">\
                     <Error><Type>Sender</Type><Code>{code}</Code><Message>Rate exceeded</Message></Error>\
                     <RequestId>test</RequestId></ErrorResponse>"
                );
                let response = format!(
                    "HTTP/1.1 {status} Error\r\nContent-Type: text/xml\r\nContent-Length: {}\r\n\
                     Connection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(response.as_bytes()).await;
            });
        }
    });
    (url, requests)
}

fn fake_config(url: String) -> ElbRouterConfig {
    let mut config = ElbRouterConfig::new(
        "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/pg-writer/0123456789abcdef",
    );
    config.aws.region = Some(common::REGION.to_owned());
    config.aws.endpoint_url = Some(url);
    config
}

#[tokio::test]
async fn throttling_is_retried_with_backoff_then_reported_as_throttled() {
    let (url, requests) = fake_aws(400, "Throttling", false).await;
    let mut config = fake_config(url);
    config.aws.max_attempts = 3;
    let (router, _) = make_router(config).await;
    let error = router.route(&only_a()).await.expect_err("always throttled");
    assert!(matches!(error, RouterError::Throttled { .. }), "{error:?}");
    assert!(error.is_retryable());
    assert_eq!(
        requests.load(Ordering::SeqCst),
        3,
        "the SDK retried the throttled call"
    );

    // An API error that is not throttling is not retried and is Rejected.
    let (url, requests) = fake_aws(400, "AccessDenied", false).await;
    let (router, _) = make_router(fake_config(url)).await;
    assert_rejected(router.route(&only_a()).await, "AccessDenied");
    assert_eq!(requests.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_silent_endpoint_is_cut_off_by_the_timeouts() {
    let (url, requests) = fake_aws(200, "", true).await;
    let mut config = fake_config(url);
    config.aws.attempt_timeout = Duration::from_millis(500);
    config.aws.call_timeout = Duration::from_millis(1500);
    config.aws.max_attempts = 2;
    let (error, elapsed) = failed_route(config, "silent endpoint").await;
    assert!(
        matches!(error, RouterError::Unreachable { .. }),
        "{error:?}"
    );
    assert!(elapsed < Duration::from_secs(3), "took {elapsed:?}");
    assert!(requests.load(Ordering::SeqCst) >= 1);
}
