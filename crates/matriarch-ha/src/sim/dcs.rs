//! A node's DCS client in the simulation: slowed down, cut off, or hiding
//! the store's lock lifetime as the world's faults say.

use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use matriarch_dcs::{Dcs, DcsError, Expected, ForwardingDcs, MemoryDcs};
use matriarch_model::{ClusterView, DcsKey, Member, MemberName, Record, SystemId, Version};

use super::world::{lock, World};

/// A node's DCS client, which the simulation can slow down or cut off. A
/// slowed-down request reaches the store after the delay whether or not its
/// caller still waits: a write may land after the caller timed out.
#[derive(Clone)]
pub(super) struct SimDcs {
    pub(super) inner: MemoryDcs,
    pub(super) delay: Arc<Mutex<Duration>>,
    /// For the trace, and what the node read.
    pub(super) world: Option<Arc<Mutex<World>>>,
    /// The node this client belongs to.
    pub(super) node: usize,
    /// [`super::ModelBug::HideLockLifetime`].
    pub(super) hide_lock_lifetime: bool,
}

impl SimDcs {
    pub(super) fn current_delay(&self) -> Duration {
        *self.delay.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn lag(&self) {
        let delay = self.current_delay();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
    }

    /// Sends a request that takes effect after the delay, even if the caller
    /// gave up on it meanwhile (a timeout dropped its future).
    async fn send<T, F, Fut>(&self, request: F) -> Result<T, DcsError>
    where
        T: Send + 'static,
        F: FnOnce(MemoryDcs) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, DcsError>> + Send + 'static,
    {
        let delay = self.current_delay();
        let inner = self.inner.clone();
        if delay.is_zero() {
            return request(inner).await;
        }
        let world = self.world.clone();
        let task = tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            request(inner).await
        });
        match task.await {
            Ok(result) => result,
            Err(_) => {
                if let Some(world) = world {
                    lock(&world).log("a DCS request's task vanished".to_owned());
                }
                Err(DcsError::Unreachable {
                    backend: "memory",
                    message: "simulated request lost".to_owned(),
                })
            }
        }
    }

    /// [`SimDcs::send`], adding the line `note` makes of the result (if
    /// any) to the trace when the request lands.
    async fn send_noted<T, F, Fut, N>(&self, request: F, note: N) -> Result<T, DcsError>
    where
        T: Send + 'static,
        F: FnOnce(MemoryDcs) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, DcsError>> + Send + 'static,
        N: FnOnce(&Result<T, DcsError>) -> Option<String> + Send + 'static,
    {
        let world = self.world.clone();
        self.send(move |dcs| async move {
            let result = request(dcs).await;
            if let (Some(world), Some(line)) = (&world, note(&result)) {
                lock(world).log(line);
            }
            result
        })
        .await
    }
}

/// The store's layout and its watches are the store's own.
#[async_trait]
impl ForwardingDcs for SimDcs {
    type Inner = MemoryDcs;

    fn inner(&self) -> &MemoryDcs {
        &self.inner
    }
    async fn read_view(&self) -> Result<ClusterView, DcsError> {
        self.lag().await;
        let view = self.inner.read_view().await?;
        if let (Some(world), Some(Ok(config))) = (&self.world, &view.config) {
            let strict = config.value.synchronous_mode_strict;
            let mut world = lock(world);
            let now = tokio::time::Instant::now();
            let node = &mut world.nodes[self.node];
            node.strict_read_since = match (strict, node.strict_read_since) {
                (false, _) => None,
                (true, Some(since)) => Some(since),
                (true, None) => Some(now),
            };
        }
        Ok(view)
    }
    async fn try_initialize(&self) -> Result<bool, DcsError> {
        self.send(|dcs| async move { dcs.try_initialize().await })
            .await
    }
    async fn complete_initialize(&self, system_id: SystemId) -> Result<(), DcsError> {
        self.send(move |dcs| async move { dcs.complete_initialize(system_id).await })
            .await
    }
    async fn cancel_initialize(&self) -> Result<(), DcsError> {
        self.send(|dcs| async move { dcs.cancel_initialize().await })
            .await
    }
    async fn acquire_leader(&self, me: &MemberName, ttl: Duration) -> Result<bool, DcsError> {
        let name = me.clone();
        let line = format!("{me}: holds the lock");
        self.send_noted(
            move |dcs| async move { dcs.acquire_leader(&name, ttl).await },
            move |result| matches!(result, Ok(true)).then_some(line),
        )
        .await
    }
    async fn renew_leader(&self, me: &MemberName, ttl: Duration) -> Result<(), DcsError> {
        let name = me.clone();
        self.send(move |dcs| async move { dcs.renew_leader(&name, ttl).await })
            .await
    }
    fn lock_lifetime(&self) -> Option<Duration> {
        if self.hide_lock_lifetime {
            return None;
        }
        // The delay comes before the store's call: counted from the request
        // sent, the store's lifetime is a lower bound.
        self.inner.lock_lifetime()
    }
    async fn release_leader(&self, me: &MemberName) -> Result<(), DcsError> {
        let name = me.clone();
        self.send(move |dcs| async move { dcs.release_leader(&name).await })
            .await
    }
    async fn publish_member(&self, member: &Member, ttl: Duration) -> Result<(), DcsError> {
        let member = member.clone();
        self.send(move |dcs| async move { dcs.publish_member(&member, ttl).await })
            .await
    }
    async fn remove_member(&self, name: &MemberName) -> Result<(), DcsError> {
        let name = name.clone();
        self.send(move |dcs| async move { dcs.remove_member(&name).await })
            .await
    }
    async fn remove_cluster(&self) -> Result<(), DcsError> {
        self.send(|dcs| async move { dcs.remove_cluster().await })
            .await
    }
    async fn write(&self, record: &Record, expected: Expected) -> Result<Version, DcsError> {
        let line = sync_key_line(record);
        let record = record.clone();
        self.send_noted(
            move |dcs| async move { dcs.write(&record, expected).await },
            move |result| result.is_ok().then_some(line).flatten(),
        )
        .await
    }
    async fn delete(&self, key: &DcsKey, expected: Expected) -> Result<(), DcsError> {
        let key = key.clone();
        self.send(move |dcs| async move { dcs.delete(&key, expected).await })
            .await
    }
}

/// The trace line for a write of the `sync` key; `None` for other records.
fn sync_key_line(record: &Record) -> Option<String> {
    let Record::Sync(sync) = record else {
        return None;
    };
    let names: Vec<&str> = sync.sync_standbys.iter().map(MemberName::as_str).collect();
    Some(format!(
        "sync key = {names:?} quorum {:?} (leader {:?})",
        sync.quorum, sync.leader
    ))
}
