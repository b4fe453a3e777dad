//! The AWS side of the router: where AWS is and how long its calls may take
//! ([`AwsConnection`]), the SDK client's configuration (credentials chain,
//! HTTPS on rustls, timeouts, retries) and what an SDK error means for the
//! engine.

use std::error::Error as StdError;
use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region};
use aws_sdk_elasticloadbalancingv2 as sdk;
use aws_sdk_elasticloadbalancingv2::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};
use matriarch_router::RouterError;
use tracing::warn;

/// How an [`ElbRouter`](crate::ElbRouter) reaches AWS: the region, the
/// endpoint, and the bounds of every call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AwsConnection {
    /// The AWS region; `None` takes it from the usual AWS configuration
    /// (`AWS_REGION`, profile, instance metadata).
    pub region: Option<String>,
    /// An endpoint URL overriding AWS's, e.g. `http://127.0.0.1:5000` for
    /// moto; `None` also honours `AWS_ENDPOINT_URL`.
    pub endpoint_url: Option<String>,
    /// The bound on one attempt of one AWS call.
    pub attempt_timeout: Duration,
    /// The bound on one AWS call, retries included.
    pub call_timeout: Duration,
    /// The attempts of one AWS call (1 = no retry).
    pub max_attempts: u32,
}

impl Default for AwsConnection {
    /// Region and endpoint from the environment, 5 s per attempt, 15 s per
    /// call, 3 attempts.
    fn default() -> Self {
        AwsConnection {
            region: None,
            endpoint_url: None,
            attempt_timeout: Duration::from_secs(5),
            call_timeout: Duration::from_secs(15),
            max_attempts: 3,
        }
    }
}

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

fn retry_config(aws: &AwsConnection) -> RetryConfig {
    RetryConfig::standard()
        .with_max_attempts(aws.max_attempts.max(1))
        .with_initial_backoff(Duration::from_millis(200))
        .with_max_backoff(Duration::from_secs(5))
}

fn timeout_config(aws: &AwsConnection) -> TimeoutConfig {
    TimeoutConfig::builder()
        .connect_timeout(aws.attempt_timeout)
        .read_timeout(aws.attempt_timeout)
        .operation_attempt_timeout(aws.attempt_timeout)
        .operation_timeout(aws.call_timeout)
        .build()
}

/// The usual AWS configuration chain with an HTTPS client (rustls on ring)
/// and `aws`'s region, endpoint, timeouts and retries, for `router`.
pub(crate) async fn client_config(
    router: &str,
    aws: &AwsConnection,
) -> Result<sdk::config::Builder, RouterError> {
    let http_client = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
        .build_https();
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .http_client(http_client)
        .retry_config(retry_config(aws))
        .timeout_config(timeout_config(aws));
    if let Some(region) = &aws.region {
        loader = loader.region(Region::new(region.clone()));
    }
    if let Some(url) = &aws.endpoint_url {
        loader = loader.endpoint_url(url.clone());
    }
    // Loading may consult instance metadata for the region; bound it too.
    let shared = tokio::time::timeout(aws.call_timeout, loader.load())
        .await
        .map_err(|_| RouterError::Unreachable {
            router: router.to_owned(),
            message: format!(
                "loading the AWS configuration took longer than {:?}",
                aws.call_timeout
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

/// Maps what is left of a failed SDK call after its retries to a
/// [`RouterError`] of `router` that says what was being done: throttling to
/// `Throttled`, AWS failures, timeouts and connection problems to
/// `Unreachable`, API errors to `Rejected`, unbuildable requests to `Config`.
pub(crate) fn call_error<E>(
    router: &str,
    aws: &AwsConnection,
    doing: &str,
    error: SdkError<E>,
) -> RouterError
where
    E: ProvideErrorMetadata + StdError + Send + Sync + 'static,
{
    let unreachable = |detail: String| RouterError::Unreachable {
        router: router.to_owned(),
        message: format!("{doing}: {detail}"),
    };
    let error = match error {
        SdkError::ServiceError(service) => {
            let status = service.raw().status().as_u16();
            let err = service.into_err();
            let code = err.code().unwrap_or("unknown error code").to_owned();
            let message = err.message().unwrap_or("no message").to_owned();
            if THROTTLING_CODES.contains(&code.as_str()) || status == 429 {
                warn!(router, doing, code, "throttled by AWS");
                return RouterError::Throttled {
                    router: router.to_owned(),
                };
            }
            if status >= 500 {
                unreachable(format!("AWS failed: {code}: {message} (HTTP {status})"))
            } else {
                RouterError::Rejected {
                    router: router.to_owned(),
                    message: format!("{doing}: {code}: {message}"),
                }
            }
        }
        SdkError::TimeoutError(_) => unreachable(format!(
            "no answer within {:?} (attempts of {:?})",
            aws.call_timeout, aws.attempt_timeout
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
                "router {router}: {doing}: could not build the request (credentials, region, \
                 endpoint?): {}",
                DisplayErrorContext(&SdkError::<E>::ConstructionFailure(failure))
            ),
        },
        other => unreachable(DisplayErrorContext(&other).to_string()),
    };
    warn!(router, error = %error, "AWS call failed");
    error
}
