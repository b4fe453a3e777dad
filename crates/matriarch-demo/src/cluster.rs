//! The demo cluster: the test kit's [`LoopbackCluster`] (etcd, BIND, and three
//! `matriarch run` agents with their own PostgreSQL on 127.0.0.1, .2 and .3) with
//! the demo's names and passwords, and the waits the demo needs, which stop at
//! Ctrl-C.
//!
//! Everything it starts is stopped by [`LoopbackCluster::shutdown`] (also run on
//! drop, so on an error or Ctrl-C too).

use std::net::{Ipv4Addr, SocketAddr};
use std::ops::{Deref, DerefMut};
use std::path::Path;
use std::time::{Duration, Instant};

use matriarch_testkit::cluster::{LoopbackCluster, LoopbackOptions};

use crate::error::{DemoError, Result};
use crate::writer::{FindPrimary, Target};

pub use matriarch_testkit::cluster::LoopbackNode as Node;

/// The cluster's name (the DCS scope).
pub const SCOPE: &str = "demo";
/// The REST API user of every node.
pub const API_USER: &str = "admin";
/// The REST API password of every node.
pub const API_PASSWORD: &str = "demo-api";
/// The PostgreSQL superuser.
pub const PG_USER: &str = "postgres";
/// Its password.
pub const PG_PASSWORD: &str = "demo-pg";
/// How many nodes.
pub const NODES: usize = 3;

/// The whole demo cluster (a [`LoopbackCluster`]: its fields and methods are
/// this one's).
pub struct Cluster(LoopbackCluster);

impl Deref for Cluster {
    type Target = LoopbackCluster;

    fn deref(&self) -> &LoopbackCluster {
        &self.0
    }
}

impl DerefMut for Cluster {
    fn deref_mut(&mut self) -> &mut LoopbackCluster {
        &mut self.0
    }
}

impl Cluster {
    /// Starts etcd and BIND, writes the nodes' configurations (under `logs_dir`) and
    /// starts the three agents.
    pub fn start(matriarch: &Path, logs_dir: &Path) -> Result<Cluster> {
        Cluster::start_with(&Cluster::options(matriarch, logs_dir))
    }

    /// The demo's cluster options (scope, names, passwords, three nodes), to be
    /// changed before [`Cluster::start_with`].
    pub fn options(matriarch: &Path, logs_dir: &Path) -> LoopbackOptions {
        let mut opts = LoopbackOptions::new(SCOPE, matriarch, logs_dir);
        opts.nodes = NODES;
        opts
    }

    /// Starts the cluster `opts` describes.
    pub fn start_with(opts: &LoopbackOptions) -> Result<Cluster> {
        let cluster = LoopbackCluster::start(opts).map_err(|source| DemoError::Service {
            what: "the cluster",
            source,
        })?;
        Ok(Cluster(cluster))
    }

    /// Waits for a primary and two streaming replicas; fails early when an agent
    /// exits. The primary's index.
    pub fn wait_healthy(&mut self, timeout: Duration) -> Result<usize> {
        let start = Instant::now();
        loop {
            crate::interrupt::check()?;
            for node in &mut self.nodes {
                if let Some(status) = node.exited() {
                    return Err(DemoError::AgentExited {
                        name: node.name.clone(),
                        status,
                    });
                }
            }
            if let Some(primary) = self.healthy() {
                return Ok(primary);
            }
            if start.elapsed() > timeout {
                return Err(DemoError::Timeout {
                    what: "a primary with two streaming replicas".into(),
                    waited: timeout,
                });
            }
            crate::interrupt::sleep(Duration::from_millis(250))?;
        }
    }

    /// Waits (at most 15 s) until every agent's view of the cluster has caught up,
    /// so that `ctl list` shows the state the health checks report.
    pub fn settle(&mut self) -> Result<()> {
        match crate::interrupt::wait_for(
            "the member records to catch up",
            Duration::from_secs(15),
            Duration::from_millis(250),
            || self.settled().then_some(()),
        ) {
            Err(DemoError::Timeout { .. }) => Ok(()),
            other => other,
        }
    }

    /// Where the client writes: the DNS name, PostgreSQL's port (the same on
    /// every node), the superuser.
    pub fn writer_target(&self) -> Target {
        Target {
            find: FindPrimary::Dns(self.dns_server()),
            name: self.writer_name(),
            port: self.nodes[0].pg_port,
            user: PG_USER.to_owned(),
            password: PG_PASSWORD.to_owned(),
        }
    }

    /// Where the benchmark's client writes: the node answering 200 on REST
    /// `GET /primary` (found the same way for matriarch and Patroni).
    pub fn rest_target(&self) -> Target {
        Target {
            find: FindPrimary::Rest(
                self.nodes
                    .iter()
                    .map(|n| (n.ip, SocketAddr::from(([127, 0, 0, 1], n.api_port))))
                    .collect(),
            ),
            name: "GET /primary".to_owned(),
            port: self.nodes[0].pg_port,
            user: PG_USER.to_owned(),
            password: PG_PASSWORD.to_owned(),
        }
    }

    /// Waits until the writer's DNS name resolves to `ip` alone.
    pub fn wait_dns(&self, ip: Ipv4Addr, timeout: Duration) -> Result<()> {
        let name = self.writer_name();
        crate::interrupt::wait_for(
            "the DNS name to point at the primary",
            timeout,
            Duration::from_millis(100),
            || {
                (matriarch_testkit::dns::resolve_a(
                    self.dns_server(),
                    &name,
                    Duration::from_millis(500),
                )
                .ok()?
                    == vec![ip])
                .then_some(())
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use matriarch_testkit::cluster::Credentials;

    #[test]
    fn the_published_passwords_are_the_cluster_s() {
        let credentials = Credentials::with_prefix(SCOPE);
        assert_eq!(credentials.api_user, API_USER);
        assert_eq!(credentials.api_password, API_PASSWORD);
        assert_eq!(credentials.pg_user, PG_USER);
        assert_eq!(credentials.pg_password, PG_PASSWORD);
    }
}
