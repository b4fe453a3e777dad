//! `POST /backup`: a pgBackRest backup of this member's PostgreSQL, taken
//! only while it leads (pgBackRest backs up the primary it runs beside).

use axum::extract::State;
use axum::http::StatusCode;
use matriarch_ha::EngineRole;
use matriarch_postgres::BackupType;
use serde_json::{json, Value};
use tracing::{info, warn};

use super::body::JsonBody;
use super::response::{error, respond, Resp};
use super::state::SharedState;

/// `POST /backup` with `{"type": "full"|"incr"|"diff"}` (`incr` when absent).
pub(crate) async fn backup(State(state): SharedState, JsonBody(body): JsonBody) -> Resp {
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
            format!(
                "{} is not the leader: backups are taken on the primary",
                state.name
            ),
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
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("backup failed: {reason}"),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use axum::http::Method;
    use matriarch_postgres::{Operation, PgRole, PostgresError};

    use async_trait::async_trait;

    use super::*;
    use crate::api::pg_ops::BackupRunner;
    use crate::api::router_tests::{FakePostgres, Harness};

    /// Records the backups asked for.
    #[derive(Default)]
    struct Recorder(Mutex<Vec<BackupType>>);

    #[async_trait]
    impl BackupRunner for Recorder {
        async fn backup(&self, kind: BackupType) -> Result<String, PostgresError> {
            self.0.lock().expect("lock").push(kind);
            Ok("done".into())
        }
    }

    /// A repository whose pgbackrest is not installed.
    struct NoPgBackRest;

    #[async_trait]
    impl BackupRunner for NoPgBackRest {
        async fn backup(&self, _: BackupType) -> Result<String, PostgresError> {
            Err(PostgresError::MissingProgram {
                operation: Operation::Backup,
                program: "pgbackrest".into(),
                path: "/usr/bin/pgbackrest".into(),
            })
        }
    }

    fn harness(role: EngineRole, pg: PgRole, runner: &Arc<Recorder>) -> Harness {
        let runner = Arc::clone(runner) as Arc<dyn BackupRunner>;
        Harness::with(role, FakePostgres::running(pg), |state| {
            state.backup = Some(runner);
        })
    }

    #[tokio::test]
    async fn the_leader_takes_the_backup_type_asked_for() {
        let runner = Arc::new(Recorder::default());
        let leader = harness(EngineRole::Leader, PgRole::Primary, &runner);
        let (status, _, _) = leader
            .call(Method::POST, "/backup", r#"{"type": "full"}"#, true)
            .await;
        assert_eq!(status, StatusCode::OK);
        let (status, _, _) = leader.call(Method::POST, "/backup", "", true).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            *runner.0.lock().expect("lock"),
            [BackupType::Full, BackupType::Incr]
        );
    }

    #[tokio::test]
    async fn a_failed_backup_is_a_500_that_says_why() {
        let runner = Arc::new(NoPgBackRest) as Arc<dyn BackupRunner>;
        let leader = Harness::with(
            EngineRole::Leader,
            FakePostgres::running(PgRole::Primary),
            |state| state.backup = Some(runner),
        );
        let (status, body, _) = leader.call(Method::POST, "/backup", "{}", true).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        let text = body.to_string();
        assert!(
            text.contains("backup failed")
                && text.contains("pgbackrest not found at /usr/bin/pgbackrest"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn refused_without_credentials_on_a_replica_or_for_an_unknown_type() {
        let runner = Arc::new(Recorder::default());
        let leader = harness(EngineRole::Leader, PgRole::Primary, &runner);
        let (status, _, _) = leader.call(Method::POST, "/backup", "{}", false).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let (status, _, _) = leader
            .call(Method::POST, "/backup", r#"{"type": "weekly"}"#, true)
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let replica = harness(EngineRole::Replica, PgRole::Replica, &runner);
        let (status, _, _) = replica.call(Method::POST, "/backup", "{}", true).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(runner.0.lock().expect("lock").is_empty());
        let none = Harness::new(EngineRole::Leader, PgRole::Primary);
        let (status, _, _) = none.call(Method::POST, "/backup", "{}", true).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    }
}
