//! The observable contract of [`Postgres`], as a test suite that every
//! implementation plugs into: [`crate::PgController`] against real
//! PostgreSQL, and the in-memory PostgreSQL of the simulation and examples.
//!
//! It checks what an implementation reports (roles, timelines, including
//! the timeline a replica reports once its upstream is gone, positions) and
//! what `start`, `stop`, `promote`, `demote`, `follow` and `rewind` do to it.
//!
//! An implementation implements [`Harness`] (three fresh members of one
//! cluster, how to write on a primary, how to crash a server, how to let
//! time pass) and generates one test per check with
//! [`crate::postgres_conformance_tests!`]:
//!
//! ```ignore
//! async fn harness() -> MyHarness { MyHarness::new().await }
//! matriarch_postgres::postgres_conformance_tests!(harness());
//! ```
//!
//! The checks panic with a message on a broken contract, as tests do.

mod harness;
mod slots;

use std::time::Duration;

use matriarch_model::Timeline;

use harness::{
    cluster, follow_new_primary, follows_on_timeline, observe, observe_stopped_cleanly,
    observe_until, primary_position, stop_fast, write_and_replay,
};

use crate::{
    DataDirectoryState, LocalState, PgRole, Postgres, PostgresError, RewindOutcome, ServerState,
    StartAs, StopMode,
};

pub use harness::{Harness, MEMBERS, REPLICATION_BOUND};
pub use slots::{
    reconcile_slots_creates_drops_and_spares_ignored_and_active,
    replica_slot_copies_advance_never_backwards,
};

/// An empty member reports nothing; bootstrap makes it a primary on
/// timeline 1 with the system identifier it returned, and is never run twice.
pub async fn bootstrap_makes_a_primary_on_timeline_1<H: Harness>(harness: &H) {
    let state = observe(harness, 0).await;
    assert_eq!(
        state.server,
        ServerState::NotRunning(DataDirectoryState::Empty)
    );
    assert_eq!((state.timeline, state.system_id), (None, None));

    let system_id = harness
        .member(0)
        .bootstrap(&harness.bootstrap_spec())
        .await
        .expect("bootstrap");
    let state = observe(harness, 0).await;
    assert_eq!(state.server, ServerState::Running(PgRole::Primary));
    assert_eq!(state.timeline, Some(Timeline(1)));
    assert_eq!(state.system_id, Some(system_id));
    assert_eq!(state.upstream, None);
    let before = primary_position(&state);
    harness.write(0).await;
    let after = primary_position(&observe(harness, 0).await);
    assert!(after > before, "a write did not move {before} on ({after})");

    let err = harness
        .member(0)
        .bootstrap(&harness.bootstrap_spec())
        .await
        .expect_err("a second bootstrap");
    assert!(matches!(err, PostgresError::NotEmpty { .. }), "{err}");
}

/// Clones follow their source on its timeline and system, replay its
/// writes, and show in its replication connections; a member is not moved
/// to the other role by `start` or `follow`.
pub async fn replicas_follow_the_primary_on_its_timeline<H: Harness>(harness: &H) {
    cluster(harness, 2).await;
    let primary = observe(harness, 0).await;
    for index in 1..=2 {
        let state = observe(harness, index).await;
        assert_eq!(state.server, ServerState::Running(PgRole::Replica));
        assert_eq!(state.timeline, Some(Timeline(1)));
        assert_eq!(state.system_id, primary.system_id);
        assert_eq!(state.upstream, Some(harness.upstream(0)));
    }
    let primary = observe_until(harness, 0, "lists both replicas", |state| {
        let mut names: Vec<_> = state
            .replication
            .iter()
            .filter_map(|connection| connection.member())
            .collect();
        names.sort();
        names == [harness.upstream(1).member, harness.upstream(2).member]
    })
    .await;
    assert_eq!(primary.role(), Some(PgRole::Primary));

    // Idempotent starts; no change of role.
    let replica = harness.member(1);
    replica
        .start(StartAs::ReplicaOf(harness.upstream(0)))
        .await
        .expect("start a replica again");
    harness
        .member(0)
        .start(StartAs::Primary)
        .await
        .expect("start the primary again");
    let err = replica
        .start(StartAs::Primary)
        .await
        .expect_err("start a replica as primary");
    assert!(
        matches!(
            err,
            PostgresError::RoleConflict {
                running_as: PgRole::Replica,
                ..
            }
        ),
        "{err}"
    );
    let err = harness
        .member(0)
        .follow(&harness.upstream(1))
        .await
        .expect_err("follow on a primary");
    assert!(
        matches!(
            err,
            PostgresError::RoleConflict {
                running_as: PgRole::Primary,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(observe(harness, 1).await.role(), Some(PgRole::Replica));
    assert_eq!(observe(harness, 0).await.role(), Some(PgRole::Primary));
}

/// A clean stop keeps the timeline and system identifier on record; an
/// immediate stop or a crash is a crash; `stop` of a stopped server is
/// `Ok`; `start` brings the role back.
pub async fn stop_and_start_keep_timeline_and_role<H: Harness>(harness: &H) {
    cluster(harness, 1).await;
    let running = observe(harness, 1).await;
    let replica = harness.member(1);
    replica
        .stop(StopMode::Fast)
        .await
        .expect("stop the replica");
    replica
        .stop(StopMode::Fast)
        .await
        .expect("stop is idempotent");
    let stopped = observe_stopped_cleanly(harness, 1).await;
    assert_eq!(stopped.timeline, Some(Timeline(1)));
    assert_eq!(stopped.system_id, running.system_id);
    assert_eq!(stopped.role(), None);
    replica
        .start(StartAs::ReplicaOf(harness.upstream(0)))
        .await
        .expect("start the replica");
    write_and_replay(harness, 0, 1).await;

    let primary = harness.member(0);
    primary
        .stop(StopMode::Immediate)
        .await
        .expect("immediate stop");
    let state = observe(harness, 0).await;
    assert!(state.crashed(), "an immediate stop is a crash: {state:#?}");
    assert_eq!(state.timeline, Some(Timeline(1)));
    primary
        .start(StartAs::Primary)
        .await
        .expect("start after an immediate stop");
    assert_eq!(observe(harness, 0).await.role(), Some(PgRole::Primary));
    harness.crash(0).await;
    let state = observe_until(harness, 0, "is seen crashed", LocalState::crashed).await;
    assert_eq!(state.timeline, Some(Timeline(1)));
}

/// `promote` moves a replica to a newer timeline and is idempotent; a
/// replica that follows the new primary reports that timeline.
pub async fn promote_moves_to_a_newer_timeline<H: Harness>(harness: &H) {
    cluster(harness, 2).await;
    stop_fast(harness, 0, "stop the primary").await;
    let promoted = harness.member(1);
    let timeline = promoted.promote().await.expect("promote");
    assert_eq!(timeline, Timeline(2));
    assert_eq!(promoted.promote().await.expect("promote again"), timeline);
    let state = observe(harness, 1).await;
    assert_eq!(state.server, ServerState::Running(PgRole::Primary));
    assert_eq!(state.timeline, Some(timeline));
    assert_eq!(state.upstream, None);

    follow_new_primary(harness, 2, 1).await;
    let state = follows_on_timeline(harness, 1, 2, timeline).await;
    assert_eq!(state.upstream, Some(harness.upstream(1)));

    let err = harness
        .member(0)
        .promote()
        .await
        .expect_err("promote a stopped server");
    assert!(matches!(err, PostgresError::NotRunning { .. }), "{err}");
}

/// A replica that moved onto a new timeline keeps reporting it once its
/// upstream is gone (no WAL receiver, no restartpoint since the switch),
/// and its own promotion starts from there.
pub async fn a_replica_whose_upstream_is_gone_reports_the_timeline_it_replays<H: Harness>(
    harness: &H,
) {
    cluster(harness, 2).await;
    stop_fast(harness, 0, "stop the primary").await;
    assert_eq!(
        harness.member(1).promote().await.expect("promote"),
        Timeline(2)
    );
    follow_new_primary(harness, 2, 1).await;
    write_and_replay(harness, 1, 2).await;
    stop_fast(harness, 1, "stop the new primary").await;
    observe_until(harness, 2, "notices its upstream is gone", |state| {
        !state.receiving
    })
    .await;
    for _ in 0..10 {
        let state = observe(harness, 2).await;
        assert_eq!(state.server, ServerState::Running(PgRole::Replica));
        assert_eq!(
            state.timeline,
            Some(Timeline(2)),
            "a replica replaying timeline 2 without its upstream"
        );
        harness.pass_time(Duration::from_millis(200)).await;
    }
    assert_eq!(
        harness.member(2).promote().await.expect("promote it"),
        Timeline(3)
    );
}

/// `demote` leaves no writable server: stopped with no upstream, or a
/// replica of the upstream it was given; both are idempotent.
pub async fn demote_stops_writes_and_follows<H: Harness>(harness: &H) {
    cluster(harness, 1).await;
    let old = harness.member(0);
    old.demote(StopMode::Fast, None).await.expect("demote");
    old.demote(StopMode::Fast, None)
        .await
        .expect("demote is idempotent");
    observe_stopped_cleanly(harness, 0).await;
    assert_eq!(
        harness.member(1).promote().await.expect("promote"),
        Timeline(2)
    );
    old.demote(StopMode::Fast, Some(harness.upstream(1)))
        .await
        .expect("a stopped server is started as a replica");
    let state = follows_on_timeline(harness, 1, 0, Timeline(2)).await;
    assert_eq!(state.upstream, Some(harness.upstream(1)));
    old.demote(StopMode::Fast, Some(harness.upstream(1)))
        .await
        .expect("a replica already following is left as it is");
    assert_eq!(observe(harness, 0).await.role(), Some(PgRole::Replica));

    // A switchover back: the running primary steps down into a replica.
    let new = harness.member(1);
    new.demote(StopMode::Fast, None)
        .await
        .expect("demote the new primary");
    assert_eq!(observe(harness, 1).await.role(), None);
    assert_eq!(old.promote().await.expect("promote back"), Timeline(3));
    new.demote(StopMode::Fast, Some(harness.upstream(0)))
        .await
        .expect("start the demoted primary as a replica");
    follows_on_timeline(harness, 0, 1, Timeline(3)).await;
}

/// A former primary that crashed with writes its replica never got is
/// rewound onto the promoted replica and then follows it on its timeline;
/// `rewind` refuses a running server.
pub async fn rewind_lets_a_diverged_primary_follow<H: Harness>(harness: &H) {
    cluster(harness, 1).await;
    let (old, new) = (harness.member(0), harness.member(1));
    let err = old
        .rewind(&harness.upstream(1))
        .await
        .expect_err("rewind a running server");
    assert!(matches!(err, PostgresError::StillRunning { .. }), "{err}");
    new.stop(StopMode::Fast).await.expect("cut replication");
    harness.write(0).await;
    harness.crash(0).await;
    observe_until(harness, 0, "is seen crashed", LocalState::crashed).await;
    new.start(StartAs::Standby).await.expect("start as standby");
    let standby = observe(harness, 1).await;
    assert_eq!(standby.role(), Some(PgRole::Replica));
    assert_eq!(standby.upstream, None);
    assert_eq!(new.promote().await.expect("promote"), Timeline(2));
    harness.write(1).await;

    let outcome = old.rewind(&harness.upstream(1)).await.expect("rewind");
    assert_eq!(outcome, RewindOutcome::Rewound);
    let state = observe_stopped_cleanly(harness, 0).await;
    assert_eq!(state.upstream, Some(harness.upstream(1)));
    old.start(StartAs::ReplicaOf(harness.upstream(1)))
        .await
        .expect("start the rewound member");
    follows_on_timeline(harness, 1, 0, Timeline(2)).await;
}

/// Generates one `#[tokio::test]` per conformance check, in a module named
/// `postgres_conformance`, for the harness that `$harness` (an expression
/// evaluating to a future of a [`Harness`]) makes afresh for each test.
/// The calling crate needs `tokio` as a dev-dependency.
#[macro_export]
macro_rules! postgres_conformance_tests {
    ($harness:expr) => {
        mod postgres_conformance {
            #[allow(unused_imports)]
            use super::*;
            $crate::postgres_conformance_tests!(@each $harness;
                bootstrap_makes_a_primary_on_timeline_1,
                replicas_follow_the_primary_on_its_timeline,
                stop_and_start_keep_timeline_and_role,
                promote_moves_to_a_newer_timeline,
                a_replica_whose_upstream_is_gone_reports_the_timeline_it_replays,
                demote_stops_writes_and_follows,
                rewind_lets_a_diverged_primary_follow,
                reconcile_slots_creates_drops_and_spares_ignored_and_active,
                replica_slot_copies_advance_never_backwards
            );
        }
    };
    (@each $harness:expr; $($check:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                let harness = $harness.await;
                $crate::conformance::$check(&harness).await;
            }
        )+
    };
}
