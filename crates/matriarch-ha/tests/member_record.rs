//! The member record the engine publishes, as Patroni's `touch_member`
//! writes it. A member that clones a replica says so at once (`creating
//! replica`): `patronictl list` shows it, and `patronictl reinit --wait` must
//! not take a fast clone for a finished one. A running replica's record
//! carries its replay position, and every record the restarts its node
//! reports: `patronictl list` shows them, `patronictl flush … restart` needs
//! the scheduled one.

use std::sync::Arc;

use matriarch_dcs::{Clock, Dcs, ManualClock, MemoryDcs};
use matriarch_ha::sim::{member_settings, running_member};
use matriarch_ha::*;
use matriarch_model::*;
use matriarch_postgres::{MemoryPostgresCluster, Postgres};
use matriarch_router::RecordingRouter;
use serde_json::{json, Value};

mod support;
use support::fake_pg::{Events, FakePg};
use support::scene::SYSID;

fn name(n: &str) -> MemberName {
    MemberName::new(n).expect("a member name")
}

/// A store of an initialized cluster that `a` leads with a running primary
/// at position 800, on `clock`.
async fn led_by_a(clock: &Arc<ManualClock>) -> MemoryDcs {
    let store = MemoryDcs::with_clock(
        KeyLayout::new("service", "test").expect("a layout"),
        Arc::clone(clock) as Arc<dyn Clock>,
    );
    store.put_raw("initialize", &encode_initialize(&Initialize::Done(SYSID)));
    let ttl = ClusterConfig::default().ttl;
    let leader = store.connect();
    assert!(leader.acquire_leader(&name("a"), ttl).await.expect("lock"));
    leader
        .publish_member(&running_member(&name("a"), Role::Primary, 800, 1), ttl)
        .await
        .expect("a's record");
    store
}

/// Member `b`'s engine over `postgres` on its own connection to `store`.
fn engine_b<P: Postgres + 'static>(
    store: &MemoryDcs,
    postgres: P,
    clock: &Arc<ManualClock>,
) -> Engine<MemoryDcs, P, RecordingRouter> {
    Engine::new(
        store.connect(),
        postgres,
        RecordingRouter::new("recording"),
        member_settings(&name("b"), ClusterConfig::default()),
        Arc::clone(clock) as Arc<dyn Clock>,
    )
}

/// `b`'s record in the store.
async fn record_of_b(store: &MemoryDcs) -> Member {
    let view = store.read_view().await.expect("read the store");
    let entry = view.members.get("b").expect("b's record").as_ref();
    entry.expect("a readable record").value.clone()
}

#[tokio::test]
async fn the_member_record_says_creating_replica_as_soon_as_the_clone_starts() {
    let clock = Arc::new(ManualClock::new());
    let store = led_by_a(&clock).await;
    // `b` has an empty data directory.
    let postgres = MemoryPostgresCluster::new(SYSID);
    let mut engine = engine_b(&store, postgres.member(name("b")), &clock);

    let decision = engine.run_once().await;
    assert!(
        decision
            .actions
            .iter()
            .any(|a| matches!(a, Action::CloneFrom(from) if *from == name("a"))),
        "b should clone from a: {decision:?}"
    );
    assert_eq!(
        record_of_b(&store).await.state,
        MemberState::CreatingReplica
    );
}

/// What a daemon knows besides the engine: a parameter waits for a restart,
/// and one is scheduled.
struct Restarts;

impl MemberExtras for Restarts {
    fn pending_restart(&self) -> bool {
        true
    }
    fn scheduled_restart(&self) -> Option<Value> {
        Some(json!({"schedule": "2030-01-01T12:00:00+00:00", "postgres_version": "15.3"}))
    }
}

#[tokio::test]
async fn a_replica_record_carries_its_replay_position_and_the_nodes_restarts() {
    let clock = Arc::new(ManualClock::new());
    let store = led_by_a(&clock).await;
    // `b` streams from `a`: received up to 800, replayed up to 500.
    let pg = FakePg::replica_of("a", 800, &Events::default());
    pg.state.lock().expect("the fake's state").replay_lag = 300;

    // Without extras: the replay position, no restart.
    engine_b(&store, pg.clone(), &clock).run_once().await;
    let plain = record_of_b(&store).await;
    assert_eq!(
        (plain.role, plain.state),
        (Role::Replica, MemberState::Running)
    );
    assert_eq!(plain.received_lsn, Some(Lsn(800)));
    assert_eq!(plain.replayed_lsn, Some(Lsn(500)));
    assert!(!plain.pending_restart && plain.scheduled_restart.is_none());

    let mut engine = engine_b(&store, pg, &clock).with_member_extras(Arc::new(Restarts));
    engine.run_once().await;
    // Patroni's keys, as `patronictl` reads them.
    let written = serde_json::to_value(record_of_b(&store).await).expect("JSON");
    assert_eq!(written["replay_lsn"], json!(500), "{written}");
    assert_eq!(written["receive_lsn"], json!(800), "{written}");
    assert_eq!(written["pending_restart"], json!(true), "{written}");
    assert_eq!(
        written["scheduled_restart"],
        json!({"schedule": "2030-01-01T12:00:00+00:00", "postgres_version": "15.3"}),
        "{written}"
    );
}
