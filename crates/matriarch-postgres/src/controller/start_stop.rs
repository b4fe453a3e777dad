//! Starting and stopping the postmaster: `pg_ctl` or the launcher, the
//! server log, and the escalation from a clean stop to a kill.

use std::ffi::OsString;
use std::io::{Read, Seek, SeekFrom};
use std::time::{Duration, Instant};

use tokio_postgres::Client;

use super::process::{arg, PostmasterLauncher};
use super::{files, process};
use super::{Live, PgController, IMMEDIATE_STOP, KILL_WAIT, POLL};
use crate::error::{Operation, PostgresError};
use crate::role::PgRole;
use crate::{StartAs, StopMode};

impl PgController {
    /// The server log written since `offset`, last lines only.
    pub(super) fn server_log_since(&self, offset: u64) -> String {
        let mut text = String::new();
        if let Ok(mut file) = std::fs::File::open(&self.server_log) {
            if file.seek(SeekFrom::Start(offset)).is_ok() {
                let _ = file.take(1 << 20).read_to_string(&mut text);
            }
        }
        process::last_lines(&text, 12)
    }

    /// Makes sure the server log exists and belongs to the OS user; returns its size.
    pub(super) fn prepare_server_log(&self, op: Operation) -> Result<u64, PostgresError> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            // Like pg_ctl -l: the log may show queries and their data.
            .mode(0o600)
            .open(&self.server_log)
            .map_err(|source| PostgresError::Io {
                operation: op,
                context: format!("opening server log {}", self.server_log.display()),
                source,
            })?;
        // `mode` applies only when the file is created: one left by hand or
        // by an older version with a looser mode is tightened too (reloads
        // log parameter values).
        {
            use std::os::unix::fs::PermissionsExt;
            file.set_permissions(std::fs::Permissions::from_mode(0o600))
                .map_err(|source| PostgresError::Io {
                    operation: op,
                    context: format!("chmod 0600 server log {}", self.server_log.display()),
                    source,
                })?;
        }
        files::chown(op, &self.server_log, &self.runner.user)?;
        Ok(file.metadata().map(|meta| meta.len()).unwrap_or(0))
    }

    /// Waits until a dead postmaster named in `postmaster.pid` is reaped:
    /// PostgreSQL refuses to start while that pid exists, even as a zombie.
    pub(super) async fn wait_for_reaped_postmaster(
        &self,
        op: Operation,
    ) -> Result<(), PostgresError> {
        let Ok(text) = std::fs::read_to_string(self.path("postmaster.pid")) else {
            return Ok(());
        };
        let Some(pid) = text
            .lines()
            .next()
            .and_then(|l| l.trim().parse::<i32>().ok())
        else {
            return Ok(());
        };
        let timeout = self.config.timeouts.start;
        let deadline = Instant::now() + timeout;
        while process::process_alive(pid) && self.postmaster_pid().is_none() {
            if Instant::now() >= deadline {
                return Err(PostgresError::Unexpected {
                    operation: op,
                    context: "waiting for the dead postmaster to be reaped".to_owned(),
                    message: format!(
                        "pid {pid} from postmaster.pid still exists after {timeout:?} \
                         (a zombie its parent does not reap); PostgreSQL refuses to start until it is gone"
                    ),
                });
            }
            tokio::time::sleep(POLL).await;
        }
        Ok(())
    }

    /// `pg_ctl start -w`, or the launcher and a wait for readiness; on
    /// failure the server log's tail is in the error.
    pub(super) async fn pg_ctl_start(&self, op: Operation) -> Result<(), PostgresError> {
        self.wait_for_reaped_postmaster(op).await?;
        let offset = self.prepare_server_log(op)?;
        if let Some(launcher) = &self.launcher {
            return self.launch_postmaster(op, launcher.as_ref(), offset).await;
        }
        let timeout = self.config.timeouts.start;
        let args: Vec<OsString> = vec![
            "start".into(),
            "-D".into(),
            arg(self.data_dir()),
            "-l".into(),
            arg(&self.server_log),
            "-w".into(),
            "-t".into(),
            timeout.as_secs().max(1).to_string().into(),
        ];
        tracing::info!(member = self.member(), data_dir = %self.data_dir().display(), "starting PostgreSQL");
        let command = self.runner.prepared(op, "pg_ctl", &args, None)?;
        let output = self
            .runner
            .output(op, "pg_ctl", command, timeout + Duration::from_secs(5))
            .await?;
        if output.status.success() {
            return Ok(());
        }
        let pg_ctl = String::from_utf8_lossy(&output.stderr).into_owned();
        let server_log = self.server_log_since(offset);
        if let Some(no_space) = self.no_space_error(op, &server_log) {
            return Err(no_space);
        }
        if pg_ctl.contains("did not start in time") {
            return Err(PostgresError::Timeout {
                operation: op,
                after: timeout,
            });
        }
        Err(PostgresError::CommandFailed {
            operation: op,
            program: "pg_ctl start".to_owned(),
            status: output.status,
            stderr_tail: format!(
                "{}\nserver log {}:\n{}",
                process::last_lines(&pg_ctl, 4),
                self.server_log.display(),
                server_log
            ),
        })
    }

    /// Starts the postmaster with `launcher` and waits, as `pg_ctl start -w`
    /// does, until `postmaster.pid` says `ready` or `standby`.
    pub(super) async fn launch_postmaster(
        &self,
        op: Operation,
        launcher: &dyn PostmasterLauncher,
        offset: u64,
    ) -> Result<(), PostgresError> {
        let spec = self
            .runner
            .postmaster_spec(op, self.data_dir(), &self.server_log)?;
        tracing::info!(member = self.member(), data_dir = %self.data_dir().display(), "starting PostgreSQL (guarded)");
        let pid = launcher
            .launch(&spec)
            .await
            .map_err(|message| PostgresError::Unexpected {
                operation: op,
                context: "starting the postmaster".to_owned(),
                message,
            })?;
        let pid = i32::try_from(pid).map_err(|_| PostgresError::Unexpected {
            operation: op,
            context: "starting the postmaster".to_owned(),
            message: format!("the launcher reported an impossible pid {pid}"),
        })?;
        let timeout = self.config.timeouts.start;
        let deadline = Instant::now() + timeout;
        loop {
            let status = std::fs::read_to_string(self.path("postmaster.pid")).ok();
            if matches!(
                status
                    .as_deref()
                    .and_then(|text| process::postmaster_status(text, pid)),
                Some("ready" | "standby")
            ) {
                return Ok(());
            }
            if !process::process_running(pid) {
                let server_log = self.server_log_since(offset);
                if let Some(no_space) = self.no_space_error(op, &server_log) {
                    return Err(no_space);
                }
                return Err(PostgresError::Unexpected {
                    operation: op,
                    context: "starting the postmaster".to_owned(),
                    message: format!(
                        "postmaster {pid} exited while starting; server log {}:\n{}",
                        self.server_log.display(),
                        server_log
                    ),
                });
            }
            if Instant::now() >= deadline {
                // Like pg_ctl: the server is left starting; observe decides.
                return Err(PostgresError::Timeout {
                    operation: op,
                    after: timeout,
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// `pg_ctl stop -m mode -w` within `timeout`.
    pub(super) async fn pg_ctl_stop(
        &self,
        op: Operation,
        mode: StopMode,
        timeout: Duration,
    ) -> Result<(), PostgresError> {
        let mode_name = match mode {
            StopMode::Smart => "smart",
            StopMode::Fast => "fast",
            StopMode::Immediate => "immediate",
        };
        let args: Vec<OsString> = vec![
            "stop".into(),
            "-D".into(),
            arg(self.data_dir()),
            "-m".into(),
            mode_name.into(),
            "-w".into(),
            "-t".into(),
            timeout.as_secs().max(1).to_string().into(),
        ];
        tracing::info!(
            member = self.member(),
            mode = mode_name,
            "stopping PostgreSQL"
        );
        let result = self
            .runner
            .run(op, "pg_ctl", &args, None, timeout + Duration::from_secs(2))
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(_) if self.postmaster_pid().is_none() => Ok(()),
            Err(PostgresError::CommandFailed { stderr_tail, .. })
                if stderr_tail.contains("does not shut down") =>
            {
                Err(PostgresError::Timeout {
                    operation: op,
                    after: timeout,
                })
            }
            Err(err) => Err(err),
        }
    }

    /// SIGKILLs the postmaster and its process group, and waits until it is gone.
    pub(super) async fn kill_postmaster(&self, op: Operation) -> Result<(), PostgresError> {
        let Some(pid) = self.postmaster_pid() else {
            return Ok(());
        };
        tracing::warn!(member = self.member(), pid, "killing the postmaster");
        // pg_ctl makes the postmaster a session (and process group) leader.
        process::send_signal(-pid, libc::SIGKILL);
        process::send_signal(pid, libc::SIGKILL);
        let deadline = Instant::now() + KILL_WAIT;
        while Instant::now() < deadline {
            if self.postmaster_pid().is_none() {
                return Ok(());
            }
            tokio::time::sleep(POLL).await;
        }
        Err(PostgresError::Timeout {
            operation: op,
            after: KILL_WAIT,
        })
    }

    /// Stops in `mode`, escalating to an immediate shutdown and then to
    /// SIGKILL, so that the server is down when it returns `Ok`.
    pub(super) async fn stop_escalating(
        &self,
        op: Operation,
        mode: StopMode,
    ) -> Result<(), PostgresError> {
        match self.pg_ctl_stop(op, mode, self.config.timeouts.stop).await {
            Ok(()) => return Ok(()),
            Err(err) => {
                tracing::warn!(member = self.member(), error = %err, "stop failed, escalating to an immediate shutdown");
            }
        }
        if mode != StopMode::Immediate {
            match self
                .pg_ctl_stop(
                    op,
                    StopMode::Immediate,
                    IMMEDIATE_STOP.min(self.config.timeouts.stop),
                )
                .await
            {
                Ok(()) => return Ok(()),
                Err(err) => {
                    tracing::warn!(member = self.member(), error = %err, "immediate shutdown failed, killing the postmaster");
                }
            }
        }
        self.kill_postmaster(op).await
    }

    pub(super) async fn start_inner(&self, as_role: &StartAs) -> Result<(), PostgresError> {
        let op = Operation::Start;
        self.runner.require(op, &["pg_ctl", "pg_controldata"])?;
        self.require_cluster(op)?;
        let deadline = Instant::now() + self.config.timeouts.start;
        loop {
            match self.live(op).await? {
                Live::Running(role, client) => {
                    return self.start_on_running(op, role, as_role, &client).await
                }
                Live::Unavailable => {
                    if Instant::now() >= deadline {
                        return Err(PostgresError::Timeout {
                            operation: op,
                            after: self.config.timeouts.start,
                        });
                    }
                    tokio::time::sleep(POLL * 2).await;
                }
                Live::NotRunning => break,
            }
        }
        let control = self.controldata(op).await?;
        self.check_system_id(op, control.system_id, || {
            format!("data directory {}", self.data_dir().display())
        })?;
        self.write_managed(op)?;
        match as_role {
            StartAs::Primary => {
                self.remove_signals(op)?;
                self.write_upstream(op, None)?;
            }
            StartAs::ReplicaOf(upstream) => {
                self.ensure_slot_best_effort(op, upstream).await;
                self.write_upstream(op, Some(upstream))?;
                self.write_standby_signal(op)?;
            }
            StartAs::Standby => {
                self.write_upstream(op, None)?;
                self.write_standby_signal(op)?;
            }
        }
        self.pg_ctl_start(op).await?;
        let expected = match as_role {
            StartAs::Primary => PgRole::Primary,
            StartAs::ReplicaOf(_) | StartAs::Standby => PgRole::Replica,
        };
        match self.live(op).await? {
            Live::Running(role, _) if role == expected => Ok(()),
            Live::Running(role, _) => Err(PostgresError::Unexpected {
                operation: op,
                context: format!("starting as {expected}"),
                message: format!("the server came up as {role}"),
            }),
            Live::Unavailable | Live::NotRunning => Err(PostgresError::Unexpected {
                operation: op,
                context: format!("starting as {expected}"),
                message: format!(
                    "pg_ctl reported a start but the server accepts no connections; server log:\n{}",
                    self.server_log_since(0)
                ),
            }),
        }
    }

    pub(super) async fn start_on_running(
        &self,
        op: Operation,
        role: PgRole,
        as_role: &StartAs,
        client: &Client,
    ) -> Result<(), PostgresError> {
        match (role, as_role) {
            (PgRole::Primary, StartAs::Primary) | (PgRole::Replica, StartAs::Standby) => Ok(()),
            (PgRole::Replica, StartAs::ReplicaOf(upstream)) => {
                self.follow_running(op, upstream, client).await
            }
            (running_as, _) => Err(PostgresError::RoleConflict {
                operation: op,
                running_as,
            }),
        }
    }
}
