//! What the suite needs from a backend ([`Harness`]) and its bounds.

use std::time::Duration;

use async_trait::async_trait;

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
