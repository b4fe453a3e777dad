//! The network lab: one network namespace per host, all plugged into a bridge that
//! lives in a switch namespace of its own.
//!
//! Every namespace of a run is named `mch<pid>-<host>` (the pid of the process that
//! made them), so simultaneous runs never share one, and a later run can tell the
//! namespaces of a dead run ([`cleanup_stale`]) from those of a live one. Inside
//! each host namespace `lo` is shrunk to `127.0.0.1/32`, `route_localnet` is on, and
//! the veth `eth0` carries the host's `127.1.0.x/24` address. As every run has its
//! own bridge, two runs may use the same addresses without meeting.

use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::error::{ChaosError, Result};
use crate::sys;

/// Where the namespaces' names live.
const NETNS_DIR: &str = "/run/netns";
/// The prefix of every namespace a chaos run makes.
const PREFIX: &str = "mch";
/// The switch namespace's short name.
const SWITCH: &str = "sw";
/// The nftables table the partitions use.
const NFT_TABLE: &str = "chaos";

/// A host of the lab: its short name (`n1`, `e2`, `dns`, `cl`) and address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Host {
    /// Short name: the namespace's suffix.
    pub short: String,
    /// Its address on the bridge.
    pub ip: Ipv4Addr,
}

impl Host {
    /// A host.
    pub fn new(short: &str, ip: Ipv4Addr) -> Host {
        Host {
            short: short.to_owned(),
            ip,
        }
    }
}

/// The namespaces of one run; deleted (with every process in them) on drop.
#[derive(Debug)]
pub struct Lab {
    prefix: String,
    hosts: Vec<Host>,
    made: Vec<String>,
    torn_down: bool,
}

/// Checks that this process may make namespaces (root, `ip netns` works).
pub fn preflight() -> Result<()> {
    if !sys::is_root() {
        return Err(ChaosError::Setup(
            "the chaos run needs root (network namespaces, nftables, PostgreSQL as the \
             `postgres` OS user); run `cargo xtask chaos` / `cargo xtask test` as root"
                .into(),
        ));
    }
    for program in ["ip", "nft", "sysctl"] {
        if sys::run(Command::new(program).arg("-V")).is_err()
            && sys::run(Command::new(program).arg("--version")).is_err()
        {
            return Err(ChaosError::Setup(format!(
                "`{program}` is missing or does not run (install iproute2, nftables, procps: \
                 `cargo xtask deps`)"
            )));
        }
    }
    sys::ip(&["netns", "list"])
        .map_err(|e| ChaosError::Setup(format!("`ip netns` does not work on this machine: {e}")))?;
    Ok(())
}

/// Deletes the namespaces (and kills the processes in them) of chaos runs whose
/// process is gone. Returns how many namespaces it removed.
pub fn cleanup_stale() -> usize {
    let Ok(entries) = std::fs::read_dir(NETNS_DIR) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = owner_pid(&name) else {
            continue;
        };
        if sys::alive(pid) {
            continue;
        }
        kill_namespace_processes(&name);
        if sys::ip(&["netns", "del", &name]).is_ok() {
            removed += 1;
        }
    }
    removed
}

/// The pid in a chaos namespace's name (`mch<pid>-<host>`).
fn owner_pid(name: &str) -> Option<i32> {
    let rest = name.strip_prefix(PREFIX)?;
    let (pid, _) = rest.split_once('-')?;
    pid.parse().ok()
}

/// The pids of the processes in namespace `ns`.
fn namespace_pids(ns: &str) -> Vec<i32> {
    sys::ip(&["netns", "pids", ns])
        .map(|out| {
            out.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// SIGKILLs every process in namespace `ns` and waits (up to 5 s) until they are gone.
fn kill_namespace_processes(ns: &str) {
    let me = std::process::id() as i32;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let pids: Vec<i32> = namespace_pids(ns)
            .into_iter()
            .filter(|p| *p != me)
            .collect();
        if pids.is_empty() || Instant::now() > deadline {
            return;
        }
        for pid in pids {
            // A stopped process dies of SIGKILL too; SIGCONT is for good measure.
            sys::signal(pid, libc::SIGKILL);
            sys::signal(pid, libc::SIGCONT);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Moves the calling thread into namespace `ns` (threads and processes it starts
/// afterwards are in it too).
pub fn enter(ns: &str) -> Result<()> {
    let path = format!("{NETNS_DIR}/{ns}");
    let file = File::open(&path).map_err(|e| ChaosError::io(format!("opening {path}"), e))?;
    // SAFETY: setns(2) on a valid namespace descriptor; it only changes this thread's
    // network namespace.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(ChaosError::io(
            format!("entering network namespace {ns}"),
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

impl Lab {
    /// Makes the switch and one namespace per host, wired to the bridge.
    pub fn create(hosts: &[Host]) -> Result<Lab> {
        let mut lab = Lab {
            prefix: format!("{PREFIX}{}-", std::process::id()),
            hosts: hosts.to_vec(),
            made: Vec::new(),
            torn_down: false,
        };
        lab.build()?;
        Ok(lab)
    }

    fn build(&mut self) -> Result<()> {
        let sw = self.ns(SWITCH);
        sys::ip(&["netns", "add", &sw])?;
        self.made.push(sw.clone());
        sys::ip(&["-n", &sw, "link", "add", "br0", "type", "bridge"])?;
        sys::ip(&["-n", &sw, "link", "set", "br0", "up"])?;
        for host in self.hosts.clone() {
            let ns = self.ns(&host.short);
            sys::ip(&["netns", "add", &ns])?;
            self.made.push(ns.clone());
            let port = Self::port(&host.short);
            sys::ip(&[
                "-n", &ns, "link", "add", "eth0", "type", "veth", "peer", "name", &port, "netns",
                &sw,
            ])?;
            sys::ip(&["-n", &sw, "link", "set", &port, "master", "br0"])?;
            sys::ip(&["-n", &sw, "link", "set", &port, "up"])?;
            sys::ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            sys::ip(&["-n", &ns, "addr", "del", "127.0.0.1/8", "dev", "lo"])?;
            sys::ip(&["-n", &ns, "addr", "add", "127.0.0.1/32", "dev", "lo"])?;
            sys::run(Command::new("ip").args([
                "netns",
                "exec",
                &ns,
                "sysctl",
                "-qw",
                "net.ipv4.conf.all.route_localnet=1",
                "net.ipv4.conf.eth0.route_localnet=1",
            ]))?;
            let cidr = format!("{}/24", host.ip);
            sys::ip(&["-n", &ns, "addr", "add", &cidr, "dev", "eth0"])?;
            sys::ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        }
        Ok(())
    }

    /// The full namespace name of host `short`.
    pub fn ns(&self, short: &str) -> String {
        format!("{}{short}", self.prefix)
    }

    /// The prefix of this run's namespaces (`mch<pid>-`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The bridge port (in the switch namespace) of host `short`.
    fn port(short: &str) -> String {
        format!("v{short}")
    }

    /// Takes host `short`'s link down on the switch side: it reaches nobody.
    pub fn isolate(&self, short: &str) -> Result<()> {
        let port = Self::port(short);
        sys::ip(&["-n", &self.ns(SWITCH), "link", "set", &port, "down"]).map(drop)
    }

    /// Brings host `short`'s link back up.
    pub fn reconnect(&self, short: &str) -> Result<()> {
        let port = Self::port(short);
        sys::ip(&["-n", &self.ns(SWITCH), "link", "set", &port, "up"]).map(drop)
    }

    /// Drops, inside host `short`, every packet from or to `peers` (nftables).
    pub fn cut(&self, short: &str, peers: &[Ipv4Addr]) -> Result<()> {
        let set = peers
            .iter()
            .map(Ipv4Addr::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        let script = format!(
            "table inet {NFT_TABLE} {{\n\
             \x20 chain in {{ type filter hook input priority 0; policy accept; ip saddr {{ {set} }} drop; }}\n\
             \x20 chain out {{ type filter hook output priority 0; policy accept; ip daddr {{ {set} }} drop; }}\n\
             }}\n"
        );
        sys::run_with_input(
            Command::new("ip").args(["netns", "exec", &self.ns(short), "nft", "-f", "-"]),
            &script,
        )
        .map(drop)
    }

    /// Removes the drop rules of [`Lab::cut`] from host `short` (no-op without any).
    pub fn uncut(&self, short: &str) -> Result<()> {
        let ns = self.ns(short);
        let listed =
            sys::run(Command::new("ip").args(["netns", "exec", &ns, "nft", "list", "tables"]))?;
        if listed.contains(NFT_TABLE) {
            sys::run(Command::new("ip").args([
                "netns", "exec", &ns, "nft", "delete", "table", "inet", NFT_TABLE,
            ]))?;
        }
        Ok(())
    }

    /// The pids of the processes in host `short`'s namespace.
    pub fn pids(&self, short: &str) -> Vec<i32> {
        namespace_pids(&self.ns(short))
    }

    /// SIGKILLs every process in host `short`'s namespace (a power cut).
    pub fn kill_all(&self, short: &str) {
        kill_namespace_processes(&self.ns(short));
    }

    /// Kills every process in the run's namespaces and deletes them; safe to call twice.
    pub fn teardown(&mut self) {
        if self.torn_down {
            return;
        }
        self.torn_down = true;
        for ns in self.made.iter().rev() {
            kill_namespace_processes(ns);
        }
        for ns in self.made.iter().rev() {
            if let Err(e) = sys::ip(&["netns", "del", ns]) {
                eprintln!("warning: cannot delete network namespace {ns}: {e}");
            }
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.teardown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_pid_reads_only_chaos_names() {
        for (namespace, owner) in [
            ("mch123-n1", Some(123)),
            ("mch9-sw", Some(9)),
            ("bench-n1", None),
            ("mchx-n1", None),
            ("mch12", None),
        ] {
            assert_eq!(owner_pid(namespace), owner, "{namespace}");
        }
    }
}
