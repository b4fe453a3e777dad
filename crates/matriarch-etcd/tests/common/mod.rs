//! Shared by the etcd test files: harnesses for the conformance suite on real
//! etcd started by the test kit, and small helpers.

#![allow(dead_code)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use matriarch_dcs::conformance::Harness;
// Not every test file uses every helper.
#[allow(unused_imports)]
pub(crate) use matriarch_dcs::test_support::{
    eventually, lead, member, name, publish, timed_watch, unique_scope,
};
use matriarch_dcs::{Dcs, Expected};
use matriarch_etcd::{EtcdConfig, EtcdDcs};
use matriarch_model::{LeaderStatus, Lsn, Record};
use matriarch_testkit::{EtcdCluster, EtcdServer};

/// The TTL the conformance suite runs with. etcd's minimum lease TTL with the
/// default election timeout is 2 s; leases are revoked up to 0.5 s after
/// they run out (the lessor checks twice a second), and revoking is a raft
/// proposal (an fsync) that a busy machine can slow down.
pub(crate) const SUITE_TTL: Duration = Duration::from_secs(3);
/// Expiry is checked at `ttl - slack` (must still exist) and `ttl + slack`
/// (must be gone). Measured here: a lease goes 0 to 0.5 s after its TTL, so
/// 1.5 s leaves a second for a loaded machine (2 s / 1 s also passed, with
/// half a second to spare).
pub(crate) const SUITE_SLACK: Duration = Duration::from_millis(1500);
/// The retry_timeout of the suite's clients.
pub(crate) const SUITE_RETRY: Duration = Duration::from_secs(2);

/// The leader status record at `optime`.
pub(crate) fn status(optime: u64) -> Record {
    Record::Status(LeaderStatus {
        optime: Lsn(optime),
        ..LeaderStatus::default()
    })
}

/// Writes the leader status at `optime` (whatever version it had).
pub(crate) async fn write_status(client: &EtcdDcs, optime: u64) {
    client
        .write(&status(optime), Expected::Any)
        .await
        .expect("write");
}

/// Shows the backend's logs in a failing test's output (`RUST_LOG` filters,
/// `info` by default).
pub(crate) fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// A client of `scope` on `endpoints`.
pub(crate) fn dcs(endpoints: &[String], scope: &str, retry_timeout: Duration) -> EtcdDcs {
    init_logs();
    let config =
        EtcdConfig::new(endpoints.iter().cloned(), scope).with_retry_timeout(retry_timeout);
    EtcdDcs::new(&config).expect("valid etcd configuration")
}

/// A plain etcd client, as a third party (or an operator with etcdctl) would use.
pub(crate) async fn raw_client(endpoints: &[String]) -> etcd_client::Client {
    etcd_client::Client::connect(endpoints, None)
        .await
        .expect("connect a plain etcd client")
}

/// Runs blocking test-kit calls (process start, kill, restart) off the async workers.
pub(crate) fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// A single etcd member of the test's own: the server, its client URL, and a
/// scope tagged `tag` that no other test uses.
pub(crate) fn own_server(tag: &str) -> (EtcdServer, [String; 1], String) {
    let server = blocking(EtcdServer::start).expect("start etcd");
    let urls = [server.client_url()];
    (server, urls, unique_scope(tag))
}

/// Two clients of `scope`: `holder`, which has just taken the free lock as
/// member `holder`, and its rival.
pub(crate) async fn holder_and_rival(
    urls: &[String],
    scope: &str,
    retry_timeout: Duration,
    ttl: Duration,
) -> (EtcdDcs, EtcdDcs) {
    let holder = dcs(urls, scope, retry_timeout);
    let rival = dcs(urls, scope, retry_timeout);
    assert!(holder
        .acquire_leader(&name("holder"), ttl)
        .await
        .expect("acquire"));
    (holder, rival)
}

/// Where a conformance harness's etcd runs.
enum Servers {
    /// A single member of its own.
    Single(Box<EtcdServer>),
    /// A three-member cluster shared by the tests that run at the same time
    /// (each in its own scope); the last harness dropped kills the cluster, so
    /// nothing outlives the test process.
    Cluster(Arc<EtcdCluster>),
}

impl Servers {
    fn client_urls(&self) -> Vec<String> {
        match self {
            Servers::Single(server) => vec![server.client_url()],
            Servers::Cluster(cluster) => cluster.client_urls(),
        }
    }
}

/// The conformance harness on real etcd, in a scope of its own.
pub(crate) struct EtcdHarness {
    servers: Servers,
    scope: String,
    raw: etcd_client::Client,
}

impl EtcdHarness {
    async fn new(servers: Servers, tag: &str) -> Self {
        let raw = raw_client(&servers.client_urls()).await;
        EtcdHarness {
            servers,
            scope: unique_scope(tag),
            raw,
        }
    }
}

/// The harness on a single etcd member of its own.
pub(crate) async fn single_member_harness() -> EtcdHarness {
    let server = blocking(EtcdServer::start).expect("start etcd");
    EtcdHarness::new(Servers::Single(Box::new(server)), "single").await
}

fn shared_cluster() -> Arc<EtcdCluster> {
    static SHARED: Mutex<Weak<EtcdCluster>> = Mutex::new(Weak::new());
    let mut slot = SHARED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(cluster) = slot.upgrade() {
        return cluster;
    }
    let cluster =
        Arc::new(blocking(|| EtcdCluster::start(3)).expect("start a 3-member etcd cluster"));
    *slot = Arc::downgrade(&cluster);
    cluster
}

/// The harness on the shared three-member cluster.
pub(crate) async fn cluster_harness() -> EtcdHarness {
    EtcdHarness::new(Servers::Cluster(shared_cluster()), "cluster").await
}

#[async_trait]
impl Harness for EtcdHarness {
    type Client = EtcdDcs;

    async fn client(&self) -> EtcdDcs {
        // Spread the clients over the members, as members of a real cluster are.
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let mut urls = self.servers.client_urls();
        let shift = (NEXT.fetch_add(1, Ordering::SeqCst) as usize) % urls.len();
        urls.rotate_left(shift);
        dcs(&urls, &self.scope, SUITE_RETRY)
    }

    async fn sibling_client(&self) -> EtcdDcs {
        let sibling = format!("{}-sibling", self.scope);
        dcs(&self.servers.client_urls(), &sibling, SUITE_RETRY)
    }

    async fn put_raw(&self, relative_key: &str, value: &[u8]) {
        let key = format!("/service/{}/{relative_key}", self.scope);
        self.raw
            .clone()
            .put(key, value, None)
            .await
            .expect("raw put");
    }

    async fn pass_time(&self, duration: Duration) {
        tokio::time::sleep(duration).await;
    }

    fn ttl(&self) -> Duration {
        SUITE_TTL
    }

    fn expiry_slack(&self) -> Duration {
        SUITE_SLACK
    }
}
