//! The faults the simulation injects, and how each ends.

use std::sync::{Arc, PoisonError};
use std::time::Duration;

use matriarch_dcs::{Dcs, Expected};
use matriarch_model::{DcsKey, FailoverRequest, Record};
use matriarch_postgres::{PgRole, Postgres, ServerState, StartAs, StopMode};
use tokio::time::Instant;

use super::cluster::{member_name, Cluster};
use super::plants::ModelBug;
use super::time::Rng;
use super::world::lock;

/// A fault's end.
pub(super) enum Heal {
    RestartAgent(usize),
    Resume(usize),
    Reconnect(usize),
    Rejoin(usize),
    Undelay(usize),
    /// An operator repairs a key a malformed value was written to.
    Repair(Repair),
}

/// A key to repair, and how.
pub(super) enum Repair {
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
    pub(super) async fn apply(self, cluster: &mut Cluster) {
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
                lock(&cluster.world).pg.servers().set_isolated(i, false);
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

pub(super) async fn heal_everything(cluster: &mut Cluster) {
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

pub(super) async fn inject_fault(
    cluster: &mut Cluster,
    rng: &mut Rng,
    healers: &mut Vec<(Instant, Heal)>,
) {
    let n = cluster.nodes.len();
    let i = rng.below(n as u64) as usize;
    let name = member_name(i);
    let now = Instant::now();
    let ttl = cluster.config.ttl;
    let retry = cluster.config.retry_timeout;
    match rng.below(if cluster.dynamic { 12 } else { 10 }) {
        0 => {
            // The agent's processes die (its process group is killed, or the
            // host): the postmaster, started under PR_SET_PDEATHSIG by the
            // fence process, dies with them.
            cluster.crash_agent(i);
            let mut world = lock(&cluster.world);
            world.nodes[i].fence_until = None;
            if world.planted(ModelBug::PostmasterOutlivesAgent) {
                world.log(format!("{name}: agent killed, PostgreSQL left running"));
            } else {
                world.pg.servers().crash(i);
                world.log(format!("{name}: node crashed"));
            }
            drop(world);
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
            world.pg.servers().set_isolated(i, true);
            world.log(format!("{name}: cut off from its peers"));
            healers.push((now + rng.millis(500, 10_000), Heal::Rejoin(i)));
        }
        4 => {
            let mut world = lock(&cluster.world);
            if world.pg.servers().server(i).running {
                world.pg.servers().crash(i);
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
        {
            let mut world = lock(&cluster.world);
            world.loop_wait_bound = world
                .loop_wait_bound
                .max(config.loop_wait + config.retry_timeout);
        }
        if config.synchronous_mode_strict != cluster.config.synchronous_mode_strict {
            // A primary may act on the old value until its next loop reads
            // the config, or its fence (armed at most a ttl earlier) stops it.
            let seen_by = Instant::now() + cluster.max_ttl_seen + config.loop_wait;
            lock(&cluster.world).strict_since = config.synchronous_mode_strict.then_some(seen_by);
        }
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
    if cluster
        .model_bugs
        .contains(&ModelBug::RestartBypassesEngine)
    {
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
