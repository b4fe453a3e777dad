//! One watch session on the scope, for [`matriarch_dcs::Dcs::watch`].

use etcd_client::WatchOptions;
use matriarch_dcs::WatchOutcome;
use tokio::time::Instant;

use super::{EtcdDcs, WatchFailure};
use crate::transport::describe;

impl EtcdDcs {
    /// One watch session on `index`'s endpoint, from `after_revision + 1`,
    /// until a change, `deadline`, or the stream fails.
    pub(super) async fn watch_once(
        &self,
        index: usize,
        after_revision: u64,
        deadline: Instant,
    ) -> Result<Option<WatchOutcome>, WatchFailure> {
        let start = i64::try_from(after_revision.saturating_add(1)).unwrap_or(i64::MAX);
        let attempt = self.endpoints.attempt_timeout();
        let setup_deadline = Instant::now() + attempt;
        let prefix = self.prefix.clone();
        let setup = async {
            let mut client = self.endpoints.client(index).await?;
            let options = WatchOptions::new().with_prefix().with_start_revision(start);
            client.watch(prefix, Some(options)).await
        };
        let mut stream = match tokio::time::timeout_at(setup_deadline.min(deadline), setup).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return Err(WatchFailure::setup(describe(&e))),
            Err(_) if Instant::now() >= deadline => return Ok(None),
            Err(_) => return Err(WatchFailure::setup(format!("no watch within {attempt:?}"))),
        };
        // etcd answers a progress request only while the stream works: ask
        // for one when it has been quiet, and give up on it when the answer
        // does not come (a hung member keeps its connections open).
        let probe_every = self.endpoints.retry_timeout() / 2;
        let mut last_heard = Instant::now();
        let mut probed = false;
        let mut established = false;
        let failed = |reason: String, established: bool| WatchFailure {
            reason,
            established,
        };
        loop {
            let wake = if probed {
                last_heard + self.endpoints.retry_timeout()
            } else {
                last_heard + probe_every
            };
            match tokio::time::timeout_at(wake.min(deadline), stream.message()).await {
                Ok(Ok(Some(response))) => {
                    last_heard = Instant::now();
                    probed = false;
                    established = established || response.created();
                    if response.compact_revision() > 0 {
                        tracing::info!(
                            cluster = %self.scope(),
                            after_revision,
                            compact_revision = response.compact_revision(),
                            "the watched revision was compacted; the caller re-reads"
                        );
                        return Ok(Some(WatchOutcome::Changed));
                    }
                    if !response.events().is_empty() {
                        return Ok(Some(WatchOutcome::Changed));
                    }
                    if response.canceled() {
                        let reason =
                            format!("etcd cancelled the watch: {}", response.cancel_reason());
                        return Err(failed(reason, established));
                    }
                }
                Ok(Ok(None)) => {
                    return Err(failed(
                        "etcd closed the watch stream".to_owned(),
                        established,
                    ))
                }
                Ok(Err(e)) => return Err(failed(describe(&e), established)),
                Err(_) if Instant::now() >= deadline => return Ok(None),
                Err(_) if probed => {
                    let reason = format!(
                        "no answer on the watch stream for {:?}",
                        self.endpoints.retry_timeout()
                    );
                    return Err(failed(reason, established));
                }
                Err(_) => {
                    probed = true;
                    if let Err(e) = stream.request_progress().await {
                        return Err(failed(describe(&e), established));
                    }
                }
            }
        }
    }
}
