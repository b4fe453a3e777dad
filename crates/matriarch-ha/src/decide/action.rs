//! The plan's vocabulary: the [`Action`]s a decision asks the loop to carry
//! out, and what some of them carry.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use matriarch_model::{DesiredSlots, Failsafe, Lsn, Member, MemberName, StandbyCluster, Version};

/// Where clients should go: writers to `primary`, readers to `replicas`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Routes {
    /// The primary.
    pub primary: MemberName,
    /// Healthy replicas that take read traffic.
    pub replicas: BTreeSet<MemberName>,
}

/// How to stop taking writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DemoteMode {
    /// A clean, fast shutdown: connected replicas receive all WAL first.
    Graceful,
    /// A graceful stop of the primary for a planned switchover, remembered
    /// ([`Memory::stepped_down_at`](crate::Memory::stepped_down_at)): if nobody takes the lock, this node
    /// starts the same data directory as primary again instead of racing
    /// and promoting onto a new timeline.
    Switchover,
    /// Stop at once (lost lock, demotion deadline).
    Immediate,
}

/// Something the loop should do. A decision is a plan: the loop runs its
/// actions in order and stops at the first that fails.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Publish this member's record.
    PublishMember(Box<Member>),
    /// Race for `initialize`; if won, run bootstrap, record the system id,
    /// take the lock (and give up the race if bootstrap fails).
    Bootstrap,
    /// Take the free leader lock (fails the plan if another node won).
    AcquireLock,
    /// Renew the lock we hold.
    RenewLock,
    /// Release the lock we hold.
    ReleaseLock,
    /// Promote the local replica (we hold the lock).
    Promote,
    /// Start PostgreSQL as primary (we hold the lock and it is stopped).
    StartPrimary,
    /// Start PostgreSQL as a replica following `upstream`, or read-only
    /// without one.
    StartReplica {
        /// Whom to follow.
        upstream: Option<MemberName>,
    },
    /// Point the running replica at another upstream.
    Follow(MemberName),
    /// The standby leader of a standby cluster: replicate from the source
    /// the section names (start PostgreSQL as its replica if stopped,
    /// point it there if running).
    FollowStandbySource(Box<StandbyCluster>),
    /// Stop taking writes and stay stopped.
    Demote(DemoteMode),
    /// Repair a diverged timeline from this member with pg_rewind.
    Rewind(MemberName),
    /// Take a base backup from this member into an empty data directory
    /// (replacing a diverged one that rewind could not repair).
    CloneFrom(MemberName),
    /// Send clients here.
    Route(Routes),
    /// Take this node out of the writer routes.
    Withdraw,
    /// Set `synchronous_standby_names` to these members (empty: asynchronous,
    /// unless `any_standby`).
    SetSyncStandbys {
        /// The standbys.
        standbys: BTreeSet<MemberName>,
        /// How many must acknowledge a commit.
        count: u32,
        /// The primary's WAL position, taken while PostgreSQL already
        /// enforced this setting; `None` when this action changes it (commits
        /// until the change applies do not wait for the new standbys).
        at: Option<Lsn>,
        /// Wait for any standby (`*`, with `standbys` empty): strict mode
        /// without an eligible standby.
        any_standby: bool,
    },
    /// Write the `sync` key (compare-and-swap on `expected`).
    WriteSyncState {
        /// The standbys a commit may have been acknowledged by.
        standbys: BTreeSet<MemberName>,
        /// How many must acknowledge a commit.
        count: u32,
        /// The version read, `None` if absent.
        expected: Option<Version>,
    },
    /// Delete the carried-out or stale `failover` key.
    ClearFailoverRequest(Version),
    /// Write the `failsafe` key: the members (name → REST API URL) a
    /// primary must reach while the DCS is unreachable.
    WriteFailsafe(Failsafe),
    /// Every member of the failsafe set acknowledged the round sent at
    /// `round_sent_at`: keep leading, re-arm the write fence until the
    /// deadline that round allows.
    FailsafeExtend {
        /// When the round was sent.
        round_sent_at: Duration,
    },
    /// Take the former leader out of the writer routes: the first step of a
    /// failover after it lost its lock. A router failure never stops the
    /// promotion.
    WithdrawFormerLeader(MemberName),
    /// A switchover this node stepped down for did not complete: report why
    /// (the REST API answers the request with it) before leading again.
    SwitchoverAbandoned(String),
    /// Make the local server's replication slots match the plan (the
    /// leader: its members' and the permanent slots; a replica: copies of
    /// them). Never fails the plan: an error is logged and retried on the
    /// next loop.
    ReconcileSlots(Box<SlotPlan>),
}

/// What [`Action::ReconcileSlots`] asks for.
#[derive(Clone, Debug, PartialEq)]
pub struct SlotPlan {
    /// The slots the local server should have.
    pub desired: DesiredSlots,
    /// Leader only: when (monotonic) each member slot's member was last
    /// seen, for [`crate::Memory::slot_members_seen`]; the slots kept are
    /// the ones named here, and they go into the `status` key's
    /// `retain_slots`.
    pub members_seen: Option<BTreeMap<String, Duration>>,
    /// Invalid entries of `slots`, `ignore_slots` and `member_slots_ttl`,
    /// left out (the engine logs them once).
    pub config_errors: Vec<String>,
}
