//! The cluster harness: real `matriarch run` agents with their PostgreSQL, shared
//! by the demo, the benchmarks and the chaos run.
//!
//! * [`LoopbackCluster`]: etcd, BIND and N agents on 127.0.0.1, .2, .3, …, each
//!   PostgreSQL on its own loopback address and the same port (the demo and the
//!   benchmarks).
//! * The pieces it is built from, for a cluster laid out elsewhere (the chaos
//!   run's network namespaces): [`preflight`], [`node_dirs`], [`AgentConfig`]
//!   (the node YAML), [`Supervised`] (a restartable agent or service, optionally
//!   in a namespace; [`Supervised::agent`] writes a node's configuration and
//!   makes its agent), [`NodeDir`], [`RestApi`], [`only_primary`],
//!   [`crate::BindConfig`] and the DNS client in [`crate::dns`].
//! * [`ScenarioCluster`]: the end-to-end tests' cluster: N agents on free
//!   ports of 127.0.0.1 sharing one DCS (etcd of its own, or any etcd or
//!   ZooKeeper), node files from YAML pieces a test adds to or edits, nodes
//!   started one by one if need be ([`ScenarioNode`]: REST, psql, `matriarch
//!   ctl`, crash and kill), one cluster at a time per test binary ([`serial`]).
//! * Patroni 4.1 in place of matriarch: [`PatroniConfig`] (a member's YAML),
//!   [`Supervised::patroni`], [`patronictl`]; [`LoopbackCluster`] runs it with
//!   [`AgentKind::Patroni`] (the failover benchmark's comparison).

mod agent;
mod config;
mod loopback;
mod patroni;
mod scenario;
mod scenario_node;
mod serial;
mod setup;

pub use agent::{
    is_postgres, keep_server_log, kill_processes_under, node_log_tails, only_primary, tail,
    NodeDir, RestApi, Supervised,
};
pub use config::{AgentConfig, Credentials, DcsHosts, DnsRoute, Timing};
pub use loopback::{AgentKind, LoopbackCluster, LoopbackNode, LoopbackOptions};
pub use patroni::{
    patroni_venv, patronictl, PatroniConfig, PATRONI_DEFAULT_TIMING, PATRONI_MIN_TIMING,
};
pub use scenario::{DcsSpec, ScenarioCluster, ScenarioOptions, SCENARIO_LOGS};
pub use scenario_node::{
    basic_auth, psql_at, psql_command, run_ctl, scenario_credentials, switchover_body,
    ScenarioNode, API_PASSWORD, API_USER, PG_PASSWORD, REPLICATION_PASSWORD,
};
pub use serial::{serial, Serial};
pub use setup::{matriarch_binary, node_dirs, preflight, target_dir};
