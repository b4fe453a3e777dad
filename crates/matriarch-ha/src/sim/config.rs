//! What to simulate: a run's [`SimConfig`] and its [`Scenario`].

use std::time::Duration;

use super::plants::{DecidePlant, ModelBug};
use super::time::Rng;
use crate::Decider;

/// What to simulate.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// The seed every random choice comes from.
    pub seed: u64,
    /// How many nodes (3 or 5).
    pub nodes: usize,
    /// Synchronous replication (`synchronous_mode: on`).
    pub synchronous: bool,
    /// With `synchronous`: `synchronous_mode: quorum` (ANY n over every
    /// eligible standby; a commit is acknowledged by any n of them).
    pub quorum: bool,
    /// How long faults are injected, in virtual time.
    pub fault_duration: Duration,
    /// A replacement decision function (to prove that the invariants catch a broken one).
    pub decider: Option<Decider>,
    /// `failsafe_mode` on: a primary cut off from the DCS keeps leading while
    /// every member acknowledges its heartbeats.
    pub failsafe: bool,
    /// What happens after the cluster formed.
    pub scenario: Scenario,
    /// With `synchronous`: `synchronous_node_count` (1..n-1).
    pub sync_count: u32,
    /// With `synchronous`: `synchronous_mode_strict`.
    pub strict: bool,
    /// The store keeps a lock at most this long ([`MemoryDcs::set_max_ttl`]),
    /// in some seeds below the configured ttl.
    pub max_ttl: Option<Duration>,
    /// Each node's clock runs at its own rate (parts per million off real
    /// time, within ±[`MAX_DRIFT_PPM`]) and from its own offset.
    pub drift: bool,
    /// An operator rewrites ttl, loop_wait, retry_timeout, the synchronous
    /// count and strictness in the config key during the run, and malformed
    /// values land in the config, sync, failover and member keys.
    pub dynamic: bool,
    /// Deliberately wrong parts of the world (to prove that the invariants
    /// catch them).
    pub model_bugs: Vec<ModelBug>,
    /// Defects planted in the decision ([`plants`]), applied around
    /// [`decide`](crate::decide) when no `decider` replaces it.
    pub decide_plants: Vec<DecidePlant>,
}

/// The largest clock drift a seed chooses, in parts per million: 2 %. The
/// write fence keeps a margin below the lock's lifetime of an eighth of the
/// ttl, at most `retry_timeout` (at least 1 s of at most 40 s here: at least
/// 2.5 % of the ttl), so the drift must stay below 2.5 %.
pub const MAX_DRIFT_PPM: i64 = 20_000;

/// The course of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    /// Random faults for `fault_duration`.
    Mixed,
    /// Failsafe mode on, then the DCS cut off from every node for 3 × ttl.
    /// With `reach_all`, every member stays reachable and the primary must
    /// stay writable throughout, nobody promoted; without it, one replica's
    /// agent is killed just before the cut and the primary must have stopped
    /// writing within ttl of the cut.
    FailsafeOutage {
        /// Every member answers the heartbeats.
        reach_all: bool,
    },
}

impl SimConfig {
    /// The mix the test suite runs: 3 or 5 nodes, asynchronous or
    /// synchronous, all chosen by the seed.
    pub fn mixed(seed: u64) -> Self {
        let mut rng = Rng::new(seed ^ 0x5EED_5EED);
        let nodes = if rng.chance(0.5) { 3 } else { 5 };
        let synchronous = rng.chance(0.5);
        let failsafe = rng.chance(0.5);
        let quorum = rng.chance(0.5);
        // Drawn after the original four, so that those stay what they were.
        let sync_count = 1 + rng.below(nodes as u64 - 1) as u32;
        let strict = rng.chance(0.3);
        let max_ttl = rng
            .chance(0.3)
            .then(|| Duration::from_secs(12 + rng.below(24)));
        SimConfig {
            seed,
            nodes,
            synchronous,
            fault_duration: Duration::from_secs(40),
            decider: None,
            failsafe,
            scenario: Scenario::Mixed,
            quorum,
            sync_count,
            strict,
            max_ttl,
            drift: true,
            dynamic: rng.chance(0.5),
            model_bugs: Vec::new(),
            decide_plants: Vec::new(),
        }
    }

    /// [`Scenario::FailsafeOutage`] on 3 or 5 nodes, asynchronous or
    /// synchronous as the seed chooses.
    pub fn failsafe_outage(seed: u64, reach_all: bool) -> Self {
        SimConfig {
            failsafe: true,
            scenario: Scenario::FailsafeOutage { reach_all },
            ..SimConfig::mixed(seed)
        }
    }
}
