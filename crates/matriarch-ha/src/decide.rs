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
    /// The standbys `synchronous_standby_names` currently names, and how many
    /// acknowledgements a commit waits for (primary only).
    pub sync_standbys: BTreeSet<MemberName>,
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
    /// A clean, fast shutdown: connected replicas receive all WAL first
    /// (planned switchover).
    Graceful,
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
    /// Set `synchronous_standby_names` to these members (empty: asynchronous).
    SetSyncStandbys {
        /// The standbys.
        standbys: BTreeSet<MemberName>,
        /// How many must acknowledge a commit.
        count: u32,
        /// The primary's WAL position when deciding this.
        at: Option<Lsn>,
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
    fn demotion_deadline(&self) -> Option<Duration> {
        let base = self
            .memory
            .lock_renewed_at
            .into_iter()
            .chain(self.memory.failsafe_acked_at)
            .max()?;
        Some((base + self.config.ttl).saturating_sub(self.config.retry_timeout))
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
        }
    }

    fn push(&mut self, action: Action) {
        self.actions.push(action);
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
            plan.done(
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
    plan.done(EngineRole::Uncertain, "DCS unreachable: waiting")
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
    let from_history = match &view.history {
        Some(Ok(history)) => history
            .value
            .0
            .iter()
            .map(|entry| Timeline(entry.timeline.0.saturating_add(1)))
            .max(),
        _ => None,
    };
    let from_members = view.healthy_records().filter_map(|m| m.timeline).max();
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
/// on the strength of the previous leader's key.
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
    plan.push(Action::Demote(DemoteMode::Graceful));
    plan.push(Action::Withdraw);
    plan.push(Action::ReleaseLock);
    plan.actions.retain(|a| *a != Action::RenewLock);
    Some(Decision {
        actions: std::mem::take(&mut plan.actions),
        role: EngineRole::Demoting,
        reason: "switchover: stepping down for the candidate".to_owned(),
        demotion_deadline: plan.deadline,
    })
}

fn lag_ok(inputs: &Inputs<'_>, position: Option<Lsn>, reference: Option<Lsn>) -> bool {
    match (position, reference) {
        (Some(position), Some(reference)) => {
            reference.bytes_ahead_of(position) <= inputs.config.maximum_lag_on_failover
        }
        (Some(_), None) => true,
        (None, _) => false,
    }
}

/// The next step that moves `synchronous_standby_names` (P) and the `sync`
/// key (K) towards the desired standbys, one step per loop, such that at
/// every moment either K is empty (no automatic promotion at all) or K ⊇ P
/// and P is not empty. A commit waits for `count` members of P, so any
/// |K| − count + 1 members of K include one that holds it (see `sync_verdict`).
///
/// - Going asynchronous (nothing desired): the key is emptied first, then PostgreSQL.
/// - From asynchronous: PostgreSQL first (K stays empty meanwhile), then the
///   key once the new standbys stream (they then hold every earlier commit).
/// - Replacing standbys: the key grows to the union first, then PostgreSQL
///   changes, then the key shrinks to match.
fn sync_step(
    desired: &BTreeSet<MemberName>,
    in_postgres: &BTreeSet<MemberName>,
    in_key: &BTreeSet<MemberName>,
    key_is_ours: bool,
    streaming: &BTreeSet<MemberName>,
    caught_up: &dyn Fn(&BTreeSet<MemberName>) -> Option<bool>,
) -> Option<SyncStep> {
    let key_valid =
        in_key.is_empty() || (!in_postgres.is_empty() && in_key.is_superset(in_postgres));
    if !key_is_ours || !key_valid {
        // Claim the key, or repair it, by the one always-safe state.
        return if in_key.is_empty() && key_is_ours {
            None
        } else {
            Some(SyncStep::Key(BTreeSet::new()))
        };
    }
    if desired.is_empty() {
        if !in_key.is_empty() {
            return Some(SyncStep::Key(BTreeSet::new()));
        }
        if !in_postgres.is_empty() {
            return Some(SyncStep::Postgres(BTreeSet::new()));
        }
        return None;
    }
    if in_key.is_empty() {
        if in_postgres != desired {
            return Some(SyncStep::Postgres(desired.clone()));
        }
        // Commits before PostgreSQL named them were acknowledged without
        // them: they enter the key once they hold those too.
        return match caught_up(desired) {
            Some(true) if desired.is_subset(streaming) => Some(SyncStep::Key(desired.clone())),
            // The position was forgotten (agent restart): set it again.
            None => Some(SyncStep::Postgres(desired.clone())),
            _ => None,
        };
    }
    if !in_key.is_superset(desired) {
        return Some(SyncStep::Key(in_key.union(desired).cloned().collect()));
    }
    if in_postgres != desired {
        return Some(SyncStep::Postgres(desired.clone()));
    }
    if in_key != desired {
        return Some(SyncStep::Key(desired.clone()));
    }
    None
}

/// One step of [`sync_step`].
#[derive(Debug, PartialEq, Eq)]
enum SyncStep {
    Key(BTreeSet<MemberName>),
    Postgres(BTreeSet<MemberName>),
}

/// The leader's synchronous replication upkeep.
fn maintain_sync(inputs: &Inputs<'_>, view: &ClusterView, plan: &mut Plan) {
    let config = inputs.config;
    let me = &inputs.node.name;
    let (in_key, key_version, key_is_ours) = match &view.sync {
        Some(Ok(sync)) => (
            sync.value.sync_standbys.clone(),
            Some(sync.version),
            sync.value.leader.as_ref() == Some(me),
        ),
        // A malformed sync key may hide who can be promoted: leave it to an
        // operator rather than guess.
        Some(Err(_)) => return,
        None => (BTreeSet::new(), None, false),
    };
    let count = config.synchronous_node_count;
    let desired: BTreeSet<MemberName> = if config.synchronous_mode == SynchronousMode::Off {
        BTreeSet::new()
    } else {
        let in_postgres = &inputs.local.sync_standbys;
        let mut ranked: Vec<&Member> = view
            .healthy_records()
            .filter(|m| {
                &m.name != me
                    && !m.tags.nosync
                    && m.role == Role::Replica
                    && m.state == MemberState::Running
                    && inputs.local.streaming_standbys.contains(&m.name)
            })
            .collect();
        // Prefer the current ones, so that the set does not flap.
        ranked.sort_by(|a, b| {
            in_postgres
                .contains(&b.name)
                .cmp(&in_postgres.contains(&a.name))
                .then(b.tags.failover_priority.cmp(&a.tags.failover_priority))
                .then(a.name.cmp(&b.name))
        });
        // FIRST n names n standbys; a quorum (ANY n) names every eligible
        // standby, so that any n of them can acknowledge a commit and one slow
        // standby does not stall it. `sync_verdict` then needs |key| − n + 1
        // of them visible to promote.
        let wanted = if config.synchronous_mode == SynchronousMode::Quorum {
            ranked.len()
        } else {
            count as usize
        };
        let desired: BTreeSet<MemberName> = ranked
            .into_iter()
            .take(wanted)
            .map(|m| m.name.clone())
            .collect();
        if desired.is_empty() && config.synchronous_mode_strict {
            // Strict: keep waiting for the standbys we have rather than go asynchronous.
            in_postgres.clone()
        } else {
            desired
        }
    };
    if config.synchronous_mode == SynchronousMode::Off
        && view.sync.is_none()
        && inputs.local.sync_standbys.is_empty()
    {
        return;
    }
    match sync_step(
        &desired,
        &inputs.local.sync_standbys,
        &in_key,
        key_is_ours,
        &inputs.local.streaming_standbys,
        &|standbys: &BTreeSet<MemberName>| {
            let since = inputs.memory.sync_standbys_since?;
            Some(standbys.iter().all(|name| {
                inputs
                    .local
                    .standby_flush
                    .get(name)
                    .is_some_and(|flushed| *flushed >= since)
            }))
        },
    ) {
        Some(SyncStep::Key(standbys)) => plan.push(Action::WriteSyncState {
            standbys,
            count,
            expected: key_version,
        }),
        Some(SyncStep::Postgres(standbys)) => plan.push(Action::SetSyncStandbys {
            standbys,
            count,
            at: inputs.local.wal_position,
        }),
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
                return plan.done(
                    EngineRole::Uninitialized,
                    "waiting for a running leader to clone from",
                );
            }
            plan.push(Action::CloneFrom(clone_source(inputs, view, holder)));
            plan.done(EngineRole::Uninitialized, "cloning a new replica")
        }
        LocalRole::Unknown => plan.done(EngineRole::Uncertain, "PostgreSQL state unknown"),
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
            return plan.done(
                EngineRole::Uncertain,
                "the initialize key is absent but data exists: waiting for an operator",
            );
        }
        Some(Err(())) => {
            return plan.done(EngineRole::Uncertain, "the initialize key is unreadable")
        }
        Some(Ok(Initialize::InProgress)) => {
            return plan.done(EngineRole::Uninitialized, "another member is bootstrapping");
        }
        Some(Ok(Initialize::Done(system_id))) => {
            if local.system_id.is_some_and(|own| own != system_id) {
                if local.role == LocalRole::Primary {
                    plan.push(Action::Demote(DemoteMode::Immediate));
                    plan.push(Action::Withdraw);
                }
                return plan.done(
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
            plan.push(Action::StartReplica { upstream: None });
            plan.done(
                EngineRole::Replica,
                "no leader: starting read-only to join the race",
            )
        }
        LocalRole::NoData => plan.done(EngineRole::Uninitialized, "no leader to clone from"),
        LocalRole::Unknown => {
            plan.done(EngineRole::Uncertain, "no leader; PostgreSQL state unknown")
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
            Err(why) => plan.done(
                EngineRole::Replica,
                format!("leader gone; not racing: {why}"),
            ),
        },
    }
}

/// Whether this running replica may race for a free lock, and why not.
fn race_verdict(inputs: &Inputs<'_>, view: &ClusterView) -> Result<(), String> {
    let me = &inputs.node.name;
    let local = inputs.local;
    failsafe_verdict(inputs, view)?;
    let forced_candidate = match &view.failover {
        Some(Ok(request)) => request.value.candidate.clone(),
        _ => None,
    };
    if let Some(candidate) = &forced_candidate {
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

    // The freshest position anyone alive reports (not the dead leader's last
    // optime, which no survivor may ever reach).
    let reported = |name: &MemberName, record: &Member| -> Option<Lsn> {
        let probed = inputs.peers.get(name).and_then(|p| p.wal_position);
        record.wal_position().into_iter().chain(probed).max()
    };
    let peers: Vec<(&Member, Option<Lsn>)> = view
        .healthy_records()
        .filter(|m| &m.name != me && m.state == MemberState::Running)
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
    let count = sync
        .value
        .quorum
        .unwrap_or(inputs.config.synchronous_node_count)
        .max(1) as usize;
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
            (Action::Demote(_), Outcome::Done) => {
                self.routed = None;
                self.failsafe_acked_at = None;
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
            (Action::SetSyncStandbys { standbys, at, .. }, Outcome::Done) => {
                self.sync_standbys_since = if standbys.is_empty() { None } else { *at };
            }
            (Action::Route(routes), Outcome::Done) => self.routed = Some(routes.clone()),
            _ => {}
        }
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

    /// Notes a primary seen running, so its timeline is checked before it follows anyone.
    pub fn observed(&mut self, local: &LocalPostgres) {
        self.loops_not_streaming = match &local.role {
            LocalRole::Replica { upstream: Some(_) } if !local.receiving => {
                self.loops_not_streaming.saturating_add(1)
            }
            _ => 0,
        };
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
