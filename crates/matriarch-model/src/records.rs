//! The small records kept under the scope besides members and config.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, FixedOffset};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::lsn::{Lsn, SystemId, Timeline};
use crate::member::MemberName;

/// The `initialize` key: taken (create-if-absent) by the member that won the
/// race to bootstrap the cluster; it then records the new system identifier.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Initialize {
    /// The race was won and `initdb` is running (Patroni writes an empty value).
    InProgress,
    /// The cluster exists with this system identifier.
    Done(SystemId),
}

/// The `leader` key: the member that holds the leader lock. Its value is the
/// bare member name, as Patroni stores it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaderLock {
    /// The lock holder.
    pub holder: MemberName,
}

/// The `failover` key: a request for a planned switchover or a manual failover.
///
/// With `leader` set it is a switchover away from that leader (only acted on
/// while that member still leads); with only `member` it is a failover to that
/// candidate. `scheduled_at` delays a switchover.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailoverRequest {
    /// The current leader the request applies to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<MemberName>,
    /// The member to promote (Patroni's JSON calls it `member`).
    #[serde(default, rename = "member", skip_serializing_if = "Option::is_none")]
    pub candidate: Option<MemberName>,
    /// When to carry out a switchover; absent means now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduled_at: Option<DateTime<FixedOffset>>,
}

impl FailoverRequest {
    /// Whether the request names neither a leader nor a candidate, which
    /// leaves nothing to act on.
    pub fn is_empty(&self) -> bool {
        self.leader.is_none() && self.candidate.is_none()
    }
}

/// The `sync` key: which standbys the primary may currently wait on.
///
/// The primary keeps this a superset of what PostgreSQL's
/// `synchronous_standby_names` can wait on, so that only a member listed here
/// can hold every acknowledged commit.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncState {
    /// The primary that wrote the state.
    #[serde(default)]
    pub leader: Option<MemberName>,
    /// The synchronous standbys (a comma-separated string in JSON, as Patroni writes it).
    #[serde(
        default,
        rename = "sync_standby",
        serialize_with = "standbys::serialize",
        deserialize_with = "standbys::deserialize"
    )]
    pub sync_standbys: BTreeSet<MemberName>,
    /// In quorum mode, how many of the standbys must acknowledge a commit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quorum: Option<u32>,
}

mod standbys {
    use super::*;

    pub(super) fn serialize<S: Serializer>(
        names: &BTreeSet<MemberName>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        if names.is_empty() {
            return serializer.serialize_none();
        }
        let joined: Vec<&str> = names.iter().map(MemberName::as_str).collect();
        serializer.serialize_str(&joined.join(","))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<BTreeSet<MemberName>, D::Error> {
        let Some(text) = Option::<String>::deserialize(deserializer)? else {
            return Ok(BTreeSet::new());
        };
        text.split(',')
            .map(str::trim)
            .filter(|name| !name.is_empty())
            .map(|name| MemberName::new(name).map_err(serde::de::Error::custom))
            .collect()
    }
}

/// One timeline switch: PostgreSQL's `.history` line plus who was promoted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryEntry {
    /// The timeline that ended.
    pub timeline: Timeline,
    /// Where it ended (the new timeline starts here).
    pub switch_lsn: Lsn,
    /// PostgreSQL's reason text.
    pub reason: String,
    /// When the switch was recorded.
    pub timestamp: Option<DateTime<FixedOffset>>,
    /// The member promoted onto the next timeline.
    pub new_leader: Option<MemberName>,
}

/// The start of the `reason` matriarch writes for an automatic failover; the
/// rest names the former leader and the WAL it may have lost (see
/// [`HistoryEntry::failover_reason`]).
const FAILOVER_REASON: &str = "automatic failover from ";

/// What follows the former leader's name in a failover reason.
const LOSS_MARKER: &str = ": possible loss ";

impl HistoryEntry {
    /// The `reason` text of a switch made by an automatic failover from
    /// `former_leader`, recording how many bytes of WAL the former leader was
    /// last known to hold beyond the promoted position (`possible_loss_bytes`;
    /// 0 when nothing can have been lost). It stays a plain string so the
    /// history keeps Patroni's `[timeline, lsn, reason, timestamp, new_leader]`
    /// shape; [`HistoryEntry::possible_loss_bytes`] reads it back.
    pub fn failover_reason(former_leader: &MemberName, possible_loss_bytes: u64) -> String {
        format!("{FAILOVER_REASON}{former_leader}{LOSS_MARKER}{possible_loss_bytes} bytes")
    }

    /// The WAL an automatic failover may have lost, in bytes, when this entry
    /// was written by one (see [`HistoryEntry::failover_reason`]); `None` for
    /// planned switchovers and entries written by other tools.
    pub fn possible_loss_bytes(&self) -> Option<u64> {
        let rest = self.reason.strip_prefix(FAILOVER_REASON)?;
        let (_, loss) = rest.split_once(LOSS_MARKER)?;
        loss.strip_suffix(" bytes")?.parse().ok()
    }

    /// The former leader an automatic failover replaced, when this entry was
    /// written by one.
    pub fn failover_from(&self) -> Option<MemberName> {
        let rest = self.reason.strip_prefix(FAILOVER_REASON)?;
        let (name, _) = rest.split_once(LOSS_MARKER)?;
        MemberName::new(name).ok()
    }
}

/// The `history` key: every timeline switch of the cluster, oldest first.
/// JSON: a list of `[timeline, lsn, reason, timestamp, new_leader]`. Rows with
/// more elements (a later version's additions) are read, the extra ones ignored.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TimelineHistory(pub Vec<HistoryEntry>);

impl Serialize for TimelineHistory {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let mut seq = serializer.serialize_seq(Some(self.0.len()))?;
        for entry in &self.0 {
            let mut row = vec![
                serde_json::Value::from(entry.timeline.0),
                serde_json::Value::from(entry.switch_lsn.0),
                serde_json::Value::from(entry.reason.clone()),
            ];
            if entry.timestamp.is_some() || entry.new_leader.is_some() {
                row.push(
                    entry
                        .timestamp
                        .map(|t| {
                            // Patroni's `isoformat()`: older Pythons read no more.
                            serde_json::Value::from(
                                t.to_rfc3339_opts(chrono::SecondsFormat::Micros, false),
                            )
                        })
                        .unwrap_or(serde_json::Value::Null),
                );
            }
            if let Some(leader) = &entry.new_leader {
                row.push(serde_json::Value::from(leader.as_str()));
            }
            seq.serialize_element(&row)?;
        }
        seq.end()
    }
}

impl<'de> Deserialize<'de> for TimelineHistory {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let rows = Vec::<Vec<serde_json::Value>>::deserialize(deserializer)?;
        let mut entries = Vec::with_capacity(rows.len());
        for (index, row) in rows.into_iter().enumerate() {
            if row.len() < 3 {
                return Err(D::Error::custom(format!(
                    "history entry {index} has {} fields; expected [timeline, lsn, reason, timestamp?, new_leader?, ...]",
                    row.len()
                )));
            }
            let timeline = row[0]
                .as_u64()
                .and_then(|t| u32::try_from(t).ok())
                .ok_or_else(|| {
                    D::Error::custom(format!(
                        "history entry {index}: timeline is not a 32-bit unsigned integer"
                    ))
                })?;
            let switch_lsn = row[1].as_u64().ok_or_else(|| {
                D::Error::custom(format!(
                    "history entry {index}: lsn is not an unsigned integer"
                ))
            })?;
            let reason = row[2]
                .as_str()
                .ok_or_else(|| {
                    D::Error::custom(format!("history entry {index}: reason is not a string"))
                })?
                .to_owned();
            let timestamp = match row.get(3) {
                None | Some(serde_json::Value::Null) => None,
                Some(serde_json::Value::String(text)) => {
                    Some(DateTime::parse_from_rfc3339(text).map_err(|e| {
                        D::Error::custom(format!("history entry {index}: timestamp {text:?}: {e}"))
                    })?)
                }
                Some(_) => {
                    return Err(D::Error::custom(format!(
                        "history entry {index}: timestamp is not a string"
                    )))
                }
            };
            let new_leader = match row.get(4) {
                None | Some(serde_json::Value::Null) => None,
                Some(serde_json::Value::String(name)) => Some(
                    MemberName::new(name.as_str())
                        .map_err(|e| D::Error::custom(format!("history entry {index}: {e}")))?,
                ),
                Some(_) => {
                    return Err(D::Error::custom(format!(
                        "history entry {index}: new_leader is not a string"
                    )))
                }
            };
            entries.push(HistoryEntry {
                timeline: Timeline(timeline),
                switch_lsn: Lsn(switch_lsn),
                reason,
                timestamp,
                new_leader,
            });
        }
        Ok(TimelineHistory(entries))
    }
}

/// The `status` key: the leader's last reported position and its slots.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderStatus {
    /// The primary's WAL position when it last renewed its lock.
    pub optime: Lsn,
    /// Replication slots the primary keeps, with their confirmed positions.
    #[serde(default)]
    pub slots: BTreeMap<String, Lsn>,
    /// Slots of members that are gone but whose slots must be kept for now.
    #[serde(default)]
    pub retain_slots: Vec<String>,
}

/// The `failsafe` key: the members (name → REST API URL) a primary may rely on
/// while the DCS is unreachable, when `failsafe_mode` is on.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Failsafe(pub BTreeMap<MemberName, String>);

/// The body of `POST /failsafe`: the primary, cut off from the DCS with
/// `failsafe_mode` on, tells a member that it still leads (Patroni's fields:
/// `name`, `conn_url`, `api_url`, `timeline`, `xlog_location`). A member that
/// acknowledges it (HTTP 200) does not race for the lock while it is fresh.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailsafeHeartbeat {
    /// The primary sending it.
    pub name: MemberName,
    /// Its PostgreSQL connection URL.
    #[serde(default)]
    pub conn_url: String,
    /// Its REST API URL.
    #[serde(default)]
    pub api_url: String,
    /// Its timeline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeline: Option<Timeline>,
    /// Its WAL write position, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xlog_location: Option<Lsn>,
}
