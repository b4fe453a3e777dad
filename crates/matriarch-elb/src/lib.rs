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
//!
//! [`Endpoint`]: matriarch_router::Endpoint
//! [`RouterError`]: matriarch_router::RouterError
//! [`RouterError::Throttled`]: matriarch_router::RouterError::Throttled
//! [`RouterError::Unreachable`]: matriarch_router::RouterError::Unreachable
//! [`RouterError::Rejected`]: matriarch_router::RouterError::Rejected

#![warn(missing_docs)]

mod client;
mod config;
mod router;
mod target;

pub use aws_sdk_elasticloadbalancingv2 as sdk;
pub use client::AwsConnection;
pub use config::ElbRouterConfig;
pub use router::ElbRouter;
