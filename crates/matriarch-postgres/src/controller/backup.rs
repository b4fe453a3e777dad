//! pgBackRest on the local server: its configuration file (mode 0600, it
//! holds the repository's keys), `stanza-create`, `backup`, `check` and
//! `info`, run as the PostgreSQL OS user like `archive_command` runs it.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use super::files;
use super::process::Finished;
use super::PgController;
use crate::error::{Operation, PostgresError};
use crate::replica_method::{BackupType, PgBackRestConfig};

/// How long `stanza-create`, `check` and `info` may take.
const SHORT_COMMAND: Duration = Duration::from_secs(300);
/// A backup's bound: pgBackRest's own `db-timeout` and `protocol-timeout`
/// (30 minutes by default) catch a hung one; this only guards against a
/// process that never exits.
const BACKUP_LIMIT: Duration = Duration::from_secs(7 * 24 * 3600);

impl PgController {
    fn backrest(&self, op: Operation) -> Result<&PgBackRestConfig, PostgresError> {
        self.config
            .pgbackrest
            .as_ref()
            .ok_or_else(|| PostgresError::InvalidConfig {
                reason: format!("cannot {op}: no pgBackRest repository is configured"),
            })
    }

    /// Writes pgBackRest's configuration file for this server and makes its
    /// log, lock and spool directories (owned by the OS user; the file mode
    /// 0600). Called at start and before each pgBackRest command.
    pub fn write_pgbackrest_config(&self, op: Operation) -> Result<(), PostgresError> {
        let backrest = self.backrest(op)?;
        let io = |context: String| {
            move |source| PostgresError::Io {
                operation: op,
                context,
                source,
            }
        };
        for dir in [
            backrest.directory.clone(),
            backrest.directory.join("log"),
            backrest.directory.join("lock"),
            backrest.directory.join("spool"),
        ] {
            std::fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
                .map_err(io(format!("chmod 0700 {}", dir.display())))?;
            files::chown(op, &dir, &self.runner.user)?;
        }
        let text = backrest.render(
            self.data_dir(),
            self.config.port,
            &self.config.socket_dir,
            &self.config.superuser.username,
        );
        files::write_file(op, &backrest.config_file(), &text, 0o600, &self.runner.user)
    }

    /// `pgbackrest --config --stanza <args>` as the OS user, within `limit`.
    async fn pgbackrest(&self, args: &[&str], limit: Duration) -> Result<Finished, PostgresError> {
        let op = Operation::Backup;
        self.write_pgbackrest_config(op)?;
        let backrest = self.backrest(op)?;
        let mut cmd = self.runner.command_at(&backrest.program);
        cmd.arg(format!("--config={}", backrest.config_file().display()))
            .arg(format!("--stanza={}", backrest.stanza))
            .args(args);
        let name = format!("pgbackrest {}", args.last().copied().unwrap_or_default());
        tracing::info!(member = self.member(), command = %name, "running pgBackRest");
        self.runner.run_command(op, &name, cmd, limit).await
    }

    /// `pgbackrest stanza-create`: idempotent, it succeeds on a stanza that
    /// already matches this cluster.
    pub async fn stanza_create(&self) -> Result<(), PostgresError> {
        self.pgbackrest(&["stanza-create"], SHORT_COMMAND)
            .await
            .map(drop)
    }

    /// `pgbackrest check`: archiving works and the repository is usable.
    pub async fn backup_check(&self) -> Result<(), PostgresError> {
        self.pgbackrest(&["check"], SHORT_COMMAND).await.map(drop)
    }

    /// `pgbackrest backup --type=<kind>` of the local server (which must be
    /// the primary); returns pgBackRest's console output.
    pub async fn backup(&self, kind: BackupType) -> Result<String, PostgresError> {
        let type_arg = format!("--type={}", kind.as_str());
        let done = self
            .pgbackrest(&[&type_arg, "backup"], BACKUP_LIMIT)
            .await?;
        Ok(done.stdout)
    }

    /// `pgbackrest info --output=json`: the repository's backups and archive.
    pub async fn backup_info(&self) -> Result<String, PostgresError> {
        let done = self
            .pgbackrest(&["--output=json", "info"], SHORT_COMMAND)
            .await?;
        Ok(done.stdout)
    }
}
