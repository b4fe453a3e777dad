//! The decision function: what was observed goes in, actions come out.
//!
//! [`decide`] does no I/O, reads no clock and draws no random numbers: the
//! loop (or a simulation) passes every fact in, so every branch is a unit test
//! and a simulation replays exactly.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use matriarch_model::{
    ClusterConfig, ClusterView, FailoverRequest, Failsafe, Initialize, Lsn, Member, MemberName,
    MemberState, Role, SynchronousMode, SystemId, Tags, Timeline, Version,
};

/// Who this node is.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeSettings {
    /// The member's name.
    pub name: MemberName,
    /// Its tags.
    pub tags: Tags,
    /// Its PostgreSQL connection URL, published in its member record.
    pub conn_url: String,
    /// Its REST API URL, published in its member record.
    pub api_url: String,
}

/// What the local PostgreSQL is doing, as the engine needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LocalRole {
    /// No data directory (or an empty one).
    NoData,
    /// Data exists and the server is not running; `crashed` when it did not
    /// shut down cleanly.
    Stopped {
        /// Whether the last shutdown was a crash.
        crashed: bool,
    },
    /// Running read-write.
    Primary,
    /// Running in recovery, streaming from `upstream` if any.
    Replica {
        /// The member it follows, if it follows one.
        upstream: Option<MemberName>,
    },
    /// Running, but its state could not be read in time.
    Unknown,
}

/// The local PostgreSQL as observed this loop.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalPostgres {
    /// Running state and role.
    pub role: LocalRole,
    /// The system identifier of the data directory, if known.
    pub system_id: Option<SystemId>,
    /// The timeline it runs on (or ended on).
    pub timeline: Option<Timeline>,
    /// The freshest WAL position it holds durably (write position on a
    /// primary, received/replayed on a replica).
    pub wal_position: Option<Lsn>,
    /// Standbys streaming from it right now (primary only).
    pub streaming_standbys: BTreeSet<MemberName>,
    /// The standbys `synchronous_standby_names` currently names (primary only).
    pub sync_standbys: BTreeSet<MemberName>,
    /// How many acknowledgements a commit waits for under
    /// `synchronous_standby_names` (0: asynchronous).
    pub sync_count: u32,
    /// `synchronous_standby_names` names `*`: any standby, named or not, may
    /// acknowledge a commit.
    pub sync_any_standby: bool,
    /// A replica streams WAL from its upstream right now.
    pub receiving: bool,
    /// How far each streaming standby has flushed WAL (primary only).
    pub standby_flush: BTreeMap<MemberName, Lsn>,
}

impl LocalPostgres {
    /// A node with no data directory.
    pub fn no_data() -> Self {
        LocalPostgres {
            role: LocalRole::NoData,
            system_id: None,
            timeline: None,
            wal_position: None,
            streaming_standbys: BTreeSet::new(),
            sync_standbys: BTreeSet::new(),
            sync_count: 0,
            sync_any_standby: false,
            receiving: false,
            standby_flush: BTreeMap::new(),
        }
    }
}

/// What a peer reports of itself, from its member record or, fresher, from
/// asking it directly.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerReport {
    /// Its freshest WAL position.
    pub wal_position: Option<Lsn>,
    /// Its timeline.
    pub timeline: Option<Timeline>,
    /// It answered that its PostgreSQL runs as a primary: a former leader
    /// that still does may still take writes until its fence stops them.
    pub running_primary: bool,
}

/// The leader this node last followed, as it was last seen: a failover
/// withdraws it from the routers and reports how much WAL it may have taken
/// with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LastLeader {
    /// Its name.
    pub name: MemberName,
    /// Its PostgreSQL connection URL (for the routers), if its record was seen.
    pub conn_url: Option<String>,
    /// The newest WAL position it was known to hold: the `status` key's
    /// `optime` or its member record's `xlog_location`, whichever is newer.
    pub optime: Option<Lsn>,
}

/// A round of failsafe heartbeats (`POST /failsafe`) the primary sent to the
/// members of the `failsafe` key while the DCS was unreachable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FailsafeRound {
    /// When (monotonic) the round was sent.
    pub sent_at: Duration,
    /// The members that acknowledged it (HTTP 200).
    pub acknowledged: BTreeSet<MemberName>,
    /// The members that did not, in time.
    pub missing: BTreeSet<MemberName>,
}

impl FailsafeRound {
    /// Every member of the failsafe set acknowledged the round.
    pub fn all_acknowledged(&self) -> bool {
        self.missing.is_empty()
    }
}

/// A failsafe heartbeat this node acknowledged: it promised not to race for
/// the lock until `received_at + ttl`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceivedHeartbeat {
    /// The primary that sent it.
    pub leader: MemberName,
    /// When (monotonic) it was acknowledged.
    pub received_at: Duration,
}

/// What failsafe mode brings to a decision.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FailsafeInputs {
    /// The round this primary ran in this loop, if the DCS did not answer in time.
    pub round: Option<FailsafeRound>,
    /// The last heartbeat this node acknowledged, if any.
    pub heartbeat: Option<ReceivedHeartbeat>,
    /// When (monotonic) this agent started answering heartbeats: one that
    /// restarted may have acknowledged a heartbeat it no longer remembers.
    pub listening_since: Duration,
}

/// What the engine remembers between loops. The loop updates it from the
/// outcome of each action ([`Memory::record`]); `decide` only reads it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Memory {
    /// When (monotonic) the last lock acquisition or renewal that succeeded
    /// was *sent*: the lock cannot expire before this plus ttl.
    pub lock_renewed_at: Option<Duration>,
    /// This node ran as primary since its last rewind or clone, so its
    /// timeline may have diverged from the next leader's.
    pub ran_as_primary: bool,
    /// pg_rewind said it cannot repair the data directory: re-clone it.
    pub rewind_impossible: bool,
    /// The leader this stopped data directory was last checked against
    /// (rewound, or found not diverged), so it can start following at once.
    pub timeline_checked_against: Option<MemberName>,
    /// Failed attempts to start PostgreSQL as primary while holding the lock.
    pub primary_start_failures: u32,
    /// The routes last applied successfully.
    pub routed: Option<Routes>,
    /// Consecutive loops this node ran as a replica with an upstream but
    /// received no WAL from it.
    pub loops_not_streaming: u32,
    /// The primary's WAL position when `synchronous_standby_names` last
    /// started naming standbys: commits before it were acknowledged without
    /// them, so a standby enters the `sync` key only once it flushed past it.
    pub sync_standbys_since: Option<Lsn>,
    /// When (monotonic) the last failsafe round that every member
    /// acknowledged was sent, while this node held the lock: like a renewal,
    /// it extends the demotion deadline to this plus ttl minus retry_timeout.
    pub failsafe_acked_at: Option<Duration>,
    /// The leader this node last saw (not itself), for failover reports.
    pub last_leader: Option<LastLeader>,
    /// How long the DCS keeps the lock after the last acquisition or renewal
    /// that succeeded ([`matriarch_dcs::Dcs::lock_lifetime`]), when it said:
    /// a server may grant less than the ttl (ZooKeeper's
    /// `maxSessionTimeout`), and every deadline counts from the shorter.
    pub lock_lifetime: Option<Duration>,
    /// When (monotonic) this node first read the leader lock as free since
    /// it last saw it held: the former leader's last renewal came before,
    /// so its fence stopped writes before this plus ttl minus retry_timeout.
    pub lock_free_since: Option<Duration>,
    /// When (monotonic) this node stopped its primary cleanly for a
    /// switchover; cleared once another member takes the lock or the data
    /// directory runs again. While set, nobody else promoted from this data
    /// directory's history as far as this node saw.
    pub stepped_down_at: Option<Duration>,
}

/// After this many loops following an upstream without streaming from it, a
/// replica is taken for diverged and stopped to be rewound (pg_rewind finds
/// nothing to do if it was only slow to connect).
pub const LOOPS_BEFORE_REWIND: u32 = 3;

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
    /// demoting takes up to `retry_timeout`, so demotion starts that much earlier.
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
        Some(until.saturating_sub(self.config.retry_timeout))
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
        if matches!(self.local.role, LocalRole::Replica { .. }) {
            member.received_lsn = self.local.wal_position;
            member.replication_state = Some("streaming".to_owned());
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
    plan.push(Action::PublishMember(Box::new(inputs.member_record())));

    if inputs.config.pause {
        return paused(inputs, view, plan);
    }

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

fn dcs_unreachable(inputs: &Inputs<'_>, mut plan: Plan) -> Decision {
    let holds_lock = inputs.memory.lock_renewed_at.is_some();
    if inputs.local.role == LocalRole::Primary {
        let deadline = inputs.demotion_deadline();
        if let Some(decision) = failsafe_leading(inputs, deadline, &mut plan) {
            return decision;
        }
        match deadline {
            Some(deadline) if inputs.now < deadline && !inputs.config.pause => {
                plan.deadline = Some(deadline);
                plan.push(Action::RenewLock);
                return plan.done(
                    EngineRole::Leader,
                    "DCS unreachable: retrying the renewal before the demotion deadline",
                );
            }
            _ if inputs.config.pause && holds_lock => {
                return plan.done(
                    EngineRole::Leader,
                    "DCS unreachable in pause: changing nothing",
                );
            }
            _ => {
                plan.push(Action::Demote(DemoteMode::Immediate));
                plan.push(Action::Withdraw);
                return plan.done(
                    EngineRole::Demoting,
                    "DCS unreachable past the demotion deadline: stopping writes before the lock can expire",
                );
            }
        }
    }
    plan.wait(EngineRole::Uncertain, "DCS unreachable: waiting")
}

/// Failsafe mode: a primary cut off from the DCS keeps leading while every
/// member of the failsafe set acknowledges its heartbeats, each round sent
/// before the deadline the previous one (or the last renewal) allowed.
fn failsafe_leading(
    inputs: &Inputs<'_>,
    deadline: Option<Duration>,
    plan: &mut Plan,
) -> Option<Decision> {
    // Only a lock holder extends; one that heard the lock is gone only
    // keeps the deadline it had.
    if !inputs.config.failsafe_mode
        || inputs.config.pause
        || inputs.memory.lock_renewed_at.is_none()
    {
        return None;
    }
    let deadline = deadline?;
    let round = inputs.failsafe.round.as_ref()?;
    if !round.all_acknowledged() {
        let missing: Vec<&str> = round.missing.iter().map(MemberName::as_str).collect();
        plan.reason_note = Some(format!(
            "failsafe: no acknowledgement from {}",
            missing.join(", ")
        ));
        return None;
    }
    if round.sent_at >= deadline {
        // Too late: the promise not to race came after writes had to stop.
        return None;
    }
    let extended = (round.sent_at + inputs.config.ttl).saturating_sub(inputs.config.retry_timeout);
    if inputs.now >= extended {
        return None;
    }
    plan.deadline = Some(extended);
    plan.push(Action::FailsafeExtend {
        round_sent_at: round.sent_at,
    });
    let reason = format!(
        "DCS unreachable: failsafe mode, all {} other member(s) acknowledged: keeping the primary",
        round.acknowledged.len()
    );
    let decision = Decision {
        actions: std::mem::take(&mut plan.actions),
        role: EngineRole::Leader,
        reason,
        demotion_deadline: plan.deadline,
        pending: None,
    };
    Some(decision)
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

fn leader(inputs: &Inputs<'_>, view: &ClusterView, mut plan: Plan) -> Decision {
    let me = &inputs.node.name;
    plan.deadline = inputs.demotion_deadline();
    if let Some(deadline) = plan.deadline {
        if inputs.now >= deadline && inputs.local.role == LocalRole::Primary {
            // The lock may be about to expire on the server although it still
            // reads as ours: stop writes first, renew after.
            plan.push(Action::Demote(DemoteMode::Immediate));
            plan.push(Action::Withdraw);
            return plan.done(
                EngineRole::Demoting,
                "the lock was not renewed in time: stopping writes before it can expire",
            );
        }
    }
    plan.push(Action::RenewLock);

    match &inputs.local.role {
        LocalRole::Primary => {}
        LocalRole::Replica { .. } => {
            // The lock may have been taken on a decision that went stale
            // (a pause between deciding and acquiring): check again.
            if let Err(why) = race_verdict(inputs, view) {
                plan.actions.retain(|a| *a != Action::RenewLock);
                plan.push(Action::ReleaseLock);
                return plan.done(
                    EngineRole::Replica,
                    format!(
                        "holding the lock but no longer the right candidate ({why}): releasing it"
                    ),
                );
            }
            push_promotion(inputs, view, &mut plan);
            return plan.done(EngineRole::Candidate, "holding the lock: promoting");
        }
        LocalRole::Stopped { .. } | LocalRole::Unknown => {
            if inputs.memory.primary_start_failures >= 2 {
                plan.actions.retain(|a| *a != Action::RenewLock);
                plan.push(Action::ReleaseLock);
                plan.push(Action::Withdraw);
                return plan.done(
                    EngineRole::Demoting,
                    "PostgreSQL does not start as primary: handing the lock over",
                );
            }
            if inputs.local.role == LocalRole::Unknown {
                return plan.done(
                    EngineRole::Leader,
                    "holding the lock; PostgreSQL state unknown",
                );
            }
            if !inputs.memory.ran_as_primary {
                // A replica's data directory started as primary would skip
                // promotion and every check of the race.
                plan.actions.retain(|a| *a != Action::RenewLock);
                plan.push(Action::ReleaseLock);
                return plan.done(
                    EngineRole::Replica,
                    "holding the lock with a stopped replica: releasing it for a proper race",
                );
            }
            plan.push(Action::StartPrimary);
            return plan.done(
                EngineRole::Leader,
                "holding the lock: restarting PostgreSQL as primary",
            );
        }
        LocalRole::NoData => {
            plan.actions.retain(|a| *a != Action::RenewLock);
            plan.push(Action::ReleaseLock);
            return plan.done(
                EngineRole::Uninitialized,
                "holding the lock without data: releasing it",
            );
        }
    }

    // A running primary holding the lock.
    if let Some(decision) = planned_switchover(inputs, view, &mut plan) {
        return decision;
    }
    maintain_sync(inputs, view, &mut plan);
    push_route(inputs, view, &mut plan);
    if inputs.config.failsafe_mode {
        let desired = desired_failsafe(inputs, view);
        let current = match &view.failsafe {
            Some(Ok(key)) => Some(&key.value),
            _ => None,
        };
        if current != Some(&desired) {
            plan.push(Action::WriteFailsafe(desired));
        }
    }
    if let Some(Ok(request)) = &view.failover {
        // A request naming us as the candidate has been carried out; one
        // naming another leader is stale.
        let stale = request.value.leader.as_ref().is_some_and(|l| l != me)
            || request.value.candidate.as_ref() == Some(me);
        if stale {
            plan.push(Action::ClearFailoverRequest(request.version));
        }
    }
    plan.done(EngineRole::Leader, "holding the lock as primary")
}

/// Promotion, preceded in synchronous mode by emptying the `sync` key: until
/// this node waits for standbys of its own, no other member may be promoted
/// on the strength of the previous leader's key. In strict mode PostgreSQL is
/// first set to wait for any standby, so no commit is acknowledged by the
/// new primary alone.
fn push_promotion(inputs: &Inputs<'_>, view: &ClusterView, plan: &mut Plan) {
    if let Some(former) = failover_from(inputs, view) {
        plan.push(Action::WithdrawFormerLeader(former));
    }
    let key_is_empty_and_ours = matches!(&view.sync,
        Some(Ok(sync)) if sync.value.sync_standbys.is_empty() && sync.value.leader.as_ref() == Some(&inputs.node.name));
    if inputs.config.synchronous_mode != SynchronousMode::Off && !key_is_empty_and_ours {
        let expected = match &view.sync {
            Some(Ok(sync)) => Some(sync.version),
            _ => None,
        };
        plan.push(Action::WriteSyncState {
            standbys: BTreeSet::new(),
            count: inputs.config.synchronous_node_count,
            expected,
        });
    }
    if inputs.config.synchronous_mode != SynchronousMode::Off
        && inputs.config.synchronous_mode_strict
    {
        // As Patroni: from its first commit the new primary waits for a
        // standby (`*`) until its leader upkeep names its own.
        plan.push(Action::SetSyncStandbys {
            standbys: BTreeSet::new(),
            count: 1,
            at: None,
            any_standby: true,
        });
    }
    plan.push(Action::Promote);
    push_route(inputs, view, plan);
}

/// The former leader this promotion replaces in a failover; `None` for a
/// planned switchover (the `failover` key names the leader stepping down,
/// which withdrew itself) or when no other leader was ever seen.
fn failover_from(inputs: &Inputs<'_>, view: &ClusterView) -> Option<MemberName> {
    let former = inputs.memory.last_leader.as_ref()?;
    if former.name == inputs.node.name {
        return None;
    }
    let planned = matches!(&view.failover,
        Some(Ok(request)) if request.value.leader.as_ref() == Some(&former.name));
    (!planned).then(|| former.name.clone())
}

fn push_route(inputs: &Inputs<'_>, view: &ClusterView, plan: &mut Plan) {
    let routes = Routes {
        primary: inputs.node.name.clone(),
        replicas: view
            .healthy_records()
            .filter(|m| {
                m.name != inputs.node.name
                    && m.role == Role::Replica
                    && m.state == MemberState::Running
                    && !m.tags.noloadbalance
            })
            .map(|m| m.name.clone())
            .collect(),
    };
    if inputs.memory.routed.as_ref() != Some(&routes) {
        plan.push(Action::Route(routes));
    }
}

/// The leader's side of a switchover: step down when the request is due and
/// a candidate is ready.
fn planned_switchover(
    inputs: &Inputs<'_>,
    view: &ClusterView,
    plan: &mut Plan,
) -> Option<Decision> {
    let me = &inputs.node.name;
    let Some(Ok(request)) = &view.failover else {
        return None;
    };
    let FailoverRequest {
        leader,
        candidate,
        scheduled_at,
    } = &request.value;
    if leader.as_ref().is_some_and(|l| l != me) || candidate.as_ref() == Some(me) {
        return None;
    }
    if scheduled_at.is_some_and(|at| at > inputs.wall_clock) {
        return None;
    }
    // In synchronous mode only a synchronous standby can take over without
    // losing a commit, and only one could win the race after we step down.
    let synchronous = inputs.config.synchronous_mode != SynchronousMode::Off;
    let ready = |member: &Member| {
        member.name != *me
            && (!synchronous || in_sync_key(view, &member.name) && wrote_sync_key(view, me))
            && candidate_looks_able(inputs, view, member)
            && member.timeline >= inputs.local.timeline
            && lag_ok(inputs, member.wal_position(), inputs.local.wal_position)
    };
    let candidate_ready = match candidate {
        Some(name) => view
            .members
            .get(name.as_str())
            .and_then(|e| e.as_ref().ok())
            .is_some_and(|m| ready(&m.value)),
        None => view.healthy_records().any(ready),
    };
    if !candidate_ready {
        return None;
    }
    plan.push(Action::Demote(DemoteMode::Switchover));
    plan.push(Action::Withdraw);
    plan.push(Action::ReleaseLock);
    plan.actions.retain(|a| *a != Action::RenewLock);
    Some(Decision {
        actions: std::mem::take(&mut plan.actions),
        role: EngineRole::Demoting,
        reason: "switchover: stepping down for the candidate".to_owned(),
        demotion_deadline: plan.deadline,
        pending: None,
    })
}

/// A member at `position` is within maximum_lag_on_failover of `reference`
/// (a switchover: the leader stepping down). An unknown position never is;
/// an unknown reference cannot be measured against and is not held against it.
fn lag_ok(inputs: &Inputs<'_>, position: Option<Lsn>, reference: Option<Lsn>) -> bool {
    match (position, reference) {
        (Some(position), Some(reference)) => {
            reference.bytes_ahead_of(position) <= inputs.config.maximum_lag_on_failover
        }
        (Some(_), None) => true,
        (None, _) => false,
    }
}

/// What `synchronous_standby_names` says, or should say.
#[derive(Clone, Debug, PartialEq, Eq)]
struct SyncSetting {
    /// The standbys named.
    standbys: BTreeSet<MemberName>,
    /// How many acknowledgements a commit waits for (0: asynchronous).
    count: u32,
    /// `*`: any standby may acknowledge (strict mode without a standby).
    any_standby: bool,
}

impl SyncSetting {
    fn asynchronous() -> Self {
        SyncSetting {
            standbys: BTreeSet::new(),
            count: 0,
            any_standby: false,
        }
    }

    fn any_standby() -> Self {
        SyncSetting {
            standbys: BTreeSet::new(),
            count: 1,
            any_standby: true,
        }
    }

    fn is_asynchronous(&self) -> bool {
        self.standbys.is_empty() && !self.any_standby
    }
}

/// The `sync` key as the leader reads it: a key without `quorum` claims one
/// acknowledgement per commit, the least it can mean.
#[derive(Clone, Debug, PartialEq, Eq)]
struct SyncKey {
    standbys: BTreeSet<MemberName>,
    quorum: u32,
}

/// The next step that moves `synchronous_standby_names` (P, waiting for
/// `P.count` of its standbys) and the `sync` key (K, claiming `K.quorum`
/// acknowledgements per commit) towards the desired setting, one step per
/// loop, such that at every moment either K is empty (no automatic
/// promotion at all) or K ⊇ P, P is not empty or `*`, K.quorum ≤ P.count,
/// and every acknowledged commit is on K.quorum members of K. Then any
/// |K| − K.quorum + 1 members of K include one that holds it (see `sync_verdict`).
///
/// - Going asynchronous (or to `*`): the key is emptied first, then PostgreSQL.
/// - From asynchronous: PostgreSQL first (K stays empty meanwhile), then the
///   key once the new standbys flushed past the position PostgreSQL named
///   them at (they then hold every earlier commit).
/// - Replacing standbys or changing the count: the key grows to the union
///   and lowers its quorum to the smaller count first, then PostgreSQL
///   changes, then the key drops members or raises its quorum, once every
///   standby it keeps flushed past the position PostgreSQL changed at:
///   commits before were acknowledged under the old setting.
fn sync_step(
    desired: &SyncSetting,
    in_postgres: &SyncSetting,
    key: &SyncKey,
    key_is_ours: bool,
    streaming: &BTreeSet<MemberName>,
    caught_up: &dyn Fn(&BTreeSet<MemberName>) -> Option<bool>,
) -> Option<SyncStep> {
    let in_key = &key.standbys;
    let empty_key = || {
        Some(SyncStep::Key(SyncKey {
            standbys: BTreeSet::new(),
            quorum: desired.count.max(1),
        }))
    };
    let key_valid = in_key.is_empty()
        || (!in_postgres.standbys.is_empty()
            && !in_postgres.any_standby
            && in_key.is_superset(&in_postgres.standbys)
            && key.quorum <= in_postgres.count);
    if !key_is_ours || !key_valid {
        // Claim the key, or repair it, by the one always-safe state.
        return if in_key.is_empty() && key_is_ours {
            None
        } else {
            empty_key()
        };
    }
    if desired.standbys.is_empty() {
        if !in_key.is_empty() {
            return empty_key();
        }
        if in_postgres != desired {
            return Some(SyncStep::Postgres(desired.clone()));
        }
        return None;
    }
    if in_key.is_empty() {
        if in_postgres != desired {
            return Some(SyncStep::Postgres(desired.clone()));
        }
        // Commits before PostgreSQL named them were acknowledged without
        // them: they enter the key once they hold those too.
        return match caught_up(&desired.standbys) {
            Some(true) if desired.standbys.is_subset(streaming) => Some(SyncStep::Key(SyncKey {
                standbys: desired.standbys.clone(),
                quorum: desired.count,
            })),
            // The position was forgotten (agent restart), or taken before
            // the change applied: take it again.
            None => Some(SyncStep::Postgres(desired.clone())),
            _ => None,
        };
    }
    if !in_key.is_superset(&desired.standbys) || key.quorum > desired.count {
        return Some(SyncStep::Key(SyncKey {
            standbys: in_key.union(&desired.standbys).cloned().collect(),
            quorum: key.quorum.min(desired.count),
        }));
    }
    if in_postgres != desired {
        return Some(SyncStep::Postgres(desired.clone()));
    }
    if in_key != &desired.standbys || key.quorum != desired.count {
        return match caught_up(&desired.standbys) {
            Some(true) => Some(SyncStep::Key(SyncKey {
                standbys: desired.standbys.clone(),
                quorum: desired.count,
            })),
            None => Some(SyncStep::Postgres(desired.clone())),
            Some(false) => None,
        };
    }
    None
}

/// One step of [`sync_step`].
#[derive(Debug, PartialEq, Eq)]
enum SyncStep {
    Key(SyncKey),
    Postgres(SyncSetting),
}

/// The leader's synchronous replication upkeep.
fn maintain_sync(inputs: &Inputs<'_>, view: &ClusterView, plan: &mut Plan) {
    let config = inputs.config;
    let me = &inputs.node.name;
    let (key, key_version, key_is_ours) = match &view.sync {
        Some(Ok(sync)) => (
            SyncKey {
                standbys: sync.value.sync_standbys.clone(),
                quorum: sync.value.quorum.unwrap_or(1),
            },
            Some(sync.version),
            sync.value.leader.as_ref() == Some(me),
        ),
        // A malformed sync key may hide who can be promoted: leave it to an
        // operator rather than guess.
        Some(Err(_)) => return,
        None => (
            SyncKey {
                standbys: BTreeSet::new(),
                quorum: 1,
            },
            None,
            false,
        ),
    };
    let local = inputs.local;
    let in_postgres = if local.sync_any_standby {
        SyncSetting {
            count: local.sync_count.max(1),
            ..SyncSetting::any_standby()
        }
    } else if local.sync_standbys.is_empty() {
        SyncSetting::asynchronous()
    } else {
        SyncSetting {
            standbys: local.sync_standbys.clone(),
            count: local.sync_count,
            any_standby: false,
        }
    };
    let desired = if config.synchronous_mode == SynchronousMode::Off {
        SyncSetting::asynchronous()
    } else {
        let mut ranked: Vec<&Member> = view
            .healthy_records()
            .filter(|m| {
                &m.name != me
                    && !m.tags.nosync
                    && m.role == Role::Replica
                    && m.state == MemberState::Running
                    && local.streaming_standbys.contains(&m.name)
            })
            .collect();
        // Prefer the current ones, so that the set does not flap.
        ranked.sort_by(|a, b| {
            local
                .sync_standbys
                .contains(&b.name)
                .cmp(&local.sync_standbys.contains(&a.name))
                .then(b.tags.failover_priority.cmp(&a.tags.failover_priority))
                .then(a.name.cmp(&b.name))
        });
        // FIRST n names n standbys; a quorum (ANY n) names every eligible
        // standby, so that any n of them can acknowledge a commit and one slow
        // standby does not stall it. `sync_verdict` then needs |key| − n + 1
        // of them visible to promote.
        let count = config.synchronous_node_count.max(1);
        let wanted = if config.synchronous_mode == SynchronousMode::Quorum {
            ranked.len()
        } else {
            count as usize
        };
        let standbys: BTreeSet<MemberName> = ranked
            .into_iter()
            .take(wanted)
            .map(|m| m.name.clone())
            .collect();
        if standbys.is_empty() && config.synchronous_mode_strict {
            // Strict: keep waiting for the standbys we have rather than go
            // asynchronous; with none (just promoted or bootstrapped), wait
            // for any standby, as Patroni's `*`.
            if in_postgres.is_asynchronous() {
                SyncSetting::any_standby()
            } else {
                in_postgres.clone()
            }
        } else if standbys.is_empty() {
            SyncSetting::asynchronous()
        } else {
            // More acknowledgements than standbys would stall every commit
            // (Patroni caps it the same way).
            let count = count.min(u32::try_from(standbys.len()).unwrap_or(u32::MAX));
            SyncSetting {
                standbys,
                count,
                any_standby: false,
            }
        }
    };
    if config.synchronous_mode == SynchronousMode::Off
        && view.sync.is_none()
        && in_postgres.is_asynchronous()
    {
        return;
    }
    let step = if view.sync.is_none() && desired.any_standby && !in_postgres.any_standby {
        // No key at all (just bootstrapped): nobody can be promoted on it, so
        // PostgreSQL may start waiting before the key is claimed.
        Some(SyncStep::Postgres(desired.clone()))
    } else {
        sync_step(
            &desired,
            &in_postgres,
            &key,
            key_is_ours,
            &local.streaming_standbys,
            &|standbys: &BTreeSet<MemberName>| {
                let since = inputs.memory.sync_standbys_since?;
                Some(standbys.iter().all(|name| {
                    local
                        .standby_flush
                        .get(name)
                        .is_some_and(|flushed| *flushed >= since)
                }))
            },
        )
    };
    match step {
        Some(SyncStep::Key(key)) => plan.push(Action::WriteSyncState {
            standbys: key.standbys,
            count: key.quorum,
            expected: key_version,
        }),
        Some(SyncStep::Postgres(setting)) => {
            // A position counts only if taken while PostgreSQL already waited
            // for these standbys; a changing step takes none (the next loop
            // takes it, see `sync_step`).
            let at = if setting == in_postgres {
                local.wal_position
            } else {
                None
            };
            plan.push(Action::SetSyncStandbys {
                standbys: setting.standbys,
                count: setting.count.max(1),
                at,
                any_standby: setting.any_standby,
            });
        }
        None => {}
    }
}

fn follower(
    inputs: &Inputs<'_>,
    view: &ClusterView,
    holder: &MemberName,
    mut plan: Plan,
) -> Decision {
    match &inputs.local.role {
        LocalRole::Primary => {
            plan.push(Action::Demote(DemoteMode::Immediate));
            plan.push(Action::Withdraw);
            plan.done(
                EngineRole::Demoting,
                format!("running as primary while {holder} holds the lock: demoting at once"),
            )
        }
        LocalRole::Replica { upstream } => {
            if inputs.memory.ran_as_primary {
                // Our timeline may have diverged: stop, rewind, then follow.
                plan.push(Action::Demote(DemoteMode::Graceful));
                return plan.done(EngineRole::Demoting, "former primary: stopping to rewind");
            }
            // Only a leader on a newer timeline can have a history this
            // replica diverged from; on the same timeline a silent upstream is
            // just down (a dead leader must not make its replicas stop).
            let leader_ahead = member(view, holder)
                .and_then(|m| m.timeline)
                .is_some_and(|theirs| inputs.local.timeline.is_none_or(|ours| theirs > ours));
            if upstream.as_ref() == Some(holder)
                && leader_ahead
                && inputs.memory.loops_not_streaming >= LOOPS_BEFORE_REWIND
            {
                plan.push(Action::Demote(DemoteMode::Graceful));
                return plan.done(
                    EngineRole::Demoting,
                    format!("following {holder} without receiving WAL: stopping to rewind"),
                );
            }
            if replica_diverged(inputs, view) {
                plan.push(Action::Demote(DemoteMode::Graceful));
                return plan.done(
                    EngineRole::Demoting,
                    "received WAL past the point where the cluster's timeline forked: stopping to rewind",
                );
            }
            if upstream.as_ref() != Some(holder) {
                plan.push(Action::Follow(holder.clone()));
                return plan.done(
                    EngineRole::Replica,
                    format!("following the new leader {holder}"),
                );
            }
            if !inputs.local.receiving && inputs.memory.loops_not_streaming >= LOOPS_BEFORE_REWIND {
                // No loop count in the reason: it is logged when it changes.
                return plan.wait(
                    EngineRole::Replica,
                    format!("following {holder} without receiving WAL"),
                );
            }
            plan.done(EngineRole::Replica, format!("following {holder}"))
        }
        LocalRole::Stopped { .. } => {
            if inputs.memory.rewind_impossible {
                plan.push(Action::CloneFrom(clone_source(inputs, view, holder)));
                return plan.done(EngineRole::Replica, "rewind impossible: cloning anew");
            }
            // Any stopped data directory may hold WAL the leader never had
            // (an agent restart forgets that it ran as primary): check its
            // timeline against the leader's before streaming. pg_rewind
            // reports NotNeeded quickly when nothing diverged.
            if inputs.memory.timeline_checked_against.as_ref() != Some(holder) {
                plan.push(Action::Rewind(holder.clone()));
                return plan.done(
                    EngineRole::Replica,
                    format!("checking the timeline against {holder} before rejoining"),
                );
            }
            plan.push(Action::StartReplica {
                upstream: Some(holder.clone()),
            });
            plan.done(
                EngineRole::Replica,
                format!("rejoining as a replica of {holder}"),
            )
        }
        LocalRole::NoData => {
            let leader_running =
                member(view, holder).is_some_and(|m| m.state == MemberState::Running);
            if !leader_running {
                return plan.wait(
                    EngineRole::Uninitialized,
                    "waiting for a running leader to clone from",
                );
            }
            plan.push(Action::CloneFrom(clone_source(inputs, view, holder)));
            plan.done(EngineRole::Uninitialized, "cloning a new replica")
        }
        LocalRole::Unknown => plan.wait(EngineRole::Uncertain, "PostgreSQL state unknown"),
    }
}

/// A replica on an older timeline that holds WAL past the point where that
/// timeline ended (the old primary sent it more than the new primary had)
/// cannot stream from the new primary until it is rewound. Patroni checks
/// the same against the timeline history.
fn replica_diverged(inputs: &Inputs<'_>, view: &ClusterView) -> bool {
    let (Some(own_timeline), Some(position)) = (inputs.local.timeline, inputs.local.wal_position)
    else {
        return false;
    };
    let Some(Ok(history)) = &view.history else {
        return false;
    };
    history
        .value
        .0
        .iter()
        .any(|entry| entry.timeline == own_timeline && position > entry.switch_lsn)
}

fn member<'v>(view: &'v ClusterView, name: &MemberName) -> Option<&'v Member> {
    view.members
        .get(name.as_str())
        .and_then(|entry| entry.as_ref().ok())
        .map(|v| &v.value)
}

/// A running replica tagged `clonefrom` on the cluster's timeline, else the leader.
fn clone_source(inputs: &Inputs<'_>, view: &ClusterView, holder: &MemberName) -> MemberName {
    view.healthy_records()
        .filter(|m| {
            m.tags.clonefrom
                && m.name != inputs.node.name
                && m.role == Role::Replica
                && m.state == MemberState::Running
        })
        .map(|m| m.name.clone())
        .min()
        .unwrap_or_else(|| holder.clone())
}

fn no_leader(inputs: &Inputs<'_>, view: &ClusterView, mut plan: Plan) -> Decision {
    let local = inputs.local;
    match cluster_system_id(view) {
        None => {
            if local.role == LocalRole::NoData {
                plan.push(Action::Bootstrap);
                return plan.done(EngineRole::Candidate, "no cluster yet: racing to bootstrap");
            }
            return plan.wait(
                EngineRole::Uncertain,
                "the initialize key is absent but data exists: waiting for an operator",
            );
        }
        Some(Err(())) => {
            return plan.wait(EngineRole::Uncertain, "the initialize key is unreadable")
        }
        Some(Ok(Initialize::InProgress)) => {
            return plan.wait(EngineRole::Uninitialized, "another member is bootstrapping");
        }
        Some(Ok(Initialize::Done(system_id))) => {
            if local.system_id.is_some_and(|own| own != system_id) {
                if local.role == LocalRole::Primary {
                    plan.push(Action::Demote(DemoteMode::Immediate));
                    plan.push(Action::Withdraw);
                }
                return plan.wait(
                    EngineRole::Uncertain,
                    format!("local data belongs to another cluster (system id is not {system_id})"),
                );
            }
        }
    }

    match &local.role {
        LocalRole::Primary => {
            // Failsafe: the lock expired while the DCS was unreachable, but
            // every member promised not to race until after this deadline:
            // take the lock again before anybody else may.
            let deadline = inputs.demotion_deadline();
            if inputs.config.failsafe_mode
                && inputs.memory.failsafe_acked_at.is_some()
                && deadline.is_some_and(|deadline| inputs.now < deadline)
            {
                plan.deadline = deadline;
                plan.push(Action::AcquireLock);
                return plan.done(
                    EngineRole::Leader,
                    "failsafe: the DCS is back and the lock expired meanwhile: the primary takes it again",
                );
            }
            // Without the lock this primary may not take writes, even if
            // nobody else leads: another member may be promoted any moment.
            plan.push(Action::Demote(DemoteMode::Immediate));
            plan.push(Action::Withdraw);
            plan.done(
                EngineRole::Demoting,
                "running as primary without the lock: demoting at once",
            )
        }
        LocalRole::Stopped { .. } => {
            if let Some(decision) = after_switchover(inputs, view, &mut plan) {
                return decision;
            }
            plan.push(Action::StartReplica { upstream: None });
            plan.done(
                EngineRole::Replica,
                "no leader: starting read-only to join the race",
            )
        }
        LocalRole::NoData => plan.wait(EngineRole::Uninitialized, "no leader to clone from"),
        LocalRole::Unknown => {
            plan.wait(EngineRole::Uncertain, "no leader; PostgreSQL state unknown")
        }
        LocalRole::Replica { .. } => match race_verdict(inputs, view) {
            Ok(()) => {
                plan.push(Action::AcquireLock);
                push_promotion(inputs, view, &mut plan);
                plan.done(
                    EngineRole::Candidate,
                    "leader gone: this node is the best candidate",
                )
            }
            Err(why) => plan.wait(
                EngineRole::Replica,
                format!("leader gone; not racing: {why}"),
            ),
        },
    }
}

/// Moves the plan out, for a helper that decides the whole loop.
fn take(plan: &mut Plan) -> Plan {
    Plan {
        actions: std::mem::take(&mut plan.actions),
        deadline: plan.deadline,
        reason_note: plan.reason_note.take(),
    }
}

/// A leader that stepped down for a switchover: its data directory was shut
/// down cleanly as a primary and has not run since. While nobody takes the
/// lock it waits (starting as a standby would let it race and promote onto
/// a new timeline); after a ttl with the lock free all along and no newer
/// timeline anywhere, nobody can have promoted from its history, so it takes
/// the lock back and starts the same data directory as primary: no
/// promotion, same timeline. The request is cleared and the reason reported.
fn after_switchover(inputs: &Inputs<'_>, view: &ClusterView, plan: &mut Plan) -> Option<Decision> {
    let since = inputs.memory.stepped_down_at?;
    if inputs.local.role != (LocalRole::Stopped { crashed: false }) || !inputs.memory.ran_as_primary
    {
        return None;
    }
    let own = inputs.local.timeline?;
    let peer_newer = inputs
        .peers
        .values()
        .any(|p| p.timeline.is_some_and(|t| t > own));
    let me = &inputs.node.name;
    let others: Vec<&Member> = view.healthy_records().filter(|m| &m.name != me).collect();
    let record_newer = others.iter().any(|m| m.timeline.is_some_and(|t| t > own));
    // A new primary in a synchronous mode claims the sync key before it promotes.
    let sync_claimed = inputs.config.synchronous_mode != SynchronousMode::Off
        && matches!(&view.sync,
            Some(Ok(sync)) if sync.value.leader.as_ref().is_some_and(|l| l != me));
    if peer_newer
        || record_newer
        || sync_claimed
        || cluster_timeline(view).is_some_and(|cluster| cluster > own)
    {
        // Somebody was promoted after all: rejoin through the usual checks.
        return None;
    }
    // Starting the old data directory as primary is only safe when every
    // member confirms, by answering now, that it is on no newer timeline: a
    // record or a lock read may be late. Without that, after three ttls, give
    // up the take-back and rejoin through the usual race.
    let unconfirmed: Vec<&str> = others
        .iter()
        .filter(|m| {
            inputs
                .peers
                .get(&m.name)
                .is_none_or(|p| p.timeline.is_none())
        })
        .map(|m| m.name.as_str())
        .collect();
    let request = match &view.failover {
        Some(Ok(request)) => Some(request),
        _ => None,
    };
    if inputs.now >= since.saturating_add(inputs.config.ttl.saturating_mul(3)) {
        // The request goes, or the usual race's winner would be asked to
        // step down again.
        return request.map(|request| {
            plan.push(Action::ClearFailoverRequest(request.version));
            take(plan).done(
                EngineRole::Demoting,
                format!(
                    "switchover abandoned: cannot confirm that {} did not promote; rejoining through the usual race",
                    unconfirmed.join(", ")
                ),
            )
        });
    }
    let candidate = request.and_then(|r| r.value.candidate.clone());
    let who = candidate
        .as_ref()
        .map_or_else(|| "no candidate".to_owned(), |c| format!("candidate {c}"));
    let wait = inputs.config.ttl;
    let running_primary = inputs
        .peers
        .iter()
        .find(|(name, report)| report.running_primary && **name != inputs.node.name);
    if let Some((name, _)) = running_primary {
        // Nobody may run as primary without the lock; until that is
        // resolved, neither does this node.
        return Some(take(plan).wait(
            EngineRole::Demoting,
            format!("switchover: stepped down; {name} answers as a running primary: waiting"),
        ));
    }
    if inputs.now < since.saturating_add(wait) {
        return Some(take(plan).wait(
            EngineRole::Demoting,
            format!("switchover: stepped down, waiting up to {wait:?} for {who} to take the lock"),
        ));
    }
    if !unconfirmed.is_empty() {
        return Some(take(plan).wait(
            EngineRole::Demoting,
            format!(
                "switchover: stepped down; cannot confirm that {} did not promote: waiting",
                unconfirmed.join(", ")
            ),
        ));
    }
    let why = match candidate.as_ref().map(|c| (c, member(view, c))) {
        Some((_, None)) => "it has no member record".to_owned(),
        Some((_, Some(m))) if !candidate_looks_able(inputs, view, m) => format!(
            "its record shows it unable to take over: {} {}, timeline {}, the cluster's {}",
            format!("{:?}", m.role).to_ascii_lowercase(),
            m.state.as_str(),
            m.timeline
                .map_or_else(|| "unknown".to_owned(), |t| t.0.to_string()),
            cluster_timeline(view).map_or_else(|| "unknown".to_owned(), |t| t.0.to_string()),
        ),
        Some(_) => "it did not race for the lock".to_owned(),
        None => "no member raced for the lock".to_owned(),
    };
    let reason = format!(
        "{who} did not take over within {wait:?}: {why}; {} keeps leading on timeline {} (no promotion)",
        inputs.node.name, own.0
    );
    plan.push(Action::AcquireLock);
    if let Some(request) = request {
        plan.push(Action::ClearFailoverRequest(request.version));
    }
    plan.push(Action::SwitchoverAbandoned(reason.clone()));
    plan.push(Action::StartPrimary);
    Some(take(plan).done(
        EngineRole::Leader,
        format!("switchover abandoned: {reason}"),
    ))
}

/// Patroni's last check before a race: a former leader that still answers
/// as a running primary may still take writes, until its write fence stops
/// them. Its last renewal came before this node first read the lock free,
/// so the fence (armed until that renewal plus ttl minus retry_timeout)
/// has provably expired a ttl after that read: then the answer no longer
/// matters (a primary whose agent hangs must not block failover forever).
fn former_leader_verdict(inputs: &Inputs<'_>) -> Result<(), String> {
    let fence_expired = inputs
        .memory
        .lock_free_since
        .is_some_and(|since| inputs.now >= since.saturating_add(inputs.config.ttl));
    if fence_expired {
        return Ok(());
    }
    match inputs
        .peers
        .iter()
        .find(|(name, report)| report.running_primary && **name != inputs.node.name)
    {
        Some((name, _)) => Err(format!(
            "{name} still answers as a running primary and its write fence may not have expired"
        )),
        None => Ok(()),
    }
}

/// The member records a race ignores, with why: records of members that
/// did not answer the REST probe and claim what no member of this cluster can
/// hold (a position far beyond the former leader's last known one, or a
/// timeline beyond the history's next). A leftover or forged key must not
/// block every failover.
pub fn implausible_records(
    me: &MemberName,
    view: &ClusterView,
    peers: &BTreeMap<MemberName, PeerReport>,
    memory: &Memory,
) -> BTreeMap<MemberName, String> {
    let former_leader = memory
        .last_leader
        .as_ref()
        .filter(|last| &last.name != me)
        .and_then(|last| last.optime);
    let status = match &view.status {
        Some(Ok(status)) => Some(status.value.optime),
        _ => None,
    };
    // Records lag the leader by up to a loop of WAL: only a claim far beyond
    // what it was last known to hold is impossible.
    let ceiling = former_leader
        .into_iter()
        .chain(status)
        .max()
        .map(|known| Lsn(known.0.saturating_add(IMPLAUSIBLE_LEAD_BYTES)));
    let next_timeline = history_next_timeline(view);
    view.healthy_records()
        .filter(|m| &m.name != me && !peers.contains_key(&m.name))
        .filter_map(|m| {
            let why = if let Some(position) =
                m.wal_position().filter(|p| ceiling.is_some_and(|c| *p > c))
            {
                format!("its position {position} is far beyond the former leader's last known one")
            } else if let Some(timeline) = m
                .timeline
                .filter(|t| next_timeline.is_some_and(|next| t.0 > next.0.saturating_add(1)))
            {
                format!("its timeline {timeline} is beyond the timeline history")
            } else {
                return None;
            };
            Some((
                m.name.clone(),
                format!("{why}, and its REST API did not answer"),
            ))
        })
        .collect()
}

/// How far beyond the former leader's last known position an unconfirmed
/// record may claim to be before a race ignores it (1 GiB: far more WAL than
/// a primary writes between two updates of its status).
const IMPLAUSIBLE_LEAD_BYTES: u64 = 1 << 30;

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

/// Whether this running replica may race for a free lock, and why not.
fn race_verdict(inputs: &Inputs<'_>, view: &ClusterView) -> Result<(), String> {
    let me = &inputs.node.name;
    let local = inputs.local;
    failsafe_verdict(inputs, view)?;
    former_leader_verdict(inputs)?;
    let forced_candidate = match &view.failover {
        Some(Ok(request)) => request.value.candidate.clone(),
        _ => None,
    };
    let implausible = implausible_records(me, view, inputs.peers, inputs.memory);
    if let Some(candidate) = forced_candidate
        .as_ref()
        .filter(|c| !implausible.contains_key(*c))
    {
        // Defer to the named candidate only while it looks able to take over;
        // a stale request must not leave the cluster leaderless.
        let able = member(view, candidate).is_some_and(|m| {
            // In synchronous mode a candidate behind another synchronous
            // standby refuses to race: then nobody should wait for it.
            let position = m
                .wal_position()
                .into_iter()
                .chain(inputs.peers.get(candidate).and_then(|p| p.wal_position))
                .max();
            let outrun = inputs.config.synchronous_mode != SynchronousMode::Off
                && local
                    .wal_position
                    .is_some_and(|own| position.is_none_or(|p| own > p));
            candidate_looks_able(inputs, view, m) && !outrun
        });
        if candidate != me && able {
            return Err(format!("a failover request names {candidate}"));
        }
    }
    if !inputs.node.tags.allows_failover() {
        return Err("tagged nofailover".to_owned());
    }
    let Some(own_position) = local.wal_position else {
        return Err("own WAL position unknown".to_owned());
    };
    if let Some(cluster) = cluster_timeline(view) {
        if local.timeline.is_none_or(|own| own < cluster) {
            return Err(format!("timeline behind the cluster's ({cluster})"));
        }
    }

    // What the former leader may have acknowledged: its last known position
    // (the `status` key's optime or its record, remembered while it led).
    // A replica further behind than maximum_lag_on_failover does not race,
    // as in Patroni: that bounds the loss of an asynchronous failover, at
    // the price of no automatic failover when every survivor is that far
    // behind; an operator's failover request naming this node overrides it.
    let former_leader = inputs
        .memory
        .last_leader
        .as_ref()
        .filter(|last| &last.name != me)
        .and_then(|last| last.optime);
    let status = match &view.status {
        Some(Ok(status)) => Some(status.value.optime),
        _ => None,
    };
    let last_known = former_leader.into_iter().chain(status).max();
    if let Some(optime) = last_known.filter(|_| forced_candidate.as_ref() != Some(me)) {
        let lag = optime.bytes_ahead_of(own_position);
        if lag > inputs.config.maximum_lag_on_failover {
            return Err(format!(
                "{lag} bytes behind the former leader's last known position {optime}, more than maximum_lag_on_failover"
            ));
        }
    }

    // The freshest position anyone alive reports.
    let reported = |name: &MemberName, record: &Member| -> Option<Lsn> {
        let probed = inputs.peers.get(name).and_then(|p| p.wal_position);
        record.wal_position().into_iter().chain(probed).max()
    };
    let peers: Vec<(&Member, Option<Lsn>)> = view
        .healthy_records()
        .filter(|m| {
            &m.name != me && m.state == MemberState::Running && !implausible.contains_key(&m.name)
        })
        .map(|m| (m, reported(&m.name, m)))
        .collect();
    // Positions compare only along one history: a peer on an older timeline
    // holds WAL this node's timeline forked away from.
    let freshest = peers
        .iter()
        .filter(|(m, _)| m.timeline.is_some_and(|t| Some(t) >= local.timeline))
        .filter_map(|(_, p)| *p)
        .chain([own_position])
        .max()
        .unwrap_or(own_position);
    let lag = freshest.bytes_ahead_of(own_position);
    if lag > inputs.config.maximum_lag_on_failover {
        return Err(format!(
            "{lag} bytes behind the freshest member, more than maximum_lag_on_failover"
        ));
    }

    if inputs.config.synchronous_mode != SynchronousMode::Off {
        sync_verdict(inputs, view, &peers, own_position)?;
    }
    if forced_candidate.as_ref() == Some(me) {
        return Ok(());
    }

    let own_key = (own_position, inputs.node.tags.failover_priority);
    for (peer, position) in &peers {
        let Some(position) = position else { continue };
        // Only a peer that could win a race itself can be a better candidate
        // (a peer on an older timeline cannot, whatever its position).
        if !candidate_looks_able(inputs, view, peer) {
            continue;
        }
        let peer_key = (*position, peer.tags.failover_priority);
        let better = peer_key > own_key || (peer_key == own_key && peer.name < *me);
        if better {
            return Err(format!("{} is a better candidate", peer.name));
        }
    }
    Ok(())
}

/// Failsafe mode: a member that acknowledged a heartbeat less than ttl ago
/// promised the primary (cut off from the DCS, still writing) not to race; a
/// member missing from the `failsafe` key was never asked, so the primary may
/// be writing without its knowledge.
fn failsafe_verdict(inputs: &Inputs<'_>, view: &ClusterView) -> Result<(), String> {
    if let Some(heartbeat) = inputs.fresh_heartbeat() {
        // Kept even when failsafe_mode was switched off since: a promise.
        return Err(format!(
            "acknowledged a failsafe heartbeat from {} {:?} ago",
            heartbeat.leader,
            inputs.now.saturating_sub(heartbeat.received_at)
        ));
    }
    if !inputs.config.failsafe_mode {
        return Ok(());
    }
    let listening_for = inputs.now.saturating_sub(inputs.failsafe.listening_since);
    if listening_for < inputs.config.ttl {
        return Err(format!(
            "failsafe mode: this agent started {listening_for:?} ago and may have acknowledged a heartbeat before"
        ));
    }
    match &view.failsafe {
        Some(Ok(key))
            if !key.value.0.is_empty() && !key.value.0.contains_key(&inputs.node.name) =>
        {
            Err("failsafe mode: not a member of the failsafe key".to_owned())
        }
        Some(Err(_)) => Err("failsafe mode: the failsafe key is unreadable".to_owned()),
        _ => Ok(()),
    }
}

/// The `failsafe` key a leader keeps: itself and every member with a REST API URL.
fn desired_failsafe(inputs: &Inputs<'_>, view: &ClusterView) -> Failsafe {
    let mut members: BTreeMap<MemberName, String> = view
        .healthy_records()
        .filter(|m| m.name != inputs.node.name && !m.api_url.is_empty())
        .map(|m| (m.name.clone(), m.api_url.clone()))
        .collect();
    members.insert(inputs.node.name.clone(), inputs.node.api_url.clone());
    Failsafe(members)
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

/// In synchronous mode, a commit was acknowledged by `count` of the standbys
/// in the `sync` key. Only a member of the key may promote, and only when
/// enough of the key's members are visible that one of them must hold every
/// acknowledged commit (|key| − count + 1) and it is the freshest of them.
fn sync_verdict(
    inputs: &Inputs<'_>,
    view: &ClusterView,
    peers: &[(&Member, Option<Lsn>)],
    own_position: Lsn,
) -> Result<(), String> {
    let me = &inputs.node.name;
    let Some(Ok(sync)) = &view.sync else {
        return Err("synchronous mode without a readable sync key".to_owned());
    };
    if sync.value.leader.as_ref() == Some(me) {
        // The primary that wrote the key acknowledged every commit itself, and
        // nobody was promoted since: a promotion rewrites the key first.
        return Ok(());
    }
    let key = &sync.value.sync_standbys;
    if !key.contains(me) {
        return Err("not a synchronous standby".to_owned());
    }
    // The key's quorum is what the leader made PostgreSQL enforce before it
    // wrote it; a key without one (Patroni's, or an older version's) proves
    // one acknowledgement only. synchronous_node_count is what is wanted, not
    // what was enforced.
    let count = sync.value.quorum.unwrap_or(1).max(1) as usize;
    // Only a position the standby reported just now counts: its record may be
    // a loop old and miss the commit that decides the race. (The old primary
    // stopped acknowledging before its lock expired, so fresh positions are final.)
    let visible: Vec<Lsn> = peers
        .iter()
        .filter(|(m, _)| key.contains(&m.name))
        .filter_map(|(m, _)| {
            inputs
                .peers
                .get(&m.name)
                .and_then(|report| report.wal_position)
        })
        .collect();
    let needed = key.len().saturating_sub(count) + 1;
    if visible.len() + 1 < needed {
        return Err(format!(
            "only {} of the {} synchronous standbys visible, {needed} needed",
            visible.len() + 1,
            key.len()
        ));
    }
    if visible.iter().any(|p| *p > own_position) {
        return Err("another synchronous standby is ahead".to_owned());
    }
    Ok(())
}

/// What happened to an action, as the loop reports it to [`Memory::record`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// It succeeded.
    Done,
    /// It failed or was refused (the plan stops).
    Failed,
    /// pg_rewind cannot repair the data directory.
    RewindImpossible,
}

impl Memory {
    /// Updates what the engine remembers after `action` ended with `outcome`;
    /// `sent_at` is when (monotonic) the action started.
    pub fn record(&mut self, action: &Action, outcome: &Outcome, sent_at: Duration) {
        let runs_again = matches!(
            action,
            Action::StartPrimary
                | Action::StartReplica { .. }
                | Action::Promote
                | Action::Rewind(_)
                | Action::CloneFrom(_)
                | Action::Bootstrap
        );
        if runs_again && *outcome != Outcome::Failed {
            // The data directory no longer is the one the switchover stopped.
            self.stepped_down_at = None;
        }
        match (action, outcome) {
            (Action::AcquireLock | Action::RenewLock | Action::Bootstrap, Outcome::Done) => {
                self.lock_renewed_at = Some(sent_at);
                // The lock is held again: failsafe no longer carries the deadline.
                self.failsafe_acked_at = None;
            }
            (Action::FailsafeExtend { round_sent_at }, Outcome::Done)
                if self.lock_renewed_at.is_some() =>
            {
                self.failsafe_acked_at = Some(*round_sent_at);
            }
            (Action::RenewLock | Action::AcquireLock, Outcome::Failed) => {}
            (Action::ReleaseLock, Outcome::Done) => {
                self.lock_renewed_at = None;
                self.failsafe_acked_at = None;
                self.routed = None;
            }
            (Action::Promote, Outcome::Done) => {
                self.ran_as_primary = true;
                self.primary_start_failures = 0;
                // Reported with this promotion; the next leader is someone else.
                self.last_leader = None;
            }
            (Action::StartPrimary, Outcome::Done) => {
                self.ran_as_primary = true;
                self.primary_start_failures = 0;
            }
            (Action::StartPrimary, Outcome::Failed) => self.primary_start_failures += 1,
            (Action::Demote(mode), Outcome::Done) => {
                self.routed = None;
                self.failsafe_acked_at = None;
                if *mode == DemoteMode::Switchover {
                    self.stepped_down_at = Some(sent_at);
                }
            }
            (Action::Rewind(source), Outcome::Done) => {
                self.ran_as_primary = false;
                self.rewind_impossible = false;
                self.timeline_checked_against = Some(source.clone());
            }
            (Action::Rewind(_), Outcome::RewindImpossible) => self.rewind_impossible = true,
            (Action::CloneFrom(source), Outcome::Done) => {
                // A fresh clone follows its source's history: nothing to rewind.
                self.ran_as_primary = false;
                self.rewind_impossible = false;
                self.timeline_checked_against = Some(source.clone());
            }
            (Action::SetSyncStandbys { standbys, at, .. }, outcome) => {
                // A change that failed may still apply later (a reload that
                // timed out): the old position then no longer counts.
                self.sync_standbys_since = match outcome {
                    Outcome::Done if !standbys.is_empty() => *at,
                    _ => None,
                };
            }
            (Action::Route(routes), Outcome::Done) => self.routed = Some(routes.clone()),
            _ => {}
        }
    }

    /// How long the lock counts after a renewal: the ttl, or the lifetime
    /// the DCS reported for it if that is shorter.
    pub fn lock_ttl(&self, ttl: Duration) -> Duration {
        self.lock_lifetime.map_or(ttl, |lifetime| lifetime.min(ttl))
    }

    /// Forgets the lock after the DCS said it is not ours.
    ///
    /// A failsafe round every member acknowledged still holds
    /// (`failsafe_acked_at`): they promised not to race, so the primary may
    /// take the lock again before its deadline.
    pub fn lock_lost(&mut self) {
        self.lock_renewed_at = None;
        self.routed = None;
    }

    /// Notes the leader in a view read this loop (not this node): its name,
    /// address and the newest WAL position it was known to hold. While no
    /// leader holds the lock the last one is kept, and the `status` key it
    /// wrote last still counts.
    pub fn saw_view(&mut self, view: &ClusterView, me: &MemberName) {
        let status = match &view.status {
            Some(Ok(status)) => Some(status.value.optime),
            _ => None,
        };
        match view.leader_name() {
            Some(holder) if holder == me => {}
            Some(holder) => {
                // Somebody took over: a switchover this node stepped down for is done.
                self.stepped_down_at = None;
                let record = member(view, holder);
                let from_record = record.and_then(Member::wal_position);
                let mut optime = status.into_iter().chain(from_record).max();
                let mut conn_url = record.map(|m| m.conn_url.clone());
                if let Some(last) = self.last_leader.as_ref().filter(|l| &l.name == holder) {
                    optime = optime.into_iter().chain(last.optime).max();
                    conn_url = conn_url.or_else(|| last.conn_url.clone());
                }
                self.last_leader = Some(LastLeader {
                    name: holder.clone(),
                    conn_url,
                    optime,
                });
            }
            None => {
                if view.leader.is_none() {
                    if let Some(last) = self.last_leader.as_mut() {
                        last.optime = last.optime.into_iter().chain(status).max();
                    }
                }
            }
        }
    }

    /// Notes whether the leader lock was free in a view read at `now`
    /// (monotonic, taken after the read): the first such time is kept until
    /// the lock is seen held or unreadable again.
    pub fn saw_lock(&mut self, view: &ClusterView, now: Duration) {
        if view.leader.is_none() {
            self.lock_free_since.get_or_insert(now);
        } else {
            self.lock_free_since = None;
        }
    }

    /// Notes a primary seen running, so its timeline is checked before it follows anyone.
    pub fn observed(&mut self, local: &LocalPostgres) {
        self.loops_not_streaming = match &local.role {
            LocalRole::Replica { upstream: Some(_) } if !local.receiving => {
                self.loops_not_streaming.saturating_add(1)
            }
            _ => 0,
        };
        if matches!(local.role, LocalRole::Primary | LocalRole::Replica { .. }) {
            // Running again (started by hand, or by an earlier agent): no
            // longer the data directory the switchover stopped.
            self.stepped_down_at = None;
        }
        match local.role {
            LocalRole::Primary => {
                self.ran_as_primary = true;
                self.timeline_checked_against = None;
            }
            LocalRole::Replica { .. } | LocalRole::NoData => self.timeline_checked_against = None,
            LocalRole::Stopped { .. } | LocalRole::Unknown => {}
        }
    }
}
