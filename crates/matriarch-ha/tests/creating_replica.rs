//! A member that clones a replica says so in its member record at once
//! (Patroni's `creating replica`): `patronictl list` shows it, and
//! `patronictl reinit --wait` must not take a fast clone for a finished one.

use std::sync::Arc;

use matriarch_dcs::{Clock, Dcs, ManualClock, MemoryDcs};
use matriarch_ha::sim::{member_settings, running_member};
use matriarch_ha::*;
use matriarch_model::*;
use matriarch_postgres::MemoryPostgresCluster;
use matriarch_router::RecordingRouter;

const SYSID: SystemId = SystemId(7_000_000_000_000_000_001);

fn name(n: &str) -> MemberName {
    MemberName::new(n).expect("a member name")
}

#[tokio::test]
async fn the_member_record_says_creating_replica_as_soon_as_the_clone_starts() {
    let clock = Arc::new(ManualClock::new());
    let store = MemoryDcs::with_clock(
        KeyLayout::new("service", "test").expect("a layout"),
        Arc::clone(&clock) as Arc<dyn Clock>,
    );
    store.put_raw("initialize", &encode_initialize(&Initialize::Done(SYSID)));
    let config = ClusterConfig::default();
    // `a` leads with a running primary; `b` has an empty data directory.
    let leader = store.connect();
    assert!(leader
        .acquire_leader(&name("a"), config.ttl)
        .await
        .expect("lock"));
    leader
        .publish_member(
            &running_member(&name("a"), Role::Primary, 800, 1),
            config.ttl,
        )
        .await
        .expect("a's record");
    let postgres = MemoryPostgresCluster::new(SYSID);
    let mut engine = Engine::new(
        store.connect(),
        postgres.member(name("b")),
        RecordingRouter::new("recording"),
        member_settings(&name("b"), config),
        Arc::clone(&clock) as Arc<dyn Clock>,
    );

    let decision = engine.run_once().await;
    assert!(
        decision
            .actions
            .iter()
            .any(|a| matches!(a, Action::CloneFrom(from) if *from == name("a"))),
        "b should clone from a: {decision:?}"
    );
    let view = store.read_view().await.expect("read the store");
    let record = view
        .members
        .get("b")
        .and_then(|entry| entry.as_ref().ok())
        .map(|versioned| versioned.value.state.clone());
    assert_eq!(record, Some(MemberState::CreatingReplica));
}
