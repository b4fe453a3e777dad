//! HAProxy (Debian's package) in front of a cluster, checking each node's REST
//! API with `option httpchk OPTIONS /primary`, as with Patroni.

use std::fs;
use std::process::{Child, Command, Stdio};

use crate::error::{IoContext, Result};
use crate::ports::free_port;

/// One backend: a node's name, its PostgreSQL address and its REST API port
/// (on the same host).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HaProxyBackend {
    /// The server's name in HAProxy's configuration.
    pub name: String,
    /// PostgreSQL's host.
    pub pg_host: String,
    /// PostgreSQL's port.
    pub pg_port: u16,
    /// The REST API's port, checked with `OPTIONS /primary`.
    pub api_port: u16,
}

/// HAProxy routing clients to the backend that answers 200 on `/primary`;
/// killed on drop.
#[derive(Debug)]
pub struct HaProxy {
    /// The port clients connect to (on 127.0.0.1).
    pub port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl HaProxy {
    /// Starts HAProxy for `backends`.
    pub fn start(backends: &[HaProxyBackend]) -> Result<HaProxy> {
        let dir = tempfile::tempdir().ctx(|| "creating HAProxy's directory".to_owned())?;
        let port = free_port()?;
        let path = dir.path().join("haproxy.cfg");
        fs::write(&path, config(port, backends)).ctx(|| format!("writing {}", path.display()))?;
        let child = Command::new("haproxy")
            .arg("-f")
            .arg(&path)
            .arg("-db")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ctx(|| {
                "starting haproxy (Debian package `haproxy`; run `cargo xtask deps`)".to_owned()
            })?;
        Ok(HaProxy {
            port,
            child,
            _dir: dir,
        })
    }
}

/// The configuration: clients on `127.0.0.1:port`, checks every 500 ms.
fn config(port: u16, backends: &[HaProxyBackend]) -> String {
    let mut config = format!(
        "global\n  maxconn 100\ndefaults\n  mode tcp\n  timeout connect 2s\n  timeout client 30s\n  timeout server 30s\n  timeout check 1s\nlisten primary\n  bind 127.0.0.1:{port}\n  option httpchk OPTIONS /primary\n  http-check expect status 200\n  default-server inter 500ms fall 2 rise 1 on-marked-down shutdown-sessions\n"
    );
    for backend in backends {
        config.push_str(&format!(
            "  server {} {}:{} maxconn 100 check port {}\n",
            backend.name, backend.pg_host, backend.pg_port, backend.api_port
        ));
    }
    config
}

impl Drop for HaProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_backend_is_checked_on_its_rest_api() {
        let backend = HaProxyBackend {
            name: "node1".into(),
            pg_host: "127.0.0.2".into(),
            pg_port: 5432,
            api_port: 8008,
        };
        let text = config(6432, &[backend]);
        assert!(text.contains("  bind 127.0.0.1:6432\n"), "{text}");
        assert!(
            text.ends_with("  server node1 127.0.0.2:5432 maxconn 100 check port 8008\n"),
            "{text}"
        );
    }
}
