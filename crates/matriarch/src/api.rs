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
//! primary's heartbeat while the DCS is unreachable; authenticated like every
//! change (the sender presents `restapi.authentication` or its client
//! certificate), so that nobody else can hold a replica back from a race.
//!
//! Exhaustion (see [`serve`]): connections are capped in total (a share of
//! the file limit, so that the HA loop and PostgreSQL keep theirs) and per
//! client address, and headers, bodies and TLS handshakes are read under
//! timeouts; bodies are bounded.

// Refusals are returned as the response itself (`Result<_, Response>`): they
// are built only on the error path of one request, so their size is no cost.
#![allow(clippy::result_large_err)]

use std::collections::{BTreeSet, HashMap};
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
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
    MemberState, Record, Role, SynchronousMode, Tags,
};
use matriarch_postgres::{
    DataDirectoryState, LocalState, PgController, PgRole, Postgres, ServerState, StopMode,
};
use serde::Deserialize;
use serde_json::{json, Value};
use tracing::{debug, info, warn};

use crate::config::{check_requested_config_keys, dynamic_config_from_json, IpRange};
use crate::dcs::AnyDcs;
use crate::secret::Password;

/// The largest request body accepted (413 beyond): a `/config` body is a
/// few kilobytes.
const MAX_BODY: usize = 64 * 1024;

/// How long a client may take to send a request's headers; also how long an
/// idle keep-alive connection is kept.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a client may take to send a request body (408 beyond).
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a TLS handshake may take.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The total connection cap when `restapi.max_connections` is not set (and
/// the file limit allows as many).
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;

/// The per-client connection cap when `restapi.max_connections_per_ip` is
/// not set.
pub const DEFAULT_MAX_CONNECTIONS_PER_IP: usize = 100;

/// How often a refused connection is logged at most.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

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
    /// The engine's word that PostgreSQL runs read-write under its lock,
    /// published the moment it promotes or before it demotes.
    writable: bool,
    /// The postmaster named in `postmaster.pid` is alive now.
    postmaster_alive: bool,
}

impl Node {
    fn pg_role(&self) -> Option<PgRole> {
        self.local.as_ref().and_then(LocalState::role)
    }

    fn running(&self) -> bool {
        self.pg_role().is_some()
    }

    /// Answered from the engine's latest word (not the cache refreshed on
    /// a timer) and from whether PostgreSQL is alive now: a fence that just
    /// killed the postmaster must not leave a moment of 200.
    fn is_primary(&self) -> bool {
        self.role == EngineRole::Leader && self.writable && self.postmaster_alive
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

    /// Bytes behind the leader, from the freshest of the engine's and the
    /// cache's observations of this server.
    fn lag(&self) -> Option<u64> {
        let leader = self.leader_optime()?;
        let cached = self.local.as_ref().and_then(|l| {
            [l.wal.received, l.wal.replayed, l.wal.flush]
                .into_iter()
                .flatten()
                .max()
        });
        let mine = self.wal_position.into_iter().chain(cached).max()?;
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

/// Whether the health check `path` (other than `/liveness`) passes for
/// `node`, as Patroni answers it; `None` if `path` is not one.
fn health_check(
    path: &str,
    query: &[(String, String)],
    node: &Node,
    me: &MemberName,
) -> Option<bool> {
    let in_sync = node.in_sync(me);
    let sync_standby =
        node.is_replica() && node.config.synchronous_mode == SynchronousMode::On && in_sync;
    let quorum_standby =
        node.is_replica() && node.config.synchronous_mode == SynchronousMode::Quorum && in_sync;
    let ok = match path {
        "/" | "/primary" | "/master" | "/read-write" => node.is_primary(),
        // No standby cluster support: never a standby leader.
        "/standby-leader" | "/standby_leader" => false,
        "/leader" => node.role == EngineRole::Leader && node.running(),
        "/replica" => {
            node.is_replica() && !node.tags.noloadbalance && replica_filters(query, node, true)
        }
        "/read-only" => node.is_primary() || node.is_replica(),
        "/synchronous" | "/sync" => sync_standby,
        "/read-only-sync" => node.is_primary() || sync_standby,
        "/quorum" => quorum_standby,
        "/read-only-quorum" => node.is_primary() || quorum_standby,
        "/asynchronous" | "/async" => {
            node.is_replica() && !in_sync && replica_filters(query, node, false)
        }
        "/health" => node.running(),
        "/readiness" => {
            node.is_primary()
                || (node.is_replica() && node.running() && replica_filters(query, node, false))
        }
        _ => return None,
    };
    Some(ok)
}

/// The query parameters of a replica check: `lag` (the bound on the bytes
/// behind the leader; ignored while the leader's position is unknown, as
/// Patroni does), `replication_state`, and, if `tags`, any other key as a
/// tag to match.
fn replica_filters(query: &[(String, String)], node: &Node, tags: bool) -> bool {
    let mut ok = true;
    for (key, value) in query {
        match key.as_str() {
            "lag" => match (parse_size(value), node.lag()) {
                (Some(max), Some(lag)) => ok &= lag <= max,
                (Some(_), None) => {}
                (None, _) => ok = false,
            },
            "replication_state" => {
                // Patroni's values: the WAL receiver streams, or not.
                let state = if node.local.as_ref().is_some_and(|l| l.receiving) {
                    "streaming"
                } else {
                    "in archive recovery"
                };
                ok &= state.eq_ignore_ascii_case(value);
            }
            "mode" => {}
            _ if tags => {
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
            _ => {}
        }
    }
    ok
}

/// Whether the postmaster that `data_dir/postmaster.pid` names is alive
/// (not a zombie): a cheap check of what PostgreSQL is now, between two
/// observations.
fn postmaster_alive(data_dir: &std::path::Path) -> bool {
    let Ok(text) = std::fs::read_to_string(data_dir.join("postmaster.pid")) else {
        return false;
    };
    let Some(pid) = text
        .lines()
        .next()
        .and_then(|l| l.trim().parse::<u32>().ok())
        .filter(|pid| *pid > 0)
    else {
        return false;
    };
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the command name, which may itself hold ") ".
    stat.rfind(')')
        .and_then(|i| stat[i + 1..].split_whitespace().next())
        .is_some_and(|state| state != "Z" && state != "X")
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
            writable: status.writable,
            postmaster_alive: postmaster_alive(&self.pg.config().data_dir),
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
        if path == "/liveness" {
            let config = self.config_in_force(node);
            let bound = config.ttl.max(config.loop_wait * 3) + config.retry_timeout * 2;
            return Some(node.status_age.is_some_and(|age| age <= bound));
        }
        health_check(path, query, node, &self.name)
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

/// A refusal after which the rest of the request is not read: the
/// connection is closed rather than kept alive.
fn closing(mut response: Resp) -> Resp {
    response.headers_mut().insert(
        hyper::header::CONNECTION,
        hyper::header::HeaderValue::from_static("close"),
    );
    response
}

/// Reads a JSON body of at most [`MAX_BODY`] bytes (413 beyond, before
/// reading when `Content-Length` says so) within [`BODY_READ_TIMEOUT`] (408).
async fn read_json(req: Request<Incoming>) -> Result<Value, Resp> {
    let declared = req
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|length| length > MAX_BODY as u64) {
        return Err(closing(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is larger than {MAX_BODY} bytes"),
        )));
    }
    let collected = tokio::time::timeout(
        BODY_READ_TIMEOUT,
        http_body_util::Limited::new(req.into_body(), MAX_BODY).collect(),
    )
    .await
    .map_err(|_| {
        closing(error(
            StatusCode::REQUEST_TIMEOUT,
            format!("the body did not arrive within {BODY_READ_TIMEOUT:?}"),
        ))
    })?;
    let body = collected
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                closing(error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("the body is larger than {MAX_BODY} bytes"),
                ))
            } else {
                closing(error(
                    StatusCode::BAD_REQUEST,
                    format!("cannot read the body: {e}"),
                ))
            }
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

/// Applies an RFC 7396 JSON merge patch to `target`: the one implementation,
/// used by `PATCH /config` and by `ctl edit-config`'s preview, so the preview
/// shows exactly what the server will write.
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
        if let Err(e) = check_requested_config_keys("config", &patch) {
            return error(StatusCode::BAD_REQUEST, e.to_string());
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
        // Unknown keys (Patroni's `slots`, `standby_cluster`, ...) are kept:
        // the key is rewritten whole, and dropping them would lose them.
        let config = match dynamic_config_from_json("config", &new) {
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
        // In synchronous mode only a synchronous standby can take over without
        // losing a commit: like Patroni, refuse a switchover to another at once
        // instead of writing a request the leader will never carry out.
        let synchronous = matches!(&view.config,
            Some(Ok(config)) if config.value.synchronous_mode != SynchronousMode::Off);
        let sync_standbys: BTreeSet<MemberName> = match &view.sync {
            Some(Ok(sync)) => sync.value.sync_standbys.clone(),
            _ => BTreeSet::new(),
        };
        if synchronous && !failover {
            match &candidate {
                Some(candidate) if !sync_standbys.contains(candidate) => {
                    return error(
                        StatusCode::PRECONDITION_FAILED,
                        format!(
                            "candidate {candidate} is not a synchronous standby (candidate name does not match with sync_standby)"
                        ),
                    );
                }
                None if sync_standbys.is_empty() => {
                    return error(
                        StatusCode::PRECONDITION_FAILED,
                        "no good candidates: synchronous mode without a synchronous standby",
                    );
                }
                _ => {}
            }
        }
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
        // Only this cluster's data directory is ever emptied: PG_VERSION and
        // the DCS `initialize` system identifier must match, checked before
        // stopping anything and again right before removing.
        let expected = match node.view.as_ref().and_then(|v| v.initialize.as_ref()) {
            Some(Ok(entry)) => match entry.value {
                matriarch_model::Initialize::Done(id) => id,
                matriarch_model::Initialize::InProgress => {
                    return error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "the cluster is still initializing: no system identifier to check the data directory against",
                    )
                }
            },
            _ => {
                return error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the cluster's system identifier is unknown: refusing to remove the data directory",
                )
            }
        };
        let data_dir = self.pg.config().data_dir.clone();
        let op = matriarch_postgres::Operation::CloneReplica;
        if let Err(e) = matriarch_postgres::check_cluster_data_dir(op, &data_dir, Some(expected)) {
            warn!(cluster = %self.scope, member = %self.name, error = %e, "reinitialize refused");
            return error(StatusCode::SERVICE_UNAVAILABLE, e.to_string());
        }
        let _ops = self.ops.lock().await;
        if let Err(e) = self.pg.stop(StopMode::Immediate).await {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("cannot stop PostgreSQL: {e}"),
            );
        }
        if let Err(e) = matriarch_postgres::empty_cluster_data_dir(op, &data_dir, Some(expected)) {
            warn!(cluster = %self.scope, member = %self.name, error = %e, "reinitialize refused");
            return error(StatusCode::SERVICE_UNAVAILABLE, e.to_string());
        }
        warn!(cluster = %self.scope, member = %self.name, "data directory removed for reinitialization: the engine clones it again");
        respond(StatusCode::OK, json!({"message": "reinitialize started"}))
    }

    /// `POST /failsafe`: a primary cut off from the DCS (failsafe mode)
    /// asks this member not to race for the lock. 200 only when failsafe
    /// mode is on and this node runs as a replica of the sender (from then
    /// on it does not race for a ttl); 409 when it is not a replica of it;
    /// 503 when failsafe mode is off or the engine is not wired. The caller
    /// has authorized the request ([`ApiState::authorize`]).
    async fn failsafe_heartbeat(&self, req: Request<Incoming>) -> Resp {
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
                        "/failsafe" => self.failsafe_members(&node),
                        "/metrics" => text(
                            StatusCode::OK,
                            self.metrics(&node),
                            "text/plain; version=0.0.4",
                        ),
                        _ => error(StatusCode::NOT_FOUND, format!("no such endpoint: {path}")),
                    }
                };
                // Patroni answers both with the status alone.
                if method == Method::HEAD || method == Method::OPTIONS {
                    *response.body_mut() = Full::new(Bytes::new());
                }
                response
            }
            Method::POST | Method::PATCH | Method::PUT | Method::DELETE => {
                if method == Method::POST && path == "/failsafe" {
                    // Authenticated before the body is read: an anonymous
                    // client holds nothing open.
                    if let Err(r) = self.authorize(&req, peer.ip(), client_cert) {
                        if let Some(suppressed) = REFUSALS.due() {
                            warn!(cluster = %self.scope, member = %self.name, %method, %path, %peer, status = r.status().as_u16(), suppressed, "refused a failsafe heartbeat");
                        }
                        return r;
                    }
                    return self.failsafe_heartbeat(req).await;
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
                    if let Some(suppressed) = REFUSALS.due() {
                        warn!(cluster = %self.scope, member = %self.name, %method, %path, %peer, status = r.status().as_u16(), suppressed, "refused a change request");
                    }
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

/// Caps on the connections the API serves at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// In total.
    pub total: usize,
    /// Per client address.
    pub per_ip: usize,
}

impl ConnectionLimits {
    /// The caps for a process whose soft file limit is `nofile`: the total
    /// is `total` (default [`DEFAULT_MAX_CONNECTIONS`]) but never more than a
    /// quarter of the files, the rest being the HA loop's, the DCS client's
    /// and PostgreSQL's; the per-client cap is `per_ip` (default
    /// [`DEFAULT_MAX_CONNECTIONS_PER_IP`]), never more than the total.
    pub fn new(nofile: u64, total: Option<usize>, per_ip: Option<usize>) -> Self {
        let share = usize::try_from(nofile / 4).unwrap_or(usize::MAX).max(1);
        let total = total.unwrap_or(DEFAULT_MAX_CONNECTIONS).clamp(1, share);
        let per_ip = per_ip
            .unwrap_or(DEFAULT_MAX_CONNECTIONS_PER_IP)
            .clamp(1, total);
        ConnectionLimits { total, per_ip }
    }
}

/// Why `RLIMIT_NOFILE` could not be read or raised.
#[derive(Debug, thiserror::Error)]
pub enum FileLimitError {
    /// getrlimit(2) failed.
    #[error("getrlimit(RLIMIT_NOFILE): {0}")]
    Get(std::io::Error),
    /// setrlimit(2) failed; `current` stays in force.
    #[error("setrlimit(RLIMIT_NOFILE) from {current} to {wanted}: {source}")]
    Set {
        /// The soft limit in force.
        current: u64,
        /// The limit asked for.
        wanted: u64,
        /// The system's error.
        source: std::io::Error,
    },
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (a service manager
/// often starts a daemon with 1,024) and returns the soft limit in force.
pub fn raise_file_limit() -> Result<u64, FileLimitError> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit(2) writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(FileLimitError::Get(std::io::Error::last_os_error()));
    }
    if limit.rlim_cur >= limit.rlim_max {
        return Ok(limit.rlim_cur);
    }
    let current = limit.rlim_cur;
    let wanted = limit.rlim_max;
    limit.rlim_cur = wanted;
    // SAFETY: setrlimit(2) reads the struct we own.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        return Err(FileLimitError::Set {
            current,
            wanted,
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(wanted)
}

/// Lets one log line through per [`REFUSAL_LOG_INTERVAL`], so that a flood
/// of refused requests or connections cannot flood the log.
struct Throttle {
    /// Events since the last line let through.
    since: AtomicU64,
    /// When that was.
    last: Mutex<Option<Instant>>,
}

impl Throttle {
    const fn new() -> Self {
        Throttle {
            since: AtomicU64::new(0),
            last: Mutex::new(None),
        }
    }

    /// Counts one event; `Some(events left unlogged before it)` when it is
    /// to be logged.
    fn due(&self) -> Option<u64> {
        let since = self.since.fetch_add(1, Ordering::Relaxed);
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_some_and(|at| at.elapsed() < REFUSAL_LOG_INTERVAL) {
            return None;
        }
        *last = Some(Instant::now());
        self.since.store(0, Ordering::Relaxed);
        Some(since)
    }
}

/// Refused change requests (one log line per interval).
static REFUSALS: Throttle = Throttle::new();

/// Why a connection was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Refusal {
    /// The total cap is reached.
    Total,
    /// The client's cap is reached.
    PerIp,
}

/// Counts the connections being served, in total and per client address.
struct ConnectionGate {
    limits: ConnectionLimits,
    total: Arc<tokio::sync::Semaphore>,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    /// Refused connections (one log line per interval).
    refusals: Throttle,
}

/// One admitted connection: gives its places back when dropped.
struct ConnectionPermit {
    _total: tokio::sync::OwnedSemaphorePermit,
    gate: Arc<ConnectionGate>,
    ip: IpAddr,
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        let mut per_ip = self.gate.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = per_ip.get_mut(&self.ip) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                per_ip.remove(&self.ip);
            }
        }
    }
}

impl ConnectionGate {
    fn new(limits: ConnectionLimits) -> Self {
        ConnectionGate {
            limits,
            total: Arc::new(tokio::sync::Semaphore::new(limits.total)),
            per_ip: Mutex::new(HashMap::new()),
            refusals: Throttle::new(),
        }
    }

    /// Admits a connection from `ip` if both caps allow it.
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<ConnectionPermit, Refusal> {
        // An IPv4 client on a dual-stack socket counts as itself.
        let ip = ip.to_canonical();
        let mut per_ip = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        let count = per_ip.get(&ip).copied().unwrap_or(0);
        if count >= self.limits.per_ip {
            return Err(Refusal::PerIp);
        }
        let total = Arc::clone(&self.total)
            .try_acquire_owned()
            .map_err(|_| Refusal::Total)?;
        per_ip.insert(ip, count + 1);
        Ok(ConnectionPermit {
            _total: total,
            gate: Arc::clone(self),
            ip,
        })
    }

    /// Logs refusals, at most once per [`REFUSAL_LOG_INTERVAL`].
    fn refused(&self, peer: SocketAddr, why: Refusal) {
        let Some(suppressed) = self.refusals.due() else {
            return;
        };
        let cap = match why {
            Refusal::Total => "restapi.max_connections",
            Refusal::PerIp => "restapi.max_connections_per_ip",
        };
        warn!(%peer, cap, total = self.limits.total, per_ip = self.limits.per_ip, suppressed, "REST API connection refused: a cap is reached");
    }
}

/// The listen backlog asked for (the kernel caps it at `somaxconn`): a
/// burst of connections waits in it rather than having a health check's SYN
/// dropped, which costs the check a 1 s retransmission.
const LISTEN_BACKLOG: u32 = 4096;

/// Binds the REST API's listener, with a deep backlog.
pub fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // As `TcpListener::bind` does: a restarted agent rebinds at once.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Accepts connections on `listener` and serves them until the task is
/// aborted. A connection over a cap of `limits` is closed at once, before
/// anything is read; headers, bodies and TLS handshakes are read under
/// timeouts, so that a silent client gives its place back.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<ApiState>,
    tls: Option<Tls>,
    limits: ConnectionLimits,
) {
    let gate = Arc::new(ConnectionGate::new(limits));
    info!(
        max_connections = limits.total,
        max_connections_per_ip = limits.per_ip,
        "REST API connection caps"
    );
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                warn!(error = %e, "REST API accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let permit = match gate.admit(peer.ip()) {
            Ok(permit) => permit,
            Err(why) => {
                gate.refused(peer, why);
                drop(stream);
                continue;
            }
        };
        let state = Arc::clone(&state);
        let tls = tls.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .keep_alive(true);
            match tls {
                Some((acceptor, _)) => {
                    let accepted =
                        tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await;
                    let Ok(Ok(stream)) = accepted else {
                        debug!(%peer, "TLS handshake failed or timed out");
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
        // RFC 7396 Appendix A, in order: (target, patch, result).
        let cases = [
            (json!({"a": "b"}), json!({"a": "c"}), json!({"a": "c"})),
            (
                json!({"a": "b"}),
                json!({"b": "c"}),
                json!({"a": "b", "b": "c"}),
            ),
            (json!({"a": "b"}), json!({"a": null}), json!({})),
            (
                json!({"a": "b", "b": "c"}),
                json!({"a": null}),
                json!({"b": "c"}),
            ),
            (json!({"a": ["b"]}), json!({"a": "c"}), json!({"a": "c"})),
            (json!({"a": "c"}), json!({"a": ["b"]}), json!({"a": ["b"]})),
            (
                json!({"a": {"b": "c"}}),
                json!({"a": {"b": "d", "c": null}}),
                json!({"a": {"b": "d"}}),
            ),
            (
                json!({"a": [{"b": "c"}]}),
                json!({"a": [1]}),
                json!({"a": [1]}),
            ),
            (json!(["a", "b"]), json!(["c", "d"]), json!(["c", "d"])),
            (json!({"a": "b"}), json!(["c"]), json!(["c"])),
            (json!({"a": "foo"}), json!(null), json!(null)),
            (json!({"a": "foo"}), json!("bar"), json!("bar")),
            (
                json!({"e": null}),
                json!({"a": 1}),
                json!({"e": null, "a": 1}),
            ),
            (
                json!([1, 2]),
                json!({"a": "b", "c": null}),
                json!({"a": "b"}),
            ),
            (
                json!({}),
                json!({"a": {"bb": {"ccc": null}}}),
                json!({"a": {"bb": {}}}),
            ),
        ];
        for (target, patch, expected) in cases {
            let mut merged = target.clone();
            merge_patch(&mut merged, &patch);
            assert_eq!(merged, expected, "{target} + {patch}");
        }
    }

    #[test]
    fn connection_caps_keep_three_quarters_of_the_files() {
        let limits = ConnectionLimits::new(1024, None, None);
        assert_eq!((limits.total, limits.per_ip), (256, 100));
        let limits = ConnectionLimits::new(1 << 20, None, None);
        assert_eq!(limits.total, DEFAULT_MAX_CONNECTIONS);
        let limits = ConnectionLimits::new(1 << 20, Some(500_000), Some(1_000_000));
        assert_eq!((limits.total, limits.per_ip), (1 << 18, 1 << 18));
        let limits = ConnectionLimits::new(u64::MAX, Some(50), Some(10));
        assert_eq!((limits.total, limits.per_ip), (50, 10));
        assert_eq!(ConnectionLimits::new(2, None, None).total, 1);
    }

    #[test]
    fn per_client_and_total_caps_refuse_and_give_places_back() {
        let gate = Arc::new(ConnectionGate::new(ConnectionLimits {
            total: 3,
            per_ip: 2,
        }));
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let b: IpAddr = "::ffff:127.0.0.3".parse().unwrap();
        let first = gate.admit(a).unwrap();
        let _second = gate.admit(a).unwrap();
        assert_eq!(gate.admit(a).err(), Some(Refusal::PerIp));
        let _third = gate.admit(b).unwrap();
        assert_eq!(
            gate.admit("127.0.0.4".parse().unwrap()).err(),
            Some(Refusal::Total)
        );
        drop(first);
        // The mapped and the plain address are one client.
        let _fourth = gate.admit("127.0.0.3".parse().unwrap()).unwrap();
        assert_eq!(gate.admit(b).err(), Some(Refusal::PerIp));
        assert_eq!(
            gate.admit("127.0.0.5".parse().unwrap()).err(),
            Some(Refusal::Total)
        );
    }

    use matriarch_model::{LeaderStatus, SyncState};

    /// A node as the health checks see it: `role` under the engine,
    /// PostgreSQL running as `pg` (or not), everything else quiet.
    fn health_node(role: EngineRole, pg: Option<PgRole>) -> Node {
        let mut local = LocalState::empty();
        if let Some(pg) = pg {
            local.server = ServerState::Running(pg);
        }
        Node {
            role,
            leader: None,
            local: Some(local),
            view: Some(ClusterView::default()),
            tags: Tags::default(),
            paused: false,
            dcs_reachable: true,
            loops: 1,
            status_age: Some(Duration::from_millis(1)),
            timeline: None,
            wal_position: None,
            config: ClusterConfig::default(),
            last_failover_loss: None,
            failsafe_active: false,
            writable: role == EngineRole::Leader && pg == Some(PgRole::Primary),
            postmaster_alive: pg.is_some(),
        }
    }

    fn me() -> MemberName {
        MemberName::new("me").unwrap()
    }

    fn check(path_and_query: &str, node: &Node) -> Option<bool> {
        let (path, query) = match path_and_query.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (path_and_query, None),
        };
        health_check(path, &query_pairs(query), node, &me())
    }

    fn listed_in_sync(node: &mut Node, mode: SynchronousMode) {
        node.config.synchronous_mode = mode;
        let sync: SyncState =
            serde_json::from_value(json!({"leader": "other", "sync_standby": "me"})).unwrap();
        node.view = Some(ClusterView {
            sync: Some(Ok(matriarch_model::Versioned {
                value: sync,
                version: matriarch_model::Version(1),
            })),
            ..ClusterView::default()
        });
    }

    #[test]
    fn replication_state_is_the_receivers_not_a_tag() {
        let mut replica = health_node(EngineRole::Replica, Some(PgRole::Replica));
        if let Some(local) = replica.local.as_mut() {
            local.receiving = true;
        }
        assert_eq!(
            check("/replica?replication_state=streaming", &replica),
            Some(true)
        );
        assert_eq!(
            check("/replica?replication_state=stopped", &replica),
            Some(false)
        );
        if let Some(local) = replica.local.as_mut() {
            local.receiving = false;
        }
        assert_eq!(
            check("/replica?replication_state=streaming", &replica),
            Some(false)
        );
        // Other keys are still tags.
        assert_eq!(check("/replica?nofailover=false", &replica), Some(true));
        assert_eq!(check("/replica?dc=east", &replica), Some(false));
    }

    #[test]
    fn lag_bounds_asynchronous_and_readiness() {
        let mut replica = health_node(EngineRole::Replica, Some(PgRole::Replica));
        replica.wal_position = Some(Lsn(1_000));
        let status: LeaderStatus = LeaderStatus {
            optime: Lsn(1_000 + 2 * 1024 * 1024),
            ..LeaderStatus::default()
        };
        replica.view = Some(ClusterView {
            status: Some(Ok(matriarch_model::Versioned {
                value: status,
                version: matriarch_model::Version(1),
            })),
            ..ClusterView::default()
        });
        for path in ["/asynchronous", "/async", "/readiness", "/replica"] {
            assert_eq!(
                check(&format!("{path}?lag=1MB"), &replica),
                Some(false),
                "{path}"
            );
            assert_eq!(
                check(&format!("{path}?lag=3MB"), &replica),
                Some(true),
                "{path}"
            );
            assert_eq!(
                check(&format!("{path}?lag=nonsense"), &replica),
                Some(false),
                "{path}"
            );
        }
    }

    #[test]
    fn sync_and_quorum_standbys_follow_the_mode() {
        let primary = health_node(EngineRole::Leader, Some(PgRole::Primary));
        let mut sync = health_node(EngineRole::Replica, Some(PgRole::Replica));
        listed_in_sync(&mut sync, SynchronousMode::On);
        let mut quorum = health_node(EngineRole::Replica, Some(PgRole::Replica));
        listed_in_sync(&mut quorum, SynchronousMode::Quorum);
        let asynchronous = health_node(EngineRole::Replica, Some(PgRole::Replica));
        let table = [
            // path, primary, sync standby, quorum standby, async replica
            ("/sync", false, true, false, false),
            ("/read-only-sync", true, true, false, false),
            ("/quorum", false, false, true, false),
            ("/read-only-quorum", true, false, true, false),
            ("/asynchronous", false, false, false, true),
            ("/standby-leader", false, false, false, false),
            ("/standby_leader", false, false, false, false),
        ];
        for (path, p, s, q, a) in table {
            assert_eq!(check(path, &primary), Some(p), "{path} on the primary");
            assert_eq!(check(path, &sync), Some(s), "{path} on a sync standby");
            assert_eq!(check(path, &quorum), Some(q), "{path} on a quorum standby");
            assert_eq!(
                check(path, &asynchronous),
                Some(a),
                "{path} on an async replica"
            );
        }
    }

    #[test]
    fn primary_answers_from_the_engine_and_a_live_postmaster() {
        // The cache still says replica, but the engine has promoted.
        let mut promoted = health_node(EngineRole::Leader, Some(PgRole::Replica));
        promoted.writable = true;
        promoted.postmaster_alive = true;
        assert_eq!(check("/primary", &promoted), Some(true));
        // The cache still says primary, but the engine is demoting.
        let mut demoting = health_node(EngineRole::Leader, Some(PgRole::Primary));
        demoting.writable = false;
        for path in ["/", "/primary", "/master", "/read-write"] {
            assert_eq!(check(path, &demoting), Some(false), "{path}");
        }
        // Everything says primary but the fence just killed the postmaster.
        let mut fenced = health_node(EngineRole::Leader, Some(PgRole::Primary));
        fenced.postmaster_alive = false;
        for path in ["/", "/primary", "/master", "/read-write"] {
            assert_eq!(check(path, &fenced), Some(false), "{path}");
        }
    }

    #[test]
    fn postmaster_liveness_reads_the_pid_file() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!postmaster_alive(dir.path()), "no pid file");
        std::fs::write(
            dir.path().join("postmaster.pid"),
            format!("{}\n/data\n", std::process::id()),
        )
        .unwrap();
        assert!(postmaster_alive(dir.path()), "this process is alive");
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let gone = child.id();
        child.wait().unwrap();
        std::fs::write(dir.path().join("postmaster.pid"), format!("{gone}\n")).unwrap();
        assert!(!postmaster_alive(dir.path()), "a reaped process is dead");
        std::fs::write(dir.path().join("postmaster.pid"), "garbage\n").unwrap();
        assert!(!postmaster_alive(dir.path()), "an unreadable pid");
    }

    #[test]
    fn comparison_is_exact() {
        assert!(constant_time_eq(b"a:b", b"a:b"));
        assert!(!constant_time_eq(b"a:b", b"a:c"));
        assert!(!constant_time_eq(b"a:b", b"a:bc"));
    }
}
