//! The fleet's agents: the real [`Engine`] of `matriarch run`, each on its own
//! [`EtcdDcs`] client, with the in-memory PostgreSQL twin and a router that
//! routes nothing; many of them in this one process.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use matriarch_dcs::{Dcs, DcsError, ForwardingDcs, SystemClock, WatchOutcome};
use matriarch_etcd::{EtcdConfig, EtcdDcs, ReadCounters};
use matriarch_ha::{Engine, EngineRole, EngineSettings, NodeSettings, StatusHandle};
use matriarch_model::{ClusterConfig, ClusterView, MemberName, SystemId, Tags};
use matriarch_postgres::{BootstrapSpec, MemoryPostgres, MemoryPostgresCluster};
use matriarch_router::{Endpoint, Router, RouterError, Routes};
use tokio::task::JoinHandle;

use crate::error::{DemoError, Result};

/// What the agents' DCS clients saw, summed over the fleet.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// Calls of [`Dcs::watch`]: the waits of the agents' loops. Since the
    /// etcd client keeps one watch stream open per client (its scope cache),
    /// a wait opens no etcd watch; see `watch_streams`.
    pub(crate) watch_calls: AtomicU64,
    /// Watches that returned [`WatchOutcome::Changed`]: the events delivered.
    pub(crate) watch_events: AtomicU64,
    /// etcd watch streams the agents' clients opened (one per
    /// synchronisation of a client's scope cache).
    pub(crate) watch_streams: AtomicU64,
    /// Full range reads of a scope (synchronisations and reads the cache
    /// could not answer).
    pub(crate) full_reads: AtomicU64,
    /// Views answered from a client's cache.
    pub(crate) cached_reads: AtomicU64,
}

/// A snapshot of [`Counters`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct CounterValues {
    /// Calls of [`Dcs::watch`].
    pub(crate) watch_calls: u64,
    /// Watch events delivered.
    pub(crate) watch_events: u64,
    /// etcd watch streams opened.
    pub(crate) watch_streams: u64,
    /// Full range reads.
    pub(crate) full_reads: u64,
    /// Views from the cache.
    pub(crate) cached_reads: u64,
}

impl Counters {
    pub(crate) fn read(&self) -> CounterValues {
        CounterValues {
            watch_calls: self.watch_calls.load(Ordering::Relaxed),
            watch_events: self.watch_events.load(Ordering::Relaxed),
            watch_streams: self.watch_streams.load(Ordering::Relaxed),
            full_reads: self.full_reads.load(Ordering::Relaxed),
            cached_reads: self.cached_reads.load(Ordering::Relaxed),
        }
    }
}

/// A [`Dcs`] that counts the watch events it hands to its engine, and adds
/// its client's read counters to the fleet's.
struct CountingDcs {
    inner: EtcdDcs,
    counters: Arc<Counters>,
    /// The client's read counters as last added.
    added: Mutex<ReadCounters>,
}

impl CountingDcs {
    /// Adds what the client read since the last call to the fleet's counters.
    fn add_reads(&self) {
        let now = self.inner.read_counters();
        let mut added = self.added.lock().unwrap_or_else(|e| e.into_inner());
        let add = |counter: &AtomicU64, now: u64, before: u64| {
            counter.fetch_add(now.saturating_sub(before), Ordering::Relaxed);
        };
        add(
            &self.counters.watch_streams,
            now.watch_streams,
            added.watch_streams,
        );
        add(&self.counters.full_reads, now.full_reads, added.full_reads);
        add(
            &self.counters.cached_reads,
            now.cached_reads,
            added.cached_reads,
        );
        *added = now;
    }
}

/// Counts after the views read and the waits; forwards the rest.
#[async_trait]
impl ForwardingDcs for CountingDcs {
    type Inner = EtcdDcs;

    fn inner(&self) -> &EtcdDcs {
        &self.inner
    }
    async fn read_view(&self) -> Result<ClusterView, DcsError> {
        let view = self.inner.read_view().await;
        self.add_reads();
        view
    }
    async fn watch(
        &self,
        after_revision: u64,
        timeout: Duration,
    ) -> Result<WatchOutcome, DcsError> {
        self.counters.watch_calls.fetch_add(1, Ordering::Relaxed);
        let outcome = self.inner.watch(after_revision, timeout).await;
        if matches!(outcome, Ok(WatchOutcome::Changed)) {
            self.counters.watch_events.fetch_add(1, Ordering::Relaxed);
        }
        self.add_reads();
        outcome
    }
}

/// Clients find no primary through this fleet: the router has nothing to do.
struct NoRouter;

#[async_trait]
impl Router for NoRouter {
    fn name(&self) -> &str {
        "none"
    }
    async fn route(&self, _routes: &Routes) -> Result<(), RouterError> {
        Ok(())
    }
    async fn withdraw(&self, _member: &Endpoint) -> Result<(), RouterError> {
        Ok(())
    }
}

/// What every agent of the fleet shares: etcd's endpoints, the timing, the counters.
pub(crate) struct FleetSetup {
    /// The etcd members' client URLs.
    pub(crate) endpoints: Vec<String>,
    /// ttl, loop_wait, retry_timeout.
    pub(crate) config: ClusterConfig,
    /// The watch counters.
    pub(crate) counters: Arc<Counters>,
}

/// One agent: its engine task and a handle on its status.
pub(crate) struct Agent {
    pub(crate) name: MemberName,
    pub(crate) postgres: MemoryPostgres,
    pub(crate) status: StatusHandle,
    task: JoinHandle<()>,
}

impl Agent {
    /// The agent dies without stepping down (its lock stays until the ttl).
    pub(crate) fn kill(&self) {
        self.task.abort();
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One cluster of the fleet: three agents on a shared in-memory PostgreSQL.
pub(crate) struct FleetCluster {
    index: usize,
    pub(crate) scope: String,
    pub(crate) postgres: MemoryPostgresCluster,
    pub(crate) agents: Vec<Agent>,
}

/// Members per cluster.
pub(crate) const MEMBERS: usize = 3;

impl FleetCluster {
    /// Starts cluster `index` (scope `fleet-<index>`) with its three agents.
    pub(crate) fn start(setup: &FleetSetup, index: usize) -> Result<FleetCluster> {
        let scope = format!("fleet-{index:04}");
        let postgres =
            MemoryPostgresCluster::new(SystemId(7_500_000_000_000_000_000 + index as u64));
        let mut cluster = FleetCluster {
            index,
            scope,
            postgres,
            agents: Vec::with_capacity(MEMBERS),
        };
        for member in 0..MEMBERS {
            let agent = cluster.start_agent(setup, member)?;
            cluster.agents.push(agent);
        }
        Ok(cluster)
    }

    /// Starts (or restarts, on its old data) member `member` (0-based).
    pub(crate) fn start_agent(&self, setup: &FleetSetup, member: usize) -> Result<Agent> {
        let name = MemberName::new(format!("node{}", member + 1))
            .map_err(|e| DemoError::Setup(format!("member name: {e}")))?;
        // Each agent starts on another etcd member, as agents configured with
        // the endpoints in another order would: the load is spread.
        let mut endpoints = setup.endpoints.clone();
        let first = member % endpoints.len().max(1);
        endpoints.rotate_left(first);
        let etcd = EtcdConfig::new(endpoints, self.scope.clone())
            .with_retry_timeout(setup.config.retry_timeout);
        let dcs = EtcdDcs::new(&etcd)
            .map_err(|e| DemoError::Setup(format!("etcd client for {}/{name}: {e}", self.scope)))?;
        // Published in the member record only; nothing connects to it.
        let host = format!(
            "10.{}.{}.{}",
            self.index / 256 % 256,
            self.index % 256,
            member + 1
        );
        let settings = EngineSettings {
            node: NodeSettings {
                name: name.clone(),
                tags: Tags::default(),
                conn_url: format!("postgres://{host}:5432/postgres"),
                api_url: format!("http://{host}:8008/patroni"),
            },
            bootstrap_config: setup.config.clone(),
            bootstrap: BootstrapSpec::passwordless(),
            postgres_timeout: Duration::from_secs(5),
        };
        let postgres = self.postgres.member(name.clone());
        let engine = Engine::new(
            CountingDcs {
                inner: dcs,
                counters: Arc::clone(&setup.counters),
                added: Mutex::new(ReadCounters::default()),
            },
            postgres.clone(),
            NoRouter,
            settings,
            Arc::new(SystemClock::new()),
        );
        let status = engine.status();
        let task = tokio::spawn(engine.run(std::future::pending()));
        Ok(Agent {
            name,
            postgres,
            status,
            task,
        })
    }

    /// The index of the agent that leads a healthy cluster: it is `Leader` with
    /// a running primary, the others are `Replica`s streaming from it.
    pub(crate) fn healthy_leader(&self) -> Option<usize> {
        let statuses: Vec<_> = self.agents.iter().map(|a| a.status.get()).collect();
        let leader = statuses.iter().position(|s| s.role == EngineRole::Leader)?;
        let servers = self.postgres.servers();
        let leader_name = &self.agents[leader].name;
        let healthy = self.agents.iter().zip(&statuses).all(|(agent, status)| {
            let server = servers.server(agent.postgres.index());
            if agent.name == *leader_name {
                server.is_running_primary()
            } else {
                status.role == EngineRole::Replica && server.streams_from() == Some(leader_name)
            }
        });
        healthy.then_some(leader)
    }

    /// The index of an agent other than `old` that leads with a promoted primary.
    pub(crate) fn new_leader(&self, old: usize) -> Option<usize> {
        let servers = self.postgres.servers();
        self.agents.iter().enumerate().position(|(i, agent)| {
            i != old
                && agent.status.get().role == EngineRole::Leader
                && servers.server(agent.postgres.index()).is_running_primary()
        })
    }
}
