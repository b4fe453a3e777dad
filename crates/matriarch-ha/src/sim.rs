//! A deterministic simulation of a whole cluster: the real [`Engine`] loop
//! and [`decide`](crate::decide) on every node, over [`MemoryDcs`] and a
//! simulated PostgreSQL, on tokio's virtual clock, with faults chosen by a
//! seed. The same seed replays the same run.
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
//!   promoted primary;
//! - once faults stop, a primary exists within 2 × ttl + loop_wait, and
//!   every live node follows it within a further ttl;
//! - in failsafe mode (`failsafe_mode` on), with the DCS cut off from every
//!   node, the primary keeps running when it reaches every member and stops
//!   writing within ttl when one does not answer ([`Scenario::FailsafeOutage`]).

use std::collections::BTreeSet;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{TimeZone, Utc};
use matriarch_dcs::{Clock, Dcs, DcsError, Expected, MemoryDcs, WatchOutcome};
use matriarch_model::{
    ClusterConfig, ClusterView, DcsKey, FailoverRequest, KeyLayout, Lsn, Member, MemberName,
    Record, SynchronousMode, SystemId, Tags, Timeline, Version,
};
use matriarch_postgres::{
    BootstrapSpec, Credentials, DataDirectoryState, LocalState, Operation, PgRole, Postgres,
    PostgresError, ReplicationConnection, RewindOutcome, ServerState, StandbySyncState, StartAs,
    StopMode, SyncStandbyNames, Upstream, WalPositions, WalSenderState,
};
use matriarch_router::RecordingRouter;
use tokio::time::Instant;

use crate::{
    Decider, Engine, EngineSettings, FailsafeHandle, FailsafeSender, Fence, NodeSettings,
    PeerProbe, PeerReport,
};
use matriarch_model::FailsafeHeartbeat;

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
    /// A deliberately wrong world (to prove that the invariants catch it).
    pub model_bug: Option<ModelBug>,
}

/// The largest clock drift a seed chooses, in parts per million: 2 %. The
/// write fence keeps `retry_timeout` of margin below the lock's lifetime,
/// at least 1 s of at most 40 s, so the drift must stay below 2.5 %.
pub const MAX_DRIFT_PPM: i64 = 20_000;

/// Defects planted in the simulated world rather than in the decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelBug {
    /// The DCS client does not report the store's lock lifetime: deadlines
    /// count from the configured ttl, not the lock's real life.
    HideLockLifetime,
    /// A replica's observed timeline is its last restartpoint's (pg_control)
    /// rather than the timeline it replays.
    TimelineFromRestartpoint,
    /// A REST restart bypasses the engine: PostgreSQL is stopped and started
    /// in the role it ran in, whether or not this node holds the lock.
    RestartBypassesEngine,
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
            model_bug: None,
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

/// SplitMix64: small, fast and the same everywhere.
#[derive(Clone, Debug)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn millis(&mut self, low: u64, high: u64) -> Duration {
        Duration::from_millis(low + self.below(high.saturating_sub(low) + 1))
    }

    fn chance(&mut self, p: f64) -> bool {
        ((self.next() >> 11) as f64 / (1u64 << 53) as f64) < p
    }
}

/// Monotonic time on tokio's (virtual) clock.
#[derive(Debug)]
struct TokioClock(Instant);

impl Clock for TokioClock {
    fn now(&self) -> Duration {
        self.0.elapsed()
    }
}

/// One node's monotonic clock: its own offset, running `ppm` parts per
/// million fast (positive) or slow (negative) against real time.
#[derive(Debug)]
struct NodeClock {
    start: Instant,
    offset: Duration,
    ppm: i64,
}

impl Clock for NodeClock {
    fn now(&self) -> Duration {
        let real = self.start.elapsed();
        let skew = real.as_nanos() as i128 * self.ppm as i128 / 1_000_000;
        let nanos = (real.as_nanos() as i128 + skew).max(0) as u64;
        self.offset + Duration::from_nanos(nanos)
    }
}

/// How long a span `local` long on a clock `ppm` off lasts in real time.
fn real_span(local: Duration, ppm: i64) -> Duration {
    let nanos = local.as_nanos() as i128 * 1_000_000 / (1_000_000 + ppm as i128);
    Duration::from_nanos(nanos.clamp(0, u64::MAX as i128) as u64)
}

const SYSTEM_ID: SystemId = SystemId(7_300_000_000_000_000_001);

#[derive(Clone, Debug)]
struct Data {
    timeline: u32,
    /// (timeline written on, write id): a diverged history differs in an entry.
    log: Vec<(u32, u64)>,
}

impl Data {
    fn position(&self) -> Lsn {
        Lsn(0x100_0000 + 64 * self.log.len() as u64)
    }
}

#[derive(Debug)]
struct PgNode {
    name: MemberName,
    data: Option<Data>,
    running: bool,
    primary: bool,
    crashed: bool,
    upstream: Option<usize>,
    /// The write fence's deadline; `None`: disarmed, and a disarmed fence
    /// (as a fresh one after a crash) lets a primary write without limit.
    fence_until: Option<Instant>,
    sync_names: BTreeSet<String>,
    sync_count: u32,
    /// Cut off from the other nodes (replication, cloning, REST).
    isolated: bool,
    /// The agent runs and answers its REST API.
    agent_up: bool,
    /// Where its REST API hands failsafe heartbeats.
    failsafe: Option<FailsafeHandle>,
    /// `synchronous_standby_names` is `ANY n (...)` (else `FIRST n`).
    sync_any: bool,
    /// Its clock's drift, parts per million.
    drift_ppm: i64,
    /// WAL shipping to this replica is held up until then.
    stalled_until: Option<Instant>,
    /// The timeline of the last restartpoint (a replica's pg_control).
    restartpoint_timeline: u32,
}

struct World {
    nodes: Vec<PgNode>,
    acknowledged: Vec<u64>,
    acknowledged_total: u64,
    next_write: u64,
    violations: Vec<String>,
    lost_writes: u64,
    promotions: u64,
    trace: Vec<String>,
    rng: Rng,
    start: Instant,
    synchronous: bool,
    model_bug: Option<ModelBug>,
    /// Faults are being injected (WAL shipping stalls only then).
    faults_active: bool,
}

impl World {
    /// Acknowledged writes that no node holds any more (for the trace).
    fn note_vanished(&mut self, context: &str) {
        let held: BTreeSet<u64> = self
            .nodes
            .iter()
            .filter_map(|n| n.data.as_ref())
            .flat_map(|d| d.log.iter().map(|(_, id)| *id))
            .collect();
        let gone = self
            .acknowledged
            .iter()
            .filter(|id| !held.contains(id))
            .count();
        if gone > 0 {
            self.log(format!(
                "{gone} acknowledged write(s) now held by no node after {context}"
            ));
        }
    }

    fn log(&mut self, line: String) {
        let at = self.start.elapsed().as_millis();
        self.trace.push(format!("{at:>7} ms  {line}"));
        if self.trace.len() > 200 {
            self.trace.remove(0);
        }
    }

    fn violation(&mut self, what: String) {
        let at = self.start.elapsed().as_millis();
        self.log(format!("VIOLATION {what}"));
        if self.violations.len() < 20 {
            self.violations.push(format!("at {at} ms: {what}"));
        }
    }

    /// PostgreSQL on `index` would acknowledge a commit now: a running
    /// primary, not fenced off, and its named synchronous standbys there to
    /// acknowledge.
    fn writable(&self, index: usize, now: Instant) -> bool {
        let node = &self.nodes[index];
        node.running
            && node.primary
            && node.data.is_some()
            && node.fence_until.is_none_or(|until| until > now)
            && self.acknowledgers(index, now).is_some()
    }

    /// The standbys that would acknowledge a commit on primary `index` now
    /// (empty: asynchronous), `None` when the commit would wait: PostgreSQL
    /// waits for `count` of the standbys `synchronous_standby_names` names
    /// (`*`: any standby) that stream from it and hold its WAL.
    fn acknowledgers(&self, index: usize, now: Instant) -> Option<Vec<usize>> {
        let node = &self.nodes[index];
        if node.sync_names.is_empty() {
            return Some(Vec::new());
        }
        let log = node.data.as_ref().map(|d| d.log.as_slice())?;
        let any = node.sync_names.contains("*");
        let count = node.sync_count as usize;
        let eligible: Vec<usize> = (0..self.nodes.len())
            .filter(|&j| {
                let other = &self.nodes[j];
                (any || node.sync_names.contains(other.name.as_str()))
                    && j != index
                    && other.running
                    && !other.primary
                    && other.upstream == Some(index)
                    && self.reachable(index, j)
                    && other.stalled_until.is_none_or(|until| until <= now)
                    && other.data.as_ref().is_some_and(|d| is_prefix(&d.log, log))
            })
            .collect();
        (eligible.len() >= count).then_some(eligible)
    }

    fn check_single_writer(&mut self) {
        let now = Instant::now();
        let writers: Vec<String> = (0..self.nodes.len())
            .filter(|&i| self.writable(i, now))
            .map(|i| self.nodes[i].name.to_string())
            .collect();
        if writers.len() > 1 {
            self.violation(format!("two writable primaries at once: {writers:?}"));
        }
    }

    fn index(&self, name: &MemberName) -> Option<usize> {
        self.nodes.iter().position(|n| &n.name == name)
    }

    /// The timeline `index` reports: a running replica's is the one it
    /// replays, unless the planted bug reads its last restartpoint's.
    fn reported_timeline(&self, index: usize) -> Option<u32> {
        let node = &self.nodes[index];
        let data = node.data.as_ref()?;
        if self.model_bug == Some(ModelBug::TimelineFromRestartpoint)
            && node.running
            && !node.primary
        {
            return Some(node.restartpoint_timeline);
        }
        Some(data.timeline)
    }

    /// Node `index` now takes writes (`how`: promoted, started as primary):
    /// acknowledged writes it lacks are lost, in synchronous mode a broken
    /// invariant. Returns how many; each loss counts once.
    fn settle(&mut self, index: usize, how: &str) -> u64 {
        let name = self.nodes[index].name.clone();
        let log: BTreeSet<u64> = self.nodes[index]
            .data
            .as_ref()
            .map(|d| d.log.iter().map(|(_, id)| *id).collect())
            .unwrap_or_default();
        let missing = self
            .acknowledged
            .iter()
            .filter(|id| !log.contains(id))
            .count() as u64;
        self.lost_writes += missing;
        if missing > 0 && self.synchronous {
            let first_missing = self
                .acknowledged
                .iter()
                .find(|id| !log.contains(id))
                .copied();
            let holders: Vec<String> = self
                .nodes
                .iter()
                .filter(|n| {
                    n.data
                        .as_ref()
                        .is_some_and(|d| d.log.iter().any(|(_, id)| Some(*id) == first_missing))
                })
                .map(|n| {
                    format!(
                        "{} ({} records)",
                        n.name,
                        n.data.as_ref().map_or(0, |d| d.log.len())
                    )
                })
                .collect();
            self.log(format!(
                "first missing write {first_missing:?} is on {holders:?}; {name} has {} records",
                log.len()
            ));
            self.violation(format!(
                "{name} {how} in synchronous mode without {missing} acknowledged write(s)"
            ));
        }
        // Writes already acknowledged are settled: count each loss once.
        self.acknowledged.retain(|id| log.contains(id));
        missing
    }

    fn reachable(&self, a: usize, b: usize) -> bool {
        !self.nodes[a].isolated && !self.nodes[b].isolated
    }
}

fn lock(world: &Mutex<World>) -> MutexGuard<'_, World> {
    // A panic in a sim task poisons the lock; the data is still what we report.
    world.lock().unwrap_or_else(PoisonError::into_inner)
}

fn is_prefix(short: &[(u32, u64)], long: &[(u32, u64)]) -> bool {
    short.len() <= long.len() && long[..short.len()] == *short
}

/// A simulated PostgreSQL of one node; also its write fence.
#[derive(Clone)]
struct SimPostgres {
    index: usize,
    world: Arc<Mutex<World>>,
    /// Reads the lock holder for the invariant, whatever this node can reach.
    oracle: MemoryDcs,
}

fn unexpected(operation: Operation, message: &str) -> PostgresError {
    PostgresError::Unexpected {
        operation,
        context: "simulated PostgreSQL".to_owned(),
        message: message.to_owned(),
    }
}

impl SimPostgres {
    async fn holds_lock(&self) -> bool {
        let name = lock(&self.world).nodes[self.index].name.clone();
        match self.oracle.read_view().await {
            Ok(view) => view.leader_name() == Some(&name),
            Err(_) => false,
        }
    }

    fn upstream_index(&self, upstream: &Upstream) -> Option<usize> {
        lock(&self.world).index(&upstream.member)
    }
}

#[async_trait]
impl Postgres for SimPostgres {
    async fn observe(&self) -> Result<LocalState, PostgresError> {
        let world = lock(&self.world);
        let node = &world.nodes[self.index];
        let Some(data) = &node.data else {
            return Ok(LocalState::empty());
        };
        let position = Some(data.position());
        let mut state = LocalState {
            timeline: world.reported_timeline(self.index).map(Timeline),
            system_id: Some(SYSTEM_ID),
            ..LocalState::empty()
        };
        if !node.running {
            state.server = ServerState::NotRunning(if node.crashed {
                DataDirectoryState::Crashed
            } else {
                DataDirectoryState::CleanShutdown
            });
            state.wal.flush = position;
            return Ok(state);
        }
        if node.primary {
            state.server = ServerState::Running(PgRole::Primary);
            state.wal = WalPositions {
                write: position,
                flush: position,
                received: None,
                replayed: None,
            };
            state.replication = world
                .nodes
                .iter()
                .enumerate()
                .filter(|(j, other)| {
                    other.running
                        && !other.primary
                        && other.upstream == Some(self.index)
                        && world.reachable(self.index, *j)
                        && other
                            .data
                            .as_ref()
                            .is_some_and(|d| is_prefix(&d.log, &data.log))
                })
                .map(|(_, other)| ReplicationConnection {
                    application_name: other.name.to_string(),
                    state: WalSenderState::Streaming,
                    sync_state: if node.sync_names.contains(other.name.as_str())
                        || node.sync_names.contains("*")
                    {
                        StandbySyncState::Sync
                    } else {
                        StandbySyncState::Async
                    },
                    sent: other.data.as_ref().map(Data::position),
                    write: other.data.as_ref().map(Data::position),
                    flush: other.data.as_ref().map(Data::position),
                    replay: other.data.as_ref().map(Data::position),
                })
                .collect();
        } else {
            state.server = ServerState::Running(PgRole::Replica);
            state.wal.received = position;
            state.wal.replayed = position;
            state.receiving = node.upstream.is_some_and(|u| {
                world.reachable(self.index, u)
                    && world.nodes[u].running
                    && world.nodes[u]
                        .data
                        .as_ref()
                        .is_some_and(|source| is_prefix(&data.log, &source.log))
            });
            state.upstream = node.upstream.map(|u| Upstream {
                member: world.nodes[u].name.clone(),
                host: world.nodes[u].name.to_string(),
                port: 5432,
            });
        }
        if !node.sync_names.is_empty() {
            let names = node.sync_names.iter().cloned();
            state.synchronous_standby_names = if node.sync_any {
                SyncStandbyNames::any(node.sync_count, names).ok()
            } else {
                SyncStandbyNames::first(node.sync_count, names).ok()
            };
        }
        Ok(state)
    }

    async fn bootstrap(&self, _spec: &BootstrapSpec) -> Result<SystemId, PostgresError> {
        let mut world = lock(&self.world);
        let node = &mut world.nodes[self.index];
        if node.data.is_some() {
            return Err(PostgresError::NotEmpty {
                operation: Operation::Bootstrap,
                data_dir: "sim".into(),
            });
        }
        node.data = Some(Data {
            timeline: 1,
            log: Vec::new(),
        });
        node.running = true;
        node.primary = true;
        node.crashed = false;
        let name = node.name.clone();
        world.log(format!("{name}: bootstrapped"));
        Ok(SYSTEM_ID)
    }

    async fn clone_replica(&self, source: &Upstream) -> Result<(), PostgresError> {
        let from = self
            .upstream_index(source)
            .ok_or_else(|| unexpected(Operation::CloneReplica, "unknown source"))?;
        let mut world = lock(&self.world);
        let source_data = match &world.nodes[from] {
            node if node.running && world.reachable(self.index, from) => node.data.clone(),
            _ => None,
        };
        let data =
            source_data.ok_or_else(|| unexpected(Operation::CloneReplica, "source unreachable"))?;
        let node = &mut world.nodes[self.index];
        node.data = Some(data);
        node.running = true;
        node.primary = false;
        node.crashed = false;
        node.upstream = Some(from);
        node.fence_until = None;
        node.restartpoint_timeline = node.data.as_ref().map_or(1, |d| d.timeline);
        node.sync_names.clear();
        let name = node.name.clone();
        world.log(format!("{name}: cloned from {}", source.member));
        world.note_vanished("a clone");
        Ok(())
    }

    async fn start(&self, as_role: StartAs) -> Result<(), PostgresError> {
        let upstream = match &as_role {
            StartAs::ReplicaOf(upstream) => Some(
                self.upstream_index(upstream)
                    .ok_or_else(|| unexpected(Operation::Start, "unknown upstream"))?,
            ),
            _ => None,
        };
        if as_role == StartAs::Primary && !self.holds_lock().await {
            let mut world = lock(&self.world);
            let node = &world.nodes[self.index];
            let name = node.name.clone();
            // Paused between its renewal and the start, a node may start
            // after its lock expired: the fence, armed at the renewal and
            // expired since, keeps it from taking writes. Without a fence
            // in force the start is a second writer in the making.
            if node.fence_until.is_none_or(|until| until > Instant::now()) {
                world.violation(format!(
                    "{name} started as primary without holding the lock"
                ));
            } else {
                world.log(format!(
                    "{name} started as primary after its lock expired, fenced off"
                ));
            }
        }
        let mut world = lock(&self.world);
        let node = &mut world.nodes[self.index];
        if node.data.is_none() {
            return Err(PostgresError::NotInitialized {
                operation: Operation::Start,
                data_dir: "sim".into(),
            });
        }
        if node.running {
            return Ok(());
        }
        node.running = true;
        node.crashed = false;
        node.primary = as_role == StartAs::Primary;
        node.upstream = upstream;
        let name = node.name.clone();
        world.log(format!("{name}: started as {as_role:?}"));
        if as_role == StartAs::Primary {
            world.settle(self.index, "started as primary");
        }
        world.check_single_writer();
        Ok(())
    }

    async fn stop(&self, _mode: StopMode) -> Result<(), PostgresError> {
        let mut world = lock(&self.world);
        let node = &mut world.nodes[self.index];
        node.running = false;
        let name = node.name.clone();
        world.log(format!("{name}: stopped"));
        Ok(())
    }

    async fn promote(&self) -> Result<Timeline, PostgresError> {
        let holds = self.holds_lock().await;
        let mut world = lock(&self.world);
        let name = world.nodes[self.index].name.clone();
        if !holds {
            world.violation(format!("{name} promoted without holding the lock"));
        }
        let node = &mut world.nodes[self.index];
        if !node.running {
            return Err(PostgresError::NotRunning {
                operation: Operation::Promote,
            });
        }
        let Some(data) = node.data.as_mut() else {
            return Err(unexpected(Operation::Promote, "no data"));
        };
        if node.primary {
            return Ok(Timeline(data.timeline));
        }
        data.timeline += 1;
        let timeline = data.timeline;
        node.primary = true;
        node.upstream = None;
        world.promotions += 1;
        let missing = world.settle(self.index, "promoted");
        world.log(format!(
            "{name}: promoted to timeline {timeline}, {missing} acknowledged writes missing"
        ));
        world.check_single_writer();
        Ok(Timeline(timeline))
    }

    async fn demote(&self, mode: StopMode, follow: Option<Upstream>) -> Result<(), PostgresError> {
        {
            let mut world = lock(&self.world);
            let node = &mut world.nodes[self.index];
            node.running = false;
            node.primary = false;
            node.crashed = mode == StopMode::Immediate;
            let name = node.name.clone();
            world.log(format!("{name}: demoted ({mode:?})"));
        }
        if let Some(upstream) = follow {
            self.start(StartAs::ReplicaOf(upstream)).await?;
        }
        Ok(())
    }

    async fn follow(&self, upstream: &Upstream) -> Result<(), PostgresError> {
        let target = self
            .upstream_index(upstream)
            .ok_or_else(|| unexpected(Operation::Follow, "unknown upstream"))?;
        let mut world = lock(&self.world);
        world.nodes[self.index].upstream = Some(target);
        Ok(())
    }

    async fn rewind(&self, source: &Upstream) -> Result<RewindOutcome, PostgresError> {
        let from = self
            .upstream_index(source)
            .ok_or_else(|| unexpected(Operation::Rewind, "unknown source"))?;
        let mut world = lock(&self.world);
        if !world.reachable(self.index, from) || !world.nodes[from].running {
            return Err(unexpected(Operation::Rewind, "source unreachable"));
        }
        let Some(source_data) = world.nodes[from].data.clone() else {
            return Err(unexpected(Operation::Rewind, "source has no data"));
        };
        let impossible = world.rng.chance(0.1);
        let node = &mut world.nodes[self.index];
        if node.running {
            return Err(unexpected(Operation::Rewind, "still running"));
        }
        let Some(data) = node.data.as_mut() else {
            return Err(unexpected(Operation::Rewind, "no data"));
        };
        if is_prefix(&data.log, &source_data.log) {
            return Ok(RewindOutcome::NotNeeded);
        }
        if impossible {
            return Ok(RewindOutcome::Impossible {
                reason: "simulated: WAL needed for the rewind is gone".to_owned(),
            });
        }
        let common = data
            .log
            .iter()
            .zip(&source_data.log)
            .take_while(|(a, b)| a == b)
            .count();
        data.log.truncate(common);
        data.timeline = source_data.timeline;
        let name = node.name.clone();
        world.log(format!(
            "{name}: rewound from {} to {common} records",
            source.member
        ));
        Ok(RewindOutcome::Rewound)
    }

    async fn set_synchronous_standby_names(
        &self,
        names: &SyncStandbyNames,
    ) -> Result<(), PostgresError> {
        let mut world = lock(&self.world);
        let node = &mut world.nodes[self.index];
        node.sync_names = names.names().iter().cloned().collect();
        node.sync_count = names.count();
        node.sync_any = matches!(names, SyncStandbyNames::Any { .. });
        let line = format!("{}: synchronous_standby_names = '{names}'", node.name);
        world.log(line);
        Ok(())
    }
}

#[async_trait]
impl Fence for SimPostgres {
    async fn arm(&self, valid_for: Duration) -> Result<(), String> {
        let mut world = lock(&self.world);
        // `valid_for` is on this node's clock.
        let real = real_span(valid_for, world.nodes[self.index].drift_ppm);
        world.nodes[self.index].fence_until = Some(Instant::now() + real);
        world.check_single_writer();
        Ok(())
    }

    async fn disarm(&self) -> Result<(), String> {
        lock(&self.world).nodes[self.index].fence_until = None;
        Ok(())
    }
}

/// Asking peers for their positions over their REST API: only agents that
/// run and can be reached answer.
struct SimProbe {
    index: usize,
    world: Arc<Mutex<World>>,
}

#[async_trait]
impl PeerProbe for SimProbe {
    async fn probe(
        &self,
        members: &[Member],
    ) -> std::collections::BTreeMap<MemberName, PeerReport> {
        let world = lock(&self.world);
        members
            .iter()
            .filter_map(|member| {
                let j = world.index(&member.name)?;
                let node = &world.nodes[j];
                if !node.agent_up || !world.reachable(self.index, j) || !node.running {
                    return None;
                }
                let data = node.data.as_ref()?;
                Some((
                    member.name.clone(),
                    PeerReport {
                        wal_position: Some(data.position()),
                        timeline: world.reported_timeline(j).map(Timeline),
                        running_primary: node.primary,
                    },
                ))
            })
            .collect()
    }
}

/// `POST /failsafe` to peers: only agents that run and can be reached answer,
/// through their engine's [`FailsafeHandle`].
struct SimFailsafe {
    index: usize,
    world: Arc<Mutex<World>>,
}

#[async_trait]
impl FailsafeSender for SimFailsafe {
    async fn send(
        &self,
        members: &[(MemberName, String)],
        heartbeat: &FailsafeHeartbeat,
        _timeout: Duration,
    ) -> BTreeSet<MemberName> {
        let world = lock(&self.world);
        members
            .iter()
            .filter(|(name, _)| {
                let Some(j) = world.index(name) else {
                    return false;
                };
                let node = &world.nodes[j];
                node.agent_up
                    && world.reachable(self.index, j)
                    && node
                        .failsafe
                        .as_ref()
                        .is_some_and(|handle| handle.receive(heartbeat).is_ok())
            })
            .map(|(name, _)| name.clone())
            .collect()
    }
}

/// A node's DCS client, which the simulation can slow down or cut off. A
/// slowed-down request reaches the store after the delay whether or not its
/// caller still waits: a write may land after the caller timed out.
#[derive(Clone)]
struct SimDcs {
    inner: MemoryDcs,
    delay: Arc<Mutex<Duration>>,
    /// For the trace.
    world: Option<Arc<Mutex<World>>>,
    /// [`ModelBug::HideLockLifetime`].
    hide_lock_lifetime: bool,
}

impl SimDcs {
    fn current_delay(&self) -> Duration {
        *self.delay.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn lag(&self) {
        let delay = self.current_delay();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
    }

    /// Sends a request that takes effect after the delay, even if the caller
    /// gave up on it meanwhile (a timeout dropped its future).
    async fn send<T, F, Fut>(&self, request: F) -> Result<T, DcsError>
    where
        T: Send + 'static,
        F: FnOnce(MemoryDcs) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, DcsError>> + Send + 'static,
    {
        let delay = self.current_delay();
        let inner = self.inner.clone();
        if delay.is_zero() {
            return request(inner).await;
        }
        let world = self.world.clone();
        let task = tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            request(inner).await
        });
        match task.await {
            Ok(result) => result,
            Err(_) => {
                if let Some(world) = world {
                    lock(&world).log("a DCS request's task vanished".to_owned());
                }
                Err(DcsError::Unreachable {
                    backend: "memory",
                    message: "simulated request lost".to_owned(),
                })
            }
        }
    }
}

#[async_trait]
impl Dcs for SimDcs {
    fn layout(&self) -> &KeyLayout {
        self.inner.layout()
    }
    async fn read_view(&self) -> Result<ClusterView, DcsError> {
        self.lag().await;
        self.inner.read_view().await
    }
    async fn try_initialize(&self) -> Result<bool, DcsError> {
        self.send(|dcs| async move { dcs.try_initialize().await })
            .await
    }
    async fn complete_initialize(&self, system_id: SystemId) -> Result<(), DcsError> {
        self.send(move |dcs| async move { dcs.complete_initialize(system_id).await })
            .await
    }
    async fn cancel_initialize(&self) -> Result<(), DcsError> {
        self.send(|dcs| async move { dcs.cancel_initialize().await })
            .await
    }
    async fn acquire_leader(&self, me: &MemberName, ttl: Duration) -> Result<bool, DcsError> {
        let world = self.world.clone();
        let name = me.clone();
        self.send(move |dcs| async move {
            let result = dcs.acquire_leader(&name, ttl).await;
            if let (Ok(true), Some(world)) = (&result, &world) {
                lock(world).log(format!("{name}: holds the lock"));
            }
            result
        })
        .await
    }
    async fn renew_leader(&self, me: &MemberName, ttl: Duration) -> Result<(), DcsError> {
        let name = me.clone();
        self.send(move |dcs| async move { dcs.renew_leader(&name, ttl).await })
            .await
    }
    fn lock_lifetime(&self) -> Option<Duration> {
        if self.hide_lock_lifetime {
            return None;
        }
        // The delay comes before the store's call: counted from the request
        // sent, the store's lifetime is a lower bound.
        self.inner.lock_lifetime()
    }
    async fn release_leader(&self, me: &MemberName) -> Result<(), DcsError> {
        let name = me.clone();
        self.send(move |dcs| async move { dcs.release_leader(&name).await })
            .await
    }
    async fn publish_member(&self, member: &Member, ttl: Duration) -> Result<(), DcsError> {
        let member = member.clone();
        self.send(move |dcs| async move { dcs.publish_member(&member, ttl).await })
            .await
    }
    async fn remove_member(&self, name: &MemberName) -> Result<(), DcsError> {
        let name = name.clone();
        self.send(move |dcs| async move { dcs.remove_member(&name).await })
            .await
    }
    async fn write(&self, record: &Record, expected: Expected) -> Result<Version, DcsError> {
        let world = self.world.clone();
        let record = record.clone();
        self.send(move |dcs| async move {
            let result = dcs.write(&record, expected).await;
            if let (Record::Sync(sync), Ok(_), Some(world)) = (&record, &result, &world) {
                let names: Vec<&str> = sync.sync_standbys.iter().map(MemberName::as_str).collect();
                lock(world).log(format!(
                    "sync key = {names:?} quorum {:?} (leader {:?})",
                    sync.quorum, sync.leader
                ));
            }
            result
        })
        .await
    }
    async fn delete(&self, key: &DcsKey, expected: Expected) -> Result<(), DcsError> {
        let key = key.clone();
        self.send(move |dcs| async move { dcs.delete(&key, expected).await })
            .await
    }
    async fn watch(
        &self,
        after_revision: u64,
        timeout: Duration,
    ) -> Result<WatchOutcome, DcsError> {
        self.inner.watch(after_revision, timeout).await
    }
}

/// SIGSTOP and SIGCONT for a future: while paused it is not polled, and its
/// timers run on without it.
#[derive(Default)]
struct PauseSwitch {
    state: Mutex<(bool, Option<Waker>)>,
}

impl PauseSwitch {
    fn set(&self, paused: bool) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.0 = paused;
        if !paused {
            if let Some(waker) = state.1.take() {
                waker.wake();
            }
        }
    }
}

struct Pausable<F> {
    inner: Pin<Box<F>>,
    switch: Arc<PauseSwitch>,
}

impl<F: Future> Future for Pausable<F> {
    type Output = F::Output;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        {
            let mut state = self
                .switch
                .state
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if state.0 {
                state.1 = Some(cx.waker().clone());
                return Poll::Pending;
            }
        }
        self.inner.as_mut().poll(cx)
    }
}

struct NodeHandle {
    task: Option<tokio::task::JoinHandle<()>>,
    reporter: Option<tokio::task::JoinHandle<()>>,
    pause: Arc<PauseSwitch>,
    dcs: SimDcs,
    postgres: SimPostgres,
    /// This node's monotonic clock.
    clock: Arc<NodeClock>,
    /// How far its wall clock is off, in milliseconds.
    wall_skew_ms: i64,
    /// Asks its engine to restart PostgreSQL.
    restart: Option<crate::RestartHandle>,
}

struct Cluster {
    world: Arc<Mutex<World>>,
    store: MemoryDcs,
    /// The configuration in force (operators may change it).
    config: ClusterConfig,
    /// The longest ttl in force during the run (for the liveness bound).
    max_ttl_seen: Duration,
    decider: Option<Decider>,
    nodes: Vec<NodeHandle>,
    /// [`SimConfig::dynamic`].
    dynamic: bool,
    /// [`SimConfig::model_bug`].
    model_bug: Option<ModelBug>,
}

fn member_name(index: usize) -> MemberName {
    // "node1".."node9" are valid names.
    MemberName::new(format!("node{}", index + 1)).unwrap_or_else(|_| unreachable!())
}

impl Cluster {
    fn spawn_agent(&mut self, index: usize) {
        let handle = &mut self.nodes[index];
        let name = member_name(index);
        let settings = EngineSettings {
            node: NodeSettings {
                name: name.clone(),
                tags: Tags::default(),
                conn_url: format!("postgres://{name}:5432/postgres"),
                api_url: format!("http://{name}:8008/patroni"),
            },
            bootstrap_config: self.config.clone(),
            bootstrap: BootstrapSpec {
                superuser: Credentials::without_password("postgres"),
                replication: Credentials::without_password("replicator"),
                rewind: None,
                parameters: Default::default(),
                pg_hba: Vec::new(),
            },
            postgres_timeout: Duration::from_secs(10),
        };
        let wall = Utc
            .with_ymd_and_hms(2026, 1, 1, 0, 0, 0)
            .single()
            .unwrap_or_default()
            + chrono::Duration::milliseconds(handle.wall_skew_ms);
        let mut engine = Engine::new(
            handle.dcs.clone(),
            handle.postgres.clone(),
            RecordingRouter::new(name.to_string()),
            settings,
            handle.clock.clone(),
        )
        .with_fence(Arc::new(handle.postgres.clone()))
        .with_peer_probe(Arc::new(SimProbe {
            index,
            world: Arc::clone(&self.world),
        }))
        .with_failsafe_sender(Arc::new(SimFailsafe {
            index,
            world: Arc::clone(&self.world),
        }))
        .with_wall_start(wall);
        lock(&self.world).nodes[index].failsafe = Some(engine.failsafe_handle());
        if let Some(decider) = self.decider {
            engine = engine.with_decider(decider);
        }
        handle.restart = Some(engine.restart_handle());
        let mut status = engine.status();
        let world = Arc::clone(&self.world);
        let reporter = tokio::spawn(async move {
            let mut last = String::new();
            while status.changed().await {
                let now = status.get();
                let line = format!("{:?}: {}", now.role, now.reason);
                if line != last {
                    lock(&world).log(format!("{name}: {line}"));
                    last = line;
                }
            }
        });
        handle.pause.set(false);
        lock(&self.world).nodes[index].agent_up = true;
        let run = Pausable {
            inner: Box::pin(engine.run(std::future::pending())),
            switch: Arc::clone(&handle.pause),
        };
        handle.reporter = Some(reporter);
        handle.task = Some(tokio::spawn(run));
    }

    fn crash_agent(&mut self, index: usize) {
        lock(&self.world).nodes[index].agent_up = false;
        lock(&self.world).nodes[index].failsafe = None;
        if let Some(task) = self.nodes[index].task.take() {
            task.abort();
        }
        if let Some(reporter) = self.nodes[index].reporter.take() {
            reporter.abort();
        }
    }
}

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
    runtime.block_on(simulate(config))
}

async fn simulate(sim: &SimConfig) -> SimReport {
    let start = Instant::now();
    let clock = Arc::new(TokioClock(start));
    let mut rng = Rng::new(sim.seed);
    let config = ClusterConfig {
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
    };
    let layout = KeyLayout::new("service", "sim").unwrap_or_else(|_| unreachable!());
    let store = MemoryDcs::with_clock(layout, clock.clone());
    store.set_max_ttl(sim.max_ttl);
    let world = Arc::new(Mutex::new(World {
        nodes: (0..sim.nodes)
            .map(|i| PgNode {
                name: member_name(i),
                data: None,
                running: false,
                primary: false,
                crashed: false,
                upstream: None,
                fence_until: None,
                sync_names: BTreeSet::new(),
                sync_count: 1,
                isolated: false,
                agent_up: false,
                failsafe: None,
                sync_any: sim.quorum,
                drift_ppm: if sim.drift {
                    rng.below(2 * MAX_DRIFT_PPM as u64 + 1) as i64 - MAX_DRIFT_PPM
                } else {
                    0
                },
                stalled_until: None,
                restartpoint_timeline: 1,
            })
            .collect(),
        acknowledged: Vec::new(),
        acknowledged_total: 0,
        next_write: 1,
        violations: Vec::new(),
        lost_writes: 0,
        promotions: 0,
        trace: Vec::new(),
        rng: Rng::new(sim.seed.rotate_left(17)),
        start,
        synchronous: sim.synchronous,
        model_bug: sim.model_bug,
        faults_active: false,
    }));
    let mut cluster = Cluster {
        world: Arc::clone(&world),
        store: store.clone(),
        config: config.clone(),
        max_ttl_seen: config.ttl,
        dynamic: sim.dynamic,
        model_bug: sim.model_bug,
        decider: sim.decider,
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
                    hide_lock_lifetime: sim.model_bug == Some(ModelBug::HideLockLifetime),
                },
                postgres: SimPostgres {
                    index: i,
                    world: Arc::clone(&world),
                    oracle: store.connect(),
                },
            })
            .collect(),
    };
    for index in 0..sim.nodes {
        cluster.spawn_agent(index);
        tokio::time::sleep(rng.millis(0, 300)).await;
    }
    let traffic = tokio::spawn(traffic(Arc::clone(&world), rng.next()));

    // Let the cluster form, then inject faults.
    tokio::time::sleep(Duration::from_secs(8)).await;
    if let Scenario::FailsafeOutage { reach_all } = sim.scenario {
        failsafe_outage(&mut cluster, reach_all).await;
    }
    let faults_end = if sim.scenario == Scenario::Mixed {
        Instant::now() + sim.fault_duration
    } else {
        Instant::now()
    };
    let mut healers: Vec<(Instant, Heal)> = Vec::new();
    lock(&world).faults_active = sim.scenario == Scenario::Mixed;
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
        world.faults_active = false;
        for node in &mut world.nodes {
            node.stalled_until = None;
        }
        world.log("faults stopped".to_owned());
    }

    // Liveness: a primary within 2 × ttl + loop_wait, followers within a further ttl.
    // Under the longest ttl in force during the run: a lock taken under it
    // may still live.
    let ttl = cluster.max_ttl_seen;
    tokio::time::sleep(ttl * 2 + cluster.config.loop_wait).await;
    let leader = check_primary(&cluster).await;
    tokio::time::sleep(ttl).await;
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

/// The DCS cut off from every node for 3 × ttl, with every member reachable
/// (the primary must stay writable, nobody promoted) or with one replica's
/// agent killed just before (the primary must stop writing within ttl).
async fn failsafe_outage(cluster: &mut Cluster, reach_all: bool) {
    let ttl = cluster.config.ttl;
    let primary = {
        let world = lock(&cluster.world);
        let now = Instant::now();
        (0..world.nodes.len()).find(|&i| world.writable(i, now))
    };
    let Some(primary) = primary else {
        lock(&cluster.world).violation("no writable primary before the DCS outage".to_owned());
        return;
    };
    if !reach_all {
        let replica = (0..cluster.nodes.len())
            .find(|&i| i != primary)
            .unwrap_or_default();
        cluster.crash_agent(replica);
        lock(&cluster.world).log(format!("{}: agent killed", member_name(replica)));
    }
    let promotions = lock(&cluster.world).promotions;
    for node in &cluster.nodes {
        node.dcs.inner.set_reachable(false);
    }
    let cut_at = Instant::now();
    lock(&cluster.world).log("the DCS is cut off from every node".to_owned());
    while Instant::now() < cut_at + ttl * 3 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut world = lock(&cluster.world);
        let now = Instant::now();
        let writable = world.writable(primary, now);
        if reach_all && !writable {
            let name = world.nodes[primary].name.clone();
            world.violation(format!(
                "failsafe: {name} stopped taking writes during a DCS outage although every member was reachable"
            ));
            break;
        }
        if !reach_all && writable && now >= cut_at + ttl {
            let name = world.nodes[primary].name.clone();
            world.violation(format!(
                "failsafe: {name} still writable a ttl into a DCS outage although a member did not answer"
            ));
            break;
        }
    }
    for node in &cluster.nodes {
        node.dcs.inner.set_reachable(true);
    }
    lock(&cluster.world).log("the DCS is reachable again".to_owned());
    tokio::time::sleep(ttl * 2).await;
    let mut world = lock(&cluster.world);
    if reach_all {
        let now = Instant::now();
        if world.promotions != promotions || !world.writable(primary, now) {
            let name = world.nodes[primary].name.clone();
            let since = world.promotions - promotions;
            world.violation(format!(
                "failsafe: {name} did not stay the primary after the DCS outage ({since} promotion(s) since)"
            ));
        }
    }
}

/// A fault's end.
enum Heal {
    RestartAgent(usize),
    Resume(usize),
    Reconnect(usize),
    Rejoin(usize),
    Undelay(usize),
    /// An operator repairs a key a malformed value was written to.
    Repair(Repair),
}

/// A key to repair, and how.
enum Repair {
    /// Writes the configuration in force back.
    Config,
    /// Writes back the sync key as it was (or deletes it, if it was absent).
    Sync(Option<matriarch_model::SyncState>),
    /// Deletes the failover key.
    Failover,
    /// Deletes the member key (its agent publishes it again).
    Member(usize),
}

impl Heal {
    async fn apply(self, cluster: &mut Cluster) {
        let log = |line: String| lock(&cluster.world).log(line);
        match self {
            Heal::RestartAgent(i) => {
                log(format!("{}: agent restarted", member_name(i)));
                if cluster.nodes[i].task.is_none() {
                    cluster.spawn_agent(i);
                }
            }
            Heal::Resume(i) => {
                log(format!("{}: agent resumed", member_name(i)));
                cluster.nodes[i].pause.set(false);
                lock(&cluster.world).nodes[i].agent_up = cluster.nodes[i].task.is_some();
            }
            Heal::Reconnect(i) => {
                log(format!("{}: DCS reachable again", member_name(i)));
                cluster.nodes[i].dcs.inner.set_reachable(true);
            }
            Heal::Rejoin(i) => {
                log(format!("{}: network to peers restored", member_name(i)));
                lock(&cluster.world).nodes[i].isolated = false;
            }
            Heal::Undelay(i) => {
                log(format!("{}: DCS answers promptly again", member_name(i)));
                *cluster.nodes[i]
                    .dcs
                    .delay
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = Duration::ZERO;
            }
            Heal::Repair(repair) => {
                let store = &cluster.store;
                let (what, result) = match repair {
                    Repair::Config => (
                        "config",
                        store
                            .write(&Record::Config(cluster.config.clone()), Expected::Any)
                            .await
                            .map(drop),
                    ),
                    Repair::Sync(Some(sync)) => (
                        "sync",
                        store
                            .write(&Record::Sync(sync), Expected::Any)
                            .await
                            .map(drop),
                    ),
                    Repair::Sync(None) => {
                        ("sync", store.delete(&DcsKey::Sync, Expected::Any).await)
                    }
                    Repair::Failover => (
                        "failover",
                        store.delete(&DcsKey::Failover, Expected::Any).await,
                    ),
                    Repair::Member(j) => ("member", store.remove_member(&member_name(j)).await),
                };
                log(format!("operator repaired the {what} key: {result:?}"));
            }
        }
    }
}

async fn heal_everything(cluster: &mut Cluster) {
    for i in 0..cluster.nodes.len() {
        for heal in [
            Heal::Resume(i),
            Heal::Reconnect(i),
            Heal::Rejoin(i),
            Heal::Undelay(i),
            Heal::RestartAgent(i),
        ] {
            heal.apply(cluster).await;
        }
    }
}

async fn inject_fault(cluster: &mut Cluster, rng: &mut Rng, healers: &mut Vec<(Instant, Heal)>) {
    let n = cluster.nodes.len();
    let i = rng.below(n as u64) as usize;
    let name = member_name(i);
    let now = Instant::now();
    let ttl = cluster.config.ttl;
    let retry = cluster.config.retry_timeout;
    match rng.below(if cluster.dynamic { 12 } else { 10 }) {
        0 => {
            // The whole node dies: agent and PostgreSQL.
            cluster.crash_agent(i);
            {
                let mut world = lock(&cluster.world);
                let node = &mut world.nodes[i];
                node.running = false;
                node.crashed = true;
                node.fence_until = None;
                world.log(format!("{name}: node crashed"));
            }
            healers.push((now + rng.millis(500, 8000), Heal::RestartAgent(i)));
        }
        1 => {
            cluster.nodes[i].pause.set(true);
            lock(&cluster.world).nodes[i].agent_up = false;
            lock(&cluster.world).log(format!("{name}: agent paused"));
            let pause = ttl + rng.millis(0, 3 * ttl.as_millis() as u64);
            healers.push((now + pause, Heal::Resume(i)));
        }
        2 => {
            cluster.nodes[i].dcs.inner.set_reachable(false);
            lock(&cluster.world).log(format!("{name}: cut off from the DCS"));
            healers.push((now + rng.millis(500, 10_000), Heal::Reconnect(i)));
        }
        3 => {
            let mut world = lock(&cluster.world);
            world.nodes[i].isolated = true;
            world.log(format!("{name}: cut off from its peers"));
            healers.push((now + rng.millis(500, 10_000), Heal::Rejoin(i)));
        }
        4 => {
            let mut world = lock(&cluster.world);
            let node = &mut world.nodes[i];
            if node.running {
                node.running = false;
                node.crashed = true;
                world.log(format!("{name}: PostgreSQL crashed"));
            }
        }
        5 => {
            let delay = rng.millis(50, 3000);
            *cluster.nodes[i]
                .dcs
                .delay
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = delay;
            lock(&cluster.world).log(format!("{name}: DCS answers delayed by {delay:?}"));
            healers.push((now + rng.millis(500, 10_000), Heal::Undelay(i)));
        }
        6 => {
            // The DCS goes away for everyone (failsafe mode's case).
            for node in &cluster.nodes {
                node.dcs.inner.set_reachable(false);
            }
            lock(&cluster.world).log("the DCS is cut off from every node".to_owned());
            let until = now + rng.millis(500, 4 * ttl.as_millis() as u64);
            for j in 0..n {
                healers.push((until, Heal::Reconnect(j)));
            }
        }
        8 => restart_postgres(cluster, rng).await,
        9 => {
            // Requests land after their caller gave up on them.
            let delay = retry + rng.millis(0, 2 * retry.as_millis() as u64);
            *cluster.nodes[i]
                .dcs
                .delay
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = delay;
            lock(&cluster.world).log(format!(
                "{name}: DCS requests land {delay:?} late, past retry_timeout"
            ));
            healers.push((now + rng.millis(500, 10_000), Heal::Undelay(i)));
        }
        10 => change_config(cluster, rng).await,
        11 => corrupt_key(cluster, rng, healers).await,
        _ => {
            // A planned switchover, to a named candidate or to any.
            let Ok(view) = cluster.store.read_view().await else {
                return;
            };
            let Some(leader) = view.leader_name().cloned() else {
                return;
            };
            let candidate = rng
                .chance(0.6)
                .then(|| member_name(rng.below(n as u64) as usize))
                .filter(|c| c != &leader);
            let request = Record::Failover(FailoverRequest {
                leader: Some(leader.clone()),
                candidate: candidate.clone(),
                scheduled_at: None,
            });
            if cluster.store.write(&request, Expected::Any).await.is_ok() {
                lock(&cluster.world).log(format!(
                    "switchover requested from {leader} to {candidate:?}"
                ));
            }
        }
    }
}

/// An operator rewrites the timing, the synchronous count or strictness in
/// the config key (valid values only: the agents check them too).
async fn change_config(cluster: &mut Cluster, rng: &mut Rng) {
    let mut config = cluster.config.clone();
    match rng.below(3) {
        0 => {
            let ttl = 10 + rng.below(31);
            let retry = 1 + rng.below((ttl / 4).min(10));
            let loop_wait = 1 + rng.below((ttl - 2 * retry).min(10));
            config.ttl = Duration::from_secs(ttl);
            config.retry_timeout = Duration::from_secs(retry);
            config.loop_wait = Duration::from_secs(loop_wait);
        }
        1 => {
            let n = cluster.nodes.len() as u64;
            config.synchronous_node_count = 1 + rng.below(n - 1) as u32;
        }
        _ => config.synchronous_mode_strict = !config.synchronous_mode_strict,
    }
    if config.validate().is_err() {
        return;
    }
    let written = cluster
        .store
        .write(&Record::Config(config.clone()), Expected::Any)
        .await;
    if written.is_ok() {
        lock(&cluster.world).log(format!(
            "operator set ttl {:?} loop_wait {:?} retry_timeout {:?} synchronous_node_count {} strict {}",
            config.ttl,
            config.loop_wait,
            config.retry_timeout,
            config.synchronous_node_count,
            config.synchronous_mode_strict
        ));
        cluster.max_ttl_seen = cluster.max_ttl_seen.max(config.ttl);
        cluster.config = config;
    }
}

/// Writes a malformed value into the config, sync, failover or a member
/// key; an operator repairs it a little later.
async fn corrupt_key(cluster: &mut Cluster, rng: &mut Rng, healers: &mut Vec<(Instant, Heal)>) {
    // Undecodable, or known fields of the wrong type. (A JSON object of
    // unknown fields is no malformed config: it decodes as the defaults,
    // as an operator's `{}` would.)
    let garbage: &[u8] = match rng.below(4) {
        0 => b"{\"ttl\": 30, \"loop_wait\": 1",
        1 => b"\xff\xfe not json",
        2 => b"{\"ttl\": \"soon\", \"synchronous_mode\": 3, \"leader\": 17}",
        _ => b"{\"leader\": 17, \"sync_standby\": [1, 2], \"quorum\": \"many\", \"ttl\": [], \"conn_url\": 5, \"state\": 9, \"candidate\": 4}",
    };
    let now = Instant::now();
    let later = now + rng.millis(500, 8000);
    let (key, repair) = match rng.below(4) {
        0 => ("config".to_owned(), Repair::Config),
        1 => {
            let previous = match cluster.store.read_view().await {
                Ok(view) => match view.sync {
                    Some(Ok(sync)) => Some(sync.value),
                    Some(Err(_)) => return, // Already malformed.
                    None => None,
                },
                Err(_) => return,
            };
            ("sync".to_owned(), Repair::Sync(previous))
        }
        2 => ("failover".to_owned(), Repair::Failover),
        _ => {
            let j = rng.below(cluster.nodes.len() as u64) as usize;
            (format!("members/{}", member_name(j)), Repair::Member(j))
        }
    };
    cluster.store.put_raw(&key, garbage);
    lock(&cluster.world).log(format!("malformed value written to the {key} key"));
    healers.push((later, Heal::Repair(repair)));
}

/// A REST restart of the lock holder's PostgreSQL (or of a random node's).
async fn restart_postgres(cluster: &mut Cluster, rng: &mut Rng) {
    let holder = match cluster.store.read_view().await {
        Ok(view) => view.leader_name().cloned(),
        Err(_) => None,
    };
    let i = holder
        .and_then(|h| lock(&cluster.world).index(&h))
        .unwrap_or_else(|| rng.below(cluster.nodes.len() as u64) as usize);
    let name = member_name(i);
    let world = Arc::clone(&cluster.world);
    lock(&world).log(format!("{name}: PostgreSQL restart requested"));
    if cluster.model_bug == Some(ModelBug::RestartBypassesEngine) {
        // The old way: in the role observed at the request, after a stop
        // that takes its time (a checkpoint), whatever happened meanwhile.
        let postgres = cluster.nodes[i].postgres.clone();
        let slow_stop = rng.millis(0, 2 * cluster.config.ttl.as_millis() as u64);
        tokio::spawn(async move {
            let role = match postgres.observe().await {
                Ok(state) => state,
                Err(_) => return,
            };
            let as_role = match (&role.server, &role.upstream) {
                (ServerState::Running(PgRole::Primary), _) => StartAs::Primary,
                (ServerState::Running(PgRole::Replica), Some(upstream)) => {
                    StartAs::ReplicaOf(upstream.clone())
                }
                _ => return,
            };
            tokio::time::sleep(slow_stop).await;
            let stopped = postgres.stop(StopMode::Fast).await;
            let started = postgres.start(as_role).await;
            lock(&world).log(format!(
                "{name}: restarted outside the engine: {stopped:?} {started:?}"
            ));
        });
        return;
    }
    let Some(handle) = cluster.nodes[i].restart.clone() else {
        return;
    };
    tokio::spawn(async move {
        let result = handle.restart(Duration::from_secs(30)).await;
        lock(&world).log(format!("{name}: restart: {result:?}"));
    });
}

/// A client writing every 20 ms to whichever node is writable, and the
/// replication of every running replica from its upstream.
async fn traffic(world: Arc<Mutex<World>>, seed: u64) {
    let mut rng = Rng::new(seed);
    loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let mut world = lock(&world);
        let now = Instant::now();
        replicate(&mut world, &mut rng);
        let writers: Vec<usize> = (0..world.nodes.len())
            .filter(|&i| world.writable(i, now))
            .collect();
        if writers.len() > 1 {
            world.check_single_writer();
        }
        // A commit on a primary that cannot acknowledge it still lands in
        // its WAL (the client gives up waiting).
        let open: Vec<usize> = (0..world.nodes.len())
            .filter(|&i| {
                let node = &world.nodes[i];
                node.running && node.primary && node.fence_until.is_none_or(|u| u > now)
            })
            .collect();
        let Some(&primary) = writers.first().or(open.first()) else {
            continue;
        };
        let acknowledgers = world.acknowledgers(primary, now);
        let id = world.next_write;
        world.next_write += 1;
        let node = &mut world.nodes[primary];
        let Some(data) = node.data.as_mut() else {
            continue;
        };
        data.log.push((data.timeline, id));
        let log = data.log.clone();
        let (count, any_of) = (node.sync_count as usize, node.sync_any);
        let Some(eligible) = acknowledgers else {
            continue;
        };
        // FIRST n: the first n eligible by priority; ANY n: any n of them,
        // the choice rotating with the write.
        let rotate = if any_of && !eligible.is_empty() {
            id as usize % eligible.len()
        } else {
            0
        };
        let standbys: Vec<usize> = eligible
            .iter()
            .cycle()
            .skip(rotate)
            .take(count.min(eligible.len()))
            .copied()
            .collect();
        for j in standbys {
            if let Some(data) = world.nodes[j].data.as_mut() {
                data.log = log.clone();
            }
        }
        world.acknowledged.push(id);
        world.acknowledged_total += 1;
    }
}

fn replicate(world: &mut World, rng: &mut Rng) {
    for j in 0..world.nodes.len() {
        let (running, primary, upstream) = {
            let node = &world.nodes[j];
            (node.running, node.primary, node.upstream)
        };
        let Some(u) = upstream else { continue };
        if !running || primary || !world.nodes[u].running || !world.reachable(j, u) {
            continue;
        }
        let now = Instant::now();
        if world.nodes[j]
            .stalled_until
            .is_some_and(|until| until > now)
        {
            continue;
        }
        // A restartpoint now and then writes the replayed timeline to pg_control.
        if rng.chance(0.0005) {
            let node = &mut world.nodes[j];
            if let Some(timeline) = node.data.as_ref().map(|d| d.timeline) {
                node.restartpoint_timeline = timeline;
            }
        }
        // WAL shipping stalls now and then (a slow network, a busy disk).
        if world.faults_active && rng.chance(0.002) {
            let until = now + rng.millis(200, 4000);
            world.nodes[j].stalled_until = Some(until);
            continue;
        }
        let Some(source) = world.nodes[u].data.clone() else {
            continue;
        };
        let Some(data) = world.nodes[j].data.as_mut() else {
            continue;
        };
        if !is_prefix(&data.log, &source.log) {
            continue; // Diverged: only a rewind helps.
        }
        // Replicas lag a little, at random.
        let behind = source.log.len() - data.log.len();
        let take = if rng.chance(0.7) {
            behind
        } else {
            rng.below(behind as u64 + 1) as usize
        };
        let upto = data.log.len() + take;
        data.log
            .extend_from_slice(&source.log[data.log.len()..upto]);
        data.timeline = data.timeline.max(source.timeline);
    }
}

async fn check_primary(cluster: &Cluster) -> Option<usize> {
    let view = cluster.store.read_view().await.ok();
    let holder = view.as_ref().and_then(|v| v.leader_name().cloned());
    if let Some(Some(Ok(history))) = view.as_ref().map(|v| &v.history) {
        let line = history
            .value
            .0
            .iter()
            .map(|e| format!("tl{}@{}", e.timeline, e.switch_lsn))
            .collect::<Vec<_>>()
            .join(" ");
        lock(&cluster.world).log(format!("history: {line}"));
    }
    let mut world = lock(&cluster.world);
    let now = Instant::now();
    let writers: Vec<usize> = (0..world.nodes.len())
        .filter(|&i| world.writable(i, now))
        .collect();
    match (
        holder.as_ref().and_then(|h| world.index(h)),
        writers.as_slice(),
    ) {
        (Some(leader), [writer]) if leader == *writer => Some(leader),
        _ => {
            let states: Vec<String> = world
                .nodes
                .iter()
                .map(|n| {
                    format!(
                        "{}: agent {} pg {} {} tl {:?} pos {:?} upstream {:?} fence {:?} stalled {:?} sync {:?} {} of {:?}",
                        n.name,
                        if n.agent_up { "up" } else { "down" },
                        if n.running { "running" } else { "stopped" },
                        if n.primary { "primary" } else { "replica" },
                        n.data.as_ref().map(|d| d.timeline),
                        n.data.as_ref().map(Data::position),
                        n.upstream,
                        n.fence_until.map(|f| f.saturating_duration_since(now)),
                        n.stalled_until.map(|f| f.saturating_duration_since(now)),
                        n.sync_names,
                        n.sync_count,
                        n.upstream.map(|u| {
                            let upstream = world.nodes[u].data.as_ref().map(|d| d.log.as_slice()).unwrap_or_default();
                            n.data.as_ref().map(|d| is_prefix(&d.log, upstream))
                        }),
                    )
                })
                .collect();
            for line in states {
                world.log(line);
            }
            world.violation(format!(
                "no single writable primary 2 × ttl + loop_wait after faults stopped (lock: {holder:?}, writable: {writers:?})"
            ));
            None
        }
    }
}

fn check_followers(cluster: &Cluster, leader: usize) {
    let mut world = lock(&cluster.world);
    let leader_log = world.nodes[leader]
        .data
        .as_ref()
        .map(|d| d.log.clone())
        .unwrap_or_default();
    let mut stragglers = Vec::new();
    for (j, node) in world.nodes.iter().enumerate() {
        if j == leader {
            continue;
        }
        let following = node.running
            && !node.primary
            && node.upstream == Some(leader)
            && node
                .data
                .as_ref()
                .is_some_and(|d| is_prefix(&d.log, &leader_log));
        if !following {
            let log = node
                .data
                .as_ref()
                .map(|d| d.log.as_slice())
                .unwrap_or_default();
            let common = log
                .iter()
                .zip(&leader_log)
                .take_while(|(a, b)| a == b)
                .count();
            stragglers.push(format!(
                "{} (running {}, primary {}, upstream {:?}, timeline {:?}, {} records, {} in common with the leader's {})",
                node.name,
                node.running,
                node.primary,
                node.upstream,
                node.data.as_ref().map(|d| d.timeline),
                log.len(),
                common,
                leader_log.len()
            ));
        }
    }
    if !stragglers.is_empty() {
        let leader_name = world.nodes[leader].name.clone();
        world.violation(format!(
            "{stragglers:?} not following {leader_name} a ttl after it led"
        ));
    }
}
