//! The scenario harness: real etcd (or ZooKeeper), real PostgreSQL, and
//! `matriarch run` processes (the built binary) on free loopback ports.

#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use matriarch_testkit::{bin_dir, free_port, http_request, HttpResponse, PgOsUser};

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
        let output = Command::new(bin_dir().join("psql"))
            .args([
                "-h",
                &self.pg_host,
                "-p",
                &self.pg_port.to_string(),
                "-U",
                "postgres",
                "-d",
                "postgres",
            ])
            .args(["-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .env("PGPASSWORD", PG_PASSWORD)
            .env("PGCONNECT_TIMEOUT", "3")
            .output()
            .map_err(|e| e.to_string())?;
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
        } else {
            Err(String::from_utf8_lossy(&output.stderr).into_owned())
        }
    }

    /// The last lines of the agent's log.
    pub(crate) fn log_tail(&self, lines: usize) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
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
}

impl Default for Options {
    fn default() -> Self {
        Options {
            dcs: "    ttl: 4\n    loop_wait: 1\n    retry_timeout: 1.5\n    maximum_lag_on_failover: 104857600\n".to_owned(),
            extra: String::new(),
            tags: Vec::new(),
            distinct_ips: false,
            log_format: "text",
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
        let cluster = Cluster::configure(n, dcs, options);
        let mut cluster = cluster;
        for node in &mut cluster.nodes {
            node.start(&[]);
        }
        cluster
    }

    /// Writes configs for `n` nodes without starting them.
    pub(crate) fn configure(n: usize, dcs: DcsSpec, options: Options) -> Cluster {
        let user = PgOsUser::detect().expect("the PostgreSQL OS user");
        let dir = user.tempdir("matriarch-e2e-").expect("temp dir");
        let mut nodes = Vec::new();
        for i in 0..n {
            let name = format!("node{}", i + 1);
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
                "scope: e2e\nname: {name}\nlog:\n  format: {log_format}\n  level: info,matriarch=debug\nrestapi:\n  listen: 127.0.0.1:{api_port}\n  authentication:\n    username: {API_USER}\n    password: {API_PASSWORD}\n{dcs_yaml}bootstrap:\n  initdb: [--no-sync]\n  dcs:\n{}postgresql:\n  listen: {pg_host}:{pg_port}\n  data_dir: {}\n  bin_dir: {}\n  authentication:\n    superuser: {{username: postgres, password: {PG_PASSWORD}}}\n    replication: {{username: replicator, password: repl-secret}}\n  parameters:\n    fsync: 'off'\n    wal_keep_size: 128MB\ntags:\n  failover_priority: 1\n{tags}{}",
                options.dcs,
                node_dir.join("data").display(),
                bin_dir().display(),
                options.extra.replace("{name}", &name),
                log_format = options.log_format,
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

/// Serializes the scenarios of one test binary: each runs three PostgreSQL
/// servers, and two cores do not run two such clusters at once reliably.
pub(crate) fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Runs SQL with psql over TCP at `host:port` as the superuser.
pub(crate) fn psql_at(host: &str, port: u16, sql: &str) -> Result<String, String> {
    let output = Command::new(bin_dir().join("psql"))
        .args([
            "-h",
            host,
            "-p",
            &port.to_string(),
            "-U",
            "postgres",
            "-d",
            "postgres",
        ])
        .args(["-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .env("PGPASSWORD", PG_PASSWORD)
        .env("PGCONNECT_TIMEOUT", "3")
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

/// One key read straight from etcd's JSON gateway (`/v3/kv/range`), so a
/// scenario can check what the agents left in the DCS without going
/// through them: `None` when the key is absent, else its value and lease id
/// (0 without a lease). Panics if etcd does not answer.
pub(crate) fn etcd_get(client_url: &str, key: &str) -> Option<(String, i64)> {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let body = serde_json::json!({ "key": b64.encode(key) }).to_string();
    let response = http_request(
        "POST",
        &format!("{client_url}/v3/kv/range"),
        &[("Content-Type", "application/json")],
        body.as_bytes(),
    )
    .expect("etcd answers /v3/kv/range");
    let reply: serde_json::Value =
        serde_json::from_slice(&response.body).expect("etcd's range reply is JSON");
    let kv = reply["kvs"].as_array()?.first()?;
    let value = kv["value"]
        .as_str()
        .and_then(|v| b64.decode(v).ok())
        .map(|v| String::from_utf8_lossy(&v).into_owned())
        .unwrap_or_default();
    // The gateway writes int64 as a JSON string; absent means 0.
    let lease = kv["lease"]
        .as_str()
        .and_then(|l| l.parse().ok())
        .unwrap_or(0);
    Some((value, lease))
}

/// The TTL an etcd lease was granted with (`/v3/lease/timetolive`), if it
/// is still alive.
pub(crate) fn etcd_lease_granted_ttl(client_url: &str, lease: i64) -> Option<i64> {
    let body = serde_json::json!({ "ID": lease }).to_string();
    let response = http_request(
        "POST",
        &format!("{client_url}/v3/lease/timetolive"),
        &[("Content-Type", "application/json")],
        body.as_bytes(),
    )
    .ok()?;
    let reply: serde_json::Value = serde_json::from_slice(&response.body).ok()?;
    // An expired lease reports ttl -1.
    let ttl: i64 = reply["TTL"].as_str()?.parse().ok()?;
    (ttl >= 0).then_some(())?;
    reply["grantedTTL"].as_str()?.parse().ok()
}
