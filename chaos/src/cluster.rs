//! The cluster under test: three etcd members, BIND, and three `matriarch run`
//! agents with their PostgreSQL, each in its own namespace of the [`Lab`].
//!
//! Every method here runs from the client namespace (see [`crate::run`]): the REST
//! APIs, PostgreSQL, etcd and BIND are reached over the bridge, as the client
//! reaches them. Programs are started with `ip netns exec <namespace>`.

use std::ffi::OsString;
use std::fs;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use matriarch_testkit::{bin_dir, http_request_timeout, PgOsUser};
use serde_json::Value;
use tempfile::TempDir;

use crate::error::{ChaosError, Result};
use crate::netns::{Host, Lab};
use crate::sys;
use crate::zk;
use crate::{Dcs, Mode};

/// The cluster's name (the DCS scope).
pub const SCOPE: &str = "chaos";
/// The DNS zone BIND serves.
pub const ZONE: &str = "chaos.test";
/// The name that points at the primary.
pub const WRITER: &str = "primary.chaos.test";
/// The REST API user.
pub const API_USER: &str = "admin";
/// The REST API password.
pub const API_PASSWORD: &str = "chaos-api";
/// The PostgreSQL superuser.
pub const PG_USER: &str = "postgres";
/// Its password.
pub const PG_PASSWORD: &str = "chaos-pg";
/// PostgreSQL's port (on every node's own address).
pub const PG_PORT: u16 = 5432;
/// The REST API's port.
pub const API_PORT: u16 = 8008;
/// How many PostgreSQL nodes and how many etcd members.
pub const NODES: usize = 3;
/// The TSIG key name.
const TSIG_KEY: &str = "chaos-key";
/// The prefix of a run's data directory under `/tmp` (followed by the pid).
const DATA_PREFIX: &str = "matriarch-chaos-";

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

/// The address of node `i` (0-based): 127.1.0.11, .12, .13.
pub fn node_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 1, 0, 11 + i as u8)
}

/// The address of etcd member `i` (0-based): 127.1.0.21, .22, .23.
pub fn etcd_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 1, 0, 21 + i as u8)
}

/// BIND's address.
pub const DNS_IP: Ipv4Addr = Ipv4Addr::new(127, 1, 0, 30);
/// The client's address.
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(127, 1, 0, 40);
/// The client namespace's short name.
pub const CLIENT: &str = "cl";

/// Every host of the lab: n1..n3, e1..e3, dns, cl.
pub fn hosts() -> Vec<Host> {
    let mut hosts = Vec::new();
    for i in 0..NODES {
        hosts.push(Host::new(&format!("n{}", i + 1), node_ip(i)));
    }
    for i in 0..NODES {
        hosts.push(Host::new(&format!("e{}", i + 1), etcd_ip(i)));
    }
    hosts.push(Host::new("dns", DNS_IP));
    hosts.push(Host::new(CLIENT, CLIENT_IP));
    hosts
}

/// The index of the node whose address is `ip`.
pub fn node_at(ip: Ipv4Addr) -> Option<usize> {
    (0..NODES).find(|i| node_ip(*i) == ip)
}

/// A long-running program in a namespace, restartable with the same command line.
#[derive(Debug)]
pub struct Proc {
    ns: String,
    argv: Vec<OsString>,
    log: PathBuf,
    child: Option<Child>,
}

impl Proc {
    fn new(ns: String, argv: Vec<OsString>, log: PathBuf) -> Proc {
        Proc {
            ns,
            argv,
            log,
            child: None,
        }
    }

    /// Starts it (appending to its log), in its own process group.
    pub fn start(&mut self) -> Result<()> {
        let open = || {
            fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.log)
                .map_err(|e| ChaosError::io(format!("opening {}", self.log.display()), e))
        };
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec"])
            .arg(&self.ns)
            .args(&self.argv)
            .stdin(Stdio::null())
            .stdout(open()?)
            .stderr(open()?)
            .process_group(0);
        let what = sys::render(&cmd);
        let child = cmd.spawn().map_err(|source| ChaosError::Spawn {
            command: what,
            source,
        })?;
        self.child = Some(child);
        Ok(())
    }

    /// Its pid while it runs (`ip netns exec` execs the program: same pid).
    pub fn pid(&mut self) -> Option<i32> {
        let child = self.child.as_mut()?;
        match child.try_wait() {
            Ok(None) => i32::try_from(child.id()).ok(),
            _ => {
                self.child = None;
                None
            }
        }
    }

    /// Whether it runs.
    pub fn running(&mut self) -> bool {
        self.pid().is_some()
    }

    /// Sends a signal; whether there was a process to send it to.
    pub fn signal(&mut self, sig: libc::c_int) -> bool {
        self.pid().is_some_and(|pid| sys::signal(pid, sig))
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Its log file.
    pub fn log(&self) -> &Path {
        &self.log
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = sys::signal(child.id() as i32, libc::SIGCONT);
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One PostgreSQL node: its agent and data directory.
#[derive(Debug)]
pub struct Node {
    /// Member name: node1..node3.
    pub name: String,
    /// Namespace short name: n1..n3.
    pub short: String,
    /// Its address.
    pub ip: Ipv4Addr,
    /// Its directory (data directory, server log, socket), owned by `postgres`.
    pub dir: PathBuf,
    /// The agent.
    pub agent: Proc,
}

impl Node {
    /// The data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// PostgreSQL's server log (pg_ctl's `-l`, next to the data directory).
    pub fn server_log(&self) -> PathBuf {
        self.dir.join("data.log")
    }

    /// The postmaster's pid, if `postmaster.pid` names a live postgres process.
    pub fn postmaster_pid(&self) -> Option<i32> {
        let text = fs::read_to_string(self.data_dir().join("postmaster.pid")).ok()?;
        let pid: i32 = text.lines().next()?.trim().parse().ok()?;
        let comm = fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
        (comm.starts_with("postgres") || comm.starts_with("postmaster")).then_some(pid)
    }

    /// `GET path` on its REST API: status (0 when it does not answer) and body.
    pub fn get(&self, path: &str) -> (u16, Vec<u8>) {
        let url = format!("http://{}:{API_PORT}{path}", self.ip);
        match http_request_timeout("GET", &url, &[], b"", Duration::from_millis(700)) {
            Ok(r) => (r.status, r.body),
            Err(_) => (0, Vec::new()),
        }
    }

    /// `method path` with a JSON `body` and the API's basic auth: status and body
    /// text, or why it got no answer. `timeout` bounds the connection and each read
    /// (a switchover answers once it is done).
    pub fn call(
        &self,
        method: &str,
        path: &str,
        body: &Value,
        timeout: Duration,
    ) -> Result<(u16, String)> {
        use base64::Engine as _;
        let url = format!("http://{}:{API_PORT}{path}", self.ip);
        let auth = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{API_USER}:{API_PASSWORD}"))
        );
        let body = body.to_string();
        http_request_timeout(
            method,
            &url,
            &[
                ("Authorization", &auth),
                ("Content-Type", "application/json"),
            ],
            body.as_bytes(),
            timeout,
        )
        .map(|r| (r.status, r.body_text()))
        .map_err(|e| ChaosError::Client(format!("{method} {url}: {e}")))
    }

    /// `GET path` as JSON when it answers 200.
    pub fn get_json(&self, path: &str) -> Option<Value> {
        let (status, body) = self.get(path);
        (status == 200)
            .then(|| serde_json::from_slice(&body).ok())
            .flatten()
    }
}

/// One etcd member.
#[derive(Debug)]
pub struct EtcdMember {
    /// e1..e3 (also the namespace's short name).
    pub name: String,
    /// Its address.
    pub ip: Ipv4Addr,
    /// The process.
    pub proc: Proc,
}

/// The running cluster.
pub struct Cluster<'lab> {
    /// The namespaces.
    pub lab: &'lab Lab,
    /// The PostgreSQL nodes.
    pub nodes: Vec<Node>,
    /// The DCS servers: etcd members, or ZooKeeper servers with `--dcs zookeeper`.
    pub etcd: Vec<EtcdMember>,
    /// BIND.
    pub named: Proc,
    /// Where logs and configurations go (`target/chaos/<run>/`).
    pub logs: PathBuf,
    /// The synchronous mode of the run.
    pub mode: Mode,
    /// The lock's ttl in seconds.
    pub ttl: u64,
    /// The DCS the agents use: [`Cluster::etcd`] holds its three servers
    /// (etcd members or ZooKeeper servers, same namespaces and addresses).
    pub dcs: Dcs,
    zk: Option<zk::Keys>,
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

fn random_secret() -> Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 32];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| ChaosError::io("reading /dev/urandom", e))?;
    use base64::Engine as _;
    Ok(base64::engine::general_purpose::STANDARD.encode(bytes))
}

fn write(path: &Path, text: &str) -> Result<()> {
    fs::write(path, text).map_err(|e| ChaosError::io(format!("writing {}", path.display()), e))
}

/// The ZooKeeper connect string: every server's client address.
fn zk_hosts() -> String {
    (0..NODES)
        .map(|i| format!("{}:{}", etcd_ip(i), zk::CLIENT_PORT))
        .collect::<Vec<_>>()
        .join(",")
}

/// Starts the three etcd members (e1..e3), not waiting for them.
fn start_etcd(lab: &Lab, spec: &ClusterSpec<'_>, data: &Path) -> Result<Vec<EtcdMember>> {
    let initial = (0..NODES)
        .map(|i| format!("e{}=http://{}:2380", i + 1, etcd_ip(i)))
        .collect::<Vec<_>>()
        .join(",");
    let mut etcd = Vec::new();
    for i in 0..NODES {
        let name = format!("e{}", i + 1);
        let ip = etcd_ip(i);
        let dir = data.join(format!("etcd-{name}"));
        let argv: Vec<OsString> = vec![
            "/usr/bin/etcd".into(),
            "--name".into(),
            name.clone().into(),
            "--data-dir".into(),
            dir.into(),
            "--listen-client-urls".into(),
            format!("http://{ip}:2379").into(),
            "--advertise-client-urls".into(),
            format!("http://{ip}:2379").into(),
            "--listen-peer-urls".into(),
            format!("http://{ip}:2380").into(),
            "--initial-advertise-peer-urls".into(),
            format!("http://{ip}:2380").into(),
            "--initial-cluster".into(),
            initial.clone().into(),
            "--initial-cluster-state".into(),
            "new".into(),
            "--initial-cluster-token".into(),
            lab.prefix().trim_end_matches('-').into(),
        ];
        let mut proc = Proc::new(
            lab.ns(&name),
            argv,
            spec.logs.join(format!("etcd-{name}.log")),
        );
        proc.start()?;
        etcd.push(EtcdMember { name, ip, proc });
    }
    Ok(etcd)
}

/// Starts a three-server ZooKeeper ensemble in e1..e3 (java with
/// `QuorumPeerMain`, a `zoo.cfg` and a `myid` each), not waiting for it.
fn start_zookeeper(lab: &Lab, spec: &ClusterSpec<'_>, data: &Path) -> Result<Vec<EtcdMember>> {
    let ips: Vec<Ipv4Addr> = (0..NODES).map(etcd_ip).collect();
    let mut servers = Vec::new();
    for i in 0..NODES {
        let name = format!("e{}", i + 1);
        let dir = data.join(format!("zk-{name}"));
        let data_dir = dir.join("data");
        fs::create_dir_all(&data_dir)
            .map_err(|e| ChaosError::io(format!("creating {}", data_dir.display()), e))?;
        write(&data_dir.join("myid"), &format!("{}\n", i + 1))?;
        let cfg = dir.join("zoo.cfg");
        write(&cfg, &zk::config(i + 1, &ips, &data_dir))?;
        write(
            &dir.join("log4j.properties"),
            "log4j.rootLogger=INFO, CONSOLE\n\
             log4j.appender.CONSOLE=org.apache.log4j.ConsoleAppender\n\
             log4j.appender.CONSOLE.layout=org.apache.log4j.PatternLayout\n\
             log4j.appender.CONSOLE.layout.ConversionPattern=%d{ISO8601} - %-5p [%t] - %m%n\n",
        )?;
        let argv: Vec<OsString> = vec![
            zk::JAVA.into(),
            "-Xmx256m".into(),
            "-XX:+UseSerialGC".into(),
            "-XX:TieredStopAtLevel=1".into(),
            format!("-Dzookeeper.log.dir={}", dir.display()).into(),
            "-Dzookeeper.root.logger=INFO,CONSOLE".into(),
            "-Dzookeeper.admin.enableServer=false".into(),
            "-cp".into(),
            format!("{}:{}", dir.display(), zk::JAR).into(),
            "org.apache.zookeeper.server.quorum.QuorumPeerMain".into(),
            cfg.into(),
        ];
        let mut proc = Proc::new(
            lab.ns(&name),
            argv,
            spec.logs.join(format!("zookeeper-{name}.log")),
        );
        proc.start()?;
        servers.push(EtcdMember {
            name,
            ip: ips[i],
            proc,
        });
    }
    Ok(servers)
}

impl<'lab> Cluster<'lab> {
    /// Starts etcd and BIND, then the three agents (not waiting for them).
    pub fn start(lab: &'lab Lab, spec: &ClusterSpec<'_>) -> Result<Cluster<'lab>> {
        let user = PgOsUser::detect().map_err(|source| ChaosError::Testkit {
            context: "finding the PostgreSQL OS user".into(),
            source,
        })?;
        if !bin_dir().join("pg_ctl").is_file() {
            return Err(ChaosError::Setup(format!(
                "PostgreSQL 15 is missing ({} has no pg_ctl): run `cargo xtask deps`",
                bin_dir().display()
            )));
        }
        if !spec.matriarch.is_file() {
            return Err(ChaosError::Setup(format!(
                "the matriarch binary {} does not exist (cargo build -p matriarch)",
                spec.matriarch.display()
            )));
        }
        let programs: &[&str] = match spec.dcs {
            Dcs::Etcd => &["/usr/bin/etcd", "/usr/bin/etcdctl", "/usr/sbin/named"],
            Dcs::ZooKeeper => &[zk::JAVA, zk::JAR, "/usr/sbin/named"],
        };
        for program in programs {
            if !Path::new(program).is_file() {
                return Err(ChaosError::Setup(format!(
                    "{program} is missing: run `cargo xtask deps`"
                )));
            }
        }
        fs::create_dir_all(spec.logs)
            .map_err(|e| ChaosError::io(format!("creating {}", spec.logs.display()), e))?;
        let data = user
            .tempdir(&format!("{DATA_PREFIX}{}-", std::process::id()))
            .map_err(|source| ChaosError::Testkit {
                context: "creating the data directories".into(),
                source,
            })?;
        // etcd or ZooKeeper: three servers, all started before any waits for the others.
        let etcd = match spec.dcs {
            Dcs::Etcd => start_etcd(lab, spec, data.path())?,
            Dcs::ZooKeeper => start_zookeeper(lab, spec, data.path())?,
        };
        let zk = match spec.dcs {
            Dcs::Etcd => None,
            Dcs::ZooKeeper => Some(zk::Keys::new(zk_hosts())?),
        };
        // BIND.
        let dns_dir = data.path().join("dns");
        fs::create_dir_all(&dns_dir)
            .map_err(|e| ChaosError::io(format!("creating {}", dns_dir.display()), e))?;
        let secret = random_secret()?;
        let key_file = dns_dir.join("tsig.key");
        write(
            &key_file,
            &format!("key \"{TSIG_KEY}\" {{\n    algorithm hmac-sha256;\n    secret \"{secret}\";\n}};\n"),
        )?;
        let zone_file = dns_dir.join(format!("{ZONE}.zone"));
        write(
            &zone_file,
            &format!(
                "$TTL 1\n@ IN SOA ns.{ZONE}. hostmaster.{ZONE}. (1 60 30 600 1)\n\
                 @ IN NS ns.{ZONE}.\nns IN A {DNS_IP}\nprimary 1 IN A 127.0.0.1\n"
            ),
        )?;
        let conf_file = dns_dir.join("named.conf");
        let d = dns_dir.display();
        write(
            &conf_file,
            &format!(
                "include \"{key}\";\noptions {{\n    directory \"{d}\";\n    pid-file \"{d}/named.pid\";\n\
                 \x20   session-keyfile \"{d}/session.key\";\n    managed-keys-directory \"{d}\";\n\
                 \x20   listen-on port 53 {{ {DNS_IP}; }};\n    listen-on-v6 {{ none; }};\n\
                 \x20   recursion no;\n    dnssec-validation no;\n    notify no;\n}};\ncontrols {{ }};\n\
                 zone \"{ZONE}\" {{\n    type primary;\n    file \"{zone}\";\n\
                 \x20   allow-update {{ key \"{TSIG_KEY}\"; }};\n}};\n",
                key = key_file.display(),
                zone = zone_file.display(),
            ),
        )?;
        let mut named = Proc::new(
            lab.ns("dns"),
            vec![
                "/usr/sbin/named".into(),
                "-g".into(),
                "-4".into(),
                "-n".into(),
                "1".into(),
                "-c".into(),
                conf_file.into(),
            ],
            spec.logs.join("named.log"),
        );
        named.start()?;
        let mut cluster = Cluster {
            lab,
            nodes: Vec::new(),
            etcd,
            named,
            logs: spec.logs.to_path_buf(),
            mode: spec.mode,
            ttl: spec.timing.0,
            dcs: spec.dcs,
            zk,
            data: None,
        };
        for i in 0..NODES {
            let name = format!("node{}", i + 1);
            let short = format!("n{}", i + 1);
            let dir = data.path().join(&name);
            fs::create_dir_all(&dir)
                .map_err(|e| ChaosError::io(format!("creating {}", dir.display()), e))?;
            user.chown(&dir).map_err(|source| ChaosError::Testkit {
                context: "handing the data directory to postgres".into(),
                source,
            })?;
            let config = spec.logs.join(format!("{name}.yaml"));
            let yaml = node_yaml(&name, node_ip(i), &dir.join("data"), spec, &secret);
            write(&config, &yaml)?;
            let agent = Proc::new(
                lab.ns(&short),
                vec![
                    spec.matriarch.as_os_str().to_owned(),
                    "run".into(),
                    "--config".into(),
                    config.into_os_string(),
                ],
                spec.logs.join(format!("{name}.log")),
            );
            cluster.nodes.push(Node {
                name,
                short,
                ip: node_ip(i),
                dir,
                agent,
            });
        }
        cluster.data = Some(data);
        cluster.wait_etcd(Duration::from_secs(60))?;
        cluster.wait_dns_server(Duration::from_secs(30))?;
        for node in &mut cluster.nodes {
            node.agent.start()?;
        }
        Ok(cluster)
    }

    /// The etcd endpoints, comma-separated.
    pub fn etcd_endpoints(&self) -> String {
        (0..NODES)
            .map(|i| format!("{}:2379", etcd_ip(i)))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// `etcdctl <args>` against every member (run from the client namespace).
    pub fn etcdctl(&self, args: &[&str]) -> Result<String> {
        sys::run(
            Command::new("/usr/bin/etcdctl")
                .env("ETCDCTL_API", "3")
                .arg(format!("--endpoints={}", self.etcd_endpoints()))
                .arg("--dial-timeout=1s")
                .arg("--command-timeout=2s")
                .args(args),
        )
    }

    /// The index of the etcd leader, if all answering members agree on one and
    /// `all` of them (when asked) answer.
    pub fn etcd_leader(&self, all: bool) -> Option<usize> {
        let out = Command::new("/usr/bin/etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.etcd_endpoints()))
            .args(["--dial-timeout=1s", "--command-timeout=1s"])
            .args(["endpoint", "status", "-w", "json"])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .ok()?;
        let statuses: Vec<Value> = serde_json::from_slice(&out.stdout).ok()?;
        if all && statuses.len() != NODES {
            return None;
        }
        let mut leader = None;
        let mut leader_id = None;
        for s in &statuses {
            let endpoint = s.get("Endpoint")?.as_str()?;
            let status = s.get("Status")?;
            let id = status.get("header")?.get("member_id")?.as_u64()?;
            let lead = status.get("leader")?.as_u64()?;
            if lead == 0 || leader_id.is_some_and(|l| l != lead) {
                return None;
            }
            leader_id = Some(lead);
            if id == lead {
                leader = (0..NODES).find(|i| endpoint.starts_with(&etcd_ip(*i).to_string()));
            }
        }
        leader
    }

    /// The index of the DCS leader (etcd's Raft leader or ZooKeeper's quorum
    /// leader), if there is one and `all` three servers (when asked) answer.
    pub fn dcs_leader(&self, all: bool) -> Option<usize> {
        match self.dcs {
            Dcs::Etcd => self.etcd_leader(all),
            Dcs::ZooKeeper => {
                let modes: Vec<Option<bool>> = (0..NODES).map(|i| zk::leads(etcd_ip(i))).collect();
                if all && modes.iter().any(Option::is_none) {
                    return None;
                }
                let leaders: Vec<usize> = (0..NODES).filter(|i| modes[*i] == Some(true)).collect();
                match leaders[..] {
                    [one] => Some(one),
                    _ => None,
                }
            }
        }
    }

    /// The raw value of a DCS key (full path, `/service/<scope>/…`), `None` when absent.
    pub fn dcs_get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        match &self.zk {
            Some(keys) => keys.get(key),
            None => {
                let out = Command::new("/usr/bin/etcdctl")
                    .env("ETCDCTL_API", "3")
                    .arg(format!("--endpoints={}", self.etcd_endpoints()))
                    .args(["--dial-timeout=1s", "--command-timeout=2s"])
                    .args(["get", key, "-w", "json"])
                    .stdin(Stdio::null())
                    .output()
                    .map_err(|source| ChaosError::Spawn {
                        command: format!("etcdctl get {key}"),
                        source,
                    })?;
                if !out.status.success() {
                    return Err(ChaosError::Client(format!(
                        "etcdctl get {key}: {}",
                        String::from_utf8_lossy(&out.stderr).trim()
                    )));
                }
                // JSON output carries the value in base64: any bytes survive.
                let parsed: Value =
                    serde_json::from_slice(&out.stdout).map_err(|e| ChaosError::Parse {
                        what: format!("etcdctl get {key}"),
                        detail: e.to_string(),
                    })?;
                let Some(value) = parsed
                    .get("kvs")
                    .and_then(Value::as_array)
                    .and_then(|kvs| kvs.first())
                    .and_then(|kv| kv.get("value"))
                    .and_then(Value::as_str)
                else {
                    return Ok(None);
                };
                use base64::Engine as _;
                base64::engine::general_purpose::STANDARD
                    .decode(value)
                    .map(Some)
                    .map_err(|e| ChaosError::Parse {
                        what: format!("the value of {key}"),
                        detail: e.to_string(),
                    })
            }
        }
    }

    /// Writes raw bytes into a DCS key behind the agents' backs (on etcd
    /// without a lease, on ZooKeeper creating a persistent znode if absent).
    pub fn dcs_put(&self, key: &str, value: &[u8]) -> Result<()> {
        match &self.zk {
            Some(keys) => keys.put(key, value),
            None => {
                use std::os::unix::ffi::OsStrExt;
                // `--` so that a value starting with `-` is not read as a flag.
                sys::run(
                    Command::new("/usr/bin/etcdctl")
                        .env("ETCDCTL_API", "3")
                        .arg(format!("--endpoints={}", self.etcd_endpoints()))
                        .args(["--dial-timeout=1s", "--command-timeout=2s", "put", "--"])
                        .arg(key)
                        .arg(std::ffi::OsStr::from_bytes(value)),
                )
                .map(drop)
            }
        }
    }

    /// Deletes a DCS key (absent is fine).
    pub fn dcs_del(&self, key: &str) -> Result<()> {
        match &self.zk {
            Some(keys) => keys.del(key),
            None => self.etcdctl(&["del", key]).map(drop),
        }
    }

    fn wait_etcd(&self, timeout: Duration) -> Result<()> {
        sys::wait_for(
            "the three DCS servers to elect a leader",
            timeout,
            Duration::from_millis(200),
            || self.dcs_leader(true),
        )
        .map(drop)
    }

    fn wait_dns_server(&self, timeout: Duration) -> Result<()> {
        sys::wait_for(
            "BIND to answer",
            timeout,
            Duration::from_millis(100),
            || crate::dns::resolve(self.dns_server(), WRITER, Duration::from_millis(300)).ok(),
        )
        .map(drop)
    }

    /// BIND's address.
    pub fn dns_server(&self) -> SocketAddr {
        SocketAddr::from((DNS_IP, 53))
    }

    /// The addresses the writer's name resolves to now.
    pub fn writer_addrs(&self) -> Option<Vec<Ipv4Addr>> {
        crate::dns::resolve(self.dns_server(), WRITER, Duration::from_millis(300)).ok()
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
        let primaries: Vec<usize> = (0..NODES)
            .filter(|i| self.nodes[*i].get("/primary").0 == 200)
            .collect();
        let [primary] = primaries[..] else {
            return None;
        };
        for (i, node) in self.nodes.iter().enumerate() {
            if i != primary && node.get("/replica").0 != 200 {
                return None;
            }
        }
        let patroni = self.nodes[primary].get_json("/patroni")?;
        let replication = patroni.get("replication")?.as_array()?;
        let streaming = replication
            .iter()
            .filter(|r| r.get("state").and_then(Value::as_str) == Some("streaming"))
            .count();
        if streaming < NODES - 1 {
            return None;
        }
        if self.mode != Mode::Asynchronous
            && !replication.iter().any(|r| {
                matches!(
                    r.get("sync_state").and_then(Value::as_str),
                    Some("sync" | "quorum")
                )
            })
        {
            return None;
        }
        if self.writer_addrs()? != vec![self.nodes[primary].ip] {
            return None;
        }
        self.dcs_leader(true)?;
        for member in &mut self.etcd {
            if !member.proc.running() {
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
        let primaries: Vec<usize> = (0..NODES)
            .filter(|i| self.nodes[*i].get("/primary").0 == 200)
            .collect();
        match primaries[..] {
            [one] => Some(one),
            _ => None,
        }
    }

    /// The last `lines` lines of every agent's, PostgreSQL's, etcd's and BIND's log.
    pub fn log_tails(&self, lines: usize) -> String {
        let mut out = String::new();
        for node in &self.nodes {
            out.push_str(&format!(
                "----- {} agent ({}) -----\n{}\n",
                node.name,
                node.agent.log().display(),
                tail(node.agent.log(), lines)
            ));
            out.push_str(&format!(
                "----- {} PostgreSQL -----\n{}\n",
                node.name,
                tail(&node.server_log(), lines / 2)
            ));
        }
        for member in &self.etcd {
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
            let _ = fs::copy(
                node.server_log(),
                self.logs.join(format!("{}-postgresql.log", node.name)),
            );
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
        for member in &mut self.etcd {
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

/// The last `lines` lines of a file.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = match fs::read(path) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) => return format!("(cannot read {}: {e})", path.display()),
    };
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn node_yaml(
    name: &str,
    ip: Ipv4Addr,
    data_dir: &Path,
    spec: &ClusterSpec<'_>,
    secret: &str,
) -> String {
    let dcs = match spec.dcs {
        Dcs::Etcd => format!(
            "etcd3:\n  hosts: [{}]",
            (0..NODES)
                .map(|i| format!("{}:2379", etcd_ip(i)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Dcs::ZooKeeper => format!("zookeeper:\n  hosts: [{}]", zk_hosts().replace(',', ", ")),
    };
    let (ttl, loop_wait, retry_timeout) = spec.timing;
    let sync = match spec.mode {
        Mode::Synchronous => "synchronous_mode: true",
        Mode::Strict => "synchronous_mode: true\n    synchronous_mode_strict: true",
        Mode::Quorum => "synchronous_mode: quorum",
        Mode::Asynchronous => "synchronous_mode: false",
    };
    format!(
        "# matriarch chaos run: {name} (written by matriarch-chaos).
scope: {SCOPE}
name: {name}
log:
  level: info
restapi:
  listen: {ip}:{API_PORT}
  authentication:
    username: {API_USER}
    password: {API_PASSWORD}
{dcs}
bootstrap:
  initdb: [--no-sync]
  dcs:
    ttl: {ttl}
    loop_wait: {loop_wait}
    retry_timeout: {retry_timeout}
    {sync}
postgresql:
  listen: {ip}:{PG_PORT}
  data_dir: {data_dir}
  bin_dir: {bin_dir}
  authentication:
    superuser: {{username: {PG_USER}, password: {PG_PASSWORD}}}
    replication: {{username: replicator, password: chaos-replication}}
  parameters:
    # Processes die here, not machines: the OS keeps what was written.
    fsync: 'off'
    wal_keep_size: 128MB
    # Epoch timestamps with milliseconds: the checker reads promotions from here.
    log_line_prefix: '%n [%p] '
router:
  dns:
    server: {DNS_IP}:53
    zone: {ZONE}
    writer: {WRITER}
    ttl: 1
    tsig:
      key_name: {TSIG_KEY}
      algorithm: hmac-sha256
      secret: {secret}
",
        data_dir = data_dir.display(),
        bin_dir = bin_dir().display(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_hosts() {
        assert_eq!(node_ip(0), Ipv4Addr::new(127, 1, 0, 11));
        assert_eq!(etcd_ip(2), Ipv4Addr::new(127, 1, 0, 23));
        assert_eq!(node_at(node_ip(1)), Some(1));
        assert_eq!(node_at(DNS_IP), None);
        let hosts = hosts();
        assert_eq!(hosts.len(), 8);
        assert!(hosts.iter().any(|h| h.short == CLIENT && h.ip == CLIENT_IP));
    }
}
