//! Real etcd servers (Debian's `etcd-server`, `/usr/bin/etcd`) for tests.

use std::ffi::{OsStr, OsString};
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use tempfile::TempDir;

use crate::error::{Result, TestkitError};
use crate::http::http_request_timeout;
use crate::ports::free_port;
use crate::process::{
    find_program, process_controls, retry_on_port_clash, temp_dir, ServiceProcess, Spec,
};

/// How long a single member or a whole cluster may take to become healthy.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// One member of a new etcd cluster, as its command line names it: the test
/// kit's members on loopback ports and the chaos run's in their namespaces.
#[derive(Debug, Clone, Copy)]
pub struct EtcdMemberArgs<'a> {
    /// The member name (`--name`).
    pub name: &'a str,
    /// Its data directory.
    pub data_dir: &'a Path,
    /// Where it serves clients (`http://host:port`).
    pub client_url: &'a str,
    /// Where it serves its peers.
    pub peer_url: &'a str,
    /// Every member, `name=peer_url` comma-separated.
    pub initial_cluster: &'a str,
    /// The cluster token all members share.
    pub token: &'a str,
}

impl EtcdMemberArgs<'_> {
    /// The arguments after the program (logs go to stderr).
    pub fn to_args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = Vec::new();
        let mut flag = |name: &str, value: &OsStr| {
            args.push(name.into());
            args.push(value.into());
        };
        flag("--name", self.name.as_ref());
        flag("--data-dir", self.data_dir.as_os_str());
        flag("--listen-client-urls", self.client_url.as_ref());
        flag("--advertise-client-urls", self.client_url.as_ref());
        flag("--listen-peer-urls", self.peer_url.as_ref());
        flag("--initial-advertise-peer-urls", self.peer_url.as_ref());
        flag("--initial-cluster", self.initial_cluster.as_ref());
        flag("--initial-cluster-state", "new".as_ref());
        flag("--initial-cluster-token", self.token.as_ref());
        flag("--logger", "zap".as_ref());
        flag("--log-outputs", "stderr".as_ref());
        args
    }
}

pub(crate) fn etcd_binary() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("MATRIARCH_ETCD") {
        let p = PathBuf::from(p);
        crate::process::require_program("etcd", &p)?;
        return Ok(p);
    }
    find_program("etcd")
}

/// Asks `GET /health` on a client URL; `Ok(true)` when the member reports it is healthy.
fn probe_health(client_url: &str) -> std::result::Result<bool, String> {
    let resp = http_request_timeout(
        "GET",
        &format!("{client_url}/health"),
        &[],
        b"",
        Duration::from_secs(2),
    )
    .map_err(|e| e.to_string())?;
    let body = resp.body_text();
    if resp.status == 200 && body.contains("\"health\":\"true\"") {
        Ok(true)
    } else {
        Err(format!("/health answered {}: {}", resp.status, body.trim()))
    }
}

/// Waits until every member is healthy; fails as soon as one member process exits.
fn wait_all_healthy(members: &[EtcdMember], timeout: Duration) -> Result<()> {
    let start = std::time::Instant::now();
    loop {
        let mut pending = None;
        for m in members {
            m.lock().check_running()?;
            if let Err(e) = probe_health(&m.client_url()) {
                pending = Some((m, e));
            }
        }
        let Some((m, detail)) = pending else {
            return Ok(());
        };
        if start.elapsed() >= timeout {
            return Err(TestkitError::NotReady {
                service: format!("etcd {}", m.name),
                waited: start.elapsed(),
                detail,
                log_tail: m.log_tail(),
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Extracts the string value of `"key":"value"` from compact JSON.
fn json_string_field<'a>(json: &'a str, key: &str) -> Option<&'a str> {
    let pat = format!("\"{key}\":\"");
    let start = json.find(&pat)? + pat.len();
    let len = json[start..].find('"')?;
    Some(&json[start..start + len])
}

/// One etcd member process (of an [`EtcdServer`] or an [`EtcdCluster`]).
///
/// All methods take `&self`, so a member can be driven from several tasks.
#[derive(Debug)]
pub struct EtcdMember {
    name: String,
    client_port: u16,
    peer_port: u16,
    data_dir: PathBuf,
    process: Mutex<ServiceProcess>,
}

impl EtcdMember {
    fn spawn(
        binary: &Path,
        base: &Path,
        name: &str,
        client_port: u16,
        peer_port: u16,
        initial_cluster: &str,
        token: &str,
    ) -> Result<Self> {
        let data_dir = base.join(format!("{name}.data"));
        let client = format!("http://127.0.0.1:{client_port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        let mut spec = Spec::new(binary);
        spec.args = EtcdMemberArgs {
            name,
            data_dir: &data_dir,
            client_url: &client,
            peer_url: &peer,
            initial_cluster,
            token,
        }
        .to_args();
        let log = base.join(format!("{name}.log"));
        let process = ServiceProcess::spawn(format!("etcd {name}"), spec, log)?;
        Ok(EtcdMember {
            name: name.to_string(),
            client_port,
            peer_port,
            data_dir,
            process: Mutex::new(process),
        })
    }

    process_controls!("the etcd member");

    /// The member name (`--name`), e.g. `e1`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The client URL, e.g. `http://127.0.0.1:23791`.
    pub fn client_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// The client port on 127.0.0.1.
    pub fn client_port(&self) -> u16 {
        self.client_port
    }

    /// The peer URL, e.g. `http://127.0.0.1:23792`.
    pub fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }

    /// The member's data directory (kept across [`EtcdMember::restart`]).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Whether `GET /health` says the member is healthy (it has a leader) right now.
    pub fn is_healthy(&self) -> bool {
        probe_health(&self.client_url()).unwrap_or(false)
    }

    /// Stops the member gracefully (SIGTERM; SIGKILL after 10 s). No-op when not running.
    pub fn stop(&self) {
        self.lock()
            .terminate(libc::SIGTERM, Duration::from_secs(10));
    }

    /// Starts the member again with the same data directory and ports (killing it first
    /// if it still runs) and waits until its client port accepts connections.
    ///
    /// It does not wait for health: a lone restarted member of a cluster whose other
    /// members are down cannot become healthy. Use [`EtcdMember::wait_healthy`] for that.
    pub fn restart(&self) -> Result<()> {
        let port = self.client_port;
        // The port may linger for a moment after the old process died.
        retry_on_port_clash("restart", Duration::from_millis(500), || {
            let mut p = self.lock();
            p.kill();
            p.start()?;
            p.wait_until(READY_TIMEOUT, || {
                TcpStream::connect_timeout(
                    &SocketAddrV4::new(Ipv4Addr::LOCALHOST, port).into(),
                    Duration::from_millis(500),
                )
                .map(|_| true)
                .map_err(|e| format!("connect to client port {port}: {e}"))
            })
        })
    }

    /// Asks the member for its status (v3 gRPC gateway `maintenance/status`) and returns
    /// `(member_id, leader_id)`.
    pub fn status(&self) -> Result<(u64, u64)> {
        let url = format!("{}/v3/maintenance/status", self.client_url());
        let resp = http_request_timeout("POST", &url, &[], b"{}", Duration::from_secs(2))?;
        let body = resp.body_text();
        let parse = |key: &str| -> Result<u64> {
            json_string_field(&body, key)
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or_else(|| TestkitError::Parse {
                    context: format!("etcd status from {url} (HTTP {})", resp.status),
                    detail: format!("no numeric `{key}` in {body}"),
                })
        };
        Ok((parse("member_id")?, parse("leader")?))
    }

    /// Waits until `GET /health` reports the member healthy, failing after `timeout`.
    pub fn wait_healthy(&self, timeout: Duration) -> Result<()> {
        let url = self.client_url();
        self.lock().wait_until(timeout, || probe_health(&url))
    }
}

/// A single-member etcd cluster in a throwaway directory; killed and removed on drop.
#[derive(Debug)]
pub struct EtcdServer {
    member: EtcdMember,
    _dir: TempDir,
}

impl EtcdServer {
    /// Starts one etcd member on free 127.0.0.1 ports and waits until it is healthy.
    pub fn start() -> Result<Self> {
        let binary = etcd_binary()?;
        retry_on_port_clash("etcd start", Duration::ZERO, || {
            let dir = temp_dir("matriarch-etcd-", "etcd")?;
            let (client_port, peer_port) = (free_port()?, free_port()?);
            let initial = format!("single=http://127.0.0.1:{peer_port}");
            let member = EtcdMember::spawn(
                &binary,
                dir.path(),
                "single",
                client_port,
                peer_port,
                &initial,
                "matriarch-single",
            )?;
            member.wait_healthy(READY_TIMEOUT)?;
            Ok(EtcdServer { member, _dir: dir })
        })
    }

    /// The client URL, e.g. `http://127.0.0.1:23791`.
    pub fn client_url(&self) -> String {
        self.member.client_url()
    }

    /// The member, for kill/pause/resume/restart and more.
    pub fn member(&self) -> &EtcdMember {
        &self.member
    }

    /// SIGKILLs the server (see [`EtcdMember::kill`]).
    pub fn kill(&self) {
        self.member.kill();
    }

    /// SIGSTOPs the server (see [`EtcdMember::pause`]).
    pub fn pause(&self) -> Result<()> {
        self.member.pause()
    }

    /// SIGCONTs the server (see [`EtcdMember::resume`]).
    pub fn resume(&self) -> Result<()> {
        self.member.resume()
    }

    /// Restarts the server with the same data and port, and waits until it is healthy.
    pub fn restart(&self) -> Result<()> {
        self.member.restart()?;
        self.member.wait_healthy(READY_TIMEOUT)
    }
}

/// A multi-member etcd cluster in a throwaway directory; all members are killed and
/// the directory removed on drop.
#[derive(Debug)]
pub struct EtcdCluster {
    members: Vec<EtcdMember>,
    _dir: TempDir,
}

impl EtcdCluster {
    /// Starts `size` members (named `e1`, `e2`, ...) on free 127.0.0.1 ports and waits
    /// until every member is healthy (a leader has been elected).
    pub fn start(size: usize) -> Result<Self> {
        if size == 0 {
            return Err(TestkitError::InvalidArgument(
                "an etcd cluster needs at least one member".into(),
            ));
        }
        let binary = etcd_binary()?;
        retry_on_port_clash("etcd cluster start", Duration::ZERO, || {
            let dir = temp_dir("matriarch-etcd-cluster-", "an etcd cluster")?;
            let mut ports = Vec::with_capacity(size);
            for _ in 0..size {
                ports.push((free_port()?, free_port()?));
            }
            let initial = ports
                .iter()
                .enumerate()
                .map(|(i, (_, peer))| format!("e{}=http://127.0.0.1:{peer}", i + 1))
                .collect::<Vec<_>>()
                .join(",");
            let token = format!(
                "matriarch-{}-{}",
                std::process::id(),
                ports.first().map(|p| p.0).unwrap_or(0)
            );
            let mut members = Vec::with_capacity(size);
            for (i, (client, peer)) in ports.iter().enumerate() {
                members.push(EtcdMember::spawn(
                    &binary,
                    dir.path(),
                    &format!("e{}", i + 1),
                    *client,
                    *peer,
                    &initial,
                    &token,
                )?);
            }
            wait_all_healthy(&members, READY_TIMEOUT)?;
            Ok(EtcdCluster { members, _dir: dir })
        })
    }

    /// The client URLs of all members, in member order.
    pub fn client_urls(&self) -> Vec<String> {
        self.members.iter().map(EtcdMember::client_url).collect()
    }

    /// Member `i` (0-based). Panics when `i` is out of range, like slice indexing.
    pub fn member(&self, i: usize) -> &EtcdMember {
        &self.members[i]
    }

    /// All members.
    pub fn members(&self) -> &[EtcdMember] {
        &self.members
    }

    /// Index of the current leader, as seen by the first member that answers a status
    /// request (killed or paused members are skipped after a short timeout).
    pub fn leader(&self) -> Result<usize> {
        let mut last_err = None;
        for m in &self.members {
            if m.pid().is_none() {
                continue;
            }
            let (_, leader) = match m.status() {
                Ok(s) => s,
                Err(e) => {
                    last_err = Some(e);
                    continue;
                }
            };
            for (i, other) in self.members.iter().enumerate() {
                if other.pid().is_some() && other.status().map(|s| s.0).ok() == Some(leader) {
                    return Ok(i);
                }
            }
            last_err = Some(TestkitError::Parse {
                context: format!("etcd leader as seen by {}", m.name),
                detail: format!("leader id {leader} is not a running member"),
            });
        }
        Err(last_err
            .unwrap_or_else(|| TestkitError::InvalidArgument("no etcd member is running".into())))
    }

    /// The number of members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Always `false`: a cluster has at least one member.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }
}
