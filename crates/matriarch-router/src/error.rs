//! The one error type of this crate.

/// Why a router could not apply a change.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RouterError {
    /// The router's backend could not be reached or did not answer in time;
    /// trying again may work.
    #[error("router {router}: backend unreachable: {message}")]
    Unreachable {
        /// The router's name.
        router: String,
        /// What failed.
        message: String,
    },
    /// The backend refused the change (permissions, unknown target, invalid
    /// request); trying again will not help.
    #[error("router {router}: change rejected: {message}")]
    Rejected {
        /// The router's name.
        router: String,
        /// The backend's reason.
        message: String,
    },
    /// The backend asked to slow down (rate limiting); trying again later may work.
    #[error("router {router}: throttled by the backend")]
    Throttled {
        /// The router's name.
        router: String,
    },
    /// Some routers of a [`crate::FanOut`] failed (the others succeeded).
    #[error("{} router(s) failed: {}", failures.len(), describe(failures))]
    Partial {
        /// Each failed router's name and error.
        failures: Vec<(String, RouterError)>,
    },
    /// A router or combinator was configured wrongly.
    #[error("router configuration: {message}")]
    Config {
        /// What is wrong.
        message: String,
    },
}

impl RouterError {
    /// Whether repeating the same call may succeed: the backend was
    /// unreachable or throttled us. A [`RouterError::Partial`] is retryable if
    /// any of its failures is, because `route` and `withdraw` are idempotent:
    /// calling the routers that already succeeded again changes nothing.
    pub fn is_retryable(&self) -> bool {
        match self {
            RouterError::Unreachable { .. } | RouterError::Throttled { .. } => true,
            RouterError::Rejected { .. } | RouterError::Config { .. } => false,
            RouterError::Partial { failures } => {
                failures.iter().any(|(_, error)| error.is_retryable())
            }
        }
    }
}

fn describe(failures: &[(String, RouterError)]) -> String {
    failures
        .iter()
        .map(|(_, error)| error.to_string())
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn throttled() -> RouterError {
        RouterError::Throttled {
            router: "dns".to_owned(),
        }
    }

    fn rejected() -> RouterError {
        RouterError::Rejected {
            router: "elb".to_owned(),
            message: "AccessDenied".to_owned(),
        }
    }

    /// A fan-out's failure where one router refused and another was throttled.
    fn elb_rejected_and_dns_throttled() -> RouterError {
        RouterError::Partial {
            failures: vec![
                ("elb".to_owned(), rejected()),
                ("dns".to_owned(), throttled()),
            ],
        }
    }

    #[test]
    fn transient_failures_are_retryable_and_refusals_are_not() {
        assert!(throttled().is_retryable());
        assert!(RouterError::Unreachable {
            router: "dns".to_owned(),
            message: "connection reset".to_owned()
        }
        .is_retryable());
        assert!(!rejected().is_retryable());
        assert!(!RouterError::Config {
            message: "no zone".to_owned()
        }
        .is_retryable());
    }

    #[test]
    fn partial_failure_is_retryable_while_any_failure_is() {
        assert!(elb_rejected_and_dns_throttled().is_retryable());
        let refused = RouterError::Partial {
            failures: vec![("elb".to_owned(), rejected())],
        };
        assert!(!refused.is_retryable());
    }

    #[test]
    fn partial_failure_message_names_every_failed_router() {
        assert_eq!(
            elb_rejected_and_dns_throttled().to_string(),
            "2 router(s) failed: router elb: change rejected: AccessDenied; router dns: throttled by the backend"
        );
    }
}
