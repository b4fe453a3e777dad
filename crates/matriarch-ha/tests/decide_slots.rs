//! Replication slots in `decide`: the leader keeps a member's slot while
//! the member is there and for `member_slots_ttl` after, creates the
//! permanent slots, never touches ignored ones; a replica keeps copies of
//! the leader's physical slots at the `status` key's positions.

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

type World = Scene;

impl World {
    /// `me` runs the primary and holds the lock; `members` are its peers.
    fn leader(me: &str, members: &[&str]) -> World {
        let mut world = Scene::at(me, Duration::from_secs(1000));
        world.running_primary_holding_the_lock(5000);
        world.put("leader", me.as_bytes().to_vec());
        world.member(me, Role::Primary);
        for m in members {
            world.member(m, Role::Replica);
        }
        world
    }

    /// Leader `a` with peers `b` and `c` (under the kept keys `config`, if
    /// any) reconciled its slots once; then `c`'s record went away.
    fn after_c_left(config: Option<&str>) -> World {
        let mut world = World::leader("a", &["b", "c"]);
        if let Some(config) = config {
            world.other(config);
        }
        world.step();
        world.gone("c");
        world
    }

    fn member(&mut self, n: &str, role: Role) {
        let member = running_member(&name(n), role, 5000, 1);
        self.put(&format!("members/{n}"), encode_member(&member));
    }

    fn gone(&mut self, n: &str) {
        self.remove(&format!("members/{n}"));
    }

    /// Sets the kept keys (`slots`, `ignore_slots`, ...) from JSON text.
    fn other(&mut self, config: &str) {
        self.config.other = decode_config(config.as_bytes())
            .expect("a valid config")
            .other;
    }

    /// Decides, records every action as done (as the loop would), and
    /// returns the slot plan.
    fn step(&mut self) -> Option<SlotPlan> {
        let decision = self.decide();
        for action in &decision.actions {
            self.memory.record(action, &Outcome::Done, self.now);
        }
        housekeeping(&decision).slots.cloned()
    }

    /// The slots the plan wants once `duration` passed.
    fn wanted_after(&mut self, duration: Duration) -> Vec<String> {
        self.pass(duration);
        let plan = self.step().expect("the leader reconciles slots");
        wanted(&plan).into_iter().map(str::to_owned).collect()
    }

    fn pass(&mut self, duration: Duration) {
        self.now += duration;
        self.memory.lock_renewed_at = Some(self.now);
    }
}

fn wanted(plan: &SlotPlan) -> Vec<&str> {
    plan.desired.slots.keys().map(String::as_str).collect()
}

#[test]
fn leader_keeps_a_slot_per_member_and_drops_the_rest() {
    let mut world = World::leader("a", &["b", "node-C"]);
    let plan = world.step().expect("the leader reconciles slots");
    assert_eq!(
        wanted(&plan),
        vec!["b", "node_c"],
        "no slot for the leader itself"
    );
    assert!(plan.desired.drop_others);
    assert!(plan
        .desired
        .slots
        .values()
        .all(|kind| *kind == SlotKind::Physical));
}

#[test]
fn a_gone_members_slot_outlives_it_by_member_slots_ttl() {
    let mut world = World::after_c_left(Some(r#"{"member_slots_ttl": "10s"}"#));
    assert_eq!(
        world.wanted_after(Duration::from_secs(9)),
        vec!["b", "c"],
        "kept within the ttl"
    );
    world.pass(Duration::from_secs(2));
    let plan = world.step().unwrap();
    assert_eq!(wanted(&plan), vec!["b"], "dropped after the ttl");
    assert_eq!(
        plan.members_seen
            .as_ref()
            .map(|seen| seen.keys().cloned().collect::<Vec<_>>()),
        Some(vec!["b".to_owned()])
    );
}

#[test]
fn member_slots_ttl_zero_drops_at_once_and_the_default_is_30_minutes() {
    let mut world = World::after_c_left(Some(r#"{"member_slots_ttl": 0}"#));
    assert_eq!(wanted(&world.step().unwrap()), vec!["b"]);

    let mut world = World::after_c_left(None);
    assert_eq!(
        world.wanted_after(Duration::from_secs(29 * 60)),
        vec!["b", "c"]
    );
    assert_eq!(world.wanted_after(Duration::from_secs(61)), vec!["b"]);
}

#[test]
fn a_new_leader_keeps_the_slots_its_predecessor_retained() {
    let mut world = World::leader("a", &["b"]);
    world.other(r#"{"member_slots_ttl": "10s"}"#);
    world.put(
        "status",
        Record::Status(LeaderStatus {
            optime: Lsn(5000),
            slots: BTreeMap::new(),
            retain_slots: vec!["b".to_owned(), "old".to_owned()],
        })
        .encode(),
    );
    assert_eq!(wanted(&world.step().unwrap()), vec!["b", "old"]);
    assert_eq!(world.wanted_after(Duration::from_secs(11)), vec!["b"]);
}

#[test]
fn permanent_slots_are_created_and_ignored_ones_never_touched() {
    let mut world = World::leader("a", &["b"]);
    world.other(
        r#"{
        "slots": {
            "cdc": {"type": "logical", "database": "app", "plugin": "pgoutput"},
            "archive": {"type": "physical"},
            "Bad-Name": {"type": "physical"}
        },
        "ignore_slots": [{"name": "debezium"}, {"type": "logical", "plugin": "wal2json"}]
    }"#,
    );
    let plan = world.step().unwrap();
    assert_eq!(wanted(&plan), vec!["archive", "b", "cdc"]);
    assert_eq!(
        plan.desired.slots["cdc"],
        SlotKind::Logical {
            database: "app".into(),
            plugin: "pgoutput".into()
        }
    );
    let logical = |plugin: &str| SlotKind::Logical {
        database: "app".into(),
        plugin: plugin.into(),
    };
    assert!(plan.desired.ignored("debezium", &logical("x")));
    assert!(plan.desired.ignored("w", &logical("wal2json")));
    assert!(!plan.desired.ignored("w", &SlotKind::Physical));
    assert_eq!(plan.config_errors.len(), 1, "{:?}", plan.config_errors);
    assert!(plan.config_errors[0].contains("Bad-Name"));
}

#[test]
fn use_slots_off_manages_no_slots() {
    let mut world = World::leader("a", &["b"]);
    world.config.postgresql.use_slots = false;
    assert_eq!(world.step(), None);
}

#[test]
fn a_replica_keeps_copies_of_the_leaders_physical_slots_at_their_positions() {
    let mut world = World::leader("a", &["b", "c"]);
    world.seen_by("b");
    world.local.role = LocalRole::Replica {
        upstream: Some(name("a")),
    };
    world.local.receiving = true;
    world.memory.ran_as_primary = false;
    world.memory.lock_renewed_at = None;
    world.other(
        r#"{
        "slots": {
            "cdc": {"type": "logical", "database": "app", "plugin": "pgoutput"},
            "archive": {"type": "physical"}
        }
    }"#,
    );
    assert_eq!(
        world.step(),
        None,
        "no copies before the leader reported positions"
    );
    world.put(
        "status",
        Record::Status(LeaderStatus {
            optime: Lsn(9000),
            slots: [
                ("archive".to_owned(), Lsn(7000)),
                ("cdc".to_owned(), Lsn(6000)),
                ("b".to_owned(), Lsn(8000)),
                ("c".to_owned(), Lsn(8500)),
            ]
            .into(),
            retain_slots: vec!["b".to_owned(), "c".to_owned()],
        })
        .encode(),
    );
    let plan = world.step().expect("a replica reconciles copies");
    assert_eq!(
        wanted(&plan),
        vec!["a", "archive", "c"],
        "not its own, no logical copy (PostgreSQL 17 synchronizes those)"
    );
    assert_eq!(
        plan.desired.advance_to,
        [
            ("a".to_owned(), Lsn(9000)),
            ("archive".to_owned(), Lsn(7000)),
            ("c".to_owned(), Lsn(8500)),
        ]
        .into()
    );
    assert!(plan.members_seen.is_none());
}
