//! An HA cluster built from matriarch's crates: the real `matriarch_ha::Engine`
//! (the same loop `matriarch run` drives) on three nodes, over `MemoryDcs`,
//! with the in-memory PostgreSQL of `matriarch_postgres::memory` (the one
//! the simulation runs, held to the same conformance suite as the real
//! controller) and a router that prints. It forms a cluster,
//! kills the leader (agent and PostgreSQL together, as a host crash would:
//! the lock is not released), prints who takes over, then restarts the old
//! leader and shows it rejoining as a replica.
//!
//! The engine only sees three traits: `Dcs` (here `MemoryDcs`), `Postgres`
//! (here `MemoryPostgres`) and `Router` (here [`PrintRouter`]). The daemon
//! passes `EtcdDcs`, `PgController` and the ELB/DNS routers instead, and adds
//! `with_fence` and `with_peer_probe`.
//!
//! Run: `cargo run -p example-memory-ha`
//! Second part, the crate's own fault-injecting simulation (virtual time):
//! `cargo run -p example-memory-ha -- --sim 42`

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use matriarch_dcs::{MemoryDcs, SystemClock};
use matriarch_ha::{Engine, EngineRole, EngineSettings, NodeSettings, StatusHandle};
use matriarch_model::{ClusterConfig, KeyLayout, MemberName, SystemId, Tags};
use matriarch_postgres::{BootstrapSpec, MemoryPostgresCluster};
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

/// A client commit on the running primary, if there is one.
fn write(postgres: &MemoryPostgresCluster) {
    let mut servers = postgres.servers();
    if let Some(primary) =
        (0..servers.all().len()).find(|&i| servers.server(i).is_running_primary())
    {
        servers.commit(primary);
    }
}

/// `name` runs as a replica streaming from `leader`.
fn follows(postgres: &MemoryPostgresCluster, name: &MemberName, leader: &MemberName) -> bool {
    let servers = postgres.servers();
    servers
        .index_of(name)
        .is_some_and(|i| servers.server(i).streams_from() == Some(leader))
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
    postgres: &MemoryPostgresCluster,
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
        bootstrap: BootstrapSpec::passwordless(),
        postgres_timeout: Duration::from_secs(5),
    };
    let engine = Engine::new(
        store.connect(), // each member has its own DCS client (its own TTLs)
        postgres.member(name.clone()),
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
    let postgres = MemoryPostgresCluster::new(SYSTEM_ID);
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
            &postgres,
            &config,
            log,
            stopped.clone(),
        );
        nodes.insert(name.clone(), node);
    }
    // A client committing every 50 ms on whichever node is primary, and
    // WAL shipping to the replicas on the same beat.
    let client = {
        let postgres = postgres.clone();
        tokio::spawn(async move {
            loop {
                postgres.servers().replicate();
                write(&postgres);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };

    let first = until("the cluster to form", Duration::from_secs(15), || {
        agreed_leader(nodes.iter()).filter(|leader| {
            nodes
                .keys()
                .filter(|name| *name != leader)
                .all(|name| follows(&postgres, name, leader))
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
    postgres.member(first.clone()).crash();
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
    let node = start_node(
        index,
        &first,
        &store,
        &postgres,
        &config,
        log,
        stopped.clone(),
    );
    nodes.insert(first.clone(), node);
    until("the old leader to rejoin", Duration::from_secs(15), || {
        let following = follows(&postgres, &first, &second);
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
