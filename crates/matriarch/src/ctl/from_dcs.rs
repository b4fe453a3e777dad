//! The cluster as the DCS holds it, for `list` and `topology` when no member's REST API
//! answers (every agent stopped or unreachable): the DCS named by the node configuration
//! of `--config`, members from their records, the leader from the leader key.

use std::path::Path;
use std::time::Duration;

use matriarch_model::{ClusterView, MemberName};
use serde_json::{Map, Value};

use super::view::{Cluster, Lag, Member, Scheduled};

/// How long the DCS may take to answer, connection included.
const DCS_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The footer `list` and `topology` print under a table read from the DCS.
pub(super) const NOTE: &str =
    "Note: no member's REST API answered; members as they last reported themselves, from the DCS";

/// Reads the cluster from the DCS configured in the node configuration `file`.
pub(super) async fn read_cluster(file: &Path) -> Result<Cluster, String> {
    let (dcs, scope) = connect(file, None)?;
    let view = tokio::time::timeout(DCS_READ_TIMEOUT, dcs.read_view())
        .await
        .map_err(|_| format!("the DCS did not answer within {DCS_READ_TIMEOUT:?}"))?
        .map_err(|e| format!("reading the DCS: {e}"))?;
    Ok(cluster_from_view(&scope, &view))
}

/// A client of the DCS the node file `file` configures, for `scope` (the file's own when
/// `None`; another, as patronictl's `get_dcs(cluster_name)`), and the scope it serves.
pub(super) fn connect(
    file: &Path,
    scope: Option<&str>,
) -> Result<(crate::dcs::AnyDcs, String), String> {
    let (mut node, validated) =
        crate::config::NodeConfig::load(file, |var| std::env::var(var).ok())
            .map_err(|e| format!("{}: {e}", file.display()))?;
    if let Some(scope) = scope {
        node.scope = scope.to_owned();
    }
    let timing = &validated.bootstrap_dcs;
    let dcs = crate::dcs::build(&node, timing.retry_timeout, timing.ttl)
        .map_err(|e| format!("{}: {e}", file.display()))?;
    Ok((dcs, node.scope))
}

/// The cluster `GET /cluster` would show, from the DCS alone: roles from the leader key and
/// the `sync` key, lag from the leader's last reported WAL position.
pub(super) fn cluster_from_view(scope: &str, view: &ClusterView) -> Cluster {
    let leader = view.leader_name();
    let synchronous = |name: &MemberName| matches!(&view.sync, Some(Ok(sync)) if sync.value.sync_standbys.contains(name));
    let leader_position = view
        .healthy_records()
        .find(|m| Some(&m.name) == leader)
        .and_then(|m| m.wal_position());
    let members = view
        .healthy_records()
        .map(|record| {
            let is_leader = Some(&record.name) == leader;
            let role = if is_leader {
                "leader"
            } else if synchronous(&record.name) {
                "sync_standby"
            } else {
                "replica"
            };
            let lag = match (is_leader, leader_position, record.wal_position()) {
                (true, _, _) => Lag::Absent,
                (false, Some(ahead), Some(behind)) => Lag::Bytes(ahead.bytes_ahead_of(behind)),
                (false, _, _) => Lag::Text("unknown".to_owned()),
            };
            let (host, port) = crate::api::conn_url_host_port(&record.conn_url);
            Member {
                name: record.name.as_str().to_owned(),
                role: role.to_owned(),
                state: record.state.as_str().to_owned(),
                host: host.unwrap_or_default(),
                port: port.map(u64::from),
                timeline: record.timeline.map(|t| t.0.to_string()),
                lag,
                tags: match serde_json::to_value(&record.tags) {
                    Ok(Value::Object(tags)) => tags,
                    _ => Map::new(),
                },
                api_url: Some(record.api_url.clone()).filter(|u| !u.is_empty()),
                pending_restart: record.pending_restart,
                upstream: record.upstream.clone(),
            }
        })
        .collect();
    let scheduled_switchover = match &view.failover {
        Some(Ok(failover)) => failover.value.scheduled_at.map(|at| Scheduled {
            at: at.to_rfc3339(),
            from: name_or_empty(failover.value.leader.as_ref()),
            to: name_or_empty(failover.value.candidate.as_ref()),
        }),
        _ => None,
    };
    Cluster {
        scope: Some(scope.to_owned()).filter(|s| !s.is_empty()),
        members,
        paused: matches!(&view.config, Some(Ok(config)) if config.value.pause),
        scheduled_switchover,
    }
}

fn name_or_empty(name: Option<&MemberName>) -> String {
    name.map(|n| n.as_str().to_owned()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use matriarch_model::{RawEntry, Version};

    /// A view of these keys (relative to the scope) and values.
    fn view(keys: &[(&str, &str)]) -> ClusterView {
        ClusterView::decode(
            1,
            keys.iter().map(|(key, value)| RawEntry {
                key: (*key).to_owned(),
                value: value.as_bytes().to_vec(),
                version: Version(1),
            }),
        )
    }

    #[test]
    fn members_leader_lag_and_pause_come_from_the_keys() {
        let view = view(&[
            (
                "members/pg1",
                r#"{"conn_url": "postgres://10.0.0.1:5432/postgres", "api_url": "http://10.0.0.1:8008/patroni",
                    "state": "running", "role": "primary", "xlog_location": 3145728, "timeline": 2}"#,
            ),
            (
                "members/pg2",
                r#"{"conn_url": "postgres://10.0.0.2:5433/postgres", "api_url": "http://10.0.0.2:8008/patroni",
                    "state": "running", "role": "replica", "xlog_location": 1048576, "timeline": 2,
                    "tags": {"nofailover": true}}"#,
            ),
            (
                "members/pg3",
                r#"{"conn_url": "", "api_url": "", "state": "stopped", "role": "replica"}"#,
            ),
            ("leader", "pg1"),
            ("config", r#"{"pause": true}"#),
        ]);
        let cluster = cluster_from_view("demo", &view);
        assert_eq!(cluster.scope.as_deref(), Some("demo"));
        assert!(cluster.paused);
        let pg1 = cluster.member("pg1").expect("pg1");
        assert_eq!(
            (pg1.role.as_str(), pg1.lag.clone()),
            ("leader", Lag::Absent)
        );
        assert_eq!((pg1.host.as_str(), pg1.port), ("10.0.0.1", Some(5432)));
        assert_eq!(pg1.api_url.as_deref(), Some("http://10.0.0.1:8008/patroni"));
        let pg2 = cluster.member("pg2").expect("pg2");
        assert_eq!(pg2.role, "replica");
        assert_eq!(pg2.lag, Lag::Bytes(2 * 1024 * 1024));
        assert_eq!(pg2.timeline.as_deref(), Some("2"));
        assert_eq!(pg2.tags.get("nofailover"), Some(&Value::Bool(true)));
        let pg3 = cluster.member("pg3").expect("pg3");
        assert_eq!(pg3.state, "stopped");
        assert_eq!(pg3.lag, Lag::Text("unknown".into()));
        assert_eq!(pg3.api_url, None);
        assert_eq!(cluster.leader().map(|m| m.name.as_str()), Some("pg1"));
    }

    #[test]
    fn without_a_leader_key_nobody_leads() {
        let view = view(&[(
            "members/pg1",
            r#"{"conn_url": "postgres://h:5432/postgres", "api_url": "", "state": "running", "role": "primary"}"#,
        )]);
        let cluster = cluster_from_view("demo", &view);
        assert!(cluster.leader().is_none());
        assert!(!cluster.paused);
        assert_eq!(cluster.members.len(), 1);
    }
}
