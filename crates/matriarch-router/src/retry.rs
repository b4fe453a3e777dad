//! Retrying a router's transient failures.

use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;

use crate::error::RouterError;
use crate::router::{Endpoint, Router, Routes};

/// A [`Router`] layer that repeats a failed call, up to a number of attempts
/// with a fixed pause between them, while the error
/// [`is retryable`](RouterError::is_retryable). Any other error, or the last
/// attempt's error, is returned as it is.
///
/// Repeating is safe because `route` and `withdraw` are idempotent. Around a
/// [`crate::FanOut`] it repeats the call on every router, the ones that
/// succeeded included; wrap each router instead to retry only the failed ones.
#[derive(Clone, Debug)]
pub struct Retry<R> {
    inner: R,
    max_attempts: u32,
    backoff: Duration,
}

impl<R: Router> Retry<R> {
    /// Calls `inner` at most `max_attempts` times per call, `backoff` apart.
    /// [`RouterError::Config`] if `max_attempts` is 0.
    pub fn new(inner: R, max_attempts: u32, backoff: Duration) -> Result<Self, RouterError> {
        if max_attempts == 0 {
            return Err(RouterError::Config {
                message: format!(
                    "retry for router {}: max_attempts must be at least 1",
                    inner.name()
                ),
            });
        }
        Ok(Retry {
            inner,
            max_attempts,
            backoff,
        })
    }

    /// The wrapped router.
    pub fn inner(&self) -> &R {
        &self.inner
    }

    async fn retrying<'a, F, Fut>(&'a self, operation: &str, mut call: F) -> Result<(), RouterError>
    where
        F: FnMut() -> Fut + Send,
        Fut: Future<Output = Result<(), RouterError>> + Send + 'a,
    {
        let mut attempt = 1;
        loop {
            match call().await {
                Err(error) if error.is_retryable() && attempt < self.max_attempts => {
                    tracing::warn!(
                        router = self.inner.name(),
                        attempt,
                        max_attempts = self.max_attempts,
                        %error,
                        "{operation} failed, retrying in {:?}",
                        self.backoff
                    );
                    tokio::time::sleep(self.backoff).await;
                    attempt += 1;
                }
                result => return result,
            }
        }
    }
}

#[async_trait]
impl<R: Router> Router for Retry<R> {
    /// The wrapped router's name: errors and logs name the backend.
    fn name(&self) -> &str {
        self.inner.name()
    }

    async fn route(&self, routes: &Routes) -> Result<(), RouterError> {
        self.retrying("route", || self.inner.route(routes)).await
    }

    async fn withdraw(&self, member: &Endpoint) -> Result<(), RouterError> {
        self.retrying("withdraw", || self.inner.withdraw(member))
            .await
    }
}
