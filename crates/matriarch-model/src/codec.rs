//! Encoding records to DCS values and decoding them back, strictly about
//! types and leniently about unknown fields.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::DeserializeOwned;

use crate::config::ClusterConfig;
use crate::layout::DcsKey;
use crate::lsn::SystemId;
use crate::member::{Member, MemberName};
use crate::records::{
    FailoverRequest, Failsafe, Initialize, LeaderLock, LeaderStatus, SyncState, TimelineHistory,
};

/// A value stored in the DCS could not be decoded. It concerns one key only;
/// the rest of the view is still usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed value under `{key}`: {reason}")]
pub struct DecodeError {
    /// The key, relative to the scope.
    pub key: String,
    /// What is wrong with it.
    pub reason: String,
    /// The version of the value that failed, when it came from a read
    /// (so a new bad value is told apart from the same one read again).
    pub version: Option<Version>,
}

impl DecodeError {
    fn new(key: &DcsKey, reason: impl fmt::Display) -> Self {
        DecodeError {
            key: key.relative_path(),
            reason: reason.to_string(),
            version: None,
        }
    }
}

/// A backend's version of one key, used for compare-and-swap
/// (etcd's mod_revision, ZooKeeper's znode version, MemoryDcs' counter).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version(pub u64);

/// A decoded value with the version it was read at.
#[derive(Clone, Debug, PartialEq)]
pub struct Versioned<T> {
    /// The value.
    pub value: T,
    /// Its version, for a later compare-and-swap.
    pub version: Version,
}

/// One key as read from the DCS, not yet decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawEntry {
    /// The path relative to the scope (`leader`, `members/n1`, ...).
    pub key: String,
    /// The stored bytes.
    pub value: Vec<u8>,
    /// The key's version.
    pub version: Version,
}

/// A key's content in a [`ClusterView`]: decoded, or the reason it could not be.
pub type Entry<T> = Result<Versioned<T>, DecodeError>;

fn json<T: DeserializeOwned>(key: &DcsKey, bytes: &[u8]) -> Result<T, DecodeError> {
    serde_json::from_slice(bytes).map_err(|e| DecodeError::new(key, e))
}

fn text<'a>(key: &DcsKey, bytes: &'a [u8]) -> Result<&'a str, DecodeError> {
    std::str::from_utf8(bytes).map_err(|e| DecodeError::new(key, format!("not UTF-8: {e}")))
}

/// A record that is written with compare-and-swap through the DCS trait.
///
/// The leader lock and member records are not here: they are bound to a TTL
/// and have their own operations.
#[derive(Clone, Debug, PartialEq)]
pub enum Record {
    /// The dynamic configuration.
    Config(ClusterConfig),
    /// A switchover or failover request.
    Failover(FailoverRequest),
    /// The synchronous replication state.
    Sync(SyncState),
    /// The timeline history.
    History(TimelineHistory),
    /// The leader's optime and slots.
    Status(LeaderStatus),
    /// The failsafe member list.
    Failsafe(Failsafe),
}

impl Record {
    /// The key this record is stored under.
    pub fn key(&self) -> DcsKey {
        match self {
            Record::Config(_) => DcsKey::Config,
            Record::Failover(_) => DcsKey::Failover,
            Record::Sync(_) => DcsKey::Sync,
            Record::History(_) => DcsKey::History,
            Record::Status(_) => DcsKey::Status,
            Record::Failsafe(_) => DcsKey::Failsafe,
        }
    }

    /// The stored bytes (JSON).
    pub fn encode(&self) -> Vec<u8> {
        let encoded = match self {
            Record::Config(value) => serde_json::to_vec(value),
            Record::Failover(value) => serde_json::to_vec(value),
            Record::Sync(value) => serde_json::to_vec(value),
            Record::History(value) => serde_json::to_vec(value),
            Record::Status(value) => serde_json::to_vec(value),
            Record::Failsafe(value) => serde_json::to_vec(value),
        };
        // Serializing these plain types into a Vec cannot fail: no maps with
        // non-string keys, no non-finite floats reach here from validated input.
        encoded.unwrap_or_else(|_| b"null".to_vec())
    }

    /// Decodes the value stored under `key`; `None` when `key` does not hold a
    /// [`Record`] (leader, members, initialize).
    pub fn decode(key: &DcsKey, bytes: &[u8]) -> Option<Result<Record, DecodeError>> {
        Some(match key {
            DcsKey::Config => decode_config(bytes).map(Record::Config),
            DcsKey::Failover => decode_failover(bytes).map(Record::Failover),
            DcsKey::Sync => json(key, bytes).map(Record::Sync),
            DcsKey::History => json(key, bytes).map(Record::History),
            DcsKey::Status => json(key, bytes).map(Record::Status),
            DcsKey::Failsafe => json(key, bytes).map(Record::Failsafe),
            DcsKey::Initialize | DcsKey::Leader | DcsKey::Member(_) => return None,
        })
    }
}

/// Decodes and validates the `config` key. A config that breaks a safety rule
/// is an error, not adjusted.
pub fn decode_config(bytes: &[u8]) -> Result<ClusterConfig, DecodeError> {
    let config: ClusterConfig = json(&DcsKey::Config, bytes)?;
    config
        .validate()
        .map_err(|e| DecodeError::new(&DcsKey::Config, e))?;
    Ok(config)
}

fn decode_failover(bytes: &[u8]) -> Result<FailoverRequest, DecodeError> {
    let request: FailoverRequest = json(&DcsKey::Failover, bytes)?;
    if request.is_empty() {
        return Err(DecodeError::new(
            &DcsKey::Failover,
            "names neither a leader nor a member",
        ));
    }
    Ok(request)
}

/// Encodes a member record (its name is the key, not part of the value).
pub fn encode_member(member: &Member) -> Vec<u8> {
    serde_json::to_vec(member).unwrap_or_else(|_| b"null".to_vec())
}

/// Decodes the record stored under `members/<name>`.
pub fn decode_member(name: &MemberName, bytes: &[u8]) -> Result<Member, DecodeError> {
    let mut member: Member = json(&DcsKey::Member(name.clone()), bytes)?;
    member.name = name.clone();
    Ok(member)
}

/// Encodes the leader key: the holder's bare name.
pub fn encode_leader(lock: &LeaderLock) -> Vec<u8> {
    lock.holder.as_str().as_bytes().to_vec()
}

/// Decodes the leader key.
pub fn decode_leader(bytes: &[u8]) -> Result<LeaderLock, DecodeError> {
    let name = text(&DcsKey::Leader, bytes)?;
    MemberName::new(name)
        .map(|holder| LeaderLock { holder })
        .map_err(|e| DecodeError::new(&DcsKey::Leader, e))
}

/// Encodes the initialize key: empty while bootstrapping, then the system id.
pub fn encode_initialize(state: &Initialize) -> Vec<u8> {
    match state {
        Initialize::InProgress => Vec::new(),
        Initialize::Done(id) => id.to_string().into_bytes(),
    }
}

/// Decodes the initialize key.
pub fn decode_initialize(bytes: &[u8]) -> Result<Initialize, DecodeError> {
    let value = text(&DcsKey::Initialize, bytes)?;
    if value.is_empty() {
        return Ok(Initialize::InProgress);
    }
    value
        .parse::<SystemId>()
        .map(Initialize::Done)
        .map_err(|e| DecodeError::new(&DcsKey::Initialize, e))
}

/// Everything under a cluster's scope, read in one call, each key decoded on
/// its own: a malformed key is an error in its slot and nothing else.
///
/// `None` means the key is absent; `Some(Err(..))` means it is present but
/// unreadable, which the engine must never treat as absent (an unreadable
/// leader key is not a free lock).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ClusterView {
    /// The backend's revision of the whole scope when it was read; watches
    /// resume from it.
    pub revision: u64,
    /// `initialize`.
    pub initialize: Option<Entry<Initialize>>,
    /// `config`.
    pub config: Option<Entry<ClusterConfig>>,
    /// `leader`.
    pub leader: Option<Entry<LeaderLock>>,
    /// `members/*`, by the key's name (also when the name itself is invalid).
    pub members: BTreeMap<String, Entry<Member>>,
    /// `failover`.
    pub failover: Option<Entry<FailoverRequest>>,
    /// `sync`.
    pub sync: Option<Entry<SyncState>>,
    /// `history`.
    pub history: Option<Entry<TimelineHistory>>,
    /// `status`.
    pub status: Option<Entry<LeaderStatus>>,
    /// `failsafe`.
    pub failsafe: Option<Entry<Failsafe>>,
}

fn versioned<T>(version: crate::codec::Version, decoded: Result<T, DecodeError>) -> Entry<T> {
    decoded
        .map(|value| Versioned { value, version })
        .map_err(|error| DecodeError {
            version: Some(version),
            ..error
        })
}

impl ClusterView {
    /// Decodes the raw keys a backend read under the scope. Keys matriarch
    /// does not use are ignored.
    pub fn decode(revision: u64, entries: impl IntoIterator<Item = RawEntry>) -> ClusterView {
        let mut view = ClusterView {
            revision,
            ..ClusterView::default()
        };
        for entry in entries {
            let RawEntry {
                key: path,
                value,
                version,
            } = entry;
            let key = match DcsKey::parse_relative(&path) {
                Ok(Some(key)) => key,
                Ok(None) => continue,
                Err(e) => {
                    // Only member keys can fail to parse: keep the error in its slot.
                    let name = path
                        .strip_prefix(crate::layout::MEMBERS_DIR)
                        .unwrap_or(&path);
                    view.members.insert(
                        name.to_owned(),
                        Err(DecodeError {
                            key: path.clone(),
                            reason: e.to_string(),
                            version: Some(version),
                        }),
                    );
                    continue;
                }
            };
            match &key {
                DcsKey::Initialize => {
                    view.initialize = Some(versioned(version, decode_initialize(&value)))
                }
                DcsKey::Leader => view.leader = Some(versioned(version, decode_leader(&value))),
                DcsKey::Member(name) => {
                    view.members.insert(
                        name.as_str().to_owned(),
                        versioned(version, decode_member(name, &value)),
                    );
                }
                DcsKey::Config => view.config = Some(versioned(version, decode_config(&value))),
                DcsKey::Failover => {
                    view.failover = Some(versioned(version, decode_failover(&value)))
                }
                DcsKey::Sync => view.sync = Some(versioned(version, json(&key, &value))),
                DcsKey::History => view.history = Some(versioned(version, json(&key, &value))),
                DcsKey::Status => view.status = Some(versioned(version, json(&key, &value))),
                DcsKey::Failsafe => view.failsafe = Some(versioned(version, json(&key, &value))),
            }
        }
        view
    }

    /// The lock holder's name, when the leader key is present and readable.
    pub fn leader_name(&self) -> Option<&MemberName> {
        match &self.leader {
            Some(Ok(lock)) => Some(&lock.value.holder),
            _ => None,
        }
    }

    /// The members whose records decoded, by name.
    pub fn healthy_records(&self) -> impl Iterator<Item = &Member> {
        self.members
            .values()
            .filter_map(|entry| entry.as_ref().ok().map(|versioned| &versioned.value))
    }

    /// Every key that failed to decode, for reporting.
    pub fn errors(&self) -> Vec<&DecodeError> {
        fn err<T>(entry: &Option<Entry<T>>) -> Option<&DecodeError> {
            entry.as_ref().and_then(|e| e.as_ref().err())
        }
        let mut errors: Vec<&DecodeError> = [
            err(&self.initialize),
            err(&self.config),
            err(&self.leader),
            err(&self.failover),
            err(&self.sync),
            err(&self.history),
            err(&self.status),
            err(&self.failsafe),
        ]
        .into_iter()
        .flatten()
        .collect();
        errors.extend(self.members.values().filter_map(|e| e.as_ref().err()));
        errors
    }
}
