//! The demo cluster: etcd, BIND, and three `matriarch run` agents with their own
//! PostgreSQL, on the loopback addresses 127.0.0.1, 127.0.0.2 and 127.0.0.3 (the
//! same PostgreSQL port on each, so that the DNS name alone says where to connect).
//!
//! Everything it starts is stopped by [`Cluster::shutdown`] (also run on drop, so
//! on an error or Ctrl-C too): agents get SIGTERM, then SIGKILL; a PostgreSQL left
//! behind is killed; etcd, BIND and the data directories go with their handles.

use std::fs;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use matriarch_testkit::{
    bin_dir, free_port, http_request_timeout, BindServer, EtcdServer, PgOsUser,
};
use tempfile::TempDir;

use crate::error::{DemoError, Result};

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

/// One `matriarch run` agent and its PostgreSQL.
pub struct Node {
    /// Member name: node1, node2, node3.
    pub name: String,
    /// The loopback address its PostgreSQL listens on.
    pub ip: Ipv4Addr,
    /// PostgreSQL's port.
    pub pg_port: u16,
    /// REST API port (on 127.0.0.1).
    pub api_port: u16,
    /// Its directory (data directory and server log), owned by the PostgreSQL OS user.
    pub dir: PathBuf,
    /// Its configuration file.
    pub config: PathBuf,
    /// The agent's log.
    pub log: PathBuf,
    child: Option<Child>,
}

impl Node {
    /// The data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// PostgreSQL's server log (written by pg_ctl).
    pub fn server_log(&self) -> PathBuf {
        self.dir.join("data.log")
    }

    /// `http://127.0.0.1:<api port>`
    pub fn api(&self) -> String {
        format!("http://127.0.0.1:{}", self.api_port)
    }

    /// Whether the agent process runs (as far as this demo knows).
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut().map(Child::try_wait) {
            Some(Ok(None)) => true,
            Some(_) => {
                self.child = None;
                false
            }
            None => false,
        }
    }

    /// If the agent exited (it was started and is gone), how it ended.
    pub fn exited(&mut self) -> Option<String> {
        let status = self.child.as_mut()?.try_wait();
        match status {
            Ok(None) => None,
            Ok(Some(status)) => {
                self.child = None;
                Some(status.to_string())
            }
            Err(e) => Some(format!("cannot wait for it: {e}")),
        }
    }

    /// Starts the agent (appending to its log).
    pub fn start(&mut self, matriarch: &Path) -> Result<()> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| DemoError::io(format!("opening {}", self.log.display()), e))?;
        let log2 = log
            .try_clone()
            .map_err(|e| DemoError::io(format!("opening {}", self.log.display()), e))?;
        let child = Command::new(matriarch)
            .arg("run")
            .arg("--config")
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            // Its own process group: a terminal's Ctrl-C reaches the demo alone,
            // which then stops the agents in order.
            .process_group(0)
            .spawn()
            .map_err(|e| DemoError::io(format!("starting {}", matriarch.display()), e))?;
        self.child = Some(child);
        Ok(())
    }

    /// The postmaster's pid, if `postmaster.pid` names a live postgres process.
    pub fn postmaster_pid(&self) -> Option<i32> {
        let text = fs::read_to_string(self.data_dir().join("postmaster.pid")).ok()?;
        let pid: i32 = text.lines().next()?.trim().parse().ok()?;
        let comm = fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
        (comm.starts_with("postgres") || comm.starts_with("postmaster")).then_some(pid)
    }

    /// A node crash: SIGKILL for the agent and for PostgreSQL (the postmaster's whole
    /// process group: pg_ctl makes it a group leader). Returns when both are sent.
    pub fn crash(&mut self) {
        let postmaster = self.postmaster_pid();
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
        }
        if let Some(pid) = postmaster {
            // SAFETY: kill(2) on the postmaster of this node's data directory.
            unsafe {
                libc::kill(-pid, libc::SIGKILL);
                libc::kill(pid, libc::SIGKILL);
            }
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
        }
    }

    /// `GET path` on the REST API: status and body (status 0 when it does not answer).
    pub fn get(&self, path: &str) -> (u16, Vec<u8>) {
        match http_request_timeout(
            "GET",
            &format!("{}{path}", self.api()),
            &[],
            b"",
            Duration::from_secs(1),
        ) {
            Ok(response) => (response.status, response.body),
            Err(_) => (0, Vec::new()),
        }
    }

    /// `GET path` as JSON, if the API answers 200 with JSON.
    pub fn get_json(&self, path: &str) -> Option<serde_json::Value> {
        let (status, body) = self.get(path);
        (status == 200)
            .then(|| serde_json::from_slice(&body).ok())
            .flatten()
    }

    /// Whether `/primary` answers 200: the leader, with PostgreSQL running as primary.
    pub fn is_primary(&self) -> bool {
        self.get("/primary").0 == 200
    }

    /// Whether `/replica` answers 200: a running, streaming replica.
    pub fn is_replica(&self) -> bool {
        self.get("/replica").0 == 200
    }

    /// The timeline PostgreSQL is on, from `/patroni`.
    pub fn timeline(&self) -> Option<u64> {
        self.get_json("/patroni")?.get("timeline")?.as_u64()
    }

    /// The last `lines` lines of a file.
    pub fn tail(path: &Path, lines: usize) -> String {
        let text = match fs::read(path) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(e) => return format!("(cannot read {}: {e})", path.display()),
        };
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// The agent's pid, while it runs.
    pub fn agent_pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL for the agent alone (its PostgreSQL is left to the write fence).
    pub fn kill_agent(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGKILL for the postmaster alone (the agent keeps running; the postmaster's
    /// children notice its death and exit). Whether there was one to kill.
    pub fn kill_postmaster(&self) -> bool {
        match self.postmaster_pid() {
            Some(pid) => {
                // SAFETY: kill(2) on the postmaster of this node's data directory.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
                true
            }
            None => false,
        }
    }

    /// SIGTERM to the agent (it steps down and exits; [`Node::exited`] reaps it).
    pub fn terminate(&self) {
        if let Some(child) = &self.child {
            if let Ok(pid) = i32::try_from(child.id()) {
                // SAFETY: kill(2) on our own child.
                unsafe {
                    libc::kill(pid, libc::SIGTERM);
                }
            }
        }
    }
}

/// The whole demo cluster.
pub struct Cluster {
    /// The three nodes.
    pub nodes: Vec<Node>,
    /// etcd.
    pub etcd: EtcdServer,
    /// BIND with the `primary.<zone>` name.
    pub bind: BindServer,
    /// Where the agents' logs and configurations are (`target/demo`).
    pub logs_dir: PathBuf,
    /// The `matriarch` binary.
    pub matriarch: PathBuf,
    dir: Option<TempDir>,
}

/// The port `port` is free on all three loopback addresses.
fn free_on_all(port: u16) -> bool {
    (1..=NODES as u8).all(|i| TcpListener::bind((Ipv4Addr::new(127, 0, 0, i), port)).is_ok())
}

impl Cluster {
    /// Starts etcd and BIND, writes the nodes' configurations (under `logs_dir`) and
    /// starts the three agents.
    pub fn start(matriarch: &Path, logs_dir: &Path) -> Result<Cluster> {
        if !matriarch.is_file() {
            return Err(DemoError::Setup(format!(
                "the matriarch binary {} does not exist (cargo build -p matriarch)",
                matriarch.display()
            )));
        }
        let user = PgOsUser::detect().map_err(|source| DemoError::Service {
            what: "PostgreSQL (its OS user)",
            source,
        })?;
        let pg_ctl = bin_dir().join("pg_ctl");
        if !pg_ctl.is_file() {
            return Err(DemoError::Setup(format!(
                "PostgreSQL 15 is missing ({} not found): run `cargo xtask deps`",
                pg_ctl.display()
            )));
        }
        if TcpListener::bind((Ipv4Addr::new(127, 0, 0, 3), 0)).is_err() {
            return Err(DemoError::Setup(
                "cannot listen on 127.0.0.2 and 127.0.0.3 (the demo gives each node its own \
                 loopback address)"
                    .into(),
            ));
        }
        fs::create_dir_all(logs_dir)
            .map_err(|e| DemoError::io(format!("creating {}", logs_dir.display()), e))?;
        let etcd = EtcdServer::start().map_err(|source| DemoError::Service {
            what: "etcd",
            source,
        })?;
        let bind = BindServer::start().map_err(|source| DemoError::Service {
            what: "BIND (named)",
            source,
        })?;
        let dir = user
            .tempdir("matriarch-demo-")
            .map_err(|source| DemoError::Service {
                what: "the data directory",
                source,
            })?;
        let pg_port = (0..50)
            .filter_map(|_| free_port().ok())
            .find(|p| free_on_all(*p))
            .ok_or_else(|| {
                DemoError::Setup("no port is free on 127.0.0.1, .2 and .3 at once".into())
            })?;
        let mut cluster = Cluster {
            nodes: Vec::new(),
            etcd,
            bind,
            logs_dir: logs_dir.to_path_buf(),
            matriarch: matriarch.to_path_buf(),
            dir: None,
        };
        for i in 0..NODES {
            let name = format!("node{}", i + 1);
            let node_dir = dir.path().join(&name);
            fs::create_dir_all(&node_dir)
                .map_err(|e| DemoError::io(format!("creating {}", node_dir.display()), e))?;
            user.chown(&node_dir).map_err(|source| DemoError::Service {
                what: "the data directory",
                source,
            })?;
            let api_port = free_port().map_err(|source| DemoError::Service {
                what: "the REST API (no free port)",
                source,
            })?;
            let ip = Ipv4Addr::new(127, 0, 0, i as u8 + 1);
            let config = logs_dir.join(format!("{name}.yaml"));
            let log = logs_dir.join(format!("{name}.log"));
            let _ = fs::remove_file(&log);
            let node = Node {
                name,
                ip,
                pg_port,
                api_port,
                dir: node_dir,
                config,
                log,
                child: None,
            };
            fs::write(&node.config, cluster.node_yaml(&node))
                .map_err(|e| DemoError::io(format!("writing {}", node.config.display()), e))?;
            cluster.nodes.push(node);
        }
        cluster.dir = Some(dir);
        for node in &mut cluster.nodes {
            node.start(matriarch)?;
        }
        Ok(cluster)
    }

    /// The zone's DNS server.
    pub fn dns_server(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.bind.port()))
    }

    /// The name that points at the primary: `primary.matriarch.test`.
    pub fn writer_name(&self) -> String {
        format!("primary.{}", self.bind.zone())
    }

    /// The etcd key of the leader lock.
    pub fn leader_key(&self) -> String {
        format!("/service/{SCOPE}/leader")
    }

    /// Every node's REST API, comma-separated (for `matriarch ctl --api`).
    pub fn apis(&self) -> String {
        self.nodes
            .iter()
            .map(Node::api)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The node whose PostgreSQL listens on `ip`.
    pub fn node_at(&self, ip: Ipv4Addr) -> Option<usize> {
        self.nodes.iter().position(|n| n.ip == ip)
    }

    fn node_yaml(&self, node: &Node) -> String {
        let etcd = self.etcd.client_url();
        format!(
            "# matriarch demo: {name} (written by `cargo xtask demo`).
scope: {SCOPE}
name: {name}
log:
  level: info
restapi:
  listen: 127.0.0.1:{api_port}
  authentication:
    username: {API_USER}
    password: {API_PASSWORD}
etcd3:
  hosts: {etcd}
bootstrap:
  initdb: [--no-sync]
  # The dynamic configuration at its defaults: the leader lock lives 5 s.
  dcs:
    ttl: 5
    loop_wait: 1
    retry_timeout: 2
postgresql:
  listen: {ip}:{pg_port}
  data_dir: {data_dir}
  bin_dir: {bin_dir}
  authentication:
    superuser: {{username: {PG_USER}, password: {PG_PASSWORD}}}
    replication: {{username: replicator, password: demo-replication}}
  parameters:
    # The demo kills processes, not machines: the OS keeps what was written.
    fsync: 'off'
    wal_keep_size: 128MB
router:
  dns:
    server: 127.0.0.1:{dns_port}
    zone: {zone}
    writer: {writer}
    ttl: 1
    tsig:
      key_name: {key_name}
      algorithm: {algorithm}
      secret: {secret}
",
            name = node.name,
            api_port = node.api_port,
            ip = node.ip,
            pg_port = node.pg_port,
            data_dir = node.data_dir().display(),
            bin_dir = bin_dir().display(),
            dns_port = self.bind.port(),
            zone = self.bind.zone(),
            writer = self.writer_name(),
            key_name = self.bind.tsig_key_name(),
            algorithm = self.bind.tsig_algorithm(),
            secret = self.bind.tsig_secret_base64(),
        )
    }

    /// The index of the only node answering 200 on `/primary`.
    pub fn primary(&self) -> Option<usize> {
        let primaries: Vec<usize> = (0..self.nodes.len())
            .filter(|i| self.nodes[*i].is_primary())
            .collect();
        match primaries.as_slice() {
            [one] => Some(*one),
            _ => None,
        }
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
            out.push_str(&format!(
                "----- {} agent ({}) -----\n{}\n",
                node.name,
                node.log.display(),
                Node::tail(&node.log, lines)
            ));
            out.push_str(&format!(
                "----- {} PostgreSQL (kept as {}) -----\n{}\n",
                node.name,
                self.logs_dir
                    .join(format!("{}-postgresql.log", node.name))
                    .display(),
                Node::tail(&node.server_log(), lines / 2)
            ));
        }
        out.push_str(&format!(
            "----- etcd -----\n{}\n----- named -----\n{}\n",
            self.etcd.member().log_tail(),
            self.bind.log_tail()
        ));
        out
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

    /// Waits until the writer's DNS name resolves to `ip` alone.
    pub fn wait_dns(&self, ip: Ipv4Addr, timeout: Duration) -> Result<()> {
        let name = self.writer_name();
        crate::interrupt::wait_for(
            "the DNS name to point at the primary",
            timeout,
            Duration::from_millis(100),
            || {
                (crate::dns::resolve_a(self.dns_server(), &name, Duration::from_millis(500))
                    .ok()?
                    == vec![ip])
                .then_some(())
            },
        )
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
        while Instant::now() < deadline && self.nodes.iter_mut().any(Node::is_running) {
            std::thread::sleep(Duration::from_millis(100));
        }
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
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
            let _ = fs::copy(
                node.server_log(),
                self.logs_dir.join(format!("{}-postgresql.log", node.name)),
            );
        }
        if let Err(e) = dir.close() {
            eprintln!("warning: cannot remove the demo's data directories: {e}");
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.shutdown();
        // etcd and BIND stop when their handles drop, right after this.
    }
}

/// SIGKILLs every process whose command line names a path under `dir` (the demo's
/// own temporary directory: postgres processes, fence watchdogs).
fn kill_processes_under(dir: &Path) {
    let needle = dir.display().to_string();
    let me = std::process::id();
    let Ok(entries) = fs::read_dir("/proc") else {
        return;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(&needle) {
            if let Ok(pid) = i32::try_from(pid) {
                // SAFETY: kill(2) on a process started for this demo's directory.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
    }
}
