//! How `ctl` talks to members' REST APIs: the crate's [`HttpClient`] (HTTP or HTTPS, one
//! connection per request), basic auth on mutating calls, and a list of APIs tried in turn
//! until one answers.

use std::path::PathBuf;
use std::time::Duration;

use base64::Engine as _;
use hyper::body::Bytes;
use hyper::{Method, Uri};
use serde_json::Value;

use super::error::CtlError;
use crate::http_client::{tls_client_config, HttpClient, HttpRequest, TlsSetupError};
use matriarch_model::Secret;

/// How long a connection attempt may take before the next API is tried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a read (GET) may take.
pub(crate) const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Cap on the bytes shown of a server's error text.
const MAX_MESSAGE: usize = 2000;
/// The largest response read (a `/history` of a long-lived cluster is the largest).
const MAX_RESPONSE: usize = 64 << 20;

/// A REST API base URL, parsed: `http(s)://host:port[/prefix]`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Endpoint {
    tls: bool,
    host: String,
    port: u16,
    prefix: String,
}

impl Endpoint {
    /// Parses a base URL; `host:port` without a scheme means `http://`, a trailing `/` or
    /// `/patroni` (as in a member's `api_url`) is dropped.
    pub(super) fn parse(raw: &str) -> Result<Endpoint, String> {
        let raw = raw.trim();
        let with_scheme = if raw.contains("://") {
            raw.to_string()
        } else {
            format!("http://{raw}")
        };
        let uri: Uri = with_scheme
            .parse()
            .map_err(|e| format!("'{raw}' is not a URL: {e}"))?;
        let tls = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(format!("'{raw}' must start with http:// or https://")),
        };
        let authority = uri
            .authority()
            .ok_or_else(|| format!("'{raw}' has no host"))?;
        if authority.as_str().contains('@') {
            return Err(format!(
                "'{raw}': give credentials with --username/--password, not in the URL"
            ));
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        if host.is_empty() {
            return Err(format!("'{raw}' has no host"));
        }
        let port = authority.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let mut prefix = uri.path().trim_end_matches('/').to_string();
        if let Some(stripped) = prefix.strip_suffix("/patroni") {
            prefix = stripped.to_string();
        }
        if uri.query().is_some() {
            return Err(format!("'{raw}' must not have a query"));
        }
        Ok(Endpoint {
            tls,
            host,
            port,
            prefix,
        })
    }

    /// The full URL of `path` on this API, for requests and messages.
    pub(super) fn url(&self, path: &str) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{host}:{}{}{path}", self.port, self.prefix)
    }
}

/// A response: status and body text.
#[derive(Debug, Clone)]
pub(crate) struct Reply {
    /// HTTP status.
    pub status: u16,
    /// Body text (lossy UTF-8).
    pub body: String,
    /// The URL that answered, for messages.
    pub url: String,
}

impl Reply {
    /// Whether the status is 2xx.
    pub(super) fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// `<url> answered HTTP <status>: <message>`, what an error says of a reply.
    pub(super) fn answered(&self) -> String {
        format!(
            "{} answered HTTP {}: {}",
            self.url,
            self.status,
            self.message()
        )
    }

    /// The server's message: the `message`/`error` field of a JSON body, a JSON string, or the
    /// text itself, sanitized and capped.
    pub(super) fn message(&self) -> String {
        let text = match serde_json::from_str::<Value>(&self.body) {
            Ok(Value::String(s)) => s,
            Ok(Value::Object(map)) => ["message", "error", "reason"]
                .iter()
                .find_map(|k| map.get(*k).and_then(Value::as_str).map(str::to_string))
                .unwrap_or_else(|| self.body.trim().to_string()),
            _ => self.body.trim().to_string(),
        };
        let mut text = super::render::sanitize(&text);
        if text.len() > MAX_MESSAGE {
            let cut = (0..=MAX_MESSAGE)
                .rev()
                .find(|i| text.is_char_boundary(*i))
                .unwrap_or(0);
            text.truncate(cut);
            text.push('…');
        }
        if text.is_empty() {
            format!("HTTP {}", self.status)
        } else {
            text
        }
    }

    /// The body as JSON; the error names the URL.
    pub(super) fn json(&self) -> Result<Value, CtlError> {
        serde_json::from_str(&self.body).map_err(|e| {
            CtlError::Failed(format!(
                "{} answered with a body that is not JSON: {e}",
                self.url
            ))
        })
    }
}

/// Why a request got no response.
#[derive(Debug)]
pub(crate) enum SendError {
    /// The connection was not made, so the request was not sent: another API may be tried.
    Connect(String),
    /// The request may have been sent but no full response came.
    Other(String),
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Connect(e) | SendError::Other(e) => f.write_str(e),
        }
    }
}

/// What a read from the APIs gave.
#[derive(Debug)]
pub(crate) enum ReadOutcome {
    /// An API answered with JSON.
    Answered(Value, Endpoint),
    /// No API could serve the read (none reachable, or each answered a server error): the
    /// error naming each one's failure.
    Unanswered(CtlError),
}

/// TLS files for `https://` APIs.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct TlsFiles {
    /// CA bundle (PEM); default: the system's.
    pub cacert: Option<PathBuf>,
    /// Client certificate (PEM).
    pub certfile: Option<PathBuf>,
    /// Its key (PEM).
    pub keyfile: Option<PathBuf>,
}

impl TlsFiles {
    /// Each file from `self`, else from `fallback` (the options over a node file).
    pub(super) fn or(self, fallback: TlsFiles) -> TlsFiles {
        TlsFiles {
            cacert: self.cacert.or(fallback.cacert),
            certfile: self.certfile.or(fallback.certfile),
            keyfile: self.keyfile.or(fallback.keyfile),
        }
    }
}

/// The client: the APIs to try, the credentials for mutating calls, and timeouts.
#[derive(Debug)]
pub(crate) struct Client {
    endpoints: Vec<Endpoint>,
    auth: Option<(String, Secret)>,
    http: HttpClient,
    /// Total time a mutating request may take.
    pub write_timeout: Duration,
}

/// The TLS configuration of `--cacert`, `--certfile` and `--keyfile`.
fn tls_config(files: &TlsFiles) -> Result<rustls::ClientConfig, TlsSetupError> {
    let client_cert = match (&files.certfile, &files.keyfile) {
        (Some(cert), Some(key)) => Some((cert.as_path(), key.as_path())),
        (None, None) => None,
        _ => {
            return Err(TlsSetupError::Rustls(
                "--certfile and --keyfile go together".into(),
            ))
        }
    };
    tls_client_config(files.cacert.as_deref(), client_cert)
}

/// Basic auth header value.
pub(crate) fn basic_auth(username: &str, password: &Secret) -> String {
    let raw = format!("{username}:{}", password.expose());
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    )
}

impl Client {
    /// A client for these APIs (at least one). The TLS files are read now; an error in
    /// them is reported by the first `https://` request.
    pub(super) fn new(
        endpoints: Vec<Endpoint>,
        auth: Option<(String, Secret)>,
        tls_files: TlsFiles,
        write_timeout: Duration,
    ) -> Client {
        let http = HttpClient::new(tls_config(&tls_files))
            .connect_timeout(CONNECT_TIMEOUT)
            .max_body(MAX_RESPONSE)
            .user_agent(concat!("matriarch-ctl/", env!("CARGO_PKG_VERSION")));
        Client {
            endpoints,
            auth,
            http,
            write_timeout,
        }
    }

    /// Sends one request to one API.
    pub(super) async fn send(
        &mut self,
        endpoint: &Endpoint,
        method: Method,
        path: &str,
        body: Option<&Value>,
        timeout: Duration,
    ) -> Result<Reply, SendError> {
        let url = endpoint.url(path);
        let mutating = method != Method::GET && method != Method::HEAD;
        let authorization = match &self.auth {
            Some((user, password)) if mutating => Some(basic_auth(user, password)),
            _ => None,
        };
        let mut request = HttpRequest::new(method, &url).authorization(authorization.as_deref());
        if let Some(body) = body {
            request = request.json(Bytes::from(body.to_string()));
        }
        match self.http.send(request, timeout).await {
            Ok(response) => Ok(Reply {
                status: response.status,
                body: String::from_utf8_lossy(&response.body).into_owned(),
                url,
            }),
            Err(error) if error.maybe_sent() => Err(SendError::Other(error.to_string())),
            Err(error) => Err(SendError::Connect(error.to_string())),
        }
    }

    /// `GET path` from the first API that answers with a non-5xx status; the API that answered
    /// moves to the front for later calls. A 4xx answer is an error with the server's message.
    pub(super) async fn get_json(&mut self, path: &str) -> Result<(Value, Endpoint), CtlError> {
        match self.try_get_json(path).await? {
            ReadOutcome::Answered(value, endpoint) => Ok((value, endpoint)),
            ReadOutcome::Unanswered(error) => Err(error),
        }
    }

    /// [`Client::get_json`], telling apart the APIs' failure to serve the read at all (which a
    /// caller may work around, by reading the DCS) from a refusal or a bad answer (errors).
    pub(super) async fn try_get_json(&mut self, path: &str) -> Result<ReadOutcome, CtlError> {
        let mut failures = Vec::new();
        let mut answered = false;
        for i in 0..self.endpoints.len() {
            let endpoint = self.endpoints[i].clone();
            match self
                .send(&endpoint, Method::GET, path, None, READ_TIMEOUT)
                .await
            {
                Ok(reply) if reply.ok() => {
                    let value = reply.json()?;
                    self.endpoints.swap(0, i);
                    return Ok(ReadOutcome::Answered(value, endpoint));
                }
                Ok(reply) if reply.status >= 500 => {
                    answered = true;
                    failures.push(reply.answered());
                }
                Ok(reply) => {
                    return Err(CtlError::Failed(format!(
                        "{}: HTTP {}: {}",
                        reply.url,
                        reply.status,
                        reply.message()
                    )))
                }
                Err(e) => failures.push(e.to_string()),
            }
        }
        Ok(ReadOutcome::Unanswered(if answered {
            no_usable_answer(failures)
        } else {
            no_answer(failures)
        }))
    }

    /// `GET path` from one API (a member's own).
    pub(super) async fn get_json_from(
        &mut self,
        endpoint: &Endpoint,
        path: &str,
    ) -> Result<Value, CtlError> {
        let reply = self
            .send(endpoint, Method::GET, path, None, READ_TIMEOUT)
            .await
            .map_err(|e| CtlError::Failed(e.to_string()))?;
        if !reply.ok() {
            return Err(CtlError::Failed(format!(
                "{}: HTTP {}: {}",
                reply.url,
                reply.status,
                reply.message()
            )));
        }
        reply.json()
    }

    /// A mutating request to the first API that accepts a connection (the one that answered a
    /// read before, if any). Only a failed connection moves on to the next API: once sent,
    /// the request is never repeated.
    pub(super) async fn mutate(
        &mut self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Reply, CtlError> {
        let mut failures = Vec::new();
        for i in 0..self.endpoints.len() {
            let endpoint = self.endpoints[i].clone();
            match self
                .send(&endpoint, method.clone(), path, body, self.write_timeout)
                .await
            {
                Ok(reply) => return Ok(reply),
                Err(SendError::Connect(e)) => failures.push(e),
                Err(SendError::Other(e)) => return Err(CtlError::Failed(e)),
            }
        }
        Err(no_answer(failures))
    }

    /// A mutating request to one API (a member's own).
    pub(super) async fn mutate_at(
        &mut self,
        endpoint: &Endpoint,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Reply, CtlError> {
        let timeout = self.write_timeout;
        self.send(endpoint, method, path, body, timeout)
            .await
            .map_err(|e| CtlError::Failed(e.to_string()))
    }
}

/// Some API answered, but with a server error (a member starting up, or without a DCS).
fn no_usable_answer(failures: Vec<String>) -> CtlError {
    CtlError::Failed(format!(
        "no REST API could serve the request:\n  {}",
        failures.join("\n  ")
    ))
}

/// No API could be reached.
fn no_answer(failures: Vec<String>) -> CtlError {
    CtlError::Failed(format!(
        "no REST API answered:\n  {}",
        failures.join("\n  ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_tls_option_wins_over_the_node_file_and_the_file_fills_the_rest() {
        let path = |p: &str| Some(PathBuf::from(p));
        let options = TlsFiles {
            cacert: path("opt-ca.pem"),
            ..TlsFiles::default()
        };
        let node_file = TlsFiles {
            cacert: path("node-ca.pem"),
            certfile: path("node-cert.pem"),
            keyfile: path("node-key.pem"),
        };
        assert_eq!(
            options.or(node_file),
            TlsFiles {
                cacert: path("opt-ca.pem"),
                certfile: path("node-cert.pem"),
                keyfile: path("node-key.pem"),
            }
        );
    }

    #[test]
    fn endpoints_accept_bare_addresses_and_member_api_urls() {
        let e = Endpoint::parse("127.0.0.1:8008").expect("ok");
        assert_eq!(e.url("/cluster"), "http://127.0.0.1:8008/cluster");
        let e = Endpoint::parse("http://10.0.0.2:8009/patroni").expect("ok");
        assert_eq!(e.url("/restart"), "http://10.0.0.2:8009/restart");
        let e = Endpoint::parse("https://db1/api/").expect("ok");
        assert_eq!(e.url("/cluster"), "https://db1:443/api/cluster");
        let e = Endpoint::parse("http://[::1]:8008").expect("ok");
        assert_eq!(e.url("/x"), "http://[::1]:8008/x");
    }

    #[test]
    fn bad_endpoints_are_rejected_with_the_text() {
        assert!(Endpoint::parse("ftp://x:1")
            .unwrap_err()
            .contains("http://"));
        assert!(Endpoint::parse("http://").is_err());
        assert!(Endpoint::parse("not a url")
            .unwrap_err()
            .contains("not a URL"));
        let err = Endpoint::parse("http://admin:pw@host:1").unwrap_err();
        assert!(err.contains("--username"), "{err}");
        assert!(Endpoint::parse("http://h:1/?a=b").is_err());
    }

    #[test]
    fn basic_auth_is_rfc_7617() {
        assert_eq!(
            basic_auth("Aladdin", &Secret::new("open sesame")),
            "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="
        );
    }

    #[test]
    fn reply_messages_come_from_json_or_text() {
        let reply = |status, body: &str| Reply {
            status,
            body: body.into(),
            url: "u".into(),
        };
        assert_eq!(
            reply(412, "{\"message\": \"no such member\"}").message(),
            "no such member"
        );
        assert_eq!(reply(412, "\"quoted\"").message(), "quoted");
        assert_eq!(
            reply(503, "Switchover failed\n").message(),
            "Switchover failed"
        );
        assert_eq!(reply(503, "").message(), "HTTP 503");
        assert_eq!(reply(400, "\u{1b}[31mred").message(), "?[31mred");
        assert!(reply(500, &"é".repeat(5000)).message().len() <= MAX_MESSAGE + 3);
    }
}
