//! [`ElbRouter`]: the [`Router`] that keeps the target groups pointed at the
//! cluster's members.

use std::collections::BTreeSet;
use std::error::Error as StdError;
use std::fmt;

use async_trait::async_trait;
use aws_sdk_elasticloadbalancingv2 as sdk;
use aws_sdk_elasticloadbalancingv2::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_elasticloadbalancingv2::types::{ProtocolEnum, TargetGroupAttribute};
use aws_sdk_elasticloadbalancingv2::Client;
use matriarch_router::{Endpoint, Router, RouterError, Routes};
use tracing::{debug, info, warn};

use crate::client;
use crate::config::ElbRouterConfig;
use crate::target::{list, same_id, Target};

/// Which way [`ElbRouter::change`] moves targets.
#[derive(Clone, Copy, Debug)]
enum Change {
    Register,
    Deregister,
}

/// A [`Router`] that keeps ELBv2 target groups pointed at the cluster's
/// members. See the crate documentation.
#[derive(Clone)]
pub struct ElbRouter {
    name: String,
    client: Client,
    config: ElbRouterConfig,
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
        config.validate()?;
        client::client_config(&config.router_name(), &config.aws).await
    }

    /// A router that uses `client` (whose configuration should bound its
    /// calls in time; [`ElbRouter::client_config`] does).
    pub fn from_client(client: Client, config: ElbRouterConfig) -> Result<Self, RouterError> {
        config.validate()?;
        Ok(ElbRouter {
            name: config.router_name(),
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
        client::call_error(&self.name, &self.config.aws, doing, error)
    }

    /// The target for `endpoint`.
    fn target(&self, endpoint: &Endpoint) -> Result<Target, RouterError> {
        Target::for_endpoint(endpoint, &self.config, &self.name)
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

    /// Registers `targets` in group `arn` or deregisters them from it; no
    /// call when there are none.
    async fn change(
        &self,
        change: Change,
        arn: &str,
        targets: &[Target],
    ) -> Result<(), RouterError> {
        if targets.is_empty() {
            return Ok(());
        }
        let descriptions = Some(targets.iter().map(Target::description).collect());
        let (doing, done) = match change {
            Change::Register => (
                format!("registering {} in {arn}", list(targets)),
                "registered",
            ),
            Change::Deregister => (
                format!("deregistering {} from {arn}", list(targets)),
                "deregistered",
            ),
        };
        match change {
            Change::Register => self
                .client
                .register_targets()
                .target_group_arn(arn)
                .set_targets(descriptions)
                .send()
                .await
                .map(drop)
                .map_err(|e| self.sdk_error(&doing, e)),
            Change::Deregister => self
                .client
                .deregister_targets()
                .target_group_arn(arn)
                .set_targets(descriptions)
                .send()
                .await
                .map(drop)
                .map_err(|e| self.sdk_error(&doing, e)),
        }?;
        info!(router = %self.name, target_group = arn, targets = %list(targets), "{done}");
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
        self.change(Change::Register, arn, &missing).await?;
        self.change(Change::Deregister, arn, &extra).await?;
        Ok(true)
    }
}

/// The configuration (the name derives from it), without the SDK client.
impl fmt::Debug for ElbRouter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ElbRouter")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
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
        self.change(Change::Deregister, arn, &present).await?;
        info!(router = %self.name, member = %member.member, "withdrawn from the writer group");
        Ok(())
    }
}
