//! A cluster on loopback: etcd (one member or several), BIND, and N `matriarch run` agents with their own
//! PostgreSQL on 127.0.0.1, .2, .3, … (the same PostgreSQL port on each, so that
//! the DNS name alone says where to connect).
//!
//! Everything it starts is stopped by [`LoopbackCluster::shutdown`] (also run on
//! drop, so on an error or Ctrl-C too): agents get SIGTERM, then SIGKILL; a
//! PostgreSQL left behind is stopped, then killed; etcd, BIND and the data
//! directories go with their handles.

use std::fs;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

use super::agent::{
    keep_server_log, kill_processes_under, node_log_tails, only_primary, NodeDir, RestApi,
    Supervised,
};
use super::config::{AgentConfig, Credentials, DcsHosts, DnsRoute, Timing};
use super::patroni::PatroniConfig;
use super::setup::{node_dirs, preflight};
use crate::bind::BindServer;
use crate::error::{IoContext, Result, TestkitError};
use crate::etcd::EtcdCluster;
use crate::ports::free_port;
use crate::postgres::bin_dir;

/// What [`LoopbackCluster::start`] brings up.
#[derive(Debug, Clone)]
pub struct LoopbackOptions {
    /// The `matriarch` binary.
    pub matriarch: PathBuf,
    /// Where the nodes' configurations and logs go.
    pub logs_dir: PathBuf,
    /// The cluster's name (the DCS scope); also the prefix of the data directory.
    pub scope: String,
    /// How many nodes (at most 254).
    pub nodes: usize,
    /// Users and passwords.
    pub credentials: Credentials,
    /// The lock's timing.
    pub timing: Timing,
    /// How many etcd members (1 by default; 3 to survive the loss of one).
    pub etcd_members: usize,
    /// Which agent runs on each node.
    pub agent: AgentKind,
    /// More PostgreSQL parameters (name, YAML value) for every node.
    pub pg_parameters: Vec<(String, String)>,
}

/// The agent of each node of a [`LoopbackCluster`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentKind {
    /// `matriarch run`, keeping the DNS name on the primary.
    Matriarch,
    /// Patroni from the venv `venv` (no router: clients find the primary through
    /// the REST API's `/primary`); the same etcd, addresses and PostgreSQL settings.
    Patroni {
        /// The venv with `bin/patroni` ([`super::patroni_venv`]).
        venv: PathBuf,
    },
}

impl LoopbackOptions {
    /// Three nodes, scope `scope`, [`Credentials::with_prefix`]`(scope)`, the
    /// default timing.
    pub fn new(scope: &str, matriarch: &Path, logs_dir: &Path) -> LoopbackOptions {
        LoopbackOptions {
            matriarch: matriarch.to_path_buf(),
            logs_dir: logs_dir.to_path_buf(),
            scope: scope.to_owned(),
            nodes: 3,
            credentials: Credentials::with_prefix(scope),
            timing: Timing::default(),
            etcd_members: 1,
            agent: AgentKind::Matriarch,
            pg_parameters: Vec::new(),
        }
    }
}

/// One `matriarch run` agent and its PostgreSQL.
#[derive(Debug)]
pub struct LoopbackNode {
    /// Member name: node1, node2, ….
    pub name: String,
    /// The loopback address its PostgreSQL listens on.
    pub ip: Ipv4Addr,
    /// PostgreSQL's port.
    pub pg_port: u16,
    /// REST API port (on 127.0.0.1).
    pub api_port: u16,
    /// Its directory (data directory and server log), owned by the PostgreSQL OS user.
    pub dir: NodeDir,
    /// Its configuration file.
    pub config: PathBuf,
    /// The agent.
    pub agent: Supervised,
    /// Its REST API.
    pub rest: RestApi,
}

impl LoopbackNode {
    /// `http://127.0.0.1:<api port>`
    pub fn api(&self) -> String {
        self.rest.base.clone()
    }

    /// The agent's log.
    pub fn log(&self) -> &Path {
        self.agent.log()
    }

    /// Whether the agent process runs (as far as this harness knows).
    pub fn is_running(&mut self) -> bool {
        self.agent.is_running()
    }

    /// If the agent exited (it was started and is gone), how it ended.
    pub fn exited(&mut self) -> Option<String> {
        self.agent.exited()
    }

    /// Starts the agent (appending to its log).
    pub fn start(&mut self) -> Result<()> {
        self.agent.start()
    }

    /// The postmaster's pid, if `postmaster.pid` names a live postgres process.
    pub fn postmaster_pid(&self) -> Option<i32> {
        self.dir.postmaster_pid()
    }

    /// A node crash: SIGKILL for the agent and for PostgreSQL (the postmaster's whole
    /// process group: pg_ctl makes the postmaster a group leader; Patroni starts it
    /// in the group of a short-lived helper that called setsid). Returns when both
    /// are sent.
    pub fn crash(&mut self) {
        let postmaster = self.postmaster_pid();
        self.agent.signal(libc::SIGKILL);
        if let Some(pid) = postmaster {
            // SAFETY: getpgid(2)/getpgrp(2) read ids; kill(2) on the postmaster of
            // this node's data directory and its process group, never ours or init's.
            unsafe {
                let group = libc::getpgid(pid);
                if group > 1 && group != libc::getpgrp() {
                    libc::kill(-group, libc::SIGKILL);
                }
                libc::kill(pid, libc::SIGKILL);
            }
        }
        self.agent.kill();
    }

    /// The agent's pid, while it runs (as far as this harness knows).
    pub fn agent_pid(&self) -> Option<u32> {
        self.agent.id()
    }

    /// SIGKILL for the agent alone (its PostgreSQL is left to the write fence).
    pub fn kill_agent(&mut self) {
        self.agent.kill();
    }

    /// SIGKILL for the postmaster alone (the agent keeps running; the postmaster's
    /// children notice its death and exit). Whether there was one to kill.
    pub fn kill_postmaster(&self) -> bool {
        let Some(pid) = self.postmaster_pid() else {
            return false;
        };
        // SAFETY: kill(2) on the postmaster of this node's data directory.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
        true
    }

    /// SIGTERM to the agent (it steps down and exits; [`LoopbackNode::exited`] reaps it).
    pub fn terminate(&self) {
        self.agent.signal(libc::SIGTERM);
    }

    /// `GET path` on the REST API: status and body (status 0 when it does not answer).
    pub fn get(&self, path: &str) -> (u16, Vec<u8>) {
        self.rest.get(path)
    }

    /// `GET path` as JSON, if the API answers 200 with JSON.
    pub fn get_json(&self, path: &str) -> Option<Value> {
        self.rest.get_json(path)
    }

    /// Whether `/primary` answers 200: the leader, with PostgreSQL running as primary.
    pub fn is_primary(&self) -> bool {
        self.rest.is_primary()
    }

    /// Whether `/replica` answers 200: a running, streaming replica.
    pub fn is_replica(&self) -> bool {
        self.rest.is_replica()
    }

    /// The timeline PostgreSQL is on, from `/patroni`.
    pub fn timeline(&self) -> Option<u64> {
        self.get_json("/patroni")?.get("timeline")?.as_u64()
    }
}

/// etcd, BIND (the leader keeps `primary.<zone>` pointed at itself) and the nodes.
pub struct LoopbackCluster {
    /// The nodes.
    pub nodes: Vec<LoopbackNode>,
    /// etcd: [`LoopbackOptions::etcd_members`] members; every agent knows them all.
    pub etcd: EtcdCluster,
    /// BIND with the `primary.<zone>` name.
    pub bind: BindServer,
    /// Where the agents' logs and configurations are.
    pub logs_dir: PathBuf,
    /// The `matriarch` binary.
    pub matriarch: PathBuf,
    /// The DCS scope.
    pub scope: String,
    /// The nodes' agent.
    pub agent: AgentKind,
    dir: Option<TempDir>,
}

/// The port `port` is free on the first `nodes` loopback addresses.
fn free_on_all(port: u16, nodes: usize) -> bool {
    (1..=nodes).all(|i| TcpListener::bind((node_ip(i - 1), port)).is_ok())
}

/// The address of node `i` (0-based): 127.0.0.(i + 1).
fn node_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, u8::try_from(i + 1).unwrap_or(u8::MAX))
}

impl LoopbackCluster {
    /// Starts etcd and BIND, writes the nodes' configurations (under
    /// [`LoopbackOptions::logs_dir`]) and starts the agents (not waiting for them).
    pub fn start(opts: &LoopbackOptions) -> Result<LoopbackCluster> {
        if opts.nodes == 0 || opts.nodes > 254 {
            return Err(TestkitError::InvalidArgument(format!(
                "a loopback cluster has 1 to 254 nodes, not {}",
                opts.nodes
            )));
        }
        let user = preflight(&opts.matriarch)?;
        if TcpListener::bind((node_ip(opts.nodes - 1), 0)).is_err() {
            return Err(TestkitError::Setup(format!(
                "cannot listen on {} (each node gets its own loopback address)",
                node_ip(opts.nodes - 1)
            )));
        }
        let logs = &opts.logs_dir;
        fs::create_dir_all(logs).ctx(|| format!("creating {}", logs.display()))?;
        let etcd = EtcdCluster::start(opts.etcd_members)?;
        let bind = BindServer::start()?;
        let names: Vec<String> = (1..=opts.nodes).map(|i| format!("node{i}")).collect();
        let (root, dirs) = node_dirs(&user, &format!("matriarch-{}-", opts.scope), &names)?;
        let pg_port = (0..50)
            .filter_map(|_| free_port().ok())
            .find(|p| free_on_all(*p, opts.nodes))
            .ok_or_else(|| {
                TestkitError::Setup(format!(
                    "no port is free on 127.0.0.1 to {} at once",
                    node_ip(opts.nodes - 1)
                ))
            })?;
        let mut cluster = LoopbackCluster {
            nodes: Vec::new(),
            etcd,
            bind,
            logs_dir: logs.clone(),
            matriarch: opts.matriarch.clone(),
            scope: opts.scope.clone(),
            agent: opts.agent.clone(),
            dir: Some(root),
        };
        for (i, (name, dir)) in names.into_iter().zip(dirs).enumerate() {
            let api_port = free_port()?;
            let ip = node_ip(i);
            let agent_config = cluster.agent_config(opts, &name, ip, pg_port, api_port, &dir);
            let (config, agent) = match &opts.agent {
                AgentKind::Matriarch => {
                    Supervised::agent(&opts.matriarch, &agent_config, logs, None)?
                }
                AgentKind::Patroni { venv } => {
                    // Absolute: Patroni runs as PostgreSQL's OS user from `/`.
                    let yaml = fs::canonicalize(logs)
                        .ctx(|| format!("resolving {}", logs.display()))?
                        .join(format!("{name}.patroni.yml"));
                    cluster
                        .patroni_config(&agent_config, &dir)
                        .write(&yaml, &user)?;
                    let log = logs.join(format!("{name}.log"));
                    let _ = fs::remove_file(&log);
                    (yaml.clone(), Supervised::patroni(venv, &yaml, log, &user))
                }
            };
            cluster.nodes.push(LoopbackNode {
                rest: RestApi::new(
                    agent_config.api_listen,
                    &opts.credentials,
                    Duration::from_secs(1),
                ),
                name,
                ip,
                pg_port,
                api_port,
                dir,
                config,
                agent,
            });
        }
        for node in &mut cluster.nodes {
            node.start()?;
        }
        Ok(cluster)
    }

    fn agent_config(
        &self,
        opts: &LoopbackOptions,
        name: &str,
        ip: Ipv4Addr,
        pg_port: u16,
        api_port: u16,
        dir: &NodeDir,
    ) -> AgentConfig {
        AgentConfig {
            written_by: "matriarch-testkit's loopback cluster".into(),
            scope: opts.scope.clone(),
            name: name.to_owned(),
            api_listen: SocketAddr::from(([127, 0, 0, 1], api_port)),
            credentials: opts.credentials.clone(),
            dcs: DcsHosts::Etcd(self.etcd.client_urls()),
            timing: opts.timing,
            bootstrap_dcs: Vec::new(),
            pg_listen: SocketAddr::from((ip, pg_port)),
            data_dir: dir.data_dir(),
            bin_dir: bin_dir(),
            pg_parameters: opts.pg_parameters.clone(),
            dns: Some(DnsRoute {
                server: self.dns_server(),
                zone: self.bind.zone().to_owned(),
                writer: self.writer_name(),
                key_name: self.bind.tsig_key_name().to_owned(),
                algorithm: self.bind.tsig_algorithm().to_owned(),
                secret: self.bind.tsig_secret_base64().to_owned(),
            }),
        }
    }

    /// Every etcd member's client URL, comma-separated (for `etcdctl --endpoints`).
    pub fn etcd_endpoints(&self) -> String {
        self.etcd.client_urls().join(",")
    }

    /// The Patroni member file with the same addresses, timing and PostgreSQL
    /// settings as the matriarch node `agent`.
    fn patroni_config(&self, agent: &AgentConfig, dir: &NodeDir) -> PatroniConfig {
        PatroniConfig {
            scope: agent.scope.clone(),
            name: agent.name.clone(),
            api_listen: agent.api_listen,
            credentials: agent.credentials.clone(),
            etcd_hosts: self
                .etcd
                .client_urls()
                .iter()
                .map(|url| url.trim_start_matches("http://").to_owned())
                .collect(),
            timing: agent.timing,
            bootstrap_dcs: agent.bootstrap_dcs.clone(),
            pg_listen: agent.pg_listen,
            data_dir: agent.data_dir.clone(),
            bin_dir: agent.bin_dir.clone(),
            node_dir: dir.path().to_path_buf(),
            pg_parameters: agent.pg_parameters.clone(),
        }
    }

    /// Whether the leader keeps the DNS name on itself (matriarch's router;
    /// Patroni has none).
    pub fn routes_dns(&self) -> bool {
        self.agent == AgentKind::Matriarch
    }

    /// The zone's DNS server.
    pub fn dns_server(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.bind.port()))
    }

    /// The name that points at the primary: `primary.<zone>`.
    pub fn writer_name(&self) -> String {
        format!("primary.{}", self.bind.zone())
    }

    /// The etcd key of the leader lock.
    pub fn leader_key(&self) -> String {
        format!("/service/{}/leader", self.scope)
    }

    /// Every node's REST API, comma-separated (for `matriarch ctl --api`).
    pub fn apis(&self) -> String {
        self.nodes
            .iter()
            .map(LoopbackNode::api)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The node whose PostgreSQL listens on `ip`.
    pub fn node_at(&self, ip: Ipv4Addr) -> Option<usize> {
        self.nodes.iter().position(|n| n.ip == ip)
    }

    /// The index of the only node answering 200 on `/primary`.
    pub fn primary(&self) -> Option<usize> {
        only_primary(self.nodes.iter().map(|n| &n.rest))
    }

    /// One primary and every other node a streaming replica: the primary's index.
    pub fn healthy(&self) -> Option<usize> {
        let primary = self.primary()?;
        self.nodes
            .iter()
            .enumerate()
            .all(|(i, n)| i == primary || n.is_replica())
            .then_some(primary)
    }

    /// Whether every running agent's `/cluster` lists every node as running or
    /// streaming (the member records in etcd caught up with the cluster's state).
    pub fn settled(&mut self) -> bool {
        let count = self.nodes.len();
        let running: Vec<usize> = (0..count).filter(|i| self.nodes[*i].is_running()).collect();
        running.iter().all(|i| {
            let Some(view) = self.nodes[*i].get_json("/cluster") else {
                return false;
            };
            let Some(members) = view.get("members").and_then(|m| m.as_array()) else {
                return false;
            };
            members.len() == count
                && members.iter().all(|m| {
                    matches!(
                        m.get("state").and_then(|s| s.as_str()),
                        Some("running" | "streaming")
                    )
                })
        })
    }

    /// Runs `matriarch ctl <args>` against every node's API; its output, or why it failed.
    pub fn ctl(&self, args: &[&str]) -> String {
        let output = Command::new(&self.matriarch)
            .arg("ctl")
            .arg("--api")
            .arg(self.apis())
            .args(args)
            .stdin(Stdio::null())
            .output();
        match output {
            Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).into_owned(),
            Ok(out) => format!(
                "(matriarch ctl {} failed: {}{})",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(e) => format!("(cannot run matriarch ctl: {e})"),
        }
    }

    /// The tails of every agent's and PostgreSQL's log, and of etcd's and named's.
    pub fn log_tails(&self, lines: usize) -> String {
        let mut out = String::new();
        for node in &self.nodes {
            out.push_str(&node_log_tails(
                &node.name,
                node.log(),
                &node.dir.server_log(),
                lines,
            ));
        }
        for member in self.etcd.members() {
            out.push_str(&format!(
                "----- etcd {} -----\n{}\n",
                member.name(),
                member.log_tail()
            ));
        }
        out.push_str(&format!("----- named -----\n{}\n", self.bind.log_tail()));
        out
    }

    /// Stops everything this cluster started; safe to call twice.
    pub fn shutdown(&mut self) {
        let Some(dir) = self.dir.take() else {
            return;
        };
        // Agents first, all at once: each stops its PostgreSQL.
        for node in &self.nodes {
            node.terminate();
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline && self.nodes.iter_mut().any(LoopbackNode::is_running) {
            std::thread::sleep(Duration::from_millis(100));
        }
        for node in &mut self.nodes {
            node.agent.kill();
        }
        // Whatever a killed agent left behind: a PostgreSQL, a fence watchdog.
        for node in &self.nodes {
            if let Some(pid) = node.postmaster_pid() {
                // SAFETY: kill(2) on the postmaster of this node's data directory.
                unsafe {
                    libc::kill(pid, libc::SIGINT);
                }
            }
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && self.nodes.iter().any(|n| n.postmaster_pid().is_some()) {
            std::thread::sleep(Duration::from_millis(100));
        }
        kill_processes_under(dir.path());
        for node in &self.nodes {
            keep_server_log(&node.name, &node.dir.server_log(), &self.logs_dir);
        }
        if let Err(e) = dir.close() {
            eprintln!("warning: cannot remove the cluster's data directories: {e}");
        }
    }
}

impl Drop for LoopbackCluster {
    fn drop(&mut self) {
        self.shutdown();
        // etcd and BIND stop when their handles drop, right after this.
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_get_consecutive_loopback_addresses() {
        assert_eq!(node_ip(0), Ipv4Addr::new(127, 0, 0, 1));
        assert_eq!(node_ip(2), Ipv4Addr::new(127, 0, 0, 3));
        let opts = LoopbackOptions::new("demo", Path::new("/m"), Path::new("/l"));
        assert_eq!(opts.nodes, 3);
        assert_eq!(opts.credentials.pg_password, "demo-pg");
    }

    #[test]
    fn zero_nodes_is_refused() {
        let mut opts = LoopbackOptions::new("demo", Path::new("/m"), Path::new("/l"));
        opts.nodes = 0;
        assert!(matches!(
            LoopbackCluster::start(&opts),
            Err(TestkitError::InvalidArgument(_))
        ));
    }
}
