//! Carrying out a decision's plan, one action at a time, long ones (bootstrap,
//! clone, rewind) in the background.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use matriarch_dcs::{Clock, Dcs, DcsError, Expected};
use matriarch_model::{
    ClusterConfig, DcsKey, Member, MemberName, MemberState, Record, StandbyCluster, SyncState,
    SynchronousMode, SystemId,
};
use matriarch_postgres::{
    BootstrapSpec, Operation, PgRole, Postgres, PostgresError, RewindOutcome, ServerState, StartAs,
    StopMode, SyncStandbyNames, Upstream,
};
use matriarch_router::Router;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::errors::{ActionError, PostgresCallError};
use super::state::Engine;
use super::timeouts::{bounded, pg_bounded};
use crate::decide::{Action, Decision, DemoteMode, EngineRole, LocalPostgres, LocalRole, Outcome};

/// Races for `initialize`, runs the bootstrap, records the system id, writes
/// the configuration and takes the lock. A failed bootstrap gives the race up.
pub(super) async fn bootstrap<D: Dcs + ?Sized, P: Postgres + ?Sized>(
    dcs: &D,
    postgres: &P,
    me: &MemberName,
    config: &ClusterConfig,
    spec: &BootstrapSpec,
    timeout: Duration,
    clock: &dyn Clock,
) -> (Outcome, Duration) {
    let retry = config.retry_timeout;
    let started = clock.now();
    match bounded("try_initialize", retry, dcs.try_initialize()).await {
        Ok(true) => {}
        Ok(false) => return (Outcome::Failed, started),
        Err(error) => {
            warn!(member = %me, %error, "initialize race failed");
            return (Outcome::Failed, started);
        }
    }
    info!(member = %me, "won the initialize race: bootstrapping");
    // A custom method (a restore and its recovery) bounds its own steps.
    let timeout = timeout + spec.extra_time().map_or(Duration::ZERO, |extra| extra * 2);
    let created = match config.standby_cluster.as_deref() {
        // A new standby cluster: a copy of its source, not a new database.
        Some(section) => clone_standby_source(postgres, me, section, timeout).await,
        None => pg_bounded(timeout, postgres.bootstrap(spec)).await,
    };
    let system_id = match created {
        Ok(id) => id,
        Err(error) => {
            warn!(member = %me, %error, "bootstrap failed: giving the race up");
            let _ = bounded("cancel_initialize", retry, dcs.cancel_initialize()).await;
            return (Outcome::Failed, started);
        }
    };
    if let Err(error) = bounded(
        "complete_initialize",
        retry,
        dcs.complete_initialize(system_id),
    )
    .await
    {
        warn!(member = %me, %error, "could not record the system id");
        return (Outcome::Failed, started);
    }
    let _ = bounded(
        "write config",
        retry,
        dcs.write(&Record::Config(config.clone()), Expected::Absent),
    )
    .await;
    let sent_at = clock.now();
    match bounded("acquire_leader", retry, dcs.acquire_leader(me, config.ttl)).await {
        Ok(true) => (Outcome::Done, sent_at),
        _ => (Outcome::Failed, started),
    }
}

/// The first member of a new standby cluster clones its source
/// (pg_basebackup from `host:port`) and reports the copy's system id.
async fn clone_standby_source<P: Postgres + ?Sized>(
    postgres: &P,
    me: &MemberName,
    section: &StandbyCluster,
    timeout: Duration,
) -> Result<SystemId, PostgresCallError> {
    info!(member = %me, host = ?section.host, port = section.port_or_default(), "new standby cluster: cloning its source");
    pg_bounded(
        timeout,
        postgres.clone_replica(&Upstream::standby_source(section)),
    )
    .await?;
    let state = pg_bounded(timeout, postgres.observe()).await?;
    state.system_id.ok_or_else(|| {
        PostgresError::Unexpected {
            operation: Operation::CloneReplica,
            context: "reading the system id of the standby cluster's copy".to_owned(),
            message: "pg_controldata gave none".to_owned(),
        }
        .into()
    })
}

impl<D, P, R> Engine<D, P, R>
where
    D: Dcs + 'static,
    P: Postgres + 'static,
    R: Router,
{
    pub(super) async fn collect_long_task(&mut self) {
        let finished = self.long_task.as_ref().is_some_and(JoinHandle::is_finished);
        if !finished {
            return;
        }
        if let Some(task) = self.long_task.take() {
            self.status.send_modify(|s| s.creating_replica = false);
            match task.await {
                Ok((action, outcome, sent_at, failure)) => {
                    if let Some(failure) = failure {
                        if !self.note_start_failure(&action, &failure) {
                            warn!(cluster = %self.dcs.layout().scope(), member = %self.name(), ?action, %failure, "long action failed");
                        }
                    }
                    info!(member = %self.name(), ?action, ?outcome, "long action finished");
                    if action == Action::Bootstrap && outcome == Outcome::Done {
                        // The bootstrap took the lock.
                        self.note_lock_lifetime();
                    }
                    self.memory.record(&action, &outcome, sent_at);
                }
                Err(error) => {
                    warn!(member = %self.name(), %error, "long action panicked or was cancelled")
                }
            }
        }
    }

    pub(super) async fn act(&mut self, decision: &Decision, local: &LocalPostgres) {
        self.sync_fence_with_pause().await;
        let decided_at = self.clock.now();
        self.failing_over_from = None;
        // Published before acting: a demotion is announced before it starts.
        let writable = decision.role == EngineRole::Leader && local.role == LocalRole::Primary;
        self.status.send_if_modified(|status| {
            let changed = status.writable != writable;
            status.writable = writable;
            changed
        });
        // The renewer keeps only a plan that keeps this node leading a
        // running primary, or restarting its stopped primary in place (from
        // when decide says that start counts); any other stops it before the
        // plan starts.
        let restart_in_place_since = decision.restart_in_place_since;
        let keeps_leading = (writable || restart_in_place_since.is_some())
            && !decision
                .actions
                .iter()
                .any(|a| matches!(a, Action::Demote(_) | Action::ReleaseLock));
        if !keeps_leading {
            self.lease.set_leading(None);
        } else if let Some(since) = restart_in_place_since {
            self.lease
                .restarting_in_place(since.saturating_add(self.config.primary_start_timeout));
        }
        let mut renewed = false;
        for action in &decision.actions {
            // A plan is only as good as the observation it came from: after a
            // pause (GC, SIGSTOP, a slow disk) the rest of it may be wrong.
            // (A slow promotion is no pause: only a gap as long as the lock's
            // own lifetime makes the rest of the plan suspect.)
            if self.clock.now().saturating_sub(decided_at) > self.lock_ttl() {
                warn!(member = %self.name(), ?action, "plan went stale: deciding again");
                break;
            }
            if *action == Action::AcquireLock && self.heartbeat_fresh() {
                // Acknowledged after this decision read the heartbeats: the
                // promise not to race holds.
                warn!(member = %self.name(), "a failsafe heartbeat was acknowledged while deciding: not racing");
                break;
            }
            let busy = self.long_task.is_some();
            if busy && !matches!(action, Action::PublishMember(_) | Action::RenewLock) {
                debug!(member = %self.name(), ?action, "skipped while a long action runs");
                break;
            }
            let sent_at = self.clock.now();
            if matches!(
                action,
                Action::Bootstrap | Action::CloneFrom(_) | Action::Rewind(_)
            ) {
                self.start_long_task(action.clone(), sent_at);
                if matches!(action, Action::CloneFrom(_)) {
                    // Said at once: a small clone may end before the next loop.
                    if let Some(publish) = decision
                        .actions
                        .iter()
                        .find(|a| matches!(a, Action::PublishMember(_)))
                    {
                        self.execute(publish, local).await;
                    }
                }
                break;
            }
            let outcome = self.execute(action, local).await;
            self.memory.record(action, &outcome, sent_at);
            if outcome != Outcome::Done {
                debug!(member = %self.name(), ?action, ?outcome, "plan stopped");
                break;
            }
            if matches!(action, Action::RenewLock | Action::AcquireLock) {
                renewed = true;
                if keeps_leading {
                    // From this renewal on, the renewer covers the rest of
                    // the plan (a start in place may outlast the fence's
                    // window).
                    self.lease.set_leading(self.memory.lock_renewed_at);
                }
            }
            if matches!(action, Action::ClearFailoverRequest(_)) {
                info!(cluster = %self.dcs.layout().scope(), member = %self.name(), reason = %decision.reason, "cleared the failover key");
            }
        }
        if keeps_leading {
            // Renewed (and the fence armed) by this plan: the renewer goes on
            // from there; a renewal that failed stops it.
            self.lease
                .set_leading(self.memory.lock_renewed_at.filter(|_| renewed));
        }
    }

    /// `member` as published while a replica is cloned: Patroni's `creating
    /// replica` state, which `patronictl list` shows and `reinit --wait` waits on.
    pub(super) fn while_cloning<'m>(&self, member: &'m Member) -> Cow<'m, Member> {
        if self.status.borrow().creating_replica {
            let mut member = member.clone();
            member.state = MemberState::CreatingReplica;
            Cow::Owned(member)
        } else {
            Cow::Borrowed(member)
        }
    }

    pub(super) fn start_long_task(&mut self, action: Action, sent_at: Duration) {
        let dcs = Arc::clone(&self.dcs);
        let postgres = Arc::clone(&self.postgres);
        let clock = Arc::clone(&self.clock);
        let me = self.name().clone();
        let config = self.config.clone();
        let spec = self.settings.bootstrap.clone();
        let timeout = self.settings.postgres_timeout;
        let upstream = match &action {
            Action::CloneFrom(name) | Action::Rewind(name) => self.upstream(name),
            _ => None,
        };
        info!(member = %me, ?action, "starting long action");
        if matches!(action, Action::CloneFrom(_)) {
            self.status.send_modify(|s| s.creating_replica = true);
        }
        self.long_task = Some(tokio::spawn(async move {
            // Why a rewind failed, for the loop to report (a full disk once).
            let mut failure = None;
            let (outcome, at) = match &action {
                Action::Bootstrap => {
                    bootstrap(&*dcs, &*postgres, &me, &config, &spec, timeout, &*clock).await
                }
                Action::CloneFrom(_) => match upstream {
                    Some(upstream) => {
                        // No time limit: the controller stops a clone that
                        // makes no progress, a large one takes its time.
                        match postgres.clone_replica(&upstream).await {
                            Ok(()) => (Outcome::Done, sent_at),
                            Err(error) => {
                                warn!(member = %me, %error, "clone failed");
                                (Outcome::Failed, sent_at)
                            }
                        }
                    }
                    None => (Outcome::Failed, sent_at),
                },
                Action::Rewind(_) => match upstream {
                    Some(upstream) => match pg_bounded(timeout, postgres.rewind(&upstream)).await {
                        Ok(RewindOutcome::Rewound | RewindOutcome::NotNeeded) => {
                            (Outcome::Done, sent_at)
                        }
                        Ok(RewindOutcome::Impossible { reason }) => {
                            warn!(member = %me, %reason, "rewind impossible");
                            (Outcome::RewindImpossible, sent_at)
                        }
                        Err(error) => {
                            failure = Some(ActionError::from(error));
                            (Outcome::Failed, sent_at)
                        }
                    },
                    None => (Outcome::Failed, sent_at),
                },
                _ => (Outcome::Failed, sent_at),
            };
            (action, outcome, at, failure)
        }));
    }

    pub(super) async fn execute(&mut self, action: &Action, local: &LocalPostgres) -> Outcome {
        let me = self.name().clone();
        let ttl = self.config.ttl;
        let retry = self.config.retry_timeout;
        let pg_timeout = self.settings.postgres_timeout;
        let result: Result<(), ActionError> = match action {
            Action::PublishMember(member) => {
                let member = self.published_member(member, local);
                bounded(
                    "publish_member",
                    retry,
                    self.dcs.publish_member(&member, ttl),
                )
                .await
                .map_err(ActionError::from)
            }
            Action::AcquireLock => {
                let sent_at = self.clock.now();
                match bounded("acquire_leader", retry, self.dcs.acquire_leader(&me, ttl)).await {
                    Ok(true) => {
                        info!(cluster = %self.dcs.layout().scope(), member = %me, "took the leader lock");
                        self.note_lock_lifetime();
                        self.arm_fence_or_give_up(sent_at)
                            .await
                            .map_err(ActionError::from)
                    }
                    Ok(false) => Err(ActionError::LockTaken),
                    Err(e) => Err(e.into()),
                }
            }
            Action::RenewLock => {
                let sent_at = self.clock.now();
                match bounded("renew_leader", retry, self.dcs.renew_leader(&me, ttl)).await {
                    Ok(()) => {
                        self.note_lock_lifetime();
                        if self.arm_fence_or_give_up(sent_at).await.is_err() {
                            // Logged there; the lock is released.
                            return Outcome::Failed;
                        }
                        if let Some(optime) = local
                            .wal_position
                            .filter(|_| local.role == LocalRole::Primary)
                        {
                            let value = self.leader_status(optime);
                            // Written only when it changed (as Patroni does):
                            // an idle primary's loop makes no DCS write.
                            let stored = self
                                .last_view
                                .as_ref()
                                .and_then(|view| view.status.as_ref())
                                .and_then(|status| status.as_ref().ok())
                                .is_some_and(|status| status.value == value);
                            if !stored {
                                let status = Record::Status(value);
                                let written = bounded(
                                    "write status",
                                    retry,
                                    self.dcs.write(&status, Expected::Any),
                                )
                                .await;
                                if let Err(error) = written {
                                    debug!(member = %me, %error, "could not write status");
                                }
                            }
                        }
                        Ok(())
                    }
                    Err(DcsError::LockNotHeld { holder, .. }) => {
                        warn!(cluster = %self.dcs.layout().scope(), member = %me, ?holder, "lost the leader lock");
                        self.memory.lock_lost();
                        Err(ActionError::LockLost)
                    }
                    Err(e) => Err(e.into()),
                }
            }
            Action::ReleaseLock => {
                let result = bounded("release_leader", retry, self.dcs.release_leader(&me)).await;
                self.disarm_fence().await;
                match result {
                    Ok(()) | Err(DcsError::LockNotHeld { .. }) => Ok(()),
                    Err(e) => Err(e.into()),
                }
            }
            Action::Promote => {
                let result = pg_bounded(pg_timeout, self.postgres.promote()).await;
                if let Ok(timeline) = &result {
                    info!(cluster = %self.dcs.layout().scope(), member = %me, %timeline, "promoted");
                    // Published at once: health checks must not wait for the
                    // rest of the loop (history, routes).
                    let new_timeline = *timeline;
                    self.status.send_modify(|status| {
                        status.role = EngineRole::Leader;
                        status.writable = true;
                        status.timeline = Some(new_timeline);
                        // Only the lock holder promotes.
                        status.leader = Some(me.clone());
                        if let Some(observed) = status.postgres.as_mut() {
                            let observed = Arc::make_mut(observed);
                            observed.server = ServerState::Running(PgRole::Primary);
                            observed.timeline = Some(new_timeline);
                            observed.upstream = None;
                            observed.receiving = false;
                        }
                    });
                    let reason = self.failover_report(local.wal_position);
                    self.record_history(*timeline, local.wal_position, reason)
                        .await;
                }
                result.map(|_| ()).map_err(ActionError::from)
            }
            Action::StartPrimary => pg_bounded(pg_timeout, self.postgres.start(StartAs::Primary))
                .await
                .map_err(ActionError::from),
            Action::StartReplica { upstream } => {
                let start_as = match upstream {
                    Some(name) => match self.upstream(name) {
                        Some(upstream) => StartAs::ReplicaOf(upstream),
                        None => return Outcome::Failed,
                    },
                    None => StartAs::Standby,
                };
                pg_bounded(pg_timeout, self.postgres.start(start_as))
                    .await
                    .map_err(ActionError::from)
            }
            Action::FollowStandbySource(section) => {
                let source = Upstream::standby_source(section);
                let result = if matches!(local.role, LocalRole::Stopped { .. }) {
                    pg_bounded(pg_timeout, self.postgres.start(StartAs::ReplicaOf(source))).await
                } else {
                    pg_bounded(pg_timeout, self.postgres.follow(&source)).await
                };
                result.map_err(ActionError::from)
            }
            Action::Follow(name) => match self.upstream(name) {
                Some(upstream) => pg_bounded(pg_timeout, self.postgres.follow(&upstream))
                    .await
                    .map_err(ActionError::from),
                None => Err(ActionError::NoAddress {
                    member: name.clone(),
                }),
            },
            Action::Demote(mode) => {
                // Not writable from now on, whatever the decision's role.
                self.status.send_modify(|status| status.writable = false);
                let stop = match mode {
                    DemoteMode::Graceful | DemoteMode::Switchover => StopMode::Fast,
                    DemoteMode::Immediate => StopMode::Immediate,
                };
                // Bounded by retry_timeout: the timing rule counts on it.
                let result = pg_bounded(retry, self.postgres.demote(stop, None)).await;
                if result.is_ok() {
                    warn!(cluster = %self.dcs.layout().scope(), member = %me, ?mode, "demoted");
                    self.disarm_fence().await;
                }
                result.map_err(ActionError::from)
            }
            Action::Route(routes) => self.route(routes).await,
            Action::Withdraw => match self.endpoint(&me) {
                Some(endpoint) => self
                    .router
                    .withdraw(&endpoint)
                    .await
                    .map_err(ActionError::from),
                None => Err(ActionError::NoAddress { member: me.clone() }),
            },
            Action::SetSyncStandbys {
                standbys,
                count,
                any_standby,
                ..
            } => {
                let mut names: Vec<String> =
                    standbys.iter().map(|n| n.as_str().to_owned()).collect();
                if *any_standby {
                    // Patroni's `*`: strict mode waits for any standby.
                    names.push("*".to_owned());
                }
                let setting = if names.is_empty() {
                    Ok(SyncStandbyNames::Off)
                } else if self.config.synchronous_mode == SynchronousMode::Quorum {
                    SyncStandbyNames::any(*count, names)
                } else {
                    SyncStandbyNames::first(*count, names)
                };
                match setting {
                    Ok(setting) => {
                        pg_bounded(retry, self.postgres.set_synchronous_standby_names(&setting))
                            .await
                            .map_err(ActionError::from)
                    }
                    Err(e) => Err(PostgresCallError::from(e).into()),
                }
            }
            Action::WriteSyncState {
                standbys,
                count,
                expected,
            } => {
                let record = Record::Sync(SyncState {
                    leader: Some(me.clone()),
                    sync_standbys: standbys.clone(),
                    quorum: Some(*count),
                });
                let expected = expected.map_or(Expected::Absent, Expected::Version);
                bounded("write sync", retry, self.dcs.write(&record, expected))
                    .await
                    .map(|_| ())
                    .map_err(ActionError::from)
            }
            Action::ClearFailoverRequest(version) => bounded(
                "clear failover",
                retry,
                self.dcs
                    .delete(&DcsKey::Failover, Expected::Version(*version)),
            )
            .await
            .map_err(ActionError::from),
            Action::WriteFailsafe(members) => {
                // Rounds include the members being written even if the write
                // times out and applies later: asking one more is only stricter.
                for (name, url) in &members.0 {
                    self.failsafe_set.insert(name.clone(), url.clone());
                }
                bounded(
                    "write failsafe",
                    retry,
                    self.dcs
                        .write(&Record::Failsafe(members.clone()), Expected::Any),
                )
                .await
                .map(|_| ())
                .map_err(ActionError::from)
            }
            Action::FailsafeExtend { round_sent_at } => {
                self.arm_fence(*round_sent_at).await;
                Ok(())
            }
            Action::SwitchoverAbandoned(reason) => {
                warn!(cluster = %self.dcs.layout().scope(), member = %me, %reason, "switchover abandoned");
                self.last_switchover_failure = Some(reason.clone());
                Ok(())
            }
            Action::WithdrawFormerLeader(former) => {
                self.failing_over_from = Some(former.clone());
                self.withdraw_former_leader(former).await;
                Ok(())
            }
            Action::ReconcileSlots(slots) => {
                self.reconcile_slots(slots).await;
                Ok(())
            }
            Action::Bootstrap | Action::CloneFrom(_) | Action::Rewind(_) => {
                Err(ActionError::RunsInBackground)
            }
        };
        match result {
            Ok(()) => Outcome::Done,
            Err(error) => {
                if !self.note_start_failure(action, &error) {
                    warn!(cluster = %self.dcs.layout().scope(), member = %me, ?action, %error, "action failed");
                }
                Outcome::Failed
            }
        }
    }
}
