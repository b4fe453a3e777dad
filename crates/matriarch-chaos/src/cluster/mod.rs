//! The cluster under test: three etcd members, BIND, and three `matriarch run`
//! agents with their PostgreSQL, each in its own namespace of the
//! [`Lab`](crate::netns::Lab).
//!
//! Every method here runs from the client namespace (see [`crate::run`]): the REST
//! APIs, PostgreSQL, etcd and BIND are reached over the bridge, as the client
//! reaches them. Programs are started with `ip netns exec <namespace>`.
//!
//! The nodes come from the test kit's cluster harness, as the demo's and the
//! benchmarks' do: [`AgentConfig`] writes each node's YAML, [`Supervised::agent`]
//! makes its agent, [`RestApi`] and [`only_primary`] ask its REST API, and etcd's
//! and ZooKeeper's command lines are the test kit's too. What is this run's own
//! is the namespace layout with its fixed addresses (`layout.rs`), the DCS servers
//! (`dcs.rs`) and the health check (`running.rs`).
//!
//! [`AgentConfig`]: matriarch_testkit::cluster::AgentConfig
//! [`Supervised::agent`]: matriarch_testkit::cluster::Supervised::agent
//! [`RestApi`]: matriarch_testkit::cluster::RestApi
//! [`only_primary`]: matriarch_testkit::cluster::only_primary

mod dcs;
pub(crate) mod layout;
mod node;
mod running;

pub use self::dcs::{DcsServer, DcsServers};
pub use self::layout::{
    credentials, etcd_ip, hosts, node_at, node_ip, API_PORT, CLIENT, CLIENT_IP, DNS_IP, NODES,
    PG_PORT, SCOPE, WRITER, ZONE,
};
pub use self::node::{Node, Proc, Standby};
pub use self::running::{cleanup_stale_data, Cluster, ClusterSpec};
