//! `router:`: where clients are sent (AWS ELB target groups, DNS names).

use serde::Deserialize;

use matriarch_model::Secret;

/// `router:`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RouterSection {
    /// AWS ELB target groups.
    pub elb: Option<ElbSection>,
    /// DNS names updated with RFC 2136.
    pub dns: Option<DnsSection>,
}

/// `router.elb:`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ElbSection {
    /// The target group that holds exactly the primary.
    pub writer_target_group_arn: String,
    /// The target group that holds the replicas.
    pub reader_target_group_arn: Option<String>,
    /// The AWS region.
    pub region: Option<String>,
    /// An endpoint override (e.g. a local emulator).
    pub endpoint_url: Option<String>,
    /// `all` for addresses outside the target group's VPC.
    pub availability_zone: Option<String>,
}

/// `router.dns:`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DnsSection {
    /// The zone's primary server, `ip:port`.
    pub server: String,
    /// The zone.
    pub zone: String,
    /// The name that points at the primary.
    pub writer: String,
    /// The name that holds the replicas.
    pub reader: Option<String>,
    /// Record TTL in seconds.
    #[serde(default = "default_dns_ttl")]
    pub ttl: u32,
    /// TSIG key.
    pub tsig: TsigSection,
}

fn default_dns_ttl() -> u32 {
    5
}

/// `router.dns.tsig:`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TsigSection {
    /// The key's name.
    pub key_name: String,
    /// `hmac-sha256` etc.
    #[serde(default = "default_tsig_algorithm")]
    pub algorithm: String,
    /// The base64 secret.
    pub secret: Secret,
}

fn default_tsig_algorithm() -> String {
    "hmac-sha256".to_owned()
}
