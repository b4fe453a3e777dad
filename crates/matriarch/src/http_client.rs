//! A minimal HTTP/1.1 client for peers' REST APIs (`GET /patroni`).
//!
//! Only `http://` URLs: a peer API served over HTTPS is not probed (the
//! engine then relies on the member records, which every agent refreshes).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;

/// `http://host:port/path` → (`host:port`, `/path`).
fn split_url(url: &str) -> Result<(String, String), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url}: only http:// URLs are probed"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        return Err(format!("{url}: no host"));
    }
    let authority = if authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    Ok((authority, path.to_owned()))
}

/// GETs `url` within `timeout`; returns the status and the body (at most 1 MiB).
pub async fn get(url: &str, timeout: Duration) -> Result<(u16, Bytes), String> {
    tokio::time::timeout(timeout, get_inner(url))
        .await
        .map_err(|_| format!("GET {url}: no answer within {timeout:?}"))?
}

async fn get_inner(url: &str) -> Result<(u16, Bytes), String> {
    let (authority, path) = split_url(url)?;
    let stream = tokio::net::TcpStream::connect(&authority)
        .await
        .map_err(|e| format!("GET {url}: {e}"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("GET {url}: {e}"))?;
    let driver = tokio::spawn(connection);
    let request = hyper::Request::get(path)
        .header(hyper::header::HOST, authority.as_str())
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("GET {url}: {e}"))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("GET {url}: {e}"))?;
    let status = response.status().as_u16();
    let body = http_body_util::Limited::new(response.into_body(), 1 << 20)
        .collect()
        .await
        .map_err(|e| format!("GET {url}: {e}"))?
        .to_bytes();
    driver.abort();
    Ok((status, body))
}

#[cfg(test)]
mod tests {
    use super::split_url;

    #[test]
    fn urls_split() {
        assert_eq!(
            split_url("http://10.0.0.1:8008/patroni").unwrap(),
            ("10.0.0.1:8008".to_owned(), "/patroni".to_owned())
        );
        assert_eq!(
            split_url("http://db").unwrap(),
            ("db:80".to_owned(), "/".to_owned())
        );
        assert!(split_url("https://db/patroni").is_err());
    }
}
