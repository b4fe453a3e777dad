//! `restapi:`: where the REST API listens, who may change things, and TLS.

use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::{IpNet, Ipv4Net};
use serde::Deserialize;

use matriarch_model::Secret;

/// `restapi:`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RestApiConfig {
    /// Where the API listens (`0.0.0.0:8008` by default).
    #[serde(default = "default_restapi_listen")]
    pub listen: String,
    /// The `host:port` peers and tools use; defaults to `listen` (with
    /// `127.0.0.1` for an unspecified address).
    pub connect_address: Option<String>,
    /// Basic authentication required by every mutating call.
    pub authentication: Option<BasicAuthConfig>,
    /// Client addresses (IPs or CIDR ranges) allowed to make mutating calls;
    /// empty allows every address.
    #[serde(default)]
    pub allowlist: Vec<String>,
    /// TLS certificate chain (PEM); with `keyfile`, the API speaks HTTPS.
    pub certfile: Option<PathBuf>,
    /// TLS private key (PEM).
    pub keyfile: Option<PathBuf>,
    /// CA (PEM) that client certificates are verified against; a verified
    /// client certificate authenticates a mutating call.
    pub cafile: Option<PathBuf>,
    /// Concurrent connections the API serves in total; more are closed at
    /// once. Never more than a quarter of the file limit, so that the HA
    /// loop and PostgreSQL keep theirs (default: that quarter, at most
    /// 10,000).
    pub max_connections: Option<usize>,
    /// Concurrent connections the API serves per client address (default 100).
    pub max_connections_per_ip: Option<usize>,
}

impl Default for RestApiConfig {
    fn default() -> Self {
        RestApiConfig {
            listen: default_restapi_listen(),
            connect_address: None,
            authentication: None,
            allowlist: Vec::new(),
            certfile: None,
            keyfile: None,
            cafile: None,
            max_connections: None,
            max_connections_per_ip: None,
        }
    }
}

fn default_restapi_listen() -> String {
    "0.0.0.0:8008".to_owned()
}

/// A user name and password.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BasicAuthConfig {
    /// The user name.
    pub username: String,
    /// The password.
    pub password: Secret,
}
/// An IP address range (`10.0.0.0/8`, `::1/128`, or a single address) of
/// `restapi.allowlist`. IPv4-mapped IPv6 addresses (`::ffff:10.0.0.1`), as a
/// dual-stack socket reports IPv4 clients, count as the IPv4 address, in the
/// entry and in the client's address alike.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct IpRange(IpNet);

impl IpRange {
    /// Parses `addr` or `addr/prefix`.
    pub(crate) fn parse(text: &str) -> Result<IpRange, String> {
        let trimmed = text.trim();
        let net = match trimmed.split_once('/') {
            Some((addr, _)) => {
                trimmed
                    .parse::<IpNet>()
                    .map_err(|_| match addr.trim().parse::<IpAddr>() {
                        Ok(IpAddr::V4(_)) => format!("{text:?}: the prefix must be 0..=32"),
                        Ok(IpAddr::V6(_)) => format!("{text:?}: the prefix must be 0..=128"),
                        Err(_) => format!("{text:?} is not an IP address or CIDR range"),
                    })?
            }
            None => trimmed
                .parse::<IpAddr>()
                .map(IpNet::from)
                .map_err(|_| format!("{text:?} is not an IP address or CIDR range"))?,
        };
        Ok(IpRange(unmap_net(net)))
    }

    /// Whether `ip` is in the range.
    pub(crate) fn contains(&self, ip: IpAddr) -> bool {
        self.0.contains(&unmap(ip))
    }
}

/// `::ffff:a.b.c.d` → `a.b.c.d`; any other address as it is.
fn unmap(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// `::ffff:a.b.c.d/(96+n)` → `a.b.c.d/n`; any other range as it is.
fn unmap_net(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
            Some(v4) => Ipv4Net::new(v4, v6.prefix_len() - 96).map_or(net, IpNet::V4),
            None => net,
        },
        other => other,
    }
}
