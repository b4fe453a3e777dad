//! One node's inputs to `decide`, owned and changed at will by the decision
//! tests (tests/decide.rs, decide_slots.rs, primary_start_timeout.rs), each
//! of which adds the builders its situations need.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use matriarch_ha::sim::member_settings;
use matriarch_ha::{
    decide, Action, DcsObservation, Decision, FailsafeInputs, Inputs, LocalPostgres, LocalRole,
    Memory, NodeSettings, PeerReport, SlotPlan,
};
use matriarch_model::{
    encode_initialize, ClusterConfig, ClusterView, Initialize, Lsn, Member, MemberName, RawEntry,
    SystemId, Timeline,
};

/// The system identifier of every test cluster.
pub(crate) const SYSID: SystemId = SystemId(7_000_000_000_000_000_001);

/// A cluster as one node sees it; tests change what they need and call
/// [`Scene::decide`].
pub(crate) struct Scene {
    pub(crate) node: NodeSettings,
    pub(crate) config: ClusterConfig,
    /// The DCS keys, below the scope.
    pub(crate) entries: Vec<RawEntry>,
    /// The DCS answers (otherwise `decide` sees it unreachable).
    pub(crate) reachable: bool,
    pub(crate) local: LocalPostgres,
    pub(crate) peers: BTreeMap<MemberName, PeerReport>,
    pub(crate) memory: Memory,
    pub(crate) now: Duration,
    pub(crate) wall: DateTime<Utc>,
    pub(crate) failsafe: FailsafeInputs,
}

impl Scene {
    /// Member `me`, with no data, in a cluster initialized as [`SYSID`], at
    /// `now` (monotonic).
    pub(crate) fn at(me: &str, now: Duration) -> Scene {
        let mut scene = Scene {
            node: node(me),
            config: ClusterConfig::default(),
            entries: Vec::new(),
            reachable: true,
            local: LocalPostgres::no_data(),
            peers: BTreeMap::new(),
            memory: Memory::default(),
            now,
            wall: Utc.with_ymd_and_hms(2026, 11, 28, 12, 0, 0).unwrap(),
            failsafe: FailsafeInputs::default(),
        };
        scene.put("initialize", encode_initialize(&Initialize::Done(SYSID)));
        scene
    }

    /// This node runs the primary (timeline 1, at `position`) and renewed
    /// the lock just now; the caller writes the `leader` key.
    pub(crate) fn running_primary_holding_the_lock(&mut self, position: u64) {
        self.local = LocalPostgres {
            role: LocalRole::Primary,
            system_id: Some(SYSID),
            timeline: Some(Timeline(1)),
            wal_position: Some(Lsn(position)),
            ..LocalPostgres::no_data()
        };
        self.memory.ran_as_primary = true;
        self.memory.lock_renewed_at = Some(self.now);
    }

    /// This node runs a replica at `position` on `timeline`, receiving WAL
    /// from `upstream` (a member; `None`: no member).
    pub(crate) fn running_replica(
        &mut self,
        upstream: Option<&str>,
        position: u64,
        timeline: u32,
    ) -> &mut Self {
        self.local = LocalPostgres {
            role: LocalRole::Replica {
                upstream: upstream.map(|n| MemberName::new(n).unwrap()),
            },
            system_id: Some(SYSID),
            timeline: Some(Timeline(timeline)),
            wal_position: Some(Lsn(position)),
            receiving: true,
            ..LocalPostgres::no_data()
        };
        self
    }

    /// The same cluster seen by member `me` (its name and URLs).
    pub(crate) fn seen_by(&mut self, me: &str) {
        self.node = node(me);
    }

    /// Puts `key` (below the scope), replacing any value it had.
    pub(crate) fn put(&mut self, key: &str, value: Vec<u8>) {
        super::put_entry(&mut self.entries, key, value);
    }

    pub(crate) fn remove(&mut self, key: &str) {
        self.entries.retain(|e| e.key != key);
    }

    pub(crate) fn decide(&self) -> Decision {
        let dcs = if self.reachable {
            DcsObservation::View(Box::new(ClusterView::decode(1, self.entries.clone())))
        } else {
            DcsObservation::Unreachable
        };
        decide(&Inputs {
            node: &self.node,
            config: &self.config,
            dcs: &dcs,
            local: &self.local,
            peers: &self.peers,
            memory: &self.memory,
            now: self.now,
            wall_clock: self.wall,
            failsafe: &self.failsafe,
        })
    }
}

/// Member `me`'s settings: `postgres://me:5432/postgres`, `http://me:8008/patroni`.
fn node(me: &str) -> NodeSettings {
    member_settings(&MemberName::new(me).unwrap(), ClusterConfig::default()).node
}

/// The actions other than publishing the member record and reconciling
/// slots (housekeeping every loop; tests/decide_slots.rs covers it).
pub(crate) fn acts(decision: &Decision) -> Vec<Action> {
    decision
        .actions
        .iter()
        .filter(|a| !matches!(a, Action::PublishMember(_) | Action::ReconcileSlots(_)))
        .cloned()
        .collect()
}

/// Whether the decision takes an action that `matching` accepts.
pub(crate) fn takes(decision: &Decision, matching: impl Fn(&Action) -> bool) -> bool {
    decision.actions.iter().any(matching)
}

/// What a decision's housekeeping carries: the member record it publishes
/// (every loop does) and the slot plan it reconciles (when it does).
pub(crate) struct Housekeeping<'a> {
    pub(crate) member: Option<&'a Member>,
    pub(crate) slots: Option<&'a SlotPlan>,
}

/// The decision's housekeeping actions (those [`acts`] leaves out).
pub(crate) fn housekeeping(decision: &Decision) -> Housekeeping<'_> {
    let mut found = Housekeeping {
        member: None,
        slots: None,
    };
    for action in &decision.actions {
        match action {
            Action::PublishMember(member) => found.member = Some(member),
            Action::ReconcileSlots(plan) => found.slots = Some(plan),
            _ => {}
        }
    }
    found
}
