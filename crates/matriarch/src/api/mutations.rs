//! Changes: `PATCH`/`PUT /config`, `POST`/`DELETE /restart` (in
//! [`super::restart`]), `/reload`,
//! `/reinitialize` and `/failsafe` (a primary's heartbeat). Every one has
//! passed [`super::auth::authorize`] before its body is read.

use axum::extract::State;
use axum::http::StatusCode;
use matriarch_dcs::Expected;
use matriarch_ha::{EngineRole, FailsafeRefusal};
use matriarch_model::{ClusterView, FailsafeHeartbeat, Record};
use matriarch_postgres::{PgRole, StopMode};
use serde::Deserialize;
use serde_json::{json, Value};
use tracing::{debug, info, warn};

use super::body::{parse_body, JsonBody};
use super::config_checks;
use super::response::{error, respond, Resp};
use super::state::{ApiState, SharedState};
use super::switchover::dcs_error;
use crate::config::{check_requested_config_keys, dynamic_config_from_json};

/// `POST /reinitialize` bodies, Patroni's keys (accepted; matriarch always
/// clones from the leader, and nothing runs that `force` would cancel).
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ReinitializeBody {
    #[serde(default)]
    #[allow(dead_code)]
    force: Option<bool>,
    #[serde(default)]
    #[allow(dead_code)]
    role: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    from_leader: Option<bool>,
}

/// `PATCH /config`: an RFC 7396 merge patch onto the `config` key.
pub(crate) async fn patch_config(State(state): SharedState, JsonBody(body): JsonBody) -> Resp {
    state.change_config(body, false).await
}

/// `PUT /config`: the whole `config` key.
pub(crate) async fn put_config(State(state): SharedState, JsonBody(body): JsonBody) -> Resp {
    state.change_config(body, true).await
}

/// `POST /restart`.
pub(crate) async fn restart(State(state): SharedState, JsonBody(body): JsonBody) -> Resp {
    super::restart::post_restart(state, body).await
}

/// `DELETE /restart`: cancels a scheduled restart.
pub(crate) async fn cancel_restart(State(state): SharedState) -> Resp {
    super::restart::delete_restart(&state)
}

/// `POST /reload`.
pub(crate) async fn reload(State(state): SharedState) -> Resp {
    state.reload_request().await
}

/// `POST /reinitialize`.
pub(crate) async fn reinitialize(State(state): SharedState, JsonBody(body): JsonBody) -> Resp {
    state.reinitialize(body).await
}

/// `POST /failsafe`.
pub(crate) async fn failsafe_heartbeat(
    State(state): SharedState,
    JsonBody(body): JsonBody,
) -> Resp {
    state.failsafe_heartbeat(body).await
}

/// Applies an RFC 7396 JSON merge patch to `target`: the one implementation,
/// used by `PATCH /config` and by `ctl edit-config`'s preview, so the preview
/// shows exactly what the server will write.
pub(crate) fn merge_patch(target: &mut Value, patch: &Value) {
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
    /// Validates and writes the `config` key: `patch` merged onto it, or
    /// replacing it when `replace`.
    async fn change_config(&self, patch: Value, replace: bool) -> Resp {
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
        // Unknown keys (Patroni's `slots`, `check_timeline`, ...) are kept:
        // the key is rewritten whole, and dropping them would lose them.
        let config = match dynamic_config_from_json("config", &new) {
            Ok(c) => c,
            Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
        };
        // Refused here rather than by every node later: a parameter matriarch
        // manages, one no configuration file can hold, one PostgreSQL cannot
        // start or replicate with, or more than a node can apply at once.
        let members = view.members.len();
        if let Err(refusal) = config_checks::check_parameters(
            &config.postgresql.parameters,
            &current.postgresql.parameters,
            members,
            self.pkglibdir.as_deref(),
        ) {
            return error(StatusCode::BAD_REQUEST, refusal.to_string());
        }
        if let Err(refusal) = config_checks::check_size(&config) {
            return error(StatusCode::BAD_REQUEST, refusal.to_string());
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

    async fn reload_request(&self) -> Resp {
        let _ = self.reload.try_send(());
        let _ops = self.ops.lock().await;
        match self.pg_reload.reload().await {
            Ok(()) => {
                self.callbacks.reloaded();
                respond(StatusCode::ACCEPTED, json!({"message": "reload scheduled"}))
            }
            Err(e) => error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("reload failed: {e}"),
            ),
        }
    }

    async fn reinitialize(&self, value: Value) -> Resp {
        if let Err(r) = parse_body::<ReinitializeBody>(value) {
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
        let data_dir = self.data_dir.clone();
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
    /// has authorized the request ([`super::auth::authorize`]).
    async fn failsafe_heartbeat(&self, value: Value) -> Resp {
        let Some(handle) = &self.failsafe else {
            return error(StatusCode::SERVICE_UNAVAILABLE, "failsafe is not available");
        };
        let heartbeat: FailsafeHeartbeat = match serde_json::from_value(value) {
            Ok(heartbeat) => heartbeat,
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("not a failsafe heartbeat: {e}"),
                )
            }
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
}
