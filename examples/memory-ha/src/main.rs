//! An HA cluster built from matriarch's crates: the real `matriarch_ha::Engine`
//! (the same loop `matriarch run` drives) on three nodes, over `MemoryDcs`,
//! with a stand-in PostgreSQL and a router that prints. It forms a cluster,
//! kills the leader (agent and PostgreSQL together, as a host crash would:
//! the lock is not released), prints who takes over, then restarts the old
//! leader and shows it rejoining as a replica.
//!
//! The engine only sees three traits: `Dcs` (here `MemoryDcs`), `Postgres`
//! (here [`ToyPostgres`]) and `Router` (here [`PrintRouter`]). The daemon
//! passes `EtcdDcs`, `PgController` and the ELB/DNS routers instead, and adds
//! `with_fence` and `with_peer_probe`.
//!
//! Run: `cargo run -p example-memory-ha`
//! Second part, the crate's own fault-injecting simulation (virtual time):
//! `cargo run -p example-memory-ha -- --sim 42`

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use matriarch_dcs::{MemoryDcs, SystemClock};
use matriarch_ha::{Engine, EngineRole, EngineSettings, NodeSettings, StatusHandle};
use matriarch_model::{ClusterConfig, KeyLayout, Lsn, MemberName, SystemId, Tags, Timeline};
use matriarch_postgres::{
    BootstrapSpec, Credentials, DataDirectoryState, LocalState, Operation, PgRole, Postgres,
    PostgresError, RewindOutcome, ServerState, StartAs, StopMode, SyncStandbyNames, Upstream,
};
use matriarch_router::{Endpoint, Router, RouterError, Routes};
use tokio::sync::watch;
use tokio::task::JoinHandle;

const SYSTEM_ID: SystemId = SystemId(7_400_000_000_000_000_001);

/// Prints lines with the time since the start.
#[derive(Clone, Copy)]
struct Log(Instant);

impl Log {
    fn line(&self, text: impl AsRef<str>) {
        println!(
            "{:>6.2}s  {}",
            self.0.elapsed().as_secs_f64(),
            text.as_ref()
        );
    }
}

/// One node's pretend PostgreSQL: a timeline and a WAL position.
#[derive(Debug, Default)]
struct PgNode {
    /// `None`: empty data directory.
    data: Option<(Timeline, Lsn)>,
    running: bool,
    primary: bool,
    crashed: bool,
    upstream: Option<Upstream>,
}

/// Every node's PostgreSQL, shared, so replication can copy between them.
type World = Arc<Mutex<BTreeMap<MemberName, PgNode>>>;

fn lock(world: &World) -> MutexGuard<'_, BTreeMap<MemberName, PgNode>> {
    world.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A client commit on the running primary, streamed at once to the replicas
/// that follow it (with the primary's timeline: a replica follows a timeline
/// switch by streaming).
fn write(world: &World) {
    let mut nodes = lock(world);
    let Some((primary, data)) = nodes
        .iter_mut()
        .find(|(_, n)| n.running && n.primary)
        .and_then(|(name, n)| {
            let (timeline, lsn) = n.data.as_mut()?;
            lsn.0 += 64;
            Some((name.clone(), (*timeline, *lsn)))
        })
    else {
        return;
    };
    for node in nodes.values_mut() {
        if node.running && node.upstream.as_ref().is_some_and(|u| u.member == primary) {
            node.data = Some(data);
        }
    }
}

/// The `Postgres` trait over the shared [`World`]. The trait's documentation
/// (crates/matriarch-postgres/src/lib.rs) is the contract; this keeps the
/// parts the engine relies on: idempotence, `clone_replica` leaves the server
/// stopped, `demote` means no more writes, `Immediate` stops look like crashes.
#[derive(Clone)]
struct ToyPostgres {
    me: MemberName,
    world: World,
}

impl ToyPostgres {
    fn with_node<T>(&self, f: impl FnOnce(&mut PgNode) -> T) -> T {
        f(lock(&self.world).entry(self.me.clone()).or_default())
    }
}

#[async_trait]
impl Postgres for ToyPostgres {
    async fn observe(&self) -> Result<LocalState, PostgresError> {
        let nodes = lock(&self.world);
        let Some(node) = nodes.get(&self.me) else {
            return Ok(LocalState::empty());
        };
        let Some((timeline, lsn)) = node.data else {
            return Ok(LocalState::empty());
        };
        let mut state = LocalState {
            timeline: Some(timeline),
            system_id: Some(SYSTEM_ID),
            ..LocalState::empty()
        };
        if !node.running {
            state.server = ServerState::NotRunning(if node.crashed {
                DataDirectoryState::Crashed
            } else {
                DataDirectoryState::CleanShutdown
            });
            state.wal.flush = Some(lsn);
        } else if node.primary {
            state.server = ServerState::Running(PgRole::Primary);
            state.wal.write = Some(lsn);
            state.wal.flush = Some(lsn);
        } else {
            state.server = ServerState::Running(PgRole::Replica);
            state.wal.received = Some(lsn);
            state.wal.replayed = Some(lsn);
            state.upstream = node.upstream.clone();
            // Streaming only from a running primary: a replica that follows
            // a dead one is noticed by the engine.
            state.receiving = node.upstream.as_ref().is_some_and(|u| {
                nodes
                    .get(&u.member)
                    .is_some_and(|up| up.running && up.primary)
            });
        }
        Ok(state)
    }

    async fn bootstrap(&self, _spec: &BootstrapSpec) -> Result<SystemId, PostgresError> {
        self.with_node(|node| {
            if node.data.is_some() {
                return Err(PostgresError::NotEmpty {
                    operation: Operation::Bootstrap,
                    data_dir: "toy".into(),
                });
            }
            *node = PgNode {
                data: Some((Timeline(1), Lsn(0x300_0000))),
                running: true,
                primary: true,
                ..PgNode::default()
            };
            Ok(SYSTEM_ID)
        })
    }

    async fn clone_replica(&self, source: &Upstream) -> Result<(), PostgresError> {
        let mut nodes = lock(&self.world);
        let data = nodes
            .get(&source.member)
            .filter(|n| n.running)
            .and_then(|n| n.data)
            .ok_or(PostgresError::NotRunning {
                operation: Operation::CloneReplica,
            })?;
        // Left stopped, configured to follow the source.
        nodes.insert(
            self.me.clone(),
            PgNode {
                data: Some(data),
                upstream: Some(source.clone()),
                ..PgNode::default()
            },
        );
        Ok(())
    }

    async fn start(&self, as_role: StartAs) -> Result<(), PostgresError> {
        self.with_node(|node| {
            if node.data.is_none() {
                return Err(PostgresError::NotInitialized {
                    operation: Operation::Start,
                    data_dir: "toy".into(),
                });
            }
            let primary = as_role == StartAs::Primary;
            if node.running && node.primary != primary {
                return Err(PostgresError::RoleConflict {
                    operation: Operation::Start,
                    running_as: if node.primary {
                        PgRole::Primary
                    } else {
                        PgRole::Replica
                    },
                });
            }
            match as_role {
                StartAs::ReplicaOf(upstream) => node.upstream = Some(upstream),
                // A running replica is left as it is; a stopped one starts
                // read-only without an upstream.
                StartAs::Standby if node.running => {}
                StartAs::Standby | StartAs::Primary => node.upstream = None,
            }
            node.running = true;
            node.crashed = false;
            node.primary = primary;
            Ok(())
        })
    }

    async fn stop(&self, mode: StopMode) -> Result<(), PostgresError> {
        self.with_node(|node| {
            if node.running {
                node.running = false;
                node.crashed = mode == StopMode::Immediate;
            }
            Ok(())
        })
    }

    async fn promote(&self) -> Result<Timeline, PostgresError> {
        self.with_node(|node| {
            let Some((timeline, _)) = node.data.as_mut().filter(|_| node.running) else {
                return Err(PostgresError::NotRunning {
                    operation: Operation::Promote,
                });
            };
            if !node.primary {
                // Ending recovery starts a new timeline.
                timeline.0 += 1;
                node.primary = true;
                node.upstream = None;
            }
            Ok(*timeline)
        })
    }

    async fn demote(&self, mode: StopMode, follow: Option<Upstream>) -> Result<(), PostgresError> {
        self.with_node(|node| {
            node.running = false;
            node.primary = false;
            node.crashed = mode == StopMode::Immediate;
        });
        match follow {
            Some(upstream) => self.start(StartAs::ReplicaOf(upstream)).await,
            None => Ok(()),
        }
    }

    async fn follow(&self, upstream: &Upstream) -> Result<(), PostgresError> {
        self.with_node(|node| {
            if node.running && node.primary {
                return Err(PostgresError::RoleConflict {
                    operation: Operation::Follow,
                    running_as: PgRole::Primary,
                });
            }
            node.upstream = Some(upstream.clone());
            Ok(())
        })
    }

    async fn rewind(&self, source: &Upstream) -> Result<RewindOutcome, PostgresError> {
        let mut nodes = lock(&self.world);
        let source_data = nodes.get(&source.member).and_then(|n| n.data);
        let node = nodes.entry(self.me.clone()).or_default();
        if node.running {
            return Err(PostgresError::StillRunning {
                operation: Operation::Rewind,
            });
        }
        let (Some((own_tl, own_lsn)), Some((source_tl, source_lsn))) = (node.data, source_data)
        else {
            return Err(PostgresError::NotInitialized {
                operation: Operation::Rewind,
                data_dir: "toy".into(),
            });
        };
        node.upstream = Some(source.clone());
        node.crashed = false;
        // Anything past the source's position is WAL the source never had.
        let outcome = if own_lsn > source_lsn || own_tl > source_tl {
            RewindOutcome::Rewound
        } else {
            RewindOutcome::NotNeeded
        };
        node.data = Some((source_tl, own_lsn.min(source_lsn)));
        Ok(outcome)
    }

    async fn set_synchronous_standby_names(
        &self,
        _names: &SyncStandbyNames,
    ) -> Result<(), PostgresError> {
        Ok(()) // This example runs asynchronous replication only.
    }
}

/// Prints what the engine asks of it. A real router moves a DNS name or a
/// load balancer target (see examples/custom-router).
struct PrintRouter {
    me: MemberName,
    log: Log,
}

#[async_trait]
impl Router for PrintRouter {
    fn name(&self) -> &str {
        "print"
    }

    async fn route(&self, routes: &Routes) -> Result<(), RouterError> {
        let readers: Vec<&str> = routes.replicas.iter().map(|e| e.member.as_str()).collect();
        self.log.line(format!(
            "{}: route writers to {} ({}:{}), readers to {readers:?}",
            self.me, routes.primary.member, routes.primary.host, routes.primary.port
        ));
        Ok(())
    }

    async fn withdraw(&self, member: &Endpoint) -> Result<(), RouterError> {
        self.log.line(format!(
            "{}: withdraw {} from writers",
            self.me, member.member
        ));
        Ok(())
    }
}

/// A running node: its engine task and a handle on its status.
struct Node {
    task: JoinHandle<()>,
    status: StatusHandle,
}

/// Wires one node's engine, exactly as the daemon does but with other trait
/// implementations, and runs it until `shutdown` turns true.
fn start_node(
    index: u16,
    name: &MemberName,
    store: &MemoryDcs,
    world: &World,
    config: &ClusterConfig,
    log: Log,
    mut shutdown: watch::Receiver<bool>,
) -> Node {
    let settings = EngineSettings {
        node: NodeSettings {
            name: name.clone(),
            tags: Tags::default(),
            // Published in the member record; replicas and routers use it.
            conn_url: format!("postgres://10.0.0.{}:5432/postgres", 10 + index),
            api_url: format!("http://10.0.0.{}:8008/patroni", 10 + index),
        },
        // Written to the DCS by the member that bootstraps the cluster.
        bootstrap_config: config.clone(),
        bootstrap: BootstrapSpec {
            superuser: Credentials::without_password("postgres"),
            replication: Credentials::without_password("replicator"),
            rewind: None,
            parameters: BTreeMap::new(),
            pg_hba: Vec::new(),
        },
        postgres_timeout: Duration::from_secs(5),
    };
    let engine = Engine::new(
        store.connect(), // each member has its own DCS client (its own TTLs)
        ToyPostgres {
            me: name.clone(),
            world: Arc::clone(world),
        },
        PrintRouter {
            me: name.clone(),
            log,
        },
        settings,
        Arc::new(SystemClock::new()),
    );
    let status = engine.status();
    // Print each change of role, with the engine's reason.
    let mut changes = engine.status();
    let who = name.clone();
    tokio::spawn(async move {
        let mut last = None;
        while changes.changed().await {
            let now = changes.get();
            if last != Some(now.role) {
                log.line(format!("{who}: {:?}: {}", now.role, now.reason));
                last = Some(now.role);
            }
        }
    });
    let task = tokio::spawn(engine.run(async move {
        let _ = shutdown.wait_for(|stop| *stop).await;
    }));
    Node { task, status }
}

/// Polls `check` every 20 ms until it gives a value or `limit` passes.
async fn until<T>(
    what: &str,
    limit: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> Result<T, String> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check() {
            return Ok(value);
        }
        if Instant::now() > deadline {
            return Err(format!("timed out waiting for {what}"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Who led first, who took over, and whether the old leader rejoined.
#[derive(Debug)]
struct Outcome {
    first: MemberName,
    second: MemberName,
    took_over_after: Duration,
}

/// The leader every node agrees on, if all report one and exactly that
/// node is `Leader` and the others are `Replica`.
fn agreed_leader<'a>(
    nodes: impl Iterator<Item = (&'a MemberName, &'a Node)>,
) -> Option<MemberName> {
    let statuses: Vec<_> = nodes
        .map(|(name, node)| (name, node.status.get()))
        .collect();
    let leader = statuses.first()?.1.leader.clone()?;
    statuses
        .iter()
        .all(|(name, s)| {
            s.leader.as_ref() == Some(&leader)
                && s.role
                    == if **name == leader {
                        EngineRole::Leader
                    } else {
                        EngineRole::Replica
                    }
        })
        .then_some(leader)
}

async fn run() -> Result<Outcome, Box<dyn std::error::Error>> {
    let log = Log(Instant::now());
    // Short timings so the example finishes in seconds. The rule the engine
    // depends on still holds: loop_wait + 2 × retry_timeout ≤ ttl.
    let config = ClusterConfig {
        ttl: Duration::from_millis(1500),
        loop_wait: Duration::from_millis(250),
        retry_timeout: Duration::from_millis(500),
        ..ClusterConfig::default()
    };
    config.validate()?;
    let store = MemoryDcs::new(KeyLayout::new("service", "memory-ha")?);
    let world: World = Arc::default();
    let (stop, stopped) = watch::channel(false);
    let names: Vec<MemberName> = ["node1", "node2", "node3"]
        .into_iter()
        .map(MemberName::new)
        .collect::<Result<_, _>>()?;

    let mut nodes: BTreeMap<MemberName, Node> = BTreeMap::new();
    for (i, name) in names.iter().enumerate() {
        let node = start_node(
            i as u16 + 1,
            name,
            &store,
            &world,
            &config,
            log,
            stopped.clone(),
        );
        nodes.insert(name.clone(), node);
    }
    // A client committing every 50 ms on whichever node is primary.
    let client = {
        let world = Arc::clone(&world);
        tokio::spawn(async move {
            loop {
                write(&world);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };

    let first = until("the cluster to form", Duration::from_secs(15), || {
        agreed_leader(nodes.iter()).filter(|leader| {
            let pg = lock(&world);
            nodes.keys().filter(|name| *name != leader).all(|name| {
                pg.get(name).is_some_and(|n| {
                    n.running && n.upstream.as_ref().is_some_and(|u| u.member == *leader)
                })
            })
        })
    })
    .await?;
    log.line(format!(
        "cluster formed: {first} leads, the others replicate"
    ));

    // The crash: the agent stops without stepping down, PostgreSQL dies with it.
    let crashed_at = Instant::now();
    if let Some(node) = nodes.remove(&first) {
        node.task.abort();
    }
    if let Some(pg) = lock(&world).get_mut(&first) {
        pg.running = false;
        pg.crashed = true;
    }
    log.line(format!(
        "killed {first} (agent and PostgreSQL); its lock expires within ttl ({:?})",
        config.ttl
    ));

    let second = until("a new leader", Duration::from_secs(15), || {
        agreed_leader(nodes.iter()).filter(|leader| *leader != first)
    })
    .await?;
    let took_over_after = crashed_at.elapsed();
    log.line(format!(
        "{second} took over {:.2}s after the crash",
        took_over_after.as_secs_f64()
    ));

    // The old leader's agent comes back: it finds a crashed data directory
    // and another leader, checks its timeline (rewind) and rejoins.
    let index = names.iter().position(|n| *n == first).unwrap_or(0) as u16 + 1;
    let node = start_node(index, &first, &store, &world, &config, log, stopped.clone());
    nodes.insert(first.clone(), node);
    until("the old leader to rejoin", Duration::from_secs(15), || {
        let following = lock(&world).get(&first).is_some_and(|pg| {
            pg.running && pg.upstream.as_ref().is_some_and(|u| u.member == second)
        });
        (following && agreed_leader(nodes.iter()).as_ref() == Some(&second)).then_some(())
    })
    .await?;
    log.line(format!("{first} streams from {second} again"));

    // A clean stop: each engine steps down (the leader releases its lock).
    client.abort();
    stop.send(true)?;
    for (_, node) in nodes {
        tokio::time::timeout(Duration::from_secs(5), node.task).await??;
    }
    log.line("stopped");
    Ok(Outcome {
        first,
        second,
        took_over_after,
    })
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [flag, seed] = args.as_slice() {
        if flag == "--sim" {
            // Second part: matriarch-ha's simulation (feature `sim`) runs the
            // same Engine with faults on a virtual clock. It builds its own
            // runtime, so it runs outside ours.
            let report =
                matriarch_ha::sim::run(&matriarch_ha::sim::SimConfig::mixed(seed.parse()?));
            print!("{report}");
            return Ok(());
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let outcome = runtime.block_on(run())?;
    println!(
        "{} led, {} took over {:.2}s after the crash",
        outcome.first,
        outcome.second,
        outcome.took_over_after.as_secs_f64()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn another_node_takes_over_and_the_old_leader_rejoins() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let outcome = runtime.block_on(run()).unwrap();
        assert_ne!(outcome.first, outcome.second);
        // ttl (1.5 s) plus a loop or two; generous for a loaded machine.
        assert!(
            outcome.took_over_after < Duration::from_secs(8),
            "{outcome:?}"
        );
    }

    #[test]
    fn the_simulation_finds_no_violation() {
        let report = matriarch_ha::sim::run(&matriarch_ha::sim::SimConfig::mixed(1));
        assert!(report.violations.is_empty(), "{report}");
    }
}
