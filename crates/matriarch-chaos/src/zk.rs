//! The ZooKeeper side of `--dcs zookeeper`: the ensemble's configuration, its
//! leader (`srvr`), and raw key access for the faults that spoil keys.
//!
//! Everything here runs from the client namespace, as the etcd side does.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use zookeeper_client::{Acls, Client, CreateMode};

use crate::error::{ChaosError, Result};

/// The client port on every server.
pub const CLIENT_PORT: u16 = 2181;
/// ZooKeeper's jar (the test kit's).
pub const JAR: &str = matriarch_testkit::ZOOKEEPER_JAR;
/// The Java runtime.
pub const JAVA: &str = "/usr/bin/java";
/// How long one key operation may take: a stopped ensemble must not hang a fault.
const OP_TIMEOUT: Duration = Duration::from_secs(5);

/// `zoo.cfg` of server `myid` (1-based) of an ensemble at `ips`, with its data in
/// `data_dir`. A 1 s tick (elections in about a second) and session timeouts
/// from 2 s, so that the agents' ttl (5 s and more) is granted as asked.
pub fn config(myid: usize, ips: &[Ipv4Addr], data_dir: &Path) -> String {
    let mut cfg = format!(
        "tickTime=1000\ninitLimit=10\nsyncLimit=3\nminSessionTimeout=2000\n\
         maxSessionTimeout=60000\ndataDir={}\nclientPort={CLIENT_PORT}\n\
         clientPortAddress={}\nadmin.enableServer=false\n4lw.commands.whitelist=*\n\
         forceSync=no\n",
        data_dir.display(),
        ips[myid - 1]
    );
    for (i, ip) in ips.iter().enumerate() {
        cfg.push_str(&format!("server.{}={ip}:2888:3888\n", i + 1));
    }
    cfg
}

/// The answer of one server to `srvr`: `Some(true)` when it leads, `Some(false)`
/// when it follows, `None` when it does not answer or serves no quorum.
pub fn leads(ip: Ipv4Addr) -> Option<bool> {
    let addr = SocketAddr::from((ip, CLIENT_PORT));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_millis(700))).ok()?;
    s.write_all(b"srvr").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let mode = out.lines().find_map(|l| l.strip_prefix("Mode: "))?.trim();
    match mode {
        "leader" => Some(true),
        "follower" => Some(false),
        _ => None,
    }
}

/// Raw reads and writes of znodes, outside any agent's session.
pub struct Keys {
    runtime: tokio::runtime::Runtime,
    connect: String,
}

impl Keys {
    /// A client of the ensemble `hosts` (`ip:port,…`); connects per operation.
    pub fn new(hosts: String) -> Result<Keys> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| ChaosError::io("starting a runtime for the ZooKeeper client", e))?;
        Ok(Keys {
            runtime,
            connect: hosts,
        })
    }

    fn with<T, F, Fut>(&self, what: &str, op: F) -> Result<T>
    where
        F: FnOnce(Client) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<T, zookeeper_client::Error>>,
    {
        let connect = self.connect.clone();
        self.runtime
            .block_on(async move {
                tokio::time::timeout(OP_TIMEOUT, async move {
                    let client = Client::connector()
                        .with_session_timeout(Duration::from_secs(6))
                        .with_connection_timeout(Duration::from_secs(2))
                        .connect(&connect)
                        .await?;
                    op(client).await
                })
                .await
            })
            .map_err(|_| ChaosError::Client(format!("ZooKeeper: {what}: timed out")))?
            .map_err(|e| ChaosError::Client(format!("ZooKeeper: {what}: {e}")))
    }

    /// The value of `path`, `None` when it does not exist.
    pub fn get(&self, path: &str) -> Result<Option<Vec<u8>>> {
        let p = path.to_owned();
        self.with(&format!("get {path}"), |c| async move {
            match c.get_data(&p).await {
                Ok((data, _)) => Ok(Some(data)),
                Err(zookeeper_client::Error::NoNode) => Ok(None),
                Err(e) => Err(e),
            }
        })
    }

    /// Sets `path` to `value`, creating it (persistent, open ACL) when absent.
    pub fn put(&self, path: &str, value: &[u8]) -> Result<()> {
        let p = path.to_owned();
        let v = value.to_vec();
        self.with(&format!("set {path}"), |c| async move {
            match c.set_data(&p, &v, None).await {
                Ok(_) => Ok(()),
                Err(zookeeper_client::Error::NoNode) => c
                    .create(
                        &p,
                        &v,
                        &CreateMode::Persistent.with_acls(Acls::anyone_all()),
                    )
                    .await
                    .map(drop),
                Err(e) => Err(e),
            }
        })
    }

    /// Deletes `path` (absent is fine).
    pub fn del(&self, path: &str) -> Result<()> {
        let p = path.to_owned();
        self.with(&format!("delete {path}"), |c| async move {
            match c.delete(&p, None).await {
                Ok(()) | Err(zookeeper_client::Error::NoNode) => Ok(()),
                Err(e) => Err(e),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_names_every_server_and_its_own_address() {
        let ips = [
            Ipv4Addr::new(127, 1, 0, 21),
            Ipv4Addr::new(127, 1, 0, 22),
            Ipv4Addr::new(127, 1, 0, 23),
        ];
        let cfg = config(2, &ips, Path::new("/tmp/x"));
        assert!(cfg.contains("clientPortAddress=127.1.0.22\n"));
        assert!(cfg.contains("server.1=127.1.0.21:2888:3888\n"));
        assert!(cfg.contains("server.3=127.1.0.23:2888:3888\n"));
        assert!(cfg.contains("dataDir=/tmp/x\n"));
    }
}
