//! Cluster members: who they are, what they run, and the tags that steer failover.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::lsn::{Lsn, Timeline};
use crate::ModelError;

/// A member's name: unique in the cluster, used as its DCS key, its replication
/// `application_name` and its replication slot name (after [`MemberName::slot_name`]).
///
/// Names are 1 to 63 bytes (PostgreSQL's identifier limit) of ASCII letters,
/// digits, `-`, `_` and `.`, so they are safe in keys, slot names and logs.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MemberName(String);

impl MemberName {
    /// Validates and wraps a name.
    pub fn new(name: impl Into<String>) -> Result<Self, ModelError> {
        let name = name.into();
        let reason = if name.is_empty() {
            Some("it is empty")
        } else if name.len() > 63 {
            Some("it is longer than 63 bytes")
        } else if !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            Some("only ASCII letters, digits, '-', '_' and '.' are allowed")
        } else {
            None
        };
        match reason {
            Some(reason) => Err(ModelError::InvalidMemberName {
                name,
                reason: reason.to_owned(),
            }),
            None => Ok(MemberName(name)),
        }
    }

    /// Stands in for the name while a record is decoded apart from its key.
    fn placeholder() -> Self {
        MemberName(String::from("unnamed"))
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The physical replication slot name for this member on the primary:
    /// lower case, with characters PostgreSQL rejects in slot names replaced by `_`.
    pub fn slot_name(&self) -> String {
        self.0
            .chars()
            .map(|c| match c {
                'a'..='z' | '0'..='9' | '_' => c,
                'A'..='Z' => c.to_ascii_lowercase(),
                _ => '_',
            })
            .collect()
    }
}

impl TryFrom<String> for MemberName {
    type Error = ModelError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        MemberName::new(value)
    }
}

impl From<MemberName> for String {
    fn from(value: MemberName) -> Self {
        value.0
    }
}

impl FromStr for MemberName {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        MemberName::new(s)
    }
}

impl fmt::Display for MemberName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for MemberName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// The PostgreSQL role a member reports.
///
/// Patroni before 3.0 wrote `master`; it is read as [`Role::Primary`] and
/// always written as `primary`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Runs read-write (and should hold the leader lock).
    #[serde(alias = "master")]
    Primary,
    /// Streams from (or is catching up to) the primary.
    Replica,
    /// The leader of a standby cluster (a cascading replica of another cluster).
    StandbyLeader,
    /// A former primary that stepped down and has not yet rejoined.
    Demoted,
    /// No data directory yet.
    Uninitialized,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Primary => "primary",
            Role::Replica => "replica",
            Role::StandbyLeader => "standby_leader",
            Role::Demoted => "demoted",
            Role::Uninitialized => "uninitialized",
        })
    }
}

/// What a member's PostgreSQL is doing, in Patroni's words.
///
/// A state matriarch does not know is kept as [`MemberState::Other`], never
/// mistaken for `running`: only [`MemberState::Running`] counts as healthy.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum MemberState {
    /// PostgreSQL is up.
    Running,
    /// PostgreSQL is starting.
    Starting,
    /// PostgreSQL is stopping.
    Stopping,
    /// PostgreSQL was stopped on purpose.
    Stopped,
    /// PostgreSQL died on its own.
    Crashed,
    /// PostgreSQL is restarting.
    Restarting,
    /// A base backup is being taken to create this replica.
    CreatingReplica,
    /// `initdb` is running for a new cluster.
    InitializingNewCluster,
    /// pg_rewind is running.
    Rewinding,
    /// A state another tool wrote that matriarch does not interpret.
    Other(String),
}

impl MemberState {
    /// The state's text as stored in the DCS.
    pub fn as_str(&self) -> &str {
        match self {
            MemberState::Running => "running",
            MemberState::Starting => "starting",
            MemberState::Stopping => "stopping",
            MemberState::Stopped => "stopped",
            MemberState::Crashed => "crashed",
            MemberState::Restarting => "restarting",
            MemberState::CreatingReplica => "creating replica",
            MemberState::InitializingNewCluster => "initializing new cluster",
            MemberState::Rewinding => "running pg_rewind",
            MemberState::Other(other) => other,
        }
    }
}

impl From<String> for MemberState {
    fn from(value: String) -> Self {
        match value.as_str() {
            "running" => MemberState::Running,
            "starting" => MemberState::Starting,
            "stopping" => MemberState::Stopping,
            "stopped" => MemberState::Stopped,
            "crashed" => MemberState::Crashed,
            "restarting" => MemberState::Restarting,
            "creating replica" => MemberState::CreatingReplica,
            "initializing new cluster" => MemberState::InitializingNewCluster,
            "running pg_rewind" => MemberState::Rewinding,
            _ => MemberState::Other(value),
        }
    }
}

impl From<MemberState> for String {
    fn from(value: MemberState) -> Self {
        value.as_str().to_owned()
    }
}

impl fmt::Display for MemberState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

fn default_failover_priority() -> u32 {
    1
}

fn is_default_priority(priority: &u32) -> bool {
    *priority == 1
}

fn is_false(value: &bool) -> bool {
    !*value
}

/// Per-member tags, as in Patroni's `tags:` section.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Tags {
    /// Never promote this member automatically.
    #[serde(default, skip_serializing_if = "is_false")]
    pub nofailover: bool,
    /// Preference among equally fresh candidates: higher wins; 0 means never
    /// promote (like `nofailover`). Defaults to 1.
    #[serde(
        default = "default_failover_priority",
        skip_serializing_if = "is_default_priority"
    )]
    pub failover_priority: u32,
    /// Keep this member out of the readers that routers publish.
    #[serde(default, skip_serializing_if = "is_false")]
    pub noloadbalance: bool,
    /// Never choose this member as a synchronous standby.
    #[serde(default, skip_serializing_if = "is_false")]
    pub nosync: bool,
    /// New replicas may take their base backup from this member.
    #[serde(default, skip_serializing_if = "is_false")]
    pub clonefrom: bool,
    /// Preference among synchronous standby candidates: higher first; 0
    /// means never synchronous (like `nosync`). Defaults to 1.
    #[serde(
        default = "default_failover_priority",
        skip_serializing_if = "is_default_priority"
    )]
    pub sync_priority: u32,
    /// Stream from this member instead of the leader (cascading
    /// replication) while it is a usable upstream; see
    /// `matriarch_ha`'s upstream choice. Kept as text: a bad name in
    /// another agent's record must not make the whole record unreadable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicatefrom: Option<String>,
    /// Never stream WAL: replay only what `restore_command` fetches from
    /// the archive (no `primary_conninfo`, no replication slot for it).
    #[serde(default, skip_serializing_if = "is_false")]
    pub nostream: bool,
    /// Any other tag, kept for `?tag_key=value` queries and round trips.
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

impl Default for Tags {
    fn default() -> Self {
        Tags {
            nofailover: false,
            failover_priority: 1,
            noloadbalance: false,
            nosync: false,
            clonefrom: false,
            sync_priority: 1,
            replicatefrom: None,
            nostream: false,
            other: BTreeMap::new(),
        }
    }
}

impl Tags {
    /// Whether these tags allow an automatic promotion of the member.
    pub fn allows_failover(&self) -> bool {
        !self.nofailover && self.failover_priority > 0
    }

    /// Whether these tags allow choosing the member as a synchronous
    /// standby (Patroni: neither `nosync` nor `sync_priority` <= 0).
    pub fn allows_sync(&self) -> bool {
        !self.nosync && self.sync_priority > 0
    }

    /// The member `replicatefrom` names, unless it names `own` (Patroni
    /// ignores a member that names itself).
    pub fn replicate_from(&self, own: &MemberName) -> Option<&str> {
        self.replicatefrom
            .as_deref()
            .filter(|name| !name.is_empty() && *name != own.as_str())
    }
}

/// A member's record in the DCS (`members/<name>`), refreshed by its agent every loop.
///
/// The JSON is Patroni's (`conn_url`, `api_url`, `state`, `role`, `version`,
/// `xlog_location`, `timeline`, `tags`, ...) plus matriarch's WAL positions
/// (`receive_lsn`, `replay_lsn`, `flush_lsn`) which Patroni's tools ignore.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Member {
    /// The member's name; it lives in the key, not in the JSON, so plain
    /// deserialization leaves a placeholder that [`crate::decode_member`] replaces.
    #[serde(skip, default = "MemberName::placeholder")]
    pub name: MemberName,
    /// The PostgreSQL connection URL (`postgres://host:port/postgres`).
    pub conn_url: String,
    /// The agent's REST API URL (`http://host:8008/patroni`).
    pub api_url: String,
    /// PostgreSQL's state.
    pub state: MemberState,
    /// PostgreSQL's role.
    pub role: Role,
    /// The agent's version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Patroni's summary position: the write position on a primary, the
    /// received (or replayed) position on a replica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xlog_location: Option<Lsn>,
    /// The timeline PostgreSQL runs on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeline: Option<Timeline>,
    /// WAL received from the primary and written to disk (replicas).
    #[serde(
        default,
        rename = "receive_lsn",
        skip_serializing_if = "Option::is_none"
    )]
    pub received_lsn: Option<Lsn>,
    /// WAL replayed (replicas).
    #[serde(
        default,
        rename = "replay_lsn",
        skip_serializing_if = "Option::is_none"
    )]
    pub replayed_lsn: Option<Lsn>,
    /// WAL flushed to disk (the primary's durable position).
    #[serde(default, rename = "flush_lsn", skip_serializing_if = "Option::is_none")]
    pub flushed_lsn: Option<Lsn>,
    /// `streaming`, `in archive recovery`, ... as Patroni reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication_state: Option<String>,
    /// The member a replica streams from, as its own configuration says
    /// (the leader, or the member its `replicatefrom` tag names while that
    /// one is usable); absent on a primary and on a replica that does not
    /// stream. matriarch's own key: `ctl topology` draws the tree from it,
    /// Patroni's tools ignore it. Text, so that a bad value written by
    /// another tool does not make the record unreadable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    /// The member's tags.
    #[serde(default)]
    pub tags: Tags,
    /// The cluster is paused (maintenance mode) as this member sees it:
    /// Patroni writes `pause: true`, and `patronictl pause --wait` waits for
    /// every member to report it.
    #[serde(default, skip_serializing_if = "is_false")]
    pub pause: bool,
    /// PostgreSQL runs with parameters that wait for a restart (Patroni's
    /// `pending_restart`, shown by `patronictl list`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub pending_restart: bool,
    /// A restart scheduled on this member through `POST /restart`, as
    /// Patroni writes it (`schedule`, and the conditions: `postgres_version`,
    /// `role`, ...): `patronictl list` shows it, `patronictl flush … restart`
    /// cancels it. Kept as JSON: only Patroni's tools read it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduled_restart: Option<serde_json::Value>,
}

impl Member {
    /// A member record with the given identity and nothing known yet.
    pub fn new(name: MemberName, conn_url: impl Into<String>, api_url: impl Into<String>) -> Self {
        Member {
            name,
            conn_url: conn_url.into(),
            api_url: api_url.into(),
            state: MemberState::Stopped,
            role: Role::Uninitialized,
            version: None,
            xlog_location: None,
            timeline: None,
            received_lsn: None,
            replayed_lsn: None,
            flushed_lsn: None,
            replication_state: None,
            upstream: None,
            tags: Tags::default(),
            pause: false,
            pending_restart: false,
            scheduled_restart: None,
        }
    }

    /// The freshest WAL position the member reports having durably: the
    /// highest of its received, flushed, replayed and summary positions.
    pub fn wal_position(&self) -> Option<Lsn> {
        [
            self.received_lsn,
            self.flushed_lsn,
            self.replayed_lsn,
            self.xlog_location,
        ]
        .into_iter()
        .flatten()
        .max()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_names_are_validated() {
        assert!(MemberName::new("pg-node_1.a").is_ok());
        for (bad, why) in [
            ("", "empty"),
            ("a/b", "only ASCII"),
            ("a b", "only ASCII"),
            ("näme", "only ASCII"),
            (&"x".repeat(64), "63 bytes"),
        ] {
            let err = MemberName::new(bad).unwrap_err().to_string();
            assert!(err.contains(why), "{bad:?}: {err}");
        }
    }

    #[test]
    fn slot_names_are_postgres_safe() {
        assert_eq!(MemberName::new("Node-1.a").unwrap().slot_name(), "node_1_a");
    }

    #[test]
    fn cascade_and_sync_tags_read_as_patroni_writes_them() {
        let tags: Tags = serde_json::from_value(serde_json::json!({
            "replicatefrom": "node2", "nostream": true, "sync_priority": 0, "custom": 1
        }))
        .unwrap();
        assert_eq!(tags.replicatefrom.as_deref(), Some("node2"));
        assert!(tags.nostream);
        assert!(!tags.allows_sync());
        assert_eq!(tags.other.len(), 1, "{:?}", tags.other);
        let own = MemberName::new("node3").unwrap();
        assert_eq!(tags.replicate_from(&own), Some("node2"));
        assert_eq!(
            tags.replicate_from(&MemberName::new("node2").unwrap()),
            None
        );
        // Defaults are left out of the record, as Patroni leaves them out.
        let text = serde_json::to_string(&Tags::default()).unwrap();
        assert_eq!(text, "{}");
        assert!(Tags::default().allows_sync());
        let nosync = Tags {
            nosync: true,
            ..Tags::default()
        };
        assert!(!nosync.allows_sync());
    }

    #[test]
    fn tags_default_allows_failover_and_priority_zero_forbids_it() {
        assert!(Tags::default().allows_failover());
        let tags = Tags {
            failover_priority: 0,
            ..Tags::default()
        };
        assert!(!tags.allows_failover());
        let tags = Tags {
            nofailover: true,
            ..Tags::default()
        };
        assert!(!tags.allows_failover());
    }

    #[test]
    fn unknown_state_is_not_running() {
        assert_eq!(
            MemberState::from("running".to_owned()),
            MemberState::Running
        );
        let other = MemberState::from("starting after custom bootstrap".to_owned());
        assert!(matches!(other, MemberState::Other(_)));
        assert_eq!(String::from(other), "starting after custom bootstrap");
    }

    #[test]
    fn pause_and_pending_restart_are_written_as_patroni_writes_them() {
        let mut member = Member::new(MemberName::new("a").unwrap(), "", "");
        let quiet = serde_json::to_value(&member).unwrap();
        assert!(quiet.get("pause").is_none(), "{quiet}");
        assert!(quiet.get("pending_restart").is_none(), "{quiet}");
        member.pause = true;
        member.pending_restart = true;
        let value = serde_json::to_value(&member).unwrap();
        assert_eq!(value["pause"], serde_json::json!(true));
        assert_eq!(value["pending_restart"], serde_json::json!(true));
        let back: Member = serde_json::from_value(value).unwrap();
        assert!(back.pause && back.pending_restart);
    }

    #[test]
    fn wal_position_takes_the_freshest() {
        let mut member = Member::new(MemberName::new("a").unwrap(), "", "");
        assert_eq!(member.wal_position(), None);
        member.replayed_lsn = Some(Lsn(10));
        member.received_lsn = Some(Lsn(30));
        member.xlog_location = Some(Lsn(20));
        assert_eq!(member.wal_position(), Some(Lsn(30)));
    }
}
