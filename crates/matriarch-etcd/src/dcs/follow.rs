//! The task that keeps one watch stream on the scope's prefix open and feeds
//! the [`ScopeCache`] from it: synchronise (a range read, then a watch from
//! the next revision), follow (apply events, confirm liveness with progress
//! requests), and when the stream breaks, is cancelled or stops answering,
//! resume on the next endpoint from the cache's revision (a compaction past
//! it means a range read again).

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

/// Why a stream stopped.
struct Stop {
    reason: String,
    /// etcd compacted the revisions the watch was to start from: the cache
    /// must be read again, not resumed.
    compacted: bool,
}

impl Stop {
    fn failed(reason: String) -> Self {
        Stop {
            reason,
            compacted: false,
        }
    }
}

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
        // After a compaction the cache's revision cannot be watched from.
        let mut resumable = true;
        loop {
            let (index, url) = self.endpoints.current();
            let url = url.to_owned();
            let resume_after = self.cache.revision().filter(|_| resumable);
            let stop = match self.synchronise(index, resume_after).await {
                Ok(stream) => {
                    failures = 0;
                    self.follow(stream).await
                }
                Err(reason) => {
                    failures += 1;
                    Stop {
                        reason,
                        compacted: false,
                    }
                }
            };
            resumable = !stop.compacted;
            tracing::debug!(
                cluster = %self.scope,
                endpoint = %url,
                reason = %stop.reason,
                "the scope's watch stream stopped; synchronising again"
            );
            self.cache.lost(format!("{url}: {}", stop.reason));
            if !stop.compacted {
                self.endpoints.fail_over(index);
            }
            if failures > 0 {
                tokio::time::sleep((BACKOFF_STEP * failures).min(MAX_BACKOFF)).await;
            }
        }
    }

    /// Opens a watch on endpoint `index` within one attempt's time: from the
    /// revision after `resume_after` (the cache's, which then catches up on
    /// the events since: no read, and no etcd leader needed, so a stream
    /// comes back during an etcd election), or else after a range read of
    /// the scope that the cache then holds.
    async fn synchronise(
        &self,
        index: usize,
        resume_after: Option<i64>,
    ) -> Result<WatchStream, String> {
        let attempt = self.endpoints.attempt_timeout();
        let work = async {
            let mut client = self
                .endpoints
                .client(index)
                .await
                .map_err(|e| describe(&e))?;
            let read = match resume_after {
                Some(revision) => (revision, None),
                None => {
                    Counts::add(&self.cache.counts.full_reads);
                    let mut read = client
                        .get(self.prefix.clone(), Some(GetOptions::new().with_prefix()))
                        .await
                        .map_err(|e| describe(&e))?;
                    let revision = read
                        .header()
                        .map(|header| header.revision())
                        .ok_or("etcd answered without a response header")?;
                    (revision, Some(read.take_kvs()))
                }
            };
            let options = WatchOptions::new()
                .with_prefix()
                .with_start_revision(read.0.saturating_add(1));
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
            Ok((stream, read))
        };
        let (stream, (revision, kvs)) = tokio::time::timeout(attempt, work)
            .await
            .map_err(|_| format!("no watch within {attempt:?}"))??;
        match kvs {
            Some(kvs) => self.cache.synchronised(revision, kvs),
            None => self.cache.resumed(),
        }
        Ok(stream)
    }

    /// Feeds the cache from `stream` until it fails; returns why.
    async fn follow(&self, stream: WatchStream) -> Stop {
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
                            return Stop {
                                reason: format!(
                                    "etcd compacted the watched revisions (up to {})",
                                    response.compact_revision()
                                ),
                                compacted: true,
                            };
                        }
                        if response.canceled() {
                            return Stop::failed(format!("etcd cancelled the watch: {}", response.cancel_reason()));
                        }
                        self.cache.heard(response.events());
                    }
                    Ok(None) => return Stop::failed("etcd closed the watch stream".to_owned()),
                    Err(e) => return Stop::failed(describe(&e)),
                },
                () = tokio::time::sleep_until(wake) => {
                    if asked.is_some() {
                        return Stop::failed(format!("no answer on the watch stream for {answer_within:?}"));
                    }
                    if let Err(e) = requests.request_progress().await {
                        return Stop::failed(describe(&e));
                    }
                    asked = Some(Instant::now());
                }
            }
        }
    }
}
