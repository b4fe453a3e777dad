//! Cascading replication and archive-only replicas in `decide` (Patroni's
//! `replicatefrom` and `nostream` tags): which member a replica streams
//! from, what it publishes, and which slots each member keeps for whom.

use std::collections::BTreeMap;
use std::time::Duration;

use matriarch_ha::sim::running_member;
use matriarch_ha::*;
use matriarch_model::*;

mod support;
use support::scene::{housekeeping, Scene};

fn name(n: &str) -> MemberName {
    MemberName::new(n).unwrap()
}

fn tags(replicatefrom: Option<&str>, nostream: bool) -> Tags {
    Tags {
        replicatefrom: replicatefrom.map(str::to_owned),
        nostream,
        ..Tags::default()
    }
}

/// Leader `a` (running primary at 5000); `me` is a running replica that
/// streams from `upstream`, with `my_tags`.
fn replica_world(me: &str, upstream: Option<&str>, my_tags: Tags) -> Scene {
    let mut world = Scene::at(me, Duration::from_secs(1000));
    world.node.tags = my_tags;
    world.running_replica(upstream, 4000, 1);
    world.local.receiving = upstream.is_some();
    world.memory.timeline_checked_against = Some(name("a"));
    world.put("leader", b"a".to_vec());
    peer(
        &mut world,
        "a",
        Role::Primary,
        Tags::default(),
        Some("streaming"),
    );
    world
}

/// A running peer; `replication_state` as its record says.
fn peer(world: &mut Scene, n: &str, role: Role, tags: Tags, state: Option<&str>) {
    let mut member = running_member(&name(n), role, 4500, 1);
    member.tags = tags;
    member.replication_state = state.map(str::to_owned);
    world.put(&format!("members/{n}"), encode_member(&member));
}

/// A running replica that streams, tagged `replicatefrom`.
fn streaming_peer(world: &mut Scene, n: &str, replicatefrom: Option<&str>) {
    peer(
        world,
        n,
        Role::Replica,
        tags(replicatefrom, false),
        Some("streaming"),
    );
}

/// The upstream named by the decision's `Follow` or `StartReplica`.
fn chosen(decision: &Decision) -> Option<Option<MemberName>> {
    decision.actions.iter().find_map(|a| match a {
        Action::Follow(n) => Some(Some(n.clone())),
        Action::StartReplica { upstream } => Some(upstream.clone()),
        _ => None,
    })
}

fn published(decision: &Decision) -> Member {
    let member = housekeeping(decision).member.cloned();
    member.expect("the record is published every loop")
}

fn slot_plan(decision: &Decision) -> SlotPlan {
    let plan = housekeeping(decision).slots.cloned();
    plan.expect("slots are reconciled")
}

fn wanted(plan: &SlotPlan) -> Vec<&str> {
    plan.desired.slots.keys().map(String::as_str).collect()
}

/// A peer's role and `replication_state`; `None`: no record at all.
type PeerShape = Option<(Role, Option<&'static str>)>;

#[test]
fn replicatefrom_is_followed_only_while_that_member_streams() {
    // (what b is, c's replicatefrom, the upstream c must take)
    let streaming = Some((Role::Replica, Some("streaming")));
    let cases: [(&str, PeerShape, &str, &str); 8] = [
        ("b streams", streaming, "b", "b"),
        ("b has no record", None, "b", "a"),
        (
            "b replays from the archive only",
            Some((Role::Replica, Some("in archive recovery"))),
            "b",
            "a",
        ),
        (
            "b's record says nothing",
            Some((Role::Replica, None)),
            "b",
            "a",
        ),
        (
            "b runs as a primary without the lock",
            Some((Role::Primary, None)),
            "b",
            "a",
        ),
        ("the tag names the leader", streaming, "a", "a"),
        ("the tag names c itself", streaming, "c", "a"),
        ("the tag names nobody known", streaming, "zz", "a"),
    ];
    for (case, b, tag, expected) in cases {
        let mut world = replica_world("c", Some("old"), tags(Some(tag), false));
        if let Some((role, state)) = b {
            peer(&mut world, "b", role, Tags::default(), state);
        }
        let decision = world.decide();
        assert_eq!(
            chosen(&decision),
            Some(Some(name(expected))),
            "{case}: {decision:?}"
        );
    }
}

#[test]
fn a_stopped_or_crashed_upstream_sends_the_replica_to_the_leader() {
    for state in [MemberState::Stopped, MemberState::Crashed] {
        let mut world = replica_world("c", Some("b"), tags(Some("b"), false));
        let mut b = running_member(&name("b"), Role::Replica, 4500, 1);
        b.state = state.clone();
        b.replication_state = Some("streaming".to_owned());
        world.put("members/b", encode_member(&b));
        assert_eq!(chosen(&world.decide()), Some(Some(name("a"))), "b {state}");
    }
}

#[test]
fn the_replica_moves_to_the_leader_and_back_as_its_upstream_comes_and_goes() {
    let mut world = replica_world("c", Some("b"), tags(Some("b"), false));
    streaming_peer(&mut world, "b", None);
    let decision = world.decide();
    assert_eq!(chosen(&decision), None, "already there: {decision:?}");
    assert!(decision.reason.contains("streaming from b"), "{decision:?}");
    assert_eq!(published(&decision).upstream.as_deref(), Some("b"));

    world.remove("members/b");
    let decision = world.decide();
    assert_eq!(chosen(&decision), Some(Some(name("a"))), "{decision:?}");

    world.local.role = LocalRole::Replica {
        upstream: Some(name("a")),
    };
    assert_eq!(chosen(&world.decide()), None, "stays on the leader");
    assert_eq!(
        published(&world.decide()).upstream.as_deref(),
        Some("a"),
        "the record says what it follows, not the tag"
    );

    streaming_peer(&mut world, "b", None);
    assert_eq!(chosen(&world.decide()), Some(Some(name("b"))), "back to b");
}

#[test]
fn a_replicatefrom_chain_that_loops_falls_back_to_the_leader() {
    // c → b → c: a cycle through c.
    let mut world = replica_world("c", Some("old"), tags(Some("b"), false));
    streaming_peer(&mut world, "b", Some("c"));
    assert_eq!(chosen(&world.decide()), Some(Some(name("a"))));
    // c → b → d → c: a longer one.
    streaming_peer(&mut world, "b", Some("d"));
    streaming_peer(&mut world, "d", Some("c"));
    assert_eq!(chosen(&world.decide()), Some(Some(name("a"))));
    // c → b → d → b: a loop c is not part of; b streams (it will fall
    // back itself), so c may stream from it.
    streaming_peer(&mut world, "d", Some("b"));
    assert_eq!(chosen(&world.decide()), Some(Some(name("b"))));
}

#[test]
fn a_stopped_replica_starts_streaming_from_its_chosen_upstream() {
    let mut world = replica_world("c", None, tags(Some("b"), false));
    world.local.role = LocalRole::Stopped { crashed: false };
    streaming_peer(&mut world, "b", None);
    assert_eq!(chosen(&world.decide()), Some(Some(name("b"))));
    world.remove("members/b");
    assert_eq!(chosen(&world.decide()), Some(Some(name("a"))));
}

#[test]
fn nostream_never_streams_whatever_replicatefrom_says() {
    let mut world = replica_world("c", None, tags(Some("b"), true));
    streaming_peer(&mut world, "b", None);
    // Running from the archive: nothing to change, and no waiting for WAL.
    world.memory.loops_not_streaming = 10;
    let decision = world.decide();
    assert_eq!(chosen(&decision), None, "{decision:?}");
    assert!(decision.reason.contains("nostream"), "{decision:?}");
    assert_eq!(published(&decision).upstream, None);
    // Stopped: started without an upstream.
    world.local.role = LocalRole::Stopped { crashed: false };
    assert_eq!(chosen(&world.decide()), Some(None));
    // Streaming when the tag was set: restarted without streaming.
    world.local.role = LocalRole::Replica {
        upstream: Some(name("a")),
    };
    let decision = world.decide();
    assert!(
        decision
            .actions
            .contains(&Action::Demote(DemoteMode::Graceful)),
        "{decision:?}"
    );
}

/// Leader `a` with replicas `b` (streams from a), `c` (replicatefrom b)
/// and `n` (nostream), under the kept keys `config`.
fn leader_world(config: &str) -> Scene {
    let mut world = Scene::at("a", Duration::from_secs(1000));
    world.running_primary_holding_the_lock(5000);
    world.config.other = decode_config(config.as_bytes()).unwrap().other;
    world.put("leader", b"a".to_vec());
    peer(&mut world, "a", Role::Primary, Tags::default(), None);
    streaming_peer(&mut world, "b", None);
    streaming_peer(&mut world, "c", Some("b"));
    peer(&mut world, "n", Role::Replica, tags(None, true), None);
    world
}

#[test]
fn the_leader_keeps_an_advanced_slot_for_a_cascading_member_and_none_for_nostream() {
    // Default member_slots_ttl (Patroni 4): every streaming member's slot,
    // the cascading one's moved along to the position it reports.
    let world = leader_world("{}");
    let plan = slot_plan(&world.decide());
    assert_eq!(wanted(&plan), vec!["b", "c"], "no slot for nostream n");
    assert_eq!(
        plan.desired.advance_to,
        BTreeMap::from([("c".to_owned(), Lsn(4500))])
    );
}

#[test]
fn with_member_slots_ttl_zero_the_leader_keeps_slots_only_for_who_streams_from_it() {
    let mut world = leader_world(r#"{"member_slots_ttl": 0}"#);
    assert_eq!(wanted(&slot_plan(&world.decide())), vec!["b"]);
    // b is gone: c streams from the leader, so its slot is kept.
    world.remove("members/b");
    assert_eq!(wanted(&slot_plan(&world.decide())), vec!["c"]);
    // Not waiting for the leader's positions: it copies nothing.
    world.remove("status");
    assert_eq!(wanted(&slot_plan(&world.decide())), vec!["c"]);
}

/// Replica `b` of leader `a`, with `c` tagged replicatefrom b and the
/// leader's `status` naming slots b, c and x.
fn upstream_world(my_tags: Tags) -> Scene {
    let mut world = replica_world("b", Some("a"), my_tags);
    streaming_peer(&mut world, "c", Some("b"));
    peer(&mut world, "n", Role::Replica, tags(Some("b"), true), None);
    world.put(
        "status",
        Record::Status(LeaderStatus {
            optime: Lsn(5000),
            slots: BTreeMap::from([("b".to_owned(), Lsn(4900)), ("x".to_owned(), Lsn(4800))]),
            retain_slots: vec![],
        })
        .encode(),
    );
    world
}

#[test]
fn a_cascading_upstream_keeps_a_slot_for_each_member_that_streams_from_it() {
    let world = upstream_world(Tags::default());
    let plan = slot_plan(&world.decide());
    // Its downstream c (not nostream n), the leader's copies, the leader's own.
    assert_eq!(wanted(&plan), vec!["a", "c", "x"]);
    assert_eq!(plan.desired.advance_to.get("c"), Some(&Lsn(4500)));
}

#[test]
fn a_nofailover_upstream_keeps_only_its_downstream_slots() {
    let mut world = upstream_world(Tags {
        nofailover: true,
        ..Tags::default()
    });
    assert_eq!(wanted(&slot_plan(&world.decide())), vec!["c"]);
    // Not waiting for the leader's positions: it copies nothing.
    world.remove("status");
    assert_eq!(wanted(&slot_plan(&world.decide())), vec!["c"]);
}
