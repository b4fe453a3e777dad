//! Callbacks like Patroni's, and the [`Postgres`] wrapper that runs them
//! around the engine's PostgreSQL operations.
//!
//! - `on_start`, `on_stop`, `on_role_change`, `on_restart`, `on_reload` are
//!   asynchronous: spawned, not waited for; each is called as
//!   `<cmd> <action> <role> <scope>` (Patroni's arguments), e.g.
//!   `on_role_change on_role_change primary pg-main`.
//! - `pre_promote` is synchronous: it runs (with the same arguments, action
//!   `pre_promote`, role `primary`) before a promotion, and a non-zero exit
//!   (or no exit within [`PRE_PROMOTE_TIMEOUT`]) cancels it: the wrapped
//!   `promote` returns an error and the engine tries again next loop.
//!
//! `on_role_change` is driven by the engine's status (see
//! [`watch_role_changes`]); `on_start`/`on_stop` by the wrapper.
//! `on_restart` replaces both around a restart the agent performs (as
//! Patroni's): the REST API marks the restart with
//! [`Callbacks::restart_in_progress`], and the wrapper calls `on_restart`
//! once PostgreSQL has started again. `on_reload` follows every reload of
//! PostgreSQL's configuration the agent makes ([`Callbacks::reloaded`]).
//!
//! Callbacks run with the agent's environment minus its secrets (passwords,
//! tokens, secret keys: see [`is_secret_variable`]).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use matriarch_ha::{EngineRole, StatusHandle};
use matriarch_model::{SystemId, Timeline};
use matriarch_postgres::{
    BootstrapSpec, LocalState, Operation, PgController, Postgres, PostgresError, RewindOutcome,
    StartAs, StopMode, SyncStandbyNames, Upstream,
};
use tracing::{info, warn};

use crate::config::CallbacksConfig;

/// How long `pre_promote` may run.
pub(crate) const PRE_PROMOTE_TIMEOUT: Duration = Duration::from_secs(60);

/// How long an asynchronous callback may run before it is killed.
const CALLBACK_TIMEOUT: Duration = Duration::from_secs(600);

/// The configured callback commands, and what their clones (the engine's
/// wrapper, the REST API, the parameter applier) share.
#[derive(Debug, Clone, Default)]
pub(crate) struct Callbacks {
    config: CallbacksConfig,
    scope: String,
    shared: Arc<SharedState>,
}

/// The state the callbacks' arguments and choice depend on.
#[derive(Debug)]
struct SharedState {
    /// The role PostgreSQL last started or was promoted in.
    role: Mutex<&'static str>,
    /// A restart the agent performs is under way: its stop and start call
    /// `on_restart` in place of `on_stop` and `on_start`.
    restarting: AtomicBool,
}

impl Default for SharedState {
    fn default() -> Self {
        SharedState {
            role: Mutex::new("replica"),
            restarting: AtomicBool::new(false),
        }
    }
}

/// Marks a restart the agent performs while it lives (see
/// [`Callbacks::restart_in_progress`]).
pub(crate) struct RestartInProgress(Arc<SharedState>);

impl Drop for RestartInProgress {
    fn drop(&mut self) {
        self.0.restarting.store(false, Ordering::SeqCst);
    }
}

impl Callbacks {
    /// Callbacks for the cluster `scope`.
    pub(crate) fn new(config: CallbacksConfig, scope: impl Into<String>) -> Self {
        Callbacks {
            config,
            scope: scope.into(),
            shared: Arc::default(),
        }
    }

    fn command(&self, action: &str) -> Option<&PathBuf> {
        match action {
            "on_start" => self.config.on_start.as_ref(),
            "on_stop" => self.config.on_stop.as_ref(),
            "on_role_change" => self.config.on_role_change.as_ref(),
            "on_restart" => self.config.on_restart.as_ref(),
            "on_reload" => self.config.on_reload.as_ref(),
            "pre_promote" => self.config.pre_promote.as_ref(),
            _ => None,
        }
    }

    fn set_role(&self, role: &'static str) {
        if let Ok(mut guard) = self.shared.role.lock() {
            *guard = role;
        }
    }

    fn role(&self) -> &'static str {
        self.shared.role.lock().map_or("replica", |g| *g)
    }

    /// Marks the restart the caller is about to have the engine perform,
    /// until the returned guard drops: its stop calls no `on_stop`, its
    /// start calls `on_restart` in place of `on_start` (Patroni's order).
    pub(crate) fn restart_in_progress(&self) -> RestartInProgress {
        self.shared.restarting.store(true, Ordering::SeqCst);
        RestartInProgress(Arc::clone(&self.shared))
    }

    fn restarting(&self) -> bool {
        self.shared.restarting.load(Ordering::SeqCst)
    }

    /// The agent has just reloaded PostgreSQL's configuration: calls
    /// `on_reload` with the role PostgreSQL runs in.
    pub(crate) fn reloaded(&self) {
        self.fire("on_reload", self.role());
    }

    /// Spawns the `action` callback (if configured) without waiting for it.
    pub(crate) fn fire(&self, action: &'static str, role: &'static str) {
        let Some(cmd) = self.command(action).cloned() else {
            return;
        };
        let scope = self.scope.clone();
        tokio::spawn(async move {
            info!(callback = action, %role, command = %cmd.display(), "running callback");
            let child = callback_command(&cmd)
                .args([action, role, scope.as_str()])
                .kill_on_drop(true)
                .spawn();
            match child {
                Ok(mut child) => match tokio::time::timeout(CALLBACK_TIMEOUT, child.wait()).await {
                    Ok(Ok(status)) if status.success() => {}
                    Ok(Ok(status)) => {
                        warn!(callback = action, %status, "callback failed")
                    }
                    Ok(Err(error)) => warn!(callback = action, %error, "callback failed"),
                    Err(_) => warn!(callback = action, "callback timed out: killed"),
                },
                Err(error) => {
                    warn!(callback = action, command = %cmd.display(), %error, "cannot run callback")
                }
            }
        });
    }

    /// Runs `pre_promote` and waits: `Ok` when it is not configured or
    /// exited 0.
    pub(crate) async fn pre_promote(&self) -> Result<(), String> {
        let Some(cmd) = self.command("pre_promote") else {
            return Ok(());
        };
        info!(command = %cmd.display(), "running pre_promote");
        let child = callback_command(cmd)
            .args(["pre_promote", "primary", self.scope.as_str()])
            .kill_on_drop(true)
            .status();
        match tokio::time::timeout(PRE_PROMOTE_TIMEOUT, child).await {
            Ok(Ok(status)) if status.success() => Ok(()),
            Ok(Ok(status)) => Err(format!(
                "pre_promote {} exited with {status}",
                cmd.display()
            )),
            Ok(Err(error)) => Err(format!("pre_promote {}: {error}", cmd.display())),
            Err(_) => Err(format!(
                "pre_promote {} did not finish within {PRE_PROMOTE_TIMEOUT:?}",
                cmd.display()
            )),
        }
    }
}

/// A callback's command: matriarch's environment without its secrets (see
/// [`is_secret_variable`]): a callback is a user's script, and needs no
/// password of the agent's (the agent's environment may hold
/// `MATRIARCH_SUPERUSER_PASSWORD`, `PGPASSWORD`, AWS keys ...).
fn callback_command(program: &std::path::Path) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(program);
    command
        .env_clear()
        .envs(std::env::vars_os().filter(|(name, _)| !is_secret_variable(name)));
    command
}

/// Whether an environment variable holds a secret, by its name: passwords,
/// secrets, tokens, private keys, credentials (`*_PASSWORD`, `PGPASSWORD`,
/// `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `VAULT_TOKEN`, ...).
fn is_secret_variable(name: &std::ffi::OsStr) -> bool {
    let name = name.to_string_lossy().to_ascii_uppercase();
    [
        "PASSWORD",
        "PASSWD",
        "SECRET",
        "TOKEN",
        "PRIVATE_KEY",
        "CREDENTIAL",
    ]
    .iter()
    .any(|word| name.contains(word))
        || name == "AWS_ACCESS_KEY_ID"
}

/// Calls `on_role_change` when the engine's settled role changes between
/// leader and replica (not on the first role a start settles in).
pub(crate) async fn watch_role_changes(mut status: StatusHandle, callbacks: Callbacks) {
    let settled = |role: EngineRole| match role {
        EngineRole::Leader => Some("primary"),
        EngineRole::Replica => Some("replica"),
        _ => None,
    };
    let mut last = settled(status.get().role);
    while status.changed().await {
        let Some(now) = settled(status.get().role) else {
            continue;
        };
        if last.is_some_and(|last| last != now) {
            callbacks.fire("on_role_change", now);
        }
        last = Some(now);
    }
}

/// The engine's [`Postgres`]: the [`PgController`] plus the callbacks, and
/// one lock that serializes every changing operation with the REST API's
/// (restart, reinitialize).
pub(crate) struct HookedPostgres {
    inner: Arc<PgController>,
    callbacks: Callbacks,
    ops: Arc<tokio::sync::Mutex<()>>,
}

impl HookedPostgres {
    /// Wraps `inner`; `ops` is shared with the REST API.
    pub(crate) fn new(
        inner: Arc<PgController>,
        callbacks: Callbacks,
        ops: Arc<tokio::sync::Mutex<()>>,
    ) -> Self {
        HookedPostgres {
            inner,
            callbacks,
            ops,
        }
    }

    fn set_role(&self, role: &'static str) {
        self.callbacks.set_role(role);
    }

    fn role(&self) -> &'static str {
        self.callbacks.role()
    }

    async fn run_pre_promote(&self) -> Result<(), PostgresError> {
        self.callbacks.pre_promote().await.map_err(|reason| {
            warn!(%reason, "pre_promote cancelled the promotion");
            PostgresError::Unexpected {
                operation: Operation::Promote,
                context: "pre_promote callback".to_owned(),
                message: reason,
            }
        })
    }
}

#[async_trait]
impl Postgres for HookedPostgres {
    async fn observe(&self) -> Result<LocalState, PostgresError> {
        self.inner.observe().await
    }

    async fn bootstrap(&self, spec: &BootstrapSpec) -> Result<SystemId, PostgresError> {
        let _ops = self.ops.lock().await;
        let id = self.inner.bootstrap(spec).await?;
        self.set_role("primary");
        self.callbacks.fire("on_start", "primary");
        Ok(id)
    }

    /// Clones; a stopped data directory that is not empty is emptied in
    /// place first, and only when it holds a PostgreSQL cluster.
    ///
    /// The engine clones a non-empty directory only after pg_rewind said it
    /// cannot repair it ("cloning anew"), while the controller's contract
    /// refuses a non-empty one. Emptying in place (rather than renaming to
    /// a sibling) works on a mount point and needs no second copy's worth of
    /// disk; [`matriarch_postgres::empty_cluster_data_dir`] refuses anything
    /// that is not a PostgreSQL cluster (somebody's own files). The engine
    /// has already refused a cluster with another system identifier than
    /// the DCS `initialize` one before it gets here.
    async fn clone_replica(&self, source: &Upstream) -> Result<(), PostgresError> {
        let _ops = self.ops.lock().await;
        let data_dir = self.inner.config().data_dir.clone();
        let not_empty = std::fs::read_dir(&data_dir).is_ok_and(|mut d| d.next().is_some());
        if not_empty {
            matriarch_postgres::check_cluster_data_dir(Operation::CloneReplica, &data_dir, None)?;
            let state = self.inner.observe().await?;
            if state.role().is_some()
                || matches!(state.server, matriarch_postgres::ServerState::Unavailable)
            {
                return Err(PostgresError::StillRunning {
                    operation: Operation::CloneReplica,
                });
            }
            let expected = state.system_id;
            matriarch_postgres::empty_cluster_data_dir(
                Operation::CloneReplica,
                &data_dir,
                expected,
            )?;
            warn!(data_dir = %data_dir.display(), "emptied the unrepairable data directory in place before cloning anew");
        }
        self.inner.clone_replica(source).await
    }

    async fn start(&self, as_role: StartAs) -> Result<(), PostgresError> {
        let _ops = self.ops.lock().await;
        let before = self.inner.observe().await.ok();
        let was_running = before.as_ref().is_some_and(|s| s.role().is_some());
        if as_role == StartAs::Primary {
            // Starting a replica's data directory as primary ends recovery:
            // a promotion, so pre_promote decides.
            let data_dir = &self.inner.config().data_dir;
            if data_dir.join("standby.signal").exists() {
                self.run_pre_promote().await?;
            }
        }
        self.inner.start(as_role.clone()).await?;
        let role = if as_role == StartAs::Primary {
            "primary"
        } else {
            "replica"
        };
        self.set_role(role);
        if !was_running {
            let action = if self.callbacks.restarting() {
                "on_restart"
            } else {
                "on_start"
            };
            self.callbacks.fire(action, role);
        }
        Ok(())
    }

    async fn stop(&self, mode: StopMode) -> Result<(), PostgresError> {
        let _ops = self.ops.lock().await;
        let was_running = self
            .inner
            .observe()
            .await
            .ok()
            .is_some_and(|s| s.role().is_some());
        self.inner.stop(mode).await?;
        if was_running && !self.callbacks.restarting() {
            self.callbacks.fire("on_stop", self.role());
        }
        Ok(())
    }

    async fn promote(&self) -> Result<Timeline, PostgresError> {
        let _ops = self.ops.lock().await;
        let state = self.inner.observe().await?;
        if state.role() != Some(matriarch_postgres::PgRole::Primary) {
            self.run_pre_promote().await?;
        }
        let timeline = self.inner.promote().await?;
        self.set_role("primary");
        Ok(timeline)
    }

    async fn demote(&self, mode: StopMode, follow: Option<Upstream>) -> Result<(), PostgresError> {
        let _ops = self.ops.lock().await;
        let follows = follow.is_some();
        self.inner.demote(mode, follow).await?;
        let previous = self.role();
        self.set_role("replica");
        if !follows {
            self.callbacks.fire("on_stop", previous);
        }
        Ok(())
    }

    async fn follow(&self, upstream: &Upstream) -> Result<(), PostgresError> {
        let _ops = self.ops.lock().await;
        self.inner.follow(upstream).await
    }

    async fn rewind(&self, source: &Upstream) -> Result<RewindOutcome, PostgresError> {
        let _ops = self.ops.lock().await;
        self.inner.rewind(source).await
    }

    async fn set_synchronous_standby_names(
        &self,
        names: &SyncStandbyNames,
    ) -> Result<(), PostgresError> {
        let _ops = self.ops.lock().await;
        self.inner.set_synchronous_standby_names(names).await
    }

    async fn reconcile_slots(
        &self,
        desired: &matriarch_model::DesiredSlots,
    ) -> Result<matriarch_model::SlotReport, PostgresError> {
        let _ops = self.ops.lock().await;
        self.inner.reconcile_slots(desired).await
    }

    fn set_cluster_system_id(&self, system_id: SystemId) {
        self.inner.set_cluster_system_id(system_id);
    }
}

#[cfg(test)]
#[path = "hooks_env_tests.rs"]
mod env_tests;
