//! Connections: the listener, the caps on connections in total and per
//! client address, the timeouts on headers and TLS handshakes, and the
//! hyper connection that hands each request to the axum [`super::routes::router`].

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::Request;
use hyper_util::rt::{TokioIo, TokioTimer};
use tower::ServiceExt as _;
use tracing::{debug, info, warn};

use super::routes::{normalize_path, router};
use super::state::{ApiState, Client};
use super::throttle::Throttle;
use super::tls::Tls;

/// How long a client may take to send a request's headers; also how long an
/// idle keep-alive connection is kept.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a TLS handshake may take.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The total connection cap when `restapi.max_connections` is not set (and
/// the file limit allows as many).
pub(super) const DEFAULT_MAX_CONNECTIONS: usize = 10_000;

/// The per-client connection cap when `restapi.max_connections_per_ip` is
/// not set.
pub(super) const DEFAULT_MAX_CONNECTIONS_PER_IP: usize = 100;

/// Caps on the connections the API serves at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ConnectionLimits {
    /// In total.
    pub total: usize,
    /// Per client address.
    pub per_ip: usize,
}

impl ConnectionLimits {
    /// The caps for a process whose soft file limit is `nofile`: the total
    /// is `total` (default [`DEFAULT_MAX_CONNECTIONS`]) but never more than a
    /// quarter of the files, the rest being the HA loop's, the DCS client's
    /// and PostgreSQL's; the per-client cap is `per_ip` (default
    /// [`DEFAULT_MAX_CONNECTIONS_PER_IP`]), never more than the total.
    pub(crate) fn new(nofile: u64, total: Option<usize>, per_ip: Option<usize>) -> Self {
        let share = usize::try_from(nofile / 4).unwrap_or(usize::MAX).max(1);
        let total = total.unwrap_or(DEFAULT_MAX_CONNECTIONS).clamp(1, share);
        let per_ip = per_ip
            .unwrap_or(DEFAULT_MAX_CONNECTIONS_PER_IP)
            .clamp(1, total);
        ConnectionLimits { total, per_ip }
    }
}

/// Why `RLIMIT_NOFILE` could not be read or raised.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FileLimitError {
    /// getrlimit(2) failed.
    #[error("getrlimit(RLIMIT_NOFILE): {0}")]
    Get(std::io::Error),
    /// setrlimit(2) failed; `current` stays in force.
    #[error("setrlimit(RLIMIT_NOFILE) from {current} to {wanted}: {source}")]
    Set {
        /// The soft limit in force.
        current: u64,
        /// The limit asked for.
        wanted: u64,
        /// The system's error.
        source: std::io::Error,
    },
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (a service manager
/// often starts a daemon with 1,024) and returns the soft limit in force.
pub(crate) fn raise_file_limit() -> Result<u64, FileLimitError> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit(2) writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(FileLimitError::Get(std::io::Error::last_os_error()));
    }
    if limit.rlim_cur >= limit.rlim_max {
        return Ok(limit.rlim_cur);
    }
    let current = limit.rlim_cur;
    let wanted = limit.rlim_max;
    limit.rlim_cur = wanted;
    // SAFETY: setrlimit(2) reads the struct we own.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        return Err(FileLimitError::Set {
            current,
            wanted,
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(wanted)
}

/// Why a connection was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The total cap is reached.
    Total,
    /// The client's cap is reached.
    PerIp,
}

/// Counts the connections being served, in total and per client address.
pub(crate) struct ConnectionGate {
    limits: ConnectionLimits,
    total: Arc<tokio::sync::Semaphore>,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    /// Refused connections (one log line per interval).
    refusals: Throttle,
}

/// One admitted connection: gives its places back when dropped.
pub(crate) struct ConnectionPermit {
    _total: tokio::sync::OwnedSemaphorePermit,
    gate: Arc<ConnectionGate>,
    ip: IpAddr,
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        let mut per_ip = self.gate.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = per_ip.get_mut(&self.ip) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                per_ip.remove(&self.ip);
            }
        }
    }
}

impl ConnectionGate {
    pub(crate) fn new(limits: ConnectionLimits) -> Self {
        ConnectionGate {
            limits,
            total: Arc::new(tokio::sync::Semaphore::new(limits.total)),
            per_ip: Mutex::new(HashMap::new()),
            refusals: Throttle::new(),
        }
    }

    /// Admits a connection from `ip` if both caps allow it.
    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<ConnectionPermit, Refusal> {
        // An IPv4 client on a dual-stack socket counts as itself.
        let ip = ip.to_canonical();
        let mut per_ip = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        let count = per_ip.get(&ip).copied().unwrap_or(0);
        if count >= self.limits.per_ip {
            return Err(Refusal::PerIp);
        }
        let total = Arc::clone(&self.total)
            .try_acquire_owned()
            .map_err(|_| Refusal::Total)?;
        per_ip.insert(ip, count + 1);
        Ok(ConnectionPermit {
            _total: total,
            gate: Arc::clone(self),
            ip,
        })
    }

    /// Logs refusals, at most once per [`super::throttle::REFUSAL_LOG_INTERVAL`].
    fn refused(&self, peer: SocketAddr, why: Refusal) {
        let Some(suppressed) = self.refusals.due() else {
            return;
        };
        let cap = match why {
            Refusal::Total => "restapi.max_connections",
            Refusal::PerIp => "restapi.max_connections_per_ip",
        };
        warn!(%peer, cap, total = self.limits.total, per_ip = self.limits.per_ip, suppressed, "REST API connection refused: a cap is reached");
    }
}

/// The listen backlog asked for (the kernel caps it at `somaxconn`): a
/// burst of connections waits in it rather than having a health check's SYN
/// dropped, which costs the check a 1 s retransmission.
const LISTEN_BACKLOG: u32 = 4096;

/// Binds the REST API's listener, with a deep backlog.
pub(crate) fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // As `TcpListener::bind` does: a restarted agent rebinds at once.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Accepts connections on `listener` and serves them with [`router`] until
/// the task is aborted. A connection over a cap of `limits` is closed at
/// once, before anything is read; headers, bodies and TLS handshakes are
/// read under timeouts, so that a silent client gives its place back.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<ApiState>,
    tls: Option<Tls>,
    limits: ConnectionLimits,
) {
    let gate = Arc::new(ConnectionGate::new(limits));
    let app = router(state);
    info!(
        max_connections = limits.total,
        max_connections_per_ip = limits.per_ip,
        "REST API connection caps"
    );
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                warn!(error = %e, "REST API accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let permit = match gate.admit(peer.ip()) {
            Ok(permit) => permit,
            Err(why) => {
                gate.refused(peer, why);
                drop(stream);
                continue;
            }
        };
        let app = app.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match tls {
                Some((acceptor, _)) => {
                    let accepted =
                        tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await;
                    let Ok(Ok(stream)) = accepted else {
                        debug!(%peer, "TLS handshake failed or timed out");
                        return;
                    };
                    let verified_cert = stream
                        .get_ref()
                        .1
                        .peer_certificates()
                        .is_some_and(|c| !c.is_empty());
                    serve_connection(
                        stream,
                        app,
                        Client {
                            peer,
                            verified_cert,
                        },
                    )
                    .await;
                }
                None => {
                    let client = Client {
                        peer,
                        verified_cert: false,
                    };
                    serve_connection(stream, app, client).await;
                }
            }
        });
    }
}

/// Serves HTTP/1.1 requests on one connection until it closes.
async fn serve_connection<S>(stream: S, app: axum::Router, client: Client)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        req.extensions_mut().insert(client);
        normalize_path(&mut req);
        tracing::trace!(method = %req.method(), path = req.uri().path(), peer = %client.peer, "REST request");
        app.clone().oneshot(req)
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .keep_alive(true);
    let _ = builder
        .serve_connection(TokioIo::new(stream), service)
        .await;
}
