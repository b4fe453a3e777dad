//! Driving several routers as one.

use std::sync::Arc;

use async_trait::async_trait;
use futures::future::join_all;

use crate::error::RouterError;
use crate::router::{Endpoint, Router, Routes};

/// A [`Router`] that forwards every call to all of its routers concurrently
/// (say, a load balancer and a DNS record).
///
/// Every router is called even when others fail, so one broken backend does
/// not keep clients of the others on a stale primary. The call succeeds only
/// if all of them did; otherwise it fails with [`RouterError::Partial`],
/// naming each router that failed. With no routers, every call succeeds.
///
/// The fan-out waits for its slowest router, which is why routers must bound
/// their own calls in time (see [`Router`]).
#[derive(Clone)]
pub struct FanOut {
    name: String,
    routers: Vec<Arc<dyn Router>>,
}

impl FanOut {
    /// Drives `routers`; its name lists theirs, e.g. `fan-out(elb, dns)`.
    pub fn new(routers: impl IntoIterator<Item = Arc<dyn Router>>) -> Self {
        let routers: Vec<Arc<dyn Router>> = routers.into_iter().collect();
        let names: Vec<&str> = routers.iter().map(|router| router.name()).collect();
        FanOut {
            name: format!("fan-out({})", names.join(", ")),
            routers,
        }
    }

    /// Gathers the failures of one round of calls, in the routers' order.
    fn collect(
        &self,
        operation: &str,
        results: Vec<Result<(), RouterError>>,
    ) -> Result<(), RouterError> {
        let failures: Vec<(String, RouterError)> = self
            .routers
            .iter()
            .zip(results)
            .filter_map(|(router, result)| {
                let error = result.err()?;
                tracing::warn!(fan_out = %self.name, router = router.name(), %error, "{operation} failed");
                Some((router.name().to_owned(), error))
            })
            .collect();
        if failures.is_empty() {
            Ok(())
        } else {
            Err(RouterError::Partial { failures })
        }
    }
}

impl std::fmt::Debug for FanOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FanOut").field("name", &self.name).finish()
    }
}

#[async_trait]
impl Router for FanOut {
    fn name(&self) -> &str {
        &self.name
    }

    async fn route(&self, routes: &Routes) -> Result<(), RouterError> {
        let results = join_all(self.routers.iter().map(|router| router.route(routes))).await;
        self.collect("route", results)
    }

    async fn withdraw(&self, member: &Endpoint) -> Result<(), RouterError> {
        let results = join_all(self.routers.iter().map(|router| router.withdraw(member))).await;
        self.collect("withdraw", results)
    }
}
