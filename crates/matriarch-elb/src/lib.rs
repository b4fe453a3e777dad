//! The AWS Elastic Load Balancing (v2) router backend: a writer target group
//! that holds exactly the primary, and optionally a reader target group that
//! holds the replicas.
//!
//! [`ElbRouter`] uses the AWS SDK with the usual configuration chain
//! (environment, profile files, web identity, ECS/EC2 metadata) for
//! credentials and region, and an endpoint override for local emulators.
//! Targets are registered by IP address (target groups of type `ip`), so an
//! [`Endpoint`]'s host must be an IP address.
//!
//! Every SDK call has a per-attempt and an overall timeout and is retried
//! with backoff (the SDK's standard retry mode) when AWS throttles or fails
//! transiently. What is left after the retries maps to a [`RouterError`]:
//! throttling to [`RouterError::Throttled`], connection problems and timeouts
//! to [`RouterError::Unreachable`], API errors to [`RouterError::Rejected`].

#![warn(missing_docs)]

use std::collections::BTreeSet;
use std::error::Error as StdError;
use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use async_trait::async_trait;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region};
use aws_sdk_elasticloadbalancingv2::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_elasticloadbalancingv2::types::{
    ProtocolEnum, TargetDescription, TargetGroupAttribute,
};
use aws_sdk_elasticloadbalancingv2::Client;
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};
use matriarch_router::{Endpoint, Router, RouterError, Routes};
use tracing::{debug, info, warn};

pub use aws_sdk_elasticloadbalancingv2 as sdk;

/// Error codes with which AWS asks the caller to slow down.
const THROTTLING_CODES: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottledException",
    "TooManyRequestsException",
    "RequestLimitExceeded",
    "RequestThrottled",
    "SlowDown",
    "PriorRequestNotComplete",
    "EC2ThrottledException",
];

/// What an [`ElbRouter`] manages and how it reaches AWS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ElbRouterConfig {
    /// The ARN of the target group that must hold exactly the primary.
    pub writer_target_group_arn: String,
    /// The ARN of the target group that holds the replicas, if any.
    pub reader_target_group_arn: Option<String>,
    /// The port targets are registered with; `None` uses each endpoint's
    /// PostgreSQL port.
    pub port: Option<u16>,
    /// The availability zone given with each registration: `None` for
    /// addresses inside the target group's VPC, `Some("all")` for addresses
    /// outside it (on premises, peered VPCs).
    pub availability_zone: Option<String>,
    /// The AWS region; `None` takes it from the usual AWS configuration
    /// (`AWS_REGION`, profile, instance metadata).
    pub region: Option<String>,
    /// An endpoint URL overriding AWS's, e.g. `http://127.0.0.1:5000` for
    /// moto; `None` also honours `AWS_ENDPOINT_URL`.
    pub endpoint_url: Option<String>,
    /// The deregistration delay [`ElbRouter::setup`] sets on the groups.
    pub deregistration_delay: Duration,
    /// The bound on one attempt of one AWS call.
    pub attempt_timeout: Duration,
    /// The bound on one AWS call, retries included.
    pub call_timeout: Duration,
    /// The attempts of one AWS call (1 = no retry).
    pub max_attempts: u32,
}

impl ElbRouterConfig {
    /// A configuration for the writer target group with defaults: endpoint
    /// ports, no reader group, region and endpoint from the environment,
    /// deregistration delay 0 s, 5 s per attempt, 15 s per call, 3 attempts.
    pub fn new(writer_target_group_arn: impl Into<String>) -> Self {
        ElbRouterConfig {
            writer_target_group_arn: writer_target_group_arn.into(),
            reader_target_group_arn: None,
            port: None,
            availability_zone: None,
            region: None,
            endpoint_url: None,
            deregistration_delay: Duration::ZERO,
            attempt_timeout: Duration::from_secs(5),
            call_timeout: Duration::from_secs(15),
            max_attempts: 3,
        }
    }
}

/// A target as registered in a target group.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Target {
    id: String,
    port: u16,
    availability_zone: Option<String>,
}

impl Target {
    /// Identity of a target in a group: its address and port.
    fn same(&self, other: &Target) -> bool {
        self.port == other.port && same_id(&self.id, &other.id)
    }

    fn description(&self) -> TargetDescription {
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
fn same_id(a: &str, b: &str) -> bool {
    match (a.parse::<IpAddr>(), b.parse::<IpAddr>()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// The configured AWS error-handling parts, shared by [`ElbRouter::new`]
/// and [`ElbRouter::client_config`].
fn retry_config(config: &ElbRouterConfig) -> RetryConfig {
    RetryConfig::standard()
        .with_max_attempts(config.max_attempts.max(1))
        .with_initial_backoff(Duration::from_millis(200))
        .with_max_backoff(Duration::from_secs(5))
}

fn timeout_config(config: &ElbRouterConfig) -> TimeoutConfig {
    TimeoutConfig::builder()
        .connect_timeout(config.attempt_timeout)
        .read_timeout(config.attempt_timeout)
        .operation_attempt_timeout(config.attempt_timeout)
        .operation_timeout(config.call_timeout)
        .build()
}

/// A [`Router`] that keeps ELBv2 target groups pointed at the cluster's
/// members. See the crate documentation.
#[derive(Clone)]
pub struct ElbRouter {
    name: String,
    client: Client,
    config: ElbRouterConfig,
}

impl fmt::Debug for ElbRouter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ElbRouter")
            .field("name", &self.name)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// The router's name: `elb:` and the writer group's name from its ARN
/// (`...:targetgroup/NAME/ID`), or the whole ARN if it has no such part.
fn router_name(arn: &str) -> String {
    let short = arn
        .split_once(":targetgroup/")
        .and_then(|(_, rest)| rest.split('/').next())
        .unwrap_or(arn);
    format!("elb:{short}")
}

fn validate(config: &ElbRouterConfig) -> Result<(), RouterError> {
    let problem = if config.writer_target_group_arn.trim().is_empty() {
        Some("the writer target group ARN is empty".to_owned())
    } else if config.reader_target_group_arn.as_deref() == Some(&config.writer_target_group_arn) {
        Some("the reader target group must differ from the writer target group".to_owned())
    } else if config.attempt_timeout.is_zero() || config.call_timeout.is_zero() {
        Some("the ELB router's timeouts must be positive".to_owned())
    } else if config.port == Some(0) {
        Some("the target port must not be 0".to_owned())
    } else {
        None
    };
    match problem {
        Some(message) => Err(RouterError::Config { message }),
        None => Ok(()),
    }
}

impl ElbRouter {
    /// Loads the AWS configuration (credentials, region) the usual way,
    /// overridden by `config`, and builds the router. Makes no AWS call.
    pub async fn new(config: ElbRouterConfig) -> Result<Self, RouterError> {
        let client = Client::from_conf(Self::client_config(&config).await?.build());
        Self::from_client(client, config)
    }

    /// The SDK client configuration [`ElbRouter::new`] uses: the usual AWS
    /// configuration chain, an HTTPS client (rustls on ring), and `config`'s
    /// region, endpoint, timeouts and retries. Add interceptors to it and
    /// hand the client to [`ElbRouter::from_client`].
    pub async fn client_config(
        config: &ElbRouterConfig,
    ) -> Result<sdk::config::Builder, RouterError> {
        validate(config)?;
        let http_client = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
            .build_https();
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .http_client(http_client)
            .retry_config(retry_config(config))
            .timeout_config(timeout_config(config));
        if let Some(region) = &config.region {
            loader = loader.region(Region::new(region.clone()));
        }
        if let Some(url) = &config.endpoint_url {
            loader = loader.endpoint_url(url.clone());
        }
        // Loading may consult instance metadata for the region; bound it too.
        let shared = tokio::time::timeout(config.call_timeout, loader.load())
            .await
            .map_err(|_| RouterError::Unreachable {
                router: router_name(&config.writer_target_group_arn),
                message: format!(
                    "loading the AWS configuration took longer than {:?}",
                    config.call_timeout
                ),
            })?;
        if shared.region().is_none() {
            return Err(RouterError::Config {
                message: "no AWS region: set it in the ELB router's configuration, \
                          AWS_REGION or the AWS profile"
                    .to_owned(),
            });
        }
        Ok(sdk::config::Builder::from(&shared))
    }

    /// A router that uses `client` (whose configuration should bound its
    /// calls in time; [`ElbRouter::client_config`] does).
    pub fn from_client(client: Client, config: ElbRouterConfig) -> Result<Self, RouterError> {
        validate(&config)?;
        Ok(ElbRouter {
            name: router_name(&config.writer_target_group_arn),
            client,
            config,
        })
    }

    /// The SDK client, e.g. to inspect the target groups.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Makes deregistered targets lose their traffic fast: sets each group's
    /// `deregistration_delay.timeout_seconds` to the configured delay and, for
    /// network load balancer groups (TCP, TLS, UDP, TCP_UDP), enables
    /// `deregistration_delay.connection_termination.enabled` so that open
    /// connections to a deregistered target are closed. Idempotent.
    pub async fn setup(&self) -> Result<(), RouterError> {
        let mut arns = vec![self.config.writer_target_group_arn.clone()];
        arns.extend(self.config.reader_target_group_arn.clone());
        let groups = self
            .client
            .describe_target_groups()
            .set_target_group_arns(Some(arns.clone()))
            .send()
            .await
            .map_err(|e| self.sdk_error("describing the target groups", e))?;
        for arn in &arns {
            let group = groups
                .target_groups()
                .iter()
                .find(|g| g.target_group_arn() == Some(arn.as_str()))
                .ok_or_else(|| self.rejected(format!("target group {arn} not found")))?;
            let network = matches!(
                group.protocol(),
                Some(
                    ProtocolEnum::Tcp
                        | ProtocolEnum::Tls
                        | ProtocolEnum::Udp
                        | ProtocolEnum::TcpUdp
                )
            );
            let mut attributes = vec![TargetGroupAttribute::builder()
                .key("deregistration_delay.timeout_seconds")
                .value(self.config.deregistration_delay.as_secs().to_string())
                .build()];
            if network {
                attributes.push(
                    TargetGroupAttribute::builder()
                        .key("deregistration_delay.connection_termination.enabled")
                        .value("true")
                        .build(),
                );
            }
            self.client
                .modify_target_group_attributes()
                .target_group_arn(arn)
                .set_attributes(Some(attributes))
                .send()
                .await
                .map_err(|e| self.sdk_error(&format!("setting the attributes of {arn}"), e))?;
            info!(router = %self.name, target_group = %arn, network, "target group attributes set");
        }
        Ok(())
    }

    fn rejected(&self, message: impl Into<String>) -> RouterError {
        RouterError::Rejected {
            router: self.name.clone(),
            message: message.into(),
        }
    }

    /// Maps an SDK error to a [`RouterError`] that says what was being done.
    fn sdk_error<E>(&self, doing: &str, error: SdkError<E>) -> RouterError
    where
        E: ProvideErrorMetadata + StdError + Send + Sync + 'static,
    {
        let unreachable = |detail: String| RouterError::Unreachable {
            router: self.name.clone(),
            message: format!("{doing}: {detail}"),
        };
        let error = match error {
            SdkError::ServiceError(service) => {
                let status = service.raw().status().as_u16();
                let err = service.into_err();
                let code = err.code().unwrap_or("unknown error code").to_owned();
                let message = err.message().unwrap_or("no message").to_owned();
                if THROTTLING_CODES.contains(&code.as_str()) || status == 429 {
                    warn!(router = %self.name, doing, code, "throttled by AWS");
                    return RouterError::Throttled {
                        router: self.name.clone(),
                    };
                }
                if status >= 500 {
                    unreachable(format!("AWS failed: {code}: {message} (HTTP {status})"))
                } else {
                    self.rejected(format!("{doing}: {code}: {message}"))
                }
            }
            SdkError::TimeoutError(_) => unreachable(format!(
                "no answer within {:?} (attempts of {:?})",
                self.config.call_timeout, self.config.attempt_timeout
            )),
            SdkError::DispatchFailure(failure) => {
                let kind = if failure.is_timeout() {
                    "timed out"
                } else if failure.is_io() {
                    "connection failed"
                } else {
                    "request failed"
                };
                unreachable(format!(
                    "{kind}: {}",
                    DisplayErrorContext(&SdkError::<E>::DispatchFailure(failure))
                ))
            }
            SdkError::ResponseError(response) => unreachable(format!(
                "unreadable answer: {}",
                DisplayErrorContext(&SdkError::<E>::ResponseError(response))
            )),
            SdkError::ConstructionFailure(failure) => RouterError::Config {
                message: format!(
                    "router {}: {doing}: could not build the request (credentials, region, \
                     endpoint?): {}",
                    self.name,
                    DisplayErrorContext(&SdkError::<E>::ConstructionFailure(failure))
                ),
            },
            other => unreachable(DisplayErrorContext(&other).to_string()),
        };
        warn!(router = %self.name, error = %error, "AWS call failed");
        error
    }

    /// The target for `endpoint`.
    fn target(&self, endpoint: &Endpoint) -> Result<Target, RouterError> {
        let host = endpoint
            .host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(&endpoint.host);
        let ip: IpAddr = host.parse().map_err(|_| RouterError::Config {
            message: format!(
                "router {}: member {} has host `{}`, but target groups of type ip need an IP \
                 address",
                self.name, endpoint.member, endpoint.host
            ),
        })?;
        Ok(Target {
            id: ip.to_string(),
            port: self.config.port.unwrap_or(endpoint.port),
            availability_zone: self.config.availability_zone.clone(),
        })
    }

    /// The targets registered in `arn` (one DescribeTargetHealth call).
    async fn registered(&self, arn: &str) -> Result<Vec<Target>, RouterError> {
        let output = self
            .client
            .describe_target_health()
            .target_group_arn(arn)
            .send()
            .await
            .map_err(|e| self.sdk_error(&format!("describing the targets of {arn}"), e))?;
        let mut targets = Vec::new();
        for description in output.target_health_descriptions() {
            let Some(target) = description.target() else {
                continue;
            };
            let (Some(id), Some(port)) = (target.id(), target.port()) else {
                continue;
            };
            let Ok(port) = u16::try_from(port) else {
                warn!(router = %self.name, id, port, "ignoring a target with an invalid port");
                continue;
            };
            targets.push(Target {
                id: id.to_owned(),
                port,
                availability_zone: target.availability_zone().map(str::to_owned),
            });
        }
        debug!(router = %self.name, target_group = arn, targets = ?targets, "registered targets");
        Ok(targets)
    }

    async fn register(&self, arn: &str, targets: &[Target]) -> Result<(), RouterError> {
        if targets.is_empty() {
            return Ok(());
        }
        self.client
            .register_targets()
            .target_group_arn(arn)
            .set_targets(Some(targets.iter().map(Target::description).collect()))
            .send()
            .await
            .map_err(|e| self.sdk_error(&format!("registering {} in {arn}", list(targets)), e))?;
        info!(router = %self.name, target_group = arn, targets = %list(targets), "registered");
        Ok(())
    }

    async fn deregister(&self, arn: &str, targets: &[Target]) -> Result<(), RouterError> {
        if targets.is_empty() {
            return Ok(());
        }
        self.client
            .deregister_targets()
            .target_group_arn(arn)
            .set_targets(Some(targets.iter().map(Target::description).collect()))
            .send()
            .await
            .map_err(|e| {
                self.sdk_error(&format!("deregistering {} from {arn}", list(targets)), e)
            })?;
        info!(router = %self.name, target_group = arn, targets = %list(targets), "deregistered");
        Ok(())
    }

    /// Makes group `arn` hold exactly `wanted`: registers the missing ones,
    /// then deregisters the others. One describe call and nothing else if it
    /// already does.
    async fn converge(&self, arn: &str, wanted: &[Target]) -> Result<bool, RouterError> {
        let current = self.registered(arn).await?;
        let missing: Vec<Target> = wanted
            .iter()
            .filter(|w| !current.iter().any(|c| c.same(w)))
            .cloned()
            .collect();
        let extra: Vec<Target> = current
            .iter()
            .filter(|c| !wanted.iter().any(|w| w.same(c)))
            .cloned()
            .collect();
        if missing.is_empty() && extra.is_empty() {
            return Ok(false);
        }
        self.register(arn, &missing).await?;
        self.deregister(arn, &extra).await?;
        Ok(true)
    }
}

fn list(targets: &[Target]) -> String {
    targets
        .iter()
        .map(Target::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

#[async_trait]
impl Router for ElbRouter {
    fn name(&self) -> &str {
        &self.name
    }

    /// Registers the primary in the writer group, then deregisters every
    /// other writer; then makes the reader group hold exactly the replicas.
    async fn route(&self, routes: &Routes) -> Result<(), RouterError> {
        // Check every address before changing anything.
        let primary = self.target(&routes.primary)?;
        let replicas = routes
            .replicas
            .iter()
            .map(|r| self.target(r))
            .collect::<Result<BTreeSet<_>, _>>()?;
        let writer_changed = self
            .converge(&self.config.writer_target_group_arn, &[primary])
            .await?;
        let mut reader_changed = false;
        if let Some(reader_arn) = &self.config.reader_target_group_arn {
            let replicas: Vec<Target> = replicas.into_iter().collect();
            reader_changed = self.converge(reader_arn, &replicas).await?;
        }
        if writer_changed || reader_changed {
            info!(router = %self.name, primary = %routes.primary.member, replicas = routes.replicas.len(), "routed");
        } else {
            debug!(router = %self.name, primary = %routes.primary.member, "already routed; nothing changed");
        }
        Ok(())
    }

    /// Deregisters `member` from the writer group if it is there.
    async fn withdraw(&self, member: &Endpoint) -> Result<(), RouterError> {
        let target = self.target(member)?;
        let arn = &self.config.writer_target_group_arn;
        let current = self.registered(arn).await?;
        let present: Vec<Target> = current
            .into_iter()
            .filter(|c| same_id(&c.id, &target.id))
            .collect();
        if present.is_empty() {
            debug!(router = %self.name, member = %member.member, "not a writer; nothing to withdraw");
            return Ok(());
        }
        self.deregister(arn, &present).await?;
        info!(router = %self.name, member = %member.member, "withdrawn from the writer group");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn router_name_is_the_target_group_name() {
        assert_eq!(
            router_name(
                "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/pg-writer/50dc6c495c0c9188"
            ),
            "elb:pg-writer"
        );
        assert_eq!(router_name("weird"), "elb:weird");
    }

    #[test]
    fn target_ids_compare_as_addresses() {
        assert!(same_id("::1", "0:0::1"));
        assert!(same_id("10.0.0.1", "10.0.0.1"));
        assert!(!same_id("10.0.0.1", "10.0.0.2"));
    }

    #[test]
    fn configuration_mistakes_are_config_errors() {
        let mut config = ElbRouterConfig::new("arn:a");
        config.reader_target_group_arn = Some("arn:a".to_owned());
        assert!(matches!(validate(&config), Err(RouterError::Config { .. })));
        let mut config = ElbRouterConfig::new("arn:a");
        config.call_timeout = Duration::ZERO;
        assert!(matches!(validate(&config), Err(RouterError::Config { .. })));
        assert!(validate(&ElbRouterConfig::new("arn:a")).is_ok());
    }
}
