//! One `A` question over UDP to the run's BIND, from the client namespace.
//!
//! The message encoding is the demo's ([`matriarch_demo::dns`]); the socket here is
//! bound to `0.0.0.0` (the demo binds `127.0.0.1`, which in a namespace is `lo`
//! alone and cannot reach the bridge).

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use matriarch_demo::dns::{encode_query, parse_a_answer, DnsError};

fn query_id() -> u16 {
    static COUNTER: AtomicU16 = AtomicU16::new(1);
    let nanos = crate::sys::now_us() as u16;
    nanos ^ COUNTER.fetch_add(0x9E37, Ordering::Relaxed)
}

fn io(server: SocketAddr) -> impl Fn(std::io::Error) -> DnsError {
    move |e| DnsError::Io {
        server,
        detail: e.to_string(),
    }
}

/// The `A` records of `name` (blocking, one attempt).
pub fn resolve(
    server: SocketAddr,
    name: &str,
    timeout: Duration,
) -> Result<Vec<Ipv4Addr>, DnsError> {
    let id = query_id();
    let query = encode_query(id, name)?;
    let socket = UdpSocket::bind("0.0.0.0:0").map_err(io(server))?;
    socket.set_read_timeout(Some(timeout)).map_err(io(server))?;
    socket.connect(server).map_err(io(server))?;
    socket.send(&query).map_err(io(server))?;
    let mut buf = [0u8; 1500];
    loop {
        let n = socket.recv(&mut buf).map_err(io(server))?;
        match parse_a_answer(id, &buf[..n]) {
            Err(DnsError::Malformed(m)) if m.contains("id does not match") => continue,
            other => return other,
        }
    }
}

/// The `A` records of `name` (async, one attempt).
pub async fn resolve_async(
    server: SocketAddr,
    name: &str,
    timeout: Duration,
) -> Result<Vec<Ipv4Addr>, DnsError> {
    let id = query_id();
    let query = encode_query(id, name)?;
    let answer = async {
        let socket = tokio::net::UdpSocket::bind("0.0.0.0:0")
            .await
            .map_err(io(server))?;
        socket.connect(server).await.map_err(io(server))?;
        socket.send(&query).await.map_err(io(server))?;
        let mut buf = [0u8; 1500];
        loop {
            let n = socket.recv(&mut buf).await.map_err(io(server))?;
            match parse_a_answer(id, &buf[..n]) {
                Err(DnsError::Malformed(m)) if m.contains("id does not match") => continue,
                other => return other,
            }
        }
    };
    tokio::time::timeout(timeout, answer)
        .await
        .unwrap_or_else(|_| {
            Err(DnsError::Io {
                server,
                detail: format!("no answer within {timeout:?}"),
            })
        })
}
