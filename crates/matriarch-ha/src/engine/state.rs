//! The engine of one node: what it holds between loops, how it is made,
//! and the handles it gives out.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use matriarch_dcs::{Clock, Dcs};
use matriarch_model::{ClusterConfig, ClusterView, DecodeError, Lsn, MemberName, Timeline};
use matriarch_postgres::Postgres;
use matriarch_router::Router;
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinHandle;

use super::errors::ActionError;
use super::handles::{
    EngineSettings, EngineStatus, FailsafeHandle, FailsafeSender, Fence, MemberExtras, PeerProbe,
    RestartHandle, RestartReply, SettingsHandle, StatusHandle,
};
use super::renewal::Lease;
use crate::decide::{decide, Action, Decision, EngineRole, Inputs, Memory, NodeSettings, Outcome};

/// A bootstrap, clone or rewind running beside the loop: what it did, how
/// it ended, when it was sent, and why it failed when the loop reports it.
type LongTask = JoinHandle<(Action, Outcome, Duration, Option<ActionError>)>;

/// The HA engine of one node.
pub struct Engine<D, P, R> {
    pub(super) dcs: Arc<D>,
    pub(super) postgres: Arc<P>,
    pub(super) router: R,
    pub(super) settings: EngineSettings,
    pub(super) clock: Arc<dyn Clock>,
    pub(super) wall_start: DateTime<Utc>,
    pub(super) fence: Option<Arc<dyn Fence>>,
    pub(super) probe: Option<Arc<dyn PeerProbe>>,
    pub(super) member_extras: Option<Arc<dyn MemberExtras>>,
    pub(super) memory: Memory,
    pub(super) config: ClusterConfig,
    /// Why the `config` key was last refused, so that a bad value is
    /// reported once per change of the key, not once per loop.
    pub(super) rejected_config: Option<DecodeError>,
    pub(super) last_view: Option<ClusterView>,
    pub(super) long_task: Option<LongTask>,
    pub(super) status: watch::Sender<EngineStatus>,
    pub(super) loops: u64,
    pub(super) decider: Decider,
    pub(super) failsafe: FailsafeHandle,
    pub(super) failsafe_sender: Option<Arc<dyn FailsafeSender>>,
    /// The failsafe set last read from the DCS, plus any written since.
    pub(super) failsafe_set: BTreeMap<MemberName, String>,
    pub(super) node_settings: watch::Receiver<NodeSettings>,
    pub(super) node_settings_tx: Arc<watch::Sender<NodeSettings>>,
    /// Restarts asked for through [`RestartHandle`], carried out in the loop.
    pub(super) restarts: mpsc::Receiver<RestartReply>,
    pub(super) restart_handle: RestartHandle,
    /// The former leader the plan being carried out fails over from.
    pub(super) failing_over_from: Option<MemberName>,
    pub(super) last_failover_loss: Option<u64>,
    /// Why the last switchover this node stepped down for did not complete.
    pub(super) last_switchover_failure: Option<String>,
    /// Unreadable keys already reported, with a hash of their error: each
    /// is logged once per change, not once per loop.
    pub(super) reported_bad_keys: BTreeMap<String, u64>,
    /// Member records a race ignored, already reported (hash of the why).
    pub(super) reported_implausible: BTreeMap<MemberName, u64>,
    /// What the last decision held back for: logged when it changes.
    pub(super) last_pending: Option<String>,
    /// The local timeline and WAL position last observed (for heartbeats).
    pub(super) last_local: (Option<Timeline>, Option<Lsn>),
    /// When (monotonic) this engine was made.
    pub(super) started_at: Duration,
    /// The role the last decision gave.
    pub(super) last_role: EngineRole,
    /// Shared with the renewer that keeps a held lock renewed beside the loop.
    pub(super) lease: Arc<Lease>,
}

/// A decision function with [`decide`]'s signature.
pub type Decider = fn(&Inputs<'_>) -> Decision;

impl<D, P, R> Engine<D, P, R>
where
    D: Dcs + 'static,
    P: Postgres + 'static,
    R: Router,
{
    /// An engine for one node; `clock` is monotonic time (a simulation
    /// passes a virtual one).
    pub fn new(
        dcs: D,
        postgres: P,
        router: R,
        settings: EngineSettings,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let (status, _) = watch::channel(EngineStatus {
            role: EngineRole::Uninitialized,
            reason: "starting".to_owned(),
            leader: None,
            timeline: None,
            wal_position: None,
            dcs_reachable: false,
            paused: false,
            loops: 0,
            config: settings.bootstrap_config.clone(),
            failsafe_active: false,
            lock_ttl: settings.bootstrap_config.ttl,
            last_failover_possible_loss_bytes: None,
            last_switchover_failure: None,
            pending: None,
            creating_replica: false,
            writable: false,
            postgres: None,
            view: None,
            view_read_at: None,
        });
        let (node_settings_tx, node_settings) = watch::channel(settings.node.clone());
        let (restart_requests, restarts) = mpsc::channel(1);
        let failsafe = FailsafeHandle::new(Arc::clone(&clock));
        let started_at = clock.now();
        Engine {
            dcs: Arc::new(dcs),
            postgres: Arc::new(postgres),
            router,
            config: settings.bootstrap_config.clone(),
            settings,
            clock,
            wall_start: Utc::now(),
            fence: None,
            probe: None,
            member_extras: None,
            memory: Memory::default(),
            rejected_config: None,
            last_view: None,
            long_task: None,
            status,
            loops: 0,
            decider: decide,
            failsafe,
            failsafe_sender: None,
            failsafe_set: BTreeMap::new(),
            node_settings,
            node_settings_tx: Arc::new(node_settings_tx),
            restarts,
            restart_handle: RestartHandle {
                requests: restart_requests,
                wake: Arc::new(Notify::new()),
            },
            failing_over_from: None,
            last_failover_loss: None,
            last_switchover_failure: None,
            reported_bad_keys: BTreeMap::new(),
            reported_implausible: BTreeMap::new(),
            last_pending: None,
            last_local: (None, None),
            started_at,
            last_role: EngineRole::Uninitialized,
            lease: Arc::default(),
        }
    }

    /// Sends failsafe heartbeats through `sender` when this node leads and
    /// the DCS is unreachable with `failsafe_mode` on. Without one, a primary
    /// cut off from the DCS demotes by its deadline as in non-failsafe mode.
    pub fn with_failsafe_sender(mut self, sender: Arc<dyn FailsafeSender>) -> Self {
        self.failsafe_sender = Some(sender);
        self
    }

    /// The handle the REST API passes received failsafe heartbeats to.
    pub fn failsafe_handle(&self) -> FailsafeHandle {
        self.failsafe.clone()
    }

    /// A handle the REST API asks for PostgreSQL restarts through.
    pub fn restart_handle(&self) -> RestartHandle {
        self.restart_handle.clone()
    }

    /// A handle to change this node's settings (tags) while the engine runs.
    pub fn settings_handle(&self) -> SettingsHandle {
        SettingsHandle(Arc::clone(&self.node_settings_tx))
    }

    /// Replaces [`decide`] with another policy: for simulations that prove
    /// the harness catches a broken one, or for teams with their own rules.
    pub fn with_decider(mut self, decider: Decider) -> Self {
        self.decider = decider;
        self
    }

    /// Guards writes with a fence that outlives this agent.
    ///
    /// A primary's writes stop [`ClusterConfig::write_stop_margin`] before
    /// its lock can expire: a margin that counts on the fence stopping them
    /// at once. Without a fence only the loop's demotion stops them, and it
    /// may take up to `retry_timeout`: give every engine that runs a real
    /// primary a fence.
    pub fn with_fence(mut self, fence: Arc<dyn Fence>) -> Self {
        self.fence = Some(fence);
        self
    }

    /// Asks peers directly for their positions when the leader is gone.
    pub fn with_peer_probe(mut self, probe: Arc<dyn PeerProbe>) -> Self {
        self.probe = Some(probe);
        self
    }

    /// Writes what the node knows besides the engine (a pending or a
    /// scheduled restart) into every member record it publishes.
    pub fn with_member_extras(mut self, extras: Arc<dyn MemberExtras>) -> Self {
        self.member_extras = Some(extras);
        self
    }

    /// Sets the wall-clock time that monotonic time zero stands for (for
    /// scheduled switchovers in a simulation).
    pub fn with_wall_start(mut self, wall_start: DateTime<Utc>) -> Self {
        self.wall_start = wall_start;
        self
    }

    /// A read handle on the engine's status.
    pub fn status(&self) -> StatusHandle {
        StatusHandle(self.status.subscribe())
    }

    /// What the engine remembers, for tests and diagnostics.
    pub fn memory(&self) -> &Memory {
        &self.memory
    }

    /// The configuration in force.
    pub fn config(&self) -> &ClusterConfig {
        &self.config
    }

    /// This node's name.
    pub(super) fn name(&self) -> &MemberName {
        &self.settings.node.name
    }
}
