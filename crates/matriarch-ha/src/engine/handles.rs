//! What the engine is given and gives out: the traits of its helpers (fence,
//! peer probe, failsafe sender, member record extras), its settings, and the handles the REST API
//! and the daemon use while it runs (status, failsafe, settings, restart).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use matriarch_dcs::Clock;
use matriarch_model::{
    ClusterConfig, ClusterView, FailsafeHeartbeat, Lsn, Member, MemberName, Timeline,
};
use matriarch_postgres::{BootstrapSpec, LocalState};
use tokio::sync::{mpsc, oneshot, watch, Notify};

use super::errors::{FenceError, RestartError, RestartRefusal};
use crate::decide::{EngineRole, NodeSettings, PeerReport, ReceivedHeartbeat};

/// Stops a primary's PostgreSQL from acknowledging writes when its agent stops
/// renewing (killed, paused, cut off), independently of the agent: the one
/// guarantee an agent cannot give about itself.
#[async_trait]
pub trait Fence: Send + Sync {
    /// Allows writes for `valid_for` from now; after that, PostgreSQL must
    /// stop acknowledging them unless armed again.
    async fn arm(&self, valid_for: Duration) -> Result<(), FenceError>;
    /// This node no longer leads: nothing to guard.
    async fn disarm(&self) -> Result<(), FenceError>;
    /// The cluster is paused: the operator owns PostgreSQL. Nothing is
    /// guarded, and PostgreSQL must outlive this agent (its stop or death
    /// leaves it running), until the next [`Fence::arm`] or
    /// [`Fence::disarm`]. By default, a disarm.
    async fn suspend(&self) -> Result<(), FenceError> {
        self.disarm().await
    }
}

/// Asks peers directly for their WAL positions, fresher than their records.
#[async_trait]
pub trait PeerProbe: Send + Sync {
    /// Reports of the members that answered in time.
    async fn probe(&self, members: &[Member]) -> BTreeMap<MemberName, PeerReport>;
}

/// What the node knows besides the engine's observation, written into every
/// member record the engine publishes, as Patroni's `touch_member` writes it:
/// `patronictl list` shows both, `patronictl flush … restart` needs the
/// scheduled restart to act. Read once per record, so it must answer at once.
pub trait MemberExtras: Send + Sync {
    /// PostgreSQL runs with parameters that wait for a restart
    /// (`pending_restart`).
    fn pending_restart(&self) -> bool;
    /// The restart scheduled through the REST API, as Patroni writes it
    /// (`scheduled_restart`: `schedule` and its conditions).
    fn scheduled_restart(&self) -> Option<serde_json::Value>;
}

/// Sends failsafe heartbeats (`POST /failsafe`) to the members of the
/// `failsafe` key while the DCS is unreachable.
#[async_trait]
pub trait FailsafeSender: Send + Sync {
    /// Sends `heartbeat` to every member (name, REST API URL) at once, each
    /// bounded by `timeout`; returns the members that acknowledged it (200).
    async fn send(
        &self,
        members: &[(MemberName, String)],
        heartbeat: &FailsafeHeartbeat,
        timeout: Duration,
    ) -> BTreeSet<MemberName>;
}

/// Why a failsafe heartbeat was not acknowledged.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FailsafeRefusal {
    /// `failsafe_mode` is off on this node.
    #[error("failsafe mode is off")]
    Disabled,
    /// This node is not a running replica of the sender.
    #[error("not a running replica of {sender}")]
    NotAReplicaOf {
        /// The member that sent the heartbeat.
        sender: MemberName,
    },
}

#[derive(Debug, Default)]
pub(super) struct FailsafeShared {
    enabled: bool,
    /// The member this node runs as a replica of, as the last loop decided.
    following: Option<MemberName>,
    last: Option<ReceivedHeartbeat>,
}

/// The receiving end of failsafe heartbeats: the REST API hands each
/// `POST /failsafe` to [`FailsafeHandle::receive`]; the engine reads the last
/// acknowledged one at every decision. Clones share the state.
#[derive(Clone)]
pub struct FailsafeHandle {
    shared: Arc<Mutex<FailsafeShared>>,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for FailsafeHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FailsafeHandle").finish_non_exhaustive()
    }
}

impl FailsafeHandle {
    pub(super) fn new(clock: Arc<dyn Clock>) -> Self {
        FailsafeHandle {
            shared: Arc::default(),
            clock,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FailsafeShared> {
        self.shared.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records a heartbeat and acknowledges it (`Ok`: answer 200) only when
    /// failsafe mode is on and this node runs as a replica of its sender;
    /// from then on this node does not race for the lock for a ttl.
    pub fn receive(&self, heartbeat: &FailsafeHeartbeat) -> Result<(), FailsafeRefusal> {
        let mut shared = self.lock();
        if !shared.enabled {
            return Err(FailsafeRefusal::Disabled);
        }
        if shared.following.as_ref() != Some(&heartbeat.name) {
            return Err(FailsafeRefusal::NotAReplicaOf {
                sender: heartbeat.name.clone(),
            });
        }
        shared.last = Some(ReceivedHeartbeat {
            leader: heartbeat.name.clone(),
            received_at: self.clock.now(),
        });
        Ok(())
    }

    /// The last heartbeat acknowledged.
    pub fn last(&self) -> Option<ReceivedHeartbeat> {
        self.lock().last.clone()
    }

    pub(super) fn set_acceptance(&self, enabled: bool, following: Option<MemberName>) {
        let mut shared = self.lock();
        shared.enabled = enabled;
        shared.following = following;
    }
}

/// Changes this node's settings (tags, URLs) while the engine runs: the
/// daemon calls [`SettingsHandle::set_node`] on SIGHUP; the engine applies
/// the new settings at the start of its next loop and publishes them in its
/// member record. The member name cannot change (a different name is ignored
/// with a warning).
#[derive(Clone, Debug)]
pub struct SettingsHandle(pub(super) Arc<watch::Sender<NodeSettings>>);

impl SettingsHandle {
    /// Replaces the node settings from the next loop on.
    pub fn set_node(&self, node: NodeSettings) {
        self.0.send_replace(node);
    }

    /// The settings the engine will use from its next loop on.
    pub fn node(&self) -> NodeSettings {
        self.0.borrow().clone()
    }
}

pub(super) type RestartReply = oneshot::Sender<Result<String, RestartError>>;

/// Asks the engine to restart PostgreSQL in its own loop, where the lock and
/// the write fence are known: a primary is stopped and started again only
/// while this member holds the lock, renewed (and the fence re-armed) just
/// before the start; nothing else can demote or promote meanwhile.
#[derive(Clone, Debug)]
pub struct RestartHandle {
    pub(super) requests: mpsc::Sender<RestartReply>,
    pub(super) wake: Arc<Notify>,
}

impl RestartHandle {
    /// Restarts PostgreSQL in the role it runs in, waiting up to `timeout`
    /// for the engine; returns what was done.
    pub async fn restart(&self, timeout: Duration) -> Result<String, RestartError> {
        let (reply, answer) = oneshot::channel();
        self.requests.try_send(reply).map_err(|error| match error {
            mpsc::error::TrySendError::Full(_) => {
                RestartError::Refused(RestartRefusal::AnotherWaiting)
            }
            mpsc::error::TrySendError::Closed(_) => RestartError::EngineGone,
        })?;
        self.wake.notify_one();
        match tokio::time::timeout(timeout, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(RestartError::EngineGone),
            Err(_) => Err(RestartError::Timeout(timeout)),
        }
    }
}

/// What the engine needs besides the three traits.
#[derive(Clone, Debug)]
pub struct EngineSettings {
    /// This node.
    pub node: NodeSettings,
    /// The dynamic configuration a bootstrap writes, and the one in force
    /// until the DCS holds a valid one.
    pub bootstrap_config: ClusterConfig,
    /// How a bootstrap creates the cluster.
    pub bootstrap: BootstrapSpec,
    /// The bound on slow PostgreSQL operations (start, promote, clone).
    pub postgres_timeout: Duration,
}

/// The engine's state as the REST API and metrics read it.
#[derive(Clone, Debug, PartialEq)]
pub struct EngineStatus {
    /// The role this node plays.
    pub role: EngineRole,
    /// Why, from the last decision.
    pub reason: String,
    /// The lock holder, if known.
    pub leader: Option<MemberName>,
    /// The local timeline.
    pub timeline: Option<Timeline>,
    /// The local WAL position.
    pub wal_position: Option<Lsn>,
    /// Whether the last DCS read succeeded.
    pub dcs_reachable: bool,
    /// Whether the cluster is paused.
    pub paused: bool,
    /// Loops run so far.
    pub loops: u64,
    /// The dynamic configuration the engine decides with.
    pub config: ClusterConfig,
    /// This node leads on failsafe: the DCS is unreachable and every member
    /// acknowledged its last heartbeat.
    pub failsafe_active: bool,
    /// How long the leader lock counts after a renewal: the ttl, or the
    /// shorter lifetime the DCS reported for it. The watchdog timeout
    /// follows it.
    pub lock_ttl: Duration,
    /// How many bytes of WAL the former leader was last known to hold beyond
    /// this node's position when this node last promoted in a failover
    /// (`None`: no failover by this node, or the position was unknown).
    pub last_failover_possible_loss_bytes: Option<u64>,
    /// Why the last switchover this node stepped down for did not complete
    /// (nobody took over, so it leads again on the same timeline).
    pub last_switchover_failure: Option<String>,
    /// PostgreSQL runs read-write under this node's leadership: set the
    /// moment a promotion completes, cleared before a demotion or any
    /// decision not to lead is acted on (not only at the loop's end), so
    /// the REST role checks follow the engine without lag.
    pub writable: bool,
    /// Why this node holds back, from the last decision ([`Decision::pending`]).
    pub pending: Option<String>,
    /// A replica is being cloned into the data directory (pg_basebackup
    /// runs): Patroni's `creating replica` state, which `patronictl reinit
    /// --wait` waits out. Set when the clone starts, cleared when it ends.
    pub creating_replica: bool,
    /// The local PostgreSQL as the loop last observed it (after any action
    /// of the loop that changed it; a promotion updates it at once), so that
    /// readers need not ask PostgreSQL again; `None` until observed, or when
    /// the last observation failed.
    pub postgres: Option<Arc<LocalState>>,
    /// The DCS view the last decision was made on (while the DCS does not
    /// answer, the last one read); `None` until one was read.
    pub view: Option<Arc<ClusterView>>,
    /// When `view` was read (wall clock).
    pub view_read_at: Option<DateTime<Utc>>,
}

/// A cheap read handle on [`EngineStatus`].
#[derive(Clone, Debug)]
pub struct StatusHandle(pub(super) watch::Receiver<EngineStatus>);

impl From<watch::Receiver<EngineStatus>> for StatusHandle {
    /// A handle on a status whoever holds the sender publishes (an
    /// embedder's own loop, a test standing in for the engine).
    fn from(receiver: watch::Receiver<EngineStatus>) -> Self {
        StatusHandle(receiver)
    }
}

impl StatusHandle {
    /// The latest status.
    pub fn get(&self) -> EngineStatus {
        self.0.borrow().clone()
    }

    /// Waits until the status changes.
    pub async fn changed(&mut self) -> bool {
        self.0.changed().await.is_ok()
    }
}
