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
pub(crate) struct NoRouter;

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

/// How many times, and how far apart, each router is tried per call.
const ROUTER_ATTEMPTS: u32 = 3;
const ROUTER_BACKOFF: Duration = Duration::from_millis(200);

/// Builds the configured routers: each retried on transient failures
/// ([`Retry`]), all of them at once ([`FanOut`]); [`NoRouter`] when none is
/// configured.
pub(crate) async fn build(
    config: &NodeConfig,
    validated: &Validated,
) -> Result<Arc<dyn Router>, DaemonError> {
    let mut routers: Vec<Arc<dyn Router>> = Vec::new();
    if let Some(elb) = &config.router.elb {
        let mut cfg = matriarch_elb::ElbRouterConfig::new(elb.writer_target_group_arn.clone());
        cfg.reader_target_group_arn = elb.reader_target_group_arn.clone();
        cfg.aws.region = elb.region.clone();
        cfg.aws.endpoint_url = elb.endpoint_url.clone();
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
    compose(routers, ROUTER_ATTEMPTS, ROUTER_BACKOFF)
}

/// Wraps each router in its own [`Retry`] and drives them together with a
/// [`FanOut`], so that a transient failure of one backend repeats the call on
/// that backend only (a `Retry` around the `FanOut` would call again the
/// routers that had succeeded); [`NoRouter`] when there is none.
fn compose(
    routers: Vec<Arc<dyn Router>>,
    max_attempts: u32,
    backoff: Duration,
) -> Result<Arc<dyn Router>, DaemonError> {
    if routers.is_empty() {
        return Ok(Arc::new(NoRouter));
    }
    let retried = routers
        .into_iter()
        .map(|router| {
            Retry::new(router, max_attempts, backoff)
                .map(|retry| Arc::new(retry) as Arc<dyn Router>)
                .map_err(|e| DaemonError::Router {
                    router: "retry",
                    message: e.to_string(),
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Arc::new(FanOut::new(retried)))
}

#[cfg(test)]
mod tests {
    use matriarch_model::MemberName;
    use matriarch_router::{RecordingRouter, RouterCall};

    use super::*;

    fn endpoint(member: &str) -> Endpoint {
        Endpoint {
            member: MemberName::new(member).expect("member name"),
            host: "10.0.0.1".to_owned(),
            port: 5432,
        }
    }

    #[tokio::test]
    async fn a_transient_failure_is_retried_on_the_failing_router_only() {
        let elb = RecordingRouter::new("elb");
        let dns = RecordingRouter::new("dns");
        dns.fail_next(
            1,
            RouterError::Throttled {
                router: "dns".to_owned(),
            },
        );
        let router = compose(
            vec![Arc::new(elb.clone()), Arc::new(dns.clone())],
            3,
            Duration::from_millis(1),
        )
        .expect("compose");
        let routes = Routes {
            primary: endpoint("a"),
            replicas: vec![endpoint("b")],
        };
        router.route(&routes).await.expect("route after a retry");
        assert_eq!(elb.calls(), vec![RouterCall::Route(routes.clone())]);
        assert_eq!(
            dns.calls(),
            vec![RouterCall::Route(routes.clone()), RouterCall::Route(routes)]
        );
    }

    #[tokio::test]
    async fn no_router_configured_is_the_no_router_mode() {
        let router = compose(Vec::new(), 3, Duration::from_millis(1)).expect("compose");
        assert_eq!(router.name(), NoRouter.name());
    }
}
