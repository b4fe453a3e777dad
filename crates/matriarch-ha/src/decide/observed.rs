//! What a decision is made from besides the DCS view: this node, its
//! PostgreSQL, its peers and failsafe heartbeats.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use matriarch_model::{Lsn, MemberName, StandbyCluster, SystemId, Tags, Timeline};

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
    /// The WAL position a replica replayed up to (its member record's
    /// `replay_lsn`).
    pub replayed: Option<Lsn>,
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
    /// The standby cluster source this replica was last pointed at (a
    /// standby leader's), `None` when it follows a member or nothing.
    pub standby_source: Option<StandbyCluster>,
}

impl LocalPostgres {
    /// A node with no data directory.
    pub fn no_data() -> Self {
        LocalPostgres {
            role: LocalRole::NoData,
            system_id: None,
            timeline: None,
            wal_position: None,
            replayed: None,
            streaming_standbys: BTreeSet::new(),
            sync_standbys: BTreeSet::new(),
            sync_count: 0,
            sync_any_standby: false,
            receiving: false,
            standby_flush: BTreeMap::new(),
            standby_source: None,
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
