//! A complete DCS in process memory, for tests, simulations and examples.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use matriarch_model::{
    decode_initialize, decode_leader, encode_initialize, encode_leader, encode_member, ClusterView,
    DcsKey, Initialize, KeyLayout, LeaderLock, Member, MemberName, RawEntry, Record, SystemId,
    Version,
};
use tokio::sync::Notify;

use crate::clock::{Clock, SystemClock};
use crate::error::{DcsError, Expected};
use crate::store::{is_record_key, Dcs, WatchOutcome};

const BACKEND: &str = "memory";

/// Bounds on how long a watcher sleeps before re-checking for TTL expiry,
/// which has no writer to wake it: until the next key is due, within these.
const EXPIRY_POLL_MIN: Duration = Duration::from_millis(10);
const EXPIRY_POLL_MAX: Duration = Duration::from_secs(1);

#[derive(Debug)]
struct Stored {
    value: Vec<u8>,
    version: Version,
    /// When the key disappears, on the store's clock.
    expires_at: Option<Duration>,
}

#[derive(Debug, Default)]
struct Store {
    revision: u64,
    /// By full path.
    entries: BTreeMap<String, Stored>,
}

impl Store {
    fn bump(&mut self) -> Version {
        self.revision += 1;
        Version(self.revision)
    }

    fn put(&mut self, path: String, value: Vec<u8>, expires_at: Option<Duration>) -> Version {
        let version = self.bump();
        self.entries.insert(
            path,
            Stored {
                value,
                version,
                expires_at,
            },
        );
        version
    }

    /// The entries under `prefix`, in path order.
    fn under<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = (&'a String, &'a Stored)> {
        self.entries
            .range(prefix.to_owned()..)
            .take_while(move |(path, _)| path.starts_with(prefix))
    }

    fn remove(&mut self, path: &str) {
        if self.entries.remove(path).is_some() {
            self.bump();
        }
    }

    /// Drops every key whose TTL ran out; each removal is a change watchers see.
    fn expire(&mut self, now: Duration) {
        let expired: Vec<String> = self
            .entries
            .iter()
            .filter(|(_, stored)| stored.expires_at.is_some_and(|at| at <= now))
            .map(|(path, _)| path.clone())
            .collect();
        for path in expired {
            self.remove(&path);
        }
    }
}

#[derive(Debug)]
struct Shared {
    store: Mutex<Store>,
    changed: Notify,
    clock: Arc<dyn Clock>,
    /// The longest TTL the store grants (like ZooKeeper's `maxSessionTimeout`).
    max_ttl: Mutex<Option<Duration>>,
}

/// An in-memory [`Dcs`]: every contract of the trait, with TTLs on a
/// [`Clock`] that tests can drive ([`crate::ManualClock`]).
///
/// [`MemoryDcs::connect`] makes another client of the same store, as another
/// member would have; each client can be cut off on its own with
/// [`MemoryDcs::set_reachable`] to simulate a partition. A store can clamp
/// the TTLs it grants ([`MemoryDcs::set_max_ttl`]), as a server with its own
/// limits does.
#[derive(Debug, Clone)]
pub struct MemoryDcs {
    shared: Arc<Shared>,
    layout: KeyLayout,
    reachable: Arc<AtomicBool>,
    /// The TTL applied by this client's last successful acquire or renewal.
    lock_lifetime: Arc<Mutex<Option<Duration>>>,
}

impl MemoryDcs {
    /// A new, empty store on the system clock, with a first client for `layout`.
    pub fn new(layout: KeyLayout) -> Self {
        MemoryDcs::with_clock(layout, Arc::new(SystemClock::new()))
    }

    /// A new, empty store whose TTLs run on `clock`.
    pub fn with_clock(layout: KeyLayout, clock: Arc<dyn Clock>) -> Self {
        MemoryDcs {
            shared: Arc::new(Shared {
                store: Mutex::new(Store::default()),
                changed: Notify::new(),
                clock,
                max_ttl: Mutex::new(None),
            }),
            layout,
            reachable: Arc::new(AtomicBool::new(true)),
            lock_lifetime: Arc::new(Mutex::new(None)),
        }
    }

    /// Another client of the same store (same scope), reachable on its own.
    pub fn connect(&self) -> Self {
        MemoryDcs {
            shared: Arc::clone(&self.shared),
            layout: self.layout.clone(),
            reachable: Arc::new(AtomicBool::new(true)),
            lock_lifetime: Arc::new(Mutex::new(None)),
        }
    }

    /// A client of the same store for another scope (or namespace), as a
    /// member of another cluster sharing the DCS would have.
    pub fn connect_to(&self, layout: KeyLayout) -> Self {
        MemoryDcs {
            layout,
            ..self.connect()
        }
    }

    /// Makes the whole store (every client) grant TTLs of at most `max`, as a
    /// ZooKeeper server clamps session timeouts to its `maxSessionTimeout`;
    /// `None` grants every TTL as asked. Applies from the next TTL-bound write.
    pub fn set_max_ttl(&self, max: Option<Duration>) {
        *self
            .shared
            .max_ttl
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = max;
    }

    /// Cuts this client off from the store (every call fails with
    /// [`DcsError::Unreachable`]) or reconnects it.
    pub fn set_reachable(&self, reachable: bool) {
        self.reachable.store(reachable, Ordering::SeqCst);
    }

    /// Stores raw bytes under a path relative to the scope, bypassing every
    /// check, as a third party writing to the DCS would.
    pub fn put_raw(&self, relative_key: &str, value: &[u8]) {
        let path = format!("{}{relative_key}", self.layout.prefix());
        let mut store = self.lock_store();
        store.put(path, value.to_vec(), None);
        drop(store);
        self.shared.changed.notify_waiters();
    }

    fn lock_store(&self) -> MutexGuard<'_, Store> {
        // A panic while holding the lock cannot leave the map half-updated in
        // a way that matters more than losing the whole store would.
        self.shared
            .store
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The store, after a reachability check and TTL expiry.
    fn store(&self) -> Result<MutexGuard<'_, Store>, DcsError> {
        if !self.reachable.load(Ordering::SeqCst) {
            return Err(DcsError::Unreachable {
                backend: BACKEND,
                message: "this client is cut off from the store".to_owned(),
            });
        }
        let now = self.shared.clock.now();
        let mut store = self.lock_store();
        let before = store.revision;
        store.expire(now);
        if store.revision != before {
            self.shared.changed.notify_waiters();
        }
        Ok(store)
    }

    fn path(&self, key: &DcsKey) -> String {
        self.layout.path(key)
    }

    /// The TTL the store grants for `ttl`: clamped to its maximum, if any.
    fn granted(&self, ttl: Duration) -> Duration {
        let max = *self
            .shared
            .max_ttl
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        max.map_or(ttl, |max| ttl.min(max))
    }

    fn expiry(&self, ttl: Duration) -> Option<Duration> {
        Some(self.shared.clock.now() + self.granted(ttl))
    }

    /// Remembers the TTL granted to this client's lock for `ttl`.
    fn note_lock_lifetime(&self, ttl: Duration) {
        let granted = self.granted(ttl);
        *self
            .lock_lifetime
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(granted);
    }

    fn holder(&self, store: &Store) -> Option<Result<LeaderLock, ()>> {
        store
            .entries
            .get(&self.path(&DcsKey::Leader))
            .map(|stored| decode_leader(&stored.value).map_err(|_| ()))
    }

    fn changed(&self) {
        self.shared.changed.notify_waiters();
    }
}

fn check(key: &DcsKey, stored: Option<&Stored>, expected: Expected) -> Result<(), DcsError> {
    let found = stored.map(|s| s.version);
    let ok = match expected {
        Expected::Any => true,
        Expected::Absent => found.is_none(),
        Expected::Version(version) => found == Some(version),
    };
    if ok {
        Ok(())
    } else {
        Err(DcsError::Conflict {
            key: key.relative_path(),
            expected,
            found,
        })
    }
}

#[async_trait]
impl Dcs for MemoryDcs {
    fn layout(&self) -> &KeyLayout {
        &self.layout
    }

    async fn read_view(&self) -> Result<ClusterView, DcsError> {
        let store = self.store()?;
        let prefix = self.layout.prefix();
        let entries: Vec<RawEntry> = store
            .under(&prefix)
            .map(|(path, stored)| RawEntry {
                key: path[prefix.len()..].to_owned(),
                value: stored.value.clone(),
                version: stored.version,
            })
            .collect();
        Ok(ClusterView::decode(store.revision, entries))
    }

    async fn try_initialize(&self) -> Result<bool, DcsError> {
        let mut store = self.store()?;
        let path = self.path(&DcsKey::Initialize);
        if store.entries.contains_key(&path) {
            return Ok(false);
        }
        store.put(path, encode_initialize(&Initialize::InProgress), None);
        drop(store);
        self.changed();
        Ok(true)
    }

    async fn complete_initialize(&self, system_id: SystemId) -> Result<(), DcsError> {
        let mut store = self.store()?;
        let path = self.path(&DcsKey::Initialize);
        let stored = store.entries.get(&path);
        let in_progress = stored
            .map(|s| decode_initialize(&s.value) == Ok(Initialize::InProgress))
            .unwrap_or(false);
        if !in_progress {
            return Err(DcsError::Conflict {
                key: DcsKey::Initialize.relative_path(),
                expected: Expected::Any,
                found: stored.map(|s| s.version),
            });
        }
        store.put(path, encode_initialize(&Initialize::Done(system_id)), None);
        drop(store);
        self.changed();
        Ok(())
    }

    async fn cancel_initialize(&self) -> Result<(), DcsError> {
        let mut store = self.store()?;
        let path = self.path(&DcsKey::Initialize);
        let in_progress = store
            .entries
            .get(&path)
            .map(|s| decode_initialize(&s.value) == Ok(Initialize::InProgress));
        if in_progress == Some(true) {
            store.remove(&path);
            drop(store);
            self.changed();
        }
        Ok(())
    }

    async fn acquire_leader(&self, me: &MemberName, ttl: Duration) -> Result<bool, DcsError> {
        let mut store = self.store()?;
        match self.holder(&store) {
            Some(Ok(lock)) if &lock.holder == me => {
                // Held already: acquiring again extends it, as the other
                // backends do (the engine counts the lock from this call).
                let expiry = self.expiry(ttl);
                if let Some(stored) = store.entries.get_mut(&self.path(&DcsKey::Leader)) {
                    stored.expires_at = expiry;
                }
                drop(store);
                self.note_lock_lifetime(ttl);
                return Ok(true);
            }
            Some(Ok(_)) => return Ok(false),
            // Unreadable is never free.
            Some(Err(())) => return Ok(false),
            None => {}
        }
        let value = encode_leader(&LeaderLock { holder: me.clone() });
        let expiry = self.expiry(ttl);
        store.put(self.path(&DcsKey::Leader), value, expiry);
        drop(store);
        self.note_lock_lifetime(ttl);
        self.changed();
        Ok(true)
    }

    async fn renew_leader(&self, me: &MemberName, ttl: Duration) -> Result<(), DcsError> {
        let mut store = self.store()?;
        let path = self.path(&DcsKey::Leader);
        match self.holder(&store) {
            Some(Ok(lock)) if &lock.holder == me => {
                let expiry = self.expiry(ttl);
                if let Some(stored) = store.entries.get_mut(&path) {
                    // Renewal extends the lease; the value and version stay.
                    // It never shortens it: a renewal sent with an older,
                    // shorter ttl may land after one with the new ttl, whose
                    // promise the holder's fence already counts on.
                    stored.expires_at = stored.expires_at.max(expiry);
                }
                self.note_lock_lifetime(ttl);
                Ok(())
            }
            other => Err(DcsError::LockNotHeld {
                member: me.clone(),
                holder: other.and_then(Result::ok).map(|lock| lock.holder),
            }),
        }
    }

    fn lock_lifetime(&self) -> Option<Duration> {
        *self
            .lock_lifetime
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    async fn release_leader(&self, me: &MemberName) -> Result<(), DcsError> {
        let mut store = self.store()?;
        match self.holder(&store) {
            Some(Ok(lock)) if &lock.holder == me => {
                store.remove(&self.path(&DcsKey::Leader));
                drop(store);
                self.changed();
                Ok(())
            }
            other => Err(DcsError::LockNotHeld {
                member: me.clone(),
                holder: other.and_then(Result::ok).map(|lock| lock.holder),
            }),
        }
    }

    async fn publish_member(&self, member: &Member, ttl: Duration) -> Result<(), DcsError> {
        let mut store = self.store()?;
        let expiry = self.expiry(ttl);
        let path = self.path(&DcsKey::Member(member.name.clone()));
        let value = encode_member(member);
        if let Some(stored) = store.entries.get_mut(&path) {
            if stored.value == value {
                // Unchanged: only its TTL moves, as a lease keep-alive would,
                // with no new revision to wake the watchers.
                stored.expires_at = expiry;
                return Ok(());
            }
        }
        store.put(path, value, expiry);
        drop(store);
        self.changed();
        Ok(())
    }

    async fn remove_member(&self, name: &MemberName) -> Result<(), DcsError> {
        let mut store = self.store()?;
        store.remove(&self.path(&DcsKey::Member(name.clone())));
        drop(store);
        self.changed();
        Ok(())
    }

    async fn remove_cluster(&self) -> Result<(), DcsError> {
        let mut store = self.store()?;
        // With its trailing `/`: scope `a` must not match `ab`'s keys.
        let prefix = self.layout.prefix();
        let doomed: Vec<String> = store.under(&prefix).map(|(path, _)| path.clone()).collect();
        for path in &doomed {
            store.remove(path);
        }
        drop(store);
        self.changed();
        Ok(())
    }

    async fn write(&self, record: &Record, expected: Expected) -> Result<Version, DcsError> {
        let key = record.key();
        let path = self.path(&key);
        let mut store = self.store()?;
        check(&key, store.entries.get(&path), expected)?;
        let version = store.put(path, record.encode(), None);
        drop(store);
        self.changed();
        Ok(version)
    }

    async fn delete(&self, key: &DcsKey, expected: Expected) -> Result<(), DcsError> {
        if !is_record_key(key) {
            return Err(DcsError::InvalidRequest(format!(
                "`{key}` is not deleted through `delete`"
            )));
        }
        let path = self.path(key);
        let mut store = self.store()?;
        check(key, store.entries.get(&path), expected)?;
        store.remove(&path);
        drop(store);
        self.changed();
        Ok(())
    }

    async fn watch(
        &self,
        after_revision: u64,
        timeout: Duration,
    ) -> Result<WatchOutcome, DcsError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.shared.changed.notified();
            tokio::pin!(notified);
            // Register before checking, so a change between the check and the
            // wait is not missed.
            notified.as_mut().enable();
            let next_expiry = {
                let store = self.store()?;
                if store.revision > after_revision {
                    return Ok(WatchOutcome::Changed);
                }
                store.entries.values().filter_map(|s| s.expires_at).min()
            };
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(WatchOutcome::TimedOut);
            }
            // Expiry has no writer to notify us: look again when the next key
            // is due (a clock that tests move by hand is caught within the maximum).
            let until_expiry = next_expiry.map_or(EXPIRY_POLL_MAX, |at| {
                at.saturating_sub(self.shared.clock.now())
                    .clamp(EXPIRY_POLL_MIN, EXPIRY_POLL_MAX)
            });
            let wait = (deadline - now).min(until_expiry);
            let _ = tokio::time::timeout(wait, notified).await;
        }
    }
}
