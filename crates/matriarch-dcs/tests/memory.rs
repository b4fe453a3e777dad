//! MemoryDcs behaviour beyond the shared contract: per-client partitions.

use std::sync::Arc;
use std::time::Duration;

use matriarch_dcs::{Dcs, DcsError, ManualClock, MemoryDcs};
use matriarch_model::{KeyLayout, MemberName};

#[tokio::test]
async fn a_cut_off_client_sees_unreachable_not_a_lost_lock() {
    let clock = ManualClock::new();
    let layout = KeyLayout::new("service", "partition").unwrap();
    let holder = MemoryDcs::with_clock(layout, Arc::new(clock.clone()));
    let other = holder.connect();
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
