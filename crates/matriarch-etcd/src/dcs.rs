//! [`EtcdDcs`]: the [`Dcs`] trait on etcd's v3 API.

mod lease;
mod watch;

use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Client, Compare, CompareOp, DeleteOptions, GetOptions, KeyValue, PutOptions, Txn, TxnOp,
    TxnOpResponse, TxnResponse,
};
use matriarch_dcs::{is_record_key, Dcs, DcsError, Expected, WatchOutcome};
use matriarch_model::{
    decode_leader, encode_initialize, encode_leader, encode_member, ClusterView, DcsKey,
    Initialize, KeyLayout, LeaderLock, Member, MemberName, RawEntry, Record, SystemId, Version,
};
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::config::{EtcdConfig, EtcdConfigError};
use crate::transport::{CallError, Endpoints, BACKEND};

/// Why a watch session ended without an answer.
struct WatchFailure {
    reason: String,
    /// Whether etcd had confirmed the watch before it failed.
    established: bool,
}

impl WatchFailure {
    fn setup(reason: String) -> Self {
        WatchFailure {
            reason,
            established: false,
        }
    }
}

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
pub struct EtcdDcs {
    layout: KeyLayout,
    prefix: String,
    endpoints: Endpoints,
    lease: Mutex<LeaseState>,
    /// The granted TTL of the lease the lock was last taken or renewed on.
    lock_lifetime: std::sync::Mutex<Option<Duration>>,
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

fn version(revision: i64) -> Version {
    Version(u64::try_from(revision).unwrap_or(0))
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
            endpoints: Endpoints::new(
                validated.endpoints,
                validated.options,
                config.retry_timeout,
                validated.layout.scope().to_owned(),
            ),
            layout: validated.layout,
            prefix,
            lease: Mutex::new(LeaseState::default()),
            lock_lifetime: std::sync::Mutex::new(None),
        })
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
        let prefix = self.prefix.clone();
        let mut response = self
            .on_path("read_view", prefix, |mut client, prefix| async move {
                client
                    .get(prefix, Some(GetOptions::new().with_prefix()))
                    .await
            })
            .await?;
        let revision = response
            .header()
            .map(|header| header.revision())
            .ok_or_else(|| DcsError::Backend {
                backend: BACKEND,
                message: "read_view: etcd answered without a response header".to_owned(),
            })?;
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
        let view = ClusterView::decode(version(revision).0, entries);
        // Debug only: every read would repeat it; the engine reports what it
        // ignores (the config key once per change).
        for error in view.errors() {
            tracing::debug!(cluster = %self.scope(), key = %error.key, reason = %error.reason, "malformed value in etcd");
        }
        Ok(view)
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
        let deadline = Instant::now() + timeout;
        let retry_timeout = self.endpoints.retry_timeout();
        // Since when no watch has worked, and why.
        let mut failing: Option<(Instant, String)> = None;
        let mut ever_established = false;
        let mut attempts = 0u32;
        loop {
            let (index, url) = self.endpoints.current();
            let url = url.to_owned();
            match self.watch_once(index, after_revision, deadline).await {
                Ok(Some(outcome)) => return Ok(outcome),
                Ok(None) => return Ok(WatchOutcome::TimedOut),
                Err(failure) => {
                    attempts += 1;
                    tracing::debug!(
                        cluster = %self.scope(),
                        endpoint = %url,
                        reason = %failure.reason,
                        "etcd watch failed; watching again from the same revision"
                    );
                    let since = match &failing {
                        Some((since, _)) if !failure.established => *since,
                        _ => Instant::now(),
                    };
                    ever_established |= failure.established;
                    failing = Some((since, format!("{url}: {}", failure.reason)));
                    self.endpoints.fail_over(index);
                }
            }
            let now = Instant::now();
            if let Some((since, reason)) = &failing {
                let too_long = now.duration_since(*since) >= retry_timeout;
                if too_long || (now >= deadline && !ever_established) {
                    tracing::warn!(
                        cluster = %self.scope(),
                        attempts,
                        reason = %reason,
                        "etcd watch could not be established"
                    );
                    return Err(DcsError::Unreachable {
                        backend: BACKEND,
                        message: format!("watch: {reason}"),
                    });
                }
            }
            if now >= deadline {
                return Ok(WatchOutcome::TimedOut);
            }
            let pause = (Duration::from_millis(50) * attempts)
                .min(Duration::from_millis(400))
                .min(deadline.saturating_duration_since(now));
            tokio::time::sleep(pause).await;
        }
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
