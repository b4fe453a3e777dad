//! matriarch's cluster model: members, the leader lock, WAL positions,
//! timelines, the dynamic configuration, and how each is stored in the DCS.
//!
//! This crate does no I/O. Backends read raw keys and hand them to
//! [`ClusterView::decode`]; they write values made by [`Record::encode`] and
//! the other `encode_*` functions, so every backend stores the same bytes,
//! in Patroni's layout (see `docs/dcs-layout.md`).

mod codec;
mod config;
mod error;
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
pub use error::ModelError;
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
