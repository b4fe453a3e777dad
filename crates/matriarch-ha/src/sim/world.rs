//! The simulated world: every node's PostgreSQL (the in-memory PostgreSQL
//! of `matriarch_postgres::memory`), what lies around it (agents, write
//! fences, the network), the writes acknowledged to the client, and the
//! record of what happened.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use matriarch_model::MemberName;
use matriarch_postgres::memory::{Conditions, Shipment, ShippingLink};
use matriarch_postgres::MemoryPostgresCluster;
use tokio::time::Instant;

use super::plants::ModelBug;
use super::time::Rng;
use crate::FailsafeHandle;

/// What the simulation keeps about a node besides its PostgreSQL.
pub(super) struct Node {
    pub(super) name: MemberName,
    /// The write fence's deadline; `None`: disarmed, and a disarmed fence
    /// (as a fresh one after a crash) lets a primary write without limit.
    pub(super) fence_until: Option<Instant>,
    /// The agent runs and answers its REST API.
    pub(super) agent_up: bool,
    /// Where its REST API hands failsafe heartbeats.
    pub(super) failsafe: Option<FailsafeHandle>,
    /// Its clock's drift, parts per million.
    pub(super) drift_ppm: i64,
    /// Since when its agent's reads of the config key have said strict
    /// synchronous mode (`None`: its last readable config said otherwise).
    /// A primary cannot honour a setting it could not read (cut off from the
    /// DCS in failsafe mode, or the key malformed): strictness binds it from
    /// its first read of it on.
    pub(super) strict_read_since: Option<Instant>,
}

pub(super) struct World {
    pub(super) nodes: Vec<Node>,
    /// Every node's PostgreSQL, in the order of `nodes`.
    pub(super) pg: MemoryPostgresCluster,
    /// Acknowledged writes not yet settled by a promotion.
    pub(super) acknowledged: Vec<u64>,
    pub(super) acknowledged_total: u64,
    pub(super) violations: Vec<String>,
    pub(super) lost_writes: u64,
    pub(super) promotions: u64,
    pub(super) trace: Vec<String>,
    pub(super) start: Instant,
    pub(super) synchronous: bool,
    /// The defects planted in the world.
    pub(super) model_bugs: Vec<ModelBug>,
    /// Faults are being injected (WAL shipping stalls only then).
    pub(super) faults_active: Arc<AtomicBool>,
    /// `synchronous_mode_strict` is in force and every primary has seen it
    /// from then on (see [`World::check_strict_commit`]); `None`: not strict.
    pub(super) strict_since: Option<Instant>,
    /// The longest loop_wait + retry_timeout in force so far: how long a
    /// node may take to apply what it read.
    pub(super) loop_wait_bound: std::time::Duration,
}

pub(super) fn lock(world: &Mutex<World>) -> MutexGuard<'_, World> {
    // A panic in a sim task poisons the lock; the data is still what we report.
    world.lock().unwrap_or_else(PoisonError::into_inner)
}

impl World {
    pub(super) fn planted(&self, bug: ModelBug) -> bool {
        self.model_bugs.contains(&bug)
    }

    /// Acknowledged writes that no node holds any more (for the trace).
    pub(super) fn note_vanished(&mut self, context: &str) {
        let held: BTreeSet<u64> = self
            .pg
            .servers()
            .all()
            .iter()
            .filter_map(|server| server.data.as_ref())
            .flat_map(|data| data.wal.iter().map(|record| record.id))
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

    pub(super) fn log(&mut self, line: String) {
        let at = self.start.elapsed().as_millis();
        self.trace.push(format!("{at:>7} ms  {line}"));
        if self.trace.len() > 4000 {
            self.trace.remove(0);
        }
    }

    pub(super) fn violation(&mut self, what: String) {
        let at = self.start.elapsed().as_millis();
        self.log(format!("VIOLATION {what}"));
        if self.violations.len() < 20 {
            self.violations.push(format!("at {at} ms: {what}"));
        }
    }

    /// The fence of node `index` lets it write now.
    pub(super) fn fence_open(&self, index: usize, now: Instant) -> bool {
        self.nodes[index]
            .fence_until
            .is_none_or(|until| until > now)
    }

    /// PostgreSQL on `index` would acknowledge a commit now: a running
    /// primary, not fenced off, and the standbys its
    /// `synchronous_standby_names` names there to confirm it.
    pub(super) fn writable(&self, index: usize, now: Instant) -> bool {
        let servers = self.pg.servers();
        servers.server(index).is_running_primary()
            && self.fence_open(index, now)
            && servers.acknowledgers(index).is_some()
    }

    pub(super) fn check_single_writer(&mut self) {
        let now = Instant::now();
        let writers: Vec<String> = (0..self.nodes.len())
            .filter(|&i| self.writable(i, now))
            .map(|i| self.nodes[i].name.to_string())
            .collect();
        if writers.len() > 1 {
            self.violation(format!("two writable primaries at once: {writers:?}"));
        }
    }

    pub(super) fn index(&self, name: &MemberName) -> Option<usize> {
        self.nodes.iter().position(|n| &n.name == name)
    }

    /// Node `index` now takes writes (`how`: promoted, started as primary):
    /// acknowledged writes it lacks are lost, in synchronous mode a broken
    /// invariant. Returns how many; each loss counts once.
    pub(super) fn settle(&mut self, index: usize, how: &str) -> u64 {
        let name = self.nodes[index].name.clone();
        let (log, holders): (BTreeSet<u64>, Vec<(String, Vec<u64>)>) = {
            let servers = self.pg.servers();
            let ids = |i: usize| -> Vec<u64> {
                servers
                    .server(i)
                    .data
                    .as_ref()
                    .map(|d| d.wal.iter().map(|r| r.id).collect())
                    .unwrap_or_default()
            };
            (
                ids(index).into_iter().collect(),
                (0..self.nodes.len())
                    .map(|i| (self.nodes[i].name.to_string(), ids(i)))
                    .collect(),
            )
        };
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
            let holders: Vec<String> = holders
                .iter()
                .filter(|(_, ids)| first_missing.is_some_and(|id| ids.contains(&id)))
                .map(|(name, ids)| format!("{name} ({} records)", ids.len()))
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

    /// Synchronous replication's promise in strict mode: a commit is
    /// acknowledged only once a standby holds it, so that losing the
    /// primary (a failover) loses no acknowledged write. PostgreSQL keeps it
    /// when `synchronous_standby_names` names a standby (or `*`); with the
    /// setting empty it does not wait, and the write is on the primary alone.
    pub(super) fn check_strict_commit(&mut self, primary: usize, id: u64, standbys: usize) {
        let now = Instant::now();
        if !self.synchronous || standbys > 0 || self.strict_since.is_none_or(|since| now < since) {
            return;
        }
        // Its next loop applies what it read: a loop_wait plus a DCS call.
        let applied_by = |read: Instant| read + self.loop_wait_bound;
        if self.nodes[primary]
            .strict_read_since
            .is_none_or(|read| now < applied_by(read))
        {
            return;
        }
        let name = self.nodes[primary].name.clone();
        let names = self.pg.servers().server(primary).sync_names.clone();
        self.violation(format!(
            "{name} acknowledged write {id} alone in strict synchronous mode \
             (synchronous_standby_names '{names}'): no standby holds it, a failover loses it"
        ));
    }

    pub(super) fn reachable(&self, a: usize, b: usize) -> bool {
        self.pg.servers().reachable(a, b)
    }
}

/// How WAL ships in the simulated world: replicas lag a little at random,
/// shipping stalls now and then while faults are injected, a restartpoint
/// now and then writes the replayed timeline to pg_control, and pg_rewind
/// sometimes finds the WAL it needs gone.
pub(super) struct SimConditions {
    pub(super) rng: Rng,
    pub(super) faults_active: Arc<AtomicBool>,
}

impl Conditions for SimConditions {
    fn ship(&mut self, link: &ShippingLink<'_>) -> Shipment {
        let restartpoint = self.rng.chance(0.0005);
        if self.faults_active.load(Ordering::Relaxed) && self.rng.chance(0.002) {
            return Shipment {
                records: 0,
                restartpoint,
                stall_for: Some(self.rng.millis(200, 4000)),
            };
        }
        let records = if self.rng.chance(0.7) {
            link.behind
        } else {
            self.rng.below(link.behind as u64 + 1) as usize
        };
        Shipment {
            records,
            restartpoint,
            stall_for: None,
        }
    }

    fn rewind_blocked(&mut self, _member: &MemberName) -> Option<String> {
        self.rng
            .chance(0.1)
            .then(|| "simulated: WAL needed for the rewind is gone".to_owned())
    }
}
