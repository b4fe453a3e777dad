//! The records the managed names hold, as the router reads them.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, Ipv6Addr};

/// The records one name holds, among those a [`DnsRouter`] manages (A,
/// AAAA, CNAME).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NameRecords {
    /// The IPv4 addresses.
    pub a: BTreeSet<Ipv4Addr>,
    /// The IPv6 addresses.
    pub aaaa: BTreeSet<Ipv6Addr>,
    /// The alias target, if the name is a CNAME.
    pub cname: Option<String>,
    /// The TTLs seen (empty when the name holds none of these records).
    pub ttls: BTreeSet<u32>,
}

impl NameRecords {
    /// Whether the name holds none of the managed records.
    pub fn is_empty(&self) -> bool {
        self.a.is_empty() && self.aaaa.is_empty() && self.cname.is_none()
    }
}

/// What the managed names held when [`DnsRouter::read`] looked: the
/// expectation that [`DnsRouter::route_from`] turns into prerequisites.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DnsState {
    /// The writer name's records.
    pub writer: NameRecords,
    /// The reader name's records (empty without a reader name).
    pub reader: NameRecords,
}
