//! [`ZooKeeperDcs`]: the [`Dcs`] trait on ZooKeeper znodes.

mod lock;
mod members;
mod records;
mod remove;
mod view;

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use matriarch_dcs::{is_record_key, Dcs, DcsError, Expected, WatchOutcome};
use matriarch_model::{
    decode_leader, ClusterView, DcsKey, KeyLayout, Member, MemberName, Record, SystemId, Version,
};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, info, warn};
use zookeeper_client as zk;

use crate::config::ZooKeeperConfig;
use crate::error::{map_zk, timeout, ConfigError, ZooKeeperError};
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
/// * An unchanged member record is not written again (no new zxid, no
///   watch event for the other members): [`Dcs::publish_member`] checks with
///   one read that this session's znode still holds it at the version this
///   client wrote, and extends the lease; a changed or vanished record is
///   written.
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

/// A member record as this client last wrote it (kept by [`Inner`], used
/// by `members`).
struct WrittenMember {
    /// The session whose ephemeral znode holds it.
    session: i64,
    /// The znode's data version after the write.
    version: i32,
    value: Vec<u8>,
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
    /// The member records this client wrote last, by member name, so that an
    /// unchanged record is not written again (see [`Dcs::publish_member`]).
    written_members: Mutex<BTreeMap<String, WrittenMember>>,
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
            written_members: Mutex::new(BTreeMap::new()),
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

    /// Starts the lease of an ephemeral znode about to be created, so that
    /// the reaper ends it in time even when the create lands after an error.
    fn lease_tentatively(&self, key: &LeaseKey, session: i64, deadline: Instant, start: Instant) {
        self.leases()
            .tentative(key.clone(), session, deadline, start);
        self.reaper_wake.notify_one();
    }

    /// Confirms the lease of an ephemeral znode `session` holds, to `deadline`.
    fn lease_confirmed(&self, key: LeaseKey, session: i64, deadline: Instant) {
        self.leases().confirm(key, session, deadline);
        self.reaper_wake.notify_one();
    }

    /// Creates the ephemeral znode `path` of `session` in the folder `dir`.
    async fn create_ephemeral(
        &self,
        session: &Session,
        dir: &str,
        (path, value): (&str, &[u8]),
    ) -> Result<zk::Stat, zk::Error> {
        let options = ephemeral(&self.config);
        self.create_in(session, dir, (path, value), &options).await
    }

    /// Creates the znode `path` holding `value`, first making its folder
    /// `dir` (and the folders above it) when it is missing, as before the
    /// first write or after a `remove_cluster`; otherwise the create's own
    /// outcome (`NodeExists` included).
    async fn create_in(
        &self,
        session: &Session,
        dir: &str,
        (path, value): (&str, &[u8]),
        options: &zk::CreateOptions<'_>,
    ) -> Result<zk::Stat, zk::Error> {
        for _ in 0..ATTEMPTS {
            match session.client.create(path, value, options).await {
                Err(zk::Error::NoNode) => {
                    session.client.mkdir(dir, &persistent(&self.config)).await?;
                }
                other => return other.map(|(stat, _)| stat),
            }
        }
        Err(zk::Error::NoNode)
    }

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

    async fn remove_cluster(&self) -> Result<(), DcsError> {
        self.inner
            .bounded("remove_cluster", self.inner.remove_cluster())
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
