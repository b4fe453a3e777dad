//! matriarch's cluster model: members, the leader lock, WAL positions,
//! timelines, the dynamic configuration, and how each is stored in the DCS.
//!
//! This crate does no I/O. Backends read raw keys and hand them to
//! [`ClusterView::decode`]; they write values made by [`Record::encode`] and
//! the other `encode_*` functions, so every backend stores the same bytes,
//! in Patroni's layout (see `docs/dcs-layout.md`).

mod codec;
mod config;
mod host_port;
mod layout;
mod lsn;
mod member;
mod records;
mod secret;
mod slot_name;
mod slots;
mod standby;
mod switch;
mod units;

pub use codec::{
    decode_config, decode_initialize, decode_leader, decode_member, encode_initialize,
    encode_leader, encode_member, ClusterView, DecodeError, Entry, RawEntry, Record, Version,
    Versioned,
};
pub use config::{
    write_stop_margin, ClusterConfig, ConfigError, ParameterValue, PostgresqlConfig,
    SynchronousMode,
};
pub use host_port::{HostPort, HostPortError, HostPortProblem};
pub use layout::{DcsKey, KeyLayout, DEFAULT_NAMESPACE, MEMBERS_DIR};
pub use lsn::{Lsn, SystemId, Timeline};
pub use member::{Member, MemberName, MemberState, Role, Tags};
pub use records::{
    FailoverRequest, Failsafe, FailsafeHeartbeat, HistoryEntry, Initialize, LeaderLock,
    LeaderStatus, SyncState, TimelineHistory,
};
pub use secret::Secret;
pub use slot_name::{valid_slot_name, MAX_SLOT_NAME_LEN};
pub use slots::{
    DesiredSlots, IgnoreSlotRule, SlotConfigError, SlotKind, SlotReport, SlotState, SlotsConfig,
    DEFAULT_MEMBER_SLOTS_TTL,
};
pub use standby::{StandbyCluster, StandbyClusterError};
pub use switch::deserialize_switch;
pub use units::number_with_unit;

/// Errors from parsing model values.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    /// Text that is not a PostgreSQL LSN (`X/Y`).
    #[error("invalid LSN {input:?}: {reason}")]
    InvalidLsn {
        /// The rejected text.
        input: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Text that is not a database system identifier.
    #[error("invalid system identifier {input:?}: expected an unsigned 64-bit decimal number")]
    InvalidSystemId {
        /// The rejected text.
        input: String,
    },
    /// A member name that cannot be used.
    #[error("invalid member name {name:?}: {reason}")]
    InvalidMemberName {
        /// The rejected name.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A namespace or scope that cannot form DCS keys.
    #[error("invalid DCS layout (namespace {namespace:?}, scope {scope:?}): {reason}")]
    InvalidLayout {
        /// The namespace given.
        namespace: String,
        /// The scope given.
        scope: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A configuration that breaks a rule.
    #[error("invalid cluster configuration: {0}")]
    InvalidConfig(#[from] ConfigError),
}
