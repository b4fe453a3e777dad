//! The scenario harness: real etcd (or ZooKeeper), real PostgreSQL, and
//! `matriarch run` processes (the built binary) on free loopback ports.

#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use matriarch_testkit::{bin_dir, free_port, http_request, EtcdServer, HttpResponse, PgOsUser};
use serde_json::Value;

mod callbacks;
mod etcd;

#[allow(unused_imports)] // each test binary uses some of them
pub(crate) use callbacks::RecordedCallbacks;
#[allow(unused_imports)] // each test binary uses some of them
pub(crate) use etcd::{etcd_get, etcd_lease_granted_ttl, etcd_put, etcd_range};

/// REST API credentials of every test node.
pub(crate) const API_USER: &str = "admin";
/// REST API password of every test node.
pub(crate) const API_PASSWORD: &str = "api-secret";
/// The superuser's password.
pub(crate) const PG_PASSWORD: &str = "pg-secret";

/// `Authorization` header value for the test credentials.
pub(crate) fn basic_auth() -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{API_USER}:{API_PASSWORD}"))
    )
}

/// The DCS section of the test nodes.
#[derive(Clone, Debug)]
pub(crate) enum DcsSpec {
    /// `etcd3: {hosts: ...}`
    Etcd(String),
    /// `zookeeper: {hosts: ...}`
    ZooKeeper(String),
}

/// One `matriarch run` process and its files.
pub(crate) struct Node {
    /// Member name.
    pub name: String,
    /// REST API port.
    pub api_port: u16,
    /// PostgreSQL port.
    pub pg_port: u16,
    /// PostgreSQL's address.
    pub pg_host: String,
    /// Its directory (owned by the PostgreSQL OS user).
    pub dir: PathBuf,
    /// The config file.
    pub config: PathBuf,
    /// The agent's log (stderr).
    pub log: PathBuf,
    /// The agent process.
    pub child: Option<Child>,
}

impl Node {
    /// The data directory.
    pub(crate) fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// `http://127.0.0.1:<api>`
    pub(crate) fn api(&self) -> String {
        format!("http://127.0.0.1:{}", self.api_port)
    }

    /// The agent's pid.
    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The postmaster's pid, if its pid file names a live process.
    pub(crate) fn postmaster_pid(&self) -> Option<i32> {
        let text = fs::read_to_string(self.data_dir().join("postmaster.pid")).ok()?;
        let pid: i32 = text.lines().next()?.trim().parse().ok()?;
        Path::new(&format!("/proc/{pid}")).exists().then_some(pid)
    }

    /// Starts (or restarts) the agent.
    pub(crate) fn start(&mut self, extra_env: &[(&str, &str)]) {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open the agent log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_matriarch"));
        cmd.arg("run")
            .arg("--config")
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log"))
            .stderr(log);
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        self.child = Some(cmd.spawn().expect("spawn matriarch run"));
    }

    /// Sends a signal to the agent.
    pub(crate) fn signal(&self, signal: i32) {
        if let Some(pid) = self.pid() {
            // SAFETY: kill(2) on our own child's pid.
            unsafe {
                libc::kill(pid as i32, signal);
            }
        }
    }

    /// Waits for the agent to exit; returns whether it did within `timeout`.
    pub(crate) fn wait_exit(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            match self.child.as_mut().map(Child::try_wait) {
                None | Some(Ok(Some(_))) => {
                    self.child = None;
                    return true;
                }
                _ => std::thread::sleep(Duration::from_millis(50)),
            }
        }
        false
    }

    /// SIGKILLs the agent (not PostgreSQL) and reaps it.
    pub(crate) fn kill_agent(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The whole node dies: SIGKILL to the agent and to PostgreSQL, no clean
    /// shutdown.
    pub(crate) fn crash(&mut self) {
        self.kill_agent();
        self.kill_postgres();
    }

    /// SIGKILLs the postmaster and its children.
    pub(crate) fn kill_postgres(&self) {
        if let Some(pid) = self.postmaster_pid() {
            // SAFETY: kill(2) with a pid read from the pid file of our data dir.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
            let _ = Command::new("pkill")
                .args(["-KILL", "-P", &pid.to_string()])
                .status();
        }
    }

    /// One REST call.
    pub(crate) fn call(&self, method: &str, path: &str, body: &str, auth: bool) -> HttpResponse {
        let auth_value = basic_auth();
        let mut headers = vec![("Content-Type", "application/json")];
        if auth {
            headers.push(("Authorization", auth_value.as_str()));
        }
        http_request(
            method,
            &format!("{}{path}", self.api()),
            &headers,
            body.as_bytes(),
        )
        .unwrap_or(HttpResponse {
            status: 0,
            headers: Vec::new(),
            body: Vec::new(),
        })
    }

    /// The status of `GET path` (0 when the API does not answer).
    pub(crate) fn status(&self, path: &str) -> u16 {
        self.call("GET", path, "", false).status
    }

    /// Runs SQL with psql over TCP as the superuser; `Err` with psql's output.
    pub(crate) fn psql(&self, sql: &str) -> Result<String, String> {
        psql_at(&self.pg_host, self.pg_port, sql)
    }

    /// `GET path` as JSON (`Null` when the API does not answer with JSON).
    pub(crate) fn get_json(&self, path: &str) -> Value {
        serde_json::from_slice(&self.call("GET", path, "", false).body).unwrap_or(Value::Null)
    }

    /// The timeline `/patroni` reports.
    pub(crate) fn timeline(&self) -> Option<u64> {
        self.get_json("/patroni")["timeline"].as_u64()
    }

    /// Waits until `GET path` answers `status`; returns whether it did.
    pub(crate) fn wait_status(&self, path: &str, status: u16, timeout: Duration) -> bool {
        wait_for(timeout, || (self.status(path) == status).then_some(())).is_some()
    }

    /// `matriarch ctl ARGS --api <this node>` with the test credentials
    /// (from the environment, so ctl prints no password warning).
    pub(crate) fn ctl(&self, args: &[&str]) -> Output {
        let api = self.api();
        let mut args = args.to_vec();
        args.extend(["--api", &api]);
        ctl_env(
            &args,
            &[
                ("MATRIARCH_CTL_USERNAME", API_USER),
                ("MATRIARCH_CTL_PASSWORD", API_PASSWORD),
            ],
        )
    }

    /// The last lines of the agent's log.
    pub(crate) fn log_tail(&self, lines: usize) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

/// `matriarch ctl ARGS`, with none of ctl's variables from the test's
/// environment.
pub(crate) fn ctl(args: &[&str]) -> Output {
    ctl_env(args, &[])
}

/// `matriarch ctl ARGS` with `env` as ctl's only variables.
pub(crate) fn ctl_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_matriarch"));
    command.arg("ctl").args(args).stdin(Stdio::null());
    for var in [
        "MATRIARCH_CTL_API",
        "MATRIARCH_CTL_CONFIG",
        "MATRIARCH_CTL_USERNAME",
        "MATRIARCH_CTL_PASSWORD",
    ] {
        command.env_remove(var);
    }
    command.envs(env.iter().copied());
    command.output().expect("run matriarch ctl")
}

/// Options for the test cluster.
#[derive(Clone, Debug)]
pub(crate) struct Options {
    /// `bootstrap.dcs` YAML (indented by 4).
    pub dcs: String,
    /// Extra top-level YAML appended to each node's config; `{name}` is replaced.
    pub extra: String,
    /// Per-node tags YAML (indented by 2), by index.
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

impl Default for Options {
    fn default() -> Self {
        Options {
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

/// A set of nodes sharing one DCS.
pub(crate) struct Cluster {
    /// The nodes.
    pub nodes: Vec<Node>,
    /// The DCS.
    pub dcs: DcsSpec,
    _dir: tempfile::TempDir,
    /// The etcd the cluster started for itself; it stops after the agents.
    etcd: Option<EtcdServer>,
    /// Released last, once everything above has stopped.
    _serial: Serial,
}

/// The `POST /switchover` body from `leader` to `candidate`.
pub(crate) fn switchover_body(leader: &str, candidate: &str) -> String {
    format!("{{\"leader\": \"{leader}\", \"candidate\": \"{candidate}\"}}")
}

/// Polls `check` every 200 ms until it returns `Some` or `timeout` passes.
pub(crate) fn wait_for<T>(timeout: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

impl Cluster {
    /// Writes configs for `n` nodes and starts them.
    pub(crate) fn start(n: usize, dcs: DcsSpec, options: Options) -> Cluster {
        let mut cluster = Cluster::configure(n, dcs, options);
        for node in &mut cluster.nodes {
            node.start(&[]);
        }
        cluster
    }

    /// Starts an etcd of its own and `n` nodes on it.
    pub(crate) fn start_on_etcd(n: usize, options: Options) -> Cluster {
        let mut cluster = Cluster::configure_on_etcd(n, options);
        for node in &mut cluster.nodes {
            node.start(&[]);
        }
        cluster
    }

    /// Starts an etcd of its own and `n` nodes on it, and waits up to
    /// `timeout` for a primary with `n - 1` healthy replicas; returns the
    /// cluster and the primary's index.
    pub(crate) fn healthy_on_etcd(
        n: usize,
        options: Options,
        timeout: Duration,
    ) -> (Cluster, usize) {
        let cluster = Cluster::start_on_etcd(n, options);
        let primary = cluster.wait_healthy(n - 1, timeout);
        (cluster, primary)
    }

    /// Starts an etcd of its own and writes configs for `n` nodes on it,
    /// without starting them.
    pub(crate) fn configure_on_etcd(n: usize, options: Options) -> Cluster {
        // Before etcd starts.
        let serial = serial();
        let etcd = EtcdServer::start().expect("etcd");
        let mut cluster = Cluster::configure(n, DcsSpec::Etcd(etcd.client_url()), options);
        cluster.etcd = Some(etcd);
        // The hold taken before etcd started, not configure's reentrant one.
        cluster._serial = serial;
        cluster
    }

    /// Starts node1 alone and waits until it bootstrapped and leads.
    pub(crate) fn start_node1_as_primary(&mut self, timeout: Duration) {
        self.nodes[0].start(&[]);
        let primary = self.wait_healthy(0, timeout);
        assert_eq!(primary, 0, "node1 is not the primary\n{}", self.logs());
    }

    /// Starts node1 alone until it leads, then the others, and waits until
    /// they all replicate from it.
    pub(crate) fn start_node1_first(&mut self, timeout: Duration) {
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

    /// The etcd the cluster started for itself ([`Cluster::start_on_etcd`]).
    pub(crate) fn etcd(&self) -> &EtcdServer {
        self.etcd
            .as_ref()
            .expect("the cluster started its own etcd")
    }

    /// The client URL of the cluster's etcd.
    pub(crate) fn etcd_url(&self) -> String {
        match &self.dcs {
            DcsSpec::Etcd(url) => url.clone(),
            DcsSpec::ZooKeeper(_) => panic!("the cluster runs on ZooKeeper, not etcd"),
        }
    }

    /// Writes configs for `n` nodes without starting them.
    pub(crate) fn configure(n: usize, dcs: DcsSpec, options: Options) -> Cluster {
        let serial = serial();
        let user = PgOsUser::detect().expect("the PostgreSQL OS user");
        let dir = user.tempdir("matriarch-e2e-").expect("temp dir");
        let mut nodes = Vec::new();
        for i in 0..n {
            let name = format!("{}{}", options.member_prefix, i + 1);
            let node_dir = dir.path().join(&name);
            fs::create_dir_all(&node_dir).expect("node dir");
            user.chown(&node_dir).expect("chown node dir");
            let api_port = free_port().expect("port");
            let pg_port = free_port().expect("port");
            let dcs_yaml = match &dcs {
                DcsSpec::Etcd(hosts) => format!("etcd3:\n  hosts: {hosts}\n"),
                DcsSpec::ZooKeeper(hosts) => format!("zookeeper:\n  hosts: {hosts}\n"),
            };
            let tags = options.tags.get(i).cloned().unwrap_or_default();
            let pg_host = if options.distinct_ips {
                format!("127.0.0.{}", i + 1)
            } else {
                "127.0.0.1".to_owned()
            };
            let config = format!(
                "scope: {scope}\nname: {name}\nlog:\n  format: {log_format}\n  level: info,matriarch=debug\nrestapi:\n  listen: 127.0.0.1:{api_port}\n  authentication:\n    username: {API_USER}\n    password: {API_PASSWORD}\n{dcs_yaml}bootstrap:\n  initdb: [--no-sync]\n  dcs:\n{}postgresql:\n  listen: {pg_host}:{pg_port}\n  data_dir: {}\n  bin_dir: {}\n  authentication:\n    superuser: {{username: postgres, password: {PG_PASSWORD}}}\n    replication: {{username: replicator, password: repl-secret}}\n  parameters:\n    fsync: 'off'\n    wal_keep_size: 128MB\ntags:\n  failover_priority: 1\n{tags}{}",
                options.dcs,
                node_dir.join("data").display(),
                bin_dir().display(),
                options.extra.replace("{name}", &name),
                log_format = options.log_format,
                scope = options.scope,
            );
            let config_path = node_dir.join("node.yaml");
            fs::write(&config_path, config).expect("write config");
            nodes.push(Node {
                name,
                api_port,
                pg_port,
                pg_host,
                log: node_dir.join("agent.log"),
                config: config_path,
                dir: node_dir,
                child: None,
            });
        }
        Cluster {
            nodes,
            dcs,
            _dir: dir,
            etcd: None,
            _serial: serial,
        }
    }

    /// The index of the node answering 200 on `/primary`, if exactly one does.
    pub(crate) fn primary(&self) -> Option<usize> {
        let primaries: Vec<usize> = (0..self.nodes.len())
            .filter(|i| self.nodes[*i].child.is_some() && self.nodes[*i].status("/primary") == 200)
            .collect();
        (primaries.len() == 1).then(|| primaries[0])
    }

    /// Waits for one primary and `replicas` replicas answering their health checks.
    pub(crate) fn wait_healthy(&self, replicas: usize, timeout: Duration) -> usize {
        let found = wait_for(timeout, || {
            let primary = self.primary()?;
            let ready = self
                .nodes
                .iter()
                .enumerate()
                .filter(|(i, n)| *i != primary && n.child.is_some() && n.status("/replica") == 200)
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

    /// Every node's log tail, for failure messages.
    pub(crate) fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("===== {} =====\n{}", n.name, n.log_tail(60)))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Waits for a primary other than node `not`; panics with the logs after `timeout`.
    pub(crate) fn new_primary(&self, not: usize, timeout: Duration) -> usize {
        wait_for(timeout, || self.primary().filter(|p| *p != not))
            .unwrap_or_else(|| panic!("no new primary within {timeout:?}\n{}", self.logs()))
    }

    /// Waits until node `i` alone answers as primary; returns whether it did.
    pub(crate) fn wait_primary_is(&self, i: usize, timeout: Duration) -> bool {
        wait_for(timeout, || (self.primary() == Some(i)).then_some(())).is_some()
    }

    /// Asks node `via` for a switchover from node `leader` to node `candidate`.
    pub(crate) fn switchover(&self, via: usize, leader: usize, candidate: usize) -> HttpResponse {
        let body = switchover_body(&self.nodes[leader].name, &self.nodes[candidate].name);
        self.nodes[via].call("POST", "/switchover", &body, true)
    }

    /// Rewrites node `i`'s config file with `from` replaced by `to` (before the
    /// node starts, or before a restart).
    pub(crate) fn edit_config(&self, i: usize, from: &str, to: &str) {
        let path = &self.nodes[i].config;
        let text = fs::read_to_string(path).expect("read the node config");
        assert!(text.contains(from), "{from:?} not in {}", path.display());
        fs::write(path, text.replacen(from, to, 1)).expect("write the node config");
    }

    /// Asserts that `response` has `status`, else panics with its body and
    /// every node's log.
    #[track_caller]
    pub(crate) fn assert_status(&self, response: &HttpResponse, status: u16) {
        assert_eq!(
            response.status,
            status,
            "{}\n{}",
            response.body_text(),
            self.logs()
        );
    }

    /// Waits until `sql` on node `i` returns `expected`.
    pub(crate) fn wait_sql(&self, i: usize, sql: &str, expected: &str, timeout: Duration) -> bool {
        wait_for(timeout, || {
            (self.nodes[i].psql(sql).ok().as_deref() == Some(expected)).then_some(())
        })
        .is_some()
    }
}

impl Drop for Cluster {
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
        let keep = Path::new("/tmp/matriarch-e2e-logs");
        let _ = fs::create_dir_all(keep);
        for node in &self.nodes {
            node.kill_postgres();
            let _ = fs::copy(&node.log, keep.join(format!("{test}-{}.log", node.name)));
        }
    }
}

/// Serializes the scenarios of one test binary: each runs up to three
/// PostgreSQL servers, and two cores do not run two such clusters at once
/// reliably. Every [`Cluster`] holds it; a test takes it first when it sets up
/// more than the cluster. Reentrant on one thread.
pub(crate) fn serial() -> Serial {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    if SERIAL_HELD.get() {
        return Serial(None);
    }
    let guard = LOCK
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    SERIAL_HELD.set(true);
    Serial(Some(guard))
}

thread_local! {
    /// Whether this thread holds [`serial`]'s lock.
    static SERIAL_HELD: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// The hold on [`serial`]'s lock (none when the thread held it already).
pub(crate) struct Serial(Option<std::sync::MutexGuard<'static, ()>>);

impl Drop for Serial {
    fn drop(&mut self) {
        if self.0.take().is_some() {
            SERIAL_HELD.set(false);
        }
    }
}

/// A `psql` command running `sql` at `host:port` as the superuser, over TCP.
pub(crate) fn psql_command(host: &str, port: u16, sql: &str) -> Command {
    let mut command = Command::new(bin_dir().join("psql"));
    command
        .args(["-h", host, "-p", &port.to_string()])
        .args(["-U", "postgres", "-d", "postgres"])
        .args(["-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .env("PGPASSWORD", PG_PASSWORD)
        .env("PGCONNECT_TIMEOUT", "3");
    command
}

/// Runs SQL with psql over TCP at `host:port` as the superuser; `Err` with
/// psql's output.
pub(crate) fn psql_at(host: &str, port: u16, sql: &str) -> Result<String, String> {
    let output = psql_command(host, port, sql)
        .output()
        .map_err(|e| e.to_string())?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

/// HAProxy (Debian's package) in front of the cluster, checking each node's
/// REST API with `option httpchk OPTIONS /primary`, as with Patroni.
pub(crate) struct HaProxy {
    /// The port clients connect to.
    pub port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl HaProxy {
    /// Starts HAProxy for `nodes`.
    pub(crate) fn start(nodes: &[Node]) -> HaProxy {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port().expect("port");
        let mut config = format!(
            "global\n  maxconn 100\ndefaults\n  mode tcp\n  timeout connect 2s\n  timeout client 30s\n  timeout server 30s\n  timeout check 1s\nlisten primary\n  bind 127.0.0.1:{port}\n  option httpchk OPTIONS /primary\n  http-check expect status 200\n  default-server inter 500ms fall 2 rise 1 on-marked-down shutdown-sessions\n"
        );
        for node in nodes {
            config.push_str(&format!(
                "  server {} {}:{} maxconn 100 check port {}\n",
                node.name, node.pg_host, node.pg_port, node.api_port
            ));
        }
        let path = dir.path().join("haproxy.cfg");
        fs::write(&path, config).expect("write haproxy.cfg");
        let child = Command::new("haproxy")
            .arg("-f")
            .arg(&path)
            .arg("-db")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start haproxy (Debian package `haproxy`; run `cargo xtask deps`)");
        HaProxy {
            port,
            child,
            _dir: dir,
        }
    }
}

impl Drop for HaProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
