//! [`PgController`]: the real [`Postgres`] implementation.
//!
//! It runs the server programs (initdb, pg_ctl, pg_basebackup, pg_rewind,
//! pg_controldata, postgres) from a bin directory as an unprivileged OS user
//! and talks SQL through the server's Unix socket with tokio-postgres.
//!
//! # Files it manages in the data directory
//!
//! `postgresql.conf` includes three files that matriarch owns:
//! [`MANAGED_CONF_FILE`] (listen address, port, socket, replication
//! defaults, the configured parameters; rewritten on every start),
//! [`UPSTREAM_CONF_FILE`] (`primary_conninfo` with the replication password
//! and `primary_slot_name`; mode 0600) and [`SYNC_CONF_FILE`]
//! (`synchronous_standby_names`). Settings made with `ALTER SYSTEM` still
//! override them (PostgreSQL reads `postgresql.auto.conf` last).
//!
//! Passwords never appear on a command line or in a log: programs get them
//! through `PGPASSWORD` in their environment, and SQL that sets them runs
//! with statement logging switched off for the session.
//!
//! # Behaviour beyond the trait's contract
//!
//! * `pg_hba.conf` gets the bootstrap spec's lines first, then `local all
//!   all trust` (the socket is created with mode 0700, so only the OS user
//!   and root can use it), replication for the replication role and
//!   everything else over TCP with a SCRAM password.
//! * Replication slots are created by the replica on its upstream (as the
//!   replication role) when it clones, starts or follows; stale slots are not
//!   dropped.
//! * A stopped server reports its position from `pg_controldata`: the later
//!   of the last checkpoint and the minimum recovery point, as `wal.flush`
//!   for a former primary and `wal.replayed` for a former replica. It is a
//!   lower bound (WAL written after the last checkpoint is not counted);
//!   start it with [`StartAs::Standby`] for the exact replay position.
//! * A data directory with a `backup_label` (fresh from pg_basebackup or
//!   pg_rewind) is reported as [`DataDirectoryState::CleanShutdown`], not as
//!   a crash. `rewind` reports it [`RewindOutcome::NotNeeded`] when it is an
//!   unstarted clone of that very source, else [`RewindOutcome::Impossible`].
//! * `rewind` of a crashed standby first recovers it as a standby without
//!   upstream (it stops "shut down in recovery"); only a crashed primary goes
//!   through crash recovery in single-user mode, which ends recovery.
//! * A running replica's timeline is the one it replays, asked with
//!   `IDENTIFY_SYSTEM` over a local replication connection (one more
//!   connection per `observe`, on replicas only); SQL alone shows the last
//!   restartpoint's once the WAL receiver is gone. If `pg_hba.conf` refuses
//!   that connection, the SQL estimate is reported and a warning logged once.
//! * `promote` returns as soon as recovery has ended (polled every
//!   [`PROMOTE_POLL`]) and then runs a `CHECKPOINT` in the background, so that
//!   pg_rewind (which reads a source's timeline from its control file) sees
//!   the new timeline soon; `rewind` also checkpoints a primary source first.

mod config;
mod files;
mod process;
mod sql;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use matriarch_model::{Lsn, MemberName, ParameterValue, SystemId, Timeline};
use tokio_postgres::Client;

pub use config::{
    check_parameter, PgControllerConfig, PgTimeouts, DEFAULT_BIN_DIR, DEFAULT_OS_USER,
};
pub use files::{
    check_cluster_data_dir, empty_cluster_data_dir, read_system_id, MANAGED_CONF_FILE,
    SYNC_CONF_FILE, UPSTREAM_CONF_FILE,
};

use self::files::{ControlData, DirContents, ManagedSettings};
use self::process::{arg, Runner};
pub use self::process::{PostmasterLauncher, PostmasterSpec};
use self::sql::Target;
use crate::bootstrap::BootstrapSpec;
use crate::error::{Operation, PostgresError};
use crate::secret::Credentials;
use crate::state::{
    DataDirectoryState, LocalState, PgRole, ReplicationConnection, ServerState, StandbySyncState,
    WalPositions, WalSenderState,
};
use crate::sync_standby::SyncStandbyNames;
use crate::upstream::{push_libpq_value, Upstream};
use crate::{Postgres, RewindOutcome, StartAs, StopMode};

/// The longest `demote` gives an immediate shutdown before it kills the
/// postmaster (never longer than the configured stop timeout).
const IMMEDIATE_STOP: Duration = Duration::from_secs(10);
/// How long to wait for a killed postmaster to disappear.
const KILL_WAIT: Duration = Duration::from_secs(5);
/// How often readiness and reloads are polled.
const POLL: Duration = Duration::from_millis(100);
/// How often `promote` checks whether recovery has ended.
pub(crate) const PROMOTE_POLL: Duration = Duration::from_millis(5);

/// Controls one PostgreSQL server (one data directory) with the server
/// programs and SQL: the [`Postgres`] implementation the HA engine runs.
///
/// Build it with [`PgController::new`] from a [`PgControllerConfig`].
#[derive(Debug)]
pub struct PgController {
    config: PgControllerConfig,
    /// The user parameters in force: the configuration's at first, then
    /// whatever [`PgController::set_parameters`] last accepted.
    parameters: std::sync::RwLock<BTreeMap<String, ParameterValue>>,
    /// The member the data directory was last cloned from, until it starts:
    /// such a copy cannot have diverged from its source.
    cloned_from: std::sync::Mutex<Option<MemberName>>,
    /// The replica timeline probe failed last time (logged once, until it
    /// works again).
    timeline_probe_failing: std::sync::atomic::AtomicBool,
    runner: Runner,
    server_log: PathBuf,
    /// Starts the postmaster instead of `pg_ctl start` when set.
    launcher: Option<std::sync::Arc<dyn PostmasterLauncher>>,
}

/// Whether the server runs, as far as a connection can tell.
enum Live {
    NotRunning,
    Unavailable,
    Running(PgRole, Client),
}

impl PgController {
    /// Validates `config` and resolves the OS user. Touches nothing on disk.
    ///
    /// Errors: [`PostgresError::InvalidConfig`] for a parameter matriarch
    /// manages itself or cannot write, relative paths, or an OS user that
    /// does not exist.
    pub fn new(config: PgControllerConfig) -> Result<Self, PostgresError> {
        config.validate()?;
        let user = process::OsUser::resolve(&config.os_user)?;
        Ok(PgController {
            runner: Runner {
                bin_dir: config.bin_dir.clone(),
                user,
                member: config.member.to_string(),
            },
            server_log: config.server_log_path(),
            launcher: None,
            parameters: std::sync::RwLock::new(config.parameters.clone()),
            cloned_from: std::sync::Mutex::new(None),
            timeline_probe_failing: std::sync::atomic::AtomicBool::new(false),
            config,
        })
    }

    /// Starts the postmaster with `launcher` instead of `pg_ctl start`
    /// (the daemon's write fence makes it a child it dies with).
    pub fn with_launcher(mut self, launcher: std::sync::Arc<dyn PostmasterLauncher>) -> Self {
        self.launcher = Some(launcher);
        self
    }

    /// The configuration it was built with (its `parameters` are the
    /// initial ones; [`PgController::parameters`] has those in force).
    pub fn config(&self) -> &PgControllerConfig {
        &self.config
    }

    /// The user parameters in force: written to the managed configuration
    /// file at the next start or [`PgController::reload`].
    pub fn parameters(&self) -> BTreeMap<String, ParameterValue> {
        match self.parameters.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Replaces the user parameters (the dynamic configuration's
    /// `postgresql.parameters` with the node's own on top). Takes effect at
    /// the next [`PgController::reload`] or start; returns whether anything
    /// changed.
    ///
    /// [`PostgresError::InvalidConfig`] for a parameter matriarch manages
    /// itself or a malformed name or value; then nothing changes.
    pub fn set_parameters(
        &self,
        parameters: BTreeMap<String, ParameterValue>,
    ) -> Result<bool, PostgresError> {
        for (name, value) in &parameters {
            config::check_parameter(name, value)?;
        }
        let mut current = match self.parameters.write() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        if *current == parameters {
            return Ok(false);
        }
        *current = parameters;
        Ok(true)
    }

    /// The parameters whose new value waits for a restart
    /// (`pg_settings.pending_restart`), sorted by name.
    ///
    /// [`PostgresError::NotRunning`] when the server does not accept
    /// connections.
    pub async fn pending_restart(&self) -> Result<Vec<String>, PostgresError> {
        let op = Operation::Reload;
        match self.live(op).await? {
            Live::Running(_, client) => {
                let rows = sql::simple(
                    &client,
                    op,
                    "reading pg_settings.pending_restart",
                    "SELECT name FROM pg_settings WHERE pending_restart ORDER BY name",
                    self.config.timeouts.connect,
                )
                .await?;
                Ok(rows
                    .into_iter()
                    .flatten()
                    .filter_map(|row| sql::text(&row, 0).map(str::to_owned))
                    .collect())
            }
            Live::NotRunning | Live::Unavailable => {
                Err(PostgresError::NotRunning { operation: op })
            }
        }
    }

    /// The server log pg_ctl appends to.
    pub fn server_log(&self) -> &Path {
        &self.server_log
    }

    /// The name of the OS user the server programs run as.
    pub fn os_user(&self) -> &str {
        &self.runner.user.name
    }

    /// Applies this controller's configuration to the running server
    /// without a restart: rewrites the managed configuration file (user
    /// parameters, listen address, port...) and calls `pg_reload_conf()`.
    ///
    /// To change parameters, call [`PgController::set_parameters`] first.
    /// Parameters that PostgreSQL
    /// only reads at start (`shared_buffers`, `port`, ...) wait for
    /// [`PgController::restart`]. On a stopped server the file is rewritten
    /// and applies at the next start; [`PostgresError::NotRunning`] if the
    /// postmaster runs but refuses connections.
    pub async fn reload(&self) -> Result<(), PostgresError> {
        let op = Operation::Reload;
        self.require_cluster(op)?;
        match self.live(op).await? {
            Live::Running(_, client) => {
                self.write_managed(op)?;
                sql::simple(
                    &client,
                    op,
                    "reloading the configuration",
                    "SELECT pg_reload_conf()",
                    self.config.timeouts.connect,
                )
                .await?;
                tracing::info!(member = self.member(), "reloaded the configuration");
                Ok(())
            }
            Live::NotRunning => self.write_managed(op),
            Live::Unavailable => Err(PostgresError::NotRunning { operation: op }),
        }
    }

    /// Stops the server in `mode` and starts it again in the role it ran
    /// in (a replica keeps its upstream, or none), with the managed
    /// configuration rewritten.
    ///
    /// [`PostgresError::NotRunning`] if it does not run (use
    /// [`Postgres::start`]). Unlike [`Postgres::demote`] it does not
    /// escalate: on a stop timeout the server may still run.
    pub async fn restart(&self, mode: StopMode) -> Result<(), PostgresError> {
        let op = Operation::Restart;
        self.require_cluster(op)?;
        let role = match self.live(op).await? {
            Live::Running(role, _) => role,
            Live::NotRunning | Live::Unavailable => {
                return Err(PostgresError::NotRunning { operation: op })
            }
        };
        let as_role = match role {
            PgRole::Primary => StartAs::Primary,
            PgRole::Replica => match self.current_upstream(op)? {
                Some(upstream) => StartAs::ReplicaOf(upstream),
                None => StartAs::Standby,
            },
        };
        tracing::info!(member = self.member(), %role, "restarting");
        self.pg_ctl_stop(op, mode, self.config.timeouts.stop)
            .await?;
        self.start_inner(&as_role).await
    }

    fn data_dir(&self) -> &Path {
        &self.config.data_dir
    }

    fn set_cloned_from(&self, source: Option<MemberName>) {
        match self.cloned_from.lock() {
            Ok(mut guard) => *guard = source,
            Err(poisoned) => *poisoned.into_inner() = source,
        }
    }

    fn member(&self) -> &str {
        self.config.member.as_str()
    }

    fn inspect(&self, op: Operation) -> Result<DirContents, PostgresError> {
        files::inspect_data_dir(op, self.data_dir(), &self.runner.user)
    }

    /// Requires a database cluster in the data directory.
    fn require_cluster(&self, op: Operation) -> Result<(), PostgresError> {
        match self.inspect(op)? {
            DirContents::Cluster => Ok(()),
            DirContents::Absent | DirContents::Empty | DirContents::Other => {
                Err(PostgresError::NotInitialized {
                    operation: op,
                    data_dir: self.data_dir().to_owned(),
                })
            }
        }
    }

    /// The pid of a live postmaster on the data directory, from `postmaster.pid`.
    fn postmaster_pid(&self) -> Option<i32> {
        let text = std::fs::read_to_string(self.data_dir().join("postmaster.pid")).ok()?;
        let pid: i32 = text.lines().next()?.trim().parse().ok()?;
        if !process::process_alive(pid) {
            return None;
        }
        // A killed postmaster whose parent does not reap it stays a zombie.
        if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.trim_start().chars().next());
            if matches!(state, Some('Z' | 'X')) {
                return None;
            }
        }
        // A stale pid file may name a pid that was reused by another program.
        match std::fs::read_to_string(format!("/proc/{pid}/comm")) {
            Ok(comm) => {
                let comm = comm.trim();
                (comm.starts_with("postgres") || comm.starts_with("postmaster")).then_some(pid)
            }
            Err(_) => Some(pid),
        }
    }

    async fn controldata(&self, op: Operation) -> Result<ControlData, PostgresError> {
        let finished = self
            .runner
            .run(
                op,
                "pg_controldata",
                &[arg(self.data_dir())],
                None,
                self.config.timeouts.command,
            )
            .await?;
        ControlData::parse(&finished.stdout).map_err(|message| PostgresError::Unexpected {
            operation: op,
            context: format!("reading pg_controldata of {}", self.data_dir().display()),
            message,
        })
    }

    fn check_system_id(
        &self,
        op: Operation,
        found: SystemId,
        context: impl FnOnce() -> String,
    ) -> Result<(), PostgresError> {
        match self.config.expected_system_id {
            Some(expected) if expected != found => Err(PostgresError::SystemIdMismatch {
                operation: op,
                context: context(),
                expected,
                found,
            }),
            _ => Ok(()),
        }
    }

    async fn connect_local(&self, timeout: Duration) -> Result<Client, String> {
        sql::connect(
            Target::Socket(&self.config.socket_dir),
            self.config.port,
            &self.config.superuser,
            "matriarch",
            timeout,
        )
        .await
    }

    async fn live(&self, op: Operation) -> Result<Live, PostgresError> {
        if self.postmaster_pid().is_none() {
            return Ok(Live::NotRunning);
        }
        let client = match self.connect_local(self.config.timeouts.connect).await {
            Ok(client) => client,
            Err(message) => {
                if self.postmaster_pid().is_none() {
                    return Ok(Live::NotRunning);
                }
                tracing::debug!(member = self.member(), %message, "postmaster runs but refuses connections");
                return Ok(Live::Unavailable);
            }
        };
        let row = sql::one_row(
            &client,
            op,
            "reading pg_is_in_recovery()",
            "SELECT pg_is_in_recovery()",
            self.config.timeouts.connect,
        )
        .await?;
        let role = if sql::text(&row, 0) == Some("t") {
            PgRole::Replica
        } else {
            PgRole::Primary
        };
        Ok(Live::Running(role, client))
    }

    fn path(&self, name: &str) -> PathBuf {
        self.data_dir().join(name)
    }

    /// Writes [`MANAGED_CONF_FILE`] and makes sure `postgresql.conf` includes
    /// the managed files.
    fn write_managed(&self, op: Operation) -> Result<(), PostgresError> {
        let user = &self.runner.user;
        let conf = self.path("postgresql.conf");
        let text = files::read_optional(op, &conf)?.unwrap_or_default();
        if !files::has_include_block(&text) {
            let mut text = text;
            text.push_str(&files::include_block());
            files::write_file(op, &conf, &text, 0o600, user)?;
        }
        let managed = files::render_managed(&ManagedSettings {
            member: &self.config.member,
            listen_addresses: &self.config.listen_addresses,
            port: self.config.port,
            socket_dir: &self.config.socket_dir,
            parameters: &self.parameters(),
        });
        files::write_file(op, &self.path(MANAGED_CONF_FILE), &managed, 0o600, user)
    }

    fn write_upstream(
        &self,
        op: Operation,
        upstream: Option<&Upstream>,
    ) -> Result<(), PostgresError> {
        let passfile = files::passfile_path(self.data_dir());
        let unexpected = |message| PostgresError::Unexpected {
            operation: op,
            context: "writing primary_conninfo".to_owned(),
            message,
        };
        let text = files::render_upstream(
            upstream,
            &self.config.replication,
            &self.config.member,
            &passfile,
        )
        .map_err(unexpected)?;
        // The password file first: primary_conninfo names it.
        if upstream.is_some() {
            if let Some(line) =
                files::render_passfile(&self.config.replication).map_err(unexpected)?
            {
                files::write_file(op, &passfile, line.expose(), 0o600, &self.runner.user)?;
            }
        }
        files::write_file(
            op,
            &self.path(UPSTREAM_CONF_FILE),
            &text,
            0o600,
            &self.runner.user,
        )
    }

    /// Checks, before anything is written, that `upstream` and the
    /// replication credentials can be rendered, so a bad one leaves no trace.
    fn check_upstream(&self, upstream: &Upstream) -> Result<(), PostgresError> {
        files::render_upstream(
            Some(upstream),
            &self.config.replication,
            &self.config.member,
            &files::passfile_path(self.data_dir()),
        )
        .and_then(|_| files::render_passfile(&self.config.replication).map(|_| ()))
        .map_err(|reason| PostgresError::InvalidConfig { reason })
    }

    fn current_upstream(&self, op: Operation) -> Result<Option<Upstream>, PostgresError> {
        Ok(files::read_optional(op, &self.path(UPSTREAM_CONF_FILE))?
            .as_deref()
            .and_then(files::parse_upstream))
    }

    fn write_sync(&self, op: Operation, names: &SyncStandbyNames) -> Result<(), PostgresError> {
        files::write_file(
            op,
            &self.path(SYNC_CONF_FILE),
            &files::render_sync(names),
            0o600,
            &self.runner.user,
        )
    }

    fn write_standby_signal(&self, op: Operation) -> Result<(), PostgresError> {
        files::remove_file(op, &self.path("recovery.signal"))?;
        files::write_file(
            op,
            &self.path("standby.signal"),
            "",
            0o600,
            &self.runner.user,
        )
    }

    fn remove_signals(&self, op: Operation) -> Result<(), PostgresError> {
        files::remove_file(op, &self.path("standby.signal"))?;
        files::remove_file(op, &self.path("recovery.signal"))
    }

    /// The server log written since `offset`, last lines only.
    fn server_log_since(&self, offset: u64) -> String {
        let mut text = String::new();
        if let Ok(mut file) = std::fs::File::open(&self.server_log) {
            if file.seek(SeekFrom::Start(offset)).is_ok() {
                let _ = file.take(1 << 20).read_to_string(&mut text);
            }
        }
        process::last_lines(&text, 12)
    }

    /// Makes sure the server log exists and belongs to the OS user; returns its size.
    fn prepare_server_log(&self, op: Operation) -> Result<u64, PostgresError> {
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
    async fn wait_for_reaped_postmaster(&self, op: Operation) -> Result<(), PostgresError> {
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
    async fn pg_ctl_start(&self, op: Operation) -> Result<(), PostgresError> {
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
        let output = self
            .runner
            .output(op, "pg_ctl", &args, None, timeout + Duration::from_secs(5))
            .await?;
        if output.status.success() {
            return Ok(());
        }
        let pg_ctl = String::from_utf8_lossy(&output.stderr).into_owned();
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
                self.server_log_since(offset)
            ),
        })
    }

    /// Starts the postmaster with `launcher` and waits, as `pg_ctl start -w`
    /// does, until `postmaster.pid` says `ready` or `standby`.
    async fn launch_postmaster(
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
                return Err(PostgresError::Unexpected {
                    operation: op,
                    context: "starting the postmaster".to_owned(),
                    message: format!(
                        "postmaster {pid} exited while starting; server log {}:\n{}",
                        self.server_log.display(),
                        self.server_log_since(offset)
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
    async fn pg_ctl_stop(
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
    async fn kill_postmaster(&self, op: Operation) -> Result<(), PostgresError> {
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
    async fn stop_escalating(&self, op: Operation, mode: StopMode) -> Result<(), PostgresError> {
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

    /// The libpq connection string for a program that connects to
    /// `upstream` (no password: it goes through `PGPASSWORD`). Its
    /// `application_name` is the member name, a space and `suffix`, which no
    /// member name can be, so pg_stat_replication never mistakes a base
    /// backup for the member's replica.
    fn program_conninfo(
        &self,
        upstream: &Upstream,
        credentials: &Credentials,
        suffix: &str,
    ) -> String {
        let mut out = String::new();
        for (key, value) in [
            ("host", upstream.host.as_str()),
            ("port", &upstream.port.to_string()),
            ("user", credentials.username.as_str()),
            ("dbname", "postgres"),
            ("application_name", &format!("{}{suffix}", self.member())),
        ] {
            if !out.is_empty() {
                out.push(' ');
            }
            out.push_str(key);
            out.push('=');
            push_libpq_value(&mut out, value);
        }
        out
    }

    /// Creates this member's physical replication slot on `upstream` if it
    /// is missing (as the replication user, which has `REPLICATION`), and
    /// returns the upstream's system identifier.
    async fn ensure_slot(
        &self,
        op: Operation,
        upstream: &Upstream,
    ) -> Result<Option<SystemId>, PostgresError> {
        let slot = self.config.member.slot_name();
        let client = sql::connect(
            Target::Host(&upstream.host),
            upstream.port,
            &self.config.replication,
            &format!("{} slot", self.member()),
            self.config.timeouts.connect,
        )
        .await
        .map_err(|message| PostgresError::Query {
            operation: op,
            context: format!(
                "connecting to {} at {}:{} to create replication slot {slot}",
                upstream.member, upstream.host, upstream.port
            ),
            message,
        })?;
        let literal = files::sql_literal(&slot);
        let query = format!(
            "SELECT system_identifier::text FROM pg_control_system(); \
             SELECT pg_create_physical_replication_slot({literal}, true) \
             WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = {literal})"
        );
        match sql::simple(
            &client,
            op,
            &format!("creating replication slot {slot} on {}", upstream.member),
            &query,
            self.config.timeouts.connect,
        )
        .await
        {
            Ok(statements) => {
                if statements.get(1).is_some_and(|rows| !rows.is_empty()) {
                    tracing::info!(member = self.member(), upstream = %upstream.member, slot, "created replication slot");
                }
                let system_id = statements
                    .first()
                    .and_then(|rows| rows.first())
                    .and_then(|row| sql::text(row, 0))
                    .and_then(|text| text.parse::<SystemId>().ok());
                Ok(system_id)
            }
            Err(PostgresError::Query { message, .. }) if message.contains("already exists") => {
                Ok(None)
            }
            Err(err) => Err(err),
        }
    }

    /// [`PgController::ensure_slot`], logging instead of failing: the
    /// upstream may be down, and the replica retries streaming on its own.
    async fn ensure_slot_best_effort(&self, op: Operation, upstream: &Upstream) {
        if let Err(err) = self.ensure_slot(op, upstream).await {
            tracing::warn!(member = self.member(), upstream = %upstream.member, error = %err, "could not ensure the replication slot on the upstream");
        }
    }

    /// Points a running replica at `upstream` with a reload.
    async fn follow_running(
        &self,
        op: Operation,
        upstream: &Upstream,
        client: &Client,
    ) -> Result<(), PostgresError> {
        if self.current_upstream(op)?.as_ref() == Some(upstream) {
            let rows = sql::simple(
                client,
                op,
                "reading pg_stat_wal_receiver",
                "SELECT status FROM pg_stat_wal_receiver",
                self.config.timeouts.connect,
            )
            .await?;
            let streaming = rows
                .first()
                .and_then(|rows| rows.first())
                .is_some_and(|row| sql::text(row, 0) == Some("streaming"));
            if !streaming {
                self.ensure_slot_best_effort(op, upstream).await;
            }
            return Ok(());
        }
        self.ensure_slot_best_effort(op, upstream).await;
        self.write_upstream(op, Some(upstream))?;
        sql::simple(
            client,
            op,
            "reloading the configuration",
            "SELECT pg_reload_conf()",
            self.config.timeouts.connect,
        )
        .await?;
        tracing::info!(member = self.member(), upstream = %upstream.member, "following a new upstream");
        Ok(())
    }

    async fn observe_inner(&self) -> Result<LocalState, PostgresError> {
        let op = Operation::Observe;
        match self.inspect(op)? {
            DirContents::Absent | DirContents::Empty => return Ok(LocalState::empty()),
            DirContents::Other => {
                return Err(PostgresError::NotInitialized {
                    operation: op,
                    data_dir: self.data_dir().to_owned(),
                })
            }
            DirContents::Cluster => {}
        }
        let upstream = self.current_upstream(op)?;
        if self.postmaster_pid().is_some() {
            match self.connect_local(self.config.timeouts.connect).await {
                Ok(client) => return self.observe_running(&client, upstream).await,
                Err(message) => {
                    if self.postmaster_pid().is_some() {
                        tracing::debug!(member = self.member(), %message, "postmaster runs but refuses connections");
                        return Ok(LocalState {
                            server: ServerState::Unavailable,
                            upstream,
                            ..LocalState::empty()
                        });
                    }
                }
            }
        }
        let control = self.controldata(op).await?;
        // A base backup or a rewound copy (backup_label present) keeps the
        // source's "in production"/"in archive recovery" state: it is not a
        // crash, and it starts (in recovery) like a clean shutdown.
        let directory = if control.clean() || self.path("backup_label").exists() {
            DataDirectoryState::CleanShutdown
        } else {
            DataDirectoryState::Crashed
        };
        let position = Some(control.position());
        let wal = if control.in_recovery() {
            WalPositions {
                replayed: position,
                ..WalPositions::default()
            }
        } else {
            WalPositions {
                flush: position,
                ..WalPositions::default()
            }
        };
        Ok(LocalState {
            server: ServerState::NotRunning(directory),
            timeline: Some(control.timeline()),
            system_id: Some(control.system_id),
            wal,
            upstream,
            replication: Vec::new(),
            synchronous_standby_names: None,
            receiving: false,
        })
    }

    async fn observe_running(
        &self,
        client: &Client,
        upstream: Option<Upstream>,
    ) -> Result<LocalState, PostgresError> {
        let op = Operation::Observe;
        let context = "reading the server state";
        let statements = sql::simple(
            client,
            op,
            context,
            sql::OBSERVE_SQL,
            self.config.timeouts.observe,
        )
        .await?;
        let mut statements = statements.into_iter();
        let state_rows = statements.next().unwrap_or_default();
        let row = state_rows
            .first()
            .ok_or_else(|| PostgresError::Unexpected {
                operation: op,
                context: context.to_owned(),
                message: "no row".to_owned(),
            })?;
        let role = if sql::text(row, 0) == Some("t") {
            PgRole::Replica
        } else {
            PgRole::Primary
        };
        let system_id = sql::parsed::<SystemId>(row, 1, op, context)?;
        let timeline = sql::parsed::<u32>(row, 2, op, context)?.map(Timeline);
        let lsn = |index| sql::parsed::<Lsn>(row, index, op, context);
        let wal = WalPositions {
            write: lsn(3)?,
            flush: lsn(4)?,
            received: lsn(5)?,
            replayed: lsn(6)?,
        };
        let sync_names = sql::text(row, 7)
            .unwrap_or_default()
            .parse::<SyncStandbyNames>()?;
        let receiving = sql::text(row, 8) == Some("t");
        let timeline = match role {
            PgRole::Primary => timeline,
            PgRole::Replica => self.replica_timeline(timeline).await,
        };
        let mut replication = Vec::new();
        for row in statements.next().unwrap_or_default() {
            let lsn = |index| sql::parsed::<Lsn>(&row, index, op, "reading pg_stat_replication");
            replication.push(ReplicationConnection {
                application_name: sql::text(&row, 0).unwrap_or_default().to_owned(),
                state: WalSenderState::from(sql::text(&row, 1).unwrap_or_default()),
                sync_state: StandbySyncState::from(sql::text(&row, 2).unwrap_or_default()),
                sent: lsn(3)?,
                write: lsn(4)?,
                flush: lsn(5)?,
                replay: lsn(6)?,
            });
        }
        Ok(LocalState {
            server: ServerState::Running(role),
            timeline,
            system_id,
            wal,
            upstream,
            replication,
            synchronous_standby_names: Some(sync_names),
            receiving,
        })
    }

    /// The timeline a running replica replays on: `IDENTIFY_SYSTEM` over a
    /// local replication connection, or the later of that and `estimate`
    /// (the WAL receiver's timeline while it streams, which it replays
    /// next). When the probe fails (a `pg_hba.conf` without the local
    /// replication line), `estimate` alone: it may lag behind a timeline
    /// switch until the replica's next restartpoint.
    async fn replica_timeline(&self, estimate: Option<Timeline>) -> Option<Timeline> {
        use std::sync::atomic::Ordering;
        let probe = sql::identify_system_timeline(
            &self.config.socket_dir,
            self.config.port,
            &self.config.superuser,
            self.config.timeouts.connect,
        )
        .await;
        match probe {
            Ok(replaying) => {
                if self.timeline_probe_failing.swap(false, Ordering::Relaxed) {
                    tracing::info!(
                        member = self.member(),
                        %replaying,
                        "the replica reports its timeline over a replication connection again"
                    );
                }
                estimate.max(Some(replaying))
            }
            Err(message) => {
                if !self.timeline_probe_failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        member = self.member(),
                        %message,
                        "cannot ask the replica for its timeline over a local replication \
                         connection (pg_hba.conf needs `local replication` for the superuser); \
                         reporting the WAL receiver's or the last restartpoint's timeline, \
                         which lags behind a timeline switch until the next restartpoint"
                    );
                }
                estimate
            }
        }
    }

    async fn bootstrap_inner(&self, spec: &BootstrapSpec) -> Result<SystemId, PostgresError> {
        let op = Operation::Bootstrap;
        self.runner.program(op, "initdb")?;
        self.runner.program(op, "pg_ctl")?;
        if spec.superuser.username != self.config.superuser.username {
            return Err(PostgresError::InvalidConfig {
                reason: format!(
                    "the bootstrap superuser {:?} is not the configured superuser {:?}",
                    spec.superuser.username, self.config.superuser.username
                ),
            });
        }
        for (name, value) in &spec.parameters {
            config::check_parameter(name, value)?;
        }
        if let Some(line) = spec.pg_hba.iter().find(|line| line.contains(['\n', '\r'])) {
            return Err(PostgresError::InvalidConfig {
                reason: format!("pg_hba line {line:?} holds a line break"),
            });
        }
        match self.inspect(op)? {
            DirContents::Absent | DirContents::Empty => {}
            DirContents::Cluster | DirContents::Other => {
                return Err(PostgresError::NotEmpty {
                    operation: op,
                    data_dir: self.data_dir().to_owned(),
                })
            }
        }
        files::create_data_dir(op, self.data_dir(), &self.runner.user)?;
        tracing::info!(member = self.member(), data_dir = %self.data_dir().display(), "bootstrapping a new cluster");
        match self.bootstrap_steps(spec).await {
            Ok(system_id) => Ok(system_id),
            Err(err) => {
                tracing::warn!(member = self.member(), error = %err, "bootstrap failed, removing the new cluster");
                if self.postmaster_pid().is_some() {
                    if let Err(stop) = self.stop_escalating(op, StopMode::Immediate).await {
                        tracing::error!(member = self.member(), error = %stop, "could not stop the failed bootstrap's server; leaving its data directory");
                        return Err(err);
                    }
                }
                files::empty_data_dir(op, self.data_dir())?;
                Err(err)
            }
        }
    }

    async fn bootstrap_steps(&self, spec: &BootstrapSpec) -> Result<SystemId, PostgresError> {
        let op = Operation::Bootstrap;
        let mut args: Vec<OsString> = vec![
            "-D".into(),
            arg(self.data_dir()),
            "-U".into(),
            spec.superuser.username.clone().into(),
            "--data-checksums".into(),
            "--auth-local=trust".into(),
            "--auth-host=scram-sha-256".into(),
            "--no-instructions".into(),
        ];
        args.extend(self.config.initdb_args.iter().map(OsString::from));
        self.runner
            .run(op, "initdb", &args, None, self.config.timeouts.command)
            .await?;

        let mut hba = String::from("# Written by matriarch at bootstrap.\n");
        for line in spec
            .pg_hba
            .iter()
            .cloned()
            .chain(files::default_hba(&spec.replication.username))
        {
            hba.push_str(&line);
            hba.push('\n');
        }
        let user = &self.runner.user;
        files::write_file(op, &self.path("pg_hba.conf"), &hba, 0o600, user)?;
        let conf_path = self.path("postgresql.conf");
        let mut conf = files::read_optional(op, &conf_path)?.unwrap_or_default();
        conf.push_str(&files::render_parameters(&spec.parameters));
        conf.push_str(&files::include_block());
        files::write_file(op, &conf_path, &conf, 0o600, user)?;
        self.write_managed(op)?;
        self.write_upstream(op, None)?;
        self.write_sync(op, &SyncStandbyNames::Off)?;
        self.remove_signals(op)?;
        self.pg_ctl_start(op).await?;

        let client = self
            .connect_local(self.config.timeouts.connect)
            .await
            .map_err(|message| PostgresError::Query {
                operation: op,
                context: "connecting to the new cluster".to_owned(),
                message,
            })?;
        let mut script = String::from(
            "SET log_statement = 'none'; SET log_min_duration_statement = -1; \
             SET log_min_error_statement = 'panic';\n",
        );
        let password = |credentials: &Credentials| match &credentials.password {
            Some(secret) => format!("PASSWORD {}", files::sql_literal(secret.expose())),
            None => "PASSWORD NULL".to_owned(),
        };
        if spec.superuser.password.is_some() {
            script.push_str(&format!(
                "ALTER ROLE {} WITH {};\n",
                files::sql_ident(&spec.superuser.username),
                password(&spec.superuser)
            ));
        }
        script.push_str(&format!(
            "CREATE ROLE {} WITH REPLICATION LOGIN {};\n",
            files::sql_ident(&spec.replication.username),
            password(&spec.replication)
        ));
        if let Some(rewind) = &spec.rewind {
            let name = files::sql_ident(&rewind.username);
            script.push_str(&format!(
                "CREATE ROLE {name} WITH LOGIN {};\n\
                 GRANT EXECUTE ON FUNCTION pg_catalog.pg_ls_dir(text, boolean, boolean) TO {name};\n\
                 GRANT EXECUTE ON FUNCTION pg_catalog.pg_stat_file(text, boolean) TO {name};\n\
                 GRANT EXECUTE ON FUNCTION pg_catalog.pg_read_binary_file(text) TO {name};\n\
                 GRANT EXECUTE ON FUNCTION pg_catalog.pg_read_binary_file(text, bigint, bigint, boolean) TO {name};\n\
                 GRANT pg_checkpoint TO {name};\n",
                password(rewind)
            ));
        }
        // The script holds passwords: its errors must not echo it.
        sql::simple(
            &client,
            op,
            "creating the superuser password, the replication and the rewind roles",
            &script,
            self.config.timeouts.command,
        )
        .await
        .map_err(|err| match err {
            PostgresError::Query {
                operation,
                context,
                message,
            } => PostgresError::Query {
                operation,
                context,
                message: message.lines().next().unwrap_or_default().to_owned(),
            },
            other => other,
        })?;
        let row = sql::one_row(
            &client,
            op,
            "reading the system identifier",
            "SELECT system_identifier FROM pg_control_system()",
            self.config.timeouts.connect,
        )
        .await?;
        let system_id = sql::parsed::<SystemId>(&row, 0, op, "reading the system identifier")?
            .ok_or_else(|| PostgresError::Unexpected {
                operation: op,
                context: "reading the system identifier".to_owned(),
                message: "NULL".to_owned(),
            })?;
        tracing::info!(member = self.member(), %system_id, "bootstrapped a new cluster");
        Ok(system_id)
    }

    async fn clone_inner(&self, source: &Upstream) -> Result<(), PostgresError> {
        let op = Operation::CloneReplica;
        self.runner.program(op, "pg_basebackup")?;
        self.runner.program(op, "pg_controldata")?;
        match self.inspect(op)? {
            DirContents::Absent | DirContents::Empty => {}
            DirContents::Cluster | DirContents::Other => {
                return Err(PostgresError::NotEmpty {
                    operation: op,
                    data_dir: self.data_dir().to_owned(),
                })
            }
        }
        // Checked before anything is written, so a bad upstream leaves no trace.
        self.check_upstream(source)?;
        files::create_data_dir(op, self.data_dir(), &self.runner.user)?;
        tracing::info!(member = self.member(), source = %source.member, "cloning a replica with pg_basebackup");
        match self.clone_steps(source).await {
            Ok(()) => {
                self.set_cloned_from(Some(source.member.clone()));
                Ok(())
            }
            Err(err) => {
                tracing::warn!(member = self.member(), error = %err, "clone failed, removing the partial copy");
                files::empty_data_dir(op, self.data_dir())?;
                Err(err)
            }
        }
    }

    async fn clone_steps(&self, source: &Upstream) -> Result<(), PostgresError> {
        let op = Operation::CloneReplica;
        if let Some(found) = self.ensure_slot(op, source).await? {
            self.check_system_id(op, found, || {
                format!(
                    "clone source {} ({}:{})",
                    source.member, source.host, source.port
                )
            })?;
        }
        let args: Vec<OsString> = vec![
            "-D".into(),
            arg(self.data_dir()),
            "-d".into(),
            self.program_conninfo(source, &self.config.replication, " basebackup")
                .into(),
            "-X".into(),
            "stream".into(),
            "-c".into(),
            "fast".into(),
            "-S".into(),
            self.config.member.slot_name().into(),
            "--no-password".into(),
        ];
        self.runner
            .run(
                op,
                "pg_basebackup",
                &args,
                self.config.replication.password.as_ref(),
                self.config.timeouts.clone,
            )
            .await?;
        let control = self.controldata(op).await?;
        self.check_system_id(op, control.system_id, || {
            format!(
                "clone source {} ({}:{})",
                source.member, source.host, source.port
            )
        })?;
        self.write_managed(op)?;
        self.write_upstream(op, Some(source))?;
        self.write_sync(op, &SyncStandbyNames::Off)?;
        self.write_standby_signal(op)?;
        tracing::info!(member = self.member(), source = %source.member, "cloned a replica");
        Ok(())
    }

    async fn start_inner(&self, as_role: &StartAs) -> Result<(), PostgresError> {
        let op = Operation::Start;
        self.runner.program(op, "pg_ctl")?;
        self.runner.program(op, "pg_controldata")?;
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

    async fn start_on_running(
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

    async fn promote_inner(&self) -> Result<Timeline, PostgresError> {
        let op = Operation::Promote;
        self.require_cluster(op)?;
        let (role, client) = match self.live(op).await? {
            Live::Running(role, client) => (role, client),
            Live::NotRunning | Live::Unavailable => {
                return Err(PostgresError::NotRunning { operation: op })
            }
        };
        let timeout = self.config.timeouts.promote;
        if role == PgRole::Primary {
            return self.primary_timeline(op, &client).await;
        }
        let before = self.observe_running(&client, None).await?.timeline;
        tracing::info!(member = self.member(), "promoting");
        // pg_promote(wait => true) looks every 100 ms; asking without waiting
        // and watching recovery end ourselves tells the caller (and so the
        // REST health checks and the router) within a few milliseconds.
        let row = sql::one_row(
            &client,
            op,
            "pg_promote()",
            "SELECT pg_promote(false)",
            self.config.timeouts.connect,
        )
        .await?;
        if sql::text(&row, 0) != Some("t") {
            return Err(PostgresError::Unexpected {
                operation: op,
                context: "pg_promote(false)".to_owned(),
                message: "PostgreSQL did not accept the promotion request".to_owned(),
            });
        }
        let deadline = Instant::now() + timeout;
        loop {
            let row = sql::one_row(
                &client,
                op,
                "waiting for the end of recovery",
                "SELECT pg_is_in_recovery()",
                self.config.timeouts.connect,
            )
            .await?;
            if sql::text(&row, 0) == Some("f") {
                break;
            }
            if Instant::now() >= deadline {
                return Err(PostgresError::Timeout {
                    operation: op,
                    after: timeout,
                });
            }
            tokio::time::sleep(PROMOTE_POLL).await;
        }
        self.write_upstream(op, None)?;
        let timeline = self.primary_timeline(op, &client).await?;
        if let Some(before) = before {
            if timeline <= before {
                return Err(PostgresError::Unexpected {
                    operation: op,
                    context: "after pg_promote()".to_owned(),
                    message: format!("timeline {timeline} is not newer than {before}"),
                });
            }
        }
        // pg_rewind (before PostgreSQL 16) reads the source's timeline from its
        // last checkpoint. `rewind` checkpoints its source itself; this one,
        // off the promotion's path, spares that wait later.
        let member = self.member().to_owned();
        tokio::spawn(async move {
            if let Err(err) = sql::simple(&client, op, "CHECKPOINT", "CHECKPOINT", timeout).await {
                tracing::warn!(member, error = %err, "checkpoint after promotion failed");
            }
        });
        tracing::info!(member = self.member(), %timeline, "promoted");
        Ok(timeline)
    }

    async fn primary_timeline(
        &self,
        op: Operation,
        client: &Client,
    ) -> Result<Timeline, PostgresError> {
        let context = "reading the timeline";
        let row = sql::one_row(
            client,
            op,
            context,
            sql::PRIMARY_TIMELINE_SQL,
            self.config.timeouts.connect,
        )
        .await?;
        sql::parsed::<u32>(&row, 0, op, context)?
            .map(Timeline)
            .ok_or_else(|| PostgresError::Unexpected {
                operation: op,
                context: context.to_owned(),
                message: "NULL".to_owned(),
            })
    }

    async fn demote_inner(
        &self,
        mode: StopMode,
        follow: Option<&Upstream>,
    ) -> Result<(), PostgresError> {
        let op = Operation::Demote;
        // Stopping writes comes first: a running postmaster is stopped even
        // if the data directory cannot be inspected or queried.
        let live = if self.postmaster_pid().is_some() {
            match self.live(op).await {
                Ok(live) => live,
                Err(err) => {
                    tracing::warn!(member = self.member(), error = %err, "cannot tell the server's role; stopping it");
                    Live::Unavailable
                }
            }
        } else {
            match self.inspect(op)? {
                DirContents::Cluster => Live::NotRunning,
                DirContents::Absent | DirContents::Empty if follow.is_none() => return Ok(()),
                DirContents::Absent | DirContents::Empty | DirContents::Other => {
                    return Err(PostgresError::NotInitialized {
                        operation: op,
                        data_dir: self.data_dir().to_owned(),
                    })
                }
            }
        };
        match live {
            Live::Running(PgRole::Replica, client) => {
                if let Some(upstream) = follow {
                    return self.follow_running(op, upstream, &client).await;
                }
                drop(client);
                self.stop_escalating(op, mode).await?;
            }
            Live::Running(PgRole::Primary, client) => {
                drop(client);
                tracing::info!(member = self.member(), "demoting the primary");
                self.stop_escalating(op, mode).await?;
            }
            Live::Unavailable => self.stop_escalating(op, mode).await?,
            Live::NotRunning => {}
        }
        // Stopped: from here on it can only come back in recovery.
        self.write_standby_signal(op)?;
        match follow {
            None => Ok(()),
            Some(upstream) => {
                self.start_inner(&StartAs::ReplicaOf(upstream.clone()))
                    .await
            }
        }
    }

    async fn follow_inner(&self, upstream: &Upstream) -> Result<(), PostgresError> {
        let op = Operation::Follow;
        self.require_cluster(op)?;
        self.check_upstream(upstream)?;
        match self.live(op).await? {
            Live::Running(PgRole::Primary, _) => Err(PostgresError::RoleConflict {
                operation: op,
                running_as: PgRole::Primary,
            }),
            Live::Running(PgRole::Replica, client) => {
                self.follow_running(op, upstream, &client).await
            }
            Live::Unavailable => Err(PostgresError::NotRunning { operation: op }),
            Live::NotRunning => {
                self.write_upstream(op, Some(upstream))?;
                self.write_standby_signal(op)
            }
        }
    }

    /// Takes a crashed data directory through crash recovery in single-user
    /// mode (without `standby.signal`, which single-user mode refuses), so
    /// that it ends with a clean shutdown as pg_rewind requires.
    async fn crash_recovery(&self, op: Operation) -> Result<(), PostgresError> {
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
    async fn prepare_source(
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
        let row = sql::one_row(
            &client,
            op,
            context,
            "SELECT pg_is_in_recovery(), (SELECT system_identifier FROM pg_control_system())",
            self.config.timeouts.connect,
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

    async fn rewind_inner(&self, source: &Upstream) -> Result<RewindOutcome, PostgresError> {
        let op = Operation::Rewind;
        self.runner.program(op, "pg_rewind")?;
        self.runner.program(op, "pg_controldata")?;
        self.runner.program(op, "postgres")?;
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
        let output = self
            .runner
            .output(
                op,
                "pg_rewind",
                &dry_run,
                credentials.password.as_ref(),
                timeout,
            )
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

    async fn current_sync(&self, client: &Client) -> Result<SyncStandbyNames, PostgresError> {
        let row = sql::one_row(
            client,
            Operation::SetSynchronousStandbyNames,
            "reading synchronous_standby_names",
            "SELECT current_setting('synchronous_standby_names')",
            self.config.timeouts.connect,
        )
        .await?;
        sql::text(&row, 0)
            .unwrap_or_default()
            .parse::<SyncStandbyNames>()
    }

    async fn set_sync_inner(&self, names: &SyncStandbyNames) -> Result<(), PostgresError> {
        let op = Operation::SetSynchronousStandbyNames;
        names.validate()?;
        self.require_cluster(op)?;
        let path = self.path(SYNC_CONF_FILE);
        let wanted = files::render_sync(names);
        let unchanged = files::read_optional(op, &path)?.as_deref() == Some(wanted.as_str());
        let client = match self.live(op).await? {
            Live::Running(_, client) => Some(client),
            Live::NotRunning | Live::Unavailable => None,
        };
        let Some(client) = client else {
            if !unchanged {
                self.write_sync(op, names)?;
            }
            return Ok(());
        };
        if unchanged && self.current_sync(&client).await? == *names {
            return Ok(());
        }
        self.write_sync(op, names)?;
        sql::simple(
            &client,
            op,
            "reloading the configuration",
            "SELECT pg_reload_conf()",
            self.config.timeouts.connect,
        )
        .await?;
        tracing::info!(member = self.member(), synchronous_standby_names = %names, "set synchronous_standby_names");
        let deadline = Instant::now() + self.config.timeouts.reload;
        loop {
            // A new session sees the postmaster's configuration once it has
            // processed the reload.
            let probe = self
                .connect_local(self.config.timeouts.connect)
                .await
                .map_err(|message| PostgresError::Query {
                    operation: op,
                    context: "connecting to check the reload".to_owned(),
                    message,
                })?;
            if self.current_sync(&probe).await? == *names {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(PostgresError::Timeout {
                    operation: op,
                    after: self.config.timeouts.reload,
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

/// Runs `future` within `timeout`, as the operation `op`.
async fn within<T>(
    op: Operation,
    timeout: Duration,
    future: impl std::future::Future<Output = Result<T, PostgresError>>,
) -> Result<T, PostgresError> {
    tokio::time::timeout(timeout, future)
        .await
        .unwrap_or(Err(PostgresError::Timeout {
            operation: op,
            after: timeout,
        }))
}

#[async_trait]
impl Postgres for PgController {
    async fn observe(&self) -> Result<LocalState, PostgresError> {
        let timeout = self.config.timeouts.observe;
        within(Operation::Observe, timeout, self.observe_inner()).await
    }

    async fn bootstrap(&self, spec: &BootstrapSpec) -> Result<SystemId, PostgresError> {
        // Each step has its own deadline; the whole must not leave a half
        // cluster behind, so it is not cut short from outside.
        self.bootstrap_inner(spec).await
    }

    async fn clone_replica(&self, source: &Upstream) -> Result<(), PostgresError> {
        self.clone_inner(source).await
    }

    async fn start(&self, as_role: StartAs) -> Result<(), PostgresError> {
        let started = self.start_inner(&as_role).await;
        if started.is_ok() {
            self.set_cloned_from(None);
        }
        started
    }

    async fn stop(&self, mode: StopMode) -> Result<(), PostgresError> {
        let op = Operation::Stop;
        if self.postmaster_pid().is_none() {
            return Ok(());
        }
        self.inspect(op)?;
        self.pg_ctl_stop(op, mode, self.config.timeouts.stop).await
    }

    async fn promote(&self) -> Result<Timeline, PostgresError> {
        self.promote_inner().await
    }

    async fn demote(&self, mode: StopMode, follow: Option<Upstream>) -> Result<(), PostgresError> {
        self.demote_inner(mode, follow.as_ref()).await
    }

    async fn follow(&self, upstream: &Upstream) -> Result<(), PostgresError> {
        self.follow_inner(upstream).await
    }

    async fn rewind(&self, source: &Upstream) -> Result<RewindOutcome, PostgresError> {
        self.rewind_inner(source).await
    }

    async fn set_synchronous_standby_names(
        &self,
        names: &SyncStandbyNames,
    ) -> Result<(), PostgresError> {
        let timeout = self.config.timeouts.reload + self.config.timeouts.connect * 2;
        within(
            Operation::SetSynchronousStandbyNames,
            timeout,
            self.set_sync_inner(names),
        )
        .await
    }
}
