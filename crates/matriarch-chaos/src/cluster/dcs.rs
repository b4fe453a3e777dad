//! The DCS of a chaos run: three etcd members or a three-server ZooKeeper
//! ensemble in the namespaces e1..e3, and raw access to its keys for the faults
//! that spoil them.

use std::ffi::OsString;
use std::fs;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use matriarch_testkit::cluster::DcsHosts;
use matriarch_testkit::{zookeeper_args, EtcdMemberArgs, ZOOKEEPER_LOG4J};
use serde_json::Value;

use super::layout::{etcd_ip, NODES};
use super::node::Proc;
use crate::error::{ChaosError, Result};
use crate::netns::Lab;
use crate::settings::Dcs;
use crate::{sys, zk};

/// etcd's program.
const ETCD: &str = "/usr/bin/etcd";
/// etcdctl.
const ETCDCTL: &str = "/usr/bin/etcdctl";

/// One DCS server: an etcd member or a ZooKeeper server.
#[derive(Debug)]
pub struct DcsServer {
    /// e1..e3 (also the namespace's short name).
    pub name: String,
    /// Its address.
    pub ip: Ipv4Addr,
    /// The process.
    pub proc: Proc,
}

/// The DCS of a run: its three servers, and raw access to its keys (etcdctl
/// for etcd, a ZooKeeper client for ZooKeeper).
pub struct DcsServers {
    /// Which DCS it is.
    pub kind: Dcs,
    /// The servers, in e1..e3.
    pub servers: Vec<DcsServer>,
    /// ZooKeeper's client for the key faults (`None` for etcd).
    zk: Option<zk::Keys>,
}

/// The agents' `etcd3` or `zookeeper` hosts.
pub(super) fn hosts(dcs: Dcs) -> DcsHosts {
    match dcs {
        Dcs::Etcd => DcsHosts::Etcd((0..NODES).map(|i| format!("{}:2379", etcd_ip(i))).collect()),
        Dcs::ZooKeeper => DcsHosts::ZooKeeper(
            (0..NODES)
                .map(|i| format!("{}:{}", etcd_ip(i), zk::CLIENT_PORT))
                .collect(),
        ),
    }
}

/// The programs a `kind` DCS needs.
pub(super) fn programs(kind: Dcs) -> [&'static str; 2] {
    match kind {
        Dcs::Etcd => [ETCD, ETCDCTL],
        Dcs::ZooKeeper => [zk::JAVA, zk::JAR],
    }
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
fn start_etcd(lab: &Lab, logs: &Path, data: &Path) -> Result<Vec<DcsServer>> {
    let initial = (0..NODES)
        .map(|i| format!("e{}=http://{}:2380", i + 1, etcd_ip(i)))
        .collect::<Vec<_>>()
        .join(",");
    let mut etcd = Vec::new();
    for i in 0..NODES {
        let name = format!("e{}", i + 1);
        let ip = etcd_ip(i);
        let mut argv: Vec<OsString> = vec![ETCD.into()];
        argv.extend(
            EtcdMemberArgs {
                name: &name,
                data_dir: &data.join(format!("etcd-{name}")),
                client_url: &format!("http://{ip}:2379"),
                peer_url: &format!("http://{ip}:2380"),
                initial_cluster: &initial,
                token: lab.prefix().trim_end_matches('-'),
            }
            .to_args(),
        );
        let mut proc =
            Proc::in_namespace(&lab.ns(&name), argv, logs.join(format!("etcd-{name}.log")));
        proc.start()?;
        etcd.push(DcsServer { name, ip, proc });
    }
    Ok(etcd)
}

/// Starts a three-server ZooKeeper ensemble in e1..e3 (java with
/// `QuorumPeerMain`, a `zoo.cfg` and a `myid` each), not waiting for it.
fn start_zookeeper(lab: &Lab, logs: &Path, data: &Path) -> Result<Vec<DcsServer>> {
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
        write(&dir.join("log4j.properties"), ZOOKEEPER_LOG4J)?;
        // log4j and its SLF4J binding, so that the servers' own logs say what
        // the ensemble did (without them SLF4J falls back to no-op).
        let classpath = format!(
            "{}:{}:/usr/share/java/slf4j-log4j12.jar:/usr/share/java/log4j-1.2.jar",
            dir.display(),
            zk::JAR
        );
        let mut argv: Vec<OsString> = vec![zk::JAVA.into()];
        argv.extend(zookeeper_args(&dir, &classpath, &cfg));
        let mut proc = Proc::in_namespace(
            &lab.ns(&name),
            argv,
            logs.join(format!("zookeeper-{name}.log")),
        );
        proc.start()?;
        servers.push(DcsServer {
            name,
            ip: ips[i],
            proc,
        });
    }
    Ok(servers)
}

impl DcsServers {
    /// Starts the three `kind` servers (not waiting for them) and, for
    /// ZooKeeper, the client the key faults use.
    pub(super) fn start(lab: &Lab, kind: Dcs, logs: &Path, data: &Path) -> Result<DcsServers> {
        let (servers, zk) = match kind {
            Dcs::Etcd => (start_etcd(lab, logs, data)?, None),
            Dcs::ZooKeeper => (
                start_zookeeper(lab, logs, data)?,
                Some(zk::Keys::new(zk_hosts())?),
            ),
        };
        Ok(DcsServers { kind, servers, zk })
    }

    /// The etcd endpoints, comma-separated.
    fn etcd_endpoints(&self) -> String {
        (0..NODES)
            .map(|i| format!("{}:2379", etcd_ip(i)))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// `etcdctl` against every member, with a 1 s dial timeout and `command_timeout`.
    fn etcdctl_command(&self, command_timeout: &str) -> Command {
        let mut cmd = Command::new(ETCDCTL);
        cmd.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.etcd_endpoints()))
            .arg("--dial-timeout=1s")
            .arg(format!("--command-timeout={command_timeout}"))
            .stdin(Stdio::null());
        cmd
    }

    /// `etcdctl <args>` against every member (run from the client namespace).
    fn etcdctl(&self, args: &[&str]) -> Result<String> {
        sys::run(self.etcdctl_command("2s").args(args))
    }

    /// The index of the etcd leader, if all answering members agree on one and
    /// `all` of them (when asked) answer.
    fn etcd_leader(&self, all: bool) -> Option<usize> {
        let out = self
            .etcdctl_command("1s")
            .args(["endpoint", "status", "-w", "json"])
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
    pub fn leader(&self, all: bool) -> Option<usize> {
        match self.kind {
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
    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        match &self.zk {
            Some(keys) => keys.get(key),
            None => {
                let out = self
                    .etcdctl_command("2s")
                    .args(["get", key, "-w", "json"])
                    .output()
                    .map_err(|source| ChaosError::spawn(&format!("etcdctl get {key}"), source))?;
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
    pub fn put(&self, key: &str, value: &[u8]) -> Result<()> {
        match &self.zk {
            Some(keys) => keys.put(key, value),
            None => {
                use std::os::unix::ffi::OsStrExt;
                // `--` so that a value starting with `-` is not read as a flag.
                sys::run(
                    self.etcdctl_command("2s")
                        .args(["put", "--"])
                        .arg(key)
                        .arg(std::ffi::OsStr::from_bytes(value)),
                )
                .map(drop)
            }
        }
    }

    /// Deletes a DCS key (absent is fine).
    pub fn del(&self, key: &str) -> Result<()> {
        match &self.zk {
            Some(keys) => keys.del(key),
            None => self.etcdctl(&["del", key]).map(drop),
        }
    }

    /// Waits until the three servers agree on a leader.
    pub(super) fn wait_leader(&self, timeout: Duration) -> Result<()> {
        sys::wait_for(
            "the three DCS servers to elect a leader",
            timeout,
            Duration::from_millis(200),
            || self.leader(true),
        )
        .map(drop)
    }
}
