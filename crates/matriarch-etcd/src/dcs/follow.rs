//! The task that keeps one watch stream on the scope's prefix open and feeds
//! the [`ScopeCache`] from it: synchronise (a range read, then a watch from
//! the next revision), follow (apply events, confirm liveness with progress
//! requests), and synchronise again on another endpoint when the stream
//! breaks, is cancelled or compacted, or stops answering.

use std::sync::Arc;
use std::time::Duration;

use etcd_client::{GetOptions, WatchOptions, WatchStream};
use tokio::time::Instant;

use super::cache::{Counts, ScopeCache};
use crate::transport::{describe, Endpoints};

/// The pause between failed synchronisations grows by this much, up to
/// [`MAX_BACKOFF`].
const BACKOFF_STEP: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_millis(400);

/// What the following task needs.
pub(super) struct Follower {
    pub(super) endpoints: Arc<Endpoints>,
    pub(super) cache: Arc<ScopeCache>,
    pub(super) prefix: String,
    pub(super) scope: String,
}

impl Follower {
    /// Follows the scope until the task is aborted.
    pub(super) async fn run(self) {
        let mut failures = 0u32;
        loop {
            let (index, url) = self.endpoints.current();
            let url = url.to_owned();
            let reason = match self.synchronise(index).await {
                Ok(stream) => {
                    failures = 0;
                    self.follow(stream).await
                }
                Err(reason) => {
                    failures += 1;
                    reason
                }
            };
            tracing::debug!(
                cluster = %self.scope,
                endpoint = %url,
                reason = %reason,
                "the scope's watch stream stopped; synchronising again"
            );
            self.cache.lost(format!("{url}: {reason}"));
            self.endpoints.fail_over(index);
            if failures > 0 {
                tokio::time::sleep((BACKOFF_STEP * failures).min(MAX_BACKOFF)).await;
            }
        }
    }

    /// Reads the scope and opens a watch from the next revision on endpoint
    /// `index`, within one attempt's time; the cache holds the read.
    async fn synchronise(&self, index: usize) -> Result<WatchStream, String> {
        let attempt = self.endpoints.attempt_timeout();
        let work = async {
            let mut client = self
                .endpoints
                .client(index)
                .await
                .map_err(|e| describe(&e))?;
            Counts::add(&self.cache.counts.full_reads);
            let mut read = client
                .get(self.prefix.clone(), Some(GetOptions::new().with_prefix()))
                .await
                .map_err(|e| describe(&e))?;
            let revision = read
                .header()
                .map(|header| header.revision())
                .ok_or("etcd answered without a response header")?;
            let options = WatchOptions::new()
                .with_prefix()
                .with_start_revision(revision.saturating_add(1));
            Counts::add(&self.cache.counts.watch_streams);
            let mut stream = client
                .watch(self.prefix.clone(), Some(options))
                .await
                .map_err(|e| describe(&e))?;
            // etcd confirms the watch before anything else.
            match stream.message().await {
                Ok(Some(response)) if response.created() && !response.canceled() => {}
                Ok(Some(response)) => {
                    return Err(format!(
                        "etcd refused the watch: {}",
                        response.cancel_reason()
                    ))
                }
                Ok(None) => return Err("etcd closed the watch stream".to_owned()),
                Err(e) => return Err(describe(&e)),
            }
            Ok((stream, revision, read.take_kvs()))
        };
        let (stream, revision, kvs) = tokio::time::timeout(attempt, work)
            .await
            .map_err(|_| format!("no watch within {attempt:?}"))??;
        self.cache.synchronised(revision, kvs);
        Ok(stream)
    }

    /// Feeds the cache from `stream` until it fails; returns why.
    async fn follow(&self, stream: WatchStream) -> String {
        let (mut requests, mut responses) = stream.split();
        // etcd answers a progress request only while the stream works: ask
        // when it has been quiet, and give up when the answer does not come
        // (a hung member keeps its connections open).
        let quiet = self.endpoints.retry_timeout() / 2;
        let answer_within = self.endpoints.attempt_timeout();
        let mut asked: Option<Instant> = None;
        let mut heard = Instant::now();
        loop {
            let wake = match asked {
                Some(asked) => asked + answer_within,
                None => heard + quiet,
            };
            tokio::select! {
                message = responses.message() => match message {
                    Ok(Some(response)) => {
                        heard = Instant::now();
                        asked = None;
                        if response.compact_revision() > 0 {
                            return format!(
                                "etcd compacted the watched revisions (up to {})",
                                response.compact_revision()
                            );
                        }
                        if response.canceled() {
                            return format!("etcd cancelled the watch: {}", response.cancel_reason());
                        }
                        self.cache.heard(response.events());
                    }
                    Ok(None) => return "etcd closed the watch stream".to_owned(),
                    Err(e) => return describe(&e),
                },
                () = tokio::time::sleep_until(wake) => {
                    if asked.is_some() {
                        return format!("no answer on the watch stream for {answer_within:?}");
                    }
                    if let Err(e) = requests.request_progress().await {
                        return describe(&e);
                    }
                    asked = Some(Instant::now());
                }
            }
        }
    }
}
