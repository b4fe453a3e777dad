//! One loop, and its observing half: the DCS view (with failsafe rounds while
//! it does not answer), the local PostgreSQL, the peers; what is reported once.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use matriarch_dcs::{Dcs, DcsError};
use matriarch_model::{ClusterView, DcsKey, FailsafeHeartbeat, Initialize, Member, MemberName};
use matriarch_postgres::{
    DataDirectoryState, LocalState, PgRole, Postgres, ServerState, SyncStandbyNames,
};
use matriarch_router::Router;
use tracing::{debug, info, warn};

use super::handles::EngineStatus;
use super::state::Engine;
use super::timeouts::{bounded, pg_bounded};
use crate::decide::{
    implausible_records, Action, DcsObservation, Decision, EngineRole, FailsafeInputs,
    FailsafeRound, Inputs, LocalPostgres, LocalRole, Outcome, PeerReport,
};

/// Translates what PostgreSQL reports into what [`decide`] needs.
pub fn local_postgres(state: &LocalState) -> LocalPostgres {
    let role = match state.server {
        ServerState::Running(PgRole::Primary) => LocalRole::Primary,
        ServerState::Running(PgRole::Replica) => LocalRole::Replica {
            // A standby source is no member.
            upstream: state
                .upstream
                .as_ref()
                .filter(|u| u.standby_source.is_none())
                .map(|u| u.member.clone()),
        },
        ServerState::Unavailable => LocalRole::Unknown,
        ServerState::NotRunning(DataDirectoryState::Empty) => LocalRole::NoData,
        ServerState::NotRunning(DataDirectoryState::CleanShutdown) => {
            LocalRole::Stopped { crashed: false }
        }
        ServerState::NotRunning(DataDirectoryState::Crashed) => {
            LocalRole::Stopped { crashed: true }
        }
    };
    let wal = &state.wal;
    let wal_position = [wal.write, wal.flush, wal.received, wal.replayed]
        .into_iter()
        .flatten()
        .max();
    let streaming_standbys = state
        .replication
        .iter()
        .filter(|c| c.state == matriarch_postgres::WalSenderState::Streaming)
        .filter_map(|c| c.member())
        .collect();
    let sync_standbys = state
        .synchronous_standby_names
        .as_ref()
        .map(|names| {
            names
                .names()
                .iter()
                .filter_map(|n| MemberName::new(n.as_str()).ok())
                .collect()
        })
        .unwrap_or_default();
    LocalPostgres {
        role,
        system_id: state.system_id,
        timeline: state.timeline,
        wal_position,
        replayed: wal.replayed,
        streaming_standbys,
        sync_standbys,
        sync_count: state
            .synchronous_standby_names
            .as_ref()
            .map_or(0, SyncStandbyNames::count),
        sync_any_standby: state
            .synchronous_standby_names
            .as_ref()
            .is_some_and(|names| names.names().iter().any(|n| n == "*")),
        receiving: state.receiving,
        standby_flush: state
            .replication
            .iter()
            .filter_map(|c| Some((c.member()?, c.flush?)))
            .collect(),
        standby_source: state
            .upstream
            .as_ref()
            .and_then(|u| u.standby_source.as_deref().cloned()),
    }
}

/// Whether `decision`'s plan changes the local PostgreSQL, so that the state
/// observed before it is stale.
fn changes_postgres(decision: &Decision) -> bool {
    decision.actions.iter().any(|action| {
        matches!(
            action,
            Action::Promote
                | Action::StartPrimary
                | Action::StartReplica { .. }
                | Action::Follow(_)
                | Action::FollowStandbySource(_)
                | Action::Demote(_)
                | Action::Rewind(_)
                | Action::SetSyncStandbys { .. }
        )
    })
}

/// The longest excerpt of a DCS value (or an error quoting it) that goes
/// into a log line.
pub(super) const EXCERPT_BYTES: usize = 200;

/// The first [`EXCERPT_BYTES`] of `text` (cut at a character boundary),
/// with the full length when cut.
pub(super) fn excerpt(text: &str) -> String {
    if text.len() <= EXCERPT_BYTES {
        return text.to_owned();
    }
    let mut end = EXCERPT_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes in all)", &text[..end], text.len())
}

/// A hash of `text`, to tell a changed error from a repeated one without
/// keeping a copy of a huge value.
pub(super) fn text_hash(text: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut hasher);
    hasher.finish()
}

impl<D, P, R> Engine<D, P, R>
where
    D: Dcs + 'static,
    P: Postgres + 'static,
    R: Router,
{
    /// One loop: observe, decide, act. Returns the decision it acted on.
    pub async fn run_once(&mut self) -> Decision {
        self.unpublish_writable_past_deadline();
        self.collect_long_task().await;
        self.apply_node_settings();
        let retry = self.config.retry_timeout;
        let failsafe_enabled = self.config.failsafe_mode;
        let was_following = matches!(self.last_role, EngineRole::Replica | EngineRole::Uncertain);
        let observe = async {
            let state = pg_bounded(retry, self.postgres.observe()).await;
            // A replica that was not racing acknowledges heartbeats of the
            // upstream it streams from now, without waiting for a DCS read
            // that may hang (checked again after deciding, and before racing).
            if let Ok(state) = &state {
                let following = match local_postgres(state).role {
                    LocalRole::Replica { upstream } if was_following => upstream,
                    _ => None,
                };
                self.failsafe.set_acceptance(failsafe_enabled, following);
            }
            state
        };
        let ((view, round), state) = tokio::join!(self.read_view_or_failsafe(), observe);
        let mut view_read = None;
        let dcs = match view {
            Ok(view) => {
                self.adopt_config(&view);
                // Read again at every loop: a corrected key counts at once.
                // Absent, in progress or unreadable: the last one read stays.
                if let Some(Ok(init)) = &view.initialize {
                    if let Initialize::Done(id) = init.value {
                        self.postgres.set_cluster_system_id(id);
                    }
                }
                self.memory.saw_view(&view, &self.settings.node.name);
                self.memory.saw_lock(&view, self.clock.now());
                self.memory.saw_failover_key(&view, self.clock.now());
                // An unreadable key keeps the last set (and stops every
                // replica from racing); an absent one empties it.
                match &view.failsafe {
                    Some(Ok(key)) => self.failsafe_set = key.value.0.clone(),
                    None => self.failsafe_set.clear(),
                    Some(Err(_)) => {}
                }
                // The config key's error is reported by adopt_config, once.
                self.report_unreadable_keys(&view);
                self.last_view = Some(view.clone());
                view_read = Some(Arc::new(view.clone()));
                DcsObservation::View(Box::new(view))
            }
            Err(error) => {
                warn!(cluster = %self.dcs.layout().scope(), member = %self.name(), %error, "DCS unreachable");
                DcsObservation::Unreachable
            }
        };
        let mut observed = state.as_ref().ok().cloned().map(Arc::new);
        let local = match state {
            Ok(state) => local_postgres(&state),
            Err(error) => {
                if self.long_task.is_some() {
                    // A bootstrap or clone fills the data directory meanwhile.
                    debug!(member = %self.name(), %error, "could not observe PostgreSQL while a long action runs");
                } else {
                    warn!(member = %self.name(), %error, "could not observe PostgreSQL");
                }
                LocalPostgres {
                    role: LocalRole::Unknown,
                    ..LocalPostgres::no_data()
                }
            }
        };
        self.memory.observed(&local);
        if matches!(local.role, LocalRole::Replica { .. }) && !local.receiving {
            self.check_disk_full().await;
        }
        let observed_at = self.clock.now();
        if local.role != LocalRole::Unknown {
            self.memory.postgres_answered_at = Some(observed_at);
        }
        self.lease.observed(
            &self.config,
            self.lock_ttl(),
            local.role == LocalRole::Primary,
            observed_at,
        );
        self.last_local = (local.timeline, local.wal_position);
        let peers = self.probe_peers(&dcs).await;
        // Read before the time: a heartbeat acknowledged up to now counts.
        let failsafe = FailsafeInputs {
            round: if matches!(dcs, DcsObservation::Unreachable) {
                round
            } else {
                None
            },
            heartbeat: self.failsafe.last(),
            listening_since: self.started_at,
        };
        // Renewals the renewer made while this loop observed count.
        if let (Some(ours), Some(renewed)) = (self.memory.lock_renewed_at, self.lease.renewed_at())
        {
            if renewed > ours {
                self.memory
                    .record(&Action::RenewLock, &Outcome::Done, renewed);
            }
        }
        let now = self.clock.now();
        let wall_clock =
            self.wall_start + chrono::Duration::from_std(now).unwrap_or(chrono::Duration::zero());
        let decision = (self.decider)(&Inputs {
            node: &self.settings.node,
            config: &self.config,
            dcs: &dcs,
            local: &local,
            peers: &peers,
            memory: &self.memory,
            now,
            wall_clock,
            failsafe: &failsafe,
        });
        debug!(member = %self.name(), role = ?decision.role, reason = %decision.reason, actions = ?decision.actions, "decided");
        self.report_holding_back(&decision, &dcs, &peers);
        // Acknowledge heartbeats only as a replica that is not about to race.
        let following = match (&local.role, decision.role) {
            (LocalRole::Replica { upstream }, EngineRole::Replica | EngineRole::Uncertain) => {
                upstream.clone()
            }
            _ => None,
        };
        self.failsafe
            .set_acceptance(self.config.failsafe_mode, following);
        self.last_role = decision.role;
        self.act(&decision, &local).await;
        let restarted = self.serve_restart(&decision, &local).await;
        let (mut timeline, mut wal_position) = (local.timeline, local.wal_position);
        if restarted || changes_postgres(&decision) {
            // What PostgreSQL is now, not what it was before the plan: the
            // REST API answers from this status and reads nothing itself.
            observed = pg_bounded(retry, self.postgres.observe())
                .await
                .ok()
                .map(Arc::new);
            if let Some(now) = observed.as_deref().map(local_postgres) {
                (timeline, wal_position) = (now.timeline, now.wal_position);
            }
        }
        if decision.role == EngineRole::Leader
            && local.role == LocalRole::Primary
            && self.history_incomplete(local.timeline)
        {
            if let Some(timeline) = local.timeline {
                self.record_history(timeline, None, None).await;
            }
        }
        self.loops += 1;
        let leader = match &dcs {
            // It took or kept the lock in this plan (the view predates it).
            _ if decision.role == EngineRole::Leader => Some(self.name().clone()),
            DcsObservation::View(view) => view.leader_name().cloned(),
            DcsObservation::Unreachable => None,
        };
        // As act() left it: a promotion in this loop set it. (Read before
        // sending: a borrow held across the send would deadlock.)
        let (writable, creating_replica, view, view_read_at) = {
            let published = self.status.borrow();
            let writable = decision.role == EngineRole::Leader && published.writable;
            // As the long action's start and end set it.
            let creating = published.creating_replica;
            match view_read {
                Some(view) => (writable, creating, Some(view), Some(wall_clock)),
                // The DCS did not answer: the last view read stays.
                None => (
                    writable,
                    creating,
                    published.view.clone(),
                    published.view_read_at,
                ),
            }
        };
        self.status.send_replace(EngineStatus {
            role: decision.role,
            reason: decision.reason.clone(),
            leader,
            timeline,
            wal_position,
            dcs_reachable: matches!(dcs, DcsObservation::View(_)),
            paused: self.config.pause,
            loops: self.loops,
            config: self.config.clone(),
            failsafe_active: decision
                .actions
                .iter()
                .any(|a| matches!(a, Action::FailsafeExtend { .. })),
            last_failover_possible_loss_bytes: self.last_failover_loss,
            last_switchover_failure: self.last_switchover_failure.clone(),
            writable,
            pending: decision.pending.clone(),
            creating_replica,
            lock_ttl: self.lock_ttl(),
            postgres: observed,
            view,
            view_read_at,
        });
        decision
    }

    /// A failsafe heartbeat acknowledged less than ttl ago.
    pub(super) fn heartbeat_fresh(&self) -> bool {
        self.failsafe
            .last()
            .is_some_and(|hb| self.clock.now() < hb.received_at.saturating_add(self.config.ttl))
    }

    /// Applies settings changed through [`SettingsHandle`] (not the name).
    pub(super) fn apply_node_settings(&mut self) {
        if !self.node_settings.has_changed().unwrap_or(false) {
            return;
        }
        let mut node = self.node_settings.borrow_and_update().clone();
        if node.name != self.settings.node.name {
            warn!(member = %self.name(), ignored = %node.name, "the member name cannot change while running: keeping it");
            node.name = self.settings.node.name.clone();
        }
        if node != self.settings.node {
            info!(cluster = %self.dcs.layout().scope(), member = %self.name(), tags = ?node.tags, "node settings changed");
            self.settings.node = node;
        }
    }

    /// Reads the view; when it has not answered after half of
    /// `retry_timeout` and this node leads in failsafe mode, sends a round of
    /// failsafe heartbeats meanwhile, so the round is sent well before the
    /// demotion deadline even on the first loop of an outage.
    pub(super) async fn read_view_or_failsafe(
        &self,
    ) -> (Result<ClusterView, DcsError>, Option<FailsafeRound>) {
        let retry = self.config.retry_timeout;
        let read = bounded("read_view", retry, self.dcs.read_view());
        let eligible = self.config.failsafe_mode
            && self.memory.lock_renewed_at.is_some()
            && self.memory.ran_as_primary
            && self.failsafe_sender.is_some();
        if !eligible {
            return (read.await, None);
        }
        tokio::pin!(read);
        tokio::select! {
            biased;
            result = &mut read => {
                // A DCS refusing at once: the round goes now.
                let round = match &result {
                    Ok(_) => None,
                    Err(_) => self.failsafe_round(retry / 2).await,
                };
                (result, round)
            }
            () = tokio::time::sleep(retry / 2) => {
                let (result, round) = tokio::join!(read, self.failsafe_round(retry / 2));
                (result, round)
            }
        }
    }

    /// One round of heartbeats to every other member of the failsafe set.
    ///
    /// No round without a known failsafe set: replicas race freely while the
    /// key is absent, so nobody's silence could be taken for a promise.
    pub(super) async fn failsafe_round(&self, timeout: Duration) -> Option<FailsafeRound> {
        let sender = self.failsafe_sender.as_ref()?;
        if self.failsafe_set.is_empty() {
            debug!(member = %self.name(), "failsafe: no failsafe key known: no round");
            return None;
        }
        let me = self.name();
        let members: Vec<(MemberName, String)> = self
            .failsafe_set
            .iter()
            .filter(|(name, _)| *name != me)
            .map(|(name, url)| (name.clone(), url.clone()))
            .collect();
        let heartbeat = FailsafeHeartbeat {
            name: me.clone(),
            conn_url: self.settings.node.conn_url.clone(),
            api_url: self.settings.node.api_url.clone(),
            timeline: self.last_local.0,
            xlog_location: self.last_local.1,
        };
        let sent_at = self.clock.now();
        let acknowledged =
            tokio::time::timeout(timeout, sender.send(&members, &heartbeat, timeout))
                .await
                .unwrap_or_default();
        let missing = members
            .iter()
            .map(|(name, _)| name.clone())
            .filter(|name| !acknowledged.contains(name))
            .collect::<BTreeSet<_>>();
        let acknowledged = acknowledged
            .into_iter()
            .filter(|name| self.failsafe_set.contains_key(name) && name != me)
            .collect::<BTreeSet<_>>();
        if missing.is_empty() {
            debug!(member = %me, acknowledged = acknowledged.len(), "failsafe round acknowledged by every member");
        } else {
            warn!(cluster = %self.dcs.layout().scope(), member = %me, ?missing, "failsafe round: members did not acknowledge");
        }
        Some(FailsafeRound {
            sent_at,
            acknowledged,
            missing,
        })
    }

    /// Logs each unreadable key (the `config` key aside: `adopt_config`
    /// reports it) once per bad value written (its error or its version
    /// changed), with a bounded excerpt: a huge or garbage value must not
    /// flood the log every loop.
    pub(super) fn report_unreadable_keys(&mut self, view: &ClusterView) {
        let config_key = DcsKey::Config.relative_path();
        let mut seen = BTreeMap::new();
        for error in view.errors().into_iter().filter(|e| e.key != config_key) {
            let hash = text_hash(&format!("{:?} {}", error.version, error.reason));
            if self.reported_bad_keys.get(&error.key) != Some(&hash) {
                let excerpt = excerpt(&error.reason);
                warn!(cluster = %self.dcs.layout().scope(), member = %self.name(), key = %error.key, error = %excerpt,
                    "unreadable DCS value: ignored until it changes");
            }
            seen.insert(error.key.clone(), hash);
        }
        // A key readable again (or gone) is reported anew if it breaks again.
        self.reported_bad_keys = seen;
    }

    /// Logs at info, once when it begins, what this node holds back for
    /// (not racing, not following, waiting), and at warn, once per
    /// record, each member record a race ignores.
    pub(super) fn report_holding_back(
        &mut self,
        decision: &Decision,
        dcs: &DcsObservation,
        peers: &BTreeMap<MemberName, PeerReport>,
    ) {
        if decision.pending != self.last_pending {
            if let Some(pending) = &decision.pending {
                info!(cluster = %self.dcs.layout().scope(), member = %self.name(), role = ?decision.role, reason = %excerpt(pending), "holding back");
            } else if let Some(before) = &self.last_pending {
                info!(cluster = %self.dcs.layout().scope(), member = %self.name(), role = ?decision.role, before = %excerpt(before), "no longer holding back");
            }
            self.last_pending = decision.pending.clone();
        }
        let ignored = match dcs {
            DcsObservation::View(view) if view.leader.is_none() => {
                implausible_records(&self.settings.node.name, view, peers, &self.memory)
            }
            _ => BTreeMap::new(),
        };
        for (name, why) in &ignored {
            let hash = text_hash(why);
            if self.reported_implausible.get(name) != Some(&hash) {
                warn!(cluster = %self.dcs.layout().scope(), member = %self.name(), record = %name, why = %excerpt(why),
                    "ignoring a member record for the leader race");
            }
        }
        if !matches!(dcs, DcsObservation::View(view) if view.leader.is_some()) {
            self.reported_implausible = ignored
                .into_iter()
                .map(|(name, why)| (name, text_hash(&why)))
                .collect();
        }
    }

    /// Takes up a valid `config` key. One that does not parse or breaks a
    /// bound (written behind matriarch's back: `PATCH /config` refuses it)
    /// changes nothing: the last valid configuration stays in force, and
    /// the refusal is logged once per distinct error, not once per loop.
    pub(super) fn adopt_config(&mut self, view: &ClusterView) {
        match &view.config {
            Some(Ok(config)) => {
                self.rejected_config = None;
                if config.value != self.config {
                    info!(cluster = %self.dcs.layout().scope(), member = %self.name(), "dynamic configuration changed");
                    self.config = config.value.clone();
                }
            }
            Some(Err(error)) => {
                if self.rejected_config.as_ref() != Some(error) {
                    warn!(cluster = %self.dcs.layout().scope(), member = %self.name(), error = %excerpt(&error.to_string()),
                        "ignoring the DCS config key: keeping the last valid dynamic configuration");
                    self.rejected_config = Some(error.clone());
                }
            }
            None => self.rejected_config = None,
        }
    }

    pub(super) async fn probe_peers(
        &self,
        dcs: &DcsObservation,
    ) -> BTreeMap<MemberName, PeerReport> {
        let (Some(probe), DcsObservation::View(view)) = (&self.probe, dcs) else {
            return BTreeMap::new();
        };
        // Only a race needs fresher positions than the records give.
        if view.leader.is_some() {
            return BTreeMap::new();
        }
        let members: Vec<Member> = view
            .healthy_records()
            .filter(|m| &m.name != self.name())
            .cloned()
            .collect();
        tokio::time::timeout(self.config.retry_timeout, probe.probe(&members))
            .await
            .unwrap_or_default()
    }
}
