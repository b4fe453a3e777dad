//! The running cluster: starting its DCS, BIND and agents, the health check,
//! the logs, and stopping everything.

use std::ffi::OsString;
use std::fs;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use matriarch_testkit::cluster::{
    keep_server_log, node_dirs, node_log_tails, only_primary, preflight, tail, AgentConfig,
    DnsRoute, NodeDir, RestApi, Supervised, Timing,
};
use matriarch_testkit::dns::resolve_a;
use matriarch_testkit::{bin_dir, named_args, random_tsig_secret, BindConfig, BIND_TSIG_ALGORITHM};
use tempfile::TempDir;

use super::dcs::{self, DcsServers};
use super::layout::{
    credentials, node_ip, API_PORT, DATA_PREFIX, DNS_IP, NODES, PG_PORT, SCOPE, TSIG_KEY, WRITER,
    ZONE,
};
use super::node::{Node, Proc};
use crate::error::{ChaosError, Result};
use crate::netns::Lab;
use crate::settings::{Dcs, Mode};
use crate::sys;

/// Removes the data directories (`/tmp/matriarch-chaos-<pid>-*`) of chaos runs
/// whose process is gone; run after [`crate::netns::cleanup_stale`] killed their
/// processes. Returns how many it removed.
pub fn cleanup_stale_data() -> usize {
    let Ok(entries) = fs::read_dir("/tmp") else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(DATA_PREFIX)
            .and_then(|rest| rest.split_once('-'))
            .and_then(|(pid, _)| pid.parse::<i32>().ok())
        else {
            continue;
        };
        if !sys::alive(pid) && fs::remove_dir_all(entry.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

/// The running cluster.
pub struct Cluster<'lab> {
    /// The namespaces.
    pub lab: &'lab Lab,
    /// The PostgreSQL nodes.
    pub nodes: Vec<Node>,
    /// The DCS: its three servers (etcd members, or ZooKeeper servers with
    /// `--dcs zookeeper`) and raw access to its keys.
    pub dcs: DcsServers,
    /// BIND.
    pub named: Proc,
    /// Where logs and configurations go (`target/chaos/<run>/`).
    pub logs: PathBuf,
    /// The synchronous mode of the run.
    pub mode: Mode,
    data: Option<TempDir>,
}

/// Everything that varies per run of [`Cluster::start`].
pub struct ClusterSpec<'a> {
    /// The `matriarch` binary.
    pub matriarch: &'a Path,
    /// Logs and configurations.
    pub logs: &'a Path,
    /// Replication mode.
    pub mode: Mode,
    /// ttl, loop_wait, retry_timeout in seconds.
    pub timing: (u64, u64, u64),
    /// The DCS.
    pub dcs: Dcs,
}

/// BIND's program.
const NAMED: &str = "/usr/sbin/named";

/// Writes BIND's files into `dir` and starts it in the `dns` namespace, on port
/// 53 of [`DNS_IP`], not waiting for it.
fn start_named(lab: &Lab, logs: &Path, dir: &Path, secret: &str) -> Result<Proc> {
    fs::create_dir_all(dir)
        .map_err(|e| ChaosError::io(format!("creating {}", dir.display()), e))?;
    let conf = BindConfig {
        dir,
        listen: DNS_IP,
        port: 53,
        zone: ZONE,
        key_name: TSIG_KEY,
        secret,
        record_ttl: 1,
    }
    .write()?;
    let mut argv: Vec<OsString> = vec![NAMED.into()];
    argv.extend(named_args(&conf));
    let mut named = Proc::in_namespace(&lab.ns("dns"), argv, logs.join("named.log"));
    named.start()?;
    Ok(named)
}

impl<'lab> Cluster<'lab> {
    /// Starts etcd and BIND, then the three agents (not waiting for them).
    pub fn start(lab: &'lab Lab, spec: &ClusterSpec<'_>) -> Result<Cluster<'lab>> {
        let user = preflight(spec.matriarch).map_err(|source| ChaosError::Testkit {
            context: "checking the agents' programs".into(),
            source,
        })?;
        for program in dcs::programs(spec.dcs).into_iter().chain([NAMED]) {
            if !Path::new(program).is_file() {
                return Err(ChaosError::Setup(format!(
                    "{program} is missing: run `cargo xtask deps`"
                )));
            }
        }
        fs::create_dir_all(spec.logs)
            .map_err(|e| ChaosError::io(format!("creating {}", spec.logs.display()), e))?;
        let names: Vec<String> = (1..=NODES).map(|i| format!("node{i}")).collect();
        let (data, dirs) = node_dirs(
            &user,
            &format!("{DATA_PREFIX}{}-", std::process::id()),
            &names,
        )
        .map_err(|source| ChaosError::Testkit {
            context: "creating the data directories".into(),
            source,
        })?;
        // etcd or ZooKeeper: three servers, all started before any waits for the others.
        let dcs = DcsServers::start(lab, spec.dcs, spec.logs, data.path())?;
        let secret = random_tsig_secret()?;
        let named = start_named(lab, spec.logs, &data.path().join("dns"), &secret)?;
        let mut cluster = Cluster {
            lab,
            nodes: Vec::new(),
            dcs,
            named,
            logs: spec.logs.to_path_buf(),
            mode: spec.mode,
            data: None,
        };
        for (i, (name, dir)) in names.into_iter().zip(dirs).enumerate() {
            let short = format!("n{}", i + 1);
            let ip = node_ip(i);
            let config = agent_config(&name, ip, &dir, spec, &secret);
            let rest = RestApi::new(
                config.api_listen,
                &config.credentials,
                Duration::from_millis(700),
            );
            let namespace = lab.ns(&short);
            let (_, agent) =
                Supervised::agent(spec.matriarch, &config, spec.logs, Some(&namespace))?;
            cluster.nodes.push(Node {
                name,
                short,
                ip,
                dir,
                agent,
                rest,
            });
        }
        cluster.data = Some(data);
        cluster.dcs.wait_leader(Duration::from_secs(60))?;
        cluster.wait_dns_server(Duration::from_secs(30))?;
        for node in &mut cluster.nodes {
            node.agent.start()?;
        }
        Ok(cluster)
    }

    fn wait_dns_server(&self, timeout: Duration) -> Result<()> {
        sys::wait_for(
            "BIND to answer",
            timeout,
            Duration::from_millis(100),
            || resolve_a(self.dns_server(), WRITER, Duration::from_millis(300)).ok(),
        )
        .map(drop)
    }

    /// BIND's address.
    pub fn dns_server(&self) -> SocketAddr {
        SocketAddr::from((DNS_IP, 53))
    }

    /// The addresses the writer's name resolves to now.
    pub fn writer_addrs(&self) -> Option<Vec<Ipv4Addr>> {
        resolve_a(self.dns_server(), WRITER, Duration::from_millis(300)).ok()
    }

    /// The key of the leader lock.
    pub fn key(&self, suffix: &str) -> String {
        format!("/service/{SCOPE}/{suffix}")
    }

    /// A healthy cluster: exactly one node answers `/primary`, the other two
    /// `/replica`, the primary's `/patroni` lists both as streaming (and, in the
    /// synchronous modes, one as synchronous), the writer's name points at the
    /// primary, and etcd has a leader all three members agree on. The primary.
    pub fn healthy(&mut self) -> Option<usize> {
        let primary = self.primary()?;
        for (i, node) in self.nodes.iter().enumerate() {
            if i != primary && !node.rest.is_replica() {
                return None;
            }
        }
        let standbys = self.nodes[primary].standbys()?;
        if standbys.iter().filter(|s| s.streaming).count() < NODES - 1 {
            return None;
        }
        if self.mode.is_synchronous() && !standbys.iter().any(|s| s.synchronous) {
            return None;
        }
        if self.writer_addrs()? != vec![self.nodes[primary].ip] {
            return None;
        }
        self.dcs.leader(true)?;
        for member in &mut self.dcs.servers {
            if !member.proc.is_running() {
                return None;
            }
        }
        Some(primary)
    }

    /// Waits until [`Cluster::healthy`] holds with the same primary for `stable`
    /// (longer than the REST API's 1 s cache of PostgreSQL's state, so that a
    /// check right after a fault cannot pass on stale answers). The primary.
    pub fn wait_healthy(&mut self, timeout: Duration, stable: Duration) -> Result<usize> {
        let mut since: Option<(usize, std::time::Instant)> = None;
        sys::wait_for(
            "a healthy cluster (a primary, two streaming replicas, the DNS name on it)",
            timeout,
            Duration::from_millis(200),
            || {
                match (self.healthy(), since) {
                    (Some(p), Some((q, t))) if p == q => {
                        return (t.elapsed() >= stable).then_some(p);
                    }
                    (Some(p), _) => since = Some((p, std::time::Instant::now())),
                    (None, _) => since = None,
                }
                None
            },
        )
    }

    /// The primary as the REST APIs report it (exactly one `/primary`).
    pub fn primary(&self) -> Option<usize> {
        only_primary(self.nodes.iter().map(|n| &n.rest))
    }

    /// The last `lines` lines of every agent's, PostgreSQL's, etcd's and BIND's log.
    pub fn log_tails(&self, lines: usize) -> String {
        let mut out = String::new();
        for node in &self.nodes {
            out.push_str(&node_log_tails(
                &node.name,
                node.agent.log(),
                &node.server_log(),
                lines,
            ));
        }
        for member in &self.dcs.servers {
            out.push_str(&format!(
                "----- etcd {} -----\n{}\n",
                member.name,
                tail(member.proc.log(), lines / 4)
            ));
        }
        out
    }

    /// Copies the PostgreSQL server logs next to the agents' logs.
    pub fn keep_server_logs(&self) {
        for node in &self.nodes {
            keep_server_log(&node.name, &node.server_log(), &self.logs);
        }
    }

    /// Stops everything: agents, PostgreSQL, etcd and BIND (by killing every process
    /// in the node, etcd and DNS namespaces), keeps the server logs, removes the
    /// data directories.
    pub fn shutdown(&mut self) {
        let Some(data) = self.data.take() else {
            return;
        };
        for node in &mut self.nodes {
            node.agent.kill();
            self.lab.kill_all(&node.short);
        }
        for member in &mut self.dcs.servers {
            member.proc.kill();
            self.lab.kill_all(&member.name);
        }
        self.named.kill();
        self.lab.kill_all("dns");
        self.keep_server_logs();
        if let Err(e) = data.close() {
            eprintln!("warning: cannot remove the chaos run's data directories: {e}");
        }
    }
}

impl Drop for Cluster<'_> {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The configuration of node `name` at `ip`.
fn agent_config(
    name: &str,
    ip: Ipv4Addr,
    dir: &NodeDir,
    spec: &ClusterSpec<'_>,
    secret: &str,
) -> AgentConfig {
    let (ttl, loop_wait, retry_timeout) = spec.timing;
    let sync: &[&str] = match spec.mode {
        Mode::Synchronous => &["synchronous_mode: true"],
        Mode::Strict => &["synchronous_mode: true", "synchronous_mode_strict: true"],
        Mode::Quorum => &["synchronous_mode: quorum"],
        Mode::Asynchronous => &["synchronous_mode: false"],
    };
    AgentConfig {
        written_by: "matriarch-chaos".into(),
        scope: SCOPE.into(),
        name: name.into(),
        api_listen: SocketAddr::from((ip, API_PORT)),
        credentials: credentials(),
        dcs: dcs::hosts(spec.dcs),
        timing: Timing::from_secs_f64(ttl as f64, loop_wait as f64, retry_timeout as f64),
        bootstrap_dcs: sync.iter().map(|l| (*l).to_owned()).collect(),
        pg_listen: SocketAddr::from((ip, PG_PORT)),
        data_dir: dir.data_dir(),
        bin_dir: bin_dir(),
        // Epoch timestamps with milliseconds: the checker reads promotions from here.
        pg_parameters: vec![("log_line_prefix".into(), "'%n [%p] '".into())],
        dns: Some(DnsRoute {
            server: SocketAddr::from((DNS_IP, 53)),
            zone: ZONE.into(),
            writer: WRITER.into(),
            key_name: TSIG_KEY.into(),
            algorithm: BIND_TSIG_ALGORITHM.into(),
            secret: secret.into(),
        }),
    }
}
