//! Targets of a target group of type `ip`: made from endpoints, compared by
//! address, and turned into the SDK's descriptions.

use std::fmt;
use std::net::IpAddr;

use aws_sdk_elasticloadbalancingv2::types::TargetDescription;
use matriarch_router::{Endpoint, RouterError};

use crate::config::ElbRouterConfig;

/// A target as registered in a target group.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Target {
    pub(crate) id: String,
    pub(crate) port: u16,
    pub(crate) availability_zone: Option<String>,
}

impl Target {
    /// The target for `endpoint`, whose host must be an IP address (in
    /// brackets or not), with `config`'s port and zone.
    pub(crate) fn for_endpoint(
        endpoint: &Endpoint,
        config: &ElbRouterConfig,
        router: &str,
    ) -> Result<Target, RouterError> {
        let host = endpoint
            .host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(&endpoint.host);
        let ip: IpAddr = host.parse().map_err(|_| RouterError::Config {
            message: format!(
                "router {router}: member {} has host `{}`, but target groups of type ip need \
                 an IP address",
                endpoint.member, endpoint.host
            ),
        })?;
        Ok(Target {
            id: ip.to_string(),
            port: config.port.unwrap_or(endpoint.port),
            availability_zone: config.availability_zone.clone(),
        })
    }

    /// Identity of a target in a group: its address and port.
    pub(crate) fn same(&self, other: &Target) -> bool {
        self.port == other.port && same_id(&self.id, &other.id)
    }

    pub(crate) fn description(&self) -> TargetDescription {
        let mut builder = TargetDescription::builder()
            .id(self.id.clone())
            .port(i32::from(self.port));
        if let Some(zone) = &self.availability_zone {
            builder = builder.availability_zone(zone.clone());
        }
        builder.build()
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.id.parse::<IpAddr>() {
            Ok(IpAddr::V6(_)) => write!(f, "[{}]:{}", self.id, self.port),
            _ => write!(f, "{}:{}", self.id, self.port),
        }
    }
}

/// Target ids compared as addresses when they are (`::1` == `0:0::1`).
pub(crate) fn same_id(a: &str, b: &str) -> bool {
    match (a.parse::<IpAddr>(), b.parse::<IpAddr>()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// `targets` for a log line or an error: `ip:port, ip:port`.
pub(crate) fn list(targets: &[Target]) -> String {
    targets
        .iter()
        .map(Target::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_ids_compare_as_addresses() {
        assert!(same_id("::1", "0:0::1"));
        assert!(same_id("10.0.0.1", "10.0.0.1"));
        assert!(!same_id("10.0.0.1", "10.0.0.2"));
    }
}
