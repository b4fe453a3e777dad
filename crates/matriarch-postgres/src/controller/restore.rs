//! A custom bootstrap (Patroni's `bootstrap.<method>`): a user command fills
//! the data directory (restores a backup), recovery replays the archive to
//! its target and promotes, and the cluster is finished as after initdb.

use std::process::Stdio;
use std::time::Instant;

use matriarch_model::SystemId;
use tokio::process::Command;

use super::process::{last_lines, Finished};
use super::{files, Live, PgController, POLL};
use crate::bootstrap::{recovery_settings, BootstrapSpec, CustomBootstrap, RECOVERY_PARAMETERS};
use crate::error::{Operation, PostgresError};
use crate::role::PgRole;
use crate::sync_standby::SyncStandbyNames;
use crate::StopMode;

/// Settings removed from a restored `postgresql.auto.conf` (which
/// PostgreSQL reads last, so they would override matriarch's): the recovery
/// settings and the standby ones matriarch writes itself.
const STANDBY_PARAMETERS: &[&str] = &[
    "primary_conninfo",
    "primary_slot_name",
    "promote_trigger_file",
    "recovery_min_apply_delay",
    "standby_mode",
];

impl PgController {
    pub(super) async fn custom_bootstrap_steps(
        &self,
        spec: &BootstrapSpec,
        custom: &CustomBootstrap,
    ) -> Result<SystemId, PostgresError> {
        let op = Operation::Bootstrap;
        self.run_bootstrap_command(custom).await?;
        let restored =
            files::read_system_id(op, self.data_dir()).map_err(|_| PostgresError::Unexpected {
                operation: op,
                context: format!("bootstrap method {:?}", custom.name),
                message: format!(
                    "the command succeeded but left no PostgreSQL cluster in {}",
                    self.data_dir().display()
                ),
            })?;
        tracing::info!(member = self.member(), method = %custom.name, system_id = %restored, "the bootstrap command restored a cluster");

        // Patroni's _post_restore: no promote trigger left to promote early.
        files::remove_file(op, &self.path("promote"))?;
        files::remove_file(op, &self.path("postmaster.pid"))?;
        self.write_bootstrap_hba(spec)?;
        self.write_managed(op)?;
        self.write_sync(op, &SyncStandbyNames::Off)?;
        if !custom.keep_existing_recovery_conf {
            self.remove_auto_conf_recovery(op)?;
            self.remove_signals(op)?;
        }
        self.write_upstream(op, None)?;
        if let Some(conf) = &custom.recovery_conf {
            self.write_recovery_conf(op, &recovery_settings(conf))?;
        }

        let deadline = Instant::now() + custom.timeout;
        let offset = self.prepare_server_log(op)?;
        match self.pg_ctl_start(op).await {
            // Still replaying towards a consistent state: waited for below.
            Err(PostgresError::Timeout { .. }) if self.postmaster_pid().is_some() => {}
            other => other?,
        }
        self.wait_for_end_of_recovery(op, offset, deadline, custom)
            .await?;

        let client = self
            .session(op, "connecting to the restored cluster")
            .await?;
        self.create_bootstrap_roles(&client, spec).await?;
        drop(client);
        // The recovery settings go, and a restart makes the running server's
        // settings those of the files (recovery_target_* need a restart).
        self.remove_auto_conf_recovery(op)?;
        self.write_upstream(op, None)?;
        self.remove_signals(op)?;
        self.pg_ctl_stop(op, StopMode::Fast, self.config.timeouts.stop)
            .await?;
        self.pg_ctl_start(op).await?;
        let client = self
            .session(op, "connecting to the restored cluster")
            .await?;
        let system_id = self.bootstrapped_system_id(&client).await?;
        tracing::info!(member = self.member(), method = %custom.name, %system_id, "bootstrapped a new cluster from a backup");
        Ok(system_id)
    }

    /// Runs the method's command as the PostgreSQL OS user, within its
    /// timeout; a failure carries the tail of its output.
    async fn run_bootstrap_command(&self, custom: &CustomBootstrap) -> Result<(), PostgresError> {
        let op = Operation::Bootstrap;
        let program = custom.argv.first().cloned().unwrap_or_default();
        let user = &self.runner.user;
        let mut cmd = Command::new(&program);
        cmd.args(&custom.argv[1..])
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        // The agent's environment as Patroni passes its own (a backup tool's
        // settings may be there), without matriarch's (passwords among them).
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("MATRIARCH_") {
                cmd.env_remove(&name);
            }
        }
        cmd.env("HOME", &user.home)
            .env("USER", &user.name)
            .env("LOGNAME", &user.name);
        if user.switch {
            cmd.uid(user.uid).gid(user.gid);
        }
        // Only the program: an argument may hold a backup tool's secret.
        tracing::info!(member = self.member(), method = %custom.name, %program, "running the custom bootstrap command");
        let child = cmd.spawn().map_err(|source| PostgresError::Io {
            operation: op,
            context: format!(
                "starting bootstrap command {program:?} as OS user {}",
                user.name
            ),
            source,
        })?;
        let output = match tokio::time::timeout(custom.timeout, child.wait_with_output()).await {
            Ok(result) => result.map_err(|source| PostgresError::Io {
                operation: op,
                context: format!("waiting for bootstrap command {program:?}"),
                source,
            })?,
            // Dropping the future kills the child (kill_on_drop).
            Err(_) => {
                return Err(PostgresError::Timeout {
                    operation: op,
                    after: custom.timeout,
                })
            }
        };
        if output.status.success() {
            return Ok(());
        }
        let finished = Finished {
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        };
        Err(PostgresError::CommandFailed {
            operation: op,
            program: format!("bootstrap method {:?} ({program})", custom.name),
            status: output.status,
            stderr_tail: super::process::tail_of(&finished),
        })
    }

    /// Appends `settings` to the upstream file (which `write_upstream`
    /// rewrites without them after the promotion) and writes
    /// `recovery.signal`.
    fn write_recovery_conf(
        &self,
        op: Operation,
        settings: &std::collections::BTreeMap<String, matriarch_model::ParameterValue>,
    ) -> Result<(), PostgresError> {
        let path = self.path(files::UPSTREAM_CONF_FILE);
        let mut text = files::read_optional(op, &path)?.unwrap_or_default();
        text.push_str("# The custom bootstrap's recovery settings (removed once it promoted).\n");
        for (name, value) in settings {
            text.push_str(&format!("{name} = {}\n", files::render_value(value)));
        }
        let user = &self.runner.user;
        files::write_file(op, &path, &text, 0o600, user)?;
        files::write_file(op, &self.path("recovery.signal"), "", 0o600, user)
    }

    /// Removes the recovery and standby settings from `postgresql.auto.conf`
    /// (a backup tool writes its own there), as Patroni does.
    fn remove_auto_conf_recovery(&self, op: Operation) -> Result<(), PostgresError> {
        let path = self.path("postgresql.auto.conf");
        let Some(text) = files::read_optional(op, &path)? else {
            return Ok(());
        };
        let kept = without_recovery_settings(&text);
        if kept != text {
            files::write_file(op, &path, &kept, 0o600, &self.runner.user)?;
        }
        Ok(())
    }

    /// Waits until the restored server ran its recovery to the end and
    /// promoted. Fails at once when the postmaster stops (PostgreSQL ends
    /// with `recovery ended before configured recovery target was reached`)
    /// or recovery pauses, and at `deadline`.
    async fn wait_for_end_of_recovery(
        &self,
        op: Operation,
        log_offset: u64,
        deadline: Instant,
        custom: &CustomBootstrap,
    ) -> Result<(), PostgresError> {
        let failed = |message: String| PostgresError::Unexpected {
            operation: op,
            context: format!("recovery of bootstrap method {:?}", custom.name),
            message,
        };
        let mut logged = false;
        loop {
            match self.live(op).await? {
                Live::Running(PgRole::Primary, _) => return Ok(()),
                Live::Running(PgRole::Replica, client) => {
                    if !logged {
                        tracing::info!(
                            member = self.member(),
                            "the restored server is consistent and replays the archive"
                        );
                        logged = true;
                    }
                    let row = self
                        .query_row(
                            &client,
                            op,
                            "reading pg_is_wal_replay_paused()",
                            "SELECT pg_is_wal_replay_paused()",
                        )
                        .await?;
                    if super::sql::text(&row, 0) == Some("t") {
                        return Err(failed(format!(
                            "recovery paused (recovery_target_action = pause, or settings lower than \
                             the source's); server log {}:\n{}",
                            self.server_log.display(),
                            self.server_log_since(log_offset)
                        )));
                    }
                }
                Live::Unavailable => {}
                Live::NotRunning => {
                    return Err(failed(format!(
                        "PostgreSQL stopped before recovery ended; server log {}:\n{}",
                        self.server_log.display(),
                        last_lines(&self.server_log_since(log_offset), 8)
                    )))
                }
            }
            if Instant::now() >= deadline {
                return Err(PostgresError::Timeout {
                    operation: op,
                    after: custom.timeout,
                });
            }
            tokio::time::sleep(POLL * 2).await;
        }
    }
}

/// `postgresql.auto.conf`'s text without its recovery and standby settings.
fn without_recovery_settings(text: &str) -> String {
    text.lines()
        .filter(|line| {
            let name = line
                .trim_start()
                .split(|c: char| c == '=' || c.is_whitespace())
                .next()
                .unwrap_or_default()
                .to_ascii_lowercase();
            !RECOVERY_PARAMETERS.contains(&name.as_str())
                && !STANDBY_PARAMETERS.contains(&name.as_str())
        })
        .map(|line| format!("{line}\n"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::without_recovery_settings;

    #[test]
    fn a_restored_auto_conf_loses_its_recovery_and_standby_settings_only() {
        let text = "# Do not edit this file manually!\n\
                    archive_mode = 'off'\n\
                    restore_command = 'pgbackrest --stanza=main archive-get %f \"%p\"'\n\
                    recovery_target_time = '2026-01-01 00:00:00+00'\n\
                    Recovery_Target_Action='promote'\n\
                    primary_conninfo = 'host=old'\n\
                    work_mem = '8MB'\n";
        assert_eq!(
            without_recovery_settings(text),
            "# Do not edit this file manually!\narchive_mode = 'off'\nwork_mem = '8MB'\n"
        );
    }
}
