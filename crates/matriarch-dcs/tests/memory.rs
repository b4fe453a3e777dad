//! MemoryDcs behaviour beyond the shared contract: per-client partitions,
//! unchanged member records left unwritten.

use std::sync::Arc;
use std::time::Duration;

use matriarch_dcs::{Dcs, DcsError, ManualClock, MemoryDcs, WatchOutcome};
use matriarch_model::{KeyLayout, Member, MemberName};

/// A store of its own on a clock the test drives, and two clients of `scope`.
fn two_clients(scope: &str) -> (ManualClock, MemoryDcs, MemoryDcs) {
    let clock = ManualClock::new();
    let layout = KeyLayout::new("service", scope).expect("layout");
    let first = MemoryDcs::with_clock(layout, Arc::new(clock.clone()));
    let second = first.connect();
    (clock, first, second)
}

#[tokio::test]
async fn a_cut_off_client_sees_unreachable_not_a_lost_lock() {
    let (_clock, holder, other) = two_clients("partition");
    let ttl = Duration::from_secs(10);
    let me = MemberName::new("holder").unwrap();
    assert!(holder.acquire_leader(&me, ttl).await.unwrap());

    holder.set_reachable(false);
    let err = holder.renew_leader(&me, ttl).await.unwrap_err();
    assert!(err.is_unreachable(), "{err}");
    assert!(matches!(
        err,
        DcsError::Unreachable {
            backend: "memory",
            ..
        }
    ));
    assert!(holder.read_view().await.unwrap_err().is_unreachable());
    // The rest of the cluster still reaches the store and sees the lock.
    let view = other.read_view().await.unwrap();
    assert_eq!(view.leader_name(), Some(&me));

    holder.set_reachable(true);
    holder.renew_leader(&me, ttl).await.unwrap();
}

#[test]
fn errors_read_clearly() {
    let err = DcsError::LockNotHeld {
        member: MemberName::new("a").unwrap(),
        holder: Some(MemberName::new("b").unwrap()),
    };
    assert_eq!(
        err.to_string(),
        "a does not hold the leader lock: it is held by b"
    );
    assert!(!err.is_unreachable());
}

/// An idle loop publishes an unchanged record: nothing is written (no new
/// revision, no watcher woken), yet the record lives as long as it is
/// published; a changed record is written.
#[tokio::test]
async fn unchanged_member_records_are_not_rewritten_and_stay_alive() {
    let (clock, client, watcher) = two_clients("idle");
    let ttl = Duration::from_secs(10);
    let mut member = Member::new(
        MemberName::new("idle").unwrap(),
        "postgres://h:5432/postgres",
        "http://h:8008/patroni",
    );
    client.publish_member(&member, ttl).await.unwrap();
    let first = watcher.read_view().await.unwrap();

    for _ in 0..4 {
        clock.advance(Duration::from_secs(6));
        client.publish_member(&member, ttl).await.unwrap();
    }
    let idle = watcher.read_view().await.unwrap();
    assert_eq!(
        idle.revision, first.revision,
        "unchanged publications wrote revisions"
    );
    assert_eq!(
        idle.members["idle"].as_ref().unwrap().version,
        first.members["idle"].as_ref().unwrap().version
    );
    assert_eq!(
        watcher
            .watch(idle.revision, Duration::from_millis(50))
            .await
            .unwrap(),
        WatchOutcome::TimedOut
    );

    member.tags.failover_priority = 7;
    client.publish_member(&member, ttl).await.unwrap();
    let changed = watcher.read_view().await.unwrap();
    assert!(
        changed.revision > idle.revision,
        "a changed record was not written"
    );
    assert_eq!(
        changed.members["idle"]
            .as_ref()
            .unwrap()
            .value
            .tags
            .failover_priority,
        7
    );
}

/// A renewal sent before the operator raised the ttl may land after one sent
/// with the new ttl (a request that outlived its caller's timeout). The
/// holder armed its fence from the longer promise, so the late one must not
/// shorten the lock's life, as an etcd lease's keep-alive cannot shorten a
/// key that moved to a newer lease.
#[tokio::test]
async fn a_late_renewal_with_a_shorter_ttl_does_not_shorten_the_lock() {
    let (clock, holder, other) = two_clients("late");
    let me = MemberName::new("holder").unwrap();
    assert!(holder
        .acquire_leader(&me, Duration::from_secs(5))
        .await
        .unwrap());
    holder
        .renew_leader(&me, Duration::from_secs(28))
        .await
        .unwrap();
    // The stale request, sent with the old ttl, lands now.
    holder
        .renew_leader(&me, Duration::from_secs(5))
        .await
        .unwrap();
    clock.advance(Duration::from_secs(10));
    let view = other.read_view().await.unwrap();
    assert_eq!(
        view.leader_name(),
        Some(&me),
        "the lock expired before the 28 s its holder's fence counts on"
    );
    let other_name = MemberName::new("other").unwrap();
    assert!(!other
        .acquire_leader(&other_name, Duration::from_secs(5))
        .await
        .unwrap());
}
