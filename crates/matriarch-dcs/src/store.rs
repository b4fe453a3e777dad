//! The [`Dcs`] trait every backend implements, and what its calls take and
//! return beyond the model's types.

use std::time::Duration;

use async_trait::async_trait;
use matriarch_model::{
    ClusterView, DcsKey, KeyLayout, Member, MemberName, Record, SystemId, Version,
};

use crate::error::{DcsError, Expected};

/// What [`Dcs::watch`] saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WatchOutcome {
    /// Something under the scope changed after the given revision (a backend
    /// may also wake spuriously; callers re-read the view either way).
    Changed,
    /// Nothing changed before the timeout.
    TimedOut,
}

/// A client of the DCS for one cluster scope, as one member uses it.
///
/// Every call is bounded in time: a backend that cannot reach its servers
/// returns [`DcsError::Unreachable`] or [`DcsError::Timeout`] (never hangs,
/// and never reports that as a lost lock), so the engine can apply its
/// demotion deadline. Compare-and-swap failures are [`DcsError::Conflict`];
/// lock operations by a non-owner are [`DcsError::LockNotHeld`].
///
/// TTL-bound state (the leader lock and this member's record) belongs to the
/// client: one etcd lease or one ZooKeeper session per client. Two members
/// must use two clients; `Arc<D>` is a client that shares one.
///
/// A client that wraps another (counting, delaying, completing what passes
/// through) implements [`ForwardingDcs`](crate::ForwardingDcs) instead,
/// overriding only the calls it changes: it is then a `Dcs` that forwards the
/// rest.
#[async_trait]
pub trait Dcs: Send + Sync {
    /// The namespace and scope this client works under.
    fn layout(&self) -> &KeyLayout;

    /// Reads every key under the scope in one consistent call. A malformed
    /// value is an error in its own slot of the view, not a failed read.
    /// The view has every write that completed before the call began, this
    /// client's or another's (a backend answering from a cache checks that
    /// it is current, else reads the store).
    async fn read_view(&self) -> Result<ClusterView, DcsError>;

    /// Races to bootstrap the cluster: creates `initialize` (empty, meaning
    /// "in progress") if it is absent. `Ok(true)` for the one winner.
    async fn try_initialize(&self) -> Result<bool, DcsError>;

    /// Records the new cluster's system identifier in `initialize`; only the
    /// race winner calls it, and only while the key is still "in progress"
    /// (otherwise [`DcsError::Conflict`]).
    async fn complete_initialize(&self, system_id: SystemId) -> Result<(), DcsError>;

    /// Gives up a won race after a failed bootstrap: deletes `initialize` if it
    /// is still "in progress", so another member can try.
    async fn cancel_initialize(&self) -> Result<(), DcsError>;

    /// Takes the leader lock for `me` if it is free, bound to `ttl`.
    /// `Ok(true)` if `me` holds it afterwards (also when it already did),
    /// `Ok(false)` if another member holds it or the leader key is unreadable.
    async fn acquire_leader(&self, me: &MemberName, ttl: Duration) -> Result<bool, DcsError>;

    /// Extends the lock by `ttl` from now, only while it is still held by
    /// `me`; otherwise [`DcsError::LockNotHeld`] with the current holder.
    async fn renew_leader(&self, me: &MemberName, ttl: Duration) -> Result<(), DcsError>;

    /// How long the server keeps the leader lock after this client's last
    /// successful [`Dcs::acquire_leader`] or [`Dcs::renew_leader`] without
    /// another renewal, counted from when that request was sent: the lock's
    /// real lifetime, which may differ from the `ttl` asked for (servers
    /// clamp TTLs: ZooKeeper to its `maxSessionTimeout`, etcd to its minimum
    /// lease TTL; a ZooKeeper lock ends with its session). `None` before the
    /// first successful acquire or renewal.
    ///
    /// Correctness rule: an implementation must never report a lifetime
    /// longer than the server will keep the lock, also when this client is
    /// cut off or dies. The engine stops writes (demotion deadline, write
    /// fence, watchdog) by `min(ttl, lock_lifetime)` after a renewal was
    /// sent; a longer answer lets another member take the lock while this
    /// one still writes.
    fn lock_lifetime(&self) -> Option<Duration>;

    /// Deletes the lock only if `me` holds it (so a planned stop hands over at
    /// once); otherwise [`DcsError::LockNotHeld`].
    async fn release_leader(&self, me: &MemberName) -> Result<(), DcsError>;

    /// Writes this member's record, bound to `ttl` (it disappears if the
    /// member stops refreshing it). The engine calls it every loop: a backend
    /// may leave a record the DCS already holds unchanged, on this client's
    /// TTL-bound state, unwritten (etcd, ZooKeeper and
    /// [`MemoryDcs`](crate::MemoryDcs) do, so that an idle cluster makes no
    /// revisions and wakes no watcher), as long as the call still keeps the
    /// record alive as a write would.
    async fn publish_member(&self, member: &Member, ttl: Duration) -> Result<(), DcsError>;

    /// Deletes this member's record (on a clean shutdown).
    async fn remove_member(&self, name: &MemberName) -> Result<(), DcsError>;

    /// Wipes the whole cluster from the DCS, as `patronictl remove` does:
    /// deletes every key under [`KeyLayout::prefix`] (`/<namespace>/<scope>/`),
    /// whoever wrote it: the leader lock whoever holds it, every member's
    /// record, `initialize`, every record, and keys matriarch does not know.
    ///
    /// Rules every backend keeps:
    /// * Nothing outside the scope is touched, in particular no key of a
    ///   scope whose name begins with this one's (removing scope `a` leaves
    ///   `ab` alone): only paths under the prefix with its trailing `/`.
    /// * An empty or absent scope is not an error (removing twice succeeds).
    /// * Afterwards the cluster can be bootstrapped again
    ///   ([`Dcs::try_initialize`] wins); a member that held the lock no
    ///   longer does ([`Dcs::renew_leader`] fails with
    ///   [`DcsError::LockNotHeld`]), and a member that publishes its record
    ///   again writes it anew.
    /// * It is not a barrier against running members: one that writes at the
    ///   same time may leave a key behind (or write it again at once), so stop
    ///   the cluster's agents first.
    async fn remove_cluster(&self) -> Result<(), DcsError>;

    /// Writes a record if its key's version is as `expected`; returns the new
    /// version. A mismatch is [`DcsError::Conflict`] and writes nothing.
    async fn write(&self, record: &Record, expected: Expected) -> Result<Version, DcsError>;

    /// Deletes a record's key if its version is as `expected`. Only keys that
    /// hold a [`Record`] may be deleted this way.
    async fn delete(&self, key: &DcsKey, expected: Expected) -> Result<(), DcsError>;

    /// Waits until something under the scope changed after `after_revision`
    /// (a [`ClusterView::revision`]) or `timeout` passed.
    async fn watch(&self, after_revision: u64, timeout: Duration)
        -> Result<WatchOutcome, DcsError>;
}

/// The keys [`Dcs::write`] and [`Dcs::delete`] accept.
pub fn is_record_key(key: &DcsKey) -> bool {
    matches!(
        key,
        DcsKey::Config
            | DcsKey::Failover
            | DcsKey::Sync
            | DcsKey::History
            | DcsKey::Status
            | DcsKey::Failsafe
    )
}
