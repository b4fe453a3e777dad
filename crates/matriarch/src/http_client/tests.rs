//! Tests of the HTTP(S) client against local hyper servers, and the test
//! servers and certificates other modules' tests use.

use std::convert::Infallible;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Method;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::*;

/// What a test server saw of one request.
#[derive(Debug, Clone)]
pub(crate) struct Seen {
    /// The method.
    pub method: Method,
    /// The path and query.
    pub path: String,
    /// The `Host` header.
    pub host: String,
    /// The `Authorization` header.
    pub authorization: Option<String>,
    /// The `Content-Type` header.
    pub content_type: Option<String>,
    /// The body.
    pub body: Bytes,
}

/// A test server's answer to a request.
pub(crate) type Handler = dyn Fn(&Seen) -> (u16, String) + Send + Sync;

/// A temporary directory with the test kit's CA (`ca.pem`) and a server
/// certificate for 127.0.0.1 signed by it (`server.pem`, `server-key.pem`);
/// `None` (the test is skipped, and says so) where openssl is missing.
pub(crate) fn certificates() -> Option<tempfile::TempDir> {
    let dir = tempfile::tempdir().ok()?;
    let made = matriarch_testkit::TestCa::create(dir.path(), "ca")
        .and_then(|ca| ca.issue("server", matriarch_testkit::SERVER_EXTENSIONS));
    match made {
        Ok(()) => Some(dir),
        Err(error) => {
            eprintln!("no test certificates ({error}): skipped");
            None
        }
    }
}

/// The TLS side of a test server: `server.pem` and `server-key.pem` of `dir`.
fn tls_acceptor(dir: &Path) -> tokio_rustls::TlsAcceptor {
    let chain = CertificateDer::pem_file_iter(dir.join("server.pem"))
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .expect("server certificate");
    let key = PrivateKeyDer::from_pem_file(dir.join("server-key.pem")).expect("server key");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("server TLS config");
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

/// Serves HTTP on a free loopback port (HTTPS with the certificates of
/// `tls_dir`), answering with `handler`; returns the port.
pub(crate) async fn serve(
    tls_dir: Option<&Path>,
    handler: impl Fn(&Seen) -> (u16, String) + Send + Sync + 'static,
) -> u16 {
    let acceptor = tls_dir.map(tls_acceptor);
    let handler: Arc<Handler> = Arc::new(handler);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("address").port();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let handler = Arc::clone(&handler);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let handler = Arc::clone(&handler);
                    async move { Ok::<_, Infallible>(answer(req, &*handler).await) }
                });
                let http = hyper::server::conn::http1::Builder::new();
                match acceptor {
                    Some(acceptor) => {
                        if let Ok(stream) = acceptor.accept(stream).await {
                            let _ = http.serve_connection(TokioIo::new(stream), service).await;
                        }
                    }
                    None => {
                        let _ = http.serve_connection(TokioIo::new(stream), service).await;
                    }
                }
            });
        }
    });
    port
}

async fn answer(
    req: hyper::Request<hyper::body::Incoming>,
    handler: &Handler,
) -> hyper::Response<Full<Bytes>> {
    let header = |name: hyper::header::HeaderName| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let mut seen = Seen {
        method: req.method().clone(),
        path: req
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned(),
        host: header(hyper::header::HOST).unwrap_or_default(),
        authorization: header(hyper::header::AUTHORIZATION),
        content_type: header(hyper::header::CONTENT_TYPE),
        body: Bytes::new(),
    };
    seen.body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let (status, body) = handler(&seen);
    let mut response = hyper::Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() =
        hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    response
}

/// A port nothing listens on.
fn dead_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("address").port()
}

const WAIT: Duration = Duration::from_secs(5);

#[test]
fn urls_of_either_scheme_are_taken_apart() {
    let t = Target::parse("https://db1.example:8443/patroni").unwrap();
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
    let t = Target::parse("http://10.0.0.1/patroni?x=1").unwrap();
    assert_eq!(
        (t.tls, t.port, t.path.as_str(), t.authority.as_str()),
        (false, 80, "/patroni?x=1", "10.0.0.1")
    );
    assert_eq!(Target::parse("https://db").unwrap().port, 443);
    assert_eq!(Target::parse("http://db").unwrap().path, "/");
    let t = Target::parse("http://[::1]:8008/patroni").unwrap();
    assert_eq!(
        (t.host.as_str(), t.port, t.authority.as_str()),
        ("::1", 8008, "[::1]:8008")
    );
    for bad in [
        "ftp://db/",
        "http://:80/",
        "http://db:port/",
        "http://db:99999/",
        "http://user:pw@db/",
        "db:8008",
        "not a url",
    ] {
        assert!(Target::parse(bad).is_err(), "{bad}");
    }
}

#[tokio::test]
async fn plain_http_requests_carry_method_body_and_credentials() {
    let (tx, rx) = std::sync::mpsc::channel::<Seen>();
    let tx = std::sync::Mutex::new(tx);
    let port = serve(None, move |seen| {
        if let Ok(tx) = tx.lock() {
            let _ = tx.send(seen.clone());
        }
        (201, format!("{{\"path\": \"{}\"}}", seen.path))
    })
    .await;
    let client = HttpClient::new(Err(TlsSetupError::NoRoots));
    let url = format!("http://127.0.0.1:{port}/failsafe");
    let response = client
        .send(
            HttpRequest::new(Method::POST, &url)
                .json(Bytes::from_static(b"{\"a\": 1}"))
                .authorization(Some("Basic YTpi")),
            WAIT,
        )
        .await
        .unwrap();
    assert_eq!(response.status, 201);
    assert_eq!(&response.body[..], b"{\"path\": \"/failsafe\"}");
    let seen = rx.recv().unwrap();
    assert_eq!(seen.method, Method::POST);
    assert_eq!(seen.host, format!("127.0.0.1:{port}"));
    assert_eq!(seen.authorization.as_deref(), Some("Basic YTpi"));
    assert_eq!(seen.content_type.as_deref(), Some("application/json"));
    assert_eq!(&seen.body[..], b"{\"a\": 1}");

    let response = client.get(&url, WAIT).await.unwrap();
    assert_eq!(response.status, 201);
    let seen = rx.recv().unwrap();
    assert_eq!((seen.method, seen.authorization), (Method::GET, None));
}

#[tokio::test]
async fn https_servers_are_verified_against_the_given_ca() {
    let Some(dir) = certificates() else {
        return;
    };
    let port = serve(Some(dir.path()), |seen| (200, format!("\"{}\"", seen.path))).await;
    let url = format!("https://127.0.0.1:{port}/patroni");
    let client = HttpClient::with_tls_files(Some(&dir.path().join("ca.pem")), None);
    let response = client.get(&url, WAIT).await.unwrap();
    assert_eq!(
        (response.status, &response.body[..]),
        (200, &b"\"/patroni\""[..])
    );

    // Another CA does not vouch for the server: no request is sent.
    let untrusting = HttpClient::with_tls_files(Some(&dir.path().join("server.pem")), None);
    let error = untrusting.get(&url, WAIT).await.unwrap_err();
    assert!(!error.maybe_sent(), "{error}");
    let text = error.to_string();
    assert!(text.contains("TLS handshake failed"), "{text}");
    assert!(text.contains(&url), "{text}");

    // Without any TLS configuration, https is refused with the reason.
    let error = HttpClient::new(Err(TlsSetupError::NoRoots))
        .get(&url, WAIT)
        .await
        .unwrap_err();
    assert!(error.to_string().contains("no CA certificate"), "{error}");
}

#[tokio::test]
async fn an_unreachable_server_is_a_connect_error_and_a_silent_one_times_out() {
    let client = HttpClient::new(Err(TlsSetupError::NoRoots));
    let url = format!("http://127.0.0.1:{}/patroni", dead_port());
    let error = client.get(&url, WAIT).await.unwrap_err();
    assert!(!error.maybe_sent(), "{error}");
    assert!(error.to_string().contains("cannot connect"), "{error}");
    assert!(error.to_string().contains(&url), "{error}");

    // Accepts the connection and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let _silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    let url = format!("http://127.0.0.1:{port}/patroni");
    let error = client
        .get(&url, Duration::from_millis(300))
        .await
        .unwrap_err();
    assert!(error.maybe_sent(), "{error}");
    assert!(
        error.to_string().contains("no answer within 0.3s"),
        "{error}"
    );
}

#[tokio::test]
async fn a_body_over_the_limit_is_an_error() {
    let port = serve(None, |_| (200, "x".repeat(2000))).await;
    let url = format!("http://127.0.0.1:{port}/big");
    let client = HttpClient::new(Err(TlsSetupError::NoRoots)).max_body(1000);
    let error = client.get(&url, WAIT).await.unwrap_err();
    assert!(error.maybe_sent(), "{error}");
    let client = HttpClient::new(Err(TlsSetupError::NoRoots)).max_body(2000);
    assert_eq!(client.get(&url, WAIT).await.unwrap().body.len(), 2000);
}

#[test]
fn a_missing_ca_file_is_an_error_naming_it() {
    let error = tls_client_config(Some(Path::new("/nonexistent/ca.pem")), None).unwrap_err();
    assert!(error.to_string().contains("/nonexistent/ca.pem"), "{error}");
}
