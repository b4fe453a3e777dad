//! What the API asks of PostgreSQL beyond [`matriarch_postgres::Postgres`]: a reload
//! (`POST /reload`) and a pgBackRest backup (`POST /backup`), as traits so
//! that the API's tests can stand in for [`PgController`].

use async_trait::async_trait;
use matriarch_postgres::{BackupType, PgController, PostgresError};

/// Reloads PostgreSQL's configuration (`POST /reload`): the one operation
/// the API needs that [`matriarch_postgres::Postgres`] does not have.
#[async_trait]
pub(crate) trait ReloadPostgres: Send + Sync {
    /// Rewrites the managed configuration file and reloads the server.
    async fn reload(&self) -> Result<(), PostgresError>;
}

#[async_trait]
impl ReloadPostgres for PgController {
    async fn reload(&self) -> Result<(), PostgresError> {
        PgController::reload(self).await
    }
}

/// Takes backups; [`PgController`] with a pgBackRest repository.
#[async_trait]
pub(crate) trait BackupRunner: Send + Sync {
    /// Runs `pgbackrest backup --type=<kind>`; its console output, or why it failed.
    async fn backup(&self, kind: BackupType) -> Result<String, PostgresError>;
}

#[async_trait]
impl BackupRunner for PgController {
    async fn backup(&self, kind: BackupType) -> Result<String, PostgresError> {
        PgController::backup(self, kind).await
    }
}
