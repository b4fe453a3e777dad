//! Information endpoints: `/patroni`, `/cluster`, `/history`, `/metrics`,
//! `GET /config` and `GET /failsafe`.

use axum::extract::State;
use axum::http::StatusCode;
use matriarch_ha::EngineRole;
use matriarch_model::{MemberName, MemberState, Role};
use matriarch_postgres::PgRole;
use serde_json::{json, Value};

use super::metrics::{flag, patroni_series, Exposition};
use super::response::{error, respond, text, Resp};
use super::state::{ApiState, SharedState};
use super::view::Node;

/// `GET /patroni`.
pub(crate) async fn patroni(State(state): SharedState) -> Resp {
    let node = state.node();
    respond(StatusCode::OK, state.patroni_body(&node))
}

/// `GET /cluster`.
pub(crate) async fn cluster(State(state): SharedState) -> Resp {
    let node = state.node();
    respond(StatusCode::OK, state.cluster_body(&node))
}

/// `GET /metrics` (Prometheus text).
pub(crate) async fn metrics(State(state): SharedState) -> Resp {
    let node = state.node();
    text(
        StatusCode::OK,
        state.metrics(&node),
        "text/plain; version=0.0.4",
    )
}

/// `GET /failsafe`.
pub(crate) async fn failsafe_members(State(state): SharedState) -> Resp {
    let node = state.node();
    state.failsafe_members(&node)
}

/// `GET /config`: the DCS `config` key, read now.
pub(crate) async fn config(State(state): SharedState) -> Resp {
    match state.fresh_view().await {
        Ok(view) => match view.config {
            Some(Ok(c)) => respond(
                StatusCode::OK,
                serde_json::to_value(&c.value).unwrap_or(Value::Null),
            ),
            Some(Err(e)) => error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("the config key is unreadable: {e}"),
            ),
            None => error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the cluster has no config key yet",
            ),
        },
        Err(r) => r,
    }
}

/// `GET /history`: Patroni's five fields per timeline switch, then a
/// failover's report.
pub(crate) async fn history(State(state): SharedState) -> Resp {
    let node = state.node();
    let history: Vec<Value> = node
        .view
        .as_ref()
        .and_then(|v| v.history.as_ref())
        .and_then(|h| h.as_ref().ok())
        .map(|h| {
            h.value
                .0
                .iter()
                .map(|e| {
                    let mut row = json!([
                        e.timeline.0,
                        e.switch_lsn.0,
                        e.reason,
                        e.timestamp.map(|t| t.to_rfc3339()),
                        e.new_leader.as_ref().map(MemberName::as_str)
                    ]);
                    if let (Some(loss), Value::Array(items)) = (e.possible_loss_bytes(), &mut row) {
                        items.push(json!({
                            "possible_loss_bytes": loss,
                            "failover_from": e.failover_from().map(|n| n.to_string()),
                        }));
                    }
                    row
                })
                .collect()
        })
        .unwrap_or_default();
    respond(StatusCode::OK, Value::Array(history))
}

impl ApiState {
    /// The `/patroni` body.
    pub(crate) fn patroni_body(&self, node: &Node) -> Value {
        let cache = self.cache.read().unwrap_or_else(|e| e.into_inner());
        let role = node.patroni_role();
        let mut body = json!({
            "state": node.state(),
            "role": role,
            "timeline": node.timeline,
            "cluster_unlocked": node.view.as_ref().is_some_and(|v| v.leader.is_none()),
            "dcs_last_seen": node.view_read_at.map(|t| t.timestamp()),
            "patroni": {
                "version": env!("CARGO_PKG_VERSION"),
                "scope": self.scope,
                "name": self.name.as_str(),
            },
            "ha_role": format!("{:?}", node.role).to_ascii_lowercase(),
            "leader": node.leader.as_ref().map(MemberName::as_str),
            "tags": node.tags,
            "loops": node.loops,
            // What this node's engine decides with (the DCS `config` key once
            // it adopted it): lets an operator see a change reach each node.
            "dynamic_config": serde_json::to_value(&node.config).unwrap_or(Value::Null),
        });
        // Why the last switchover this node stepped down for did not complete.
        if let Some(failure) = self.status.get().last_switchover_failure {
            body["last_switchover_failure"] = json!(failure);
        }
        // Why this node holds back (not racing, not following, waiting):
        // otherwise a stuck node looks healthy and idle.
        if let Some(pending) = self.status.get().pending {
            body["pending"] = json!(pending);
        }
        if let Some(version) = cache.server_version {
            body["server_version"] = json!(version);
        }
        if let Some(id) = node.local.as_ref().and_then(|l| l.system_id) {
            body["database_system_identifier"] = json!(id.0.to_string());
        }
        if node.paused {
            body["pause"] = json!(true);
        }
        if node.failsafe_active {
            body["failsafe_mode_is_active"] = json!(true);
        }
        let pending = self.parameters.pending();
        if !pending.is_empty() {
            body["pending_restart"] = json!(true);
            body["pending_restart_reason"] = json!(pending);
        }
        if let Some(local) = &node.local {
            match node.pg_role() {
                Some(PgRole::Primary) => {
                    let location = local.wal.write.or(local.wal.flush).or(node.wal_position);
                    body["xlog"] = json!({ "location": location.map(|l| l.0) });
                    body["replication"] = Value::Array(
                        local
                            .replication
                            .iter()
                            .map(|c| {
                                json!({
                                    "application_name": c.application_name,
                                    "state": format!("{:?}", c.state).to_ascii_lowercase(),
                                    "sync_state": format!("{:?}", c.sync_state).to_ascii_lowercase(),
                                })
                            })
                            .collect(),
                    );
                }
                Some(PgRole::Replica) => {
                    body["xlog"] = super::patroni_status::replica_xlog(local);
                }
                None => {
                    if let Some(position) = node.wal_position {
                        body["xlog"] = json!({ "location": position.0 });
                    }
                }
            }
        }
        drop(cache);
        super::patroni_status::extend(self, node, &mut body);
        body
    }

    /// `GET /failsafe`: the failsafe key's members (name to API URL) while
    /// `failsafe_mode` is on; 503 otherwise, as Patroni.
    fn failsafe_members(&self, node: &Node) -> Resp {
        if !node.config.failsafe_mode {
            return error(StatusCode::SERVICE_UNAVAILABLE, "failsafe_mode is off");
        }
        match node.view.as_ref().and_then(|v| v.failsafe.as_ref()) {
            Some(Ok(key)) => respond(
                StatusCode::OK,
                serde_json::to_value(&key.value.0).unwrap_or(Value::Null),
            ),
            Some(Err(e)) => error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("the failsafe key is unreadable: {e}"),
            ),
            None => error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the cluster has no failsafe key yet",
            ),
        }
    }

    fn cluster_body(&self, node: &Node) -> Value {
        let Some(view) = &node.view else {
            return json!({ "members": [], "scope": self.scope });
        };
        let leader = view.leader_name().cloned();
        let leader_optime = node.leader_optime();
        let members: Vec<Value> = view
            .members
            .values()
            .filter_map(|m| m.as_ref().ok())
            .map(|m| {
                let member = &m.value;
                let role = if Some(&member.name) == leader.as_ref() {
                    // As Patroni's cluster_as_json.
                    if node.config.standby_cluster.is_some() {
                        "standby_leader"
                    } else {
                        "leader"
                    }
                } else if node.in_sync(&member.name) {
                    "sync_standby"
                } else {
                    "replica"
                };
                let (host, port) = host_port(&member.conn_url);
                let mut entry = json!({
                    "name": member.name.as_str(),
                    "role": role,
                    "state": member.state.as_str(),
                    "api_url": member.api_url,
                    "host": host,
                    "port": port,
                    "timeline": member.timeline.map(|t| t.0),
                    "tags": member.tags,
                });
                if member.pending_restart {
                    entry["pending_restart"] = json!(true);
                }
                if let Some(upstream) = &member.upstream {
                    entry["upstream"] = json!(upstream);
                }
                if role != "leader" {
                    let lag = match (leader_optime, member.wal_position()) {
                        (Some(l), Some(p)) => json!(l.bytes_ahead_of(p)),
                        _ => json!("unknown"),
                    };
                    entry["lag"] = lag;
                    if member.state == MemberState::Running && member.role == Role::Replica {
                        // What its record says (a replica on a full disk
                        // runs but is "in archive recovery"); a record
                        // without it, as before.
                        entry["state"] =
                            json!(member.replication_state.as_deref().unwrap_or("streaming"));
                    }
                }
                entry
            })
            .collect();
        let mut body = json!({ "members": members, "scope": self.scope });
        if self.config_in_force(node).pause {
            body["pause"] = json!(true);
        }
        if let Some(Ok(failover)) = &view.failover {
            if let Some(at) = failover.value.scheduled_at {
                body["scheduled_switchover"] = json!({
                    "at": at.to_rfc3339(),
                    "from": failover.value.leader.as_ref().map(MemberName::as_str),
                    "to": failover.value.candidate.as_ref().map(MemberName::as_str),
                });
            }
        }
        body
    }

    fn metrics(&self, node: &Node) -> String {
        let mut out = Exposition::new(&self.scope, self.name.as_str());
        patroni_series(&mut out, self, node, &self.patroni_body(node));
        let leader = node.role == EngineRole::Leader;
        out.gauge(
            "matriarch_leader",
            "1 if this node holds the leader lock",
            flag(leader),
        );
        out.gauge(
            "matriarch_primary",
            "1 if this node runs as a writable primary holding the lock",
            flag(node.is_primary()),
        );
        out.gauge(
            "matriarch_replica",
            "1 if this node runs as a replica",
            flag(node.is_replica()),
        );
        out.gauge(
            "matriarch_postgres_running",
            "1 if PostgreSQL accepts connections",
            flag(node.running()),
        );
        out.gauge(
            "matriarch_postgres_timeline",
            "the local timeline",
            node.timeline.unwrap_or(0),
        );
        out.gauge(
            "matriarch_wal_position_bytes",
            "the local WAL position",
            node.wal_position.map_or(0, |l| l.0),
        );
        let lag = if leader {
            "0".to_owned()
        } else {
            node.lag().map_or("-1".to_owned(), |l| l.to_string())
        };
        out.gauge(
            "matriarch_replication_lag_bytes",
            "bytes behind the leader (0 on the leader, -1 when unknown)",
            lag,
        );
        out.gauge(
            "matriarch_dcs_reachable",
            "1 if the last DCS read succeeded",
            flag(node.dcs_reachable),
        );
        out.gauge(
            "matriarch_paused",
            "1 if the cluster is in maintenance mode",
            flag(node.paused),
        );
        // This node's own report, else the newest one in the history.
        let loss = node.last_failover_loss.or_else(|| {
            node.view
                .as_ref()
                .and_then(|v| v.history.as_ref())
                .and_then(|h| h.as_ref().ok())
                .and_then(|h| h.value.0.iter().rev().find_map(|e| e.possible_loss_bytes()))
        });
        out.gauge(
            "matriarch_last_failover_possible_loss_bytes",
            "WAL bytes the former leader was last known to hold beyond the promoted position at the last automatic failover (-1: none reported)",
            loss.map_or("-1".to_owned(), |l| l.to_string()),
        );
        out.gauge(
            "matriarch_failsafe_active",
            "1 if this primary leads on failsafe (DCS unreachable, every member acknowledged)",
            flag(node.failsafe_active),
        );
        out.series(
            "matriarch_ha_loops_total",
            "counter",
            "HA loops run",
            node.loops,
        );
        out.into_text()
    }
}

/// PostgreSQL's host and port in a member's `conn_url` (port 5432 when it
/// names none), as `GET /cluster` shows them.
pub(crate) fn host_port(conn_url: &str) -> (Option<String>, Option<u16>) {
    let rest = conn_url.split_once("://").map_or(conn_url, |(_, r)| r);
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    match matriarch_model::HostPort::parse_with_default_port(authority, 5432) {
        Ok(address) => (Some(address.host), Some(address.port)),
        Err(_) => (
            Some(authority.to_owned()).filter(|a| !a.is_empty()),
            Some(5432),
        ),
    }
}
