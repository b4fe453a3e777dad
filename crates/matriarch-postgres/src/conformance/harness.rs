//! What the suite needs from an implementation ([`Harness`]) and the steps
//! its checks share: observing, waiting for replay, stopping, following.

use std::time::Duration;

use async_trait::async_trait;
use matriarch_model::{Lsn, Timeline};

use crate::{
    BootstrapSpec, DataDirectoryState, LocalState, PgRole, Postgres, ServerState, StartAs,
    StopMode, Upstream,
};

/// How many members every harness provides.
pub const MEMBERS: usize = 3;

/// How long the suite waits for replication (in the harness' time), at most.
pub const REPLICATION_BOUND: Duration = Duration::from_secs(30);

/// The step in which the suite polls while it waits.
const POLL: Duration = Duration::from_millis(100);

/// What the suite needs from an implementation under test.
#[async_trait]
pub trait Harness: Send + Sync + 'static {
    /// The implementation under test.
    type Postgres: Postgres + 'static;

    /// Member `index` (`0..MEMBERS`) of a cluster no other test uses; each
    /// starts with an empty data directory and can reach the others.
    fn member(&self, index: usize) -> &Self::Postgres;

    /// How the other members reach member `index`.
    fn upstream(&self, index: usize) -> Upstream;

    /// The spec to bootstrap member 0 with.
    fn bootstrap_spec(&self) -> BootstrapSpec;

    /// Commits one write on member `index`, a running primary, so that its
    /// WAL position moves on; returns when the commit is acknowledged.
    async fn write(&self, index: usize);

    /// Kills member `index`'s server without a clean shutdown, as a power
    /// loss would.
    async fn crash(&self, index: usize);

    /// Lets `duration` pass as the implementation sees it: a virtual clock
    /// may jump at once (and replication progress with it); real servers
    /// are waited for.
    async fn pass_time(&self, duration: Duration);
}

pub(super) async fn observe<H: Harness>(harness: &H, index: usize) -> LocalState {
    harness
        .member(index)
        .observe()
        .await
        .unwrap_or_else(|err| panic!("observe member {index}: {err}"))
}

/// Observes member `index`, asserting that it is stopped after a clean
/// shutdown.
pub(super) async fn observe_stopped_cleanly<H: Harness>(harness: &H, index: usize) -> LocalState {
    let state = observe(harness, index).await;
    assert_eq!(
        state.server,
        ServerState::NotRunning(DataDirectoryState::CleanShutdown),
        "member {index}"
    );
    state
}

/// Polls member `index` until `check` holds, for at most [`REPLICATION_BOUND`].
pub(super) async fn observe_until<H: Harness>(
    harness: &H,
    index: usize,
    what: &str,
    check: impl Fn(&LocalState) -> bool,
) -> LocalState {
    let mut waited = Duration::ZERO;
    loop {
        let state = observe(harness, index).await;
        if check(&state) {
            return state;
        }
        assert!(
            waited < REPLICATION_BOUND,
            "member {index} never {what} within {REPLICATION_BOUND:?}; last state {state:#?}"
        );
        harness.pass_time(POLL).await;
        waited += POLL;
    }
}

/// A primary's position: what it flushed.
pub(super) fn primary_position(state: &LocalState) -> Lsn {
    assert_eq!(state.role(), Some(PgRole::Primary), "{state:#?}");
    state
        .wal
        .flush
        .or(state.wal.write)
        .unwrap_or_else(|| panic!("a running primary reports no position: {state:#?}"))
}

/// Waits until replica `replica` has replayed everything primary `primary`
/// has flushed, on the primary's timeline.
pub(super) async fn wait_replayed<H: Harness>(harness: &H, replica: usize, primary: usize) {
    let primary_state = observe(harness, primary).await;
    let position = primary_position(&primary_state);
    let timeline = primary_state.timeline;
    observe_until(
        harness,
        replica,
        &format!("replayed {position:?} of member {primary} on {timeline:?}"),
        |state| {
            state.role() == Some(PgRole::Replica)
                && state
                    .wal
                    .replayed
                    .is_some_and(|replayed| replayed >= position)
        },
    )
    .await;
}

/// A write on member `primary` that member `replica` then replays.
pub(super) async fn write_and_replay<H: Harness>(harness: &H, primary: usize, replica: usize) {
    harness.write(primary).await;
    wait_replayed(harness, replica, primary).await;
}

/// [`write_and_replay`], then waits until `replica` reports `timeline`;
/// its state then.
pub(super) async fn follows_on_timeline<H: Harness>(
    harness: &H,
    primary: usize,
    replica: usize,
    timeline: Timeline,
) -> LocalState {
    write_and_replay(harness, primary, replica).await;
    observe_until(
        harness,
        replica,
        &format!("follows {timeline:?}"),
        |state| state.timeline == Some(timeline),
    )
    .await
}

/// Stops member `index` (fast); `what` names the step in a panic.
pub(super) async fn stop_fast<H: Harness>(harness: &H, index: usize, what: &str) {
    harness
        .member(index)
        .stop(StopMode::Fast)
        .await
        .expect(what);
}

/// Member `replica` follows member `primary`, a new primary.
pub(super) async fn follow_new_primary<H: Harness>(harness: &H, replica: usize, primary: usize) {
    harness
        .member(replica)
        .follow(&harness.upstream(primary))
        .await
        .expect("follow the new primary");
}

/// Bootstraps member 0 and clones members `1..=replicas` from it, started as
/// its replicas and caught up with one write.
pub(super) async fn cluster<H: Harness>(harness: &H, replicas: usize) {
    harness
        .member(0)
        .bootstrap(&harness.bootstrap_spec())
        .await
        .expect("bootstrap member 0");
    for index in 1..=replicas {
        let postgres = harness.member(index);
        postgres
            .clone_replica(&harness.upstream(0))
            .await
            .unwrap_or_else(|err| panic!("clone member {index}: {err}"));
        postgres
            .start(StartAs::ReplicaOf(harness.upstream(0)))
            .await
            .unwrap_or_else(|err| panic!("start member {index} as a replica: {err}"));
    }
    harness.write(0).await;
    for index in 1..=replicas {
        wait_replayed(harness, index, 0).await;
    }
}
