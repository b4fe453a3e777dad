//! Calls to etcd with a deadline: one client per endpoint (connected lazily),
//! failing over to the next endpoint on a transient error, retrying until the
//! deadline of the `Dcs` call.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use etcd_client::{Client, ConnectOptions, Error};
use matriarch_dcs::DcsError;
use tokio::sync::Mutex;
use tokio::time::Instant;
use tonic::Code;

pub(crate) const BACKEND: &str = "etcd";

/// The shortest time given to one attempt when there are several endpoints.
const MIN_ATTEMPT: Duration = Duration::from_millis(500);
/// The pause between attempts grows by this much, up to [`MAX_BACKOFF`].
const BACKOFF_STEP: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_millis(400);

/// Why a call to etcd did not succeed.
#[derive(Debug)]
pub(crate) enum CallError {
    /// No answer before the deadline (every endpoint failed or was too slow);
    /// already the [`DcsError`] to report.
    Unreachable(DcsError),
    /// etcd answered with an error that retrying will not fix.
    Rejected(Error),
}

impl CallError {
    /// Whether etcd said the lease is gone (expired or revoked).
    pub(crate) fn is_lease_not_found(&self) -> bool {
        match self {
            CallError::Rejected(e) => is_lease_not_found(e),
            CallError::Unreachable(_) => false,
        }
    }

    /// The error to report for `operation`.
    pub(crate) fn into_dcs(self, operation: &'static str) -> DcsError {
        match self {
            CallError::Unreachable(e) => e,
            CallError::Rejected(e) => DcsError::Backend {
                backend: BACKEND,
                message: format!("{operation}: {}", describe(&e)),
            },
        }
    }
}

impl From<CallError> for DcsError {
    fn from(e: CallError) -> Self {
        e.into_dcs("call")
    }
}

/// Whether etcd said a lease does not exist (a keep-alive of an expired lease,
/// or a put attached to one).
pub(crate) fn is_lease_not_found(e: &Error) -> bool {
    match e {
        Error::LeaseKeepAliveError(message) => message.contains("lease not found"),
        Error::GRpcStatus(status) => {
            status.code() == Code::NotFound && status.message().contains("lease not found")
        }
        _ => false,
    }
}

/// Whether another attempt (possibly on another endpoint) may succeed.
pub(crate) fn is_transient(e: &Error) -> bool {
    match e {
        Error::TransportError(_) | Error::IoError(_) | Error::WatchError(_) => true,
        Error::LeaseKeepAliveError(_) => !is_lease_not_found(e),
        Error::GRpcStatus(status) => matches!(
            status.code(),
            Code::Unavailable
                | Code::DeadlineExceeded
                | Code::Cancelled
                | Code::Unknown
                | Code::Aborted
                | Code::ResourceExhausted
        ),
        _ => false,
    }
}

/// An error as text for messages and logs, with its causes (tonic's
/// transport errors say little on their own). Never contains credentials:
/// etcd-client's errors do not carry them.
pub(crate) fn describe(e: &Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

struct Endpoint {
    url: String,
    client: Mutex<Option<Client>>,
}

/// The endpoints of one `EtcdDcs`, and which one calls go to.
pub(crate) struct Endpoints {
    endpoints: Vec<Endpoint>,
    current: AtomicUsize,
    options: ConnectOptions,
    retry_timeout: Duration,
    scope: String,
}

impl Endpoints {
    pub(crate) fn new(
        urls: Vec<String>,
        options: ConnectOptions,
        retry_timeout: Duration,
        scope: String,
    ) -> Self {
        let attempt = attempt_timeout(retry_timeout, urls.len());
        Endpoints {
            endpoints: urls
                .into_iter()
                .map(|url| Endpoint {
                    url,
                    client: Mutex::new(None),
                })
                .collect(),
            current: AtomicUsize::new(0),
            options: options.with_connect_timeout(attempt),
            retry_timeout,
            scope,
        }
    }

    /// The bound of one `Dcs` call.
    pub(crate) fn retry_timeout(&self) -> Duration {
        self.retry_timeout
    }

    /// The deadline of a `Dcs` call starting now.
    pub(crate) fn deadline(&self) -> Instant {
        Instant::now() + self.retry_timeout
    }

    /// How long one attempt may take.
    pub(crate) fn attempt_timeout(&self) -> Duration {
        attempt_timeout(self.retry_timeout, self.endpoints.len())
    }

    /// The endpoint calls currently go to, and its URL.
    pub(crate) fn current(&self) -> (usize, &str) {
        let index = self.current.load(Ordering::SeqCst) % self.endpoints.len();
        (index, &self.endpoints[index].url)
    }

    /// Moves calls away from `failed` (unless another caller already did).
    pub(crate) fn fail_over(&self, failed: usize) {
        let next = (failed + 1) % self.endpoints.len();
        let _ = self
            .current
            .compare_exchange(failed, next, Ordering::SeqCst, Ordering::SeqCst);
    }

    /// The client of endpoint `index`, connecting (and authenticating) if needed.
    pub(crate) async fn client(&self, index: usize) -> Result<Client, Error> {
        let endpoint = &self.endpoints[index];
        let mut slot = endpoint.client.lock().await;
        if let Some(client) = slot.as_ref() {
            return Ok(client.clone());
        }
        let client = Client::connect([endpoint.url.as_str()], Some(self.options.clone())).await?;
        *slot = Some(client.clone());
        Ok(client)
    }

    /// Runs `call` against the current endpoint until it succeeds, fails for
    /// good, or `deadline` passes; transient failures move to the next endpoint.
    pub(crate) async fn run<T, F, Fut>(
        &self,
        operation: &'static str,
        deadline: Instant,
        mut call: F,
    ) -> Result<T, CallError>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<T, Error>>,
    {
        let mut attempts = 0u32;
        let mut last_failure: Option<String> = None;
        let mut timed_out = false;
        loop {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            let budget = self.attempt_timeout().min(deadline - now);
            let (index, url) = self.current();
            let attempt = async {
                let client = self.client(index).await?;
                call(client).await
            };
            match tokio::time::timeout(budget, attempt).await {
                Ok(Ok(value)) => {
                    if attempts > 0 {
                        tracing::info!(
                            cluster = %self.scope,
                            operation,
                            endpoint = url,
                            attempts = attempts + 1,
                            "etcd answered again"
                        );
                    }
                    return Ok(value);
                }
                Ok(Err(e)) if is_transient(&e) => {
                    timed_out = false;
                    last_failure = Some(format!("{url}: {}", describe(&e)));
                }
                Ok(Err(e)) => return Err(CallError::Rejected(e)),
                Err(_) => {
                    timed_out = true;
                    last_failure = Some(format!("{url}: no answer within {budget:?}"));
                }
            }
            attempts += 1;
            tracing::debug!(
                cluster = %self.scope,
                operation,
                attempt = attempts,
                failure = last_failure.as_deref().unwrap_or_default(),
                "etcd call failed; trying again"
            );
            self.fail_over(index);
            let pause = (BACKOFF_STEP * attempts)
                .min(MAX_BACKOFF)
                .min(deadline.saturating_duration_since(Instant::now()));
            tokio::time::sleep(pause).await;
        }
        let failure = last_failure.unwrap_or_else(|| "no attempt fit in the time left".to_owned());
        tracing::warn!(
            cluster = %self.scope,
            operation,
            attempts,
            failure = %failure,
            "etcd did not answer in time"
        );
        Err(CallError::Unreachable(if timed_out {
            DcsError::Timeout {
                operation,
                after: self.retry_timeout,
            }
        } else {
            DcsError::Unreachable {
                backend: BACKEND,
                message: format!("{operation}: {failure}"),
            }
        }))
    }
}

/// With one endpoint an attempt may use the whole call; with several, half of
/// it, so that a hung endpoint leaves time to try another.
fn attempt_timeout(retry_timeout: Duration, endpoints: usize) -> Duration {
    if endpoints <= 1 {
        retry_timeout
    } else {
        (retry_timeout / 2).max(MIN_ATTEMPT).min(retry_timeout)
    }
}
