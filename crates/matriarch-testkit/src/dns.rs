//! A tiny DNS client: one `A` question over UDP to a [`crate::BindServer`] (or the
//! chaos run's BIND in its namespace).
//!
//! The demo's and the chaos run's writers resolve `primary.<zone>` with it before
//! every connection attempt, as a client without a DNS cache would, so they see the
//! record the leader's DNS router wrote as soon as BIND serves it; the failover
//! monitors use it to time the moment the name moves.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Why a lookup failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DnsError {
    /// The name cannot be put in a query.
    #[error("`{0}` is not a valid DNS name")]
    BadName(String),
    /// Sending or receiving failed (including the timeout).
    #[error("DNS query to {server} failed: {detail}")]
    Io {
        /// The server asked.
        server: SocketAddr,
        /// What went wrong.
        detail: String,
    },
    /// The answer is not a DNS response to our question.
    #[error("malformed DNS answer: {0}")]
    Malformed(String),
    /// The server answered with an error code other than NXDOMAIN.
    #[error("the DNS server answered with rcode {0}")]
    Rcode(u8),
}

/// `A` (IPv4 address) record type.
const TYPE_A: u16 = 1;
/// The Internet class.
const CLASS_IN: u16 = 1;
/// Header flags of a response.
const FLAG_QR: u16 = 0x8000;
/// Header flag of a truncated response.
const FLAG_TC: u16 = 0x0200;
/// NXDOMAIN: the name does not exist (an empty answer for us).
const RCODE_NXDOMAIN: u8 = 3;

/// Builds a standard query (no recursion wanted) for the `A` records of `name`.
pub fn encode_query(id: u16, name: &str) -> Result<Vec<u8>, DnsError> {
    let mut packet = Vec::with_capacity(12 + name.len() + 6);
    packet.extend_from_slice(&id.to_be_bytes());
    packet.extend_from_slice(&0u16.to_be_bytes()); // flags: query, RD = 0
    packet.extend_from_slice(&1u16.to_be_bytes()); // QDCOUNT
    packet.extend_from_slice(&[0; 6]); // AN, NS, AR counts
    let trimmed = name.strip_suffix('.').unwrap_or(name);
    if trimmed.is_empty() || trimmed.len() > 253 {
        return Err(DnsError::BadName(name.to_owned()));
    }
    for label in trimmed.split('.') {
        let len = u8::try_from(label.len())
            .ok()
            .filter(|l| (1..=63).contains(l))
            .ok_or_else(|| DnsError::BadName(name.to_owned()))?;
        packet.push(len);
        packet.extend_from_slice(label.as_bytes());
    }
    packet.push(0);
    packet.extend_from_slice(&TYPE_A.to_be_bytes());
    packet.extend_from_slice(&CLASS_IN.to_be_bytes());
    Ok(packet)
}

fn read_u16(packet: &[u8], pos: usize) -> Result<u16, DnsError> {
    packet
        .get(pos..pos + 2)
        .map(|b| u16::from_be_bytes([b[0], b[1]]))
        .ok_or_else(|| DnsError::Malformed(format!("truncated at byte {pos}")))
}

/// Returns the position after the (possibly compressed) name starting at `pos`.
fn skip_name(packet: &[u8], mut pos: usize) -> Result<usize, DnsError> {
    loop {
        let len = *packet
            .get(pos)
            .ok_or_else(|| DnsError::Malformed(format!("name runs past the end at {pos}")))?;
        match len {
            0 => return Ok(pos + 1),
            l if l & 0xC0 == 0xC0 => return Ok(pos + 2),
            l if l & 0xC0 == 0 => pos += 1 + usize::from(l),
            l => return Err(DnsError::Malformed(format!("bad label byte {l:#x}"))),
        }
    }
}

/// Reads the `A` records of a response to the query with `id`. NXDOMAIN and an
/// answer without `A` records give an empty list.
pub fn parse_a_answer(id: u16, packet: &[u8]) -> Result<Vec<Ipv4Addr>, DnsError> {
    if read_u16(packet, 0)? != id {
        return Err(DnsError::Malformed("the answer's id does not match".into()));
    }
    let flags = read_u16(packet, 2)?;
    if flags & FLAG_QR == 0 {
        return Err(DnsError::Malformed("not a response".into()));
    }
    if flags & FLAG_TC != 0 {
        return Err(DnsError::Malformed("truncated response".into()));
    }
    let rcode = (flags & 0x000F) as u8;
    if rcode == RCODE_NXDOMAIN {
        return Ok(Vec::new());
    }
    if rcode != 0 {
        return Err(DnsError::Rcode(rcode));
    }
    let questions = read_u16(packet, 4)?;
    let answers = read_u16(packet, 6)?;
    let mut pos = 12;
    for _ in 0..questions {
        pos = skip_name(packet, pos)? + 4;
    }
    let mut addrs = Vec::new();
    for _ in 0..answers {
        pos = skip_name(packet, pos)?;
        let rtype = read_u16(packet, pos)?;
        let class = read_u16(packet, pos + 2)?;
        let rdlen = usize::from(read_u16(packet, pos + 8)?);
        let start = pos + 10;
        let rdata = packet
            .get(start..start + rdlen)
            .ok_or_else(|| DnsError::Malformed("record data runs past the end".into()))?;
        if rtype == TYPE_A && class == CLASS_IN && rdlen == 4 {
            addrs.push(Ipv4Addr::new(rdata[0], rdata[1], rdata[2], rdata[3]));
        }
        pos = start + rdlen;
    }
    Ok(addrs)
}

/// A query id that differs from one call to the next.
fn query_id() -> u16 {
    static COUNTER: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    (nanos as u16) ^ COUNTER.fetch_add(0x9E37, std::sync::atomic::Ordering::Relaxed)
}

/// The unspecified address a query socket binds: on loopback the kernel picks
/// 127.0.0.1, and inside a network namespace (the chaos run) the address that
/// reaches the bridge, which a socket bound to 127.0.0.1 could not.
const ANY: &str = "0.0.0.0:0";

/// One `A` question to one server, with a fresh id.
struct Query {
    server: SocketAddr,
    id: u16,
    packet: Vec<u8>,
}

impl Query {
    fn new(server: SocketAddr, name: &str) -> Result<Query, DnsError> {
        let id = query_id();
        let packet = encode_query(id, name)?;
        Ok(Query { server, id, packet })
    }

    /// A socket error, naming the server.
    fn io_error(&self) -> impl Fn(std::io::Error) -> DnsError {
        let server = self.server;
        move |e| DnsError::Io {
            server,
            detail: e.to_string(),
        }
    }

    /// The answer to this query in `packet`, or `None` for a late answer to an
    /// earlier query on a reused port (the caller reads on).
    fn answer(&self, packet: &[u8]) -> Option<Result<Vec<Ipv4Addr>, DnsError>> {
        match parse_a_answer(self.id, packet) {
            Err(DnsError::Malformed(m)) if m.contains("id does not match") => None,
            other => Some(other),
        }
    }
}

/// Asks `server` for the `A` records of `name` (blocking, one attempt).
pub fn resolve_a(
    server: SocketAddr,
    name: &str,
    timeout: Duration,
) -> Result<Vec<Ipv4Addr>, DnsError> {
    let query = Query::new(server, name)?;
    let io = query.io_error();
    let socket = UdpSocket::bind(ANY).map_err(&io)?;
    socket.set_read_timeout(Some(timeout)).map_err(&io)?;
    socket.connect(server).map_err(&io)?;
    socket.send(&query.packet).map_err(&io)?;
    let mut buf = [0u8; 1500];
    loop {
        let n = socket.recv(&mut buf).map_err(&io)?;
        if let Some(answer) = query.answer(&buf[..n]) {
            return answer;
        }
    }
}

/// Asks `server` for the `A` records of `name` (async, one attempt).
pub async fn resolve_a_async(
    server: SocketAddr,
    name: &str,
    timeout: Duration,
) -> Result<Vec<Ipv4Addr>, DnsError> {
    let query = Query::new(server, name)?;
    let answer = async {
        let io = query.io_error();
        let socket = tokio::net::UdpSocket::bind(ANY).await.map_err(&io)?;
        socket.connect(server).await.map_err(&io)?;
        socket.send(&query.packet).await.map_err(&io)?;
        let mut buf = [0u8; 1500];
        loop {
            let n = socket.recv(&mut buf).await.map_err(&io)?;
            if let Some(answer) = query.answer(&buf[..n]) {
                return answer;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_encodes_labels_and_question() {
        let q = encode_query(0x1234, "primary.matriarch.test.").unwrap();
        assert_eq!(&q[..4], &[0x12, 0x34, 0, 0]);
        assert_eq!(&q[4..6], &[0, 1]);
        assert_eq!(
            &q[12..],
            b"\x07primary\x09matriarch\x04test\x00\x00\x01\x00\x01".as_slice()
        );
        assert!(encode_query(1, "").is_err());
        assert!(encode_query(1, "a..b").is_err());
        assert!(encode_query(1, &"x".repeat(64)).is_err());
    }

    /// A response to `query` with the given rcode and answer records (compressed names).
    fn response(query: &[u8], rcode: u8, records: &[(u16, &[u8])]) -> Vec<u8> {
        let mut r = query.to_vec();
        r[2] = 0x84; // QR, AA
        r[3] = rcode;
        r[6..8].copy_from_slice(&(records.len() as u16).to_be_bytes());
        for (rtype, data) in records {
            r.extend_from_slice(&[0xC0, 12]);
            r.extend_from_slice(&rtype.to_be_bytes());
            r.extend_from_slice(&CLASS_IN.to_be_bytes());
            r.extend_from_slice(&5u32.to_be_bytes());
            r.extend_from_slice(&(data.len() as u16).to_be_bytes());
            r.extend_from_slice(data);
        }
        r
    }

    #[test]
    fn answers_are_parsed() {
        let q = encode_query(7, "primary.matriarch.test").unwrap();
        let r = response(&q, 0, &[(5, b"\x03foo\x00"), (TYPE_A, &[127, 0, 0, 2])]);
        assert_eq!(parse_a_answer(7, &r), Ok(vec![Ipv4Addr::new(127, 0, 0, 2)]));
        assert_eq!(
            parse_a_answer(7, &response(&q, RCODE_NXDOMAIN, &[])),
            Ok(vec![])
        );
        assert_eq!(
            parse_a_answer(7, &response(&q, 2, &[])),
            Err(DnsError::Rcode(2))
        );
        assert!(parse_a_answer(8, &r).is_err());
        assert!(parse_a_answer(7, &q).is_err(), "a query is not an answer");
        assert!(parse_a_answer(7, &r[..r.len() - 2]).is_err());
    }
}
