//! `POST /restart` and `DELETE /restart` as Patroni's: the request's
//! conditions (`role`, `postgres_version`, `restart_pending`), its
//! `timeout`, and a restart scheduled for later (`schedule`), kept by this
//! node until it is due, cancelled, or the node stops.

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use chrono::Utc;
use serde_json::{json, Value};
use tracing::{info, warn};

use super::response::{error, respond, text, Resp};
use super::restart_request::{parse_request, postgres_version_to_int, RestartRequest};
use super::state::ApiState;

/// How long an immediate restart may take when the request names no
/// `timeout` (the engine bounds each step itself).
const DEFAULT_RESTART_TIMEOUT: Duration = Duration::from_secs(300);

/// A plain-text answer, as Patroni writes these.
fn plain(status: StatusCode, message: impl Into<String>) -> Resp {
    text(status, message.into(), "text/plain; charset=utf-8")
}

/// `POST /restart`.
pub(crate) async fn post_restart(state: Arc<ApiState>, body: Value) -> Resp {
    let request = match parse_request(&body, Utc::now()) {
        Ok(request) => request,
        Err((status, message)) => return plain(status, message),
    };
    let node = state.node();
    if request.schedule.is_some() {
        if state.config_in_force(&node).pause || node.paused {
            return plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Can't schedule restart in the paused state",
            );
        }
        let Some(generation) = state.scheduled_restart.put(request.clone()) else {
            return plain(StatusCode::CONFLICT, "Another restart is already scheduled");
        };
        info!(cluster = %state.scope, member = %state.name, request = %request.as_json(), "restart scheduled");
        tokio::spawn(run_when_due(Arc::clone(&state), generation, request));
        return plain(StatusCode::ACCEPTED, "Restart scheduled");
    }
    restart_now(&state, &request).await
}

/// `DELETE /restart`.
pub(crate) fn delete_restart(state: &ApiState) -> Resp {
    if state.scheduled_restart.cancel() {
        info!(cluster = %state.scope, member = %state.name, "scheduled restart deleted");
        plain(StatusCode::OK, "scheduled restart deleted")
    } else {
        plain(StatusCode::NOT_FOUND, "no restarts are scheduled")
    }
}

/// Why `request`'s conditions do not hold on this node now (Patroni's
/// `restart_matches`), or `None` when they do.
fn unmet_condition(state: &ApiState, request: &RestartRequest) -> Option<&'static str> {
    let node = state.node();
    if let Some(role) = &request.role {
        let actual = match node.patroni_role() {
            "uninitialized" => "",
            role => role,
        };
        if role != actual {
            return Some("host role mismatch");
        }
    }
    if let Some(wanted) = &request.postgres_version {
        let running = node.local.as_ref().and_then(|l| l.server_version_num);
        match (postgres_version_to_int(wanted), running) {
            (Ok(wanted), Some(running)) if wanted <= running => {
                return Some("postgres version mismatch")
            }
            (Ok(_), Some(_)) => {}
            // Unknown version: restarting could be for nothing; not done.
            _ => return Some("postgres version mismatch"),
        }
    }
    if request.restart_pending && state.parameters.pending().is_empty() {
        return Some("pending restart flag is not set");
    }
    None
}

async fn restart_now(state: &ApiState, request: &RestartRequest) -> Resp {
    if let Some(reason) = unmet_condition(state, request) {
        info!(cluster = %state.scope, member = %state.name, reason, "not proceeding with the restart");
        return plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "restart conditions are not satisfied",
        );
    }
    // Through the engine: only it knows whether this member may start a
    // writable primary (lock held, fence armed), and nothing else it does
    // (a demotion) can wait behind the restart.
    let Some(handle) = &state.restart else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "restart failed: the HA engine is not wired to the REST API",
        );
    };
    let timeout = request.timeout.unwrap_or(DEFAULT_RESTART_TIMEOUT);
    let _on_restart = state.callbacks.restart_in_progress();
    match handle.restart(timeout).await {
        Ok(done) => respond(
            StatusCode::OK,
            json!({"message": format!("restarted successfully ({done})")}),
        ),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

/// Sleeps until `request` is due, then restarts if it is still scheduled
/// and its conditions hold.
async fn run_when_due(state: Arc<ApiState>, generation: u64, request: RestartRequest) {
    if let Some(at) = request.schedule {
        let wait = (at.with_timezone(&Utc) - Utc::now())
            .to_std()
            .unwrap_or_default();
        tokio::time::sleep(wait).await;
    }
    let Some(request) = state.scheduled_restart.take(generation) else {
        return;
    };
    let response = restart_now(&state, &request).await;
    if response.status().is_success() {
        info!(cluster = %state.scope, member = %state.name, "scheduled restart done");
    } else {
        warn!(cluster = %state.scope, member = %state.name, status = %response.status(), "scheduled restart not done");
    }
}

/// `scheduled_restart` for `/patroni`, as Patroni shows it.
pub(crate) fn scheduled_restart_json(state: &ApiState) -> Option<Value> {
    state.scheduled_restart.get().map(|r| r.as_json())
}
