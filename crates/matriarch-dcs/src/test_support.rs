//! Helpers the backends' tests share with the conformance suite (`testing`
//! feature): member values, scopes no other test uses, polling, and a client
//! that counts its calls or stops answering.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use matriarch_model::{Lsn, Member, MemberName, MemberState, Role, Timeline};

use crate::forwarding::ForwardingDcs;
use crate::memory::MemoryDcs;
use crate::store::{Dcs, WatchOutcome};

/// The member name `text`; panics when it is not a valid name (tests pass
/// literals).
pub fn name(text: &str) -> MemberName {
    MemberName::new(text).expect("valid member name")
}

/// A running replica called `text` with a timeline and WAL positions, as a
/// member publishes it.
pub fn member(text: &str) -> Member {
    let conn_url = format!("postgres://127.0.0.1:5432/postgres?member={text}");
    let mut member = Member {
        role: Role::Replica,
        state: MemberState::Running,
        timeline: Some(Timeline(2)),
        received_lsn: Some(Lsn(0x300_0060)),
        replayed_lsn: Some(Lsn(0x300_0000)),
        ..Member::new(name(text), conn_url, "http://127.0.0.1:8008/patroni")
    };
    member.tags.failover_priority = 2;
    member
}

/// Publishes [`member`]`(who)` through `client` for `ttl`; panics when the
/// call fails.
pub async fn publish<D: Dcs + ?Sized>(client: &D, who: &str, ttl: Duration) {
    client
        .publish_member(&member(who), ttl)
        .await
        .unwrap_or_else(|e| panic!("publish {who}: {e}"));
}

/// Takes the free leader lock as `who` through `client` and publishes
/// [`member`]`(who)`, as a new leader does; panics when either fails.
pub async fn lead<D: Dcs + ?Sized>(client: &D, who: &str, ttl: Duration) {
    let taken = client
        .acquire_leader(&name(who), ttl)
        .await
        .unwrap_or_else(|e| panic!("acquire as {who}: {e}"));
    assert!(taken, "the lock was not free for {who}");
    publish(client, who, ttl).await;
}

/// A scope no other test (of this or another test process) uses: `tag`, the
/// process id, a counter and the clock's nanoseconds.
pub fn unique_scope(tag: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{tag}-{}-{}-{nanos}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    )
}

/// Watches through `client` for a change after `revision`, for at most
/// `timeout`: the outcome and how long the call took; panics when the watch
/// fails.
pub async fn timed_watch<D: Dcs + ?Sized>(
    client: &D,
    revision: u64,
    timeout: Duration,
) -> (WatchOutcome, Duration) {
    let started = Instant::now();
    let outcome = client
        .watch(revision, timeout)
        .await
        .unwrap_or_else(|e| panic!("watch: {e}"));
    (outcome, started.elapsed())
}

/// Polls `attempt` every 100 ms until it returns `Some`; panics naming `what`
/// after `bound`.
pub async fn eventually<T, F, Fut>(what: &str, bound: Duration, mut attempt: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(value) = attempt().await {
            return value;
        }
        assert!(started.elapsed() < bound, "{what}: not within {bound:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A client of a [`MemoryDcs`] that counts the calls reaching the store
/// and, once stalled, answers none of them: each waits until its caller
/// gives up. Clones share the count and the stall.
#[derive(Clone)]
pub struct GatedDcs {
    inner: MemoryDcs,
    calls: Arc<AtomicUsize>,
    stalled: Arc<AtomicBool>,
}

impl GatedDcs {
    /// Passes every call to `inner`, until stalled.
    pub fn new(inner: MemoryDcs) -> Self {
        GatedDcs {
            inner,
            calls: Arc::default(),
            stalled: Arc::default(),
        }
    }

    /// The calls that reached the gate so far (all but `layout` and
    /// `lock_lifetime`), answered or not.
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// From now on, no call is answered.
    pub fn stall(&self) {
        self.stalled.store(true, Ordering::SeqCst);
    }
}

#[async_trait]
impl ForwardingDcs for GatedDcs {
    type Inner = MemoryDcs;

    fn inner(&self) -> &MemoryDcs {
        &self.inner
    }

    async fn target(&self) -> &MemoryDcs {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.stalled.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        &self.inner
    }
}
