//! Helpers the backends' tests share with the conformance suite (`testing`
//! feature): member values, scopes no other test uses, and polling.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use matriarch_model::{Lsn, Member, MemberName, MemberState, Role, Timeline};

use crate::Dcs;

/// The member name `text`; panics when it is not a valid name (tests pass
/// literals).
pub fn name(text: &str) -> MemberName {
    MemberName::new(text).expect("valid member name")
}

/// A running replica called `text` with a timeline and WAL positions, as a
/// member publishes it.
pub fn member(text: &str) -> Member {
    let mut member = Member::new(
        name(text),
        format!("postgres://127.0.0.1:5432/postgres?member={text}"),
        "http://127.0.0.1:8008/patroni",
    );
    member.role = Role::Replica;
    member.state = MemberState::Running;
    member.timeline = Some(Timeline(2));
    member.received_lsn = Some(Lsn(0x300_0060));
    member.replayed_lsn = Some(Lsn(0x300_0000));
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
