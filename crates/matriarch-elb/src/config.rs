//! What an [`ElbRouter`](crate::ElbRouter) manages: [`ElbRouterConfig`].

use std::time::Duration;

use matriarch_router::RouterError;

use crate::client::AwsConnection;

/// What an [`ElbRouter`](crate::ElbRouter) manages, and how it reaches AWS.
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
    /// The deregistration delay [`ElbRouter::setup`](crate::ElbRouter::setup)
    /// sets on the groups.
    pub deregistration_delay: Duration,
    /// Where AWS is and how long its calls may take.
    pub aws: AwsConnection,
}

impl ElbRouterConfig {
    /// A configuration for the writer target group with defaults: endpoint
    /// ports, no reader group, deregistration delay 0 s, and
    /// [`AwsConnection::default`].
    pub fn new(writer_target_group_arn: impl Into<String>) -> Self {
        ElbRouterConfig {
            writer_target_group_arn: writer_target_group_arn.into(),
            reader_target_group_arn: None,
            port: None,
            availability_zone: None,
            deregistration_delay: Duration::ZERO,
            aws: AwsConnection::default(),
        }
    }

    /// The router's name: `elb:` and the writer group's name from its ARN
    /// (`...:targetgroup/NAME/ID`), or the whole ARN if it has no such part.
    pub(crate) fn router_name(&self) -> String {
        let arn = &self.writer_target_group_arn;
        let short = arn
            .split_once(":targetgroup/")
            .and_then(|(_, rest)| rest.split('/').next())
            .unwrap_or(arn);
        format!("elb:{short}")
    }

    /// Refuses what no AWS call could fix.
    pub(crate) fn validate(&self) -> Result<(), RouterError> {
        let problem = if self.writer_target_group_arn.trim().is_empty() {
            "the writer target group ARN is empty"
        } else if self.reader_target_group_arn.as_deref() == Some(&self.writer_target_group_arn) {
            "the reader target group must differ from the writer target group"
        } else if self.aws.attempt_timeout.is_zero() || self.aws.call_timeout.is_zero() {
            "the ELB router's timeouts must be positive"
        } else if self.port == Some(0) {
            "the target port must not be 0"
        } else {
            return Ok(());
        };
        Err(RouterError::Config {
            message: problem.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn router_name_is_the_target_group_name() {
        let named = |arn: &str| ElbRouterConfig::new(arn).router_name();
        assert_eq!(
            named(
                "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/pg-writer/50dc6c495c0c9188"
            ),
            "elb:pg-writer"
        );
        assert_eq!(named("weird"), "elb:weird");
    }

    #[test]
    fn configuration_mistakes_are_config_errors() {
        let mut config = ElbRouterConfig::new("arn:a");
        config.reader_target_group_arn = Some("arn:a".to_owned());
        assert!(matches!(config.validate(), Err(RouterError::Config { .. })));
        let mut config = ElbRouterConfig::new("arn:a");
        config.aws.call_timeout = Duration::ZERO;
        assert!(matches!(config.validate(), Err(RouterError::Config { .. })));
        assert!(ElbRouterConfig::new("arn:a").validate().is_ok());
    }
}
