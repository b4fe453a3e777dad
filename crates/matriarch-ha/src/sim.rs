//! A deterministic simulation of a whole cluster: the real [`Engine`](crate::Engine) loop
//! and [`decide`](crate::decide) on every node, over [`MemoryDcs`] and the
//! in-memory PostgreSQL of [`matriarch_postgres::memory`] (held to the same
//! conformance suite as the real controller), on tokio's virtual clock, with
//! faults chosen by a seed. The same seed replays the same run.
//!
//! The world is not kind: every node's clock drifts (±2 %) and is skewed;
//! WAL ships with random lag and stalls; synchronous commits wait for the
//! standbys `synchronous_standby_names` names (`*`: any standby; `FIRST n`,
//! `ANY n`); a slowed DCS request lands even after its caller timed out;
//! the store may keep the lock for less than the ttl
//! ([`MemoryDcs::set_max_ttl`]); an operator changes ttl, loop_wait,
//! retry_timeout, the synchronous count and strictness during the run and
//! malformed values land in the config, sync, failover and member keys;
//! PostgreSQL is restarted through the REST API; a disarmed write fence (a
//! fresh one after a crash) does not stop a primary from writing.
//!
//! Invariants, checked whenever they can change:
//! - at most one node acknowledges writes at any instant: a running primary
//!   whose write fence has not expired and, when it names synchronous
//!   standbys, enough of them stream from it to acknowledge a commit;
//! - a node never promotes (or starts as primary) without holding the lock;
//! - in synchronous mode, no acknowledged write is missing from a newly
//!   promoted primary, and in strict synchronous mode no commit is
//!   acknowledged before a standby holds it (a failover would lose it);
//! - once faults stop, a primary exists within 2 × ttl + loop_wait, and
//!   every live node follows it within a further ttl;
//! - in failsafe mode (`failsafe_mode` on), with the DCS cut off from every
//!   node, the primary keeps running when it reaches every member and stops
//!   writing within ttl when one does not answer ([`Scenario::FailsafeOutage`]).

mod client;
mod cluster;
mod dcs;
mod faults;
mod invariants;
pub mod plants;
mod postgres;
mod time;
mod world;

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use matriarch_dcs::{Dcs, MemoryDcs};
use matriarch_model::{ClusterConfig, KeyLayout, SynchronousMode, SystemId};
use matriarch_postgres::memory::TimelineReport;
use matriarch_postgres::MemoryPostgresCluster;
use tokio::time::Instant;

use crate::Decider;
use cluster::{member_name, Cluster, NodeHandle, PauseSwitch};
pub use cluster::{member_settings, running_member};
use dcs::SimDcs;
use faults::{heal_everything, inject_fault, Heal};
use invariants::{check_followers, check_primary, failsafe_outage};
use matriarch_dcs::TokioClock;
use plants::DecidePlant;
use postgres::SimPostgres;
use time::{NodeClock, Rng, ServersClock};
use world::{lock, SimConditions, World};

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

/// What a run found.
#[derive(Clone, Debug, Default)]
pub struct SimReport {
    /// The seed.
    pub seed: u64,
    /// Broken invariants, in the order found (empty: the run is correct).
    pub violations: Vec<String>,
    /// Writes acknowledged to the client.
    pub acknowledged_writes: u64,
    /// Acknowledged writes missing from a new primary (asynchronous mode
    /// tolerates these within maximum_lag_on_failover; synchronous mode never).
    pub lost_writes: u64,
    /// Promotions.
    pub promotions: u64,
    /// The last events before the end, for a failure report.
    pub trace: Vec<String>,
}

impl fmt::Display for SimReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "seed {}: {} violation(s), {} acknowledged writes, {} lost, {} promotions",
            self.seed,
            self.violations.len(),
            self.acknowledged_writes,
            self.lost_writes,
            self.promotions
        )?;
        for violation in &self.violations {
            writeln!(f, "  VIOLATION: {violation}")?;
        }
        if !self.violations.is_empty() {
            writeln!(f, "  last events:")?;
            for line in &self.trace {
                writeln!(f, "    {line}")?;
            }
            writeln!(f, "  replay: cargo xtask sim --seed {}", self.seed)?;
        }
        Ok(())
    }
}

/// How long a cluster has to form before faults begin.
const CLUSTER_FORMS: Duration = Duration::from_secs(8);

/// The system identifier every simulated cluster bootstraps.
const SYSTEM_ID: SystemId = SystemId(7_300_000_000_000_000_001);

/// Runs one simulation to the end and reports what it found.
pub fn run(config: &SimConfig) -> SimReport {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            return SimReport {
                seed: config.seed,
                violations: vec![format!("could not build a runtime: {error}")],
                ..SimReport::default()
            }
        }
    };
    // The engines run on this thread (a current-thread runtime).
    plants::set_planted(&config.decide_plants);
    let report = runtime.block_on(simulate(config));
    plants::set_planted(&[]);
    report
}

/// The cluster configuration a run starts with.
fn cluster_config(sim: &SimConfig) -> ClusterConfig {
    ClusterConfig {
        synchronous_mode: if sim.synchronous && sim.quorum {
            SynchronousMode::Quorum
        } else if sim.synchronous {
            SynchronousMode::On
        } else {
            SynchronousMode::Off
        },
        failsafe_mode: sim.failsafe,
        synchronous_node_count: sim.sync_count.max(1),
        synchronous_mode_strict: sim.synchronous && sim.strict,
        ..ClusterConfig::default()
    }
}

/// The world and the nodes of a run, before any agent starts.
fn build(sim: &SimConfig, rng: &mut Rng, start: Instant) -> Cluster {
    let config = cluster_config(sim);
    let clock = Arc::new(TokioClock::starting_at(start));
    let layout = KeyLayout::new("service", "sim").unwrap_or_else(|_| unreachable!());
    let store = MemoryDcs::with_clock(layout, clock);
    store.set_max_ttl(sim.max_ttl);
    let faults_active = Arc::new(AtomicBool::new(false));
    let pg = MemoryPostgresCluster::with(
        SYSTEM_ID,
        Box::new(ServersClock(TokioClock::starting_at(start))),
        Box::new(SimConditions {
            rng: Rng::new(sim.seed.rotate_left(17)),
            faults_active: Arc::clone(&faults_active),
        }),
    );
    if sim.model_bugs.contains(&ModelBug::TimelineFromRestartpoint) {
        pg.set_timeline_report(TimelineReport::ControlFile);
    }
    let nodes = (0..sim.nodes)
        .map(|i| {
            pg.member(member_name(i));
            world::Node {
                name: member_name(i),
                fence_until: None,
                agent_up: false,
                failsafe: None,
                strict_read_since: None,
                drift_ppm: if sim.drift {
                    rng.below(2 * MAX_DRIFT_PPM as u64 + 1) as i64 - MAX_DRIFT_PPM
                } else {
                    0
                },
            }
        })
        .collect();
    let world = Arc::new(Mutex::new(World {
        nodes,
        pg,
        acknowledged: Vec::new(),
        acknowledged_total: 0,
        violations: Vec::new(),
        lost_writes: 0,
        promotions: 0,
        trace: Vec::new(),
        start,
        synchronous: sim.synchronous,
        model_bugs: sim.model_bugs.clone(),
        faults_active,
        // A bootstrapped primary starts waiting for a standby in its first
        // loop as leader; the cluster has formed when faults begin.
        strict_since: (sim.synchronous && sim.strict).then_some(start + CLUSTER_FORMS),
        loop_wait_bound: config.loop_wait + config.retry_timeout,
    }));
    let decider: Option<Decider> = sim
        .decider
        .or_else(|| (!sim.decide_plants.is_empty()).then_some(plants::planted_decide as Decider));
    Cluster {
        world: Arc::clone(&world),
        store: store.clone(),
        config: config.clone(),
        max_ttl_seen: config.ttl,
        dynamic: sim.dynamic,
        model_bugs: sim.model_bugs.clone(),
        decider,
        nodes: (0..sim.nodes)
            .map(|i| NodeHandle {
                clock: Arc::new(NodeClock {
                    start,
                    offset: if sim.drift {
                        rng.millis(0, 3_600_000)
                    } else {
                        Duration::ZERO
                    },
                    ppm: lock(&world).nodes[i].drift_ppm,
                }),
                wall_skew_ms: if sim.drift {
                    rng.below(4001) as i64 - 2000
                } else {
                    0
                },
                restart: None,
                task: None,
                reporter: None,
                pause: Arc::new(PauseSwitch::default()),
                dcs: SimDcs {
                    inner: store.connect(),
                    delay: Arc::new(Mutex::new(Duration::ZERO)),
                    world: Some(Arc::clone(&world)),
                    node: i,
                    hide_lock_lifetime: sim.model_bugs.contains(&ModelBug::HideLockLifetime),
                },
                postgres: SimPostgres {
                    index: i,
                    world: Arc::clone(&world),
                    oracle: store.connect(),
                },
            })
            .collect(),
    }
}

async fn simulate(sim: &SimConfig) -> SimReport {
    let start = Instant::now();
    let mut rng = Rng::new(sim.seed);
    let mut cluster = build(sim, &mut rng, start);
    let world = Arc::clone(&cluster.world);
    for index in 0..sim.nodes {
        cluster.spawn_agent(index);
        tokio::time::sleep(rng.millis(0, 300)).await;
    }
    let traffic = tokio::spawn(client::traffic(Arc::clone(&world)));

    // Let the cluster form, then inject faults.
    tokio::time::sleep(CLUSTER_FORMS).await;
    if let Scenario::FailsafeOutage { reach_all } = sim.scenario {
        failsafe_outage(&mut cluster, reach_all).await;
    }
    let faults_end = if sim.scenario == Scenario::Mixed {
        Instant::now() + sim.fault_duration
    } else {
        Instant::now()
    };
    let mut healers: Vec<(Instant, Heal)> = Vec::new();
    lock(&world)
        .faults_active
        .store(sim.scenario == Scenario::Mixed, Ordering::Relaxed);
    while Instant::now() < faults_end {
        tokio::time::sleep(rng.millis(200, 2500)).await;
        let now = Instant::now();
        let (due, later): (Vec<_>, Vec<_>) = healers.drain(..).partition(|(at, _)| *at <= now);
        healers = later;
        for (_, heal) in due {
            heal.apply(&mut cluster).await;
        }
        inject_fault(&mut cluster, &mut rng, &mut healers).await;
    }
    for (_, heal) in healers.drain(..) {
        heal.apply(&mut cluster).await;
    }
    heal_everything(&mut cluster).await;
    {
        let mut world = lock(&world);
        world.faults_active.store(false, Ordering::Relaxed);
        world.pg.servers().clear_stalls();
        world.log("faults stopped".to_owned());
    }

    // Liveness: a primary within 2 × ttl + loop_wait, followers within a further ttl
    // and the three loops a diverged replica needs (stop, rewind, start).
    // Under the longest ttl and loop in force during the run: a lock taken
    // under it may still live, and an agent may still wait that long.
    let ttl = cluster.max_ttl_seen;
    tokio::time::sleep(ttl * 2 + cluster.config.loop_wait).await;
    let leader = check_primary(&cluster).await;
    let longest_loop = lock(&world).loop_wait_bound;
    tokio::time::sleep(ttl + longest_loop * 3).await;
    if let Some(leader) = leader {
        // A switchover requested before the faults stopped may have handed
        // over meanwhile: the followers follow the lock holder if it writes.
        let holder = match cluster.store.read_view().await {
            Ok(view) => view.leader_name().cloned(),
            Err(_) => None,
        };
        let leader = {
            let world = lock(&world);
            holder
                .and_then(|h| world.index(&h))
                .filter(|&i| world.writable(i, Instant::now()))
                .unwrap_or(leader)
        };
        check_followers(&cluster, leader);
    }

    traffic.abort();
    for index in 0..sim.nodes {
        cluster.crash_agent(index);
    }
    let world = lock(&world);
    SimReport {
        seed: sim.seed,
        violations: world.violations.clone(),
        acknowledged_writes: world.acknowledged_total,
        lost_writes: world.lost_writes,
        promotions: world.promotions,
        trace: world.trace.clone(),
    }
}
