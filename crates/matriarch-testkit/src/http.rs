//! A blocking HTTP/1.1 client for tests (one request per connection): hyper's client
//! connection on a runtime of its own, enough to probe health endpoints, drive the agents'
//! REST APIs and call emulated cloud APIs.
//!
//! Each request runs on a short-lived thread with a current-thread tokio runtime, so the
//! blocking functions work from sync and async tests alike (a runtime cannot be blocked on
//! from inside another).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

use crate::error::{Result, TestkitError};

/// An HTTP response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    /// Status code, e.g. 200.
    pub status: u16,
    /// Header names (lower case) and values, in order.
    pub headers: Vec<(String, String)>,
    /// The body, with any transfer encoding removed.
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The body as (lossy) UTF-8 text.
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The first header with this name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// `http://host:port/path?query` taken apart: (host, port, path-and-query).
fn split_url(url: &str) -> Result<(String, u16, String)> {
    let invalid = |why: &str| TestkitError::InvalidArgument(format!("{why}: `{url}`"));
    let uri: hyper::Uri = url.parse().map_err(|_| invalid("not a URL"))?;
    if uri.scheme_str() != Some("http") {
        return Err(invalid("only http:// URLs are supported"));
    }
    let authority = uri.authority().ok_or_else(|| invalid("no host in URL"))?;
    let host = authority.host().trim_matches(['[', ']']);
    if host.is_empty() {
        return Err(invalid("no host in URL"));
    }
    // `port_u16` is `None` for a port that is not a u16 too: text after the host.
    let port = match authority.port_u16() {
        Some(port) => port,
        None if authority.as_str() != authority.host() => return Err(invalid("bad port in URL")),
        None => 80,
    };
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let path = if path.is_empty() { "/" } else { path };
    Ok((host.to_string(), port, path.to_string()))
}

/// Sends one HTTP/1.1 request and reads the whole response (5 s to connect, and 5 s for
/// the request and response).
///
/// `Host` and `Content-Length` are added automatically.
pub fn http_request(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<HttpResponse> {
    http_request_timeout(method, url, headers, body, Duration::from_secs(5))
}

/// Like [`http_request`] with a custom timeout, for connecting and for the exchange.
pub fn http_request_timeout(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
) -> Result<HttpResponse> {
    let (host, port, path) = split_url(url)?;
    let method = hyper::Method::from_bytes(method.as_bytes())
        .map_err(|_| TestkitError::InvalidArgument(format!("`{method}` is not an HTTP method")))?;
    let mut builder = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, format!("{host}:{port}"));
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let request = builder
        .body(Full::new(Bytes::copy_from_slice(body)))
        .map_err(|e| TestkitError::InvalidArgument(format!("request to {url}: {e}")))?;
    let url = url.to_owned();
    let io_error = |context: String, source: std::io::Error| TestkitError::Io { context, source };
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| io_error("starting a runtime for an HTTP request".into(), e))?;
                runtime.block_on(exchange(&host, port, request, &url, timeout))
            })
            .join()
            .unwrap_or_else(|_| {
                Err(TestkitError::InvalidArgument(format!(
                    "the HTTP request to {url} panicked"
                )))
            })
    })
}

async fn exchange(
    host: &str,
    port: u16,
    request: hyper::Request<Full<Bytes>>,
    url: &str,
    timeout: Duration,
) -> Result<HttpResponse> {
    let timed_out = |what: &str| TestkitError::Io {
        context: format!("{what} {url}"),
        source: std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no answer within {timeout:?}"),
        ),
    };
    let stream = tokio::time::timeout(timeout, tokio::net::TcpStream::connect((host, port)))
        .await
        .map_err(|_| timed_out("connecting to"))?
        .map_err(|source| TestkitError::Io {
            context: format!("connecting to {url}"),
            source,
        })?;
    let protocol = |detail: String| TestkitError::Parse {
        context: format!("HTTP exchange with {url}"),
        detail,
    };
    let answer = async {
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| protocol(e.to_string()))?;
        let driver = tokio::spawn(connection);
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| protocol(e.to_string()));
        let result = match response {
            Ok(response) => {
                let status = response.status().as_u16();
                let headers = response
                    .headers()
                    .iter()
                    .map(|(name, value)| {
                        (
                            name.as_str().to_owned(),
                            String::from_utf8_lossy(value.as_bytes()).into_owned(),
                        )
                    })
                    .collect();
                response
                    .into_body()
                    .collect()
                    .await
                    .map(|body| HttpResponse {
                        status,
                        headers,
                        body: body.to_bytes().to_vec(),
                    })
                    .map_err(|e| protocol(format!("reading the body: {e}")))
            }
            Err(error) => Err(error),
        };
        driver.abort();
        result
    };
    tokio::time::timeout(timeout, answer)
        .await
        .map_err(|_| timed_out("waiting for the answer of"))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// Answers one connection with `reply` after reading the request head.
    fn one_shot(reply: &'static [u8]) -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            if let Ok((mut stream, _)) = listener.accept() {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).unwrap_or(0) == 1 {
                    head.push(byte[0]);
                }
                let _ = stream.write_all(reply);
            }
        });
        format!("http://127.0.0.1:{port}/x?y=1")
    }

    #[test]
    fn reads_content_length_and_chunked_bodies() {
        let url = one_shot(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi");
        let r = http_request("GET", &url, &[], b"").unwrap();
        assert_eq!((r.status, r.body_text().as_str()), (200, "hi"));
        let url = one_shot(
            b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\nX-Test: yes\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        );
        let r = http_request("GET", &url, &[], b"").unwrap();
        assert_eq!((r.status, r.body_text().as_str()), (404, "abcde"));
        assert_eq!(r.header("x-TEST"), Some("yes"));
    }

    #[tokio::test]
    async fn works_inside_an_async_test() {
        let url = one_shot(b"HTTP/1.1 204 No Content\r\n\r\n");
        let r = http_request("DELETE", &url, &[("X-A", "b")], b"").unwrap();
        assert_eq!(r.status, 204);
    }

    #[test]
    fn a_silent_server_times_out() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        let err = http_request_timeout("GET", &url, &[], b"", Duration::from_millis(200))
            .unwrap_err()
            .to_string();
        assert!(err.contains("no answer within"), "{err}");
        drop(listener);
    }

    #[test]
    fn splits_urls() {
        assert_eq!(
            split_url("http://127.0.0.1:80/a?b=c").unwrap(),
            ("127.0.0.1".into(), 80, "/a?b=c".into())
        );
        assert_eq!(
            split_url("http://localhost").unwrap(),
            ("localhost".into(), 80, "/".into())
        );
        assert!(split_url("https://localhost/").is_err());
        assert!(split_url("http://h:port/").is_err());
        assert!(split_url("http://h:65536/").is_err());
        assert_eq!(
            split_url("http://[::1]:8008/p").unwrap(),
            ("::1".into(), 8008, "/p".into())
        );
    }
}
