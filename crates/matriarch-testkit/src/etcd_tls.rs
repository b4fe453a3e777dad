//! An etcd that serves clients over TLS only and requires client
//! certificates, with the certificates made for it.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use tempfile::TempDir;

use crate::certs::{TestCa, CLIENT_EXTENSIONS, SERVER_EXTENSIONS};
use crate::error::{IoContext, Result};
use crate::etcd::etcd_binary;
use crate::ports::free_port;

/// One etcd member on `https://127.0.0.1:<free port>` that takes only clients
/// with a certificate of its CA; killed on drop.
///
/// Its directory holds the CA `ca.pem` / `ca-key.pem`, the server's
/// `server.pem` / `server-key.pem` (for 127.0.0.1, also good as a client),
/// `<cn>.pem` / `<cn>-key.pem` for each client common name asked for, and
/// `etcd.log`. It does not wait for etcd to be ready: clients retry.
pub struct TlsEtcdServer {
    child: Child,
    url: String,
    dir: TempDir,
}

impl TlsEtcdServer {
    /// Makes the certificates (a client certificate for each of `clients`)
    /// and starts etcd.
    pub fn start(clients: &[&str]) -> Result<TlsEtcdServer> {
        let dir = tempfile::Builder::new()
            .prefix("matriarch-etcd-tls-")
            .tempdir()
            .ctx(|| "creating the TLS etcd's directory".to_owned())?;
        let ca = TestCa::create(dir.path(), "ca")?;
        ca.issue("server", SERVER_EXTENSIONS)?;
        for cn in clients {
            ca.issue(cn, CLIENT_EXTENSIONS)?;
        }
        let (client_port, peer_port) = (free_port()?, free_port()?);
        let url = format!("https://127.0.0.1:{client_port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        let log_path = dir.path().join("etcd.log");
        let log = fs::File::create(&log_path).ctx(|| format!("creating {}", log_path.display()))?;
        let log_err = log.try_clone().ctx(|| "cloning the log file".to_owned())?;
        let p = |file: &str| dir.path().join(file).display().to_string();
        let child = Command::new(etcd_binary()?)
            .arg("--name=tls")
            .arg(format!("--data-dir={}", p("data")))
            .arg(format!("--listen-client-urls={url}"))
            .arg(format!("--advertise-client-urls={url}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=tls={peer}"))
            .arg(format!("--cert-file={}", p("server.pem")))
            .arg(format!("--key-file={}", p("server-key.pem")))
            .arg(format!("--trusted-ca-file={}", p("ca.pem")))
            .arg("--client-cert-auth")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .ctx(|| "starting the TLS etcd".to_owned())?;
        Ok(TlsEtcdServer { child, url, dir })
    }

    /// `https://127.0.0.1:<port>`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The directory with the certificates.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A file of the directory, e.g. `ca.pem`.
    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    /// etcd's log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.path("etcd.log")).unwrap_or_default()
    }
}

impl Drop for TlsEtcdServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
