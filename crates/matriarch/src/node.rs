//! `matriarch run`: wires the configured DCS, PostgreSQL controller, routers,
//! write fence, peer probe and REST API around the HA engine, and handles
//! signals.
//!
//! - SIGTERM / SIGINT: the engine steps down (stops PostgreSQL cleanly,
//!   releases the leader lock at once so a replica takes over without
//!   waiting for the ttl, removes its member record), then the process exits.
//! - SIGHUP (and `POST /reload`): the configuration file is read again; the
//!   log level applies at once, every other changed section is reported as
//!   needing a restart.

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
use crate::config::{NodeConfig, Validated};
use crate::error::DaemonError;
use crate::fence::ProcessFence;
use crate::hooks::{self, Callbacks, HookedPostgres};
use crate::logging::LogHandle;
use crate::probe::HttpPeerProbe;
use crate::{dcs, http_client, router};

/// How long a peer probe or a duplicate-name check waits for an answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// The bound on slow PostgreSQL operations the engine runs (start, promote,
/// clone, rewind).
const POSTGRES_TIMEOUT: Duration = Duration::from_secs(300);

fn credentials(role: &crate::config::PgRoleConfig) -> Credentials {
    match &role.password {
        Some(password) => Credentials::new(role.username.clone(), password.expose()),
        None => Credentials::without_password(role.username.clone()),
    }
}

/// Builds the PostgreSQL controller's configuration.
pub fn controller_config(
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
    parameters.extend(pg.parameters.clone());
    pgc.parameters = parameters;
    if let Some(user) = &pg.os_user {
        pgc.os_user = user.clone();
    }
    pgc.initdb_args = config.bootstrap.initdb.clone();
    Ok(pgc)
}

/// Refuses to start when a live agent already runs under this member name:
/// `members/<name>` exists and its api_url answers.
async fn check_duplicate_name(
    dcs: &dyn Dcs,
    validated: &Validated,
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
        if let Ok((_, body)) = http_client::get(&api_url, PROBE_TIMEOUT).await {
            let answered_name = serde_json::from_slice::<serde_json::Value>(&body)
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
pub async fn run(config_path: PathBuf) -> ExitCode {
    let (config, validated) = match NodeConfig::load(&config_path, |var| std::env::var(var).ok()) {
        Ok(loaded) => loaded,
        Err(error) => {
            eprintln!("matriarch: {error}");
            return ExitCode::from(2);
        }
    };
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
    let dcs = dcs::build(&config, retry, ttl)?;
    let system_id = check_duplicate_name(&*dcs.0, &validated, retry * 2).await?;

    let mut pg_config = controller_config(&config, &validated)?;
    pg_config.expected_system_id = system_id;
    let pg = Arc::new(
        PgController::new(pg_config.clone()).map_err(|e| DaemonError::Postgres(e.to_string()))?,
    );
    let router = router::build(&config, &validated).await?;
    info!(router = router.name(), "router");

    let listener = tokio::net::TcpListener::bind(validated.restapi_listen)
        .await
        .map_err(|e| DaemonError::RestApi {
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
        warn!("restapi.authentication is not configured: the REST API refuses every change");
    }

    let fence = Arc::new(ProcessFence::spawn(&pg_config.data_dir)?);
    info!(pid = ?fence.pid(), "write fence watchdog started");
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
        },
        postgres_timeout: POSTGRES_TIMEOUT,
    };
    let engine = Engine::new(
        dcs.clone(),
        postgres,
        Arc::clone(&router),
        settings,
        Arc::new(SystemClock::new()),
    )
    .with_fence(Arc::clone(&fence) as Arc<dyn matriarch_ha::Fence>)
    .with_peer_probe(Arc::new(HttpPeerProbe::new(PROBE_TIMEOUT)));
    let status = engine.status();

    let (reload_tx, mut reload_rx) = tokio::sync::mpsc::channel::<()>(4);
    let state = Arc::new(ApiState {
        name: validated.name.clone(),
        scope: scope.clone(),
        dcs: dcs.clone(),
        pg: Arc::clone(&pg),
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
    });
    let current = tracing::Span::current();
    let server =
        tokio::spawn(api::serve(listener, Arc::clone(&state), tls).instrument(current.clone()));
    let refresher = tokio::spawn(
        api::refresh(
            Arc::clone(&state),
            validated
                .bootstrap_dcs
                .loop_wait
                .min(Duration::from_secs(1)),
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
        let path = config_path.clone();
        let running = config.clone();
        tokio::spawn(
            async move {
                loop {
                    tokio::select! {
                        _ = hup.recv() => {}
                        Some(()) = reload_rx.recv() => {}
                        else => break,
                    }
                    reload(&path, &running, &state, &log);
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
    reloader.abort();
    role_watch.abort();
    refresher.abort();
    server.abort();
    Ok(())
}

/// Re-reads the configuration file and applies what can change live.
fn reload(path: &Path, running: &NodeConfig, state: &ApiState, log: &LogHandle) {
    let (new, _) = match NodeConfig::load(path, |var| std::env::var(var).ok()) {
        Ok(loaded) => loaded,
        Err(error) => {
            error!(%error, "reload refused: keeping the running configuration");
            return;
        }
    };
    if new.log.level != running.log.level {
        match log.set_level(&new.log.level) {
            Ok(()) => info!(level = %new.log.level, "log level changed"),
            Err(error) => warn!(%error, "cannot change the log level"),
        }
    }
    let mut restart = Vec::new();
    let sections: [(&str, String, String); 11] = [
        ("scope", running.scope.clone(), new.scope.clone()),
        (
            "namespace",
            running.namespace.clone(),
            new.namespace.clone(),
        ),
        ("name", running.name.clone(), new.name.clone()),
        (
            "log.format",
            format!("{:?}", running.log.format),
            format!("{:?}", new.log.format),
        ),
        (
            "restapi",
            format!("{:?}", running.restapi),
            format!("{:?}", new.restapi),
        ),
        (
            "etcd3",
            format!("{:?}", running.etcd3),
            format!("{:?}", new.etcd3),
        ),
        (
            "zookeeper",
            format!("{:?}", running.zookeeper),
            format!("{:?}", new.zookeeper),
        ),
        (
            "postgresql",
            format!("{:?}", running.postgresql),
            format!("{:?}", new.postgresql),
        ),
        (
            "tags",
            format!("{:?}", running.tags),
            format!("{:?}", new.tags),
        ),
        (
            "router",
            format!("{:?}", running.router),
            format!("{:?}", new.router),
        ),
        (
            "callbacks",
            format!("{:?}", running.callbacks),
            format!("{:?}", new.callbacks),
        ),
    ];
    for (key, old, new) in sections {
        if old != new {
            restart.push(key);
        }
    }
    let _ = state;
    if restart.is_empty() {
        info!("configuration reloaded");
    } else {
        warn!(keys = %restart.join(", "), "configuration reloaded: these changes take effect after a restart");
    }
}
