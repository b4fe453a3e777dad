//! What the engine remembers between loops, updated from each action's outcome.

use std::time::Duration;

use matriarch_model::{ClusterView, Lsn, Member, MemberName, Version};

use super::action::{Action, DemoteMode, Routes};
use super::observed::{LastLeader, LocalPostgres, LocalRole};
use super::view::member;

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
    /// When (monotonic) the first of the current run of failed starts as
    /// primary was sent: once `primary_start_timeout` has passed since, the
    /// leader hands the lock to a healthy replica. Cleared when PostgreSQL
    /// runs again or the lock is released.
    pub primary_start_failed_since: Option<std::time::Duration>,
    /// Why PostgreSQL last failed to start, when the engine could tell (a
    /// full disk): shown in the decision's reason and `pending` until it
    /// runs again.
    pub start_failure: Option<String>,
    /// When (monotonic) this node released the lock because its PostgreSQL
    /// would not start as primary: for a while it neither races for the
    /// lock nor starts to join a race, so a healthy replica takes over
    /// instead of this node taking the lock straight back. Cleared once
    /// another member holds the lock.
    pub handed_over_at: Option<std::time::Duration>,
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
    /// it extends the demotion deadline to this plus ttl minus the write-stop margin.
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
    /// so its fence stopped writes before this plus ttl minus the write-stop margin.
    pub lock_free_since: Option<Duration>,
    /// When (monotonic) this node stopped its primary cleanly for a
    /// switchover; cleared once another member takes the lock or the data
    /// directory runs again. While set, nobody else promoted from this data
    /// directory's history as far as this node saw.
    pub stepped_down_at: Option<Duration>,
    /// When (monotonic) PostgreSQL last answered an observation (in any
    /// state): a leader whose PostgreSQL stays silent for
    /// [`crate::postgres_silence_limit`] stops renewing its lock.
    pub postgres_answered_at: Option<Duration>,
    /// The version of the `failover` key in force and when (monotonic) this
    /// node first read it: a request naming a member that never appears is
    /// cleared a ttl after.
    pub failover_seen_at: Option<(Version, Duration)>,
    /// Leader only: when (monotonic) the member of each member slot was
    /// last seen; `None` until this node reconciles slots as leader.
    pub slot_members_seen: Option<std::collections::BTreeMap<String, Duration>>,
    /// The invalid slot settings last logged, so each is logged once.
    pub slot_config_errors: Vec<String>,
    /// Leader only: the slots' positions the last reconcile reported, for
    /// the `status` key (the engine sets it from the reconcile's result).
    pub slot_positions: Option<std::collections::BTreeMap<String, Lsn>>,
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
        match action {
            Action::ReconcileSlots(slots) => {
                if slots.members_seen.is_some() {
                    self.slot_members_seen = slots.members_seen.clone();
                }
                self.slot_config_errors = slots.config_errors.clone();
            }
            Action::ReleaseLock | Action::Demote(_) => {
                self.slot_members_seen = None;
                self.slot_positions = None;
            }
            _ => {}
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
                if self.primary_start_failed_since.take().is_some() {
                    self.handed_over_at = Some(sent_at);
                }
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
                self.primary_start_failed_since = None;
                self.start_failure = None;
            }
            (Action::StartPrimary, Outcome::Failed) => {
                self.primary_start_failures += 1;
                self.primary_start_failed_since.get_or_insert(sent_at);
            }
            (Action::StartReplica { .. }, Outcome::Done) => self.start_failure = None,
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
                self.handed_over_at = None;
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

    /// Notes when the `failover` key in a view read at `now` was first seen
    /// (per version; forgotten once the key is gone).
    pub fn saw_failover_key(&mut self, view: &ClusterView, now: Duration) {
        self.failover_seen_at = match &view.failover {
            Some(Ok(request)) => match self.failover_seen_at {
                Some((version, at)) if version == request.version => Some((version, at)),
                _ => Some((request.version, now)),
            },
            _ => None,
        };
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
            // It starts after all: the failed starts are over (a replica
            // that receives nothing keeps the cause until the engine
            // finds its disk no longer full).
            self.primary_start_failed_since = None;
            if !matches!(local.role, LocalRole::Replica { .. }) || local.receiving {
                self.start_failure = None;
            }
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
