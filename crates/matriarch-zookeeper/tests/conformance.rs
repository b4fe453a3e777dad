//! `ZooKeeperDcs` passes the whole DCS conformance suite against a real
//! ZooKeeper 3.8 started by the test kit (one server shared by the tests of
//! this binary, one scope per test).

mod common;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use matriarch_dcs::conformance::Harness;
use matriarch_model::KeyLayout;
use matriarch_testkit::ZooKeeperServer;
use matriarch_zookeeper::{ZooKeeperConfig, ZooKeeperDcs};
use zookeeper_client as zk;

struct ZooKeeperHarness {
    config: ZooKeeperConfig,
    layout: KeyLayout,
    raw: zk::Client,
    // Last: the server outlives the raw client.
    _server: Arc<ZooKeeperServer>,
}

#[async_trait]
impl Harness for ZooKeeperHarness {
    type Client = ZooKeeperDcs;

    async fn client(&self) -> ZooKeeperDcs {
        ZooKeeperDcs::connect(self.config.clone())
            .await
            .expect("connect a ZooKeeperDcs")
    }

    async fn sibling_client(&self) -> ZooKeeperDcs {
        let mut config = self.config.clone();
        config.scope = format!("{}-sibling", config.scope);
        ZooKeeperDcs::connect(config)
            .await
            .expect("connect a ZooKeeperDcs of the sibling scope")
    }

    async fn put_raw(&self, relative_key: &str, value: &[u8]) {
        let path = format!("{}{}{relative_key}", common::CHROOT, self.layout.prefix());
        common::put_raw(&self.raw, &path, value).await;
    }

    async fn pass_time(&self, duration: Duration) {
        tokio::time::sleep(duration).await;
    }

    fn ttl(&self) -> Duration {
        common::TTL
    }

    fn expiry_slack(&self) -> Duration {
        Duration::from_millis(1500)
    }
}

async fn harness() -> ZooKeeperHarness {
    let server = common::shared_server();
    let config = common::config(
        &server.connect_string(),
        &common::unique_scope("conformance"),
    );
    let layout = config.validate().expect("valid config");
    let raw = common::raw_client(&server.connect_string()).await;
    ZooKeeperHarness {
        config,
        layout,
        raw,
        _server: server,
    }
}

matriarch_dcs::dcs_conformance_tests!(harness());
