//! Helpers shared by the ZooKeeper integration tests.

#![allow(dead_code)]

use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

// Not every test file uses every helper.
#[allow(unused_imports)]
pub(crate) use matriarch_dcs::test_support::{
    eventually, lead, member, name, publish, unique_scope,
};
use matriarch_dcs::Dcs;
use matriarch_testkit::ZooKeeperServer;
use matriarch_zookeeper::{ZooKeeperConfig, ZooKeeperDcs};
use zookeeper_client as zk;

/// The TTL (= session timeout) the tests use unless they say otherwise.
pub(crate) const TTL: Duration = Duration::from_secs(4);
/// The bound of every call.
pub(crate) const RETRY_TIMEOUT: Duration = Duration::from_secs(2);
/// The chroot every test cluster lives under.
pub(crate) const CHROOT: &str = "/matriarch-tests";

static SHARED: Mutex<Weak<ZooKeeperServer>> = Mutex::new(Weak::new());

/// One ZooKeeper server shared by the tests of a binary that run at the same
/// time (each with its own scope); it is killed when the last of them drops it.
pub(crate) fn shared_server() -> Arc<ZooKeeperServer> {
    let mut slot = SHARED.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(server) = slot.upgrade() {
        return server;
    }
    let server = Arc::new(ZooKeeperServer::start().expect("start ZooKeeper"));
    *slot = Arc::downgrade(&server);
    server
}

/// The configuration of a test client of `scope` on `connect_string`.
pub(crate) fn config(connect_string: &str, scope: &str) -> ZooKeeperConfig {
    ZooKeeperConfig::new(connect_string.split(','), scope)
        .with_chroot(CHROOT)
        .with_session_timeout(TTL)
        .with_retry_timeout(RETRY_TIMEOUT)
}

/// A `ZooKeeperDcs` with its session open; panics when it cannot connect.
pub(crate) async fn connect(config: &ZooKeeperConfig) -> ZooKeeperDcs {
    ZooKeeperDcs::connect(config.clone())
        .await
        .unwrap_or_else(|e| panic!("connect a ZooKeeperDcs: {e}"))
}

/// A new client connected with `config`, once it has found that it cannot
/// take the lock (someone holds it).
pub(crate) async fn locked_out_newcomer(config: &ZooKeeperConfig, ttl: Duration) -> ZooKeeperDcs {
    let newcomer = connect(config).await;
    let taken = newcomer
        .acquire_leader(&name("newcomer"), ttl)
        .await
        .expect("acquire by a newcomer");
    assert!(!taken, "a newcomer took a lock that is held");
    newcomer
}

/// A plain ZooKeeper client (no matriarch logic), as a third party would use.
pub(crate) async fn raw_client(connect_string: &str) -> zk::Client {
    zk::Client::connector()
        .with_session_timeout(Duration::from_secs(10))
        .connect(connect_string)
        .await
        .expect("connect a raw ZooKeeper client")
}

/// Writes `value` at the absolute `path` (creating parents as needed) as a
/// persistent znode, or overwrites it.
pub(crate) async fn put_raw(client: &zk::Client, path: &str, value: &[u8]) {
    let options = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
    if let Some((parent, _)) = path.rsplit_once('/') {
        if !parent.is_empty() {
            client
                .mkdir(parent, &options)
                .await
                .expect("create parents");
        }
    }
    match client.create(path, value, &options).await {
        Ok(_) => {}
        Err(zk::Error::NodeExists) => {
            client
                .set_data(path, value, None)
                .await
                .expect("overwrite raw value");
        }
        Err(e) => panic!("raw write of {path}: {e}"),
    }
}
