//! `matriarch run`: wires the configured DCS, PostgreSQL controller, routers,
//! write fence, peer probe and REST API around the HA engine, and handles
//! signals.
//!
//! - SIGTERM / SIGINT: the engine steps down (stops PostgreSQL cleanly,
//!   releases the leader lock at once so a replica takes over without
//!   waiting for the ttl, removes its member record), then the process exits.
//! - SIGHUP (and `POST /reload`): the configuration file is read again; the
//!   log level, the tags and `postgresql.parameters` apply at once, every
//!   other changed section is reported as needing a restart.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use matriarch_dcs::{Dcs, SystemClock};
use matriarch_ha::{Engine, EngineSettings, NodeSettings};
use matriarch_model::Initialize;
use matriarch_postgres::{BootstrapSpec, Credentials, PgController, PgControllerConfig};
use tokio::signal::unix::{signal, SignalKind};
use tracing::{error, info, warn, Instrument};

use crate::api::{self, ApiState};
use crate::config::{NodeConfig, Validated, WatchdogMode};
use crate::error::DaemonError;
use crate::fence::{CombinedFence, ProcessFence, SecondFence};
use crate::hooks::{self, Callbacks, HookedPostgres};
use crate::http_client::HttpClient;
use crate::logging::LogHandle;
use crate::params::{self, ParameterStatus};
use crate::probe::HttpPeerProbe;
use crate::watchdog::Watchdog;
use crate::{dcs, router};

/// How long a peer probe or a duplicate-name check waits for an answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// The bound on slow PostgreSQL operations the engine runs (start, promote,
/// rewind); a clone has none (the controller stops one that stalls).
const POSTGRES_TIMEOUT: Duration = Duration::from_secs(300);

fn credentials(role: &crate::config::PgRoleConfig) -> Credentials {
    match &role.password {
        Some(password) => Credentials::new(role.username.clone(), password.expose()),
        None => Credentials::without_password(role.username.clone()),
    }
}

/// Builds the PostgreSQL controller's configuration.
pub(crate) fn controller_config(
    config: &NodeConfig,
    validated: &Validated,
) -> Result<PgControllerConfig, DaemonError> {
    let pg = config.pg()?;
    let auth = &pg.authentication;
    let socket_dir = pg.socket_dir.clone().unwrap_or_else(|| {
        pg.data_dir
            .parent()
            .map_or_else(|| PathBuf::from("/tmp"), Path::to_path_buf)
    });
    let mut pgc = PgControllerConfig::new(
        validated.name.clone(),
        pg.data_dir.clone(),
        validated.pg_listen.1,
        socket_dir,
        credentials(&auth.superuser),
        credentials(&auth.replication),
    );
    if let Some(bin) = &pg.bin_dir {
        pgc.bin_dir = bin.clone();
    }
    pgc.listen_addresses = validated.pg_listen.0.clone();
    pgc.rewind = auth.rewind.as_ref().map(credentials);
    let mut parameters = validated.bootstrap_dcs.postgresql.parameters.clone();
    parameters.extend(config.local_parameters()?);
    pgc.parameters = parameters;
    pgc.scope = config.scope.clone();
    pgc.replica_methods = crate::config::replica_methods::replica_methods(pg)?;
    pgc.timeouts.clone_stall = Duration::from_secs(pg.clone_stall_timeout);
    pgc.pgbackrest = config
        .pgbackrest
        .as_ref()
        .map(|b| b.to_controller(&pg.data_dir, &|var| std::env::var(var).ok()))
        .transpose()?;
    if let Some(user) = &pg.os_user {
        pgc.os_user = user.clone();
    }
    pgc.initdb_args = config.bootstrap.initdb.clone();
    pgc.pg_hba = pg.pg_hba.clone();
    pgc.pg_ident = pg.pg_ident.clone();
    Ok(pgc)
}

/// The lock file of a data directory: `.<name>.matriarch.lock` next to it
/// (in its parent, so emptying or re-creating the data directory keeps it).
fn data_dir_lock_path(data_dir: &Path) -> PathBuf {
    let name = data_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "data".to_owned());
    let parent = data_dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    parent.join(format!(".{name}.matriarch.lock"))
}

/// Takes the exclusive `flock` on the data directory's lock file, held
/// (through the returned file) for the agent's whole life. A second agent
/// started on the same data directory (a copied configuration) is refused
/// here, before it touches the DCS or the PostgreSQL the first one runs.
fn lock_data_dir(data_dir: &Path) -> Result<std::fs::File, DaemonError> {
    use std::io::{Read, Seek, Write};
    let lock = data_dir_lock_path(data_dir);
    let io = |source| DaemonError::DataDirLock {
        lock: lock.clone(),
        source,
    };
    if let Some(parent) = lock.parent() {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock)
        .map_err(io)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            return Err(DaemonError::DataDirLocked {
                data_dir: data_dir.to_owned(),
                lock,
                holder: if holder.is_empty() {
                    "?".to_owned()
                } else {
                    holder.to_owned()
                },
            });
        }
        Err(std::fs::TryLockError::Error(source)) => return Err(io(source)),
    }
    // Our pid, for the message a refused second agent prints.
    file.set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| writeln!(file, "{}", std::process::id()))
        .map_err(io)?;
    Ok(file)
}

/// Refuses to start when a live agent already runs under this member name:
/// `members/<name>` exists and its api_url answers.
async fn check_duplicate_name(
    dcs: &dyn Dcs,
    validated: &Validated,
    http: &HttpClient,
    timeout: Duration,
) -> Result<Option<matriarch_model::SystemId>, DaemonError> {
    let view = match tokio::time::timeout(timeout, dcs.read_view()).await {
        Ok(Ok(view)) => view,
        Ok(Err(error)) => {
            warn!(%error, "DCS unreachable at start: cannot check that the member name is unique");
            return Ok(None);
        }
        Err(_) => {
            warn!("DCS did not answer at start: cannot check that the member name is unique");
            return Ok(None);
        }
    };
    if let Some(Ok(member)) = view.members.get(validated.name.as_str()) {
        let api_url = member.value.api_url.clone();
        if let Ok(response) = http.get(&api_url, PROBE_TIMEOUT).await {
            let answered_name = serde_json::from_slice::<serde_json::Value>(&response.body)
                .ok()
                .and_then(|b| b["patroni"]["name"].as_str().map(str::to_owned));
            if answered_name.is_none_or(|n| n == validated.name.as_str()) {
                return Err(DaemonError::DuplicateName {
                    name: validated.name.as_str().to_owned(),
                    api_url,
                });
            }
        }
    }
    Ok(match view.initialize {
        Some(Ok(init)) => match init.value {
            Initialize::Done(id) => Some(id),
            Initialize::InProgress => None,
        },
        _ => None,
    })
}

/// Runs the daemon until a stop signal; returns the process's exit code.
pub(crate) async fn run(config_path: PathBuf) -> ExitCode {
    let (config, validated) = match NodeConfig::load(&config_path, |var| std::env::var(var).ok()) {
        Ok(loaded) => loaded,
        Err(error) => {
            eprintln!("matriarch: {error}");
            return ExitCode::from(2);
        }
    };
    // A PostgreSQL outside 15..=18 is refused before anything starts.
    if let Err(error) = config.check_postgres_version() {
        eprintln!("matriarch: {error}");
        return ExitCode::from(2);
    }
    let log = match crate::logging::init(&config.log) {
        Ok(handle) => handle,
        Err(error) => {
            eprintln!("matriarch: {error}");
            return ExitCode::from(2);
        }
    };
    let span =
        tracing::info_span!("node", cluster = %validated.layout.scope(), member = %validated.name);
    match run_node(config_path, config, validated, log)
        .instrument(span)
        .await
    {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            error!(error = %err, "matriarch stopped");
            eprintln!("matriarch: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn run_node(
    config_path: PathBuf,
    config: NodeConfig,
    validated: Validated,
    log: LogHandle,
) -> Result<(), DaemonError> {
    let retry = validated.bootstrap_dcs.retry_timeout;
    let ttl = validated.bootstrap_dcs.ttl;
    let scope = validated.layout.scope().to_owned();
    // Before anything else (DCS, fence, PostgreSQL): a second agent on this
    // data directory must not adopt, demote or stop the first one's server.
    // Held until the process exits.
    let data_dir = controller_config(&config, &validated)?.data_dir;
    let _data_dir_lock = lock_data_dir(&data_dir)?;
    info!(lock = %data_dir_lock_path(&data_dir).display(), "data directory lock taken");
    // The watchdog's timeout follows the ttl in force (the engine's status,
    // once it runs).
    let engine_status = Arc::new(std::sync::OnceLock::<matriarch_ha::StatusHandle>::new());
    let watchdog = watchdog(
        &config,
        &validated.bootstrap_dcs,
        Arc::clone(&engine_status),
    )?;
    let dcs = dcs::build(&config, retry, ttl)?;
    // Peers' REST APIs over HTTP or HTTPS (the cluster's CA: restapi.cafile).
    let http = HttpClient::with_tls_files(
        config.restapi.cafile.as_deref(),
        config
            .restapi
            .certfile
            .as_deref()
            .zip(config.restapi.keyfile.as_deref()),
    );
    let system_id = check_duplicate_name(&*dcs, &validated, &http, retry * 2).await?;

    let mut pg_config = controller_config(&config, &validated)?;
    pg_config.expected_system_id = system_id;
    // The fence starts the postmaster as its child: PostgreSQL dies with it.
    let fence = Arc::new(ProcessFence::spawn(
        &pg_config.data_dir,
        validated.name.as_str(),
    )?);
    info!(pid = ?fence.pid(), "write fence watchdog started");
    let pg = Arc::new(
        PgController::new(pg_config.clone())
            .map_err(|e| DaemonError::Postgres(e.to_string()))?
            .with_launcher(Arc::clone(&fence) as Arc<dyn matriarch_postgres::PostmasterLauncher>),
    );
    if pg_config.pgbackrest.is_some() {
        // archive_command names this file: it must exist before PostgreSQL archives.
        pg.write_pgbackrest_config(matriarch_postgres::Operation::Backup)
            .map_err(|e| DaemonError::Postgres(e.to_string()))?;
    }
    let router = router::build(&config, &validated).await?;
    info!(router = router.name(), "router");

    // File descriptors: the REST API gets a bounded share, so that no flood of
    // connections can starve the HA loop, the DCS client or PostgreSQL.
    let nofile = match api::raise_file_limit() {
        Ok(nofile) => nofile,
        Err(err) => {
            let current = match &err {
                api::FileLimitError::Set { current, .. } => *current,
                _ => 1024,
            };
            warn!(error = %err, open_files = current, "cannot raise the open file limit");
            current
        }
    };
    let limits = api::ConnectionLimits::new(
        nofile,
        config.restapi.max_connections,
        config.restapi.max_connections_per_ip,
    );
    info!(
        open_files = nofile,
        max_connections = limits.total,
        max_connections_per_ip = limits.per_ip,
        "REST API connection caps"
    );
    let listener = api::bind(validated.restapi_listen).map_err(|e| DaemonError::RestApi {
        addr: validated.restapi_listen.to_string(),
        message: e.to_string(),
    })?;
    let tls = match (&config.restapi.certfile, &config.restapi.keyfile) {
        (Some(cert), Some(key)) => Some(
            api::tls_acceptor(cert, key, config.restapi.cafile.as_deref()).map_err(|message| {
                DaemonError::RestApi {
                    addr: validated.restapi_listen.to_string(),
                    message,
                }
            })?,
        ),
        _ => None,
    };
    if config.restapi.authentication.is_none() && config.restapi.cafile.is_none() {
        warn!("restapi.authentication is not configured: the REST API refuses every change, and failsafe heartbeats from this node are refused by its peers");
    }

    let engine_fence: Arc<dyn matriarch_ha::Fence> = match &watchdog {
        Some((device, policy)) => Arc::new(CombinedFence::new(
            Arc::clone(&fence) as Arc<dyn matriarch_ha::Fence>,
            Arc::clone(device) as Arc<dyn matriarch_ha::Fence>,
            *policy,
        )),
        None => Arc::clone(&fence) as Arc<dyn matriarch_ha::Fence>,
    };
    let callbacks = Callbacks::new(config.callbacks.clone(), scope.clone());
    let ops = Arc::new(tokio::sync::Mutex::new(()));
    let postgres = HookedPostgres::new(Arc::clone(&pg), callbacks.clone(), Arc::clone(&ops));
    let pgs = config.pg()?;
    let settings = EngineSettings {
        node: NodeSettings {
            name: validated.name.clone(),
            tags: config.tags.clone(),
            conn_url: validated.conn_url.clone(),
            api_url: validated.api_url.clone(),
        },
        bootstrap_config: validated.bootstrap_dcs.clone(),
        bootstrap: BootstrapSpec {
            superuser: pg_config.superuser.clone(),
            replication: pg_config.replication.clone(),
            rewind: pg_config.rewind.clone(),
            parameters: pg_config.parameters.clone(),
            pg_hba: pgs.pg_hba.clone(),
            method: validated.bootstrap_method.clone(),
        },
        postgres_timeout: POSTGRES_TIMEOUT,
    };
    let peer_client = Arc::new(
        HttpPeerProbe::new(PROBE_TIMEOUT, http.clone()).with_basic_auth(
            config
                .restapi
                .authentication
                .as_ref()
                .map(|a| (a.username.as_str(), &a.password)),
        ),
    );
    // The engine's member records also carry what the daemon knows
    // (pending and scheduled restarts), as Patroni's.
    let parameter_status = Arc::new(ParameterStatus::default());
    let member_extras = Arc::new(api::DaemonExtras::new(Arc::clone(&parameter_status)));
    let engine = Engine::new(
        dcs.clone(),
        postgres,
        Arc::clone(&router),
        settings,
        Arc::new(SystemClock::new()),
    )
    .with_fence(engine_fence)
    .with_member_extras(Arc::clone(&member_extras) as Arc<dyn matriarch_ha::MemberExtras>)
    .with_peer_probe(Arc::clone(&peer_client) as Arc<dyn matriarch_ha::PeerProbe>)
    .with_failsafe_sender(peer_client as Arc<dyn matriarch_ha::FailsafeSender>);
    let status = engine.status();
    let settings_handle = engine.settings_handle();
    let failsafe = engine.failsafe_handle();
    let restart = engine.restart_handle();
    let _ = engine_status.set(status.clone());

    let (reload_tx, mut reload_rx) = tokio::sync::mpsc::channel::<()>(4);
    let (local_parameters, local_parameters_rx) =
        tokio::sync::watch::channel(config.local_parameters()?);
    let state = Arc::new(ApiState {
        name: validated.name.clone(),
        scope: scope.clone(),
        dcs: dcs.clone(),
        pg: Arc::clone(&pg) as Arc<dyn matriarch_postgres::Postgres>,
        pg_reload: Arc::clone(&pg) as Arc<dyn api::ReloadPostgres>,
        data_dir: pg_config.data_dir.clone(),
        pkglibdir: api::pkglibdir(&pg_config.bin_dir),
        ops,
        status: status.clone(),
        auth: config
            .restapi
            .authentication
            .as_ref()
            .map(|a| (a.username.clone(), a.password.clone())),
        client_certs: tls.as_ref().is_some_and(|(_, verify)| *verify),
        allowlist: validated.allowlist.clone(),
        tags: RwLock::new(config.tags.clone()),
        bootstrap_config: validated.bootstrap_dcs.clone(),
        reload: reload_tx.clone(),
        cache: RwLock::new(api::Cache::default()),
        failsafe: Some(failsafe),
        http: http.clone(),
        parameters: Arc::clone(&parameter_status),
        restart: Some(restart),
        scheduled_restart: Arc::clone(&member_extras.schedule),
        callbacks: callbacks.clone(),
        backup: pg_config
            .pgbackrest
            .is_some()
            .then(|| Arc::clone(&pg) as Arc<dyn api::BackupRunner>),
    });
    let stanza = pg_config.pgbackrest.is_some().then(|| {
        tokio::spawn(
            crate::backup::stanza_on_leadership(status.clone(), Arc::clone(&pg))
                .instrument(tracing::Span::current()),
        )
    });
    let current = tracing::Span::current();
    let server = tokio::spawn(
        api::serve(listener, Arc::clone(&state), tls, limits).instrument(current.clone()),
    );
    // The REST API answers from the engine's status; this notes its changes.
    let refresher = tokio::spawn(api::refresh(Arc::clone(&state)).instrument(current.clone()));
    let applier = tokio::spawn(
        params::apply_dynamic_parameters(
            status.clone(),
            local_parameters_rx,
            Arc::clone(&pg),
            Arc::clone(&state.ops),
            parameter_status,
            callbacks.clone(),
        )
        .instrument(current.clone()),
    );
    let role_watch = tokio::spawn(
        hooks::watch_role_changes(status.clone(), callbacks).instrument(current.clone()),
    );
    info!(api = %validated.api_url, conn_url = %validated.conn_url, "matriarch started");

    let mut term = signal(SignalKind::terminate()).map_err(DaemonError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(DaemonError::Signals)?;
    let mut hup = signal(SignalKind::hangup()).map_err(DaemonError::Signals)?;
    let reloader = {
        let state = Arc::clone(&state);
        let pg = Arc::clone(&pg);
        let path = config_path.clone();
        let mut running = config.clone();
        let settings = settings_handle.clone();
        tokio::spawn(
            async move {
                loop {
                    tokio::select! {
                        _ = hup.recv() => {}
                        Some(()) = reload_rx.recv() => {}
                        else => break,
                    }
                    if let Some(new) = reload(
                        &path,
                        &running,
                        &state,
                        &log,
                        &local_parameters,
                        &settings,
                        &pg,
                    ) {
                        running = new;
                    }
                }
            }
            .instrument(current.clone()),
        )
    };
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => info!("SIGTERM: stepping down"),
            _ = int.recv() => info!("SIGINT: stepping down"),
        }
    };
    engine.run(shutdown).await;
    info!("stopped");
    fence.close();
    if let Some((device, _)) = &watchdog {
        // The engine disarms after stepping down; this covers every other way out.
        if let Err(error) = device.disarm() {
            error!(%error, "could not disarm the watchdog: the host may be reset");
        }
    }
    reloader.abort();
    if let Some(stanza) = stanza {
        stanza.abort();
    }
    applier.abort();
    role_watch.abort();
    refresher.abort();
    server.abort();
    Ok(())
}

/// The watchdog of `watchdog:`, if its mode is not `off`, with how its
/// failures count. `required` refuses to start when the device cannot be
/// opened; `automatic` logs it and carries on.
fn watchdog(
    config: &NodeConfig,
    bootstrap: &matriarch_model::ClusterConfig,
    status: Arc<std::sync::OnceLock<matriarch_ha::StatusHandle>>,
) -> Result<Option<(Arc<Watchdog>, SecondFence)>, DaemonError> {
    let bootstrap_ttl = bootstrap.ttl;
    let section = &config.watchdog;
    let policy = match section.mode {
        WatchdogMode::Off => return Ok(None),
        WatchdogMode::Automatic => SecondFence::BestEffort,
        WatchdogMode::Required => SecondFence::Required,
    };
    // The lock's real lifetime when the DCS grants less than the ttl.
    let ttl = Arc::new(move || status.get().map_or(bootstrap_ttl, |s| s.get().lock_ttl));
    let margin = Duration::from_secs(section.safety_margin);
    let device = Arc::new(Watchdog::new(section.device.clone(), margin, ttl));
    let timeout = crate::watchdog::timeout_for(bootstrap_ttl, margin);
    if timeout <= bootstrap.loop_wait + bootstrap.retry_timeout {
        // Keepalives follow renewals: up to loop_wait + retry_timeout apart.
        warn!(
            timeout_secs = timeout.as_secs(),
            "the watchdog timeout (ttl - watchdog.safety_margin, at least 1 s) is not longer than \
             loop_wait + retry_timeout: a healthy primary's host may be reset; raise ttl or lower \
             watchdog.safety_margin"
        );
    }
    if timeout + bootstrap.retry_timeout >= bootstrap_ttl {
        // A keepalive follows its renewal's request by up to retry_timeout,
        // and the lock counts from the request.
        warn!(
            timeout_secs = timeout.as_secs(),
            "the watchdog timeout plus retry_timeout is not shorter than ttl: after a hang the \
             host may be reset only after its lock expired; make watchdog.safety_margin larger \
             than retry_timeout"
        );
    }
    match (device.check_usable(), policy) {
        (Ok(()), _) => info!(
            device = %section.device.display(),
            mode = ?section.mode,
            timeout_secs = timeout.as_secs(),
            "watchdog enabled: armed while this node leads"
        ),
        (Err(error), SecondFence::Required) => {
            return Err(DaemonError::Fence(format!(
                "watchdog.mode is required: {error}"
            )))
        }
        (Err(error), SecondFence::BestEffort) => warn!(
            %error,
            "watchdog.mode is automatic: the watchdog device is not usable, running without it"
        ),
    }
    Ok(Some((device, policy)))
}

/// Sets new `pg_hba`/`pg_ident` lines and reloads PostgreSQL (under the
/// PostgreSQL operations lock), in the background.
fn apply_auth_lines(
    pg: &Arc<PgController>,
    state: &ApiState,
    pg_hba: Vec<String>,
    pg_ident: Vec<String>,
) {
    match pg.set_auth_lines(pg_hba, pg_ident) {
        Ok(false) => {}
        Ok(true) => {
            let (pg, ops) = (Arc::clone(pg), Arc::clone(&state.ops));
            let callbacks = state.callbacks.clone();
            tokio::spawn(
                async move {
                    let _guard = ops.lock().await;
                    match pg.reload().await {
                        Ok(()) => {
                            info!("postgresql.pg_hba/pg_ident changed: written and reloaded");
                            callbacks.reloaded();
                        }
                        Err(error) => warn!(%error, "postgresql.pg_hba/pg_ident changed but the reload failed; they apply at the next start"),
                    }
                }
                .instrument(tracing::Span::current()),
            );
        }
        Err(error) => {
            error!(%error, "postgresql.pg_hba/pg_ident refused: keeping the running ones")
        }
    }
}

/// Re-reads the configuration file and applies what can change live: the
/// log level, `postgresql.parameters` and `postgresql.pg_hba`/`pg_ident`. Returns the configuration read,
/// or `None` (nothing changed) when it is invalid.
fn reload(
    path: &Path,
    running: &NodeConfig,
    state: &ApiState,
    log: &LogHandle,
    local_parameters: &tokio::sync::watch::Sender<params::Parameters>,
    settings: &matriarch_ha::SettingsHandle,
    pg: &Arc<PgController>,
) -> Option<NodeConfig> {
    let (new, _) = match NodeConfig::load(path, |var| std::env::var(var).ok()) {
        Ok(loaded) => loaded,
        Err(error) => {
            error!(%error, "reload refused: keeping the running configuration");
            return None;
        }
    };
    // PostgreSQL parameters apply by reload; the rest of the section needs
    // a restart of the agent.
    let (mut running_pg, mut new_pg) = (running.postgresql.clone(), new.postgresql.clone());
    if let (Some(old), Some(fresh)) = (running_pg.as_mut(), new_pg.as_mut()) {
        if old.parameters != fresh.parameters {
            local_parameters.send_replace(new.local_parameters().unwrap_or_default());
            info!("postgresql.parameters changed: applying");
        }
        old.parameters.clear();
        fresh.parameters.clear();
        // pg_hba.conf and pg_ident.conf are rewritten and reloaded.
        if (&old.pg_hba, &old.pg_ident) != (&fresh.pg_hba, &fresh.pg_ident) {
            apply_auth_lines(pg, state, fresh.pg_hba.clone(), fresh.pg_ident.clone());
        }
        for section in [old, fresh] {
            section.pg_hba.clear();
            section.pg_ident.clear();
        }
    }
    if new.log.level != running.log.level {
        match log.set_level(&new.log.level) {
            Ok(()) => info!(level = %new.log.level, "log level changed"),
            Err(error) => warn!(%error, "cannot change the log level"),
        }
    }
    // Everything else needs a restart; compared by its Debug text, as
    // not every section's type implements PartialEq.
    let mut restart = Vec::new();
    let mut compare = |key: &'static str, old: &dyn std::fmt::Debug, new: &dyn std::fmt::Debug| {
        if format!("{old:?}") != format!("{new:?}") {
            restart.push(key);
        }
    };
    compare("scope", &running.scope, &new.scope);
    compare("namespace", &running.namespace, &new.namespace);
    compare("name", &running.name, &new.name);
    compare("log.format", &running.log.format, &new.log.format);
    compare("restapi", &running.restapi, &new.restapi);
    compare("etcd3", &running.etcd3, &new.etcd3);
    compare("zookeeper", &running.zookeeper, &new.zookeeper);
    compare("postgresql", &running_pg, &new_pg);
    compare("router", &running.router, &new.router);
    compare("callbacks", &running.callbacks, &new.callbacks);
    compare("watchdog", &running.watchdog, &new.watchdog);
    compare("pgbackrest", &running.pgbackrest, &new.pgbackrest);
    if new.tags != running.tags {
        // Tags apply at the engine's next loop (and its member record).
        settings.set_node(NodeSettings {
            tags: new.tags.clone(),
            ..settings.node()
        });
        match state.tags.write() {
            Ok(mut tags) => *tags = new.tags.clone(),
            Err(poisoned) => *poisoned.into_inner() = new.tags.clone(),
        }
        info!(tags = ?new.tags, "tags changed: applying");
    }
    if restart.is_empty() {
        info!("configuration reloaded");
    } else {
        warn!(keys = %restart.join(", "), "configuration reloaded: these changes take effect after a restart");
    }
    Some(new)
}
