//! moto's AWS emulator server (`moto_server`) from the venv made by `cargo xtask deps`.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tempfile::TempDir;

use crate::error::{Result, TestkitError};
use crate::http::{http_request, http_request_timeout};
use crate::ports::free_port;
use crate::process::{
    lock_process, require_program, retry_on_port_clash, temp_dir, ServiceProcess, Spec,
};

const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// `moto_server` over TLS, ending each connection with a TLS close_notify.
/// Werkzeug closes every connection after one response (`Connection: close`)
/// without one; pgBackRest 2.45 then reads a zero-length answer (any PUT) to
/// the end of the stream and fails: "TLS error [1:167772454] unexpected eof
/// while reading".
const TLS_LAUNCHER: &str = r#"
import ssl, sys
from werkzeug import serving
from moto.server import main

plain_shutdown = serving.BaseWSGIServer.shutdown_request

def shutdown_request(self, request):
    if isinstance(request, ssl.SSLSocket):
        try:
            request.settimeout(2)
            request.unwrap()
        except (OSError, ValueError):
            pass
    plain_shutdown(self, request)

serving.BaseWSGIServer.shutdown_request = shutdown_request
main(sys.argv[1:])
"#;

/// The moto venv: `$MATRIARCH_MOTO_VENV`, else `<workspace>/target/moto-venv`.
pub fn moto_venv() -> PathBuf {
    std::env::var_os("MATRIARCH_MOTO_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/moto-venv"))
}

/// A `moto_server` on a free 127.0.0.1 port; killed on drop. Any credentials work;
/// use region `us-east-1`.
#[derive(Debug)]
pub struct MotoServer {
    port: u16,
    scheme: &'static str,
    process: Mutex<ServiceProcess>,
    _dir: TempDir,
}

impl MotoServer {
    /// Starts `moto_server` and waits until it answers HTTP.
    pub fn start() -> Result<Self> {
        Self::launch(None)
    }

    /// Starts `moto_server` serving HTTPS with the PEM certificate `cert` and its
    /// key `key`, and waits until it accepts connections.
    pub fn start_tls(cert: &Path, key: &Path) -> Result<Self> {
        Self::launch(Some((cert, key)))
    }

    fn launch(tls: Option<(&Path, &Path)>) -> Result<Self> {
        let program = moto_venv().join("bin/moto_server");
        require_program("moto_server", &program)?;
        retry_on_port_clash("moto start", Duration::ZERO, || {
            let dir = temp_dir("matriarch-moto-", "moto")?;
            let port = free_port()?;
            let mut spec = match tls {
                None => Spec::new(&program),
                Some(_) => Spec::new(moto_venv().join("bin/python"))
                    .arg("-c")
                    .arg(TLS_LAUNCHER),
            }
            .arg("-H")
            .arg("127.0.0.1")
            .arg("-p")
            .arg(port.to_string());
            if let Some((cert, key)) = tls {
                spec = spec.arg("-c").arg(cert).arg("-k").arg(key);
            }
            spec.cwd = Some(dir.path().to_path_buf());
            spec.envs = vec![("PYTHONUNBUFFERED".into(), "1".into())];
            let process = ServiceProcess::spawn("moto_server", spec, dir.path().join("moto.log"))?;
            let server = MotoServer {
                port,
                scheme: if tls.is_some() { "https" } else { "http" },
                process: Mutex::new(process),
                _dir: dir,
            };
            let url = format!("{}/moto-api/", server.endpoint_url());
            server.lock().wait_until(READY_TIMEOUT, || {
                if tls.is_some() {
                    // The testkit's HTTP client has no TLS: a listening socket is
                    // enough, the caller's first HTTPS request proves the rest.
                    return Ok(TcpStream::connect(("127.0.0.1", port)).is_ok());
                }
                http_request_timeout("GET", &url, &[], b"", Duration::from_secs(2))
                    .map(|_| true)
                    .map_err(|e| e.to_string())
            })?;
            Ok(server)
        })
    }

    fn lock(&self) -> MutexGuard<'_, ServiceProcess> {
        lock_process(&self.process)
    }

    /// The endpoint URL, e.g. `http://127.0.0.1:18080` (`https://` with TLS).
    pub fn endpoint_url(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme, self.port)
    }

    /// The port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The last lines of moto's log.
    pub fn log_tail(&self) -> String {
        self.lock().log_tail()
    }

    /// Drops all emulated state (`POST /moto-api/reset`; plain HTTP only).
    pub fn reset(&self) -> Result<()> {
        let url = format!("{}/moto-api/reset", self.endpoint_url());
        let resp = http_request("POST", &url, &[], b"")?;
        if resp.status == 200 {
            Ok(())
        } else {
            Err(TestkitError::Parse {
                context: format!("POST {url}"),
                detail: format!("HTTP {}: {}", resp.status, resp.body_text()),
            })
        }
    }
}
