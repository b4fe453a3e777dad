//! Defects of the code before issue 14's fixes, kept so the simulation can
//! plant them back and show that its invariants find them: in the world
//! ([`ModelBug`]) or in the decision ([`DecidePlant`], applied around the
//! real [`decide`]). Each reproduces the old code's behaviour, described on
//! its variant. [`Regression`] lists them all, for `cargo xtask sim --pre-fix`.

use std::cell::RefCell;

use crate::{decide, Action, DcsObservation, Decision, DemoteMode, Inputs, Memory};
use matriarch_model::Lsn;

/// Defects planted in the simulated world rather than in the decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelBug {
    /// The DCS client does not report the store's lock lifetime: deadlines
    /// count from the configured ttl, not the lock's real life.
    HideLockLifetime,
    /// A replica's observed timeline is its last restartpoint's (pg_control)
    /// rather than the timeline it replays, as the controller read it
    /// ([`TimelineReport::ControlFile`]).
    TimelineFromRestartpoint,
    /// A REST restart bypasses the engine: PostgreSQL is stopped and started
    /// in the role it ran in, whether or not this node holds the lock.
    RestartBypassesEngine,
    /// The postmaster outlives the agent's processes: before the fence
    /// process started it under PR_SET_PDEATHSIG, killing the agent (its
    /// process group) left a primary running with no fence at all.
    PostmasterOutlivesAgent,
}

/// Defects planted in the decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecidePlant {
    /// Before: the sync key shrank (or took new standbys) as soon as
    /// PostgreSQL named the new standbys, without waiting for them to flush
    /// past the change. Planted by pretending they did: the position the
    /// change was made at reads as 0.
    ShrinkSyncKeyEarly,
    /// Before: a change of the synchronous count went to PostgreSQL and the
    /// key in the same order both ways. Planted by lowering PostgreSQL's
    /// count before the key's and raising the key's before PostgreSQL's.
    CountChangeInWrongOrder,
    /// Before: strict mode without an eligible standby set an empty
    /// `synchronous_standby_names` (asynchronous) instead of `*`. Planted by
    /// clearing `any_standby` in every change of the setting.
    StrictWithEmptyNames,
    /// Before: a replica raced for a free lock whatever the former leader
    /// answered (peers' reports had no `running_primary`). Planted by
    /// clearing it in every report the decision sees.
    RaceWhileFormerLeaderRuns,
    /// Before: a leader stepping down for a switchover stopped gracefully
    /// and forgot it; if no candidate took the lock it started as a standby
    /// and raced, promoting onto a new timeline. Planted by turning the
    /// switchover stop into a plain graceful one.
    SwitchoverForgotten,
}

/// One defect the fixes of issue 14 removed, planted one way or the other.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Regression {
    /// In the world.
    World(ModelBug),
    /// In the decision.
    Decide(DecidePlant),
}

impl Regression {
    /// Every regression of issue 14 the simulation can plant.
    pub const ALL: [Regression; 9] = [
        Regression::World(ModelBug::HideLockLifetime),
        Regression::World(ModelBug::TimelineFromRestartpoint),
        Regression::World(ModelBug::RestartBypassesEngine),
        Regression::World(ModelBug::PostmasterOutlivesAgent),
        Regression::Decide(DecidePlant::ShrinkSyncKeyEarly),
        Regression::Decide(DecidePlant::CountChangeInWrongOrder),
        Regression::Decide(DecidePlant::StrictWithEmptyNames),
        Regression::Decide(DecidePlant::RaceWhileFormerLeaderRuns),
        Regression::Decide(DecidePlant::SwitchoverForgotten),
    ];

    /// Its name, for a report.
    pub fn name(self) -> String {
        match self {
            Regression::World(bug) => format!("{bug:?}"),
            Regression::Decide(plant) => format!("{plant:?}"),
        }
    }
}

thread_local! {
    /// The decision plants of the run on this thread ([`super::run`] sets
    /// them: a [`crate::Decider`] is a plain function).
    static PLANTED: RefCell<Vec<DecidePlant>> = const { RefCell::new(Vec::new()) };
}

/// Sets the decision plants of runs on this thread.
pub(super) fn set_planted(plants: &[DecidePlant]) {
    PLANTED.with(|planted| *planted.borrow_mut() = plants.to_vec());
}

/// [`decide`] with this thread's [`DecidePlant`]s applied around it.
pub(super) fn planted_decide(inputs: &Inputs<'_>) -> Decision {
    let plants = PLANTED.with(|planted| planted.borrow().clone());
    let has = |plant| plants.contains(&plant);
    let mut memory = inputs.memory.clone();
    if has(DecidePlant::ShrinkSyncKeyEarly) {
        memory = shrink_sync_key_early(&memory);
    }
    let mut peers = inputs.peers.clone();
    if has(DecidePlant::RaceWhileFormerLeaderRuns) {
        for report in peers.values_mut() {
            report.running_primary = false;
        }
    }
    let inputs = Inputs {
        memory: &memory,
        peers: &peers,
        ..inputs.clone()
    };
    let mut decision = decide(&inputs);
    if has(DecidePlant::CountChangeInWrongOrder) {
        count_change_in_wrong_order(&inputs, &mut decision);
    }
    if has(DecidePlant::StrictWithEmptyNames) {
        for action in &mut decision.actions {
            if let Action::SetSyncStandbys { any_standby, .. } = action {
                *any_standby = false;
            }
        }
    }
    if has(DecidePlant::SwitchoverForgotten) {
        for action in &mut decision.actions {
            if *action == Action::Demote(DemoteMode::Switchover) {
                *action = Action::Demote(DemoteMode::Graceful);
            }
        }
    }
    decision
}

fn shrink_sync_key_early(memory: &Memory) -> Memory {
    Memory {
        sync_standbys_since: memory.sync_standbys_since.map(|_| Lsn(0)),
        ..memory.clone()
    }
}

fn count_change_in_wrong_order(inputs: &Inputs<'_>, decision: &mut Decision) {
    let DcsObservation::View(view) = inputs.dcs else {
        return;
    };
    let Some(Ok(sync)) = &view.sync else {
        return;
    };
    let key_quorum = sync.value.quorum.unwrap_or(1);
    for action in &mut decision.actions {
        match action {
            Action::WriteSyncState { count, .. } if *count < key_quorum => {
                *action = Action::SetSyncStandbys {
                    standbys: inputs.local.sync_standbys.clone(),
                    count: *count,
                    at: None,
                    any_standby: false,
                };
            }
            Action::SetSyncStandbys {
                standbys, count, ..
            } if *count > key_quorum && *standbys == sync.value.sync_standbys => {
                *action = Action::WriteSyncState {
                    standbys: standbys.clone(),
                    count: *count,
                    expected: Some(sync.version),
                };
            }
            _ => {}
        }
    }
}
