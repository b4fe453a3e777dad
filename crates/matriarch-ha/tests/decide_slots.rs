//! Replication slots in `decide`: the leader keeps a member's slot while
//! the member is there and for `member_slots_ttl` after, creates the
//! permanent slots, never touches ignored ones; a replica keeps copies of
//! the leader's physical slots at the `status` key's positions.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::{TimeZone, Utc};
use matriarch_ha::sim::running_member;
use matriarch_ha::*;
use matriarch_model::*;

mod support;

const SYSID: SystemId = SystemId(7_000_000_000_000_000_001);

fn name(n: &str) -> MemberName {
    MemberName::new(n).unwrap()
}

struct World {
    me: MemberName,
    config: ClusterConfig,
    entries: Vec<RawEntry>,
    local: LocalPostgres,
    memory: Memory,
    now: Duration,
}

impl World {
    /// `me` runs the primary and holds the lock; `members` are its peers.
    fn leader(me: &str, members: &[&str]) -> World {
        let mut world = World {
            me: name(me),
            config: ClusterConfig::default(),
            entries: Vec::new(),
            local: LocalPostgres {
                role: LocalRole::Primary,
                system_id: Some(SYSID),
                timeline: Some(Timeline(1)),
                wal_position: Some(Lsn(5000)),
                streaming_standbys: BTreeSet::new(),
                sync_standbys: BTreeSet::new(),
                sync_count: 0,
                sync_any_standby: false,
                receiving: false,
                standby_flush: BTreeMap::new(),
            },
            memory: Memory::default(),
            now: Duration::from_secs(1000),
        };
        world.memory.ran_as_primary = true;
        world.memory.lock_renewed_at = Some(world.now);
        world.put("initialize", encode_initialize(&Initialize::Done(SYSID)));
        world.put("leader", me.as_bytes().to_vec());
        world.member(me, Role::Primary);
        for m in members {
            world.member(m, Role::Replica);
        }
        world
    }

    fn put(&mut self, key: &str, value: Vec<u8>) {
        support::put_entry(&mut self.entries, key, value);
    }

    fn member(&mut self, n: &str, role: Role) {
        let member = running_member(&name(n), role, 5000, 1);
        self.put(&format!("members/{n}"), encode_member(&member));
    }

    fn gone(&mut self, n: &str) {
        let key = format!("members/{n}");
        self.entries.retain(|e| e.key != key);
    }

    /// Sets the kept keys (`slots`, `ignore_slots`, ...) from JSON text.
    fn other(&mut self, config: &str) {
        self.config.other = decode_config(config.as_bytes())
            .expect("a valid config")
            .other;
    }

    fn decide(&self) -> Decision {
        let dcs = DcsObservation::View(Box::new(ClusterView::decode(1, self.entries.clone())));
        let node = NodeSettings {
            name: self.me.clone(),
            tags: Tags::default(),
            conn_url: format!("postgres://{}:5432/postgres", self.me),
            api_url: format!("http://{}:8008/patroni", self.me),
        };
        decide(&Inputs {
            node: &node,
            config: &self.config,
            dcs: &dcs,
            local: &self.local,
            peers: &BTreeMap::new(),
            memory: &self.memory,
            now: self.now,
            wall_clock: Utc.with_ymd_and_hms(2026, 11, 28, 12, 0, 0).unwrap(),
            failsafe: &FailsafeInputs::default(),
        })
    }

    /// Decides, records every action as done (as the loop would), and
    /// returns the slot plan.
    fn step(&mut self) -> Option<SlotPlan> {
        let decision = self.decide();
        for action in &decision.actions {
            self.memory.record(action, &Outcome::Done, self.now);
        }
        slot_plan(&decision)
    }

    fn pass(&mut self, duration: Duration) {
        self.now += duration;
        self.memory.lock_renewed_at = Some(self.now);
    }
}

fn slot_plan(decision: &Decision) -> Option<SlotPlan> {
    decision.actions.iter().find_map(|action| match action {
        Action::ReconcileSlots(plan) => Some((**plan).clone()),
        _ => None,
    })
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
    let mut world = World::leader("a", &["b", "c"]);
    world.other(r#"{"member_slots_ttl": "10s"}"#);
    world.step();
    world.gone("c");
    world.pass(Duration::from_secs(9));
    let plan = world.step().unwrap();
    assert_eq!(wanted(&plan), vec!["b", "c"], "kept within the ttl");
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
    let mut world = World::leader("a", &["b", "c"]);
    world.other(r#"{"member_slots_ttl": 0}"#);
    world.step();
    world.gone("c");
    assert_eq!(wanted(&world.step().unwrap()), vec!["b"]);

    let mut world = World::leader("a", &["b", "c"]);
    world.step();
    world.gone("c");
    world.pass(Duration::from_secs(29 * 60));
    assert_eq!(wanted(&world.step().unwrap()), vec!["b", "c"]);
    world.pass(Duration::from_secs(61));
    assert_eq!(wanted(&world.step().unwrap()), vec!["b"]);
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
    world.pass(Duration::from_secs(11));
    assert_eq!(wanted(&world.step().unwrap()), vec!["b"]);
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
    assert!(plan
        .desired
        .ignored("debezium", "logical", Some("app"), Some("x")));
    assert!(plan
        .desired
        .ignored("w", "logical", Some("app"), Some("wal2json")));
    assert!(!plan.desired.ignored("w", "physical", None, None));
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
    world.me = name("b");
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
