//! What the suite needs from a backend ([`Harness`]), its bounds, and how it
//! starts calls on many clients at once.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use tokio::sync::Barrier;

use crate::error::DcsError;
use crate::store::Dcs;

/// What the suite needs from a backend under test.
#[async_trait]
pub trait Harness: Send + Sync + 'static {
    /// The client type under test.
    type Client: Dcs + 'static;

    /// A new client of this harness' scope, as another member would have
    /// (its own lease or session). Each harness uses a scope no other test uses.
    async fn client(&self) -> Self::Client;

    /// Stores raw bytes under a path relative to the scope, as a third party
    /// writing directly to the DCS would.
    async fn put_raw(&self, relative_key: &str, value: &[u8]);

    /// Lets `duration` pass as the backend's TTLs see it: a virtual clock may
    /// jump at once; a real server is waited for.
    async fn pass_time(&self, duration: Duration);

    /// A client of another scope in the same namespace of the same store,
    /// named this harness' scope with `-sibling` appended (scope `a`, sibling
    /// `a-sibling`): what [`Dcs::remove_cluster`] must leave alone.
    async fn sibling_client(&self) -> Self::Client;

    /// The TTL the suite uses for locks and members.
    fn ttl(&self) -> Duration;

    /// How far from `ttl` a backend may expire a key (servers round TTLs to
    /// their own ticks); the suite checks "not before `ttl - slack`" and
    /// "gone by `ttl + slack`".
    fn expiry_slack(&self) -> Duration;
}

/// How long a watch may take to report a change, at most.
pub const WATCH_WAKE_BOUND: Duration = Duration::from_secs(2);

/// Runs `call` on every item at the same moment (a barrier releases them
/// together) and returns the outcomes in the items' order.
pub(super) async fn race<I, F, Fut, T>(items: Vec<I>, call: F) -> Vec<T>
where
    F: Fn(I) -> Fut,
    Fut: Future<Output = Result<T, DcsError>> + Send + 'static,
    T: Send + 'static,
{
    let barrier = Arc::new(Barrier::new(items.len()));
    let mut tasks = Vec::new();
    for item in items {
        let barrier = Arc::clone(&barrier);
        let future = call(item);
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            future.await
        }));
    }
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.expect("task").expect("DCS call"));
    }
    results
}
