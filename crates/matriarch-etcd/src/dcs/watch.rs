//! [`matriarch_dcs::Dcs::read_view`] and [`matriarch_dcs::Dcs::watch`] on
//! the scope cache, and the full range read they fall back to.

use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, GetOptions, SortOrder, SortTarget};
use matriarch_dcs::{DcsError, WatchOutcome};
use matriarch_model::{ClusterView, RawEntry};
use tokio::time::Instant;

use super::cache::{silence_limit, version, Counts, Health};
use super::follow::Follower;
use super::EtcdDcs;
use crate::transport::BACKEND;

/// What etcd says the scope is at one revision, cheaply: how many keys and
/// the highest mod revision (a keys-only range read of one key).
struct Fingerprint {
    revision: i64,
    keys: usize,
    top_mod_revision: i64,
}

impl EtcdDcs {
    /// Starts the task that follows the scope, unless it runs.
    fn follow_scope(&self) {
        self.cache.ensure_following(|| {
            let follower = Follower {
                endpoints: Arc::clone(&self.endpoints),
                cache: Arc::clone(&self.cache),
                prefix: self.prefix.clone(),
                scope: self.scope().to_owned(),
            };
            tokio::spawn(follower.run())
        });
    }

    /// The view: from the cache when it is live and as current as etcd (see
    /// [`EtcdDcs`]), else read in full.
    pub(super) async fn view(&self) -> Result<ClusterView, DcsError> {
        let deadline = self.endpoints.deadline();
        self.follow_scope();
        let live = matches!(self.cache.subscribe().borrow().health, Health::Live);
        let view = if live {
            let fingerprint = self.fingerprint(deadline).await?;
            // Events already sent may still be on their way: wait a little.
            let catch_up = (self.endpoints.attempt_timeout() / 4).min(Duration::from_millis(500));
            self.cached_view(&fingerprint, deadline.min(Instant::now() + catch_up))
                .await
        } else {
            None
        };
        let view = match view {
            Some(view) => {
                Counts::add(&self.cache.counts.cached_reads);
                view
            }
            None => {
                Counts::add(&self.cache.counts.full_reads);
                self.read_range(deadline).await?
            }
        };
        // Debug only: every read would repeat it; the engine reports what it
        // ignores (the config key once per change).
        for error in view.errors() {
            tracing::debug!(cluster = %self.scope(), key = %error.key, reason = %error.reason, "malformed value in etcd");
        }
        Ok(view)
    }

    /// The cache's view once it holds what etcd held at `etcd.revision`
    /// (it reached that revision, or its keys match etcd's fingerprint),
    /// while it is live; `None` if that does not happen by `until`.
    async fn cached_view(&self, etcd: &Fingerprint, until: Instant) -> Option<ClusterView> {
        let mut states = self.cache.subscribe();
        loop {
            {
                let state = states.borrow_and_update();
                if state.health != Health::Live {
                    return None;
                }
                let matches = state.revision >= etcd.revision
                    || state.fingerprint() == (etcd.keys, etcd.top_mod_revision);
                if matches {
                    return Some(state.view(&self.layout, etcd.revision));
                }
            }
            match tokio::time::timeout_at(until, states.changed()).await {
                Ok(Ok(())) => {}
                _ => return None,
            }
        }
    }

    /// etcd's fingerprint of the scope: a linearizable keys-only read of the
    /// key changed last, with the count of keys.
    async fn fingerprint(&self, deadline: Instant) -> Result<Fingerprint, DcsError> {
        let prefix = self.prefix.clone();
        let response = self
            .endpoints
            .run("read_view", deadline, move |mut client: Client| {
                let prefix = prefix.clone();
                async move {
                    let options = GetOptions::new()
                        .with_prefix()
                        .with_keys_only()
                        .with_sort(SortTarget::Mod, SortOrder::Descend)
                        .with_limit(1);
                    client.get(prefix, Some(options)).await
                }
            })
            .await
            .map_err(|e| e.into_dcs("read_view"))?;
        Ok(Fingerprint {
            revision: response_revision(response.header())?,
            keys: usize::try_from(response.count()).unwrap_or(usize::MAX),
            top_mod_revision: response.kvs().first().map_or(0, |kv| kv.mod_revision()),
        })
    }

    /// Every key under the scope in one range read, by `deadline`.
    async fn read_range(&self, deadline: Instant) -> Result<ClusterView, DcsError> {
        let prefix = self.prefix.clone();
        let mut response = self
            .endpoints
            .run("read_view", deadline, move |mut client: Client| {
                let prefix = prefix.clone();
                async move {
                    client
                        .get(prefix, Some(GetOptions::new().with_prefix()))
                        .await
                }
            })
            .await
            .map_err(|e| e.into_dcs("read_view"))?;
        let revision = response_revision(response.header())?;
        let mut entries = Vec::new();
        for kv in response.take_kvs() {
            let relative = std::str::from_utf8(kv.key())
                .ok()
                .and_then(|key| self.layout.strip(key));
            let Some(relative) = relative else {
                tracing::warn!(
                    cluster = %self.scope(),
                    key = %String::from_utf8_lossy(kv.key()),
                    "ignoring a key under the scope that is not UTF-8"
                );
                continue;
            };
            entries.push(RawEntry {
                key: relative.to_owned(),
                value: kv.value().to_vec(),
                version: version(kv.mod_revision()),
            });
        }
        Ok(ClusterView::decode(version(revision).0, entries))
    }

    /// Waits on the cache for a change after `after_revision` (see
    /// [`EtcdDcs`]).
    pub(super) async fn wait_for_change(
        &self,
        after_revision: u64,
        timeout: Duration,
    ) -> Result<WatchOutcome, DcsError> {
        let started = Instant::now();
        let deadline = started + timeout;
        let after = i64::try_from(after_revision).unwrap_or(i64::MAX);
        let retry = self.endpoints.retry_timeout();
        let silence = silence_limit(retry, self.endpoints.attempt_timeout());
        self.follow_scope();
        let mut states = self.cache.subscribe();
        loop {
            let now = Instant::now();
            // Since when the cache has not followed etcd (counted from this
            // call's start at the earliest), and why.
            let lost = {
                let state = states.borrow_and_update();
                match &state.health {
                    Health::Live if state.last_change > after => return Ok(WatchOutcome::Changed),
                    Health::Live if now.duration_since(state.heard_at) > silence => Some((
                        state.heard_at,
                        format!("the watch stream has been silent for {silence:?}"),
                    )),
                    Health::Live => None,
                    Health::Lost { since, reason } => Some((*since, reason.clone())),
                }
            };
            let wake = match lost {
                None if now >= deadline => return Ok(WatchOutcome::TimedOut),
                // Check the silence again while waiting.
                None => deadline.min(now + retry),
                Some((since, reason)) => {
                    let failing_until = since.max(started) + retry;
                    if now >= failing_until {
                        tracing::warn!(cluster = %self.scope(), reason = %reason, "etcd watch could not be established");
                        return Err(DcsError::Unreachable {
                            backend: BACKEND,
                            message: format!("watch: {reason}"),
                        });
                    }
                    if now >= deadline {
                        // A change may have been missed: say so; the caller
                        // reads again (from etcd: the cache is not live).
                        return Ok(WatchOutcome::Changed);
                    }
                    deadline.min(failing_until)
                }
            };
            match tokio::time::timeout_at(wake, states.changed()).await {
                Ok(Ok(())) | Err(_) => {}
                // The sender lives as long as this client; never reached.
                Ok(Err(_)) => tokio::time::sleep_until(wake).await,
            }
        }
    }
}

fn response_revision(header: Option<&etcd_client::ResponseHeader>) -> Result<i64, DcsError> {
    header
        .map(etcd_client::ResponseHeader::revision)
        .ok_or_else(|| DcsError::Backend {
            backend: BACKEND,
            message: "read_view: etcd answered without a response header".to_owned(),
        })
}
