//! What the engine publishes in its status for the REST API (issue 20): what
//! its loop observed and decided, so the API reads nothing itself; a
//! demotion announced before PostgreSQL is told; and a primary whose lock
//! renewal fails no longer writable by the time its fence fires, even while
//! the loop still waits on an unresponsive DCS.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use matriarch_dcs::test_support::GatedDcs;
use matriarch_dcs::{Clock, Dcs, ManualClock, MemoryDcs};
use matriarch_ha::sim::member_settings;
use matriarch_ha::{Engine, EngineRole, Fence};
use matriarch_model::{
    encode_initialize, ClusterConfig, Initialize, KeyLayout, MemberName, Timeline,
};
use matriarch_postgres::PgRole;
use matriarch_router::RecordingRouter;

mod support;
use support::fake_pg::{Events, FakePg, RecordingFence};
use support::scene::SYSID;

fn name(n: &str) -> MemberName {
    MemberName::new(n).expect("a valid name")
}

fn config() -> ClusterConfig {
    ClusterConfig {
        ttl: Duration::from_secs(10),
        loop_wait: Duration::from_secs(1),
        retry_timeout: Duration::from_secs(2),
        ..ClusterConfig::default()
    }
}

struct Leader {
    clock: Arc<ManualClock>,
    engine: Engine<GatedDcs, FakePg, RecordingRouter>,
    /// Whether the engine's status said writable when PostgreSQL was told
    /// to demote.
    writable_when_demoted: Arc<Mutex<Option<bool>>>,
    /// The engine's connection, to stall.
    gate: GatedDcs,
    connection: MemoryDcs,
    fence: Arc<RecordingFence>,
}

/// Member `a`'s engine over a running primary, `a` holding the lock.
async fn leader() -> Leader {
    let clock = Arc::new(ManualClock::new());
    let store = MemoryDcs::with_clock(
        KeyLayout::new("service", "test").expect("a layout"),
        Arc::clone(&clock) as Arc<dyn Clock>,
    );
    store.put_raw("initialize", &encode_initialize(&Initialize::Done(SYSID)));
    let connection = store.connect();
    assert!(connection
        .acquire_leader(&name("a"), config().ttl)
        .await
        .expect("the lock"));
    let gate = GatedDcs::new(connection.clone());
    let pg = FakePg::primary(800, &Events::default());
    let fence = Arc::new(RecordingFence::default());
    let engine = Engine::new(
        gate.clone(),
        pg.clone(),
        RecordingRouter::new("recording"),
        member_settings(&name("a"), config()),
        Arc::clone(&clock) as Arc<dyn Clock>,
    )
    .with_fence(Arc::clone(&fence) as Arc<dyn Fence>);
    let writable_when_demoted = Arc::new(Mutex::new(None));
    let (status, seen) = (engine.status(), Arc::clone(&writable_when_demoted));
    pg.on_demote(move || *seen.lock().expect("the slot") = Some(status.get().writable));
    Leader {
        clock,
        engine,
        writable_when_demoted,
        gate,
        connection,
        fence,
    }
}

#[tokio::test]
async fn the_status_carries_what_the_loop_observed_and_decided() {
    let mut a = leader().await;
    let decision = a.engine.run_once().await;
    assert_eq!(decision.role, EngineRole::Leader, "{decision:?}");
    let status = a.engine.status().get();
    assert!(status.writable);
    let observed = status.postgres.expect("the observed PostgreSQL");
    assert_eq!(observed.role(), Some(PgRole::Primary));
    assert_eq!(observed.timeline, Some(Timeline(1)));
    let view = status.view.expect("the view decided on");
    assert_eq!(view.leader_name(), Some(&name("a")));
    assert!(status.view_read_at.is_some());
}

#[tokio::test]
async fn a_demotion_is_published_before_postgres_is_told_and_the_status_shows_it_stopped() {
    let mut a = leader().await;
    a.engine.run_once().await;
    assert!(a.engine.status().get().writable);
    // Cut off from the store past the deadline: the loop demotes.
    a.connection.set_reachable(false);
    a.clock.advance(Duration::from_secs(9));
    let decision = a.engine.run_once().await;
    assert_eq!(decision.role, EngineRole::Demoting, "{decision:?}");
    assert_eq!(
        *a.writable_when_demoted.lock().expect("the slot"),
        Some(false),
        "PostgreSQL was told to demote while the status still said writable"
    );
    // The status shows PostgreSQL as it is after the plan, not before.
    let status = a.engine.status().get();
    assert!(!status.writable);
    assert_eq!(
        status.postgres.expect("the observed PostgreSQL").role(),
        None,
        "the published observation predates the demotion"
    );
    // Unreachable: the last view read stays, with its time.
    assert!(status.view.is_some() && status.view_read_at.is_some());
}

#[tokio::test]
async fn a_primary_whose_renewal_fails_is_not_writable_once_its_fence_fires() {
    let mut a = leader().await;
    a.engine.run_once().await;
    assert!(a.engine.status().get().writable);
    let fence_window = a
        .fence
        .armed
        .lock()
        .expect("the fence log")
        .last()
        .copied()
        .expect("the fence armed at the renewal");
    // The DCS stops answering; the clock reaches the moment the fence fires.
    a.gate.stall();
    a.clock.advance(fence_window);
    let status = a.engine.status();
    let mut engine = a.engine;
    let looping = tokio::spawn(async move { engine.run_once().await });
    // The loop now waits on the DCS for up to retry_timeout.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !looping.is_finished(),
        "the loop did not wait on the DCS: the test proves nothing"
    );
    assert!(
        !status.get().writable,
        "still published as writable {fence_window:?} after the last renewal, when the fence \
         fired, while the loop waits on the DCS"
    );
    let decision = looping.await.expect("the loop");
    assert_ne!(decision.role, EngineRole::Leader, "{decision:?}");
}
