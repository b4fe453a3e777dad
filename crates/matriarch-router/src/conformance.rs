//! The contract every [`Router`] backend must keep (see the trait's
//! documentation), as a test suite that any backend plugs into, like
//! `matriarch_dcs::conformance`.
//!
//! A backend implements [`Harness`] (how to make a router over a fresh
//! backend, which endpoints it can route to, and how to read what the backend
//! serves without going through the router) and generates one test per check
//! with [`crate::router_conformance_tests!`]:
//!
//! ```ignore
//! async fn harness() -> MyHarness { MyHarness::start().await }
//! matriarch_router::router_conformance_tests!(harness());
//! ```
//!
//! The checks panic with a message on a broken contract, as tests do.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use matriarch_model::MemberName;

use crate::error::RouterError;
use crate::router::{Endpoint, Router, Routes};

/// What a backend serves at one moment, read from the backend itself.
///
/// Targets are the endpoints' hosts (an ELB target's IP address, a DNS
/// record's address or CNAME target, a file's `host`), so that a target left
/// by a third party shows up too.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Served {
    /// The hosts clients that write are sent to.
    pub writers: BTreeSet<String>,
    /// The hosts clients that read are sent to; `None` for a backend that
    /// serves writers only.
    pub readers: Option<BTreeSet<String>>,
}

/// What the suite needs from a backend under test.
#[async_trait]
pub trait Harness: Send + Sync + 'static {
    /// The router type under test.
    type Router: Router + 'static;

    /// A router over this harness' backend (the same backend on every call).
    /// Each harness uses a backend no other test uses.
    async fn router(&self) -> Self::Router;

    /// Three endpoints of distinct members that the backend accepts
    /// ([`endpoints`] names them `a`, `b` and `c`, as the checks' messages do).
    fn endpoints(&self) -> [Endpoint; 3];

    /// What the backend serves now, read without the router.
    async fn served(&self) -> Served;

    /// A number that grows with every change the backend applied (a DNS
    /// zone's SOA serial), if the backend has one; `None` skips the checks
    /// that a repeated call changes nothing at the backend beyond [`Served`].
    async fn change_count(&self) -> Option<u64>;

    /// A router of the same kind whose backend cannot be reached (a closed
    /// port), if the harness can make one; `None` skips that check.
    async fn unreachable_router(&self) -> Option<Self::Router>;

    /// How long a call to an unreachable backend may take before it must
    /// have returned [`RouterError::Unreachable`].
    fn call_bound(&self) -> Duration;
}

fn hosts(endpoints: &[&Endpoint]) -> BTreeSet<String> {
    endpoints.iter().map(|e| e.host.clone()).collect()
}

/// Endpoints of members `a`, `b`, `c`, ... (the names the checks' messages
/// use) at `hosts`, in that order, port 5432; at most 26.
pub fn endpoints<const N: usize>(hosts: [&str; N]) -> [Endpoint; N] {
    let mut names = (b'a'..=b'z').map(char::from);
    hosts.map(|host| {
        let name = names.next().expect("at most 26 endpoints");
        Endpoint {
            member: MemberName::new(name.to_string()).expect("a letter is a member name"),
            host: host.to_owned(),
            port: 5432,
        }
    })
}

/// Writers to `primary`, readers to `replicas`.
pub fn routes(primary: &Endpoint, replicas: &[&Endpoint]) -> Routes {
    Routes {
        primary: primary.clone(),
        replicas: replicas.iter().map(|r| (*r).clone()).collect(),
    }
}

/// Checks that a call was refused for good: a [`RouterError::Rejected`]
/// (not retryable) whose message contains `containing`.
pub fn assert_rejected(result: Result<(), RouterError>, containing: &str) {
    let error = match result {
        Ok(()) => panic!("expected a refusal saying `{containing}`, got Ok"),
        Err(error) => error,
    };
    eprintln!("{error}");
    let RouterError::Rejected { message, .. } = &error else {
        panic!("expected Rejected, got {error:?}");
    };
    assert!(message.contains(containing), "{message}");
    assert!(!error.is_retryable(), "{error} is retryable");
}

async fn route<R: Router>(router: &R, routes: &Routes) {
    router
        .route(routes)
        .await
        .unwrap_or_else(|e| panic!("route to {}: {e}", routes.primary.member));
}

async fn withdraw<R: Router>(router: &R, member: &Endpoint) {
    router
        .withdraw(member)
        .await
        .unwrap_or_else(|e| panic!("withdraw {}: {e}", member.member));
}

/// Checks that the backend serves exactly these writers and, if it serves
/// readers, exactly these readers.
async fn assert_serves<H: Harness>(
    harness: &H,
    writers: &[&Endpoint],
    readers: &[&Endpoint],
    after: &str,
) {
    let served = harness.served().await;
    assert_eq!(served.writers, hosts(writers), "writers after {after}");
    if let Some(served_readers) = served.readers {
        assert_eq!(served_readers, hosts(readers), "readers after {after}");
    }
}

/// A router that has routed writers to `a` and readers to `b` and `c`, the
/// harness' three endpoints, and those endpoints.
async fn routed_to_a<H: Harness>(harness: &H) -> (H::Router, [Endpoint; 3]) {
    let router = harness.router().await;
    let [a, b, c] = harness.endpoints();
    route(&router, &routes(&a, &[&b, &c])).await;
    (router, [a, b, c])
}

/// A router has a name for logs and errors.
pub async fn name_is_not_empty<H: Harness>(harness: &H) {
    let router = harness.router().await;
    assert!(!router.name().trim().is_empty(), "a router needs a name");
}

/// `route` makes the primary the only writer (whatever was there before) and
/// sends readers to the replicas.
pub async fn route_makes_the_primary_the_only_writer<H: Harness>(harness: &H) {
    let (_, [a, b, c]) = routed_to_a(harness).await;
    assert_serves(harness, &[&a], &[&b, &c], "routing to a").await;
}

/// Routing to another primary moves the writer: the old one is no longer
/// served as a writer, and readers follow the new replicas.
pub async fn route_moves_the_writer<H: Harness>(harness: &H) {
    let (router, [a, b, c]) = routed_to_a(harness).await;
    route(&router, &routes(&b, &[&a, &c])).await;
    assert_serves(harness, &[&b], &[&a, &c], "moving the writer from a to b").await;
}

/// Readers are exactly the replicas given: a replica left out stops being
/// served, and with no replicas no reader is served.
pub async fn readers_are_exactly_the_replicas<H: Harness>(harness: &H) {
    let (router, [a, _, c]) = routed_to_a(harness).await;
    route(&router, &routes(&a, &[&c])).await;
    assert_serves(harness, &[&a], &[&c], "dropping replica b").await;
    route(&router, &routes(&a, &[])).await;
    assert_serves(harness, &[&a], &[], "dropping every replica").await;
}

/// `route` is idempotent: calling it again with the same routes succeeds and
/// changes nothing at the backend.
pub async fn route_is_idempotent<H: Harness>(harness: &H) {
    let router = harness.router().await;
    let [a, b, c] = harness.endpoints();
    let wanted = routes(&a, &[&b, &c]);
    route(&router, &wanted).await;
    let served = harness.served().await;
    let changes = harness.change_count().await;
    route(&router, &wanted).await;
    route(&router, &wanted).await;
    assert_eq!(harness.served().await, served, "served after routing again");
    assert_eq!(
        harness.change_count().await,
        changes,
        "routing again to the same routes changed the backend"
    );
    // A second router over the same backend (a restarted daemon) agrees.
    route(&harness.router().await, &wanted).await;
    assert_eq!(
        harness.change_count().await,
        changes,
        "a new router re-applied the routes"
    );
}

/// `withdraw` removes only that member, only from the writers: readers are
/// left alone.
pub async fn withdraw_removes_only_that_writer<H: Harness>(harness: &H) {
    let (router, [a, b, c]) = routed_to_a(harness).await;
    withdraw(&router, &a).await;
    assert_serves(harness, &[], &[&b, &c], "withdrawing the writer a").await;
}

/// Withdrawing a member that is not a writer is `Ok` and changes nothing,
/// also when it is a reader and also when it is repeated.
pub async fn withdraw_of_a_non_writer_changes_nothing<H: Harness>(harness: &H) {
    let (router, [a, b, c]) = routed_to_a(harness).await;
    let changes = harness.change_count().await;
    withdraw(&router, &b).await;
    assert_serves(harness, &[&a], &[&b, &c], "withdrawing the reader b").await;
    assert_eq!(
        harness.change_count().await,
        changes,
        "withdrawing the reader b changed the backend"
    );
    withdraw(&router, &a).await;
    let changes_after_withdrawal = harness.change_count().await;
    withdraw(&router, &a).await;
    assert_serves(harness, &[], &[&b, &c], "withdrawing a twice").await;
    assert_eq!(
        harness.change_count().await,
        changes_after_withdrawal,
        "withdrawing a member that is no longer a writer changed the backend"
    );
    if let (Some(before), Some(after)) = (changes, changes_after_withdrawal) {
        assert!(
            after > before,
            "withdrawing the writer changed nothing ({before} -> {after})"
        );
    }
}

/// After a withdrawal, routing again brings a writer back.
pub async fn route_after_withdraw_restores_a_writer<H: Harness>(harness: &H) {
    let (router, [a, b, c]) = routed_to_a(harness).await;
    withdraw(&router, &a).await;
    route(&router, &routes(&b, &[&c])).await;
    assert_serves(harness, &[&b], &[&c], "routing to b after a withdrew").await;
}

/// A backend that cannot be reached makes each call fail in bounded time with
/// a retryable [`RouterError::Unreachable`], never hang.
pub async fn unreachable_backend_fails_in_time_and_retryably<H: Harness>(harness: &H) {
    let Some(router) = harness.unreachable_router().await else {
        return;
    };
    let [a, b, _] = harness.endpoints();
    let bound = harness.call_bound();
    let started = Instant::now();
    let routed = tokio::time::timeout(bound, router.route(&routes(&a, &[&b])))
        .await
        .unwrap_or_else(|_| panic!("route to an unreachable backend took over {bound:?}"));
    let withdrawn = tokio::time::timeout(bound, router.withdraw(&a))
        .await
        .unwrap_or_else(|_| panic!("withdraw at an unreachable backend took over {bound:?}"));
    for (operation, result) in [("route", routed), ("withdraw", withdrawn)] {
        match result {
            Err(error @ RouterError::Unreachable { .. }) => {
                assert!(
                    error.is_retryable(),
                    "{operation}: {error} is not retryable"
                );
                assert!(
                    error.to_string().contains(router.name()),
                    "{operation}: the error `{error}` does not name the router {}",
                    router.name()
                );
            }
            other => panic!("{operation} at an unreachable backend: {other:?}"),
        }
    }
    tracing::debug!(elapsed = ?started.elapsed(), "unreachable backend answered");
}

/// Generates one `#[tokio::test]` per conformance check, in a module named
/// `router_conformance`, for the harness that `$harness` (an expression
/// evaluating to a future of a [`Harness`]) makes afresh for each test.
/// The calling crate needs `tokio` as a dev-dependency.
#[macro_export]
macro_rules! router_conformance_tests {
    ($harness:expr) => {
        mod router_conformance {
            #[allow(unused_imports)]
            use super::*;
            $crate::router_conformance_tests!(@each $harness;
                name_is_not_empty,
                route_makes_the_primary_the_only_writer,
                route_moves_the_writer,
                readers_are_exactly_the_replicas,
                route_is_idempotent,
                withdraw_removes_only_that_writer,
                withdraw_of_a_non_writer_changes_nothing,
                route_after_withdraw_restores_a_writer,
                unreachable_backend_fails_in_time_and_retryably
            );
        }
    };
    (@each $harness:expr; $($check:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                let harness = $harness.await;
                $crate::conformance::$check(&harness).await;
            }
        )+
    };
}
