//! The end-to-end tests' cluster: N `matriarch run` agents on free loopback
//! ports sharing one DCS (an etcd of its own, or one the test gives), each node
//! file written from [`ScenarioOptions`]' YAML pieces so that a test can add any
//! section or edit the file before a start. Unlike [`super::LoopbackCluster`]
//! there is no BIND and no name; nodes may be configured and started one by one.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::agent::{keep_server_log, node_log_tails, NodeDir};
use super::scenario_node::{
    switchover_body, ScenarioNode, API_PASSWORD, API_USER, PG_PASSWORD, REPLICATION_PASSWORD,
};
use super::serial::{serial, Serial};
use crate::etcd::EtcdServer;
use crate::haproxy::{HaProxy, HaProxyBackend};
use crate::http::HttpResponse;
use crate::ports::free_port;
use crate::postgres::{bin_dir, PgOsUser};
use crate::wait::wait_for;

/// Where [`ScenarioCluster`]'s drop copies every agent's log, named after the
/// test thread.
pub const SCENARIO_LOGS: &str = "/tmp/matriarch-e2e-logs";

/// The DCS section of the nodes.
#[derive(Clone, Debug)]
pub enum DcsSpec {
    /// `etcd3: {hosts: ...}`
    Etcd(String),
    /// `zookeeper: {hosts: ...}`
    ZooKeeper(String),
}

/// What the nodes' files hold beyond the harness's own settings.
#[derive(Clone, Debug)]
pub struct ScenarioOptions {
    /// The `matriarch` binary (by default the one beside the running test
    /// binary: cargo's `target/<profile>/matriarch`).
    pub matriarch: PathBuf,
    /// `bootstrap.dcs` YAML (indented by 4).
    pub dcs: String,
    /// Extra top-level YAML appended to each node's config; `{name}` is replaced.
    pub extra: String,
    /// Per-node tags YAML (indented by 2), by index, after `failover_priority: 1`.
    pub tags: Vec<String>,
    /// PostgreSQL of node i listens on 127.0.0.(i+1) instead of 127.0.0.1,
    /// so that routers can tell the nodes apart.
    pub distinct_ips: bool,
    /// `log.format`.
    pub log_format: &'static str,
    /// The cluster's `scope`.
    pub scope: &'static str,
    /// Node i is named `<member_prefix><i+1>`.
    pub member_prefix: &'static str,
}

impl Default for ScenarioOptions {
    /// ttl 4, loop_wait 1, retry_timeout 1.5; scope `e2e`, nodes `node1`, ….
    fn default() -> Self {
        ScenarioOptions {
            matriarch: matriarch_beside_test(),
            dcs: "    ttl: 4\n    loop_wait: 1\n    retry_timeout: 1.5\n    maximum_lag_on_failover: 104857600\n".to_owned(),
            extra: String::new(),
            tags: Vec::new(),
            distinct_ips: false,
            log_format: "text",
            scope: "e2e",
            member_prefix: "node",
        }
    }
}

impl ScenarioOptions {
    /// The default options with `extra` (YAML indented by 4) added to
    /// `bootstrap.dcs`.
    pub fn with_dcs(extra: &str) -> ScenarioOptions {
        let mut options = ScenarioOptions::default();
        options.dcs.push_str(extra);
        options
    }
}

/// Cargo's `matriarch` binary for the running test: integration tests run from
/// `target/<profile>/deps`, the binary is `target/<profile>/matriarch` (what
/// `CARGO_BIN_EXE_matriarch` names); the workspace's debug build otherwise.
fn matriarch_beside_test() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.join("matriarch")))
        .filter(|path| path.is_file())
        .unwrap_or_else(|| super::setup::target_dir().join("debug").join("matriarch"))
}

/// Node `name`'s file: the harness's settings, then `options`' pieces.
fn node_yaml(options: &ScenarioOptions, node: &ScenarioNode, dcs: &DcsSpec, tags: &str) -> String {
    let ScenarioNode {
        name,
        api_port,
        pg_host,
        pg_port,
        ..
    } = node;
    let dcs_yaml = match dcs {
        DcsSpec::Etcd(hosts) => format!("etcd3:\n  hosts: {hosts}\n"),
        DcsSpec::ZooKeeper(hosts) => format!("zookeeper:\n  hosts: {hosts}\n"),
    };
    format!(
        "scope: {scope}\nname: {name}\nlog:\n  format: {log_format}\n  level: info,matriarch=debug\nrestapi:\n  listen: 127.0.0.1:{api_port}\n  authentication:\n    username: {API_USER}\n    password: {API_PASSWORD}\n{dcs_yaml}bootstrap:\n  initdb: [--no-sync]\n  dcs:\n{}postgresql:\n  listen: {pg_host}:{pg_port}\n  data_dir: {}\n  bin_dir: {}\n  authentication:\n    superuser: {{username: postgres, password: {PG_PASSWORD}}}\n    replication: {{username: replicator, password: {REPLICATION_PASSWORD}}}\n  parameters:\n    fsync: 'off'\n    wal_keep_size: 128MB\ntags:\n  failover_priority: 1\n{tags}{}",
        options.dcs,
        node.data_dir().display(),
        bin_dir().display(),
        options.extra.replace("{name}", name),
        log_format = options.log_format,
        scope = options.scope,
    )
}

/// A set of nodes sharing one DCS. Dropping it stops the agents (SIGTERM, then
/// SIGKILL after 15 s), kills what PostgreSQL is left, and keeps the logs in
/// [`SCENARIO_LOGS`].
pub struct ScenarioCluster {
    /// The nodes.
    pub nodes: Vec<ScenarioNode>,
    /// The DCS.
    pub dcs: DcsSpec,
    _dir: tempfile::TempDir,
    /// The etcd the cluster started for itself; it stops after the agents.
    etcd: Option<EtcdServer>,
    /// Released last, once everything above has stopped.
    _serial: Serial,
}

impl ScenarioCluster {
    /// Writes configs for `n` nodes and starts them.
    pub fn start(n: usize, dcs: DcsSpec, options: ScenarioOptions) -> ScenarioCluster {
        let mut cluster = ScenarioCluster::configure(n, dcs, options);
        cluster.start_all();
        cluster
    }

    /// Starts an etcd of its own and `n` nodes on it.
    pub fn start_on_etcd(n: usize, options: ScenarioOptions) -> ScenarioCluster {
        let mut cluster = ScenarioCluster::configure_on_etcd(n, options);
        cluster.start_all();
        cluster
    }

    /// Starts an etcd of its own and `n` nodes on it, and waits up to
    /// `timeout` for a primary with `n - 1` healthy replicas; returns the
    /// cluster and the primary's index.
    pub fn healthy_on_etcd(
        n: usize,
        options: ScenarioOptions,
        timeout: Duration,
    ) -> (ScenarioCluster, usize) {
        let cluster = ScenarioCluster::start_on_etcd(n, options);
        let primary = cluster.wait_healthy(n - 1, timeout);
        (cluster, primary)
    }

    /// Starts an etcd of its own and node1 alone on it, and waits up to
    /// `timeout` until it leads.
    pub fn lone_primary_on_etcd(timeout: Duration) -> ScenarioCluster {
        let mut cluster = ScenarioCluster::configure_on_etcd(1, ScenarioOptions::default());
        cluster.start_node1_as_primary(timeout);
        cluster
    }

    /// Starts an etcd of its own and writes configs for `n` nodes on it,
    /// without starting them.
    pub fn configure_on_etcd(n: usize, options: ScenarioOptions) -> ScenarioCluster {
        // Before etcd starts.
        let serial = serial();
        let etcd = EtcdServer::start().unwrap_or_else(|e| panic!("etcd: {e}"));
        let mut cluster = ScenarioCluster::configure(n, DcsSpec::Etcd(etcd.client_url()), options);
        cluster.etcd = Some(etcd);
        // The hold taken before etcd started, not configure's reentrant one.
        cluster._serial = serial;
        cluster
    }

    /// Writes configs for `n` nodes without starting them.
    pub fn configure(n: usize, dcs: DcsSpec, options: ScenarioOptions) -> ScenarioCluster {
        let serial = serial();
        let user = PgOsUser::detect().unwrap_or_else(|e| panic!("the PostgreSQL OS user: {e}"));
        let dir = user
            .tempdir("matriarch-e2e-")
            .unwrap_or_else(|e| panic!("temp dir: {e}"));
        let mut nodes = Vec::new();
        for i in 0..n {
            let name = format!("{}{}", options.member_prefix, i + 1);
            let node_dir = dir.path().join(&name);
            fs::create_dir_all(&node_dir).expect("node dir");
            user.chown(&node_dir)
                .unwrap_or_else(|e| panic!("chown node dir: {e}"));
            let pg_host = if options.distinct_ips {
                format!("127.0.0.{}", i + 1)
            } else {
                "127.0.0.1".to_owned()
            };
            let [api_port, pg_port] =
                [(); 2].map(|()| free_port().unwrap_or_else(|e| panic!("port: {e}")));
            let node = ScenarioNode::new(
                &options.matriarch,
                &name,
                api_port,
                &pg_host,
                pg_port,
                node_dir,
            );
            let tags = options.tags.get(i).map_or("", String::as_str);
            fs::write(&node.config, node_yaml(&options, &node, &dcs, tags)).expect("write config");
            nodes.push(node);
        }
        ScenarioCluster {
            nodes,
            dcs,
            _dir: dir,
            etcd: None,
            _serial: serial,
        }
    }

    /// Starts every node.
    pub fn start_all(&mut self) {
        for node in &mut self.nodes {
            node.start(&[]);
        }
    }

    /// Starts every node with `MATRIARCH_TEST_NODE` set to its name (for a
    /// callback script that records which node called it).
    pub fn start_each_named(&mut self) {
        for node in &mut self.nodes {
            let name = node.name.clone();
            node.start(&[("MATRIARCH_TEST_NODE", &name)]);
        }
    }

    /// Starts node1 alone and waits until it bootstrapped and leads.
    pub fn start_node1_as_primary(&mut self, timeout: Duration) {
        self.nodes[0].start(&[]);
        let primary = self.wait_healthy(0, timeout);
        assert_eq!(primary, 0, "node1 is not the primary\n{}", self.logs());
    }

    /// Starts node1 alone until it leads, then the others, and waits until
    /// they all replicate from it.
    pub fn start_node1_first(&mut self, timeout: Duration) {
        self.start_node1_as_primary(timeout);
        for node in &mut self.nodes[1..] {
            node.start(&[]);
        }
        let primary = self.wait_healthy(self.nodes.len() - 1, timeout);
        assert_eq!(
            primary,
            0,
            "node1 is no longer the primary\n{}",
            self.logs()
        );
    }

    /// The etcd the cluster started for itself
    /// ([`ScenarioCluster::start_on_etcd`]).
    pub fn etcd(&self) -> &EtcdServer {
        self.etcd
            .as_ref()
            .expect("the cluster started its own etcd")
    }

    /// The client URL of the cluster's etcd.
    pub fn etcd_url(&self) -> String {
        match &self.dcs {
            DcsSpec::Etcd(url) => url.clone(),
            DcsSpec::ZooKeeper(_) => panic!("the cluster runs on ZooKeeper, not etcd"),
        }
    }

    /// The index of the node answering 200 on `/primary`, if exactly one of
    /// the nodes whose agent this harness started does.
    pub fn primary(&self) -> Option<usize> {
        let primaries: Vec<usize> = (0..self.nodes.len())
            .filter(|i| self.nodes[*i].pid().is_some() && self.nodes[*i].status("/primary") == 200)
            .collect();
        (primaries.len() == 1).then(|| primaries[0])
    }

    /// Waits for one primary and `replicas` replicas answering their health
    /// checks; the primary's index (panics with the logs after `timeout`).
    pub fn wait_healthy(&self, replicas: usize, timeout: Duration) -> usize {
        let found = wait_for(timeout, || {
            let primary = self.primary()?;
            let ready = self
                .nodes
                .iter()
                .enumerate()
                .filter(|(i, n)| *i != primary && n.pid().is_some() && n.status("/replica") == 200)
                .count();
            (ready >= replicas).then_some(primary)
        });
        match found {
            Some(primary) => primary,
            None => panic!(
                "no primary with {replicas} replicas within {timeout:?}\n{}",
                self.logs()
            ),
        }
    }

    /// Every node's log tails (agent and PostgreSQL), for failure messages.
    pub fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| node_log_tails(&n.name, &n.log, &NodeDir(n.dir.clone()).server_log(), 60))
            .collect()
    }

    /// Waits for a primary other than node `not`; panics with the logs after `timeout`.
    pub fn new_primary(&self, not: usize, timeout: Duration) -> usize {
        wait_for(timeout, || self.primary().filter(|p| *p != not))
            .unwrap_or_else(|| panic!("no new primary within {timeout:?}\n{}", self.logs()))
    }

    /// Waits until node `i` alone answers as primary; returns whether it did.
    pub fn wait_primary_is(&self, i: usize, timeout: Duration) -> bool {
        wait_for(timeout, || (self.primary() == Some(i)).then_some(())).is_some()
    }

    /// Asks node `via` for a switchover from node `leader` to node `candidate`.
    pub fn switchover(&self, via: usize, leader: usize, candidate: usize) -> HttpResponse {
        let body = switchover_body(&self.nodes[leader].name, &self.nodes[candidate].name);
        self.nodes[via].call("POST", "/switchover", &body, true)
    }

    /// [`ScenarioCluster::switchover`], asserting that it answers 200 (else
    /// panics with its body and every node's log); the answer.
    #[track_caller]
    pub fn switchover_ok(&self, via: usize, leader: usize, candidate: usize) -> HttpResponse {
        let response = self.switchover(via, leader, candidate);
        self.assert_status(&response, 200);
        response
    }

    /// Rewrites node `i`'s config file with `from` replaced by `to` (before the
    /// node starts, or before a restart).
    pub fn edit_config(&self, i: usize, from: &str, to: &str) {
        self.nodes[i].edit_config(from, to);
    }

    /// Asserts that `response` has `status`, else panics with its body and
    /// every node's log.
    #[track_caller]
    pub fn assert_status(&self, response: &HttpResponse, status: u16) {
        assert_eq!(
            response.status,
            status,
            "{}\n{}",
            response.body_text(),
            self.logs()
        );
    }

    /// Starts [`HaProxy`] in front of the nodes (panics when it cannot).
    pub fn start_haproxy(&self) -> HaProxy {
        let backends: Vec<HaProxyBackend> = self
            .nodes
            .iter()
            .map(|n| HaProxyBackend {
                name: n.name.clone(),
                pg_host: n.pg_host.clone(),
                pg_port: n.pg_port,
                api_port: n.api_port,
            })
            .collect();
        HaProxy::start(&backends).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Waits until `sql` on node `i` returns `expected`.
    pub fn wait_sql(&self, i: usize, sql: &str, expected: &str, timeout: Duration) -> bool {
        wait_for(timeout, || {
            (self.nodes[i].psql(sql).ok().as_deref() == Some(expected)).then_some(())
        })
        .is_some()
    }
}

impl Drop for ScenarioCluster {
    fn drop(&mut self) {
        for node in &self.nodes {
            node.signal(libc::SIGTERM);
        }
        for node in &mut self.nodes {
            if !node.wait_exit(Duration::from_secs(15)) {
                node.kill_agent();
            }
        }
        // Whatever still runs (a PostgreSQL left by a killed agent).
        let test = std::thread::current()
            .name()
            .unwrap_or("test")
            .replace("::", "-");
        let keep = Path::new(SCENARIO_LOGS);
        let _ = fs::create_dir_all(keep);
        for node in &self.nodes {
            node.kill_postgres();
            let _ = fs::copy(&node.log, keep.join(format!("{test}-{}.log", node.name)));
            keep_server_log(
                &format!("{test}-{}", node.name),
                &NodeDir(node.dir.clone()).server_log(),
                keep,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_file_has_the_harness_settings_then_the_options_pieces() {
        let options = ScenarioOptions {
            extra: "callbacks:\n  on_start: /x/{name}.sh\n".into(),
            ..ScenarioOptions::with_dcs("    synchronous_mode: true\n")
        };
        let node = ScenarioNode::new(
            Path::new("/m"),
            "node2",
            8009,
            "127.0.0.2",
            5433,
            PathBuf::from("/tmp/n2"),
        );
        let yaml = node_yaml(
            &options,
            &node,
            &DcsSpec::ZooKeeper("127.0.0.1:2181".into()),
            "  nofailover: true\n",
        );
        for expected in [
            "scope: e2e\nname: node2\nlog:\n  format: text\n",
            "  listen: 127.0.0.1:8009\n  authentication:\n    username: admin\n    password: api-secret\n",
            "zookeeper:\n  hosts: 127.0.0.1:2181\n",
            "    retry_timeout: 1.5\n    maximum_lag_on_failover: 104857600\n    synchronous_mode: true\npostgresql:\n",
            "  listen: 127.0.0.2:5433\n  data_dir: /tmp/n2/data\n",
            "tags:\n  failover_priority: 1\n  nofailover: true\ncallbacks:\n  on_start: /x/node2.sh\n",
        ] {
            assert!(yaml.contains(expected), "{expected:?} missing from\n{yaml}");
        }
        assert_eq!(node.config, Path::new("/tmp/n2/node.yaml"));
        assert_eq!(node.log, Path::new("/tmp/n2/agent.log"));
    }
}
