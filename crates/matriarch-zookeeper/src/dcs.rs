//! [`ZooKeeperDcs`]: the [`Dcs`] trait on ZooKeeper znodes.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use matriarch_dcs::{is_record_key, Dcs, DcsError, Expected, WatchOutcome};
use matriarch_model::{
    decode_initialize, decode_leader, encode_initialize, encode_leader, encode_member, ClusterView,
    DcsKey, Initialize, KeyLayout, LeaderLock, Member, MemberName, RawEntry, Record, SystemId,
    Version,
};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, info, warn};
use zookeeper_client as zk;

use crate::config::ZooKeeperConfig;
use crate::error::{is_connection_failure, map_zk, timeout, ConfigError, ZooKeeperError, BACKEND};
use crate::lease::{LeaseKey, Leases};
use crate::session::{acls, Session};

/// How many ended sessions of this client are remembered, so that znodes
/// they left behind are recognised as ours and cleaned up.
const RETIRED_SESSIONS: usize = 16;

/// How often a compare-and-swap loop retries when the znode changes under it.
const ATTEMPTS: usize = 4;

/// Pause between retries of a read after a connection loss.
const READ_RETRY_PAUSE: Duration = Duration::from_millis(50);

/// A [`Dcs`] client on ZooKeeper, for one member of one cluster.
///
/// The layout is Patroni's (`docs/dcs-layout.md`), as znodes under the
/// optional chroot: `/<namespace>/<scope>/leader` and
/// `/<namespace>/<scope>/members/<name>` are ephemeral znodes of this
/// client's session, whose timeout is the TTL; the other keys are persistent
/// znodes written with compare-and-swap on the znode version. The
/// [`Version`] this backend reports is the znode's `mzxid` (the zxid of its
/// last change), which never repeats, not even after a delete and re-create.
///
/// * The leader lock is the ephemeral `leader` znode: acquiring creates it,
///   renewing checks (through the quorum) that it is still owned by this
///   session, releasing deletes it at the version read.
/// * Each ephemeral znode also has a client-side lease of the TTL passed to
///   the call (see the `lease` module): ZooKeeper keeps a session alive as
///   long as the client process answers pings, so without it a caller that
///   stops renewing would keep the lock forever. When the lease runs out the
///   client reports the lock as lost and deletes the znode.
/// * A session that expires is never reused: the lock is reported lost
///   ([`DcsError::LockNotHeld`]), a new session is opened on the next call,
///   and the next [`Dcs::publish_member`] re-creates the member znode
///   (replacing one left by an older session of this client in one
///   transaction).
/// * While disconnected (not expired), calls fail with
///   [`DcsError::Unreachable`] or [`DcsError::Timeout`]: every call is bounded
///   by the configured `retry_timeout`.
/// * [`Dcs::watch`] uses a persistent recursive watch on the scope, and
///   re-reads the view after every reconnection (persistent watches can miss
///   events across one).
///
/// Dropping the client closes its session, which deletes its ephemeral
/// znodes at once. It must be created inside a Tokio runtime.
pub struct ZooKeeperDcs {
    inner: Arc<Inner>,
    reaper: JoinHandle<()>,
}

impl std::fmt::Debug for ZooKeeperDcs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZooKeeperDcs")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl Drop for ZooKeeperDcs {
    fn drop(&mut self) {
        self.reaper.abort();
    }
}

struct Inner {
    config: ZooKeeperConfig,
    layout: KeyLayout,
    /// `/<namespace>/<scope>`.
    scope_dir: String,
    /// `/<namespace>/<scope>/members`.
    members_dir: String,
    session: tokio::sync::Mutex<Option<Arc<Session>>>,
    /// Sessions of this client that ended, newest last.
    retired: Mutex<VecDeque<i64>>,
    leases: Mutex<Leases>,
    /// Serialises the operations on this client's ephemeral znodes (lock,
    /// member record, reaper), so that a renewal and a lease expiry never
    /// interleave.
    ephemeral_ops: tokio::sync::Mutex<()>,
    reaper_wake: Notify,
    warned_ttl: AtomicBool,
    /// The session timeout new sessions ask for: the configured one until a
    /// call passes another ttl, then that ttl (Patroni's `set_ttl`).
    wanted_timeout: Mutex<Duration>,
    /// How long the lock taken or renewed last lives at least (see
    /// [`Dcs::lock_lifetime`]).
    lock_lifetime: Mutex<Option<Duration>>,
}

impl ZooKeeperDcs {
    /// A client for `config`, connecting lazily (on the first call). Fails
    /// only on an invalid configuration or outside a Tokio runtime.
    pub fn new(config: ZooKeeperConfig) -> Result<Self, ConfigError> {
        let layout = config.validate()?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| ConfigError::NoRuntime)?;
        let scope_dir = layout.prefix().trim_end_matches('/').to_owned();
        let members_dir = layout.members_prefix().trim_end_matches('/').to_owned();
        let inner = Arc::new(Inner {
            layout,
            scope_dir,
            members_dir,
            session: tokio::sync::Mutex::new(None),
            retired: Mutex::new(VecDeque::new()),
            leases: Mutex::new(Leases::default()),
            ephemeral_ops: tokio::sync::Mutex::new(()),
            reaper_wake: Notify::new(),
            warned_ttl: AtomicBool::new(false),
            wanted_timeout: Mutex::new(config.session_timeout),
            lock_lifetime: Mutex::new(None),
            config,
        });
        let reaper = runtime.spawn(reap(Arc::clone(&inner)));
        Ok(ZooKeeperDcs { inner, reaper })
    }

    /// A client for `config` with its session open (within `retry_timeout`).
    pub async fn connect(config: ZooKeeperConfig) -> Result<Self, ZooKeeperError> {
        let dcs = ZooKeeperDcs::new(config)?;
        let inner = &dcs.inner;
        inner
            .bounded("connect", inner.session())
            .await
            .map_err(|source| ZooKeeperError::Connect {
                scope: inner.config.scope.clone(),
                source,
            })?;
        Ok(dcs)
    }

    /// The id of the current ZooKeeper session, if one is open.
    pub async fn session_id(&self) -> Option<i64> {
        let slot = self.inner.session.lock().await;
        slot.as_ref().filter(|s| !s.is_terminated()).map(|s| s.id)
    }

    /// The session timeout the server granted to the current session (after
    /// clamping the request to its `minSessionTimeout`/`maxSessionTimeout`),
    /// if one is open: how long the server keeps this client's ephemeral
    /// znodes (the leader lock) once it stops hearing from it.
    pub async fn negotiated_session_timeout(&self) -> Option<Duration> {
        let slot = self.inner.session.lock().await;
        slot.as_ref()
            .filter(|s| !s.is_terminated())
            .map(|s| s.timeout())
    }

    /// The session timeout the current (or next) session asks for: the
    /// configured one, or the ttl of the last lock or member call.
    pub fn requested_session_timeout(&self) -> Duration {
        self.inner.wanted_timeout()
    }

    /// The configuration.
    pub fn config(&self) -> &ZooKeeperConfig {
        &self.inner.config
    }
}

fn ephemeral(config: &ZooKeeperConfig) -> zk::CreateOptions<'static> {
    zk::CreateMode::Ephemeral.with_acls(acls(config))
}

fn persistent(config: &ZooKeeperConfig) -> zk::CreateOptions<'static> {
    zk::CreateMode::Persistent.with_acls(acls(config))
}

/// The `Version` of a znode: its `mzxid`.
fn version_of(stat: &zk::Stat) -> Version {
    Version(u64::try_from(stat.mzxid).unwrap_or(0))
}

fn zxid(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

fn holder_of(data: &[u8]) -> Option<MemberName> {
    decode_leader(data).ok().map(|lock| lock.holder)
}

fn lost(me: &MemberName, holder: Option<MemberName>) -> DcsError {
    DcsError::LockNotHeld {
        member: me.clone(),
        holder,
    }
}

fn session_ended(err: &zk::Error) -> bool {
    matches!(
        err,
        zk::Error::SessionExpired | zk::Error::SessionMoved | zk::Error::ClientClosed
    )
}

impl Inner {
    fn leases(&self) -> MutexGuard<'_, Leases> {
        // The leases are plain data; a panic elsewhere cannot leave them torn.
        self.leases.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn scope(&self) -> &str {
        self.layout.scope()
    }

    fn path(&self, key: &DcsKey) -> String {
        self.layout.path(key)
    }

    fn is_retired(&self, session: i64) -> bool {
        session != 0
            && self
                .retired
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .contains(&session)
    }

    fn retire(&self, session: i64) {
        let mut retired = self.retired.lock().unwrap_or_else(PoisonError::into_inner);
        retired.push_back(session);
        while retired.len() > RETIRED_SESSIONS {
            retired.pop_front();
        }
        drop(retired);
        self.leases().forget_session(session);
    }

    /// Runs `fut` within `retry_timeout`.
    async fn bounded<T>(
        &self,
        operation: &'static str,
        fut: impl Future<Output = Result<T, DcsError>>,
    ) -> Result<T, DcsError> {
        match tokio::time::timeout(self.config.retry_timeout, fut).await {
            Ok(result) => result,
            Err(_) => {
                debug!(cluster = %self.scope(), operation, "ZooKeeper call timed out");
                Err(timeout(operation, self.config.retry_timeout))
            }
        }
    }

    /// The current session, or a new one if there is none or it ended.
    async fn session(&self) -> Result<Arc<Session>, DcsError> {
        let mut slot = self.session.lock().await;
        if let Some(session) = slot.as_ref() {
            if !session.is_terminated() {
                return Ok(Arc::clone(session));
            }
            let state = session.client.state();
            warn!(
                cluster = %self.scope(),
                session = %format_args!("{:#x}", session.id),
                %state,
                "the ZooKeeper session ended: the lock and member record it held are lost; \
                 opening a new session"
            );
            self.retire(session.id);
            *slot = None;
        }
        let timeout = self.wanted_timeout();
        let session = Arc::new(Session::open(&self.config, timeout, &self.scope_dir).await?);
        *slot = Some(Arc::clone(&session));
        Ok(session)
    }

    fn wanted_timeout(&self) -> Duration {
        *self
            .wanted_timeout
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Records the lifetime of the lock just taken or renewed on `session`
    /// with `ttl`: the client-side lease ends it after `ttl`, the server
    /// after the negotiated session timeout once it stops hearing from this
    /// client, whichever comes first.
    fn note_lock_lifetime(&self, session: &Session, ttl: Duration) {
        *self
            .lock_lifetime
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(ttl.min(session.timeout()));
    }

    /// Follows the ttl of a lock or member call: when it differs from the
    /// session timeout asked for, the session is re-established with the new
    /// timeout (as Patroni's `set_ttl` does), moving this client's live
    /// ephemeral znodes (the lock, the member record) to the new session
    /// without a gap. When that fails the old session goes on (the lock's
    /// reported lifetime stays its negotiated timeout) and the next call
    /// tries again.
    async fn follow_ttl(&self, ttl: Duration) {
        if ttl.is_zero() || ttl > Duration::from_millis(i32::MAX as u64) {
            return; // not a timeout ZooKeeper takes: keep the session
        }
        {
            let mut wanted = self
                .wanted_timeout
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if *wanted != ttl {
                info!(cluster = %self.scope(), from = ?*wanted, to = ?ttl,
                    "the ttl changed: the ZooKeeper session follows it");
                *wanted = ttl;
            }
        }
        let current = {
            let slot = self.session.lock().await;
            slot.as_ref()
                .filter(|s| !s.is_terminated())
                .map(|s| s.requested)
        };
        if current.is_none_or(|requested| requested == ttl) {
            return; // none open (the next one asks for it) or already right
        }
        let bound = self.config.retry_timeout / 2;
        match tokio::time::timeout(bound, self.switch_session()).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => warn!(cluster = %self.scope(), %error,
                "could not re-establish the ZooKeeper session with the new ttl; keeping the old one"),
            Err(_) => warn!(cluster = %self.scope(), ?bound,
                "re-establishing the ZooKeeper session with the new ttl timed out; keeping the old one"),
        }
    }

    /// Opens a session with the wanted timeout and moves this client's live
    /// ephemeral znodes onto it, each in one transaction (delete the old
    /// session's znode at its version, create it for the new session), so
    /// that the lock is never free in between; then closes the old session.
    async fn switch_session(&self) -> Result<(), DcsError> {
        let _ops = self.ephemeral_ops.lock().await;
        let mut slot = self.session.lock().await;
        let wanted = self.wanted_timeout();
        let Some(old) = slot
            .as_ref()
            .filter(|s| !s.is_terminated() && s.requested != wanted)
            .map(Arc::clone)
        else {
            return Ok(());
        };
        let new = Arc::new(Session::open(&self.config, wanted, &self.scope_dir).await?);
        let live = self.leases().live_of(old.id, Instant::now());
        for (key, deadline) in live {
            let path = self.lease_path(&key);
            let found = self.get(&old, &path).await?;
            let Some((data, stat)) = found.filter(|(_, stat)| stat.ephemeral_owner == old.id)
            else {
                // Not ours any more: the next call finds out and says so.
                self.leases().forget(&key);
                continue;
            };
            let mut txn = new.client.new_multi_writer();
            txn.add_delete(&path, Some(stat.version))
                .and_then(|()| txn.add_create(&path, &data, &ephemeral(&self.config)))
                .map_err(|e| map_zk(&format!("moving {path}"), e))?;
            match txn.commit().await {
                Ok(_) => self.leases().confirm(key, new.id, deadline),
                Err(zk::MultiWriteError::OperationFailed { .. }) => {
                    // Changed meanwhile: not ours to move.
                    self.leases().forget(&key);
                }
                Err(zk::MultiWriteError::RequestFailed { source }) => {
                    return Err(map_zk(&format!("moving {path}"), source));
                }
            }
        }
        info!(
            cluster = %self.scope(),
            old = %format_args!("{:#x}", old.id),
            new = %format_args!("{:#x}", new.id),
            requested = ?wanted,
            negotiated = ?new.timeout(),
            "re-established the ZooKeeper session with the new ttl"
        );
        *slot = Some(new);
        drop(slot);
        // Its znodes are moved; dropping its last handle closes it.
        self.retire(old.id);
        Ok(())
    }

    /// The current session if it is still the one with id `id`.
    async fn session_if(&self, id: i64) -> Option<Arc<Session>> {
        let slot = self.session.lock().await;
        slot.as_ref()
            .filter(|s| s.id == id && !s.is_terminated())
            .map(Arc::clone)
    }

    /// Creates a persistent directory and its parents.
    async fn make_dir(&self, session: &Session, dir: &str) -> Result<(), DcsError> {
        session
            .client
            .mkdir(dir, &persistent(&self.config))
            .await
            .map_err(|e| map_zk(&format!("creating {dir}"), e))
    }

    /// A read, retried after connection losses (reads are idempotent); the
    /// caller bounds it.
    async fn read<T, F, Fut>(&self, what: &str, op: F) -> Result<T, zk::Error>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, zk::Error>>,
    {
        loop {
            match op().await {
                Err(e) if is_connection_failure(&e) => {
                    debug!(cluster = %self.scope(), what, error = %e, "connection lost during a read; retrying");
                    tokio::time::sleep(READ_RETRY_PAUSE).await;
                }
                other => return other,
            }
        }
    }

    async fn get(
        &self,
        session: &Session,
        path: &str,
    ) -> Result<Option<(Vec<u8>, zk::Stat)>, DcsError> {
        match self.read(path, || session.client.get_data(path)).await {
            Ok(found) => Ok(Some(found)),
            Err(zk::Error::NoNode) => Ok(None),
            Err(e) => Err(map_zk(&format!("reading {path}"), e)),
        }
    }

    async fn stat(&self, session: &Session, path: &str) -> Result<Option<zk::Stat>, DcsError> {
        self.read(path, || session.client.check_stat(path))
            .await
            .map_err(|e| map_zk(&format!("reading the stat of {path}"), e))
    }

    // ------------------------------------------------------------------ view

    async fn read_view(&self, session: &Session) -> Result<ClusterView, DcsError> {
        let (mut revision, dirs) = self
            .read(&self.scope_dir, || self.read_dirs(session))
            .await
            .map_err(|e| map_zk(&format!("listing {}", self.scope_dir), e))?;
        let (scope_children, member_children) = dirs;
        let mut keys: Vec<(String, String)> = Vec::new();
        for child in scope_children {
            if child != "members" {
                keys.push((format!("{}/{child}", self.scope_dir), child));
            }
        }
        for child in member_children {
            keys.push((
                format!("{}/{child}", self.members_dir),
                format!("{}{child}", matriarch_model::MEMBERS_DIR),
            ));
        }
        let results = self
            .read(&self.scope_dir, || async {
                let mut reader = session.client.new_multi_reader();
                for (path, _) in &keys {
                    reader.add_get_data(path)?;
                }
                reader.commit().await
            })
            .await
            .map_err(|e| map_zk(&format!("reading the keys under {}", self.scope_dir), e))?;
        let mut entries = Vec::with_capacity(keys.len());
        for ((path, key), result) in keys.into_iter().zip(results) {
            match result {
                zk::MultiReadResult::Data { data, stat } => {
                    revision = revision.max(zxid(stat.mzxid));
                    entries.push(RawEntry {
                        key,
                        value: data,
                        version: version_of(&stat),
                    });
                }
                // Deleted between the listing and the read.
                zk::MultiReadResult::Error {
                    err: zk::Error::NoNode,
                } => {}
                zk::MultiReadResult::Error { err } => {
                    return Err(map_zk(&format!("reading {path}"), err));
                }
                other => {
                    return Err(DcsError::Backend {
                        backend: BACKEND,
                        message: format!("reading {path}: unexpected answer {other:?}"),
                    })
                }
            }
        }
        Ok(ClusterView::decode(revision, entries))
    }

    /// Lists the scope and the members folder in one multi-read; the
    /// revision so far is the largest zxid of their last changes.
    async fn read_dirs(
        &self,
        session: &Session,
    ) -> Result<(u64, (Vec<String>, Vec<String>)), zk::Error> {
        let mut reader = session.client.new_multi_reader();
        reader.add_get_data(&self.scope_dir)?;
        reader.add_get_children(&self.scope_dir)?;
        reader.add_get_data(&self.members_dir)?;
        reader.add_get_children(&self.members_dir)?;
        let results = reader.commit().await?;
        let mut revision = 0u64;
        let mut lists = [Vec::new(), Vec::new()];
        for (index, result) in results.into_iter().enumerate() {
            match result {
                zk::MultiReadResult::Data { stat, .. } => {
                    revision = revision.max(zxid(stat.pzxid)).max(zxid(stat.mzxid));
                }
                zk::MultiReadResult::Children { children } => {
                    if let Some(list) = lists.get_mut(index / 2) {
                        *list = children;
                    }
                }
                // A folder that does not exist (yet) is empty.
                zk::MultiReadResult::Error {
                    err: zk::Error::NoNode,
                } => {}
                zk::MultiReadResult::Error { err } => return Err(err),
                other => {
                    return Err(zk::Error::UnexpectedError(format!(
                        "unexpected multi-read answer {other:?}"
                    )))
                }
            }
        }
        let [scope, members] = lists;
        Ok((revision, (scope, members)))
    }

    // ------------------------------------------------------------ ephemerals

    /// Deletes `key`'s znode if `session` owns it.
    async fn delete_own(&self, session: &Session, key: &LeaseKey) -> Result<(), DcsError> {
        let path = self.lease_path(key);
        let Some((_, stat)) = self.get(session, &path).await? else {
            return Ok(());
        };
        if stat.ephemeral_owner != session.id {
            return Ok(());
        }
        match session.client.delete(&path, Some(stat.version)).await {
            Ok(()) | Err(zk::Error::NoNode) | Err(zk::Error::BadVersion) => Ok(()),
            Err(e) => Err(map_zk(&format!("deleting {path}"), e)),
        }
    }

    fn lease_path(&self, key: &LeaseKey) -> String {
        match key {
            LeaseKey::Leader => self.path(&DcsKey::Leader),
            LeaseKey::Member(name) => format!("{}/{name}", self.members_dir),
        }
    }

    /// Deletes the znodes whose lease ran out.
    async fn reap_due(&self) {
        let due = self.leases().expire_due(Instant::now());
        if due.is_empty() {
            return;
        }
        let _ops = self.ephemeral_ops.lock().await;
        for (key, lease) in due {
            if !self.leases().is_expired(&key, lease.session) {
                continue; // revived by a publish meanwhile
            }
            let Some(session) = self.session_if(lease.session).await else {
                // The session ended: its znodes went with it.
                self.leases().forget_expired(&key, lease.session);
                continue;
            };
            let result =
                tokio::time::timeout(self.config.retry_timeout, self.delete_own(&session, &key))
                    .await;
            match result {
                Ok(Ok(())) => {
                    self.leases().forget_expired(&key, lease.session);
                    match &key {
                        LeaseKey::Leader => warn!(
                            cluster = %self.scope(),
                            "the leader lock was not renewed within its ttl: deleted it"
                        ),
                        LeaseKey::Member(name) => info!(
                            cluster = %self.scope(),
                            member = %name,
                            "the member record was not refreshed within its ttl: deleted it"
                        ),
                    }
                }
                Ok(Err(e)) => {
                    warn!(cluster = %self.scope(), path = %self.lease_path(&key), error = %e,
                    "could not delete an expired ephemeral znode; retrying")
                }
                Err(_) => warn!(cluster = %self.scope(), path = %self.lease_path(&key),
                    "deleting an expired ephemeral znode timed out; retrying"),
            }
        }
    }

    fn warn_ttl(&self, session: &Session, ttl: Duration) {
        if ttl < session.timeout() && !self.warned_ttl.swap(true, Ordering::Relaxed) {
            warn!(
                cluster = %self.scope(),
                ?ttl,
                session_timeout = ?session.timeout(),
                "the ttl is shorter than the ZooKeeper session timeout: if this process dies, \
                 its lock outlives the ttl until the session expires"
            );
        }
    }

    async fn acquire_leader(&self, me: &MemberName, ttl: Duration) -> Result<bool, DcsError> {
        self.follow_ttl(ttl).await;
        let session = self.session().await?;
        let _ops = self.ephemeral_ops.lock().await;
        let path = self.path(&DcsKey::Leader);
        let key = LeaseKey::Leader;
        let value = encode_leader(&LeaderLock { holder: me.clone() });
        let start = Instant::now();
        if self.leases().has_run_out(&key, session.id, start) {
            // Our lock ran out: it is lost; clear its znode before racing again.
            self.delete_own(&session, &key).await?;
            self.leases().forget(&key);
        }
        self.leases()
            .tentative(key.clone(), session.id, start + ttl, start);
        self.reaper_wake.notify_one();
        for _ in 0..ATTEMPTS {
            match session
                .client
                .create(&path, &value, &ephemeral(&self.config))
                .await
            {
                Ok(_) => {
                    self.leases().confirm(key, session.id, start + ttl);
                    self.reaper_wake.notify_one();
                    self.note_lock_lifetime(&session, ttl);
                    self.warn_ttl(&session, ttl);
                    info!(cluster = %self.scope(), member = %me, "took the leader lock");
                    return Ok(true);
                }
                Err(zk::Error::NoNode) => self.make_dir(&session, &self.scope_dir).await?,
                Err(zk::Error::NodeExists) => {
                    let Some((data, stat)) = self.get(&session, &path).await? else {
                        continue; // released meanwhile: race again
                    };
                    let holder = holder_of(&data);
                    if stat.ephemeral_owner == session.id {
                        if holder.as_ref() == Some(me) {
                            self.leases().confirm(key, session.id, start + ttl);
                            self.reaper_wake.notify_one();
                            self.note_lock_lifetime(&session, ttl);
                            return Ok(true);
                        }
                        return Ok(false);
                    }
                    self.leases().forget(&key);
                    if self.is_retired(stat.ephemeral_owner) {
                        // Left by an ended session of ours: the lock is lost
                        // either way; free it rather than wait for its expiry.
                        info!(cluster = %self.scope(), member = %me,
                            "deleting a leader znode left by an ended session of this client");
                        match session.client.delete(&path, Some(stat.version)).await {
                            Ok(()) | Err(zk::Error::NoNode) | Err(zk::Error::BadVersion) => {}
                            Err(e) => return Err(map_zk(&format!("deleting {path}"), e)),
                        }
                        self.leases()
                            .tentative(key.clone(), session.id, start + ttl, start);
                        continue;
                    }
                    debug!(cluster = %self.scope(), member = %me, holder = ?holder, "the leader lock is held");
                    return Ok(false);
                }
                // The create may still land: the tentative lease ends it in time.
                Err(e) => return Err(map_zk(&format!("creating {path}"), e)),
            }
        }
        self.leases().forget(&key);
        Err(DcsError::Backend {
            backend: BACKEND,
            message: format!("creating {path}: the znode kept changing"),
        })
    }

    /// Who holds the lock, as far as can be read before `deadline`. A leader
    /// znode left by an ended session of this client is deleted on the way
    /// (the lock it stood for is lost), so that another member can take the
    /// lock without waiting for the server to expire that session.
    async fn holder_before(&self, deadline: Instant) -> Option<MemberName> {
        let read = async {
            let session = self.session().await.ok()?;
            let path = self.path(&DcsKey::Leader);
            let (data, stat) = self.get(&session, &path).await.ok()??;
            if self.is_retired(stat.ephemeral_owner) {
                info!(cluster = %self.scope(), "deleting a leader znode left by an ended session of this client");
                return match session.client.delete(&path, Some(stat.version)).await {
                    Ok(()) | Err(zk::Error::NoNode) => None,
                    Err(_) => holder_of(&data),
                };
            }
            holder_of(&data)
        };
        tokio::time::timeout_at(deadline, read).await.ok().flatten()
    }

    async fn renew_leader(
        &self,
        me: &MemberName,
        ttl: Duration,
        deadline: Instant,
    ) -> Result<(), DcsError> {
        self.follow_ttl(ttl).await;
        let session = self.session().await?;
        let _ops = self.ephemeral_ops.lock().await;
        let path = self.path(&DcsKey::Leader);
        let key = LeaseKey::Leader;
        let start = Instant::now();
        if !self.leases().is_live(&key, session.id, start) {
            if self.leases().has_run_out(&key, session.id, start) {
                warn!(cluster = %self.scope(), member = %me,
                    "the leader lock was not renewed within its ttl: it is lost");
                if let Ok(Ok(())) =
                    tokio::time::timeout_at(deadline, self.delete_own(&session, &key)).await
                {
                    self.leases().forget(&key);
                }
            }
            return Err(lost(me, self.holder_before(deadline).await));
        }
        let (data, stat) = match self.get(&session, &path).await {
            Ok(Some(found)) => found,
            Ok(None) => {
                self.leases().forget(&key);
                warn!(cluster = %self.scope(), member = %me, "the leader znode is gone: the lock is lost");
                return Err(lost(me, None));
            }
            Err(e) if session.is_terminated() => {
                warn!(cluster = %self.scope(), member = %me, error = %e,
                    "the ZooKeeper session ended: the lock is lost");
                drop(_ops);
                return Err(lost(me, self.holder_before(deadline).await));
            }
            Err(e) => return Err(e),
        };
        let holder = holder_of(&data);
        if stat.ephemeral_owner != session.id {
            self.leases().forget(&key);
            warn!(cluster = %self.scope(), member = %me, holder = ?holder,
                "the leader znode belongs to another session: the lock is lost");
            return Err(lost(me, holder));
        }
        if holder.as_ref() != Some(me) {
            return Err(lost(me, holder));
        }
        // A read may be answered by a server that lags; a check through the
        // quorum proves that the session is alive and the znode unchanged.
        let mut check = session.client.new_multi_writer();
        check
            .add_check_version(&path, stat.version)
            .map_err(|e| map_zk(&format!("checking {path}"), e))?;
        match check.commit().await {
            Ok(_) => {}
            Err(zk::MultiWriteError::OperationFailed { source, .. }) => {
                self.leases().forget(&key);
                warn!(cluster = %self.scope(), member = %me, error = %source,
                    "the leader znode changed: the lock is lost");
                drop(_ops);
                return Err(lost(me, self.holder_before(deadline).await));
            }
            Err(zk::MultiWriteError::RequestFailed { source }) => {
                if session_ended(&source) || session.is_terminated() {
                    warn!(cluster = %self.scope(), member = %me, error = %source,
                        "the ZooKeeper session ended: the lock is lost");
                    drop(_ops);
                    return Err(lost(me, self.holder_before(deadline).await));
                }
                return Err(map_zk(&format!("checking {path}"), source));
            }
        }
        if !self
            .leases()
            .renew(&key, session.id, start + ttl, Instant::now())
        {
            warn!(cluster = %self.scope(), member = %me,
                "the leader lock ran out during its renewal: it is lost");
            return Err(lost(me, None));
        }
        self.reaper_wake.notify_one();
        self.note_lock_lifetime(&session, ttl);
        debug!(cluster = %self.scope(), member = %me, "renewed the leader lock");
        Ok(())
    }

    async fn release_leader(&self, me: &MemberName) -> Result<(), DcsError> {
        let session = self.session().await?;
        let _ops = self.ephemeral_ops.lock().await;
        let path = self.path(&DcsKey::Leader);
        let key = LeaseKey::Leader;
        let Some((data, stat)) = self.get(&session, &path).await? else {
            self.leases().forget(&key);
            return Err(lost(me, None));
        };
        let holder = holder_of(&data);
        if stat.ephemeral_owner != session.id {
            self.leases().forget(&key);
            return Err(lost(me, holder));
        }
        if holder.as_ref() != Some(me) {
            return Err(lost(me, holder));
        }
        let live = self.leases().is_live(&key, session.id, Instant::now());
        match session.client.delete(&path, Some(stat.version)).await {
            Ok(()) => {
                self.leases().forget(&key);
                if live {
                    info!(cluster = %self.scope(), member = %me, "released the leader lock");
                    Ok(())
                } else {
                    // It had run out already: deleted, but it was not held.
                    Err(lost(me, None))
                }
            }
            Err(zk::Error::NoNode) | Err(zk::Error::BadVersion) => {
                self.leases().forget(&key);
                Err(lost(me, None))
            }
            Err(e) => Err(map_zk(&format!("deleting {path}"), e)),
        }
    }

    async fn publish_member(&self, member: &Member, ttl: Duration) -> Result<(), DcsError> {
        self.follow_ttl(ttl).await;
        let session = self.session().await?;
        let _ops = self.ephemeral_ops.lock().await;
        let name = member.name.as_str().to_owned();
        let key = LeaseKey::Member(name.clone());
        let path = self.lease_path(&key);
        let value = encode_member(member);
        let start = Instant::now();
        let deadline = start + ttl;
        let confirm = || {
            self.leases().confirm(key.clone(), session.id, deadline);
            self.reaper_wake.notify_one();
        };
        if self.leases().is_live(&key, session.id, start) {
            match session.client.set_data(&path, &value, None).await {
                Ok(stat) if stat.ephemeral_owner == session.id => {
                    confirm();
                    return Ok(());
                }
                Ok(_) | Err(zk::Error::NoNode) => {} // not ours any more: re-create
                Err(e) => return Err(map_zk(&format!("writing {path}"), e)),
            }
        }
        self.leases()
            .tentative(key.clone(), session.id, deadline, start);
        self.reaper_wake.notify_one();
        for _ in 0..ATTEMPTS {
            match session
                .client
                .create(&path, &value, &ephemeral(&self.config))
                .await
            {
                Ok(_) => {
                    confirm();
                    info!(cluster = %self.scope(), member = %name, "published the member record");
                    return Ok(());
                }
                Err(zk::Error::NoNode) => self.make_dir(&session, &self.members_dir).await?,
                Err(zk::Error::NodeExists) => {
                    let Some(stat) = self.stat(&session, &path).await? else {
                        continue;
                    };
                    if stat.ephemeral_owner == session.id {
                        match session
                            .client
                            .set_data(&path, &value, Some(stat.version))
                            .await
                        {
                            Ok(_) => {
                                confirm();
                                return Ok(());
                            }
                            Err(zk::Error::NoNode) | Err(zk::Error::BadVersion) => continue,
                            Err(e) => return Err(map_zk(&format!("writing {path}"), e)),
                        }
                    }
                    // Left by an ended session (of ours, or of a member that
                    // had this name): replace it with ours in one transaction.
                    let mut txn = session.client.new_multi_writer();
                    txn.add_delete(&path, Some(stat.version))
                        .and_then(|()| txn.add_create(&path, &value, &ephemeral(&self.config)))
                        .map_err(|e| map_zk(&format!("replacing {path}"), e))?;
                    match txn.commit().await {
                        Ok(_) => {
                            confirm();
                            info!(cluster = %self.scope(), member = %name,
                                owner = %format_args!("{:#x}", stat.ephemeral_owner),
                                "replaced a member znode of another session with this session's");
                            return Ok(());
                        }
                        Err(zk::MultiWriteError::OperationFailed { .. }) => continue,
                        Err(zk::MultiWriteError::RequestFailed { source }) => {
                            return Err(map_zk(&format!("replacing {path}"), source))
                        }
                    }
                }
                Err(e) => return Err(map_zk(&format!("creating {path}"), e)),
            }
        }
        Err(DcsError::Backend {
            backend: BACKEND,
            message: format!("publishing {path}: the znode kept changing"),
        })
    }

    async fn remove_member(&self, name: &MemberName) -> Result<(), DcsError> {
        let session = self.session().await?;
        let _ops = self.ephemeral_ops.lock().await;
        let key = LeaseKey::Member(name.as_str().to_owned());
        let path = self.lease_path(&key);
        self.leases().forget(&key);
        match session.client.delete(&path, None).await {
            Ok(()) => {
                info!(cluster = %self.scope(), member = %name, "removed the member record");
                Ok(())
            }
            Err(zk::Error::NoNode) => Ok(()),
            Err(e) => Err(map_zk(&format!("deleting {path}"), e)),
        }
    }

    // --------------------------------------------------------------- records

    fn conflict(key: &DcsKey, expected: Expected, found: Option<&zk::Stat>) -> DcsError {
        DcsError::Conflict {
            key: key.relative_path(),
            expected,
            found: found.map(version_of),
        }
    }

    async fn write(&self, record: &Record, expected: Expected) -> Result<Version, DcsError> {
        let session = self.session().await?;
        let key = record.key();
        let path = self.path(&key);
        let value = record.encode();
        match expected {
            Expected::Absent => loop {
                match session
                    .client
                    .create(&path, &value, &persistent(&self.config))
                    .await
                {
                    Ok((stat, _)) => return Ok(version_of(&stat)),
                    Err(zk::Error::NoNode) => self.make_dir(&session, &self.scope_dir).await?,
                    Err(zk::Error::NodeExists) => {
                        let found = self.stat(&session, &path).await?;
                        return Err(Self::conflict(&key, expected, found.as_ref()));
                    }
                    Err(e) => return Err(map_zk(&format!("creating {path}"), e)),
                }
            },
            Expected::Version(version) => {
                let Some(stat) = self.stat(&session, &path).await? else {
                    return Err(Self::conflict(&key, expected, None));
                };
                if version_of(&stat) != version {
                    return Err(Self::conflict(&key, expected, Some(&stat)));
                }
                match session
                    .client
                    .set_data(&path, &value, Some(stat.version))
                    .await
                {
                    Ok(stat) => Ok(version_of(&stat)),
                    Err(zk::Error::NoNode) | Err(zk::Error::BadVersion) => {
                        let found = self.stat(&session, &path).await?;
                        Err(Self::conflict(&key, expected, found.as_ref()))
                    }
                    Err(e) => Err(map_zk(&format!("writing {path}"), e)),
                }
            }
            Expected::Any => {
                for _ in 0..ATTEMPTS {
                    match session.client.set_data(&path, &value, None).await {
                        Ok(stat) => return Ok(version_of(&stat)),
                        Err(zk::Error::NoNode) => {}
                        Err(e) => return Err(map_zk(&format!("writing {path}"), e)),
                    }
                    match session
                        .client
                        .create(&path, &value, &persistent(&self.config))
                        .await
                    {
                        Ok((stat, _)) => return Ok(version_of(&stat)),
                        Err(zk::Error::NoNode) => self.make_dir(&session, &self.scope_dir).await?,
                        Err(zk::Error::NodeExists) => {}
                        Err(e) => return Err(map_zk(&format!("creating {path}"), e)),
                    }
                }
                Err(DcsError::Backend {
                    backend: BACKEND,
                    message: format!("writing {path}: the znode kept changing"),
                })
            }
        }
    }

    async fn delete(&self, key: &DcsKey, expected: Expected) -> Result<(), DcsError> {
        let session = self.session().await?;
        let path = self.path(key);
        let version = match expected {
            Expected::Any => None,
            Expected::Absent => {
                return match self.stat(&session, &path).await? {
                    None => Ok(()),
                    Some(stat) => Err(Self::conflict(key, expected, Some(&stat))),
                }
            }
            Expected::Version(version) => {
                let Some(stat) = self.stat(&session, &path).await? else {
                    return Err(Self::conflict(key, expected, None));
                };
                if version_of(&stat) != version {
                    return Err(Self::conflict(key, expected, Some(&stat)));
                }
                Some(stat.version)
            }
        };
        match session.client.delete(&path, version).await {
            Ok(()) => Ok(()),
            Err(zk::Error::NoNode) if version.is_none() => Ok(()),
            Err(zk::Error::NoNode) | Err(zk::Error::BadVersion) => {
                let found = self.stat(&session, &path).await?;
                Err(Self::conflict(key, expected, found.as_ref()))
            }
            Err(e) => Err(map_zk(&format!("deleting {path}"), e)),
        }
    }

    // ------------------------------------------------------------ initialize

    async fn try_initialize(&self) -> Result<bool, DcsError> {
        let session = self.session().await?;
        let path = self.path(&DcsKey::Initialize);
        let value = encode_initialize(&Initialize::InProgress);
        loop {
            match session
                .client
                .create(&path, &value, &persistent(&self.config))
                .await
            {
                Ok(_) => {
                    info!(cluster = %self.scope(), "won the initialize race");
                    return Ok(true);
                }
                Err(zk::Error::NoNode) => self.make_dir(&session, &self.scope_dir).await?,
                Err(zk::Error::NodeExists) => return Ok(false),
                Err(e) => return Err(map_zk(&format!("creating {path}"), e)),
            }
        }
    }

    async fn complete_initialize(&self, system_id: SystemId) -> Result<(), DcsError> {
        let session = self.session().await?;
        let key = DcsKey::Initialize;
        let path = self.path(&key);
        let Some((data, stat)) = self.get(&session, &path).await? else {
            return Err(Self::conflict(&key, Expected::Any, None));
        };
        if decode_initialize(&data) != Ok(Initialize::InProgress) {
            return Err(Self::conflict(&key, Expected::Any, Some(&stat)));
        }
        let value = encode_initialize(&Initialize::Done(system_id));
        match session
            .client
            .set_data(&path, &value, Some(stat.version))
            .await
        {
            Ok(_) => Ok(()),
            Err(zk::Error::NoNode) | Err(zk::Error::BadVersion) => {
                let found = self.stat(&session, &path).await?;
                Err(Self::conflict(&key, Expected::Any, found.as_ref()))
            }
            Err(e) => Err(map_zk(&format!("writing {path}"), e)),
        }
    }

    async fn cancel_initialize(&self) -> Result<(), DcsError> {
        let session = self.session().await?;
        let path = self.path(&DcsKey::Initialize);
        let Some((data, stat)) = self.get(&session, &path).await? else {
            return Ok(());
        };
        if decode_initialize(&data) != Ok(Initialize::InProgress) {
            return Ok(());
        }
        match session.client.delete(&path, Some(stat.version)).await {
            Ok(()) | Err(zk::Error::NoNode) | Err(zk::Error::BadVersion) => Ok(()),
            Err(e) => Err(map_zk(&format!("deleting {path}"), e)),
        }
    }
}

/// The reaper: deletes ephemeral znodes whose lease ran out.
async fn reap(inner: Arc<Inner>) {
    loop {
        let wake = inner.reaper_wake.notified();
        tokio::pin!(wake);
        wake.as_mut().enable();
        let next = inner.leases().next_wake(Instant::now());
        match next {
            Some(at) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(at) => {}
                    _ = &mut wake => {}
                }
            }
            None => wake.await,
        }
        inner.reap_due().await;
    }
}

#[async_trait]
impl Dcs for ZooKeeperDcs {
    fn layout(&self) -> &KeyLayout {
        &self.inner.layout
    }

    async fn read_view(&self) -> Result<ClusterView, DcsError> {
        let inner = &self.inner;
        inner
            .bounded("read_view", async {
                let session = inner.session().await?;
                inner.read_view(&session).await
            })
            .await
    }

    async fn try_initialize(&self) -> Result<bool, DcsError> {
        self.inner
            .bounded("try_initialize", self.inner.try_initialize())
            .await
    }

    async fn complete_initialize(&self, system_id: SystemId) -> Result<(), DcsError> {
        self.inner
            .bounded(
                "complete_initialize",
                self.inner.complete_initialize(system_id),
            )
            .await
    }

    async fn cancel_initialize(&self) -> Result<(), DcsError> {
        self.inner
            .bounded("cancel_initialize", self.inner.cancel_initialize())
            .await
    }

    async fn acquire_leader(&self, me: &MemberName, ttl: Duration) -> Result<bool, DcsError> {
        self.inner
            .bounded("acquire_leader", self.inner.acquire_leader(me, ttl))
            .await
    }

    async fn renew_leader(&self, me: &MemberName, ttl: Duration) -> Result<(), DcsError> {
        let retry_timeout = self.inner.config.retry_timeout;
        // The inner deadline leaves room to report a lost lock (with its
        // holder, if it can be read in time) before the outer bound fires.
        let deadline = Instant::now() + retry_timeout.mul_f64(0.9);
        self.inner
            .bounded("renew_leader", self.inner.renew_leader(me, ttl, deadline))
            .await
    }

    fn lock_lifetime(&self) -> Option<Duration> {
        *self
            .inner
            .lock_lifetime
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    async fn release_leader(&self, me: &MemberName) -> Result<(), DcsError> {
        self.inner
            .bounded("release_leader", self.inner.release_leader(me))
            .await
    }

    async fn publish_member(&self, member: &Member, ttl: Duration) -> Result<(), DcsError> {
        self.inner
            .bounded("publish_member", self.inner.publish_member(member, ttl))
            .await
    }

    async fn remove_member(&self, name: &MemberName) -> Result<(), DcsError> {
        self.inner
            .bounded("remove_member", self.inner.remove_member(name))
            .await
    }

    async fn write(&self, record: &Record, expected: Expected) -> Result<Version, DcsError> {
        self.inner
            .bounded("write", self.inner.write(record, expected))
            .await
    }

    async fn delete(&self, key: &DcsKey, expected: Expected) -> Result<(), DcsError> {
        if !is_record_key(key) {
            return Err(DcsError::InvalidRequest(format!(
                "`{key}` is not deleted through `delete`"
            )));
        }
        self.inner
            .bounded("delete", self.inner.delete(key, expected))
            .await
    }

    async fn watch(
        &self,
        after_revision: u64,
        timeout: Duration,
    ) -> Result<WatchOutcome, DcsError> {
        let inner = &self.inner;
        let end = Instant::now() + timeout;
        loop {
            // Subscribe before reading, so that a change between the read and
            // the wait is not missed.
            let (mut changes, revision) = inner
                .bounded("watch", async {
                    let session = inner.session().await?;
                    let changes = session.subscribe();
                    let view = inner.read_view(&session).await?;
                    Ok((changes, view.revision))
                })
                .await?;
            if revision > after_revision {
                return Ok(WatchOutcome::Changed);
            }
            tokio::select! {
                changed = changes.changed() => {
                    if changed.is_err() {
                        // The session ended: the next round opens a new one.
                        tokio::time::sleep(READ_RETRY_PAUSE).await;
                    }
                }
                _ = tokio::time::sleep_until(end) => return Ok(WatchOutcome::TimedOut),
            }
        }
    }
}
