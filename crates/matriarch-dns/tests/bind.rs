//! `DnsRouter` against a real BIND 9 (started by the testkit) with a TSIG key.

use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;
use std::time::{Duration, Instant};

use matriarch_dns::{DnsRouter, DnsRouterConfig, TsigKey};
use matriarch_router::conformance::{assert_rejected, endpoints, routes};
use matriarch_router::{Endpoint, Router, RouterError};
use matriarch_testkit::{free_port, BindServer};

fn server(dns: &BindServer) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, dns.port()))
}

fn writer(dns: &BindServer) -> String {
    format!("primary.{}", dns.zone())
}

fn reader(dns: &BindServer) -> String {
    format!("replicas.{}", dns.zone())
}

fn key(dns: &BindServer) -> TsigKey {
    TsigKey::from_base64(
        dns.tsig_key_name(),
        dns.tsig_algorithm(),
        dns.tsig_secret_base64(),
    )
    .expect("testkit key")
}

fn config(dns: &BindServer) -> DnsRouterConfig {
    let mut config = DnsRouterConfig::new(server(dns), dns.zone(), writer(dns), key(dns));
    config.reader_name = Some(reader(dns));
    config.timeout = Duration::from_secs(3);
    config
}

fn router(dns: &BindServer) -> DnsRouter {
    DnsRouter::new(config(dns)).expect("router")
}

fn addrs(list: &[&str]) -> Vec<Ipv4Addr> {
    let mut out: Vec<Ipv4Addr> = list.iter().map(|a| a.parse().expect("address")).collect();
    out.sort();
    out
}

/// Asserts that `name` resolves to exactly the addresses `expected` (in any order).
fn assert_resolves(dns: &BindServer, name: &str, expected: &[&str]) {
    assert_eq!(query_a(dns, name), addrs(expected), "A records of {name}");
}

fn query_a(dns: &BindServer, name: &str) -> Vec<Ipv4Addr> {
    let mut out = dns.query_a(name).expect("dig");
    out.sort();
    out
}

/// `dig +short` for any type (the testkit only has A); the testkit found dig on PATH.
fn dig(dns: &BindServer, name: &str, rtype: &str) -> String {
    let out = Command::new("dig")
        .args(["@127.0.0.1", "-p", &dns.port().to_string()])
        .args(["+short", "+time=2", "+tries=2", name, rtype])
        .output()
        .expect("run dig");
    assert!(out.status.success(), "dig failed: {out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// The zone's SOA serial: BIND bumps it on every applied update.
fn soa_serial(dns: &BindServer) -> u64 {
    let soa = dig(dns, dns.zone(), "SOA");
    soa.split_whitespace()
        .nth(2)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no serial in SOA `{soa}`"))
}

#[tokio::test]
async fn route_moves_the_writer_name_from_a_to_b() {
    let dns = BindServer::start().expect("start BIND");
    let router = router(&dns);
    let [a, b] = endpoints(["127.0.0.2", "127.0.0.3"]);
    assert_resolves(&dns, &writer(&dns), &["127.0.0.1"]);

    router.route(&routes(&a, &[])).await.expect("route to A");
    assert_resolves(&dns, &writer(&dns), &["127.0.0.2"]);

    router.route(&routes(&b, &[])).await.expect("route to B");
    assert_resolves(&dns, &writer(&dns), &["127.0.0.3"]);
    assert_eq!(
        dig(&dns, &writer(&dns), "A").lines().count(),
        1,
        "exactly one A record"
    );
    // The TTL comes from the configuration.
    let answer = Command::new("dig")
        .args(["@127.0.0.1", "-p", &dns.port().to_string()])
        .args(["+noall", "+answer", &writer(&dns), "A"])
        .output()
        .expect("dig");
    let answer = String::from_utf8_lossy(&answer.stdout).to_string();
    assert_eq!(answer.split_whitespace().nth(1), Some("5"), "{answer}");
}

#[tokio::test]
async fn reader_name_follows_the_replicas() {
    let dns = BindServer::start().expect("start BIND");
    let router = router(&dns);
    let [a, b, c, d] = endpoints(["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"]);
    router.route(&routes(&a, &[&b, &c])).await.expect("route");
    assert_resolves(&dns, &reader(&dns), &["127.0.0.3", "127.0.0.4"]);
    assert_resolves(&dns, &writer(&dns), &["127.0.0.2"]);

    router.route(&routes(&a, &[&c, &d])).await.expect("route");
    assert_resolves(&dns, &reader(&dns), &["127.0.0.4", "127.0.0.5"]);

    // Failover to c: c leaves the readers, a joins them.
    router
        .route(&routes(&c, &[&a, &d]))
        .await
        .expect("failover");
    assert_resolves(&dns, &writer(&dns), &["127.0.0.4"]);
    assert_resolves(&dns, &reader(&dns), &["127.0.0.2", "127.0.0.5"]);

    router.route(&routes(&c, &[])).await.expect("no replicas");
    assert_resolves(&dns, &reader(&dns), &[]);
}

#[tokio::test]
async fn a_wrong_key_is_refused_and_reported() {
    let dns = BindServer::start().expect("start BIND");
    let [a] = endpoints(["127.0.0.2"]);

    // The right key name with another secret: BADSIG.
    let mut wrong_secret = config(&dns);
    wrong_secret.key = TsigKey::from_base64(
        dns.tsig_key_name(),
        dns.tsig_algorithm(),
        "c2VjcmV0IHRoYXQgdGhlIHNlcnZlciBkb2VzIG5vdCBrbm93IDEyMzQ1Njc4OTA=",
    )
    .expect("key");
    let router = DnsRouter::new(wrong_secret).expect("router");
    assert_rejected(
        router.route(&routes(&a, &[])).await,
        "refused TSIG key `matriarch-key`",
    );

    // A key name the server does not know: BADKEY.
    let mut unknown = config(&dns);
    unknown.key =
        TsigKey::from_base64("nobody-key", "hmac-sha256", dns.tsig_secret_base64()).expect("key");
    let router = DnsRouter::new(unknown).expect("router");
    assert_rejected(
        router.route(&routes(&a, &[])).await,
        "refused TSIG key `nobody-key`",
    );

    assert_eq!(
        query_a(&dns, &writer(&dns)),
        addrs(&["127.0.0.1"]),
        "record changed"
    );
}

#[tokio::test]
async fn a_stale_update_is_refused_and_reported() {
    let dns = BindServer::start().expect("start BIND");
    let router = router(&dns);
    let [a, b] = endpoints(["127.0.0.2", "127.0.0.3"]);
    router.route(&routes(&a, &[])).await.expect("route to A");

    // This node reads, then another node moves the name before this node writes.
    let seen = router.read().await.expect("read");
    dns.nsupdate(&format!(
        "update delete {w}. A\nupdate add {w}. 5 A 127.0.0.9\n",
        w = writer(&dns)
    ))
    .expect("concurrent nsupdate");
    assert_rejected(
        router.route_from(&routes(&b, &[]), &seen).await,
        "stale update: the record changed since it was read",
    );
    assert_eq!(
        query_a(&dns, &writer(&dns)),
        addrs(&["127.0.0.9"]),
        "the newer change was overwritten"
    );

    // Same when the name did not exist when read and was created since.
    let mut no_writer = config(&dns);
    no_writer.writer_name = format!("fresh.{}", dns.zone());
    no_writer.reader_name = None;
    let fresh = DnsRouter::new(no_writer).expect("router");
    let seen = fresh.read().await.expect("read");
    assert!(seen.writer.is_empty());
    dns.nsupdate(&format!("update add fresh.{}. 5 A 127.0.0.8\n", dns.zone()))
        .expect("concurrent nsupdate");
    assert_rejected(
        fresh.route_from(&routes(&b, &[]), &seen).await,
        "stale update",
    );

    // A fresh read-and-write (what `route` does) succeeds.
    router.route(&routes(&b, &[])).await.expect("route to B");
    assert_resolves(&dns, &writer(&dns), &["127.0.0.3"]);
}

#[tokio::test]
async fn a_host_name_primary_becomes_a_cname() {
    let dns = BindServer::start().expect("start BIND");
    let router = router(&dns);
    let target = format!("ns.{}", dns.zone());
    let [a, b] = endpoints([target.as_str(), "127.0.0.3"]);
    router
        .route(&routes(&a, &[]))
        .await
        .expect("route to a host name");
    assert_eq!(dig(&dns, &writer(&dns), "CNAME"), format!("{target}."));
    assert_resolves(&dns, &writer(&dns), &["127.0.0.1"]);
    let serial = soa_serial(&dns);
    router.route(&routes(&a, &[])).await.expect("again");
    assert_eq!(soa_serial(&dns), serial);

    // And back to an address: the CNAME goes, the A comes.
    router
        .route(&routes(&b, &[]))
        .await
        .expect("route to an address");
    assert_eq!(dig(&dns, &writer(&dns), "CNAME"), "");
    assert_resolves(&dns, &writer(&dns), &["127.0.0.3"]);
}

#[tokio::test]
/// A server that accepts connections but does not answer (SIGSTOP). (A
/// closed port is the conformance suite's `unreachable_backend_...` check.)
async fn a_silent_server_is_reported_in_time() {
    let dns = BindServer::start().expect("start BIND");
    let [a] = endpoints(["127.0.0.2"]);
    let mut config_silent = config(&dns);
    config_silent.timeout = Duration::from_millis(800);
    let router = DnsRouter::new(config_silent).expect("router");
    dns.pause().expect("pause named");
    let started = Instant::now();
    let result = router.route(&routes(&a, &[])).await;
    let elapsed = started.elapsed();
    dns.resume().expect("resume named");
    let error = result.expect_err("a silent server");
    assert!(
        matches!(&error, RouterError::Unreachable { message, .. } if message.contains("no answer")),
        "{error:?}"
    );
    assert!(elapsed < Duration::from_secs(3), "took {elapsed:?}");
}

#[test]
fn configuration_is_checked_and_the_secret_is_never_shown() {
    let key = TsigKey::from_base64("k", "hmac-sha256", "c2VjcmV0c2VjcmV0").expect("key");
    let server: SocketAddr = "127.0.0.1:53".parse().expect("addr");
    let config = DnsRouterConfig::new(server, "example.test", "primary.example.test", key.clone());
    let router = DnsRouter::new(config.clone()).expect("router");
    assert_eq!(router.name(), "dns:primary.example.test");
    for text in [
        format!("{key:?}"),
        format!("{config:?}"),
        format!("{router:?}"),
    ] {
        assert!(!text.contains("c2VjcmV0c2VjcmV0"), "{text}");
        assert!(!text.contains("secretsecret"), "{text}");
    }

    let outside = DnsRouterConfig::new(server, "example.test", "primary.other.test", key.clone());
    assert!(matches!(
        DnsRouter::new(outside),
        Err(RouterError::Config { .. })
    ));
    let mut md5 = DnsRouterConfig::new(server, "example.test", "p.example.test", key);
    md5.key = TsigKey::from_base64("k", "hmac-md5", "c2VjcmV0").expect("key");
    assert!(matches!(
        DnsRouter::new(md5),
        Err(RouterError::Config { .. })
    ));
    assert!(matches!(
        TsigKey::from_base64("k", "hmac-sha256", "not base64!"),
        Err(RouterError::Config { .. })
    ));
}

/// The router conformance suite (`matriarch_router::conformance`) against a
/// BIND of its own: writers are the writer name's A records, readers the
/// reader name's; the zone's SOA serial counts the applied updates.
mod conformance {
    use std::collections::BTreeSet;

    use async_trait::async_trait;
    use matriarch_router::conformance::{Harness, Served};

    use super::*;

    pub(crate) struct BindHarness {
        dns: BindServer,
    }

    fn hosts(addresses: Vec<Ipv4Addr>) -> BTreeSet<String> {
        addresses.iter().map(Ipv4Addr::to_string).collect()
    }

    #[async_trait]
    impl Harness for BindHarness {
        type Router = DnsRouter;

        async fn router(&self) -> DnsRouter {
            router(&self.dns)
        }

        fn endpoints(&self) -> [Endpoint; 3] {
            endpoints(["127.0.0.2", "127.0.0.3", "127.0.0.4"])
        }

        async fn served(&self) -> Served {
            Served {
                writers: hosts(query_a(&self.dns, &writer(&self.dns))),
                readers: Some(hosts(query_a(&self.dns, &reader(&self.dns)))),
            }
        }

        async fn change_count(&self) -> Option<u64> {
            Some(soa_serial(&self.dns))
        }

        async fn unreachable_router(&self) -> Option<DnsRouter> {
            let mut config = config(&self.dns);
            let closed_port = free_port().expect("a port nothing listens on");
            config.server = SocketAddr::from((Ipv4Addr::LOCALHOST, closed_port));
            Some(DnsRouter::new(config).expect("router"))
        }

        fn call_bound(&self) -> Duration {
            Duration::from_secs(10)
        }
    }

    pub(crate) async fn harness() -> BindHarness {
        BindHarness {
            dns: BindServer::start().expect("start BIND"),
        }
    }

    matriarch_router::router_conformance_tests!(harness());
}
