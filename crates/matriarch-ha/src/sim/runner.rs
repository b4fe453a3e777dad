//! One run: the world and the nodes built from a [`SimConfig`], the agents
//! started, faults injected and healed, and the invariants checked.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use matriarch_dcs::{Dcs, MemoryDcs, TokioClock};
use matriarch_model::{ClusterConfig, KeyLayout, SynchronousMode, SystemId};
use matriarch_postgres::memory::TimelineReport;
use matriarch_postgres::MemoryPostgresCluster;
use tokio::time::Instant;

use super::client;
use super::cluster::{member_name, Cluster, NodeHandle, PauseSwitch};
use super::config::{Scenario, SimConfig, MAX_DRIFT_PPM};
use super::dcs::SimDcs;
use super::faults::{heal_everything, inject_fault, Heal};
use super::invariants::{check_followers, check_primary, failsafe_outage};
use super::plants::{self, ModelBug};
use super::postgres::SimPostgres;
use super::time::{NodeClock, Rng, ServersClock};
use super::world::{self, lock, SimConditions, World};
use crate::Decider;

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
