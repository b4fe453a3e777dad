//! Rewinding a diverged data directory onto a source with pg_rewind, after
//! crash recovery if needed.

use std::ffi::OsString;

use matriarch_model::SystemId;

use super::process::arg;
use super::sql::Target;
use super::PgController;
use super::{process, sql};
use crate::error::{Operation, PostgresError};
use crate::sync_standby::SyncStandbyNames;
use crate::upstream::Upstream;
use crate::{RewindOutcome, StartAs, StopMode};

impl PgController {
    /// Takes a crashed data directory through crash recovery in single-user
    /// mode (without `standby.signal`, which single-user mode refuses), so
    /// that it ends with a clean shutdown as pg_rewind requires.
    pub(super) async fn crash_recovery(&self, op: Operation) -> Result<(), PostgresError> {
        tracing::info!(
            member = self.member(),
            "running crash recovery in single-user mode before pg_rewind"
        );
        self.wait_for_reaped_postmaster(op).await?;
        let standby = self.path("standby.signal");
        let had_standby_signal = standby.exists();
        self.remove_signals(op)?;
        let args: Vec<OsString> = vec![
            "--single".into(),
            "-F".into(),
            "-D".into(),
            arg(self.data_dir()),
            "-c".into(),
            "archive_mode=off".into(),
            "template1".into(),
        ];
        let result = self
            .runner
            .run(op, "postgres", &args, None, self.config.timeouts.command)
            .await;
        if had_standby_signal {
            self.write_standby_signal(op)?;
        }
        result.map(|_| ())
    }

    /// Checks that `source` belongs to our cluster (its system identifier)
    /// and, on a primary source, runs a checkpoint so that its control file
    /// shows its current timeline (pg_rewind reads it from there).
    ///
    /// An unreachable source is only logged: pg_rewind reports it next.
    pub(super) async fn prepare_source(
        &self,
        op: Operation,
        source: &Upstream,
        local_system_id: SystemId,
    ) -> Result<(), PostgresError> {
        let credentials = self.config.rewind_credentials();
        let client = match sql::connect(
            Target::Host(&source.host),
            source.port,
            credentials,
            &format!("{} rewind", self.member()),
            self.config.timeouts.connect,
        )
        .await
        {
            Ok(client) => client,
            Err(message) => {
                tracing::warn!(member = self.member(), source = %source.member, %message, "cannot connect to the rewind source");
                return Ok(());
            }
        };
        let context = "reading the source's role and system identifier";
        let row = self
            .query_row(
                &client,
                op,
                context,
                "SELECT pg_is_in_recovery(), (SELECT system_identifier FROM pg_control_system())",
            )
            .await?;
        if let Some(found) = sql::parsed::<SystemId>(&row, 1, op, context)? {
            if found != local_system_id {
                return Err(PostgresError::SystemIdMismatch {
                    operation: op,
                    context: format!(
                        "rewind source {} ({}:{})",
                        source.member, source.host, source.port
                    ),
                    expected: local_system_id,
                    found,
                });
            }
        }
        if sql::text(&row, 0) == Some("f") {
            if let Err(err) = sql::simple(
                &client,
                op,
                "CHECKPOINT on the source",
                "CHECKPOINT",
                self.config.timeouts.rewind,
            )
            .await
            {
                tracing::warn!(member = self.member(), source = %source.member, error = %err, "checkpoint on the rewind source failed");
            }
        }
        Ok(())
    }

    pub(super) async fn rewind_inner(
        &self,
        source: &Upstream,
    ) -> Result<RewindOutcome, PostgresError> {
        let op = Operation::Rewind;
        self.runner
            .require(op, &["pg_rewind", "pg_controldata", "postgres"])?;
        self.require_cluster(op)?;
        self.check_upstream(source)?;
        if self.postmaster_pid().is_some() {
            return Err(PostgresError::StillRunning { operation: op });
        }
        let mut control = self.controldata(op).await?;
        self.check_system_id(op, control.system_id, || {
            format!("data directory {}", self.data_dir().display())
        })?;
        let fresh_clone = self
            .cloned_from
            .lock()
            .map(|c| c.as_ref() == Some(&source.member))
            .unwrap_or(false);
        if fresh_clone && self.path("backup_label").exists() {
            // Never started since it was copied from this very source: it
            // cannot have diverged (and pg_rewind refuses a backup_label).
            return Ok(RewindOutcome::NotNeeded);
        }
        if !control.clean() && self.path("backup_label").exists() {
            return Ok(RewindOutcome::Impossible {
                reason: "the data directory holds a backup_label (an unfinished base backup or \
                         rewind): it must finish recovery as a replica, or be cloned again"
                    .to_owned(),
            });
        }
        if !control.clean() && self.path("standby.signal").exists() {
            // A crashed standby recovers as a standby without upstream,
            // replaying only the WAL it has, and stops "shut down in
            // recovery". Single-user crash recovery would end recovery as a
            // primary does, writing a checkpoint on the standby's timeline
            // that its primary never had: promoted later, such a node forks
            // from a history the old primary cannot be rewound onto.
            tracing::info!(
                member = self.member(),
                "a crashed standby: recovering it as a standby without upstream before pg_rewind"
            );
            self.wait_for_reaped_postmaster(op).await?;
            self.start_inner(&StartAs::Standby).await?;
            self.pg_ctl_stop(op, StopMode::Fast, self.config.timeouts.stop)
                .await?;
            control = self.controldata(op).await?;
        }
        if !control.clean() {
            self.crash_recovery(op).await?;
            control = self.controldata(op).await?;
            if !control.clean() {
                return Err(PostgresError::Unexpected {
                    operation: op,
                    context: "crash recovery before pg_rewind".to_owned(),
                    message: format!("the cluster state is still {:?}", control.state),
                });
            }
        }
        self.prepare_source(op, source, control.system_id).await?;

        let credentials = self.config.rewind_credentials();
        let conninfo = self.program_conninfo(source, credentials, " rewind");
        let base: Vec<OsString> = vec![
            format!("--target-pgdata={}", self.data_dir().display()).into(),
            format!("--source-server={conninfo}").into(),
        ];
        let mut dry_run = base.clone();
        dry_run.push("--dry-run".into());
        let timeout = self.config.timeouts.rewind;
        let pg_rewind =
            self.runner
                .prepared(op, "pg_rewind", &dry_run, credentials.password.as_ref())?;
        let output = self
            .runner
            .output(op, "pg_rewind", pg_rewind, timeout)
            .await?;
        let text = format!(
            "{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        if !output.status.success() {
            let tail = process::last_lines(&text, 6);
            let transient = [
                "could not connect",
                "connection to server",
                "password authentication failed",
                "no pg_hba.conf entry",
                "permission denied for function",
            ];
            if transient.iter().any(|needle| text.contains(needle)) {
                return Err(PostgresError::CommandFailed {
                    operation: op,
                    program: "pg_rewind --dry-run".to_owned(),
                    status: output.status,
                    stderr_tail: tail,
                });
            }
            tracing::warn!(member = self.member(), source = %source.member, reason = %tail, "pg_rewind cannot rewind this data directory");
            return Ok(RewindOutcome::Impossible { reason: tail });
        }
        let outcome = if text.contains("no rewind required") {
            tracing::info!(member = self.member(), source = %source.member, "no rewind needed");
            RewindOutcome::NotNeeded
        } else {
            tracing::info!(member = self.member(), source = %source.member, "rewinding with pg_rewind");
            self.runner
                .run(
                    op,
                    "pg_rewind",
                    &base,
                    credentials.password.as_ref(),
                    timeout,
                )
                .await?;
            RewindOutcome::Rewound
        };
        // pg_rewind copied the source's configuration files: make them ours.
        self.write_managed(op)?;
        self.write_upstream(op, Some(source))?;
        self.write_sync(op, &SyncStandbyNames::Off)?;
        self.write_standby_signal(op)?;
        Ok(outcome)
    }
}
