//! [`HttpPeerProbe`]: talks to the peers' REST APIs over HTTP or HTTPS.
//!
//! - During a leader race it asks each peer's `GET /patroni` for its WAL
//!   position, fresher than its member record ([`PeerProbe`]).
//! - In failsafe mode, a primary cut off from the DCS sends each member of
//!   the `failsafe` key a `POST /failsafe` heartbeat ([`FailsafeSender`]).
//!
//! A peer whose `api_url` is `https://` is reached over TLS, verified
//! against the cluster's CA (`restapi.cafile`) when one is configured,
//! otherwise against the system's roots; the node's own `restapi.certfile`
//! and `keyfile` are presented as a client certificate when set.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use matriarch_ha::{FailsafeSender, PeerProbe, PeerReport};
use matriarch_model::{FailsafeHeartbeat, Lsn, Member, MemberName, Timeline};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tracing::debug;

use crate::secret::Password;

/// Where the system's CA bundle usually is (`SSL_CERT_FILE` first).
const SYSTEM_CA_BUNDLES: [&str; 4] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
    "/etc/ssl/ca-bundle.pem",
];

/// The largest response body read.
const MAX_RESPONSE: usize = 1 << 20;

/// Talks to peers in parallel, each request bounded by `timeout`; a peer that
/// does not answer in time (or not with a readable body) is left out.
#[derive(Clone)]
pub struct HttpPeerProbe {
    timeout: Duration,
    /// For `https://` peers; `None` when no CA could be loaded (then HTTPS
    /// peers are not reached, and the error says why).
    tls: Result<Arc<rustls::ClientConfig>, String>,
    /// The `Authorization` header sent with `POST /failsafe` (a secret).
    authorization: Option<String>,
}

impl std::fmt::Debug for HttpPeerProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpPeerProbe")
            .field("timeout", &self.timeout)
            .field("tls", &self.tls.is_ok())
            .field("authorization", &self.authorization.as_ref().map(|_| "***"))
            .finish()
    }
}

fn add_pem_roots(roots: &mut rustls::RootCertStore, path: &Path) -> Result<usize, String> {
    let mut added = 0;
    for cert in CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read CA certificates from {}: {e}", path.display()))?
    {
        let cert = cert.map_err(|e| format!("bad certificate in {}: {e}", path.display()))?;
        if roots.add(cert).is_ok() {
            added += 1;
        }
    }
    Ok(added)
}

/// The TLS client configuration for peers: the cluster's CA if given, else
/// the system's roots; `client_cert` (certificate chain, key) is presented
/// when a peer asks for one.
pub fn tls_client_config(
    cafile: Option<&Path>,
    client_cert: Option<(&Path, &Path)>,
) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    match cafile {
        Some(cafile) => {
            add_pem_roots(&mut roots, cafile)?;
        }
        None => {
            let from_env = std::env::var("SSL_CERT_FILE").ok();
            let candidates = from_env.iter().map(String::as_str).chain(SYSTEM_CA_BUNDLES);
            for path in candidates {
                if add_pem_roots(&mut roots, Path::new(path)).is_ok_and(|n| n > 0) {
                    break;
                }
            }
        }
    }
    if roots.is_empty() {
        return Err(
            "no CA certificate to verify peers with (restapi.cafile or the system's CA bundle)"
                .to_owned(),
        );
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup failed: {e}"))?
        .with_root_certificates(roots);
    match client_cert {
        Some((cert, key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("cannot read {}: {e}", cert.display()))?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| format!("cannot read {}: {e}", key.display()))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("client certificate rejected: {e}"))
        }
        None => Ok(builder.with_no_client_auth()),
    }
}

/// A peer URL taken apart.
#[derive(Debug, PartialEq, Eq)]
struct Target {
    tls: bool,
    host: String,
    port: u16,
    /// `host:port` as the Host header carries it.
    authority: String,
    path: String,
}

/// `http(s)://host[:port]/path` → its parts (ports 80 and 443 by default).
fn parse_url(url: &str) -> Result<Target, String> {
    let (tls, rest) = if let Some(rest) = url.strip_prefix("https://") {
        (true, rest)
    } else if let Some(rest) = url.strip_prefix("http://") {
        (false, rest)
    } else {
        return Err(format!("{url}: only http:// and https:// URLs are reached"));
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) if !port.contains(']') => (
            host,
            port.parse::<u16>()
                .map_err(|_| format!("{url}: bad port {port:?}"))?,
        ),
        _ => (authority, if tls { 443 } else { 80 }),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(format!("{url}: no host"));
    }
    Ok(Target {
        tls,
        host: host.to_owned(),
        port,
        authority: authority.to_owned(),
        path: path.to_owned(),
    })
}

/// The URL of `endpoint` (`/failsafe`) on the API that `api_url` (Patroni's
/// `.../patroni`) belongs to: same scheme and address, the path replaced.
pub fn api_endpoint(api_url: &str, endpoint: &str) -> Result<String, String> {
    let target = parse_url(api_url)?;
    let scheme = if target.tls { "https" } else { "http" };
    Ok(format!("{scheme}://{}{endpoint}", target.authority))
}

impl HttpPeerProbe {
    /// A probe that verifies HTTPS peers against the cluster's CA (or the
    /// system's roots without one) and presents `client_cert` if given.
    pub fn with_tls(
        timeout: Duration,
        cafile: Option<&Path>,
        client_cert: Option<(&Path, &Path)>,
    ) -> Self {
        HttpPeerProbe {
            timeout,
            tls: tls_client_config(cafile, client_cert).map(Arc::new),
            authorization: None,
        }
    }

    /// Sends `credentials` (`restapi.authentication`) as basic
    /// authentication with `POST /failsafe`, which peers authenticate like
    /// every change; without them only a client certificate can.
    pub fn with_basic_auth(mut self, credentials: Option<(&str, &Password)>) -> Self {
        use base64::Engine as _;
        self.authorization = credentials.map(|(user, password)| {
            let pair = format!("{user}:{}", password.expose());
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(pair)
            )
        });
        self
    }

    /// Sends one request (a JSON body for POST) and returns the status and
    /// the body, within `timeout`.
    pub async fn request(
        &self,
        method: hyper::Method,
        url: &str,
        body: Option<Bytes>,
        timeout: Duration,
    ) -> Result<(u16, Bytes), String> {
        self.request_with(method, url, body, None, timeout).await
    }

    /// [`HttpPeerProbe::request`] with an `Authorization` header.
    async fn request_with(
        &self,
        method: hyper::Method,
        url: &str,
        body: Option<Bytes>,
        authorization: Option<&str>,
        timeout: Duration,
    ) -> Result<(u16, Bytes), String> {
        tokio::time::timeout(
            timeout,
            self.request_inner(method.clone(), url, body, authorization),
        )
        .await
        .map_err(|_| format!("{method} {url}: no answer within {timeout:?}"))?
    }

    async fn request_inner(
        &self,
        method: hyper::Method,
        url: &str,
        body: Option<Bytes>,
        authorization: Option<&str>,
    ) -> Result<(u16, Bytes), String> {
        let target = parse_url(url)?;
        let fail = |e: &dyn std::fmt::Display| format!("{method} {url}: {e}");
        let tcp = tokio::net::TcpStream::connect((target.host.as_str(), target.port))
            .await
            .map_err(|e| fail(&e))?;
        let mut builder = hyper::Request::builder()
            .method(method.clone())
            .uri(target.path.as_str())
            .header(hyper::header::HOST, target.authority.as_str())
            .header(
                hyper::header::USER_AGENT,
                concat!("matriarch/", env!("CARGO_PKG_VERSION")),
            );
        if body.is_some() {
            builder = builder.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        if let Some(authorization) = authorization {
            builder = builder.header(hyper::header::AUTHORIZATION, authorization);
        }
        let request = builder
            .body(Full::new(body.unwrap_or_default()))
            .map_err(|e| fail(&e))?;
        if target.tls {
            let config = self.tls.clone().map_err(|e| fail(&e))?;
            let name = ServerName::try_from(target.host.clone()).map_err(|e| fail(&e))?;
            let stream = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await
                .map_err(|e| fail(&e))?;
            exchange(TokioIo::new(stream), request)
                .await
                .map_err(|e| fail(&e))
        } else {
            exchange(TokioIo::new(tcp), request)
                .await
                .map_err(|e| fail(&e))
        }
    }
}

async fn exchange<T>(io: T, request: hyper::Request<Full<Bytes>>) -> Result<(u16, Bytes), String>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| e.to_string())?;
    let driver = tokio::spawn(connection);
    let result = async {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let body = http_body_util::Limited::new(response.into_body(), MAX_RESPONSE)
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((status, body))
    }
    .await;
    driver.abort();
    result
}

/// Reads the WAL position and timeline from a `/patroni` body: the largest
/// of `xlog.location`, `xlog.received_location`, `xlog.replayed_location`
/// (numbers, as Patroni writes them, or `X/Y` text).
pub fn report_from_body(body: &serde_json::Value) -> PeerReport {
    let xlog = body.get("xlog");
    let position = ["location", "received_location", "replayed_location"]
        .iter()
        .filter_map(|key| xlog.and_then(|x| x.get(*key)))
        .filter_map(|value| match value {
            serde_json::Value::Number(n) => n.as_u64().map(Lsn),
            serde_json::Value::String(s) => s.parse::<Lsn>().ok(),
            _ => None,
        })
        .max();
    let timeline = body
        .get("timeline")
        .and_then(serde_json::Value::as_u64)
        .and_then(|t| u32::try_from(t).ok())
        .map(Timeline);
    // Patroni's body: `role` "master"/"primary" and `state` "running".
    let text = |key: &str| body.get(key).and_then(serde_json::Value::as_str);
    let running_primary =
        matches!(text("role"), Some("primary" | "master")) && text("state") == Some("running");
    PeerReport {
        wal_position: position,
        timeline,
        running_primary,
    }
}

#[async_trait]
impl PeerProbe for HttpPeerProbe {
    async fn probe(&self, members: &[Member]) -> BTreeMap<MemberName, PeerReport> {
        let asks = members.iter().map(|member| async move {
            let result = self
                .request(hyper::Method::GET, &member.api_url, None, self.timeout)
                .await;
            let report = match result {
                Ok((200 | 503, body)) => serde_json::from_slice::<serde_json::Value>(&body)
                    .ok()
                    .map(|body| report_from_body(&body)),
                Ok((status, _)) => {
                    debug!(peer = %member.name, status, "peer probe: unexpected status");
                    None
                }
                Err(error) => {
                    debug!(peer = %member.name, %error, "peer probe failed");
                    None
                }
            };
            report.map(|r| (member.name.clone(), r))
        });
        futures::future::join_all(asks)
            .await
            .into_iter()
            .flatten()
            .collect()
    }
}

#[async_trait]
impl FailsafeSender for HttpPeerProbe {
    async fn send(
        &self,
        members: &[(MemberName, String)],
        heartbeat: &FailsafeHeartbeat,
        timeout: Duration,
    ) -> BTreeSet<MemberName> {
        let body = match serde_json::to_vec(heartbeat) {
            Ok(body) => Bytes::from(body),
            Err(error) => {
                debug!(%error, "cannot encode the failsafe heartbeat");
                return BTreeSet::new();
            }
        };
        let asks = members.iter().map(|(name, api_url)| {
            let body = body.clone();
            async move {
                let url = match api_endpoint(api_url, "/failsafe") {
                    Ok(url) => url,
                    Err(error) => {
                        debug!(peer = %name, %error, "failsafe: unusable api_url");
                        return None;
                    }
                };
                match self
                    .request_with(
                        hyper::Method::POST,
                        &url,
                        Some(body),
                        self.authorization.as_deref(),
                        timeout,
                    )
                    .await
                {
                    Ok((200, _)) => Some(name.clone()),
                    Ok((status, reply)) => {
                        debug!(peer = %name, status, reply = %String::from_utf8_lossy(&reply), "failsafe heartbeat refused");
                        None
                    }
                    Err(error) => {
                        debug!(peer = %name, %error, "failsafe heartbeat not delivered");
                        None
                    }
                }
            }
        });
        futures::future::join_all(asks)
            .await
            .into_iter()
            .flatten()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_read_patroni_bodies() {
        let body = serde_json::json!({"timeline": 3, "xlog": {"received_location": 100, "replayed_location": 90}});
        let report = report_from_body(&body);
        assert_eq!(report.wal_position, Some(Lsn(100)));
        assert_eq!(report.timeline, Some(Timeline(3)));
        let body = serde_json::json!({"xlog": {"location": "0/3000000"}});
        assert_eq!(report_from_body(&body).wal_position, Some(Lsn(0x3000000)));
        assert_eq!(report_from_body(&serde_json::json!({})).wal_position, None);
    }

    #[test]
    fn a_running_primary_is_told_from_its_body() {
        let primary = |role: &str, state: &str| {
            report_from_body(&serde_json::json!({"role": role, "state": state})).running_primary
        };
        assert!(primary("primary", "running"));
        assert!(primary("master", "running"));
        assert!(!primary("primary", "stopped"));
        assert!(!primary("replica", "running"));
        assert!(!report_from_body(&serde_json::json!({"role": 7})).running_primary);
    }

    #[test]
    fn urls_of_either_scheme_are_taken_apart() {
        let t = parse_url("https://db1.example:8443/patroni").unwrap();
        assert_eq!(
            t,
            Target {
                tls: true,
                host: "db1.example".into(),
                port: 8443,
                authority: "db1.example:8443".into(),
                path: "/patroni".into(),
            }
        );
        let t = parse_url("http://10.0.0.1/patroni").unwrap();
        assert_eq!((t.tls, t.port, t.path.as_str()), (false, 80, "/patroni"));
        assert_eq!(parse_url("https://db").unwrap().port, 443);
        let t = parse_url("http://[::1]:8008/patroni").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("::1", 8008));
        assert!(parse_url("ftp://db/").is_err());
        assert!(parse_url("http://:80/").is_err());
        assert!(parse_url("http://db:port/").is_err());
    }

    #[test]
    fn failsafe_goes_to_the_same_api_as_the_member_record() {
        assert_eq!(
            api_endpoint("https://10.0.0.5:8008/patroni", "/failsafe").unwrap(),
            "https://10.0.0.5:8008/failsafe"
        );
        assert_eq!(
            api_endpoint("http://db1:8008", "/failsafe").unwrap(),
            "http://db1:8008/failsafe"
        );
    }

    fn openssl(dir: &Path, args: &[&str]) -> bool {
        std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdin(std::process::Stdio::null())
            .output()
            .is_ok_and(|o| o.status.success())
    }

    /// A CA and a server certificate for 127.0.0.1 signed by it, made with
    /// openssl; `None` where openssl is missing.
    fn certificates(dir: &Path) -> Option<()> {
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let ca = [
            &["req", "-x509"][..],
            &ec,
            &[
                "-keyout",
                "ca-key.pem",
                "-out",
                "ca.pem",
                "-days",
                "2",
                "-subj",
                "/CN=test-ca",
            ],
        ]
        .concat();
        let csr = [
            &["req"][..],
            &ec,
            &[
                "-keyout",
                "server-key.pem",
                "-out",
                "server.csr",
                "-subj",
                "/CN=127.0.0.1",
            ],
        ]
        .concat();
        std::fs::write(dir.join("server.ext"), "subjectAltName=IP:127.0.0.1\n").ok()?;
        let sign = [
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca-key.pem",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "server.ext",
        ];
        (openssl(dir, &ca) && openssl(dir, &csr) && openssl(dir, &sign)).then_some(())
    }

    /// Serves HTTPS on a free port: 200 with a `/patroni` body for GET, 200
    /// for `POST /failsafe` naming db1, 409 otherwise.
    async fn https_server(dir: &Path) -> u16 {
        let (acceptor, _) =
            crate::api::tls_acceptor(&dir.join("server.pem"), &dir.join("server-key.pem"), None)
                .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(stream) = acceptor.accept(stream).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(
                        |req: hyper::Request<hyper::body::Incoming>| async move {
                            let method = req.method().clone();
                            let path = req.uri().path().to_owned();
                            let body = req
                                .into_body()
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let (status, reply) = match (method, path.as_str()) {
                                (hyper::Method::GET, "/patroni") => (
                                    200,
                                    r#"{"timeline": 2, "xlog": {"location": 4096}}"#.to_owned(),
                                ),
                                (hyper::Method::POST, "/failsafe") => {
                                    let hb: Result<FailsafeHeartbeat, _> =
                                        serde_json::from_slice(&body);
                                    match hb {
                                        Ok(hb) if hb.name.as_str() == "db1" => {
                                            (200, "Accepted".to_owned())
                                        }
                                        _ => (409, "no".to_owned()),
                                    }
                                }
                                _ => (404, String::new()),
                            };
                            let mut response = hyper::Response::new(Full::new(Bytes::from(reply)));
                            *response.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                            Ok::<_, std::convert::Infallible>(response)
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        port
    }

    #[tokio::test]
    async fn https_peers_are_probed_and_sent_heartbeats_verified_by_the_cluster_ca() {
        let dir = tempfile::tempdir().unwrap();
        if certificates(dir.path()).is_none() {
            eprintln!("openssl is not available: skipped");
            return;
        }
        let port = https_server(dir.path()).await;
        let api_url = format!("https://127.0.0.1:{port}/patroni");
        let probe = HttpPeerProbe::with_tls(
            Duration::from_secs(5),
            Some(&dir.path().join("ca.pem")),
            None,
        );
        let mut member = Member::new(MemberName::new("db2").unwrap(), "", api_url.clone());
        member.api_url = api_url.clone();
        let reports = probe.probe(&[member]).await;
        let report = &reports[&MemberName::new("db2").unwrap()];
        assert_eq!(report.wal_position, Some(Lsn(4096)));
        assert_eq!(report.timeline, Some(Timeline(2)));

        let heartbeat = |name: &str| FailsafeHeartbeat {
            name: MemberName::new(name).unwrap(),
            conn_url: String::new(),
            api_url: String::new(),
            timeline: Some(Timeline(2)),
            xlog_location: Some(Lsn(4096)),
        };
        let members = [(MemberName::new("db2").unwrap(), api_url.clone())];
        let acked = probe
            .send(&members, &heartbeat("db1"), Duration::from_secs(5))
            .await;
        assert_eq!(acked.len(), 1);
        let acked = probe
            .send(&members, &heartbeat("db9"), Duration::from_secs(5))
            .await;
        assert!(acked.is_empty());

        // Without the cluster's CA the server is not trusted.
        let untrusting = HttpPeerProbe::with_tls(
            Duration::from_secs(5),
            Some(&dir.path().join("server.pem")),
            None,
        );
        let error = untrusting
            .request(hyper::Method::GET, &api_url, None, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(
            error.contains("certificate") || error.contains("invalid"),
            "{error}"
        );
    }

    #[test]
    fn a_missing_cluster_ca_is_an_error() {
        let error = tls_client_config(Some(Path::new("/nonexistent/ca.pem")), None).unwrap_err();
        assert!(error.contains("/nonexistent/ca.pem"), "{error}");
    }
}
