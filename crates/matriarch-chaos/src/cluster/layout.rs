//! The lab's fixed layout: the cluster's names, ports and addresses, the hosts
//! (namespaces) and the credentials every node and the client use.

use std::net::Ipv4Addr;

use matriarch_testkit::cluster::Credentials;

use crate::netns::Host;

/// The cluster's name (the DCS scope).
pub const SCOPE: &str = "chaos";
/// The DNS zone BIND serves.
pub const ZONE: &str = "chaos.test";
/// The name that points at the primary.
pub const WRITER: &str = "primary.chaos.test";
/// PostgreSQL's port (on every node's own address).
pub const PG_PORT: u16 = 5432;
/// The REST API's port.
pub const API_PORT: u16 = 8008;
/// How many PostgreSQL nodes and how many etcd members.
pub const NODES: usize = 3;
/// The TSIG key name.
pub(super) const TSIG_KEY: &str = "chaos-key";
/// The prefix of a run's data directory under `/tmp` (followed by the pid).
pub(super) const DATA_PREFIX: &str = "matriarch-chaos-";

/// The address of node `i` (0-based): 127.1.0.11, .12, .13.
pub fn node_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 1, 0, 11 + i as u8)
}

/// The address of etcd member `i` (0-based): 127.1.0.21, .22, .23.
pub fn etcd_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 1, 0, 21 + i as u8)
}

/// BIND's address.
pub const DNS_IP: Ipv4Addr = Ipv4Addr::new(127, 1, 0, 30);
/// The client's address.
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(127, 1, 0, 40);
/// The client namespace's short name.
pub const CLIENT: &str = "cl";

/// Every host of the lab: n1..n3, e1..e3, dns, cl.
pub fn hosts() -> Vec<Host> {
    let mut hosts = Vec::new();
    for i in 0..NODES {
        hosts.push(Host::new(&format!("n{}", i + 1), node_ip(i)));
    }
    for i in 0..NODES {
        hosts.push(Host::new(&format!("e{}", i + 1), etcd_ip(i)));
    }
    hosts.push(Host::new("dns", DNS_IP));
    hosts.push(Host::new(CLIENT, CLIENT_IP));
    hosts
}

/// The index of the node whose address is `ip`.
pub fn node_at(ip: Ipv4Addr) -> Option<usize> {
    (0..NODES).find(|i| node_ip(*i) == ip)
}

/// The REST API's and PostgreSQL's users and passwords: `admin` /
/// `chaos-api`, `postgres` / `chaos-pg`, `replicator` / `chaos-replication`.
pub fn credentials() -> Credentials {
    Credentials::with_prefix(SCOPE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_host_has_its_address_on_the_bridge() {
        let addresses: Vec<(String, Ipv4Addr)> =
            hosts().into_iter().map(|h| (h.short, h.ip)).collect();
        let expected: Vec<(String, Ipv4Addr)> = [
            ("n1", 11),
            ("n2", 12),
            ("n3", 13),
            ("e1", 21),
            ("e2", 22),
            ("e3", 23),
            ("dns", 30),
            (CLIENT, 40),
        ]
        .map(|(short, last)| (short.to_owned(), Ipv4Addr::new(127, 1, 0, last)))
        .to_vec();
        assert_eq!(addresses, expected);
        assert_eq!(node_at(node_ip(1)), Some(1));
        assert_eq!(node_at(DNS_IP), None);
    }
}
