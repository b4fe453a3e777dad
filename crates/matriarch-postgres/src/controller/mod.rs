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

mod auth_files;
mod auth_lines;
mod backup;
mod bootstrap;
mod clone;
mod config;
mod disk_space;
mod files;
mod managed_files;
mod observe;
mod process;
mod promote;
mod query;
mod replication;
mod restore;
mod rewind;
mod slots;
mod sql;
mod standby_source;
mod start_stop;
mod watched;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use matriarch_model::{DesiredSlots, MemberName, ParameterValue, SlotReport, SystemId, Timeline};
use tokio_postgres::Client;

pub use config::{
    check_parameter, PgControllerConfig, PgTimeouts, DEFAULT_BIN_DIR, DEFAULT_OS_USER,
};
pub use files::{
    check_cluster_data_dir, empty_cluster_data_dir, read_system_id, MANAGED_CONF_FILE,
    SYNC_CONF_FILE, UPSTREAM_CONF_FILE,
};

use self::files::{ControlData, DirContents};
use self::process::{arg, Runner};
pub use self::process::{PostmasterLauncher, PostmasterSpec};
use self::sql::Target;
use crate::bootstrap::BootstrapSpec;
use crate::error::{Operation, PostgresError};
use crate::role::PgRole;
use crate::state::LocalState;
use crate::sync_standby::SyncStandbyNames;
use crate::upstream::Upstream;
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
    /// The `pg_hba.conf`/`pg_ident.conf` lines in force: the configuration's
    /// at first, then whatever [`PgController::set_auth_lines`] last accepted.
    auth_lines: std::sync::RwLock<auth_lines::AuthLines>,
    /// The cluster's (dynamic configuration's) `pg_hba`/`pg_ident` lines,
    /// used for a file whose node lines are empty.
    cluster_auth_lines: std::sync::RwLock<auth_lines::AuthLines>,
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
    /// The cluster's system identifier to check data directories and clone
    /// sources against: the configuration's at first, then what the engine
    /// last read from the `initialize` key.
    cluster_system_id: std::sync::RwLock<Option<SystemId>>,
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
            auth_lines: std::sync::RwLock::new(auth_lines::AuthLines {
                pg_hba: config.pg_hba.clone(),
                pg_ident: config.pg_ident.clone(),
            }),
            cluster_auth_lines: std::sync::RwLock::new(auth_lines::AuthLines::default()),
            cloned_from: std::sync::Mutex::new(None),
            timeline_probe_failing: std::sync::atomic::AtomicBool::new(false),
            cluster_system_id: std::sync::RwLock::new(config.expected_system_id),
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
                let rows = self
                    .query(
                        &client,
                        op,
                        "reading pg_settings.pending_restart",
                        "SELECT name FROM pg_settings WHERE pending_restart ORDER BY name",
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
                self.reload_conf(&client, op).await?;
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

    /// [`PostgresError::NotEmpty`] unless the data directory is absent or
    /// empty: bootstrap and clone never write over anything.
    fn require_empty_data_dir(&self, op: Operation) -> Result<(), PostgresError> {
        match self.inspect(op)? {
            DirContents::Absent | DirContents::Empty => Ok(()),
            DirContents::Cluster | DirContents::Other => Err(PostgresError::NotEmpty {
                operation: op,
                data_dir: self.data_dir().to_owned(),
            }),
        }
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
        let expected = *self
            .cluster_system_id
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match expected {
            Some(expected) if expected != found => Err(PostgresError::SystemIdMismatch {
                operation: op,
                context: context(),
                expected,
                found,
            }),
            _ => Ok(()),
        }
    }

    /// Asks the running server to reload its configuration files.
    async fn reload_conf(&self, client: &Client, op: Operation) -> Result<(), PostgresError> {
        self.query(
            client,
            op,
            "reloading the configuration",
            "SELECT pg_reload_conf()",
        )
        .await?;
        Ok(())
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
        let row = self
            .query_row(
                &client,
                op,
                "reading pg_is_in_recovery()",
                "SELECT pg_is_in_recovery()",
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

    async fn disk_full(&self) -> Option<PostgresError> {
        self.disk_full_now()
    }

    async fn rewind(&self, source: &Upstream) -> Result<RewindOutcome, PostgresError> {
        // Crash recovery before pg_rewind, or pg_rewind itself, may fail
        // for lack of space: said so, not as a failed program.
        self.rewind_inner(source)
            .await
            .map_err(|error| self.no_space_cause(error))
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

    async fn reconcile_slots(&self, desired: &DesiredSlots) -> Result<SlotReport, PostgresError> {
        let timeout = self.config.timeouts.connect * 4;
        within(
            Operation::ReconcileSlots,
            timeout,
            self.reconcile_slots_inner(desired),
        )
        .await
    }

    fn set_cluster_system_id(&self, system_id: SystemId) {
        *self
            .cluster_system_id
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(system_id);
    }
}
