//! The router conformance suite (`matriarch_router::conformance`) run against
//! `ElbRouter` over moto's AWS emulator: writers are the writer target
//! group's targets, readers the reader target group's. The tests share one
//! moto server (a server per test made its first, slow EC2 call time out on
//! a loaded machine), each with a load balancer and groups of its own.

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use async_trait::async_trait;
use common::{client, config, endpoints, lab_named, registered, test_credentials, Lab};
use matriarch_elb::sdk;
use matriarch_elb::{ElbRouter, ElbRouterConfig};
use matriarch_router::conformance::{Harness, Served};
use matriarch_router::Endpoint;
use matriarch_testkit::{free_port, MotoServer};

struct MotoHarness {
    moto: Arc<MotoServer>,
    lab: Lab,
    elb: sdk::Client,
}

/// A router with test credentials (not from the environment).
async fn make_router(config: ElbRouterConfig) -> ElbRouter {
    let sdk_config = ElbRouter::client_config(&config)
        .await
        .expect("client config")
        .credentials_provider(test_credentials())
        .build();
    ElbRouter::from_client(sdk::Client::from_conf(sdk_config), config).expect("router")
}

/// The target ids (IP addresses) registered in a group.
async fn target_ids(elb: &sdk::Client, arn: &str) -> BTreeSet<String> {
    registered(elb, arn)
        .await
        .iter()
        .filter_map(|t| t.id().map(str::to_owned))
        .collect()
}

#[async_trait]
impl Harness for MotoHarness {
    type Router = ElbRouter;

    async fn router(&self) -> ElbRouter {
        make_router(config(&self.moto, &self.lab)).await
    }

    fn endpoints(&self) -> [Endpoint; 3] {
        endpoints(["10.0.1.10", "10.0.1.11", "10.0.2.12"])
    }

    async fn served(&self) -> Served {
        Served {
            writers: target_ids(&self.elb, &self.lab.writer_arn).await,
            readers: Some(target_ids(&self.elb, &self.lab.reader_arn).await),
        }
    }

    async fn change_count(&self) -> Option<u64> {
        // Target groups have no revision; `moto.rs` counts the router's
        // register and deregister calls instead.
        None
    }

    async fn unreachable_router(&self) -> Option<ElbRouter> {
        let closed_port = free_port().expect("a port nothing listens on");
        let mut config = config(&self.moto, &self.lab);
        config.aws.endpoint_url = Some(format!("http://127.0.0.1:{closed_port}"));
        config.aws.max_attempts = 2;
        Some(make_router(config).await)
    }

    fn call_bound(&self) -> Duration {
        Duration::from_secs(10)
    }
}

/// One moto server for the tests of this binary that run at the same time;
/// it stops when the last of them drops it.
fn shared_moto() -> Arc<MotoServer> {
    static SHARED: Mutex<Weak<MotoServer>> = Mutex::new(Weak::new());
    let mut slot = SHARED.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(moto) = slot.upgrade() {
        return moto;
    }
    let moto = Arc::new(MotoServer::start().expect("start moto"));
    *slot = Arc::downgrade(&moto);
    moto
}

async fn harness() -> MotoHarness {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let moto = shared_moto();
    let prefix = format!("pg{}", NEXT.fetch_add(1, Ordering::Relaxed));
    let lab = lab_named(&moto, &prefix).await;
    let elb = client(&moto);
    MotoHarness { moto, lab, elb }
}

matriarch_router::router_conformance_tests!(harness());
