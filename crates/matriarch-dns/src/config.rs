//! What a DNS router manages and how it reaches the server.

use std::net::SocketAddr;
use std::time::Duration;

use crate::tsig::TsigKey;

/// What a [`DnsRouter`] manages and how it reaches the server.
#[derive(Clone, Debug)]
pub struct DnsRouterConfig {
    /// The zone's primary server (it must accept TSIG-signed updates), e.g.
    /// `10.0.0.53:53`.
    pub server: SocketAddr,
    /// The zone to update, e.g. `db.example.com` (a trailing dot is optional).
    pub zone: String,
    /// The name that points at the primary, e.g. `primary.db.example.com`;
    /// it must be inside `zone`.
    pub writer_name: String,
    /// The name that holds the replicas' addresses, if any; it must be
    /// inside `zone` and differ from `writer_name`.
    pub reader_name: Option<String>,
    /// The TTL of the records written, in seconds; keep it low (clients may
    /// use a cached answer that long after a failover).
    pub ttl: u32,
    /// The key that signs the updates.
    pub key: TsigKey,
    /// The bound on each call (`route`, `withdraw`), connecting included.
    pub timeout: Duration,
}

impl DnsRouterConfig {
    /// A configuration with TTL 5 s, a 5 s timeout and no reader name.
    pub fn new(
        server: SocketAddr,
        zone: impl Into<String>,
        writer_name: impl Into<String>,
        key: TsigKey,
    ) -> Self {
        DnsRouterConfig {
            server,
            zone: zone.into(),
            writer_name: writer_name.into(),
            reader_name: None,
            ttl: 5,
            key,
            timeout: Duration::from_secs(5),
        }
    }
}
