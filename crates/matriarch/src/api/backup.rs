//! `POST /backup`: a pgBackRest backup of this member's PostgreSQL, taken
//! only while it leads (pgBackRest backs up the primary it runs beside).

use std::sync::Arc;

use async_trait::async_trait;
use axum::extract::State;
use axum::http::StatusCode;
use matriarch_ha::EngineRole;
use matriarch_postgres::{BackupType, PgController};
use serde_json::{json, Value};
use tracing::{info, warn};

use super::body::JsonBody;
use super::{error, respond, ApiState, Resp};

/// Takes backups; [`PgController`] with a pgBackRest repository.
#[async_trait]
pub(crate) trait BackupRunner: Send + Sync {
    /// Runs `pgbackrest backup --type=<kind>`; its console output, or why it failed.
    async fn backup(&self, kind: BackupType) -> Result<String, String>;
}

#[async_trait]
impl BackupRunner for PgController {
    async fn backup(&self, kind: BackupType) -> Result<String, String> {
        PgController::backup(self, kind)
            .await
            .map_err(|e| e.to_string())
    }
}

/// `POST /backup` with `{"type": "full"|"incr"|"diff"}` (`incr` when absent).
pub(crate) async fn backup(State(state): State<Arc<ApiState>>, JsonBody(body): JsonBody) -> Resp {
    let Some(runner) = state.backup.clone() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no pgBackRest repository is configured (the pgbackrest section)",
        );
    };
    let kind = match body.get("type") {
        None | Some(Value::Null) => BackupType::Incr,
        Some(Value::String(text)) => match BackupType::parse(text) {
            Some(kind) => kind,
            None => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("type {text:?} is not full, incr or diff"),
                )
            }
        },
        Some(_) => return error(StatusCode::BAD_REQUEST, "type must be a string"),
    };
    if state.status.get().role != EngineRole::Leader {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{} is not the leader: backups are taken on the primary", state.name),
        );
    }
    info!(member = %state.name, kind = kind.as_str(), "backup requested");
    match runner.backup(kind).await {
        Ok(output) => {
            info!(member = %state.name, kind = kind.as_str(), "backup done");
            respond(
                StatusCode::OK,
                json!({"message": format!("{} backup done", kind.as_str()), "output": output}),
            )
        }
        Err(reason) => {
            warn!(member = %state.name, kind = kind.as_str(), %reason, "backup failed");
            error(StatusCode::INTERNAL_SERVER_ERROR, format!("backup failed: {reason}"))
        }
    }
}
