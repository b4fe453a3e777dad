//! One in-memory PostgreSQL server: its data directory (timeline and WAL)
//! and what runs on it.

use matriarch_model::{Lsn, MemberName, SlotKind, SystemId, Timeline};

use crate::{SyncStandbyNames, Upstream};

/// The position of an empty WAL: the first record ends 64 bytes later.
const WAL_START: u64 = 0x100_0000;

/// The size of one record, so that positions look like PostgreSQL's.
const RECORD_BYTES: u64 = 64;

/// One slot of an in-memory server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemorySlot {
    /// Physical or logical.
    pub kind: SlotKind,
    /// Its restart (physical) or confirmed flush (logical) position.
    pub position: Lsn,
}

/// One committed transaction in a WAL.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct WalRecord {
    /// The timeline it was written on.
    pub timeline: Timeline,
    /// Which write it is: unique in the cluster ([`super::Servers::commit`]
    /// numbers them), and always at the same position in every WAL that
    /// holds it, since WAL only moves by copying a primary's.
    pub id: u64,
}

/// A data directory that holds a cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataDirectory {
    /// The system identifier `initdb` chose.
    pub system_id: SystemId,
    /// The timeline of the last record replayed or written.
    pub timeline: Timeline,
    /// Every record, oldest first. Two histories diverge where their
    /// records differ.
    pub wal: Vec<WalRecord>,
    /// The timeline pg_control names: the last checkpoint's (a primary) or
    /// restartpoint's (a replica), behind the replayed one until a
    /// restartpoint happens after a timeline switch.
    pub control_timeline: Timeline,
}

impl DataDirectory {
    /// The end of the WAL.
    pub fn position(&self) -> Lsn {
        Lsn(WAL_START + RECORD_BYTES * self.wal.len() as u64)
    }

    /// This WAL is the start of (or equal to) `other`'s: a replica of
    /// `other` can stream the rest without a rewind.
    pub fn is_prefix_of(&self, other: &DataDirectory) -> bool {
        is_prefix(&self.wal, &other.wal)
    }

    /// This WAL holds write `id`.
    pub fn holds(&self, id: u64) -> bool {
        self.wal.iter().any(|record| record.id == id)
    }

    /// How many records this WAL shares with `other` from the start.
    pub fn common_records(&self, other: &DataDirectory) -> usize {
        self.wal
            .iter()
            .zip(&other.wal)
            .take_while(|(a, b)| a == b)
            .count()
    }
}

/// `short` is the start of `long`.
///
/// Only the last record of `short` is compared: a record is written once,
/// by one primary, and reaches other WALs only with every record before it
/// (streaming, cloning, and pg_rewind keep a common start), so two WALs that
/// hold the same record at the same position agree up to it.
pub fn is_prefix(short: &[WalRecord], long: &[WalRecord]) -> bool {
    match short.len().checked_sub(1) {
        None => true,
        Some(last) => long.get(last) == Some(&short[last]),
    }
}

/// One server: a data directory (or none) and the postmaster on it.
#[derive(Clone, Debug)]
pub struct Server {
    /// Its member name (its replication connections' `application_name`).
    pub name: MemberName,
    /// `None`: the data directory is empty.
    pub data: Option<DataDirectory>,
    /// The postmaster runs and accepts connections.
    pub running: bool,
    /// In recovery: `standby.signal` is present (a stopped server), or it
    /// runs as a replica.
    pub in_recovery: bool,
    /// The last stop was not clean (a crash, an immediate stop): the next
    /// start runs crash recovery.
    pub crashed: bool,
    /// `primary_conninfo`: where it streams from, in recovery.
    pub upstream: Option<Upstream>,
    /// `synchronous_standby_names` as configured.
    pub sync_names: SyncStandbyNames,
    /// Cut off from every other server (replication, cloning, pg_rewind).
    pub isolated: bool,
    /// WAL shipping to it is held up until then (on the cluster's clock).
    pub stalled_until: Option<std::time::Duration>,
    /// Its replication slots (`pg_replslot`): kept across restarts, gone
    /// with the data directory.
    pub slots: std::collections::BTreeMap<String, MemorySlot>,
    /// Its disk is full: it cannot start ([`crate::PostgresError::NoSpace`])
    /// until space is freed ([`super::Servers::fill_disk`]).
    pub disk_full: bool,
}

impl Server {
    pub(super) fn new(name: MemberName) -> Self {
        Server {
            name,
            data: None,
            running: false,
            in_recovery: false,
            crashed: false,
            upstream: None,
            sync_names: SyncStandbyNames::Off,
            isolated: false,
            stalled_until: None,
            slots: std::collections::BTreeMap::new(),
            disk_full: false,
        }
    }

    /// It runs read-write.
    pub fn is_running_primary(&self) -> bool {
        self.running && !self.in_recovery && self.data.is_some()
    }

    /// It runs in recovery.
    pub fn is_running_replica(&self) -> bool {
        self.running && self.in_recovery && self.data.is_some()
    }

    /// The member it streams from, if it runs as a replica of one.
    pub fn streams_from(&self) -> Option<&MemberName> {
        if !self.is_running_replica() {
            return None;
        }
        self.upstream.as_ref().map(|upstream| &upstream.member)
    }

    /// The end of its WAL, if it has a data directory.
    pub fn position(&self) -> Option<Lsn> {
        self.data.as_ref().map(DataDirectory::position)
    }
}
