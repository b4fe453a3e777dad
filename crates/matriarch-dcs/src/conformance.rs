//! The contract every [`Dcs`] backend must keep, as a test suite that any
//! backend plugs into (like object_store's shared tests).
//!
//! A backend implements [`Harness`] (how to make clients of one fresh scope,
//! how to let time pass, how to write raw bytes as a third party) and
//! generates one test per check with [`crate::dcs_conformance_tests!`]:
//!
//! ```ignore
//! async fn harness() -> MyHarness { MyHarness::start().await }
//! matriarch_dcs::dcs_conformance_tests!(harness());
//! ```
//!
//! The checks panic with a message on a broken contract, as tests do.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use matriarch_model::{
    ClusterConfig, ClusterView, DcsKey, FailoverRequest, Failsafe, HistoryEntry, Initialize,
    LeaderStatus, Lsn, Record, SyncState, SystemId, Timeline, TimelineHistory,
};

mod harness;
mod lock;

pub use harness::{Harness, WATCH_WAKE_BOUND};

use harness::race;
pub use lock::{
    concurrent_acquirers_have_exactly_one_winner, lock_expires_after_ttl_and_not_before,
    release_frees_the_lock_at_once, renew_and_release_by_a_non_owner_fail, renewal_keeps_the_lock,
    reported_lock_lifetime_is_never_longer_than_the_lock_lives,
};

use crate::error::{DcsError, Expected};
use crate::store::{Dcs, WatchOutcome};
use crate::test_support::{lead, member, name, publish, timed_watch};

/// A fresh scope reads as empty.
pub async fn empty_scope_reads_as_empty<H: Harness>(harness: &H) {
    let view = harness.client().await.read_view().await.expect("read_view");
    assert!(view.leader.is_none() && view.initialize.is_none() && view.config.is_none());
    assert!(view.members.is_empty(), "{:?}", view.members);
}

/// Of many members racing to initialize, exactly one wins; it records the
/// system id; a cancelled race can be run again.
pub async fn initialize_race_has_exactly_one_winner<H: Harness>(harness: &H) {
    let mut clients = Vec::new();
    for _ in 0..5 {
        clients.push(Arc::new(harness.client().await));
    }
    let results = race(clients.clone(), |client| async move {
        client.try_initialize().await
    })
    .await;
    let winners: Vec<usize> = results
        .iter()
        .enumerate()
        .filter(|(_, won)| **won)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(winners.len(), 1, "initialize race winners: {winners:?}");
    let winner = &clients[winners[0]];
    let loser = &clients[(winners[0] + 1) % clients.len()];

    let view = loser.read_view().await.expect("read_view");
    assert_eq!(
        view.initialize
            .expect("initialize present")
            .expect("decodes")
            .value,
        Initialize::InProgress
    );
    winner.cancel_initialize().await.expect("cancel_initialize");
    assert!(loser
        .read_view()
        .await
        .expect("read_view")
        .initialize
        .is_none());

    assert!(loser.try_initialize().await.expect("second race"));
    assert!(!winner.try_initialize().await.expect("late racer"));
    loser
        .complete_initialize(SystemId(7_221_239_846_937_620_000))
        .await
        .expect("complete_initialize");
    let view = winner.read_view().await.expect("read_view");
    assert_eq!(
        view.initialize.expect("present").expect("decodes").value,
        Initialize::Done(SystemId(7_221_239_846_937_620_000))
    );
    // A finished initialization is neither cancelled nor overwritten.
    loser.cancel_initialize().await.expect("cancel is a no-op");
    let err = loser
        .complete_initialize(SystemId(1))
        .await
        .expect_err("complete twice");
    assert!(matches!(err, DcsError::Conflict { .. }), "{err}");
    assert!(winner.read_view().await.expect("read").initialize.is_some());
}

/// Member records are visible to everyone, refreshed by republishing, gone
/// after their TTL without it, and removable.
pub async fn members_are_published_refreshed_and_expire<H: Harness>(harness: &H) {
    let (ttl, slack) = (harness.ttl(), harness.expiry_slack());
    let node = harness.client().await;
    let observer = harness.client().await;
    let record = member("node1");
    node.publish_member(&record, ttl).await.expect("publish");
    let view = observer.read_view().await.expect("read");
    let stored = view
        .members
        .get("node1")
        .expect("member listed")
        .as_ref()
        .expect("decodes");
    assert_eq!(stored.value, record);

    harness.pass_time(ttl.saturating_sub(slack) / 2).await;
    let mut updated = record.clone();
    updated.received_lsn = Some(Lsn(0x400_0000));
    node.publish_member(&updated, ttl).await.expect("republish");
    harness
        .pass_time(ttl.saturating_sub(slack) / 2 + ttl.saturating_sub(slack) / 2)
        .await;
    let view = observer.read_view().await.expect("read");
    let stored = view
        .members
        .get("node1")
        .expect("refreshed member still listed");
    assert_eq!(stored.as_ref().expect("decodes").value, updated);

    harness.pass_time(ttl + slack).await;
    let view = observer.read_view().await.expect("read");
    assert!(
        !view.members.contains_key("node1"),
        "member outlived its ttl"
    );

    node.publish_member(&record, ttl).await.expect("publish");
    node.remove_member(&record.name).await.expect("remove");
    assert!(observer.read_view().await.expect("read").members.is_empty());
}

fn all_records() -> Vec<Record> {
    vec![
        Record::Config(ClusterConfig {
            maximum_lag_on_failover: 4096,
            ..ClusterConfig::default()
        }),
        Record::Failover(FailoverRequest {
            leader: Some(name("node1")),
            candidate: Some(name("node2")),
            scheduled_at: None,
        }),
        Record::Sync(SyncState {
            leader: Some(name("node1")),
            sync_standbys: BTreeSet::from([name("node2")]),
            quorum: None,
        }),
        Record::History(TimelineHistory(vec![HistoryEntry {
            timeline: Timeline(1),
            switch_lsn: Lsn(0x300_0060),
            reason: "no recovery target specified".to_owned(),
            timestamp: None,
            new_leader: Some(name("node2")),
        }])),
        Record::Status(LeaderStatus {
            optime: Lsn(0x300_0060),
            ..LeaderStatus::default()
        }),
        Record::Failsafe(Failsafe(
            [(name("node1"), "http://127.0.0.1:8008/patroni".to_owned())].into(),
        )),
    ]
}

/// Every record comes back as it was written, at the version the write returned.
pub async fn every_record_round_trips<H: Harness>(harness: &H) {
    let client = harness.client().await;
    for record in all_records() {
        let version = client.write(&record, Expected::Any).await.expect("write");
        let view = client.read_view().await.expect("read");
        let (value, stored_version) = match (&record, &view) {
            (Record::Config(_), v) => pick(&v.config, Record::Config),
            (Record::Failover(_), v) => pick(&v.failover, Record::Failover),
            (Record::Sync(_), v) => pick(&v.sync, Record::Sync),
            (Record::History(_), v) => pick(&v.history, Record::History),
            (Record::Status(_), v) => pick(&v.status, Record::Status),
            (Record::Failsafe(_), v) => pick(&v.failsafe, Record::Failsafe),
        };
        assert_eq!(value, record);
        assert_eq!(stored_version, version, "version of {}", record.key());
    }
}

fn pick<T: Clone>(
    entry: &Option<matriarch_model::Entry<T>>,
    wrap: fn(T) -> Record,
) -> (Record, matriarch_model::Version) {
    let versioned = entry
        .as_ref()
        .expect("record present")
        .as_ref()
        .expect("record decodes");
    (wrap(versioned.value.clone()), versioned.version)
}

/// A read sees every write that completed before it began, this client's
/// or another's (a backend that answers reads from a cache must check it is
/// current first): puts, member records and deletes.
pub async fn reads_see_every_completed_write<H: Harness>(harness: &H) {
    let writer = harness.client().await;
    let reader = harness.client().await;
    // Both clients have read (and so warmed any cache) before the writes.
    writer.read_view().await.expect("read");
    reader.read_view().await.expect("read");
    for n in 1..=10u64 {
        let record = Record::Status(LeaderStatus {
            optime: Lsn(n),
            ..LeaderStatus::default()
        });
        let version = writer.write(&record, Expected::Any).await.expect("write");
        for (who, client) in [("writer", &writer), ("reader", &reader)] {
            let view = client.read_view().await.expect("read");
            let status = view.status.as_ref().and_then(|entry| entry.as_ref().ok());
            assert_eq!(
                status.map(|status| (status.value.optime, status.version)),
                Some((Lsn(n), version)),
                "the {who}'s read after write {n}"
            );
            assert!(
                view.revision >= version.0,
                "the {who}'s view is older than write {n}"
            );
        }
        publish(&writer, &format!("m{n}"), harness.ttl()).await;
        let view = reader.read_view().await.expect("read");
        assert!(
            view.members.contains_key(format!("m{n}").as_str()),
            "member m{n}"
        );
        writer
            .delete(&DcsKey::Status, Expected::Any)
            .await
            .expect("delete");
        let view = reader.read_view().await.expect("read");
        assert!(
            view.status.is_none(),
            "the status deleted by write {n} is still read"
        );
    }
}

/// A compare-and-swap on a stale or wrong version fails as a conflict and
/// writes nothing.
pub async fn compare_and_swap_conflicts_are_reported<H: Harness>(harness: &H) {
    let client = harness.client().await;
    let other = harness.client().await;
    let first = Record::Failover(FailoverRequest {
        leader: None,
        candidate: Some(name("node2")),
        scheduled_at: None,
    });
    let second = Record::Failover(FailoverRequest {
        leader: None,
        candidate: Some(name("node3")),
        scheduled_at: None,
    });
    let v1 = client
        .write(&first, Expected::Absent)
        .await
        .expect("create");
    let err = other
        .write(&second, Expected::Absent)
        .await
        .expect_err("create twice");
    assert!(
        matches!(&err, DcsError::Conflict { key, expected: Expected::Absent, found: Some(v) } if key == "failover" && *v == v1),
        "{err}"
    );
    let v2 = other
        .write(&second, Expected::Version(v1))
        .await
        .expect("swap");
    assert_ne!(v1, v2);
    let err = client
        .write(&first, Expected::Version(v1))
        .await
        .expect_err("stale swap");
    assert!(matches!(err, DcsError::Conflict { .. }), "{err}");
    let view = client.read_view().await.expect("read");
    assert_eq!(pick(&view.failover, Record::Failover).0, second);

    let err = client
        .delete(&DcsKey::Failover, Expected::Version(v1))
        .await
        .expect_err("stale delete");
    assert!(matches!(err, DcsError::Conflict { .. }), "{err}");
    client
        .delete(&DcsKey::Failover, Expected::Version(v2))
        .await
        .expect("delete");
    assert!(client.read_view().await.expect("read").failover.is_none());
    let err = client
        .delete(&DcsKey::Failover, Expected::Version(v2))
        .await
        .expect_err("delete of an absent key at a version");
    assert!(
        matches!(err, DcsError::Conflict { found: None, .. }),
        "{err}"
    );
    let err = client
        .delete(&DcsKey::Leader, Expected::Any)
        .await
        .expect_err("the leader key is not a record");
    assert!(matches!(err, DcsError::InvalidRequest(_)), "{err}");
}

/// A watch wakes soon after a change by another client.
pub async fn watch_wakes_on_a_change<H: Harness>(harness: &H) {
    let watcher = harness.client().await;
    let writer = harness.client().await;
    let revision = watcher.read_view().await.expect("read").revision;
    let started = Instant::now();
    let write = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let record = Record::Status(LeaderStatus::default());
        writer.write(&record, Expected::Any).await.expect("write");
    });
    let outcome = watcher
        .watch(revision, Duration::from_secs(30))
        .await
        .expect("watch");
    let waited = started.elapsed();
    write.await.expect("writer");
    assert_eq!(outcome, WatchOutcome::Changed);
    assert!(waited < WATCH_WAKE_BOUND, "watch woke after {waited:?}");
    let view = watcher.read_view().await.expect("read");
    assert!(view.revision > revision && view.status.is_some());
}

/// A watch with nothing to report returns when its timeout passes.
pub async fn watch_returns_on_timeout<H: Harness>(harness: &H) {
    let watcher = harness.client().await;
    let revision = watcher.read_view().await.expect("read").revision;
    let (outcome, took) = timed_watch(&watcher, revision, Duration::from_millis(300)).await;
    assert_eq!(outcome, WatchOutcome::TimedOut);
    assert!(took < Duration::from_secs(5), "{took:?}");
}

/// A lock that expires wakes watchers, so replicas notice a dead leader
/// without waiting for their next loop.
pub async fn watch_wakes_when_the_lock_expires<H: Harness>(harness: &H) {
    let (ttl, slack) = (harness.ttl(), harness.expiry_slack());
    let holder = harness.client().await;
    let watcher = harness.client().await;
    assert!(holder
        .acquire_leader(&name("holder"), ttl)
        .await
        .expect("acquire"));
    let revision = watcher.read_view().await.expect("read").revision;
    let watch = tokio::spawn(async move {
        let outcome = watcher.watch(revision, Duration::from_secs(60)).await;
        (watcher, outcome)
    });
    harness.pass_time(ttl + slack).await;
    let (watcher, outcome) = tokio::time::timeout(Duration::from_secs(10), watch)
        .await
        .expect("watch woke")
        .expect("task");
    assert_eq!(outcome.expect("watch"), WatchOutcome::Changed);
    assert!(watcher.read_view().await.expect("read").leader.is_none());
}

/// A malformed value written by a third party is an error for its key only;
/// an unreadable leader key is never taken for a free lock.
pub async fn malformed_values_are_errors_for_their_key_only<H: Harness>(harness: &H) {
    let client = harness.client().await;
    client
        .publish_member(&member("good"), harness.ttl())
        .await
        .expect("publish");
    harness.put_raw("members/broken", b"{not json").await;
    harness.put_raw("config", br#"{"ttl": "thirty"}"#).await;
    harness.put_raw("leader", b"not a valid/name").await;
    let view = client
        .read_view()
        .await
        .expect("a read with malformed keys still succeeds");
    assert!(view.members["good"].is_ok());
    let broken = view.members["broken"]
        .as_ref()
        .expect_err("malformed member");
    assert_eq!(broken.key, "members/broken");
    assert!(view.config.as_ref().expect("config present").is_err());
    assert!(view.leader.as_ref().expect("leader present").is_err());
    assert_eq!(view.errors().len(), 3, "{:?}", view.errors());
    assert!(
        !client
            .acquire_leader(&name("good"), harness.ttl())
            .await
            .expect("acquire"),
        "an unreadable leader key was taken as a free lock"
    );
}

/// Removing the cluster wipes every key of its scope, whoever wrote it, and
/// nothing of a scope whose name begins with its own; the cluster can then
/// be bootstrapped again, and the old lock holder knows it lost the lock.
pub async fn remove_cluster_wipes_its_scope_only<H: Harness>(harness: &H) {
    let ttl = harness.ttl();
    let (holder, operator) = (harness.client().await, harness.client().await);
    let sibling = harness.sibling_client().await;
    for client in [&holder, &sibling] {
        assert!(client.try_initialize().await.expect("try_initialize"));
        client
            .complete_initialize(SystemId(1))
            .await
            .expect("complete_initialize");
        lead(client, "node1", ttl).await;
        for record in all_records() {
            client.write(&record, Expected::Any).await.expect("write");
        }
    }
    publish(&operator, "node2", ttl).await;
    harness.put_raw("members/broken", b"{not json").await;
    let sibling_before = sibling.read_view().await.expect("read the sibling");

    operator.remove_cluster().await.expect("remove_cluster");

    let view = operator.read_view().await.expect("read");
    assert_eq!(
        (
            view.initialize.is_some(),
            view.leader.is_some(),
            view.config.is_some()
        ),
        (false, false, false),
        "initialize, leader, config survived: {view:?}"
    );
    assert!(
        view.members.is_empty(),
        "members survived: {:?}",
        view.members
    );
    assert!(
        view.failover.is_none() && view.sync.is_none() && view.history.is_none(),
        "records survived: {view:?}"
    );
    assert!(view.status.is_none() && view.failsafe.is_none(), "{view:?}");
    let sibling_after = sibling.read_view().await.expect("read the sibling");
    assert_eq!(
        ClusterView {
            revision: 0,
            ..sibling_after
        },
        ClusterView {
            revision: 0,
            ..sibling_before
        },
        "removing a scope changed the scope named after it with a suffix"
    );

    operator
        .remove_cluster()
        .await
        .expect("removing an empty scope");
    match holder.renew_leader(&name("node1"), ttl).await {
        Err(DcsError::LockNotHeld { holder: None, .. }) => {}
        other => panic!("renewing a removed lock: {other:?}"),
    }
    assert!(operator.try_initialize().await.expect("bootstrap again"));
    publish(&holder, "node1", ttl).await;
    let view = operator.read_view().await.expect("read");
    assert!(view.members.contains_key("node1"), "{:?}", view.members);
}

/// Generates one `#[tokio::test]` per conformance check, in a module named
/// `dcs_conformance`, for the harness that `$harness` (an expression
/// evaluating to a future of a [`Harness`]) makes afresh for each test.
/// The calling crate needs `tokio` as a dev-dependency. A backend that
/// cannot run every check yet names the ones it runs:
/// `dcs_conformance_tests!(harness() => renewal_keeps_the_lock, ...)`.
#[macro_export]
macro_rules! dcs_conformance_tests {
    ($harness:expr) => {
        $crate::dcs_conformance_tests!($harness =>
            empty_scope_reads_as_empty,
            initialize_race_has_exactly_one_winner,
            concurrent_acquirers_have_exactly_one_winner,
            lock_expires_after_ttl_and_not_before,
            reported_lock_lifetime_is_never_longer_than_the_lock_lives,
            renewal_keeps_the_lock,
            renew_and_release_by_a_non_owner_fail,
            release_frees_the_lock_at_once,
            members_are_published_refreshed_and_expire,
            every_record_round_trips,
            reads_see_every_completed_write,
            compare_and_swap_conflicts_are_reported,
            watch_wakes_on_a_change,
            watch_returns_on_timeout,
            watch_wakes_when_the_lock_expires,
            malformed_values_are_errors_for_their_key_only,
            remove_cluster_wipes_its_scope_only,
        );
    };
    // The named checks only, each against a harness of its own.
    ($harness:expr => $($check:ident),+ $(,)?) => {
        mod dcs_conformance {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    $crate::conformance::$check(&$harness.await).await;
                }
            )+
        }
    };
}
