//! [`EtcdDcs`]: the [`Dcs`] trait on etcd's v3 API.

mod cache;
mod follow;
mod lease;
mod watch;

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Client, Compare, CompareOp, DeleteOptions, KeyValue, PutOptions, Txn, TxnOp, TxnOpResponse,
    TxnResponse,
};
use matriarch_dcs::{is_record_key, Dcs, DcsError, Expected, WatchOutcome};
use matriarch_model::{
    decode_leader, encode_initialize, encode_leader, encode_member, ClusterView, DcsKey,
    Initialize, KeyLayout, LeaderLock, Member, MemberName, Record, SystemId, Version,
};
use tokio::sync::Mutex;
use tokio::time::Instant;

use self::cache::{version, ScopeCache};
use crate::config::{EtcdConfig, EtcdConfigError};
use crate::transport::{CallError, Endpoints, BACKEND};

/// The lease this client attaches its TTL-bound keys to.
#[derive(Debug, Clone, Copy)]
struct Lease {
    id: i64,
    /// The TTL it was asked for, in whole seconds.
    ttl_secs: i64,
    /// The TTL etcd granted (it may raise a short one to its minimum, or
    /// cap a long one): how long the lease lives after each keep-alive.
    granted_secs: i64,
    /// Whether the leader key is attached to it: then only
    /// [`Dcs::renew_leader`] (and [`Dcs::acquire_leader`]) keep it alive, so
    /// that publishing the member record never extends an unrenewed lock.
    carries_lock: bool,
}

#[derive(Debug, Default)]
struct LeaseState {
    lease: Option<Lease>,
}

/// A [`Dcs`] client on etcd (v3 API), for one cluster scope.
///
/// Keys follow `docs/dcs-layout.md`. The client owns one lease, granted with
/// the TTL of the calls that need one (whole seconds, rounded up): the
/// leader key and this member's key are attached to it. Keep-alives of that
/// lease, not puts, keep both keys alive, and an unchanged member record is
/// not written again, so an idle member makes no etcd revision (Patroni's
/// behaviour). Every call is bounded
/// by [`EtcdConfig::retry_timeout`]: within it, failed or slow attempts are
/// retried on the next endpoint; past it the call fails with
/// [`DcsError::Timeout`] or [`DcsError::Unreachable`].
///
/// Nothing is sent to etcd until the first call: a client can be made while
/// etcd is down.
///
/// # The scope cache
///
/// Like Patroni's etcd3 backend, the client keeps one watch stream on the
/// scope's prefix open across calls (from the first [`Dcs::read_view`] or
/// [`Dcs::watch`] until the client is dropped), and a cache of the scope's
/// keys fed by it: a range read, then a watch from the next revision, then
/// every event. [`Dcs::watch`] waits on the cache and opens nothing;
/// [`Dcs::read_view`] answers from the cache after one light linearizable
/// read (a keys-only read of the key changed last, with the count of keys),
/// instead of a full range read and a new watch per engine loop. The rules:
///
/// * **Reads are as current as a range read.** A view comes from the cache
///   only if the stream is live and the cache holds what etcd held at the
///   light read's revision: it reached that revision, or it has the same
///   number of keys and the same highest mod revision (any change since the
///   cache's revision would put a key, raising it, or only delete keys,
///   lowering the count). Events already on their way are waited for
///   briefly; otherwise the view is read in full. So a read after this
///   client's own successful write sees that write, and a read after another
///   client's write completed sees it too. (etcd 3.4's progress answers are
///   not ordered with the events, etcd issue 15220, so they prove the stream
///   alive but not the cache current.)
/// * **No lost wake-ups.** The cache is exactly the scope at its revision,
///   and every change after it arrives as an event, so a change after
///   `after_revision` makes [`Dcs::watch`] return `Changed` as soon as its
///   event is in. A resynchronisation that finds other keys than the cache
///   held counts as a change.
/// * **A silent or broken stream is never trusted.** The stream is asked for
///   progress after `retry_timeout / 2` of quiet and given up after one
///   attempt's time without an answer (a hung member keeps connections open);
///   a stream that breaks, is cancelled, or goes silent is opened again on
///   the next endpoint from the cache's revision (etcd replays the events
///   since; no read and no etcd leader needed, so the stream comes back
///   during an etcd election), or after a new range read when etcd has
///   compacted that revision away. Meanwhile reads come from etcd, and a
///   watch reports
///   [`DcsError::Unreachable`] once no stream has worked for `retry_timeout`
///   within the call (or `Changed` at its timeout before that, since it
///   cannot tell).
/// * **Lease expiry is an event.** etcd deletes the keys of an expired lease
///   with delete events: the stream carries another member's lost lock to
///   the cache, and wakes watchers, like any change.
pub struct EtcdDcs {
    layout: KeyLayout,
    prefix: String,
    endpoints: Arc<Endpoints>,
    lease: Mutex<LeaseState>,
    /// The granted TTL of the lease the lock was last taken or renewed on.
    lock_lifetime: std::sync::Mutex<Option<Duration>>,
    cache: Arc<ScopeCache>,
}

/// How an [`EtcdDcs`] read its scope so far (for benchmarks and
/// diagnostics): what [`Dcs::read_view`] and [`Dcs::watch`] cost etcd.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReadCounters {
    /// Watch streams opened: one per synchronisation of the scope cache, not
    /// one per [`Dcs::watch`].
    pub watch_streams: u64,
    /// Full range reads of the scope: the cache's synchronisations and the
    /// reads that could not be answered from the cache.
    pub full_reads: u64,
    /// Views answered from the cache (after a keys-only read of one key).
    pub cached_reads: u64,
}

impl Drop for EtcdDcs {
    fn drop(&mut self) {
        self.cache.stop();
    }
}

impl std::fmt::Debug for EtcdDcs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The connect options hold the password: leave them out.
        f.debug_struct("EtcdDcs")
            .field("layout", &self.layout)
            .field("endpoint", &self.endpoints.current().1)
            .field("retry_timeout", &self.endpoints.retry_timeout())
            .finish_non_exhaustive()
    }
}

/// etcd's lease TTLs are whole seconds: round up, at least one.
pub(crate) fn ttl_secs(ttl: Duration) -> i64 {
    let secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
    i64::try_from(secs.max(1)).unwrap_or(i64::MAX)
}

/// The key-values of the first range (get) response of a transaction branch.
fn first_get(response: &TxnResponse) -> Option<KeyValue> {
    response.op_responses().into_iter().find_map(|op| match op {
        TxnOpResponse::Get(get) => get.kvs().first().cloned(),
        _ => None,
    })
}

fn header_revision(response: &TxnResponse) -> Result<i64, DcsError> {
    response
        .header()
        .map(|header| header.revision())
        .ok_or_else(|| DcsError::Backend {
            backend: BACKEND,
            message: "etcd answered without a response header".to_owned(),
        })
}

fn holder_of(kv: Option<&KeyValue>) -> Option<MemberName> {
    kv.and_then(|kv| decode_leader(kv.value()).ok())
        .map(|lock| lock.holder)
}

impl EtcdDcs {
    /// A client for `config`'s scope. Checks the configuration and reads the
    /// certificate files; connects on the first call.
    pub fn new(config: &EtcdConfig) -> Result<Self, EtcdConfigError> {
        let validated = config.validate()?;
        let prefix = validated.layout.prefix();
        Ok(EtcdDcs {
            endpoints: Arc::new(Endpoints::new(
                validated.endpoints,
                validated.options,
                config.retry_timeout,
                validated.layout.scope().to_owned(),
            )),
            layout: validated.layout,
            prefix,
            lease: Mutex::new(LeaseState::default()),
            lock_lifetime: std::sync::Mutex::new(None),
            cache: Arc::new(ScopeCache::new()),
        })
    }

    /// How this client has read its scope so far.
    pub fn read_counters(&self) -> ReadCounters {
        let counts = &self.cache.counts;
        ReadCounters {
            watch_streams: counts.watch_streams.load(Ordering::Relaxed),
            full_reads: counts.full_reads.load(Ordering::Relaxed),
            cached_reads: counts.cached_reads.load(Ordering::Relaxed),
        }
    }

    /// The id of the lease this client's TTL-bound keys are attached to, if it
    /// has one (for diagnostics and tests).
    pub async fn lease_id(&self) -> Option<i64> {
        self.lease.lock().await.lease.map(|lease| lease.id)
    }

    fn scope(&self) -> &str {
        self.layout.scope()
    }

    /// Records the lifetime of the lock just taken or renewed on the
    /// current lease: the TTL etcd granted it.
    fn note_lock_lifetime(&self, state: &LeaseState) {
        let lifetime = state
            .lease
            .map(|lease| Duration::from_secs(u64::try_from(lease.granted_secs).unwrap_or(0)));
        *self
            .lock_lifetime
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = lifetime;
    }

    fn path(&self, key: &DcsKey) -> String {
        self.layout.path(key)
    }

    /// Runs `call` on `path` (a key, or the scope's prefix) within this
    /// call's time bound, its failure as a [`DcsError`].
    async fn on_path<T, F, Fut>(
        &self,
        operation: &'static str,
        path: String,
        call: F,
    ) -> Result<T, DcsError>
    where
        F: Fn(Client, String) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        self.endpoints
            .run(operation, self.endpoints.deadline(), |client| {
                call(client, path.clone())
            })
            .await
            .map_err(|e| e.into_dcs(operation))
    }

    async fn txn(
        &self,
        operation: &'static str,
        deadline: Instant,
        txn: Txn,
    ) -> Result<TxnResponse, CallError> {
        self.endpoints
            .run(operation, deadline, move |mut client: Client| {
                let txn = txn.clone();
                async move { client.txn(txn).await }
            })
            .await
    }

    /// [`Self::txn`] within this call's own time bound, its failure as a
    /// [`DcsError`].
    async fn bounded_txn(
        &self,
        operation: &'static str,
        txn: Txn,
    ) -> Result<TxnResponse, DcsError> {
        self.txn(operation, self.endpoints.deadline(), txn)
            .await
            .map_err(|e| e.into_dcs(operation))
    }

    fn lock_not_held(
        &self,
        state: &mut LeaseState,
        me: &MemberName,
        kv: Option<&KeyValue>,
    ) -> DcsError {
        if let Some(lease) = state.lease.as_mut() {
            lease.carries_lock = false;
        }
        DcsError::LockNotHeld {
            member: me.clone(),
            holder: holder_of(kv),
        }
    }

    /// Checks a record write or delete's condition for the failure branch.
    fn conflict(key: &DcsKey, expected: Expected, kv: Option<&KeyValue>) -> DcsError {
        DcsError::Conflict {
            key: key.relative_path(),
            expected,
            found: kv.map(|kv| version(kv.mod_revision())),
        }
    }

    fn conditions(path: &str, expected: Expected) -> Vec<Compare> {
        match expected {
            Expected::Any => Vec::new(),
            Expected::Absent => vec![Compare::create_revision(path, CompareOp::Equal, 0)],
            Expected::Version(Version(v)) => vec![
                Compare::create_revision(path, CompareOp::Greater, 0),
                Compare::mod_revision(path, CompareOp::Equal, i64::try_from(v).unwrap_or(i64::MAX)),
            ],
        }
    }
}

#[async_trait]
impl Dcs for EtcdDcs {
    fn layout(&self) -> &KeyLayout {
        &self.layout
    }

    async fn read_view(&self) -> Result<ClusterView, DcsError> {
        self.view().await
    }

    async fn try_initialize(&self) -> Result<bool, DcsError> {
        let path = self.path(&DcsKey::Initialize);
        let txn = Txn::new()
            .when([Compare::create_revision(path.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                path,
                encode_initialize(&Initialize::InProgress),
                None,
            )]);
        let response = self.bounded_txn("try_initialize", txn).await?;
        if response.succeeded() {
            tracing::info!(cluster = %self.scope(), "won the initialize race");
        }
        Ok(response.succeeded())
    }

    async fn complete_initialize(&self, system_id: SystemId) -> Result<(), DcsError> {
        let path = self.path(&DcsKey::Initialize);
        let txn = while_in_progress(&path)
            .and_then([TxnOp::put(
                path.clone(),
                encode_initialize(&Initialize::Done(system_id)),
                None,
            )])
            .or_else([TxnOp::get(path, None)]);
        let response = self.bounded_txn("complete_initialize", txn).await?;
        if response.succeeded() {
            tracing::info!(cluster = %self.scope(), %system_id, "recorded the system identifier");
            Ok(())
        } else {
            Err(Self::conflict(
                &DcsKey::Initialize,
                Expected::Any,
                first_get(&response).as_ref(),
            ))
        }
    }

    async fn cancel_initialize(&self) -> Result<(), DcsError> {
        let path = self.path(&DcsKey::Initialize);
        let txn = while_in_progress(&path).and_then([TxnOp::delete(path, None)]);
        let response = self.bounded_txn("cancel_initialize", txn).await?;
        if response.succeeded() {
            tracing::info!(cluster = %self.scope(), "cancelled the initialize race");
        }
        Ok(())
    }

    async fn acquire_leader(&self, me: &MemberName, ttl: Duration) -> Result<bool, DcsError> {
        let deadline = self.endpoints.deadline();
        let mut state = self.lease.lock().await;
        let path = self.path(&DcsKey::Leader);
        let value = encode_leader(&LeaderLock { holder: me.clone() });
        let mut response = None;
        for _ in 0..2 {
            // A fresh TTL for the lock: refresh the lease before attaching it.
            let lease = self
                .live_lease(&mut state, ttl_secs(ttl), true, deadline)
                .await?;
            let txn = Txn::new()
                .when([Compare::create_revision(path.clone(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(
                    path.clone(),
                    value.clone(),
                    Some(PutOptions::new().with_lease(lease.id)),
                )])
                .or_else([TxnOp::get(path.clone(), None)]);
            match self.txn("acquire_leader", deadline, txn).await {
                Ok(answer) => {
                    response = Some(answer);
                    break;
                }
                Err(e) if e.is_lease_not_found() => state.lease = None,
                Err(e) => return Err(e.into_dcs("acquire_leader")),
            }
        }
        let Some(response) = response else {
            return Err(DcsError::Backend {
                backend: BACKEND,
                message: "acquire_leader: etcd dropped every lease granted for it".to_owned(),
            });
        };
        if response.succeeded() {
            if let Some(lease) = state.lease.as_mut() {
                lease.carries_lock = true;
            }
            self.note_lock_lifetime(&state);
            tracing::info!(cluster = %self.scope(), member = %me, "acquired the leader lock");
            return Ok(true);
        }
        let kv = first_get(&response);
        match kv.as_ref().map(|kv| (decode_leader(kv.value()), kv)) {
            Some((Ok(lock), kv)) if &lock.holder == me => {
                let ours = state.lease.filter(|lease| lease.id == kv.lease());
                if ours.is_some() {
                    if let Some(lease) = state.lease.as_mut() {
                        lease.carries_lock = true;
                    }
                    self.note_lock_lifetime(&state);
                    return Ok(true);
                }
                let adopted = self
                    .adopt_leader(&mut state, me, ttl, kv.mod_revision(), deadline)
                    .await?;
                if adopted {
                    self.note_lock_lifetime(&state);
                }
                Ok(adopted)
            }
            Some((Err(e), _)) => {
                tracing::warn!(cluster = %self.scope(), member = %me, error = %e, "the leader key is unreadable; not taking the lock");
                Ok(false)
            }
            _ => Ok(false),
        }
    }

    async fn renew_leader(&self, me: &MemberName, ttl: Duration) -> Result<(), DcsError> {
        let deadline = self.endpoints.deadline();
        let mut state = self.lease.lock().await;
        let secs = ttl_secs(ttl);
        // The keep-alive is the renewal: the leader key lives as long as the lease.
        if let Some(lease) = state.lease.filter(|lease| lease.ttl_secs == secs) {
            if !self.keep_alive(lease.id, deadline).await? {
                tracing::warn!(
                    cluster = %self.scope(),
                    member = %me,
                    lease = lease.id,
                    "the etcd lease expired: the leader key went with it"
                );
                state.lease = None;
            }
        }
        let path = self.path(&DcsKey::Leader);
        let response = self
            .endpoints
            .run("renew_leader", deadline, move |mut client: Client| {
                let path = path.clone();
                async move { client.get(path, None).await }
            })
            .await
            .map_err(|e| e.into_dcs("renew_leader"))?;
        let kv = response.kvs().first();
        match kv.map(|kv| decode_leader(kv.value())) {
            Some(Ok(lock)) if &lock.holder == me => {}
            _ => {
                let err = self.lock_not_held(&mut state, me, kv);
                tracing::warn!(cluster = %self.scope(), member = %me, error = %err, "leader lock renewal refused");
                return Err(err);
            }
        }
        let Some(kv) = kv else {
            return Err(self.lock_not_held(&mut state, me, None));
        };
        let ours = state
            .lease
            .filter(|lease| lease.ttl_secs == secs && lease.id == kv.lease());
        if ours.is_some() {
            if let Some(lease) = state.lease.as_mut() {
                lease.carries_lock = true;
            }
            self.note_lock_lifetime(&state);
            return Ok(());
        }
        // Our name under another lease (a TTL change, or an earlier process of
        // this member): move it to our lease, unless it changed meanwhile.
        if self
            .adopt_leader(&mut state, me, ttl, kv.mod_revision(), deadline)
            .await?
        {
            self.note_lock_lifetime(&state);
            return Ok(());
        }
        Err(self.lock_not_held(&mut state, me, None))
    }

    fn lock_lifetime(&self) -> Option<Duration> {
        *self
            .lock_lifetime
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn release_leader(&self, me: &MemberName) -> Result<(), DcsError> {
        let deadline = self.endpoints.deadline();
        let mut state = self.lease.lock().await;
        let path = self.path(&DcsKey::Leader);
        let value = encode_leader(&LeaderLock { holder: me.clone() });
        let txn = Txn::new()
            .when([Compare::value(path.clone(), CompareOp::Equal, value)])
            .and_then([TxnOp::delete(path.clone(), None)])
            .or_else([TxnOp::get(path, None)]);
        let response = self
            .txn("release_leader", deadline, txn)
            .await
            .map_err(|e| e.into_dcs("release_leader"))?;
        if response.succeeded() {
            if let Some(lease) = state.lease.as_mut() {
                lease.carries_lock = false;
            }
            tracing::info!(cluster = %self.scope(), member = %me, "released the leader lock");
            Ok(())
        } else {
            Err(self.lock_not_held(&mut state, me, first_get(&response).as_ref()))
        }
    }

    async fn publish_member(&self, member: &Member, ttl: Duration) -> Result<(), DcsError> {
        let deadline = self.endpoints.deadline();
        let mut state = self.lease.lock().await;
        // While the lease carries the lock, only renewals may keep it alive.
        let refresh = !state.lease.is_some_and(|lease| lease.carries_lock);
        let path = self.path(&DcsKey::Member(member.name.clone()));
        self.put_with_lease(
            &mut state,
            ttl,
            refresh,
            (path, encode_member(member)),
            deadline,
        )
        .await?;
        Ok(())
    }

    async fn remove_member(&self, name: &MemberName) -> Result<(), DcsError> {
        let path = self.path(&DcsKey::Member(name.clone()));
        self.on_path("remove_member", path, |mut client, path| async move {
            client.delete(path, None).await
        })
        .await?;
        tracing::info!(cluster = %self.scope(), member = %name, "removed the member record");
        Ok(())
    }

    async fn remove_cluster(&self) -> Result<(), DcsError> {
        // One range delete over the prefix with its trailing `/`, so that
        // scope `a` never reaches `ab`'s keys.
        let prefix = self.prefix.clone();
        let response = self
            .on_path("remove_cluster", prefix, |mut client, prefix| async move {
                client
                    .delete(prefix, Some(DeleteOptions::new().with_prefix()))
                    .await
            })
            .await?;
        tracing::warn!(
            cluster = %self.scope(),
            keys = response.deleted(),
            "removed the cluster from etcd"
        );
        Ok(())
    }

    async fn write(&self, record: &Record, expected: Expected) -> Result<Version, DcsError> {
        let key = record.key();
        let path = self.path(&key);
        let txn = Txn::new()
            .when(Self::conditions(&path, expected))
            .and_then([TxnOp::put(path.clone(), record.encode(), None)])
            .or_else([TxnOp::get(path, None)]);
        let response = self.bounded_txn("write", txn).await?;
        if response.succeeded() {
            // The put's revision is the key's new mod_revision.
            Ok(version(header_revision(&response)?))
        } else {
            Err(Self::conflict(
                &key,
                expected,
                first_get(&response).as_ref(),
            ))
        }
    }

    async fn delete(&self, key: &DcsKey, expected: Expected) -> Result<(), DcsError> {
        if !is_record_key(key) {
            return Err(DcsError::InvalidRequest(format!(
                "`{key}` is not deleted through `delete`"
            )));
        }
        let path = self.path(key);
        let txn = Txn::new()
            .when(Self::conditions(&path, expected))
            .and_then([TxnOp::delete(path.clone(), None)])
            .or_else([TxnOp::get(path, None)]);
        let response = self.bounded_txn("delete", txn).await?;
        if response.succeeded() {
            Ok(())
        } else {
            Err(Self::conflict(key, expected, first_get(&response).as_ref()))
        }
    }

    async fn watch(
        &self,
        after_revision: u64,
        timeout: Duration,
    ) -> Result<WatchOutcome, DcsError> {
        self.wait_for_change(after_revision, timeout).await
    }
}

/// A transaction that applies only while the initialize key at `path` says
/// an initialization is in progress.
fn while_in_progress(path: &str) -> Txn {
    Txn::new().when([
        Compare::create_revision(path, CompareOp::Greater, 0),
        Compare::value(
            path,
            CompareOp::Equal,
            encode_initialize(&Initialize::InProgress),
        ),
    ])
}
