//! What `ctl` reads from the REST API, parsed leniently from Patroni's JSON shapes: a field that
//! is missing or of an unexpected type is shown as empty rather than failing the command.

use serde_json::{Map, Value};

/// Replication lag of one member as `GET /cluster` reports it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Lag {
    /// Not reported (the leader, or a server that does not send it).
    Absent,
    /// Bytes behind the leader.
    Bytes(u64),
    /// A text such as Patroni's `"unknown"`.
    Text(String),
}

/// One entry of `members` in `GET /cluster`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Member {
    /// `name`.
    pub name: String,
    /// `role`: `leader`, `replica`, `sync_standby`, ...
    pub role: String,
    /// `state`: `running`, `streaming`, ...
    pub state: String,
    /// `host` of PostgreSQL.
    pub host: String,
    /// `port` of PostgreSQL.
    pub port: Option<u64>,
    /// `timeline`, as text.
    pub timeline: Option<String>,
    /// `lag` in bytes.
    pub lag: Lag,
    /// `tags`.
    pub tags: Map<String, Value>,
    /// `api_url`: the member's REST API (`http://host:8008/patroni`).
    pub api_url: Option<String>,
    /// `pending_restart`.
    pub pending_restart: bool,
    /// `upstream`: the member it streams from, as its agent reports it
    /// (matriarch's; Patroni's members have none).
    pub upstream: Option<String>,
}

/// A scheduled switchover as `GET /cluster` reports it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Scheduled {
    /// When.
    pub at: String,
    /// The leader to demote.
    pub from: String,
    /// The member to promote (may be empty).
    pub to: String,
}

/// `GET /cluster`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Cluster {
    /// `scope`: the cluster's name.
    pub scope: Option<String>,
    /// `members`.
    pub members: Vec<Member>,
    /// `pause`: maintenance mode.
    pub paused: bool,
    /// `scheduled_switchover`.
    pub scheduled_switchover: Option<Scheduled>,
}

fn text(value: Option<&Value>) -> String {
    match value {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::Bool(b)) => b.to_string(),
        _ => String::new(),
    }
}

fn parse_lag(value: Option<&Value>) -> Lag {
    match value {
        Some(Value::Number(n)) => match (n.as_u64(), n.as_f64()) {
            (Some(bytes), _) => Lag::Bytes(bytes),
            (None, Some(f)) if f >= 0.0 => Lag::Bytes(f as u64),
            _ => Lag::Text(n.to_string()),
        },
        Some(Value::String(s)) => match s.trim().parse::<u64>() {
            Ok(bytes) => Lag::Bytes(bytes),
            Err(_) if s.is_empty() => Lag::Absent,
            Err(_) => Lag::Text(s.clone()),
        },
        _ => Lag::Absent,
    }
}

impl Member {
    fn parse(value: &Value) -> Member {
        let get = |key: &str| value.get(key);
        Member {
            name: text(get("name")),
            role: text(get("role")),
            state: text(get("state")),
            host: text(get("host")),
            port: match get("port") {
                Some(Value::Number(n)) => n.as_u64(),
                Some(Value::String(s)) => s.parse().ok(),
                _ => None,
            },
            timeline: Some(text(get("timeline"))).filter(|t| !t.is_empty()),
            lag: parse_lag(get("lag")),
            tags: match get("tags") {
                Some(Value::Object(map)) => map.clone(),
                _ => Map::new(),
            },
            api_url: Some(text(get("api_url"))).filter(|u| !u.is_empty()),
            pending_restart: matches!(get("pending_restart"), Some(Value::Bool(true))),
            upstream: Some(text(get("upstream"))).filter(|u| !u.is_empty()),
        }
    }

    /// Whether the member holds the leader lock (Patroni's `leader`, older `master`, or the
    /// leader of a standby cluster).
    pub(super) fn is_leader(&self) -> bool {
        is_leader_role(&self.role)
    }
}

/// Whether a role string names the leader.
pub(crate) fn is_leader_role(role: &str) -> bool {
    matches!(
        role.to_ascii_lowercase().as_str(),
        "leader" | "master" | "primary" | "standby_leader" | "standby leader"
    )
}

impl Cluster {
    /// Whether `name` (the first member argument) is the cluster's name given
    /// patronictl-style before the members rather than a member.
    pub(super) fn is_cluster_name(&self, name: &str) -> bool {
        self.scope.as_deref() == Some(name) && self.member(name).is_none()
    }

    /// Parses `GET /cluster`; fails only when the body is not an object with a `members` list.
    pub(super) fn parse(value: &Value) -> Result<Cluster, String> {
        let members = value
            .get("members")
            .and_then(Value::as_array)
            .ok_or_else(|| "the response has no \"members\" list".to_string())?;
        let scheduled = value
            .get("scheduled_switchover")
            .filter(|v| v.is_object())
            .map(|s| Scheduled {
                at: text(s.get("at")),
                from: text(s.get("from")),
                to: text(s.get("to")),
            });
        Ok(Cluster {
            scope: Some(text(value.get("scope"))).filter(|s| !s.is_empty()),
            members: members.iter().map(Member::parse).collect(),
            paused: matches!(value.get("pause"), Some(Value::Bool(true))),
            scheduled_switchover: scheduled,
        })
    }

    /// The member holding the leader lock, if any.
    pub(super) fn leader(&self) -> Option<&Member> {
        self.members.iter().find(|m| m.is_leader())
    }

    /// The member with this name.
    pub(super) fn member(&self, name: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.name == name)
    }

    /// The names of all members, for error messages.
    pub(super) fn names(&self) -> String {
        let names: Vec<&str> = self.members.iter().map(|m| m.name.as_str()).collect();
        if names.is_empty() {
            "none".to_string()
        } else {
            names.join(", ")
        }
    }
}

/// One switch of timeline from `GET /history`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct HistoryEntry {
    /// The timeline that ended.
    pub timeline: String,
    /// Where it ended.
    pub lsn: String,
    /// Why.
    pub reason: String,
    /// When.
    pub timestamp: String,
    /// Who led the next timeline.
    pub new_leader: String,
}

/// Parses `GET /history`: Patroni's list of `[timeline, lsn, reason, timestamp, new_leader]`
/// (the last two may be missing); objects with those names as keys are accepted too.
pub(crate) fn parse_history(value: &Value) -> Result<Vec<HistoryEntry>, String> {
    let entries = value
        .as_array()
        .ok_or_else(|| "the response is not a list".to_string())?;
    Ok(entries
        .iter()
        .map(|entry| match entry {
            Value::Array(items) => HistoryEntry {
                timeline: text(items.first()),
                lsn: text(items.get(1)),
                reason: text(items.get(2)),
                timestamp: text(items.get(3)),
                new_leader: text(items.get(4)),
            },
            other => HistoryEntry {
                timeline: text(other.get("timeline")),
                lsn: text(other.get("lsn")),
                reason: text(other.get("reason")),
                timestamp: text(other.get("timestamp")),
                new_leader: text(other.get("new_leader")),
            },
        })
        .collect())
}

/// The system identifier in a member's `GET /patroni`, if it reports one.
pub(crate) fn system_id(status: &Value) -> Option<String> {
    Some(text(status.get("database_system_identifier"))).filter(|s| !s.is_empty())
}

/// The cluster name in a member's `GET /patroni` (`patroni.scope`), if it reports one.
pub(crate) fn status_scope(status: &Value) -> Option<String> {
    Some(text(status.get("patroni").and_then(|p| p.get("scope")))).filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_patroni_cluster_and_degrades_on_missing_or_odd_fields() {
        let cluster = Cluster::parse(&json!({
            "scope": "demo",
            "pause": true,
            "scheduled_switchover": {"at": "2026-01-01T00:00:00+00:00", "from": "a", "to": "b"},
            "members": [
                {"name": "a", "role": "leader", "state": "running", "api_url": "http://127.0.0.1:8008/patroni",
                 "host": "127.0.0.1", "port": 5432, "timeline": 3, "tags": {"nofailover": true}},
                {"name": "b", "role": "replica", "state": "streaming", "host": "10.0.0.2", "port": "5433",
                 "timeline": "3", "lag": "unknown", "pending_restart": true},
                {"name": 7, "lag": 1048576, "tags": "junk"},
                {}
            ]
        }))
        .expect("parses");
        assert_eq!(cluster.scope.as_deref(), Some("demo"));
        assert!(cluster.paused);
        assert_eq!(
            cluster.scheduled_switchover.as_ref().map(|s| s.to.as_str()),
            Some("b")
        );
        assert_eq!(cluster.leader().map(|m| m.name.as_str()), Some("a"));
        let b = cluster.member("b").expect("b");
        assert_eq!((b.port, b.timeline.as_deref()), (Some(5433), Some("3")));
        assert_eq!(b.lag, Lag::Text("unknown".into()));
        assert!(b.pending_restart);
        assert_eq!(cluster.members[2].name, "7");
        assert_eq!(cluster.members[2].lag, Lag::Bytes(1048576));
        assert!(cluster.members[2].tags.is_empty());
        assert_eq!(cluster.members[3], Member::parse(&json!({})));
        assert_eq!(cluster.names(), "a, b, 7, ");
    }

    #[test]
    fn a_body_without_members_is_an_error() {
        assert!(Cluster::parse(&json!({"scope": "x"})).is_err());
        assert!(Cluster::parse(&json!([1])).is_err());
        let empty = Cluster::parse(&json!({"members": []})).expect("parses");
        assert!(empty.leader().is_none());
        assert_eq!(empty.names(), "none");
    }

    #[test]
    fn leader_roles_include_old_and_standby_names() {
        for role in ["leader", "master", "primary", "standby_leader", "Leader"] {
            assert!(is_leader_role(role), "{role}");
        }
        for role in ["replica", "sync_standby", "", "quorum_standby"] {
            assert!(!is_leader_role(role), "{role}");
        }
    }

    #[test]
    fn history_accepts_lists_and_objects() {
        let history = parse_history(&json!([
            [1, 25623960, "no recovery target specified", "2019-09-23T16:57:57+02:00", "a"],
            [2, "0/3000060", "reason"],
            {"timeline": 3, "lsn": 5, "reason": "r", "new_leader": "c"}
        ]))
        .expect("parses");
        assert_eq!(history[0].lsn, "25623960");
        assert_eq!(history[0].new_leader, "a");
        assert_eq!(
            (history[1].lsn.as_str(), history[1].timestamp.as_str()),
            ("0/3000060", "")
        );
        assert_eq!(
            (history[2].timeline.as_str(), history[2].new_leader.as_str()),
            ("3", "c")
        );
        assert!(parse_history(&json!({"a": 1})).is_err());
    }

    #[test]
    fn status_fields() {
        let status = json!({"database_system_identifier": "7300000000000000001", "patroni": {"scope": "demo"}});
        assert_eq!(system_id(&status).as_deref(), Some("7300000000000000001"));
        assert_eq!(status_scope(&status).as_deref(), Some("demo"));
        assert_eq!(system_id(&json!({})), None);
    }
}
