//! The routers chosen by the configuration.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use matriarch_router::{Endpoint, FanOut, Retry, Router, RouterError, Routes};
use tracing::debug;

use crate::config::{NodeConfig, Validated};
use crate::error::DaemonError;

/// The router used when none is configured: it changes nothing and says so
/// at debug level.
///
/// This is a mode, not a stub: clients then find the primary through the
/// REST API's health endpoints, as with Patroni's default setup. A load
/// balancer (HAProxy with `option httpchk OPTIONS /primary`, an AWS ELB or
/// a Kubernetes readiness probe on `/primary` or `/replica`) checks every
/// member's API and sends connections only to the one answering 200.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoRouter;

#[async_trait]
impl Router for NoRouter {
    fn name(&self) -> &str {
        "none (REST health checks)"
    }

    async fn route(&self, routes: &Routes) -> Result<(), RouterError> {
        debug!(primary = %routes.primary.member, "no router configured: clients follow the REST health checks");
        Ok(())
    }

    async fn withdraw(&self, member: &Endpoint) -> Result<(), RouterError> {
        debug!(member = %member.member, "no router configured: nothing to withdraw");
        Ok(())
    }
}

/// Builds the configured routers: all of them at once ([`FanOut`]), retried
/// on transient failures ([`Retry`]); [`NoRouter`] when none is configured.
pub async fn build(
    config: &NodeConfig,
    validated: &Validated,
) -> Result<Arc<dyn Router>, DaemonError> {
    let mut routers: Vec<Arc<dyn Router>> = Vec::new();
    if let Some(elb) = &config.router.elb {
        let mut cfg = matriarch_elb::ElbRouterConfig::new(elb.writer_target_group_arn.clone());
        cfg.reader_target_group_arn = elb.reader_target_group_arn.clone();
        cfg.region = elb.region.clone();
        cfg.endpoint_url = elb.endpoint_url.clone();
        cfg.availability_zone = elb.availability_zone.clone();
        let router = matriarch_elb::ElbRouter::new(cfg)
            .await
            .map_err(|e| DaemonError::Router {
                router: "elb",
                message: e.to_string(),
            })?;
        routers.push(Arc::new(router));
    }
    if let (Some(dns), Some(server)) = (&config.router.dns, validated.dns_server) {
        let key = matriarch_dns::TsigKey::from_base64(
            dns.tsig.key_name.clone(),
            dns.tsig.algorithm.clone(),
            dns.tsig.secret.expose(),
        )
        .map_err(|e| DaemonError::Router {
            router: "dns",
            message: e.to_string(),
        })?;
        let mut cfg =
            matriarch_dns::DnsRouterConfig::new(server, dns.zone.clone(), dns.writer.clone(), key);
        cfg.reader_name = dns.reader.clone();
        cfg.ttl = dns.ttl;
        let router = matriarch_dns::DnsRouter::new(cfg).map_err(|e| DaemonError::Router {
            router: "dns",
            message: e.to_string(),
        })?;
        routers.push(Arc::new(router));
    }
    if routers.is_empty() {
        return Ok(Arc::new(NoRouter));
    }
    let retry = Retry::new(FanOut::new(routers), 3, Duration::from_millis(200)).map_err(|e| {
        DaemonError::Router {
            router: "retry",
            message: e.to_string(),
        }
    })?;
    Ok(Arc::new(retry))
}
