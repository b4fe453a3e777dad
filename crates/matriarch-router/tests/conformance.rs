//! The router conformance suite on an in-memory backend: a correct router
//! passes it, bare and behind the combinators ([`Retry`], [`FanOut`]), and
//! routers that break the contract fail it.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use matriarch_router::conformance::{self, Harness, Served};
use matriarch_router::{Endpoint, FanOut, Retry, Router, RouterError, Routes};

/// Ways a backend can break the contract.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    None,
    /// `route` adds the new writer but leaves the old ones.
    KeepsOldWriters,
    /// `withdraw` also removes the member from the readers.
    WithdrawsReaders,
    /// Every call writes, changed or not.
    RewritesEverything,
}

#[derive(Debug, Default)]
struct Backend {
    served: Served,
    changes: u64,
}

/// A backend in memory, shared by every router a harness makes.
#[derive(Clone, Debug)]
struct MemoryRouter {
    backend: Arc<Mutex<Backend>>,
    fault: Fault,
}

impl MemoryRouter {
    fn apply(&self, change: impl FnOnce(&mut Served)) {
        let mut backend = self.backend.lock().unwrap_or_else(PoisonError::into_inner);
        let before = backend.served.clone();
        change(&mut backend.served);
        if backend.served != before || self.fault == Fault::RewritesEverything {
            backend.changes += 1;
        }
    }
}

#[async_trait]
impl Router for MemoryRouter {
    fn name(&self) -> &str {
        "memory"
    }

    async fn route(&self, routes: &Routes) -> Result<(), RouterError> {
        let keep_old = self.fault == Fault::KeepsOldWriters;
        self.apply(|served| {
            if !keep_old {
                served.writers.clear();
            }
            served.writers.insert(routes.primary.host.clone());
            served.readers = Some(routes.replicas.iter().map(|r| r.host.clone()).collect());
        });
        Ok(())
    }

    async fn withdraw(&self, member: &Endpoint) -> Result<(), RouterError> {
        let readers_too = self.fault == Fault::WithdrawsReaders;
        self.apply(|served| {
            served.writers.remove(&member.host);
            if readers_too {
                if let Some(readers) = &mut served.readers {
                    readers.remove(&member.host);
                }
            }
        });
        Ok(())
    }
}

/// A router whose backend never answers in time.
struct Unreachable;

#[async_trait]
impl Router for Unreachable {
    fn name(&self) -> &str {
        "unreachable"
    }

    async fn route(&self, _routes: &Routes) -> Result<(), RouterError> {
        Err(self.error())
    }

    async fn withdraw(&self, _member: &Endpoint) -> Result<(), RouterError> {
        Err(self.error())
    }
}

impl Unreachable {
    fn error(&self) -> RouterError {
        RouterError::Unreachable {
            router: self.name().to_owned(),
            message: "connection refused".to_owned(),
        }
    }
}

/// How the harness wraps the in-memory router.
#[derive(Clone, Copy, Debug)]
enum Layer {
    Bare,
    Retried,
    FannedOut,
}

struct MemoryHarness {
    backend: Arc<Mutex<Backend>>,
    fault: Fault,
    layer: Layer,
}

impl MemoryHarness {
    fn new(fault: Fault, layer: Layer) -> Self {
        MemoryHarness {
            backend: Arc::default(),
            fault,
            layer,
        }
    }

    fn wrap(&self, router: Arc<dyn Router>) -> Arc<dyn Router> {
        match self.layer {
            Layer::Bare => router,
            Layer::Retried => {
                Arc::new(Retry::new(router, 2, Duration::from_millis(1)).expect("retry"))
            }
            Layer::FannedOut => Arc::new(FanOut::new([router])),
        }
    }
}

#[async_trait]
impl Harness for MemoryHarness {
    type Router = Arc<dyn Router>;

    async fn router(&self) -> Arc<dyn Router> {
        self.wrap(Arc::new(MemoryRouter {
            backend: Arc::clone(&self.backend),
            fault: self.fault,
        }))
    }

    fn endpoints(&self) -> [Endpoint; 3] {
        conformance::endpoints(["a.db.internal", "b.db.internal", "c.db.internal"])
    }

    async fn served(&self) -> Served {
        let backend = self.backend.lock().unwrap_or_else(PoisonError::into_inner);
        backend.served.clone()
    }

    async fn change_count(&self) -> Option<u64> {
        Some(
            self.backend
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .changes,
        )
    }

    async fn unreachable_router(&self) -> Option<Arc<dyn Router>> {
        Some(self.wrap(Arc::new(Unreachable)))
    }

    fn call_bound(&self) -> Duration {
        Duration::from_secs(1)
    }
}

mod bare {
    use super::*;
    matriarch_router::router_conformance_tests!(async {
        MemoryHarness::new(Fault::None, Layer::Bare)
    });
}

mod retried {
    use super::*;
    matriarch_router::router_conformance_tests!(async {
        MemoryHarness::new(Fault::None, Layer::Retried)
    });
}

/// A router over a fresh in-memory backend that breaks the contract.
fn broken(fault: Fault) -> MemoryHarness {
    MemoryHarness::new(fault, Layer::Bare)
}

#[tokio::test]
#[should_panic(expected = "writers after moving the writer from a to b")]
async fn a_router_that_keeps_old_writers_fails() {
    conformance::route_moves_the_writer(&broken(Fault::KeepsOldWriters)).await;
}

#[tokio::test]
#[should_panic(expected = "readers after withdrawing the reader b")]
async fn a_router_that_withdraws_readers_fails() {
    conformance::withdraw_of_a_non_writer_changes_nothing(&broken(Fault::WithdrawsReaders)).await;
}

#[tokio::test]
#[should_panic(expected = "routing again to the same routes changed the backend")]
async fn a_router_that_rewrites_unchanged_routes_fails() {
    conformance::route_is_idempotent(&broken(Fault::RewritesEverything)).await;
}

#[tokio::test]
#[should_panic(expected = "withdrawing the reader b changed the backend")]
async fn a_router_that_rewrites_when_withdrawing_a_reader_fails() {
    conformance::withdraw_of_a_non_writer_changes_nothing(&broken(Fault::RewritesEverything)).await;
}

/// A fan-out of one conforming router conforms, except for its error kind: it
/// reports the unreachable backend as a retryable `Partial` failure.
#[tokio::test]
async fn a_fan_out_of_one_conforming_router_routes_as_it_does() {
    let harness = MemoryHarness::new(Fault::None, Layer::FannedOut);
    conformance::route_moves_the_writer(&harness).await;
    let error = harness
        .unreachable_router()
        .await
        .expect("router")
        .withdraw(&harness.endpoints()[0])
        .await
        .expect_err("unreachable");
    assert!(matches!(error, RouterError::Partial { .. }) && error.is_retryable());
}
