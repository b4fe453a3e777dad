//! The decision function: what was observed goes in, actions come out.
//!
//! [`decide`] does no I/O, reads no clock and draws no random numbers: the
//! loop (or a simulation) passes every fact in, so every branch is a unit test
//! and a simulation replays exactly.

mod failsafe;
mod follow;
mod leader;
mod memory;
mod observed;
mod promotion;
mod race;
mod slots;
mod standby;
mod start_timeout;
mod switchover;
mod sync;
mod upstream;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use matriarch_model::{
    ClusterConfig, ClusterView, Failsafe, Initialize, Lsn, Member, MemberName, MemberState, Role,
    StandbyCluster, SynchronousMode, Timeline, Version,
};

pub use follow::LOOPS_BEFORE_REWIND;
pub use leader::postgres_silence_limit;
pub use memory::{Memory, Outcome};
pub use observed::{
    FailsafeInputs, FailsafeRound, LastLeader, LocalPostgres, LocalRole, NodeSettings, PeerReport,
    ReceivedHeartbeat,
};
pub use race::implausible_records;
pub use slots::SlotPlan;

use failsafe::dcs_unreachable;
use follow::follower;
use leader::leader;
use race::no_leader;

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
    /// ([`Memory::stepped_down_at`]): if nobody takes the lock, this node
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

/// The role the engine plays after this loop, for reporting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EngineRole {
    /// Holds the lock and runs the primary.
    Leader,
    /// Follows the leader.
    Replica,
    /// Racing for or being promoted into leadership.
    Candidate,
    /// Stepping down.
    Demoting,
    /// Not yet part of a running cluster.
    Uninitialized,
    /// Cannot tell (DCS unreachable, unreadable keys): acts only for safety.
    Uncertain,
}

/// The output of [`decide`].
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    /// The plan, run in order until one fails.
    pub actions: Vec<Action>,
    /// The role after this loop.
    pub role: EngineRole,
    /// Why, in a few words, for the log.
    pub reason: String,
    /// The time (monotonic) by which this node must have stopped taking
    /// writes unless it renews the lock first; the loop wakes up for it.
    pub demotion_deadline: Option<Duration>,
    /// Why this node holds back (does not race, does not follow, waits for
    /// something or someone): shown as `pending` in `GET /patroni` and
    /// logged at info when it begins. `None` when nothing is held back.
    pub pending: Option<String>,
}

/// The DCS as observed this loop.
#[derive(Clone, Debug, PartialEq)]
pub enum DcsObservation {
    /// The view was read.
    View(Box<ClusterView>),
    /// The DCS could not be reached in time.
    Unreachable,
}

/// Everything [`decide`] looks at.
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
    fn demotion_deadline(&self) -> Option<Duration> {
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

    /// A failsafe heartbeat acknowledged less than ttl ago.
    fn fresh_heartbeat(&self) -> Option<&ReceivedHeartbeat> {
        self.failsafe
            .heartbeat
            .as_ref()
            .filter(|hb| self.now < hb.received_at + self.config.ttl)
    }

    fn member_record(&self) -> Member {
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

/// The plan under construction.
struct Plan {
    actions: Vec<Action>,
    deadline: Option<Duration>,
    /// Appended to the reason (why failsafe did not keep a primary leading).
    reason_note: Option<String>,
}

impl Plan {
    fn done(self, role: EngineRole, reason: impl Into<String>) -> Decision {
        let mut reason = reason.into();
        if let Some(note) = self.reason_note {
            reason = format!("{reason} ({note})");
        }
        Decision {
            actions: self.actions,
            role,
            reason,
            demotion_deadline: self.deadline,
            pending: None,
        }
    }

    fn push(&mut self, action: Action) {
        self.actions.push(action);
    }

    /// Gives the lock up instead of renewing it: the plan so far, then
    /// `ReleaseLock`.
    fn release_lock(mut self, role: EngineRole, reason: impl Into<String>) -> Decision {
        self.actions.retain(|a| *a != Action::RenewLock);
        self.push(Action::ReleaseLock);
        self.done(role, reason)
    }

    /// A decision to hold back: the reason is also what is pending.
    fn wait(self, role: EngineRole, reason: impl Into<String>) -> Decision {
        let mut decision = self.done(role, reason);
        decision.pending = Some(decision.reason.clone());
        decision
    }
}

/// Decides what this node does in this loop.
pub fn decide(inputs: &Inputs<'_>) -> Decision {
    let mut plan = Plan {
        actions: Vec::new(),
        deadline: None,
        reason_note: None,
    };
    let view = match inputs.dcs {
        DcsObservation::View(view) => view,
        DcsObservation::Unreachable => return dcs_unreachable(inputs, plan),
    };
    let mut record = inputs.member_record();
    standby::mark_standby_leader(inputs, view, &mut record);
    plan.push(Action::PublishMember(Box::new(record)));

    if inputs.config.pause {
        return paused(inputs, view, plan);
    }

    let mut decision = decide_with_view(inputs, view, plan);
    if decision.pending.is_none()
        && matches!(
            inputs.local.role,
            LocalRole::Stopped { .. } | LocalRole::NoData
        )
    {
        // PostgreSQL does not run and the last start said why (a full
        // disk): whatever this loop does, that is what holds it back.
        decision.pending = inputs.memory.start_failure.clone();
    }
    decision
}

fn decide_with_view(inputs: &Inputs<'_>, view: &ClusterView, mut plan: Plan) -> Decision {
    match &view.leader {
        Some(Err(_)) => {
            // An unreadable lock is neither ours nor free.
            if inputs.local.role == LocalRole::Primary {
                plan.push(Action::Demote(DemoteMode::Immediate));
                plan.push(Action::Withdraw);
                return plan.done(
                    EngineRole::Demoting,
                    "the leader key is unreadable: a primary without a readable lock stops taking writes",
                );
            }
            plan.wait(
                EngineRole::Uncertain,
                "the leader key is unreadable: waiting",
            )
        }
        Some(Ok(lock)) if lock.value.holder == inputs.node.name => leader(inputs, view, plan),
        Some(Ok(lock)) => {
            let holder = lock.value.holder.clone();
            follower(inputs, view, &holder, plan)
        }
        None => no_leader(inputs, view, plan),
    }
}

fn paused(inputs: &Inputs<'_>, view: &ClusterView, mut plan: Plan) -> Decision {
    match view.leader_name() {
        Some(holder) if holder == &inputs.node.name => {
            plan.deadline = inputs.demotion_deadline();
            plan.push(Action::RenewLock);
            plan.done(
                EngineRole::Leader,
                "paused: keeping the lock, changing nothing",
            )
        }
        None if inputs.local.role == LocalRole::Primary && view.leader.is_none() => {
            plan.push(Action::AcquireLock);
            plan.done(
                EngineRole::Leader,
                "paused: the running primary takes the free lock",
            )
        }
        _ => plan.done(EngineRole::Replica, "paused: observing only"),
    }
}

fn cluster_system_id(view: &ClusterView) -> Option<Result<Initialize, ()>> {
    view.initialize
        .as_ref()
        .map(|entry| entry.as_ref().map(|v| v.value).map_err(|_| ()))
}

/// The newest timeline the cluster is known to have reached.
fn cluster_timeline(view: &ClusterView) -> Option<Timeline> {
    let from_history = history_next_timeline(view);
    // A record more than one promotion beyond the history is impossible
    // (a leftover or forged key): it must not hold every member back.
    let from_members = view
        .healthy_records()
        .filter_map(|m| m.timeline)
        .filter(|t| from_history.is_none_or(|next| t.0 <= next.0.saturating_add(1)))
        .max();
    from_history.into_iter().chain(from_members).max()
}

fn member<'v>(view: &'v ClusterView, name: &MemberName) -> Option<&'v Member> {
    view.members
        .get(name.as_str())
        .and_then(|entry| entry.as_ref().ok())
        .map(|v| &v.value)
}

/// Moves the plan out, for a helper that decides the whole loop.
fn take(plan: &mut Plan) -> Plan {
    Plan {
        actions: std::mem::take(&mut plan.actions),
        deadline: plan.deadline,
        reason_note: plan.reason_note.take(),
    }
}

/// The timeline after the newest one the history key says ended: the
/// cluster's current timeline as the history knows it.
fn history_next_timeline(view: &ClusterView) -> Option<Timeline> {
    match &view.history {
        Some(Ok(history)) => history
            .value
            .0
            .iter()
            .map(|entry| Timeline(entry.timeline.0.saturating_add(1)))
            .max(),
        _ => None,
    }
}

/// Whether another member's record says it could win a race: running as a
/// replica, allowed to fail over, on the cluster's timeline, and in
/// synchronous mode named by the sync key (or its writer).
fn candidate_looks_able(inputs: &Inputs<'_>, view: &ClusterView, candidate: &Member) -> bool {
    let timeline_ok = match (cluster_timeline(view), candidate.timeline) {
        (Some(cluster), Some(own)) => own >= cluster,
        (Some(_), None) => false,
        (None, _) => true,
    };
    let sync_ok = inputs.config.synchronous_mode == SynchronousMode::Off
        || in_sync_key(view, &candidate.name)
        || wrote_sync_key(view, &candidate.name);
    // In failsafe mode a member missing from the failsafe key does not race.
    let failsafe_ok = !inputs.config.failsafe_mode
        || match &view.failsafe {
            Some(Ok(key)) => key.value.0.is_empty() || key.value.0.contains_key(&candidate.name),
            Some(Err(_)) => false,
            None => true,
        };
    candidate.state == MemberState::Running
        && candidate.role == Role::Replica
        && failsafe_ok
        && candidate.tags.allows_failover()
        && candidate.wal_position().is_some()
        && timeline_ok
        && sync_ok
}

fn wrote_sync_key(view: &ClusterView, name: &MemberName) -> bool {
    matches!(&view.sync, Some(Ok(sync)) if sync.value.leader.as_ref() == Some(name))
}

fn in_sync_key(view: &ClusterView, name: &MemberName) -> bool {
    matches!(&view.sync, Some(Ok(sync)) if sync.value.sync_standbys.contains(name))
}
