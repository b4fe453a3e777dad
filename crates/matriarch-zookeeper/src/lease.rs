//! Client-side TTLs of the ephemeral znodes a client owns.
//!
//! A ZooKeeper session outlives a hung caller: the client library answers the
//! server's pings on its own, so an ephemeral znode lives as long as the
//! process does, renewed or not. The [`matriarch_dcs::Dcs`] contract is that
//! an unrenewed lock (or member record) lives for its TTL and not longer, so
//! each ephemeral znode this client creates gets a lease here: a deadline that
//! `acquire_leader`/`renew_leader` (or `publish_member`) push forward. When a
//! deadline passes, the lease is marked expired (from then on the client
//! reports the lock as lost) and the reaper task deletes the znode. If the
//! process dies or is cut off, the session timeout (the same TTL) ends the
//! znode on the server side instead.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::time::Instant;

/// How soon the reaper retries deleting an expired znode it could not delete.
pub(crate) const REAP_RETRY: Duration = Duration::from_millis(250);

/// Which ephemeral znode a lease covers.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum LeaseKey {
    /// `leader`.
    Leader,
    /// `members/<name>`.
    Member(String),
}

/// Where a lease stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Valid until this instant.
    Active(Instant),
    /// Ran out; the znode is to be deleted.
    Expired,
}

/// A lease on one ephemeral znode of one session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Lease {
    /// The session that owns (or may own) the znode.
    pub(crate) session: i64,
    state: State,
}

/// Every lease of one client.
#[derive(Debug, Default)]
pub(crate) struct Leases {
    entries: BTreeMap<LeaseKey, Lease>,
}

impl Leases {
    /// Whether `key` is held by `session` at `now` (an active lease whose
    /// deadline has not passed).
    pub(crate) fn is_live(&self, key: &LeaseKey, session: i64, now: Instant) -> bool {
        matches!(
            self.entries.get(key),
            Some(Lease { session: s, state: State::Active(deadline) }) if *s == session && *deadline > now
        )
    }

    /// Whether `session` has a lease on `key` that ran out (expired, or past
    /// its deadline and not yet noticed by the reaper).
    pub(crate) fn has_run_out(&self, key: &LeaseKey, session: i64, now: Instant) -> bool {
        match self.entries.get(key) {
            Some(lease) if lease.session == session => match lease.state {
                State::Expired => true,
                State::Active(deadline) => deadline <= now,
            },
            _ => false,
        }
    }

    /// Records that a create of `key` by `session` is about to be sent, so
    /// that a create that lands after its caller gave up still ends at
    /// `deadline`. Keeps a live lease as it is (only a confirmation extends it).
    pub(crate) fn tentative(
        &mut self,
        key: LeaseKey,
        session: i64,
        deadline: Instant,
        now: Instant,
    ) {
        if !self.is_live(&key, session, now) {
            self.entries.insert(
                key,
                Lease {
                    session,
                    state: State::Active(deadline),
                },
            );
        }
    }

    /// Records that `session` owns `key` until `deadline`.
    pub(crate) fn confirm(&mut self, key: LeaseKey, session: i64, deadline: Instant) {
        self.entries.insert(
            key,
            Lease {
                session,
                state: State::Active(deadline),
            },
        );
    }

    /// Extends a live lease to `deadline`; `false` if it was not live at `now`.
    pub(crate) fn renew(
        &mut self,
        key: &LeaseKey,
        session: i64,
        deadline: Instant,
        now: Instant,
    ) -> bool {
        if !self.is_live(key, session, now) {
            return false;
        }
        self.confirm(key.clone(), session, deadline);
        true
    }

    /// Drops the lease on `key`.
    pub(crate) fn forget(&mut self, key: &LeaseKey) {
        self.entries.remove(key);
    }

    /// Drops the lease on `key` if it is still the expired lease of `session`
    /// (not revived by a publish in the meantime).
    pub(crate) fn forget_expired(&mut self, key: &LeaseKey, session: i64) {
        if self.is_expired(key, session) {
            self.entries.remove(key);
        }
    }

    /// Whether `key` has an expired lease of `session`.
    pub(crate) fn is_expired(&self, key: &LeaseKey, session: i64) -> bool {
        matches!(
            self.entries.get(key),
            Some(Lease { session: s, state: State::Expired }) if *s == session
        )
    }

    /// The keys `session` holds live leases on at `now`, with their deadlines.
    pub(crate) fn live_of(&self, session: i64, now: Instant) -> Vec<(LeaseKey, Instant)> {
        self.entries
            .iter()
            .filter_map(|(key, lease)| match lease.state {
                State::Active(deadline) if lease.session == session && deadline > now => {
                    Some((key.clone(), deadline))
                }
                _ => None,
            })
            .collect()
    }

    /// Drops every lease of a session that ended (its znodes went with it).
    pub(crate) fn forget_session(&mut self, session: i64) {
        self.entries.retain(|_, lease| lease.session != session);
    }

    /// Marks every lease whose deadline passed as expired and returns every
    /// expired lease (new and still to be deleted).
    pub(crate) fn expire_due(&mut self, now: Instant) -> Vec<(LeaseKey, Lease)> {
        for lease in self.entries.values_mut() {
            if matches!(lease.state, State::Active(deadline) if deadline <= now) {
                lease.state = State::Expired;
            }
        }
        self.entries
            .iter()
            .filter(|(_, lease)| lease.state == State::Expired)
            .map(|(key, lease)| (key.clone(), *lease))
            .collect()
    }

    /// When the reaper should look again: the earliest deadline, or soon if an
    /// expired znode is still to be deleted; `None` if there is nothing to do.
    pub(crate) fn next_wake(&self, now: Instant) -> Option<Instant> {
        self.entries
            .values()
            .map(|lease| match lease.state {
                State::Active(deadline) => deadline,
                State::Expired => now + REAP_RETRY,
            })
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_lives_until_its_deadline_and_only_confirmation_extends_it() {
        let now = Instant::now();
        let ttl = Duration::from_secs(4);
        let mut leases = Leases::default();
        let key = LeaseKey::Leader;
        assert!(!leases.is_live(&key, 1, now));
        leases.tentative(key.clone(), 1, now + ttl, now);
        assert!(leases.is_live(&key, 1, now));
        assert!(
            !leases.is_live(&key, 2, now),
            "another session holds nothing"
        );
        // A second tentative lease does not extend a live one.
        leases.tentative(key.clone(), 1, now + ttl * 2, now);
        assert!(!leases.is_live(&key, 1, now + ttl));
        assert!(leases.has_run_out(&key, 1, now + ttl));
        // Renewal only while live.
        assert!(leases.renew(&key, 1, now + ttl + ttl / 2, now + ttl / 2));
        assert!(leases.is_live(&key, 1, now + ttl));
        assert!(!leases.renew(&key, 1, now + ttl * 3, now + ttl * 2));
    }

    /// Confirmed leases of session 7: the lock's for `leader_secs` from
    /// `now`, member `n1`'s for `member_secs`; and the member's key.
    fn lock_and_member(now: Instant, leader_secs: u64, member_secs: u64) -> (Leases, LeaseKey) {
        let mut leases = Leases::default();
        let member = LeaseKey::Member("n1".into());
        leases.confirm(LeaseKey::Leader, 7, now + Duration::from_secs(leader_secs));
        leases.confirm(member.clone(), 7, now + Duration::from_secs(member_secs));
        (leases, member)
    }

    #[test]
    fn live_leases_of_a_session_are_listed_for_a_session_change() {
        let now = Instant::now();
        let (mut leases, member) = lock_and_member(now, 5, 1);
        leases.confirm(
            LeaseKey::Member("n2".into()),
            8,
            now + Duration::from_secs(5),
        );
        assert_eq!(
            leases.live_of(7, now),
            [
                (LeaseKey::Leader, now + Duration::from_secs(5)),
                (member, now + Duration::from_secs(1)),
            ]
        );
        // A lease past its deadline is not moved: it ran out.
        assert_eq!(
            leases.live_of(7, now + Duration::from_secs(2)),
            [(LeaseKey::Leader, now + Duration::from_secs(5))]
        );
    }

    #[test]
    fn expired_leases_are_reported_until_forgotten() {
        let now = Instant::now();
        let (mut leases, _) = lock_and_member(now, 1, 3);
        assert_eq!(leases.next_wake(now), Some(now + Duration::from_secs(1)));
        let due = leases.expire_due(now + Duration::from_secs(2));
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].0, LeaseKey::Leader);
        assert!(leases.is_expired(&LeaseKey::Leader, 7));
        assert!(!leases.is_live(&LeaseKey::Leader, 7, now));
        assert_eq!(
            leases.next_wake(now + Duration::from_secs(2)),
            Some(now + Duration::from_secs(2) + REAP_RETRY)
        );
        leases.forget_expired(&LeaseKey::Leader, 7);
        assert!(!leases.has_run_out(&LeaseKey::Leader, 7, now));
        leases.forget_session(7);
        assert_eq!(leases.next_wake(now), None);
    }
}
