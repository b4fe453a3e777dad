//! [`ForwardingDcs`]: the one way to write a [`Dcs`] that wraps another and
//! changes only some of its calls.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use matriarch_model::{
    ClusterView, DcsKey, KeyLayout, Member, MemberName, Record, SystemId, Version,
};

use crate::error::{DcsError, Expected};
use crate::store::{Dcs, WatchOutcome};

/// A [`Dcs`] that wraps another client and forwards to it every call it
/// does not override: every type that implements it is a [`Dcs`].
///
/// A wrapper gives [`ForwardingDcs::inner`] and writes only what it changes,
/// as a layer around a service would:
/// * one call: override that method (a wrapper that counts the views read
///   overrides `read_view`, calling `self.inner().read_view()`);
/// * every call that reaches the store: override [`ForwardingDcs::target`],
///   which each forwarded call (all but `layout` and `lock_lifetime`) awaits
///   for the client it goes to (a wrapper that counts, delays or stalls the
///   calls overrides only that).
///
/// The methods have [`Dcs`]'s names and contracts, so import this trait only
/// where a wrapper implements it: with both traits in scope, calling such a
/// method on a wrapper is ambiguous.
///
/// `Arc<D>` is one: it forwards every call to the shared client, so that one
/// client (one etcd lease or ZooKeeper session) can serve several users, e.g.
/// the engine and the REST API through an `Arc<dyn Dcs>`.
#[async_trait]
pub trait ForwardingDcs: Send + Sync {
    /// The wrapped client.
    type Inner: Dcs + ?Sized;

    /// The wrapped client, as the methods not overridden reach it.
    fn inner(&self) -> &Self::Inner;

    /// The client one forwarded call goes to, once the wrapper let it pass:
    /// awaited before each call that reaches the store. By default
    /// [`ForwardingDcs::inner`], at once.
    async fn target(&self) -> &Self::Inner {
        self.inner()
    }

    /// [`Dcs::layout`].
    fn layout(&self) -> &KeyLayout {
        self.inner().layout()
    }
    /// [`Dcs::read_view`].
    async fn read_view(&self) -> Result<ClusterView, DcsError> {
        self.target().await.read_view().await
    }
    /// [`Dcs::try_initialize`].
    async fn try_initialize(&self) -> Result<bool, DcsError> {
        self.target().await.try_initialize().await
    }
    /// [`Dcs::complete_initialize`].
    async fn complete_initialize(&self, system_id: SystemId) -> Result<(), DcsError> {
        self.target().await.complete_initialize(system_id).await
    }
    /// [`Dcs::cancel_initialize`].
    async fn cancel_initialize(&self) -> Result<(), DcsError> {
        self.target().await.cancel_initialize().await
    }
    /// [`Dcs::acquire_leader`].
    async fn acquire_leader(&self, me: &MemberName, ttl: Duration) -> Result<bool, DcsError> {
        self.target().await.acquire_leader(me, ttl).await
    }
    /// [`Dcs::renew_leader`].
    async fn renew_leader(&self, me: &MemberName, ttl: Duration) -> Result<(), DcsError> {
        self.target().await.renew_leader(me, ttl).await
    }
    /// [`Dcs::lock_lifetime`].
    fn lock_lifetime(&self) -> Option<Duration> {
        self.inner().lock_lifetime()
    }
    /// [`Dcs::release_leader`].
    async fn release_leader(&self, me: &MemberName) -> Result<(), DcsError> {
        self.target().await.release_leader(me).await
    }
    /// [`Dcs::publish_member`].
    async fn publish_member(&self, member: &Member, ttl: Duration) -> Result<(), DcsError> {
        self.target().await.publish_member(member, ttl).await
    }
    /// [`Dcs::remove_member`].
    async fn remove_member(&self, name: &MemberName) -> Result<(), DcsError> {
        self.target().await.remove_member(name).await
    }
    /// [`Dcs::remove_cluster`].
    async fn remove_cluster(&self) -> Result<(), DcsError> {
        self.target().await.remove_cluster().await
    }
    /// [`Dcs::write`].
    async fn write(&self, record: &Record, expected: Expected) -> Result<Version, DcsError> {
        self.target().await.write(record, expected).await
    }
    /// [`Dcs::delete`].
    async fn delete(&self, key: &DcsKey, expected: Expected) -> Result<(), DcsError> {
        self.target().await.delete(key, expected).await
    }
    /// [`Dcs::watch`].
    async fn watch(
        &self,
        after_revision: u64,
        timeout: Duration,
    ) -> Result<WatchOutcome, DcsError> {
        self.target().await.watch(after_revision, timeout).await
    }
}

/// Every wrapper is a client: each call is the wrapper's method of the name.
#[async_trait]
impl<T: ForwardingDcs> Dcs for T {
    fn layout(&self) -> &KeyLayout {
        ForwardingDcs::layout(self)
    }
    async fn read_view(&self) -> Result<ClusterView, DcsError> {
        ForwardingDcs::read_view(self).await
    }
    async fn try_initialize(&self) -> Result<bool, DcsError> {
        ForwardingDcs::try_initialize(self).await
    }
    async fn complete_initialize(&self, system_id: SystemId) -> Result<(), DcsError> {
        ForwardingDcs::complete_initialize(self, system_id).await
    }
    async fn cancel_initialize(&self) -> Result<(), DcsError> {
        ForwardingDcs::cancel_initialize(self).await
    }
    async fn acquire_leader(&self, me: &MemberName, ttl: Duration) -> Result<bool, DcsError> {
        ForwardingDcs::acquire_leader(self, me, ttl).await
    }
    async fn renew_leader(&self, me: &MemberName, ttl: Duration) -> Result<(), DcsError> {
        ForwardingDcs::renew_leader(self, me, ttl).await
    }
    fn lock_lifetime(&self) -> Option<Duration> {
        ForwardingDcs::lock_lifetime(self)
    }
    async fn release_leader(&self, me: &MemberName) -> Result<(), DcsError> {
        ForwardingDcs::release_leader(self, me).await
    }
    async fn publish_member(&self, member: &Member, ttl: Duration) -> Result<(), DcsError> {
        ForwardingDcs::publish_member(self, member, ttl).await
    }
    async fn remove_member(&self, name: &MemberName) -> Result<(), DcsError> {
        ForwardingDcs::remove_member(self, name).await
    }
    async fn remove_cluster(&self) -> Result<(), DcsError> {
        ForwardingDcs::remove_cluster(self).await
    }
    async fn write(&self, record: &Record, expected: Expected) -> Result<Version, DcsError> {
        ForwardingDcs::write(self, record, expected).await
    }
    async fn delete(&self, key: &DcsKey, expected: Expected) -> Result<(), DcsError> {
        ForwardingDcs::delete(self, key, expected).await
    }
    async fn watch(
        &self,
        after_revision: u64,
        timeout: Duration,
    ) -> Result<WatchOutcome, DcsError> {
        ForwardingDcs::watch(self, after_revision, timeout).await
    }
}

/// The shared client: every call forwarded.
impl<D: Dcs + ?Sized> ForwardingDcs for Arc<D> {
    type Inner = D;

    fn inner(&self) -> &D {
        self
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use async_trait::async_trait;
    use matriarch_model::{KeyLayout, Member, MemberName, Role};

    use super::ForwardingDcs;
    use crate::test_support::GatedDcs;
    use crate::{Dcs, DcsError, MemoryDcs};

    fn member(name: &str) -> Member {
        Member::new(
            MemberName::new(name).expect("name"),
            "postgres://127.0.0.1:5432/postgres",
            "http://127.0.0.1:8008/patroni",
        )
    }

    async fn publish_through<D: Dcs>(dcs: &D, member: &Member) {
        dcs.publish_member(member, Duration::from_secs(30))
            .await
            .expect("publish");
    }

    #[tokio::test]
    async fn shared_clients_forward_to_the_same_store() {
        let layout = KeyLayout::new("service", "forwarding").expect("layout");
        let memory = MemoryDcs::new(layout);
        let shared: Arc<dyn Dcs> = Arc::new(memory.clone());
        publish_through(&Arc::clone(&shared), &member("m1")).await;
        // Qualified: this module also imports `ForwardingDcs`, which `Arc` has.
        assert_eq!(Dcs::layout(&shared), memory.layout());
        let view = Dcs::read_view(&shared).await.expect("read through the Arc");
        assert!(view.members["m1"].is_ok(), "{:?}", view.members);
        let direct = memory.read_view().await.expect("read the store itself");
        assert_eq!(direct, view);
    }

    /// Marks every record it publishes as a primary's.
    struct Marking {
        inner: MemoryDcs,
    }

    #[async_trait]
    impl ForwardingDcs for Marking {
        type Inner = MemoryDcs;

        fn inner(&self) -> &MemoryDcs {
            &self.inner
        }
        async fn publish_member(&self, member: &Member, ttl: Duration) -> Result<(), DcsError> {
            let mut member = member.clone();
            member.role = Role::Primary;
            self.inner.publish_member(&member, ttl).await
        }
    }

    #[tokio::test]
    async fn a_wrapper_changes_what_it_overrides_and_forwards_the_rest() {
        let memory = MemoryDcs::new(KeyLayout::new("service", "wrapped").expect("layout"));
        let wrapper = Marking {
            inner: memory.clone(),
        };
        publish_through(&wrapper, &member("m1")).await;
        let view = Dcs::read_view(&wrapper).await.expect("read through");
        let record = &view.members["m1"].as_ref().expect("a record").value;
        assert_eq!(record.role, Role::Primary);
        assert_eq!(view, memory.read_view().await.expect("read the store"));
        assert_eq!(Dcs::layout(&wrapper), memory.layout());
    }

    #[tokio::test]
    async fn every_call_that_reaches_the_store_passes_the_target_hook() {
        let memory = MemoryDcs::new(KeyLayout::new("service", "gated").expect("layout"));
        let gated = GatedDcs::new(memory.clone());
        publish_through(&gated, &member("m1")).await;
        let view = Dcs::read_view(&gated).await.expect("read through");
        assert_eq!(Dcs::layout(&gated), memory.layout());
        assert_eq!(Dcs::lock_lifetime(&gated), None);
        assert_eq!(gated.calls(), 2, "the publish and the read, not the rest");

        gated.stall();
        let stalled = tokio::time::timeout(
            Duration::from_millis(50),
            Dcs::watch(&gated, view.revision, Duration::ZERO),
        )
        .await;
        assert!(stalled.is_err(), "a stalled call answered: {stalled:?}");
        assert_eq!(gated.calls(), 3);
    }
}
