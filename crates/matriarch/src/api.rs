//! The REST API, compatible with Patroni's so that HAProxy, ELB and
//! Kubernetes probes written for Patroni work unchanged.
//!
//! Health endpoints (GET, HEAD, OPTIONS; 200 or 503 with the `/patroni`
//! body): `/primary` (`/`, `/master`, `/read-write`), `/replica`
//! (`?lag=<bytes or 1MB>`, `?<tag>=<value>`), `/read-only`, `/leader`,
//! `/synchronous` (`/sync`), `/asynchronous` (`/async`), `/health`,
//! `/liveness`, `/readiness`.
//!
//! Information: GET `/patroni`, `/cluster`, `/history`, `/config`,
//! `/metrics` (Prometheus text).
//!
//! Changes (authenticated, see [`ApiState::authorize`]): PATCH and PUT
//! `/config`, POST `/switchover`, `/failover`, `/restart`, `/reload`,
//! `/reinitialize`.
//!
//! Failsafe (see [`ApiState::failsafe_heartbeat`]): POST `/failsafe`, a
//! primary's heartbeat while the DCS is unreachable; checked against
//! `restapi.allowlist` only, as Patroni does, since every member must be able
//! to acknowledge it.

// Refusals are returned as the response itself (`Result<_, Response>`): they
// are built only on the error path of one request, so their size is no cost.
#![allow(clippy::result_large_err)]

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use matriarch_dcs::{Dcs, DcsError, Expected};
use matriarch_ha::{EngineRole, FailsafeHandle, FailsafeRefusal, RestartHandle, StatusHandle};
use matriarch_model::{
    ClusterConfig, ClusterView, DcsKey, FailoverRequest, FailsafeHeartbeat, Lsn, MemberName,
    MemberState, Record, Role, Tags,
};
use matriarch_postgres::{
    DataDirectoryState, LocalState, PgController, PgRole, Postgres, ServerState, StopMode,
};
use serde::Deserialize;
use serde_json::{json, Value};
use tracing::{debug, info, warn};

use crate::config::{cluster_config_from_json, IpRange};
use crate::dcs::AnyDcs;
use crate::secret::Password;

/// The largest request body accepted.
const MAX_BODY: usize = 64 * 1024;

/// What the API serves from: the engine's status, a cache of the DCS view
/// and of the local PostgreSQL, refreshed in the background.
pub struct ApiState {
    /// This member.
    pub name: MemberName,
    /// The cluster.
    pub scope: String,
    /// The shared DCS client.
    pub dcs: AnyDcs,
    /// The PostgreSQL controller (restart, reload, reinitialize).
    pub pg: Arc<PgController>,
    /// Serializes PostgreSQL changes with the engine's.
    pub ops: Arc<tokio::sync::Mutex<()>>,
    /// The engine's status.
    pub status: StatusHandle,
    /// Basic authentication for changes.
    pub auth: Option<(String, Password)>,
    /// Whether a verified client certificate authenticates a change.
    pub client_certs: bool,
    /// Client ranges allowed to make changes (empty: all).
    pub allowlist: Vec<IpRange>,
    /// The tags this node runs with (reported).
    pub tags: RwLock<Tags>,
    /// The dynamic configuration to fall back on before the DCS has one.
    pub bootstrap_config: ClusterConfig,
    /// Asks the daemon to reload its configuration file.
    pub reload: tokio::sync::mpsc::Sender<()>,
    /// The cache.
    pub cache: RwLock<Cache>,
    /// Where `POST /failsafe` hands heartbeats to the engine
    /// ([`matriarch_ha::Engine::failsafe_handle`]); `None` answers 503.
    pub failsafe: Option<FailsafeHandle>,
    /// PostgreSQL parameters waiting for a restart.
    pub parameters: Arc<crate::params::ParameterStatus>,
    /// Where `POST /restart` asks the engine to restart PostgreSQL
    /// ([`matriarch_ha::Engine::restart_handle`]); `None` answers 503.
    pub restart: Option<RestartHandle>,
}

/// What the background refresher last saw.
#[derive(Default)]
pub struct Cache {
    /// The local PostgreSQL.
    pub local: Option<LocalState>,
    /// The DCS view.
    pub view: Option<ClusterView>,
    /// When the view was read.
    pub view_at: Option<chrono::DateTime<chrono::Utc>>,
    /// When the engine's status last changed (a loop finished).
    pub status_at: Option<Instant>,
    /// `PG_VERSION` × 10000.
    pub server_version: Option<u32>,
}

type Resp = Response<Full<Bytes>>;

fn respond(status: StatusCode, body: Value) -> Resp {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

fn text(status: StatusCode, body: String, content_type: &'static str) -> Resp {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    response
}

fn error(status: StatusCode, message: impl Into<String>) -> Resp {
    respond(status, json!({ "error": message.into() }))
}

/// Parses `?lag=`: bytes, or a size with a unit (`1MB`, `16 kB`, `1GB`).
pub fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().ok()?;
    let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" | "k" => 1 << 10,
        "mb" | "m" => 1 << 20,
        "gb" | "g" => 1 << 30,
        "tb" | "t" => 1 << 40,
        _ => return None,
    };
    number.checked_mul(factor)
}

fn query_pairs(query: Option<&str>) -> Vec<(String, String)> {
    query
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = |b: u8| (b as char).to_digit(16);
                match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                    (Some(hi), Some(lo)) => {
                        out.push((hi * 16 + lo) as u8);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// This node as the health checks see it.
struct Node {
    role: EngineRole,
    leader: Option<MemberName>,
    local: Option<LocalState>,
    view: Option<ClusterView>,
    tags: Tags,
    paused: bool,
    dcs_reachable: bool,
    loops: u64,
    status_age: Option<Duration>,
    timeline: Option<u32>,
    wal_position: Option<Lsn>,
    /// The dynamic configuration this node's engine decides with.
    config: ClusterConfig,
    /// The possible loss this node reported at its last failover.
    last_failover_loss: Option<u64>,
    /// Leading on failsafe.
    failsafe_active: bool,
}

impl Node {
    fn pg_role(&self) -> Option<PgRole> {
        self.local.as_ref().and_then(LocalState::role)
    }

    fn running(&self) -> bool {
        self.pg_role().is_some()
    }

    fn is_primary(&self) -> bool {
        self.role == EngineRole::Leader && self.pg_role() == Some(PgRole::Primary)
    }

    fn is_replica(&self) -> bool {
        self.pg_role() == Some(PgRole::Replica) && self.role != EngineRole::Leader
    }

    fn in_sync(&self, name: &MemberName) -> bool {
        self.view
            .as_ref()
            .and_then(|v| v.sync.as_ref())
            .and_then(|s| s.as_ref().ok())
            .is_some_and(|s| s.value.sync_standbys.contains(name))
    }

    /// The leader's last known WAL position.
    fn leader_optime(&self) -> Option<Lsn> {
        let view = self.view.as_ref()?;
        let from_status = view
            .status
            .as_ref()
            .and_then(|s| s.as_ref().ok())
            .map(|s| s.value.optime);
        let from_member = view
            .leader_name()
            .and_then(|l| view.members.get(l.as_str()))
            .and_then(|m| m.as_ref().ok())
            .and_then(|m| m.value.wal_position());
        from_status.into_iter().chain(from_member).max()
    }

    fn lag(&self) -> Option<u64> {
        let leader = self.leader_optime()?;
        let mine = self.wal_position?;
        Some(leader.bytes_ahead_of(mine))
    }

    fn state(&self) -> &'static str {
        match self.local.as_ref().map(|l| &l.server) {
            Some(ServerState::Running(_)) => "running",
            Some(ServerState::Unavailable) => "starting",
            Some(ServerState::NotRunning(DataDirectoryState::Crashed)) => "crashed",
            Some(ServerState::NotRunning(DataDirectoryState::Empty)) => "uninitialized",
            Some(ServerState::NotRunning(DataDirectoryState::CleanShutdown)) => "stopped",
            None => "unknown",
        }
    }
}

impl ApiState {
    fn node(&self) -> Node {
        let status = self.status.get();
        let cache = self.cache.read().unwrap_or_else(|e| e.into_inner());
        Node {
            role: status.role,
            leader: status.leader.clone(),
            local: cache.local.clone(),
            view: cache.view.clone(),
            tags: self.tags.read().map(|t| t.clone()).unwrap_or_default(),
            paused: status.paused,
            dcs_reachable: status.dcs_reachable,
            loops: status.loops,
            status_age: cache.status_at.map(|at| at.elapsed()),
            timeline: status.timeline.map(|t| t.0),
            wal_position: status.wal_position,
            config: status.config,
            last_failover_loss: status.last_failover_possible_loss_bytes,
            failsafe_active: status.failsafe_active,
        }
    }

    fn config_in_force(&self, node: &Node) -> ClusterConfig {
        node.view
            .as_ref()
            .and_then(|v| v.config.as_ref())
            .and_then(|c| c.as_ref().ok())
            .map(|c| c.value.clone())
            .unwrap_or_else(|| self.bootstrap_config.clone())
    }

    /// The `/patroni` body.
    fn patroni_body(&self, node: &Node) -> Value {
        let cache = self.cache.read().unwrap_or_else(|e| e.into_inner());
        let role = match node.pg_role() {
            Some(PgRole::Primary) => "primary",
            Some(PgRole::Replica) => "replica",
            None => "uninitialized",
        };
        let mut body = json!({
            "state": node.state(),
            "role": role,
            "timeline": node.timeline,
            "cluster_unlocked": node.view.as_ref().is_some_and(|v| v.leader.is_none()),
            "dcs_last_seen": cache.view_at.map(|t| t.timestamp()),
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
                    body["xlog"] = json!({
                        "received_location": local.wal.received.or(local.wal.flush).map(|l| l.0),
                        "replayed_location": local.wal.replayed.map(|l| l.0),
                        "paused": false,
                    });
                }
                None => {
                    if let Some(position) = node.wal_position {
                        body["xlog"] = json!({ "location": position.0 });
                    }
                }
            }
        }
        body
    }

    /// Whether the health check `path` passes; `None` if `path` is not one.
    fn health(&self, path: &str, query: &[(String, String)], node: &Node) -> Option<bool> {
        let ok = match path {
            "/" | "/primary" | "/master" | "/read-write" => node.is_primary(),
            "/leader" => node.role == EngineRole::Leader && node.running(),
            "/replica" => {
                let mut ok = node.is_replica() && !node.tags.noloadbalance;
                for (key, value) in query {
                    if key == "lag" {
                        match (parse_size(value), node.lag()) {
                            (Some(max), Some(lag)) => ok &= lag <= max,
                            (Some(_), None) => {}
                            (None, _) => ok = false,
                        }
                    } else {
                        let tags = serde_json::to_value(&node.tags).unwrap_or(Value::Null);
                        let actual = match tags.get(key) {
                            Some(Value::String(s)) => s.clone(),
                            Some(Value::Null) | None => {
                                // Known boolean tags default to false.
                                if ["nofailover", "noloadbalance", "nosync", "clonefrom"]
                                    .contains(&key.as_str())
                                {
                                    "false".to_owned()
                                } else {
                                    String::new()
                                }
                            }
                            Some(other) => other.to_string(),
                        };
                        ok &= actual.eq_ignore_ascii_case(value);
                    }
                }
                ok
            }
            "/read-only" => node.is_primary() || node.is_replica(),
            "/synchronous" | "/sync" => node.is_replica() && node.in_sync(&self.name),
            "/asynchronous" | "/async" => node.is_replica() && !node.in_sync(&self.name),
            "/health" => node.running(),
            "/liveness" => {
                let config = self.config_in_force(node);
                let bound = config.ttl.max(config.loop_wait * 3) + config.retry_timeout * 2;
                node.status_age.is_some_and(|age| age <= bound)
            }
            "/readiness" => node.is_primary() || (node.is_replica() && node.running()),
            _ => return None,
        };
        Some(ok)
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
                    "leader"
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
                if role != "leader" {
                    let lag = match (leader_optime, member.wal_position()) {
                        (Some(l), Some(p)) => json!(l.bytes_ahead_of(p)),
                        _ => json!("unknown"),
                    };
                    entry["lag"] = lag;
                    if member.state == MemberState::Running && member.role == Role::Replica {
                        entry["state"] = json!("streaming");
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
        let labels = format!(
            "scope=\"{}\",name=\"{}\"",
            self.scope.replace('"', ""),
            self.name.as_str().replace('"', "")
        );
        let mut out = String::new();
        let mut gauge = |name: &str, help: &str, value: String| {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name}{{{labels}}} {value}\n"
            ));
        };
        let b = |v: bool| if v { "1" } else { "0" }.to_owned();
        gauge(
            "matriarch_leader",
            "1 if this node holds the leader lock",
            b(node.role == EngineRole::Leader),
        );
        gauge(
            "matriarch_primary",
            "1 if this node runs as a writable primary holding the lock",
            b(node.is_primary()),
        );
        gauge(
            "matriarch_replica",
            "1 if this node runs as a replica",
            b(node.is_replica()),
        );
        gauge(
            "matriarch_postgres_running",
            "1 if PostgreSQL accepts connections",
            b(node.running()),
        );
        gauge(
            "matriarch_postgres_timeline",
            "the local timeline",
            node.timeline.unwrap_or(0).to_string(),
        );
        gauge(
            "matriarch_wal_position_bytes",
            "the local WAL position",
            node.wal_position.map_or(0, |l| l.0).to_string(),
        );
        gauge(
            "matriarch_replication_lag_bytes",
            "bytes behind the leader (0 on the leader, -1 when unknown)",
            if node.role == EngineRole::Leader {
                "0".to_owned()
            } else {
                node.lag().map_or("-1".to_owned(), |l| l.to_string())
            },
        );
        gauge(
            "matriarch_dcs_reachable",
            "1 if the last DCS read succeeded",
            b(node.dcs_reachable),
        );
        gauge(
            "matriarch_paused",
            "1 if the cluster is in maintenance mode",
            b(node.paused),
        );
        // This node's own report, else the newest one in the history.
        let loss = node.last_failover_loss.or_else(|| {
            node.view
                .as_ref()
                .and_then(|v| v.history.as_ref())
                .and_then(|h| h.as_ref().ok())
                .and_then(|h| h.value.0.iter().rev().find_map(|e| e.possible_loss_bytes()))
        });
        gauge(
            "matriarch_last_failover_possible_loss_bytes",
            "WAL bytes the former leader was last known to hold beyond the promoted position at the last automatic failover (-1: none reported)",
            loss.map_or("-1".to_owned(), |l| l.to_string()),
        );
        gauge(
            "matriarch_failsafe_active",
            "1 if this primary leads on failsafe (DCS unreachable, every member acknowledged)",
            b(node.failsafe_active),
        );
        out.push_str(&format!(
            "# HELP matriarch_ha_loops_total HA loops run\n# TYPE matriarch_ha_loops_total counter\nmatriarch_ha_loops_total{{{labels}}} {}\n",
            node.loops
        ));
        out
    }

    /// Checks a change request: the client must be in the allowlist (if one
    /// is set), then authenticated by a verified client certificate or the
    /// configured basic-auth user. Without any authentication configured,
    /// changes are refused.
    fn authorize(
        &self,
        req: &Request<Incoming>,
        peer: IpAddr,
        client_cert: bool,
    ) -> Result<(), Resp> {
        if !self.allowlist.is_empty() && !self.allowlist.iter().any(|r| r.contains(peer)) {
            return Err(error(
                StatusCode::FORBIDDEN,
                format!("{peer} is not in restapi.allowlist"),
            ));
        }
        if client_cert && self.client_certs {
            return Ok(());
        }
        let Some((user, password)) = &self.auth else {
            if self.client_certs {
                return Err(unauthorized("a client certificate is required"));
            }
            return Err(error(
                StatusCode::FORBIDDEN,
                "changes are disabled: configure restapi.authentication (or client certificates)",
            ));
        };
        let given = req
            .headers()
            .get(hyper::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Basic "))
            .and_then(|b| {
                base64::engine::general_purpose::STANDARD
                    .decode(b.trim())
                    .ok()
            })
            .and_then(|b| String::from_utf8(b).ok());
        let expected = format!("{user}:{}", password.expose());
        match given {
            Some(given) if constant_time_eq(given.as_bytes(), expected.as_bytes()) => Ok(()),
            Some(_) => Err(unauthorized("wrong user name or password")),
            None => Err(unauthorized("authentication required")),
        }
    }
}

fn unauthorized(message: &str) -> Resp {
    let mut response = error(StatusCode::UNAUTHORIZED, message);
    response.headers_mut().insert(
        hyper::header::WWW_AUTHENTICATE,
        hyper::header::HeaderValue::from_static("Basic realm=\"matriarch\""),
    );
    response
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn host_port(conn_url: &str) -> (Option<String>, Option<u16>) {
    let rest = conn_url.split_once("://").map_or(conn_url, |(_, r)| r);
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    match crate::config::split_host_port(authority) {
        Some((h, p)) => (Some(h), Some(p)),
        None => (
            Some(authority.to_owned()).filter(|a| !a.is_empty()),
            Some(5432),
        ),
    }
}

async fn read_json(req: Request<Incoming>) -> Result<Value, Resp> {
    let body = http_body_util::Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| {
            error(
                StatusCode::BAD_REQUEST,
                format!("cannot read the body: {e}"),
            )
        })?
        .to_bytes();
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(json!({}));
    }
    serde_json::from_slice(&body).map_err(|e| {
        error(
            StatusCode::BAD_REQUEST,
            format!("the body is not valid JSON: {e}"),
        )
    })
}

fn parse_body<T: for<'de> Deserialize<'de>>(value: Value) -> Result<T, Resp> {
    if !value.is_object() {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "the body must be a JSON object",
        ));
    }
    serde_json::from_value(value)
        .map_err(|e| error(StatusCode::BAD_REQUEST, format!("invalid body: {e}")))
}

/// `POST /switchover` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SwitchoverBody {
    #[serde(default)]
    leader: Option<String>,
    #[serde(default)]
    candidate: Option<String>,
    #[serde(default)]
    scheduled_at: Option<String>,
}

/// `POST /failover` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FailoverBody {
    #[serde(default)]
    leader: Option<String>,
    candidate: Option<String>,
}

/// `POST /restart` and `/reinitialize` bodies (options accepted and ignored
/// where matriarch has no equivalent).
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RestartBody {
    #[serde(default)]
    #[allow(dead_code)]
    force: Option<bool>,
    #[serde(default)]
    #[allow(dead_code)]
    role: Option<String>,
}

fn dcs_error(e: DcsError) -> Resp {
    match e {
        DcsError::Conflict { .. } => error(
            StatusCode::CONFLICT,
            format!("changed concurrently, try again: {e}"),
        ),
        other => error(StatusCode::SERVICE_UNAVAILABLE, format!("DCS: {other}")),
    }
}

fn member_name(text: &str, field: &str) -> Result<MemberName, Resp> {
    MemberName::new(text).map_err(|e| error(StatusCode::BAD_REQUEST, format!("{field}: {e}")))
}

/// RFC 7396 JSON merge patch.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(patch) => {
            if !target.is_object() {
                *target = json!({});
            }
            if let Value::Object(map) = target {
                for (key, value) in patch {
                    if value.is_null() {
                        map.remove(key);
                    } else {
                        merge_patch(map.entry(key.clone()).or_insert(Value::Null), value);
                    }
                }
            }
        }
        other => *target = other.clone(),
    }
}

impl ApiState {
    async fn fresh_view(&self) -> Result<ClusterView, Resp> {
        let view = tokio::time::timeout(
            self.bootstrap_config.retry_timeout * 2,
            self.dcs.read_view(),
        )
        .await
        .map_err(|_| error(StatusCode::SERVICE_UNAVAILABLE, "DCS: no answer in time"))?
        .map_err(dcs_error)?;
        Ok(view)
    }

    async fn change_config(&self, req: Request<Incoming>, replace: bool) -> Resp {
        let patch = match read_json(req).await {
            Ok(v) => v,
            Err(r) => return r,
        };
        if !patch.is_object() {
            return error(StatusCode::BAD_REQUEST, "the body must be a JSON object");
        }
        let view = match self.fresh_view().await {
            Ok(v) => v,
            Err(r) => return r,
        };
        let (current, expected) = match &view.config {
            Some(Ok(c)) => (c.value.clone(), Expected::Version(c.version)),
            Some(Err(_)) => (self.bootstrap_config.clone(), Expected::Any),
            None => (self.bootstrap_config.clone(), Expected::Absent),
        };
        let new = if replace {
            patch
        } else {
            let mut value = serde_json::to_value(&current).unwrap_or_else(|_| json!({}));
            merge_patch(&mut value, &patch);
            value
        };
        let config = match cluster_config_from_json("config", &new) {
            Ok(c) => c,
            Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
        };
        // Refused here rather than by every node later: a parameter matriarch
        // manages, or one no configuration file can hold.
        for (name, value) in &config.postgresql.parameters {
            if let Err(e) = matriarch_postgres::check_parameter(name, value) {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("postgresql.parameters: {e}"),
                );
            }
        }
        match self
            .dcs
            .write(&Record::Config(config.clone()), expected)
            .await
        {
            Ok(_) => {
                info!(cluster = %self.scope, member = %self.name, "dynamic configuration changed through the REST API");
                respond(
                    StatusCode::OK,
                    serde_json::to_value(&config).unwrap_or(Value::Null),
                )
            }
            Err(e) => dcs_error(e),
        }
    }

    /// Validates and writes a switchover/failover request, then waits for
    /// the outcome (unless scheduled).
    async fn switchover(&self, req: Request<Incoming>, failover: bool) -> Resp {
        let value = match read_json(req).await {
            Ok(v) => v,
            Err(r) => return r,
        };
        let (leader, candidate, scheduled_at) = if failover {
            match parse_body::<FailoverBody>(value) {
                Ok(b) => {
                    if b.candidate.is_none() {
                        return error(StatusCode::BAD_REQUEST, "failover: `candidate` is required");
                    }
                    (b.leader, b.candidate, None)
                }
                Err(r) => return r,
            }
        } else {
            match parse_body::<SwitchoverBody>(value) {
                Ok(b) => {
                    if b.leader.is_none() {
                        return error(StatusCode::BAD_REQUEST, "switchover: `leader` is required");
                    }
                    (b.leader, b.candidate, b.scheduled_at)
                }
                Err(r) => return r,
            }
        };
        let leader = match leader
            .as_deref()
            .map(|l| member_name(l, "leader"))
            .transpose()
        {
            Ok(l) => l,
            Err(r) => return r,
        };
        let candidate = match candidate
            .as_deref()
            .map(|c| member_name(c, "candidate"))
            .transpose()
        {
            Ok(c) => c,
            Err(r) => return r,
        };
        let scheduled_at = match scheduled_at
            .as_deref()
            .map(chrono::DateTime::parse_from_rfc3339)
            .transpose()
        {
            Ok(at) => at,
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("scheduled_at: not an RFC 3339 time with offset: {e}"),
                )
            }
        };
        if let Some(at) = scheduled_at {
            if at < chrono::Utc::now() {
                return error(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "cannot schedule a switchover in the past",
                );
            }
        }
        let view = match self.fresh_view().await {
            Ok(v) => v,
            Err(r) => return r,
        };
        let current = view.leader_name().cloned();
        if let Some(leader) = &leader {
            if current.as_ref() != Some(leader) {
                return error(
                    StatusCode::PRECONDITION_FAILED,
                    format!(
                        "leader name does not match: {leader} is not the leader (the leader is {})",
                        current.as_ref().map_or("nobody", MemberName::as_str)
                    ),
                );
            }
        }
        if !failover && current.is_none() {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the cluster has no leader: use failover",
            );
        }
        let healthy: Vec<_> = view.healthy_records().collect();
        match &candidate {
            Some(candidate) => {
                let Some(member) = healthy.iter().find(|m| &m.name == candidate) else {
                    return error(
                        StatusCode::PRECONDITION_FAILED,
                        format!("candidate {candidate} does not exist (no member record in the cluster)"),
                    );
                };
                if Some(candidate) == current.as_ref() {
                    return error(
                        StatusCode::PRECONDITION_FAILED,
                        format!("candidate {candidate} is already the leader"),
                    );
                }
                if !member.tags.allows_failover() {
                    return error(
                        StatusCode::PRECONDITION_FAILED,
                        format!("candidate {candidate} is tagged nofailover"),
                    );
                }
            }
            None => {
                let any = healthy.iter().any(|m| {
                    Some(&m.name) != current.as_ref()
                        && m.role == Role::Replica
                        && m.state == MemberState::Running
                        && m.tags.allows_failover()
                });
                if !any {
                    return error(
                        StatusCode::PRECONDITION_FAILED,
                        "no good candidates: no healthy replica",
                    );
                }
            }
        }
        // A reason the engine reports later must be told from an older one.
        let failure_before = self.status.get().last_switchover_failure;
        let request = FailoverRequest {
            leader: if failover { None } else { leader.clone() },
            candidate: candidate.clone(),
            scheduled_at,
        };
        if let Err(e) = self
            .dcs
            .write(&Record::Failover(request.clone()), Expected::Any)
            .await
        {
            return dcs_error(e);
        }
        info!(cluster = %self.scope, member = %self.name, ?candidate, failover, "switchover requested through the REST API");
        if scheduled_at.is_some() {
            return respond(
                StatusCode::ACCEPTED,
                json!({"message": "Switchover scheduled"}),
            );
        }
        // Wait for the outcome, as Patroni does.
        let config = view
            .config
            .as_ref()
            .and_then(|c| c.as_ref().ok())
            .map(|c| c.value.clone())
            .unwrap_or_else(|| self.bootstrap_config.clone());
        let deadline = Instant::now()
            + (config.ttl + config.loop_wait * 2 + config.retry_timeout * 2)
                .max(Duration::from_secs(30));
        while Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let Ok(Ok(view)) =
                tokio::time::timeout(config.retry_timeout, self.dcs.read_view()).await
            else {
                continue;
            };
            let now = view.leader_name().cloned();
            if now.is_some() && now == current && view.failover.is_none() {
                // The leader withdrew the request and leads on: it stepped
                // down and nobody took over, or it never could.
                let leader = current.as_ref().map_or("the leader", MemberName::as_str);
                let reason = self
                    .switchover_failure(
                        &view,
                        leader,
                        failure_before.as_deref(),
                        config.retry_timeout,
                    )
                    .await;
                return error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("Switchover failed: {reason}"),
                );
            }
            if now.is_some() && now != current {
                let new = now.as_ref().map_or("", MemberName::as_str);
                if candidate.as_ref().is_none_or(|c| Some(c) == now.as_ref()) {
                    return respond(
                        StatusCode::OK,
                        json!({"message": format!("Successfully {} over to \"{new}\"", if failover { "failed" } else { "switched" })}),
                    );
                }
                return error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("Switchover failed: {new} took over instead"),
                );
            }
        }
        if let (false, Some(leader)) = (failover, &current) {
            if let Some(reason) = self.withdraw_stale_request(&request, leader, &config).await {
                return error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("Switchover failed: {reason}"),
                );
            }
        }
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "Switchover status unknown: the leader did not change in time",
        )
    }

    /// A switchover the leader did not carry out in time (it never found the
    /// candidate ready, so it never stepped down): withdraws the request,
    /// if it is still ours and the leader still leads, so that it cannot
    /// fire later by surprise, and says why. `None` when that is not so.
    async fn withdraw_stale_request(
        &self,
        request: &FailoverRequest,
        leader: &MemberName,
        config: &ClusterConfig,
    ) -> Option<String> {
        let view = tokio::time::timeout(config.retry_timeout, self.dcs.read_view())
            .await
            .ok()?
            .ok()?;
        if view.leader_name() != Some(leader) {
            return None;
        }
        let Some(Ok(entry)) = &view.failover else {
            return None;
        };
        if entry.value != *request {
            return None;
        }
        if let Err(e) = self
            .dcs
            .delete(&DcsKey::Failover, Expected::Version(entry.version))
            .await
        {
            warn!(cluster = %self.scope, member = %self.name, error = %e, "could not withdraw the switchover request");
            return None;
        }
        let why = match &request.candidate {
            Some(candidate) => match view
                .members
                .get(candidate.as_str())
                .and_then(|e| e.as_ref().ok())
            {
                None => format!("candidate {candidate} has no member record"),
                Some(m) => format!(
                    "candidate {candidate} was never ready to take over (its record: {} {}, timeline {})",
                    format!("{:?}", m.value.role).to_ascii_lowercase(),
                    m.value.state.as_str(),
                    m.value.timeline.map_or_else(|| "unknown".to_owned(), |t| t.0.to_string()),
                ),
            },
            None => "no replica was ever ready to take over".to_owned(),
        };
        warn!(cluster = %self.scope, member = %self.name, %why, "switchover not carried out in time: request withdrawn");
        Some(format!(
            "{leader} did not step down: {why}; the request was withdrawn and {leader} keeps leading"
        ))
    }

    /// Why the leader abandoned a switchover, as its engine reported it
    /// (`last_switchover_failure`: this node's status, or the leader's
    /// `GET /patroni`), waiting up to `wait` for the report to appear.
    async fn switchover_failure(
        &self,
        view: &ClusterView,
        leader: &str,
        before: Option<&str>,
        wait: Duration,
    ) -> String {
        let deadline = Instant::now() + wait;
        let api_url = view
            .members
            .get(leader)
            .and_then(|entry| entry.as_ref().ok())
            .map(|m| m.value.api_url.clone())
            .filter(|url| !url.is_empty());
        loop {
            let reported = if leader == self.name.as_str() {
                self.status
                    .get()
                    .last_switchover_failure
                    .filter(|f| Some(f.as_str()) != before)
            } else if let Some(url) = &api_url {
                match crate::http_client::get(url, wait.min(Duration::from_secs(2))).await {
                    Ok((200, body)) => serde_json::from_slice::<Value>(&body).ok().and_then(|b| {
                        b.get("last_switchover_failure")?
                            .as_str()
                            .map(str::to_owned)
                    }),
                    _ => None,
                }
            } else {
                None
            };
            if let Some(reason) = reported {
                return reason;
            }
            if Instant::now() >= deadline {
                return format!(
                    "the request was withdrawn without a new leader; {leader} keeps leading"
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    async fn restart(&self, req: Request<Incoming>) -> Resp {
        let value = match read_json(req).await {
            Ok(v) => v,
            Err(r) => return r,
        };
        if let Err(r) = parse_body::<RestartBody>(value) {
            return r;
        }
        // Through the engine: only it knows whether this member may start a
        // writable primary (lock held, fence armed), and nothing else it
        // does (a demotion) can wait behind the restart.
        let Some(handle) = &self.restart else {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "restart failed: the HA engine is not wired to the REST API",
            );
        };
        // A bound far above a normal restart (the engine bounds each step itself).
        let timeout = Duration::from_secs(300);
        match handle.restart(timeout).await {
            Ok(done) => respond(
                StatusCode::OK,
                json!({"message": format!("restarted successfully ({done})")}),
            ),
            Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        }
    }

    async fn reload_request(&self) -> Resp {
        let _ = self.reload.try_send(());
        let _ops = self.ops.lock().await;
        match self.pg.reload().await {
            Ok(()) => respond(StatusCode::ACCEPTED, json!({"message": "reload scheduled"})),
            Err(e) => error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("reload failed: {e}"),
            ),
        }
    }

    async fn reinitialize(&self, req: Request<Incoming>) -> Resp {
        let value = match read_json(req).await {
            Ok(v) => v,
            Err(r) => return r,
        };
        if let Err(r) = parse_body::<RestartBody>(value) {
            return r;
        }
        if self.status.get().role == EngineRole::Leader {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "I am the leader, can not reinitialize",
            );
        }
        let node = self.node();
        if node
            .view
            .as_ref()
            .and_then(ClusterView::leader_name)
            .is_none()
        {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the cluster has no leader to clone from",
            );
        }
        let _ops = self.ops.lock().await;
        if let Err(e) = self.pg.stop(StopMode::Immediate).await {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("cannot stop PostgreSQL: {e}"),
            );
        }
        let data_dir = self.pg.config().data_dir.clone();
        let entries = match std::fs::read_dir(&data_dir) {
            Ok(entries) => entries,
            Err(e) => {
                return error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("cannot list {}: {e}", data_dir.display()),
                )
            }
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let result = if path.is_dir() && !path.is_symlink() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            if let Err(e) = result {
                return error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("cannot remove {}: {e}", path.display()),
                );
            }
        }
        warn!(cluster = %self.scope, member = %self.name, "data directory removed for reinitialization: the engine clones it again");
        respond(StatusCode::OK, json!({"message": "reinitialize started"}))
    }

    /// `POST /failsafe`: a primary cut off from the DCS (failsafe mode)
    /// asks this member not to race for the lock. 200 only when failsafe
    /// mode is on and this node runs as a replica of the sender (from then
    /// on it does not race for a ttl); 409 when it is not a replica of it;
    /// 503 when failsafe mode is off or the engine is not wired. Only
    /// `restapi.allowlist` applies.
    async fn failsafe_heartbeat(&self, req: Request<Incoming>, peer: IpAddr) -> Resp {
        if !self.allowlist.is_empty() && !self.allowlist.iter().any(|r| r.contains(peer)) {
            return error(
                StatusCode::FORBIDDEN,
                format!("{peer} is not in restapi.allowlist"),
            );
        }
        let Some(handle) = &self.failsafe else {
            return error(StatusCode::SERVICE_UNAVAILABLE, "failsafe is not available");
        };
        let heartbeat: FailsafeHeartbeat = match read_json(req).await {
            Ok(value) => match serde_json::from_value(value) {
                Ok(heartbeat) => heartbeat,
                Err(e) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        format!("not a failsafe heartbeat: {e}"),
                    )
                }
            },
            Err(r) => return r,
        };
        // The engine's view is a loop old; PostgreSQL's is fresher.
        let node = self.node();
        if node.pg_role() != Some(PgRole::Replica) {
            return error(
                StatusCode::CONFLICT,
                format!("not a running replica of {}", heartbeat.name),
            );
        }
        match handle.receive(&heartbeat) {
            Ok(()) => {
                debug!(cluster = %self.scope, member = %self.name, leader = %heartbeat.name, "failsafe heartbeat acknowledged");
                respond(StatusCode::OK, json!({"message": "Accepted"}))
            }
            Err(refusal @ FailsafeRefusal::Disabled) => {
                error(StatusCode::SERVICE_UNAVAILABLE, refusal.to_string())
            }
            Err(refusal) => error(StatusCode::CONFLICT, refusal.to_string()),
        }
    }

    /// Serves one request.
    pub async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        peer: SocketAddr,
        client_cert: bool,
    ) -> Resp {
        let method = req.method().clone();
        let path = req.uri().path().trim_end_matches('/').to_owned();
        let path = if path.is_empty() {
            "/".to_owned()
        } else {
            path
        };
        let query = query_pairs(req.uri().query());
        tracing::trace!(%method, %path, %peer, "REST request");
        match method {
            Method::GET | Method::HEAD | Method::OPTIONS => {
                let node = self.node();
                let mut response = if let Some(ok) = self.health(&path, &query, &node) {
                    let status = if ok {
                        StatusCode::OK
                    } else {
                        StatusCode::SERVICE_UNAVAILABLE
                    };
                    respond(status, self.patroni_body(&node))
                } else {
                    match path.as_str() {
                        "/patroni" => respond(StatusCode::OK, self.patroni_body(&node)),
                        "/cluster" => respond(StatusCode::OK, self.cluster_body(&node)),
                        "/history" => {
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
                                            // A failover's report, after Patroni's five fields.
                                            if let (Some(loss), Value::Array(items)) =
                                                (e.possible_loss_bytes(), &mut row)
                                            {
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
                        "/config" => match self.fresh_view().await {
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
                        },
                        "/metrics" => text(
                            StatusCode::OK,
                            self.metrics(&node),
                            "text/plain; version=0.0.4",
                        ),
                        _ => error(StatusCode::NOT_FOUND, format!("no such endpoint: {path}")),
                    }
                };
                if method == Method::HEAD {
                    *response.body_mut() = Full::new(Bytes::new());
                }
                response
            }
            Method::POST | Method::PATCH | Method::PUT | Method::DELETE => {
                if method == Method::POST && path == "/failsafe" {
                    return self.failsafe_heartbeat(req, peer.ip()).await;
                }
                let known = matches!(
                    (&method, path.as_str()),
                    (&Method::PATCH | &Method::PUT, "/config")
                        | (
                            &Method::POST,
                            "/switchover" | "/failover" | "/restart" | "/reload" | "/reinitialize"
                        )
                );
                if !known {
                    return error(
                        StatusCode::NOT_FOUND,
                        format!("no such endpoint: {method} {path}"),
                    );
                }
                if let Err(r) = self.authorize(&req, peer.ip(), client_cert) {
                    warn!(cluster = %self.scope, member = %self.name, %method, %path, %peer, status = r.status().as_u16(), "refused a change request");
                    return r;
                }
                match (method, path.as_str()) {
                    (Method::PATCH, "/config") => self.change_config(req, false).await,
                    (Method::PUT, "/config") => self.change_config(req, true).await,
                    (_, "/switchover") => self.switchover(req, false).await,
                    (_, "/failover") => self.switchover(req, true).await,
                    (_, "/restart") => self.restart(req).await,
                    (_, "/reload") => self.reload_request().await,
                    (_, "/reinitialize") => self.reinitialize(req).await,
                    _ => error(StatusCode::NOT_FOUND, "no such endpoint"),
                }
            }
            _ => error(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("method {method} not allowed"),
            ),
        }
    }
}

/// Keeps [`Cache`] fresh: the local PostgreSQL and the DCS view every
/// `interval`, and the time of the engine's last loop.
pub async fn refresh(state: Arc<ApiState>, interval: Duration) {
    let status_task = {
        let state = Arc::clone(&state);
        let mut status = state.status.clone();
        tokio::spawn(async move {
            while status.changed().await {
                if let Ok(mut cache) = state.cache.write() {
                    cache.status_at = Some(Instant::now());
                }
            }
        })
    };
    let version_file = state.pg.config().data_dir.join("PG_VERSION");
    loop {
        let (local, view) = tokio::join!(
            tokio::time::timeout(interval.max(Duration::from_secs(2)), state.pg.observe()),
            tokio::time::timeout(interval.max(Duration::from_secs(2)), state.dcs.read_view()),
        );
        let version = std::fs::read_to_string(&version_file)
            .ok()
            .and_then(|v| v.trim().parse::<u32>().ok())
            .map(|major| major * 10000);
        if let Ok(mut cache) = state.cache.write() {
            cache.local = match local {
                Ok(Ok(local)) => Some(local),
                _ => None,
            };
            if let Ok(Ok(view)) = view {
                cache.view = Some(view);
                cache.view_at = Some(chrono::Utc::now());
            }
            cache.server_version = version;
        }
        tokio::time::sleep(interval).await;
        if status_task.is_finished() {
            break;
        }
    }
}

/// A TLS acceptor and whether it verifies client certificates.
pub type Tls = (tokio_rustls::TlsAcceptor, bool);

/// Builds the TLS acceptor from PEM files.
pub fn tls_acceptor(
    certfile: &std::path::Path,
    keyfile: &std::path::Path,
    cafile: Option<&std::path::Path>,
) -> Result<Tls, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(certfile)
        .map_err(|e| format!("restapi.certfile {}: {e}", certfile.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("restapi.certfile {}: {e}", certfile.display()))?;
    let key = PrivateKeyDer::from_pem_file(keyfile)
        .map_err(|e| format!("restapi.keyfile {}: {e}", keyfile.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?;
    let (config, client_certs) = match cafile {
        Some(cafile) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(cafile)
                .map_err(|e| format!("restapi.cafile {}: {e}", cafile.display()))?
            {
                let cert = cert.map_err(|e| format!("restapi.cafile {}: {e}", cafile.display()))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("restapi.cafile {}: {e}", cafile.display()))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .allow_unauthenticated()
            .build()
            .map_err(|e| format!("restapi.cafile: {e}"))?;
            (
                builder
                    .with_client_cert_verifier(verifier)
                    .with_single_cert(certs, key)
                    .map_err(|e| format!("restapi.certfile/keyfile: {e}"))?,
                true,
            )
        }
        None => (
            builder
                .with_no_client_auth()
                .with_single_cert(certs, key)
                .map_err(|e| format!("restapi.certfile/keyfile: {e}"))?,
            false,
        ),
    };
    Ok((
        tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        client_certs,
    ))
}

/// Accepts connections on `listener` and serves them until the task is aborted.
pub async fn serve(listener: tokio::net::TcpListener, state: Arc<ApiState>, tls: Option<Tls>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                warn!(error = %e, "REST API accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let state = Arc::clone(&state);
        let tls = tls.clone();
        tokio::spawn(async move {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .keep_alive(true);
            match tls {
                Some((acceptor, _)) => {
                    let accepted =
                        tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream))
                            .await;
                    let Ok(Ok(stream)) = accepted else {
                        debug!(%peer, "TLS handshake failed");
                        return;
                    };
                    let client_cert = stream
                        .get_ref()
                        .1
                        .peer_certificates()
                        .is_some_and(|c| !c.is_empty());
                    let service = hyper::service::service_fn(move |req| {
                        let state = Arc::clone(&state);
                        async move { Ok::<_, Infallible>(state.handle(req, peer, client_cert).await) }
                    });
                    let _ = builder
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                }
                None => {
                    let service = hyper::service::service_fn(move |req| {
                        let state = Arc::clone(&state);
                        async move { Ok::<_, Infallible>(state.handle(req, peer, false).await) }
                    });
                    let _ = builder
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("1024"), Some(1024));
        assert_eq!(parse_size("1MB"), Some(1 << 20));
        assert_eq!(parse_size("16 kB"), Some(16 << 10));
        assert_eq!(parse_size("lots"), None);
        assert_eq!(parse_size("1XB"), None);
    }

    #[test]
    fn queries_decode() {
        assert_eq!(
            query_pairs(Some("lag=1MB&zone=eu%2D1")),
            vec![
                ("lag".to_owned(), "1MB".to_owned()),
                ("zone".to_owned(), "eu-1".to_owned())
            ]
        );
    }

    #[test]
    fn merge_patch_follows_rfc_7396() {
        let mut target = json!({"ttl": 5, "postgresql": {"parameters": {"a": 1, "b": 2}}});
        merge_patch(
            &mut target,
            &json!({"ttl": 10, "postgresql": {"parameters": {"a": null, "c": 3}}}),
        );
        assert_eq!(
            target,
            json!({"ttl": 10, "postgresql": {"parameters": {"b": 2, "c": 3}}})
        );
    }

    #[test]
    fn comparison_is_exact() {
        assert!(constant_time_eq(b"a:b", b"a:b"));
        assert!(!constant_time_eq(b"a:b", b"a:c"));
        assert!(!constant_time_eq(b"a:b", b"a:bc"));
    }
}
