//! Everything [`decide`](super::decide) looks at, and what it derives from
//! the inputs alone.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use matriarch_model::{ClusterConfig, ClusterView, Member, MemberName, MemberState, Role};

use super::memory::Memory;
use super::observed::{
    FailsafeInputs, LocalPostgres, LocalRole, NodeSettings, PeerReport, ReceivedHeartbeat,
};

/// The DCS as observed this loop.
#[derive(Clone, Debug, PartialEq)]
pub enum DcsObservation {
    /// The view was read.
    View(Box<ClusterView>),
    /// The DCS could not be reached in time.
    Unreachable,
}

/// Everything [`decide`](super::decide) looks at.
#[derive(Clone, Debug)]
pub struct Inputs<'a> {
    /// This node.
    pub node: &'a NodeSettings,
    /// The dynamic configuration in force (the loop keeps the last valid one).
    pub config: &'a ClusterConfig,
    /// The DCS.
    pub dcs: &'a DcsObservation,
    /// The local PostgreSQL.
    pub local: &'a LocalPostgres,
    /// What peers report of themselves, fresher than their records if asked directly.
    pub peers: &'a BTreeMap<MemberName, PeerReport>,
    /// What the engine remembers.
    pub memory: &'a Memory,
    /// Monotonic time.
    pub now: Duration,
    /// Wall-clock time, for scheduled switchovers only.
    pub wall_clock: DateTime<Utc>,
    /// Failsafe mode: this loop's round (primary) and the last heartbeat
    /// acknowledged (replica).
    pub failsafe: &'a FailsafeInputs,
}

impl Inputs<'_> {
    /// When this node must have stopped taking writes: the lock, renewed by a
    /// request sent at `lock_renewed_at`, lives at least until then plus ttl;
    /// writes stop [`ClusterConfig::write_stop_margin`] earlier (the write
    /// fence kills the postmaster then, whatever the loop is doing).
    ///
    /// A failsafe round every member acknowledged extends it the same way:
    /// none of them races for the lock until ttl after it received the round.
    /// The promise stands even if the lock itself expired meanwhile (the
    /// DCS came back and said so): nobody may take it before then.
    ///
    /// The lock counts for `min(ttl, lock_lifetime)`: never longer than the
    /// DCS said it keeps it. A failsafe round counts for the ttl (the
    /// members' promise, not the lock).
    pub(super) fn demotion_deadline(&self) -> Option<Duration> {
        let lock = self
            .memory
            .lock_renewed_at
            .map(|at| at.saturating_add(self.memory.lock_ttl(self.config.ttl)));
        let failsafe = self
            .memory
            .failsafe_acked_at
            .map(|at| at.saturating_add(self.config.ttl));
        let until = lock.into_iter().chain(failsafe).max()?;
        let margin = self
            .config
            .write_stop_margin(self.memory.lock_ttl(self.config.ttl));
        Some(until.saturating_sub(margin))
    }

    /// What a start of the stopped primary in place counts from: a run of
    /// failed starts from its first, up to `primary_start_timeout`. Past it,
    /// decide restarts in place only when no replica could take over, and
    /// then each start counts from itself (nobody is waiting for the lock),
    /// as does a first start.
    pub(super) fn start_in_place_since(&self) -> Duration {
        let timeout = self.config.primary_start_timeout;
        self.memory
            .primary_start_failed_since
            .filter(|first| self.now < first.saturating_add(timeout))
            .unwrap_or(self.now)
    }

    /// A failsafe heartbeat acknowledged less than ttl ago.
    pub(super) fn fresh_heartbeat(&self) -> Option<&ReceivedHeartbeat> {
        self.failsafe
            .heartbeat
            .as_ref()
            .filter(|hb| self.now < hb.received_at + self.config.ttl)
    }

    /// This node's member record, as observed this loop.
    pub(super) fn member_record(&self) -> Member {
        let mut member = Member::new(
            self.node.name.clone(),
            self.node.conn_url.clone(),
            self.node.api_url.clone(),
        );
        member.tags = self.node.tags.clone();
        member.version = Some(env!("CARGO_PKG_VERSION").to_owned());
        member.timeline = self.local.timeline;
        member.xlog_location = self.local.wal_position;
        // As Patroni's touch_member: `patronictl pause --wait` waits for it.
        member.pause = self.config.pause;
        let (role, state) = match &self.local.role {
            LocalRole::NoData => (Role::Uninitialized, MemberState::Stopped),
            LocalRole::Stopped { crashed: true } => (Role::Replica, MemberState::Crashed),
            LocalRole::Stopped { crashed: false } => (Role::Replica, MemberState::Stopped),
            LocalRole::Primary => (Role::Primary, MemberState::Running),
            LocalRole::Replica { .. } => (Role::Replica, MemberState::Running),
            LocalRole::Unknown => (Role::Replica, MemberState::Other("unknown".to_owned())),
        };
        member.role = role;
        member.state = state;
        if let LocalRole::Replica { upstream } = &self.local.role {
            member.upstream = upstream.as_ref().map(|name| name.as_str().to_owned());
            member.received_lsn = self.local.wal_position;
            // Patroni's values: only a WAL receiver that streams is
            // "streaming" (a replica on a full disk is not, whatever it runs).
            member.replication_state = Some(
                if self.local.receiving {
                    "streaming"
                } else {
                    "in archive recovery"
                }
                .to_owned(),
            );
        } else if self.local.role == LocalRole::Primary {
            member.flushed_lsn = self.local.wal_position;
        }
        member
    }
}
