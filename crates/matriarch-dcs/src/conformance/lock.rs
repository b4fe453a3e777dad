//! The leader lock's checks: one winner, expiry by the TTL and not before,
//! the lifetime reported, renewal, release, and what a non-owner may not do.

use std::sync::Arc;

use matriarch_model::MemberName;

use super::harness::{race, Harness};
use crate::error::DcsError;
use crate::store::Dcs;
use crate::test_support::name;

/// Of many members racing for the leader lock, exactly one wins, and the
/// view names it.
pub async fn concurrent_acquirers_have_exactly_one_winner<H: Harness>(harness: &H) {
    let ttl = harness.ttl();
    let mut clients = Vec::new();
    for _ in 0..5 {
        clients.push(Arc::new(harness.client().await));
    }
    let names: Vec<MemberName> = (0..clients.len())
        .map(|i| name(&format!("racer{i}")))
        .collect();
    let racers = clients.iter().map(Arc::clone).zip(names.iter().cloned());
    let won = race(racers.collect(), |(client, me)| async move {
        client.acquire_leader(&me, ttl).await
    })
    .await;
    let winners: Vec<&MemberName> = names
        .iter()
        .zip(won)
        .filter(|(_, won)| *won)
        .map(|(me, _)| me)
        .collect();
    assert_eq!(winners.len(), 1, "lock winners: {winners:?}");
    let view = clients[0].read_view().await.expect("read_view");
    assert_eq!(view.leader_name(), Some(winners[0]));
}

/// Two clients of the scope, `holder` and `other`, and the member names they
/// race with (`holder`, `other`).
pub(super) async fn rivals<H: Harness>(
    harness: &H,
) -> (H::Client, H::Client, MemberName, MemberName) {
    let holder = harness.client().await;
    let other = harness.client().await;
    (holder, other, name("holder"), name("other"))
}

/// An unrenewed lock lives for its TTL, and not longer.
pub async fn lock_expires_after_ttl_and_not_before<H: Harness>(harness: &H) {
    let (ttl, slack) = (harness.ttl(), harness.expiry_slack());
    let (holder, other, a, b) = rivals(harness).await;
    assert!(holder.acquire_leader(&a, ttl).await.expect("acquire"));
    harness.pass_time(ttl.saturating_sub(slack)).await;
    assert!(
        !other.acquire_leader(&b, ttl).await.expect("acquire"),
        "the lock was free before ttl - slack"
    );
    assert_eq!(
        other.read_view().await.expect("read").leader_name(),
        Some(&a)
    );
    harness.pass_time(slack * 2).await;
    assert!(
        other.acquire_leader(&b, ttl).await.expect("acquire"),
        "the lock was still held after ttl + slack"
    );
    // The expired holder learns it lost the lock, and to whom.
    match holder.renew_leader(&a, ttl).await {
        Err(DcsError::LockNotHeld { member, holder }) => {
            assert_eq!(member, a);
            assert_eq!(holder, Some(b));
        }
        other => panic!("renewal of an expired lock gave {other:?}"),
    }
}

/// The lifetime a holder reports for its lock ([`Dcs::lock_lifetime`]) is
/// never longer than the lock lives: asked for twice the suite's ttl (more
/// than a server may grant), the lock, left unrenewed, is still held
/// `lifetime - slack` after its last renewal. A backend that reported the
/// ttl asked for while its server clamped it fails here.
pub async fn reported_lock_lifetime_is_never_longer_than_the_lock_lives<H: Harness>(harness: &H) {
    let (ttl, slack) = (harness.ttl(), harness.expiry_slack());
    let asked = ttl * 2;
    let (holder, other, a, b) = rivals(harness).await;
    assert!(holder.acquire_leader(&a, asked).await.expect("acquire"));
    let after_acquire = holder
        .lock_lifetime()
        .expect("a lock lifetime after a successful acquire");
    assert!(!after_acquire.is_zero(), "a zero lock lifetime");
    holder.renew_leader(&a, asked).await.expect("renew");
    let lifetime = holder
        .lock_lifetime()
        .expect("a lock lifetime after a successful renewal");
    assert!(!lifetime.is_zero(), "a zero lock lifetime");
    let passed = lifetime.saturating_sub(slack);
    harness.pass_time(passed).await;
    assert!(
        !other.acquire_leader(&b, ttl).await.expect("acquire"),
        "the lock was free {passed:?} after its renewal, before the lifetime of {lifetime:?} \
         its holder reported (asked for {asked:?})"
    );
    assert_eq!(
        other.read_view().await.expect("read").leader_name(),
        Some(&a)
    );
}

/// Renewals keep the lock for as long as they come in time.
pub async fn renewal_keeps_the_lock<H: Harness>(harness: &H) {
    let ttl = harness.ttl();
    let (holder, other, a, b) = rivals(harness).await;
    assert!(holder.acquire_leader(&a, ttl).await.expect("acquire"));
    for _ in 0..6 {
        harness.pass_time(ttl / 3).await;
        holder.renew_leader(&a, ttl).await.expect("renew");
        assert!(!other.acquire_leader(&b, ttl).await.expect("acquire"));
    }
    assert!(holder
        .acquire_leader(&a, ttl)
        .await
        .expect("re-acquire by the holder"));
}

/// Renewal and release by a member that does not hold the lock fail and
/// change nothing.
pub async fn renew_and_release_by_a_non_owner_fail<H: Harness>(harness: &H) {
    let ttl = harness.ttl();
    let (holder, other, a, b) = rivals(harness).await;
    let err = other
        .renew_leader(&b, ttl)
        .await
        .expect_err("renew of a free lock");
    assert!(
        matches!(&err, DcsError::LockNotHeld { holder: None, .. }),
        "{err}"
    );
    assert!(holder.acquire_leader(&a, ttl).await.expect("acquire"));
    for result in [
        other.renew_leader(&b, ttl).await,
        other.release_leader(&b).await,
    ] {
        match result {
            Err(DcsError::LockNotHeld { member, holder }) => {
                assert_eq!((member, holder), (b.clone(), Some(a.clone())));
            }
            other => panic!("non-owner lock call gave {other:?}"),
        }
    }
    let view = other.read_view().await.expect("read");
    assert_eq!(view.leader_name(), Some(&a));
}

/// A released lock is free at once.
pub async fn release_frees_the_lock_at_once<H: Harness>(harness: &H) {
    let ttl = harness.ttl();
    let (holder, other, a, b) = rivals(harness).await;
    assert!(holder.acquire_leader(&a, ttl).await.expect("acquire"));
    holder.release_leader(&a).await.expect("release");
    assert!(other
        .acquire_leader(&b, ttl)
        .await
        .expect("acquire after release"));
    let err = holder.release_leader(&a).await.expect_err("second release");
    assert!(matches!(err, DcsError::LockNotHeld { .. }), "{err}");
}
