//! The crate's one HTTP client: HTTP/1.1 (hyper) over TCP, or over TLS
//! (rustls) for `https://` URLs, one connection per request.
//!
//! Used for everything matriarch asks of a REST API: the peer probe and the
//! failsafe heartbeats ([`crate::probe`]), the duplicate-name check at start
//! ([`crate::node`]), and `matriarch ctl`.
//!
//! An `https://` server is verified against the given CA file (the cluster's
//! `restapi.cafile`, or `ctl --cacert`), else against the system's roots; a
//! client certificate is presented when one is configured.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{header, Method, Uri};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;

/// Where the system's CA bundle usually is (`SSL_CERT_FILE` is tried first).
const SYSTEM_CA_BUNDLES: [&str; 4] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
    "/etc/ssl/ca-bundle.pem",
];

/// The largest response body read by default.
pub(crate) const DEFAULT_MAX_BODY: usize = 1 << 20;

/// Why a request got no usable response.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HttpError {
    /// The URL cannot be requested.
    #[error("{url}: {reason}")]
    BadUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// No connection was made (TCP, TLS or the HTTP handshake), so the
    /// request was not sent: another server may be tried.
    #[error("{method} {url}: {reason}")]
    Connect {
        /// The request's method.
        method: Method,
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// The request may have reached the server, but no full response came
    /// back (a broken connection, no answer in time, a body too large).
    #[error("{method} {url}: {reason}")]
    Exchange {
        /// The request's method.
        method: Method,
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
}

impl HttpError {
    /// Whether the request may have reached the server; `false` means it was
    /// certainly not sent and can be tried elsewhere.
    pub(crate) fn maybe_sent(&self) -> bool {
        matches!(self, HttpError::Exchange { .. })
    }
}

/// Why no TLS client configuration could be built.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum TlsSetupError {
    /// A certificate or key file could not be read or parsed.
    #[error("cannot read {what} from {path}: {reason}")]
    File {
        /// What the file holds (`CA certificates`, `client certificate`, ...).
        what: &'static str,
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// No CA certificate to verify servers with.
    #[error("no CA certificate to verify servers with (give a CA file, or install the system's CA bundle)")]
    NoRoots,
    /// rustls refused the configuration.
    #[error("TLS setup failed: {0}")]
    Rustls(String),
}

fn add_pem_roots(roots: &mut rustls::RootCertStore, path: &Path) -> Result<usize, TlsSetupError> {
    let file_error = |reason: String| TlsSetupError::File {
        what: "CA certificates",
        path: path.display().to_string(),
        reason,
    };
    let mut added = 0;
    for cert in CertificateDer::pem_file_iter(path).map_err(|e| file_error(e.to_string()))? {
        let cert = cert.map_err(|e| file_error(e.to_string()))?;
        // A certificate rustls cannot use as a root is skipped, as curl does.
        if roots.add(cert).is_ok() {
            added += 1;
        }
    }
    Ok(added)
}

/// The TLS client configuration: `cafile`'s certificates as roots if given,
/// else the system's bundle; `client_cert` (certificate chain, key) is
/// presented when a server asks for one.
pub(crate) fn tls_client_config(
    cafile: Option<&Path>,
    client_cert: Option<(&Path, &Path)>,
) -> Result<rustls::ClientConfig, TlsSetupError> {
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
        return Err(TlsSetupError::NoRoots);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsSetupError::Rustls(e.to_string()))?
        .with_root_certificates(roots);
    match client_cert {
        Some((cert, key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| TlsSetupError::File {
                    what: "client certificate",
                    path: cert.display().to_string(),
                    reason: e.to_string(),
                })?;
            let key = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsSetupError::File {
                what: "client key",
                path: key.display().to_string(),
                reason: e.to_string(),
            })?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| TlsSetupError::Rustls(format!("client certificate rejected: {e}")))
        }
        None => Ok(builder.with_no_client_auth()),
    }
}

/// A URL taken apart for a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    /// `https://`.
    pub tls: bool,
    /// The host to connect to (an IPv6 address without brackets).
    pub host: String,
    /// The port (80 or 443 by default).
    pub port: u16,
    /// `host[:port]` as the `Host` header carries it.
    pub authority: String,
    /// The path and query.
    pub path: String,
}

impl Target {
    /// Parses `http(s)://host[:port][/path]`; credentials in the URL are refused.
    pub(crate) fn parse(url: &str) -> Result<Target, HttpError> {
        let bad = |reason: &str| HttpError::BadUrl {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        let uri: Uri = url.parse().map_err(|e| bad(&format!("not a URL: {e}")))?;
        let tls = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(bad("only http:// and https:// URLs are supported")),
        };
        let authority = uri.authority().ok_or_else(|| bad("no host"))?;
        if authority.as_str().contains('@') {
            return Err(bad("credentials do not belong in the URL"));
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let port = match authority.port() {
            Some(port) => port
                .as_str()
                .parse::<u16>()
                .map_err(|_| bad(&format!("bad port {:?}", port.as_str())))?,
            // `db:port` (hyper finds no numeric port but keeps the text).
            None if authority.as_str() != authority.host() => {
                return Err(bad(&format!("bad port in {:?}", authority.as_str())))
            }
            None => {
                if tls {
                    443
                } else {
                    80
                }
            }
        };
        let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
        Ok(Target {
            tls,
            host: host.to_owned(),
            port,
            authority: authority.as_str().to_owned(),
            path: if path.is_empty() {
                "/".to_owned()
            } else {
                path
            },
        })
    }
}

/// One request: method, URL, an optional JSON body and `Authorization` header.
#[derive(Debug, Clone)]
pub(crate) struct HttpRequest<'a> {
    method: Method,
    url: &'a str,
    json: Option<Bytes>,
    authorization: Option<&'a str>,
}

impl<'a> HttpRequest<'a> {
    /// `method url`, without body or credentials.
    pub(crate) fn new(method: Method, url: &'a str) -> Self {
        HttpRequest {
            method,
            url,
            json: None,
            authorization: None,
        }
    }

    /// `GET url`.
    pub(crate) fn get(url: &'a str) -> Self {
        HttpRequest::new(Method::GET, url)
    }

    /// Sends `body` as `application/json`.
    pub(crate) fn json(mut self, body: Bytes) -> Self {
        self.json = Some(body);
        self
    }

    /// Sends this `Authorization` header value (a secret: never logged).
    pub(crate) fn authorization(mut self, value: Option<&'a str>) -> Self {
        self.authorization = value;
        self
    }
}

/// A response: status and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HttpResponse {
    /// The HTTP status.
    pub status: u16,
    /// The body (at most the client's `max_body` bytes).
    pub body: Bytes,
}

/// The HTTP(S) client; cheap to clone.
#[derive(Clone)]
pub(crate) struct HttpClient {
    /// For `https://` URLs; the error says why there is none (then only
    /// `http://` URLs are reached).
    tls: Result<Arc<rustls::ClientConfig>, TlsSetupError>,
    connect_timeout: Option<Duration>,
    max_body: usize,
    user_agent: &'static str,
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpClient")
            .field("tls", &self.tls.is_ok())
            .field("connect_timeout", &self.connect_timeout)
            .field("max_body", &self.max_body)
            .finish()
    }
}

impl HttpClient {
    /// A client with this TLS configuration for `https://` URLs (an error
    /// is reported by each `https://` request).
    pub(crate) fn new(tls: Result<rustls::ClientConfig, TlsSetupError>) -> Self {
        HttpClient {
            tls: tls.map(Arc::new),
            connect_timeout: None,
            max_body: DEFAULT_MAX_BODY,
            user_agent: concat!("matriarch/", env!("CARGO_PKG_VERSION")),
        }
    }

    /// A client verifying servers against `cafile` (else the system's
    /// roots) and presenting `client_cert` when asked.
    pub(crate) fn with_tls_files(
        cafile: Option<&Path>,
        client_cert: Option<(&Path, &Path)>,
    ) -> Self {
        HttpClient::new(tls_client_config(cafile, client_cert))
    }

    /// Bounds connecting (TCP and TLS handshake) apart from the request's
    /// whole timeout, so that an unreachable server is given up early.
    pub(crate) fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = Some(timeout);
        self
    }

    /// The largest response body read; a larger one is an error.
    pub(crate) fn max_body(mut self, bytes: usize) -> Self {
        self.max_body = bytes;
        self
    }

    /// The `User-Agent` sent.
    pub(crate) fn user_agent(mut self, user_agent: &'static str) -> Self {
        self.user_agent = user_agent;
        self
    }

    /// `GET url` within `timeout`.
    pub(crate) async fn get(
        &self,
        url: &str,
        timeout: Duration,
    ) -> Result<HttpResponse, HttpError> {
        self.send(HttpRequest::get(url), timeout).await
    }

    /// Sends `request` and reads the whole response, all within `timeout`.
    pub(crate) async fn send(
        &self,
        request: HttpRequest<'_>,
        timeout: Duration,
    ) -> Result<HttpResponse, HttpError> {
        let method = request.method.clone();
        let url = request.url.to_owned();
        match tokio::time::timeout(timeout, self.send_inner(request)).await {
            Ok(result) => result,
            Err(_) => Err(HttpError::Exchange {
                method,
                url,
                reason: format!("no answer within {}", seconds(timeout)),
            }),
        }
    }

    async fn send_inner(&self, request: HttpRequest<'_>) -> Result<HttpResponse, HttpError> {
        let target = Target::parse(request.url)?;
        let method = request.method.clone();
        let connect_error = |reason: String| HttpError::Connect {
            method: method.clone(),
            url: request.url.to_owned(),
            reason,
        };
        let mut builder = hyper::Request::builder()
            .method(request.method.clone())
            .uri(target.path.as_str())
            .header(header::HOST, target.authority.as_str())
            .header(header::ACCEPT, "application/json")
            .header(header::USER_AGENT, self.user_agent);
        if request.json.is_some() {
            builder = builder.header(header::CONTENT_TYPE, "application/json");
        }
        if let Some(authorization) = request.authorization {
            builder = builder.header(header::AUTHORIZATION, authorization);
        }
        let hyper_request = builder
            .body(Full::new(request.json.clone().unwrap_or_default()))
            .map_err(|e| HttpError::BadUrl {
                url: request.url.to_owned(),
                reason: format!("cannot build the request: {e}"),
            })?;
        let tls = if target.tls {
            Some(self.tls.clone().map_err(|e| connect_error(e.to_string()))?)
        } else {
            None
        };
        let connect = async {
            let tcp = TcpStream::connect((target.host.as_str(), target.port))
                .await
                .map_err(|e| connect_error(format!("cannot connect: {e}")))?;
            match tls {
                None => Ok(Io::Plain(tcp)),
                Some(config) => {
                    let name = ServerName::try_from(target.host.clone())
                        .map_err(|e| connect_error(format!("bad TLS server name: {e}")))?;
                    tokio_rustls::TlsConnector::from(config)
                        .connect(name, tcp)
                        .await
                        .map(|stream| Io::Tls(Box::new(stream)))
                        .map_err(|e| connect_error(format!("TLS handshake failed: {e}")))
                }
            }
        };
        let io = match self.connect_timeout {
            Some(limit) => tokio::time::timeout(limit, connect).await.map_err(|_| {
                connect_error(format!(
                    "cannot connect: no connection within {}",
                    seconds(limit)
                ))
            })??,
            None => connect.await?,
        };
        let exchanged = match io {
            Io::Plain(tcp) => exchange(TokioIo::new(tcp), hyper_request, self.max_body).await,
            Io::Tls(tls) => exchange(TokioIo::new(*tls), hyper_request, self.max_body).await,
        };
        exchanged.map_err(|failure| match failure {
            Failure::Handshake(reason) => connect_error(reason),
            Failure::Exchange(reason) => HttpError::Exchange {
                method: method.clone(),
                url: request.url.to_owned(),
                reason,
            },
        })
    }
}

/// `3s`, or `1.5s`.
fn seconds(duration: Duration) -> String {
    format!("{}s", duration.as_secs_f64())
}

enum Io {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

enum Failure {
    /// Before the request was written.
    Handshake(String),
    /// After.
    Exchange(String),
}

async fn exchange<T>(
    io: T,
    request: hyper::Request<Full<Bytes>>,
    max_body: usize,
) -> Result<HttpResponse, Failure>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| Failure::Handshake(format!("HTTP handshake failed: {e}")))?;
    let driver = tokio::spawn(connection);
    let result = async {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| Failure::Exchange(format!("request failed: {e}")))?;
        let status = response.status().as_u16();
        let body = http_body_util::Limited::new(response.into_body(), max_body)
            .collect()
            .await
            .map_err(|e| Failure::Exchange(format!("reading the response failed: {e}")))?
            .to_bytes();
        Ok(HttpResponse { status, body })
    }
    .await;
    drop(sender);
    driver.abort();
    result
}

#[cfg(test)]
pub(crate) mod tests;
