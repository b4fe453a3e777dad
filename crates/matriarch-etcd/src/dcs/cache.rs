//! The scope cache: what one long-lived watch stream on the scope's prefix
//! has seen (Patroni's etcd3 `KVCache`), and whether that stream is
//! following etcd right now.
//!
//! The stream itself is driven by [`super::follow`]; readers and watchers
//! only look at the [`CacheState`] it publishes. The rules the client keeps
//! with it are on [`super::EtcdDcs`].

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use etcd_client::{Event, EventType, KeyValue};
use matriarch_model::{ClusterView, KeyLayout, RawEntry, Version};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// One key as the stream last saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct CachedKey {
    value: Vec<u8>,
    mod_revision: i64,
}

/// Whether the stream follows etcd.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Health {
    /// Synchronised and watching: every change to the scope up to
    /// [`CacheState::revision`] is in the cache, later ones arrive as events.
    Live,
    /// Not (or no longer) following etcd since `since`, for `reason`: the
    /// keys are never served and watchers cannot be told of changes.
    Lost { since: Instant, reason: String },
}

/// The scope's keys as the stream has seen them.
#[derive(Clone, Debug)]
pub(super) struct CacheState {
    /// Full etcd keys (under the scope's prefix) and what they hold.
    keys: BTreeMap<Vec<u8>, CachedKey>,
    /// The cache holds the scope exactly as it was at this revision: that of
    /// the range read it was synchronised from, or of the last event since.
    pub(super) revision: i64,
    /// The revision of the last change the cache took in (an event, or a
    /// resynchronisation that found the keys different).
    pub(super) last_change: i64,
    pub(super) health: Health,
    /// When the stream last said anything (an event, a progress answer).
    pub(super) heard_at: Instant,
}

impl CacheState {
    /// The cache's fingerprint: how many keys, and the highest mod revision.
    /// Equal to etcd's at revision `R` means equal content at `R` (a change
    /// since the cache's revision either puts a key, raising the highest mod
    /// revision, or only deletes keys, lowering the count).
    pub(super) fn fingerprint(&self) -> (usize, i64) {
        let top = self.keys.values().map(|key| key.mod_revision).max();
        (self.keys.len(), top.unwrap_or(0))
    }

    /// The view of the cached keys at `revision` (at least the cache's own).
    pub(super) fn view(&self, layout: &KeyLayout, revision: i64) -> ClusterView {
        let entries = self.keys.iter().filter_map(|(key, cached)| {
            let relative = std::str::from_utf8(key)
                .ok()
                .and_then(|key| layout.strip(key))?;
            Some(RawEntry {
                key: relative.to_owned(),
                value: cached.value.clone(),
                version: version(cached.mod_revision),
            })
        });
        ClusterView::decode(version(revision.max(self.revision)).0, entries)
    }
}

/// A revision as a [`Version`] (etcd's revisions are positive).
pub(super) fn version(revision: i64) -> Version {
    Version(u64::try_from(revision).unwrap_or(0))
}

/// How often the client asked etcd for what (see [`crate::ReadCounters`]).
#[derive(Debug, Default)]
pub(super) struct Counts {
    pub(super) watch_streams: AtomicU64,
    pub(super) full_reads: AtomicU64,
    pub(super) cached_reads: AtomicU64,
}

impl Counts {
    pub(super) fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// The cache of one client, shared with the task that follows the stream.
#[derive(Debug)]
pub(super) struct ScopeCache {
    state: watch::Sender<CacheState>,
    task: Mutex<Option<JoinHandle<()>>>,
    pub(super) counts: Counts,
}

impl ScopeCache {
    pub(super) fn new() -> Self {
        let now = Instant::now();
        let (state, _) = watch::channel(CacheState {
            keys: BTreeMap::new(),
            revision: 0,
            last_change: 0,
            health: Health::Lost {
                since: now,
                reason: "not synchronised yet".to_owned(),
            },
            heard_at: now,
        });
        ScopeCache {
            state,
            task: Mutex::new(None),
            counts: Counts::default(),
        }
    }

    /// Starts the following task with `start` unless it runs (it stops only
    /// when its runtime does, or [`Self::stop`]).
    pub(super) fn ensure_following(&self, start: impl FnOnce() -> JoinHandle<()>) {
        let mut task = self.task.lock().unwrap_or_else(|e| e.into_inner());
        if task.as_ref().is_some_and(|task| !task.is_finished()) {
            return;
        }
        if task.is_some() {
            self.lost("the task that followed the stream stopped".to_owned());
        }
        *task = Some(start());
    }

    /// Stops the following task (the client is dropped).
    pub(super) fn stop(&self) {
        if let Some(task) = self.task.lock().unwrap_or_else(|e| e.into_inner()).take() {
            task.abort();
        }
    }

    /// A receiver that has seen the current state.
    pub(super) fn subscribe(&self) -> watch::Receiver<CacheState> {
        self.state.subscribe()
    }

    /// The stream stopped following etcd.
    pub(super) fn lost(&self, reason: String) {
        self.state.send_modify(|state| match &mut state.health {
            Health::Live => {
                state.health = Health::Lost {
                    since: Instant::now(),
                    reason,
                }
            }
            Health::Lost { reason: old, .. } => *old = reason,
        });
    }

    /// The cache now holds `kvs`, read at `revision`, and a stream follows
    /// from there. A first synchronisation, or one that finds other keys
    /// than the cache held, counts as a change at `revision` (a delete
    /// missed while the stream was down leaves no other trace).
    pub(super) fn synchronised(&self, revision: i64, kvs: Vec<KeyValue>) {
        let keys: BTreeMap<Vec<u8>, CachedKey> = kvs
            .into_iter()
            .map(|kv| {
                let cached = CachedKey {
                    value: kv.value().to_vec(),
                    mod_revision: kv.mod_revision(),
                };
                (kv.key().to_vec(), cached)
            })
            .collect();
        self.state.send_modify(|state| {
            if state.revision == 0 || state.keys != keys {
                state.last_change = revision;
            }
            state.keys = keys;
            state.revision = state.revision.max(revision);
            state.health = Health::Live;
            state.heard_at = Instant::now();
        });
    }

    /// The revision the cache holds the scope at, once synchronised.
    pub(super) fn revision(&self) -> Option<i64> {
        Some(self.state.borrow().revision).filter(|revision| *revision > 0)
    }

    /// A stream follows again from the cache's revision: the events since
    /// arrive first (until then reads are checked against etcd as always).
    pub(super) fn resumed(&self) {
        self.state.send_modify(|state| {
            state.health = Health::Live;
            state.heard_at = Instant::now();
        });
    }

    /// The stream said something: `events` (possibly none: a progress answer).
    pub(super) fn heard(&self, events: &[Event]) {
        self.state.send_modify(|state| {
            state.heard_at = Instant::now();
            for event in events {
                let Some(kv) = event.kv() else { continue };
                let revision = kv.mod_revision();
                match event.event_type() {
                    EventType::Put => {
                        let cached = CachedKey {
                            value: kv.value().to_vec(),
                            mod_revision: revision,
                        };
                        state.keys.insert(kv.key().to_vec(), cached);
                    }
                    EventType::Delete => {
                        state.keys.remove(kv.key());
                    }
                }
                state.revision = state.revision.max(revision);
                state.last_change = state.last_change.max(revision);
            }
        });
    }
}

/// How long a live stream may stay silent before the cache is no longer
/// believed: the follower asks for progress after `retry_timeout / 2` of
/// quiet and gives up on an answer after one attempt's time, so a longer
/// silence means the follower itself is stuck.
pub(super) fn silence_limit(retry_timeout: Duration, attempt_timeout: Duration) -> Duration {
    retry_timeout + attempt_timeout
}
