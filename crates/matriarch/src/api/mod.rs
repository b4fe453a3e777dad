//! The REST API, compatible with Patroni's so that HAProxy, ELB and
//! Kubernetes probes written for Patroni work unchanged. Served by axum over
//! hyper: [`router`] declares the routes, [`serve`] the connections.
//!
//! Health endpoints ([`health`]; GET, HEAD, OPTIONS; 200 or 503 with the
//! `/patroni` body): `/primary` (`/`, `/master`, `/read-write`), `/replica`
//! (`?lag=<bytes or 1MB>`, `?<tag>=<value>`), `/read-only`, `/leader`,
//! `/synchronous` (`/sync`), `/asynchronous` (`/async`), `/health`,
//! `/liveness`, `/readiness`.
//!
//! Information ([`status`]): GET `/patroni`, `/cluster`, `/history`,
//! `/config`, `/metrics` (Prometheus text), `/failsafe`.
//!
//! Changes ([`mutations`], [`switchover`], [`restart`]; authenticated by
//! [`auth`]): PATCH and PUT `/config`, POST `/switchover`, `/failover`,
//! `/restart`, `/reload`, `/reinitialize`; DELETE `/switchover` and
//! `/restart` (cancel a scheduled one).
//!
//! Failsafe: POST `/failsafe`, a primary's heartbeat while the DCS is
//! unreachable; authenticated like every change (the sender presents
//! `restapi.authentication` or its client certificate), so that nobody else
//! can hold a replica back from a race.
//!
//! Exhaustion ([`limits`]): connections are capped in total (a share of the
//! file limit, so that the HA loop and PostgreSQL keep theirs) and per client
//! address, and headers, bodies ([`body`]) and TLS handshakes ([`tls`]) are
//! read under timeouts; bodies are bounded.

// Refusals are returned as the response itself (`Result<_, Response>`): they
// are built only on the error path of one request, so their size is no cost.
#![allow(clippy::result_large_err)]

mod auth;
mod backup;
mod body;
mod cancel_switchover;
mod config_checks;
mod health;
mod limits;
mod member_record;
mod metrics;
mod mutations;
mod patroni_status;
mod restart;
mod status;
mod switchover;
mod tls;
mod view;

pub(crate) use backup::BackupRunner;

#[cfg(test)]
mod parity_tests;
#[cfg(test)]
mod router_tests;
#[cfg(test)]
mod status_follow_tests;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use async_trait::async_trait;
use axum::body::Body;
use axum::http::{header, HeaderValue, Method, Request, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post, MethodRouter};
use axum::Router;
use matriarch_ha::{EngineStatus, FailsafeHandle, RestartHandle, StatusHandle};
use matriarch_model::{ClusterConfig, MemberName, Tags};
use matriarch_postgres::{PgController, Postgres, PostgresError};
use serde_json::{json, Value};
#[cfg(test)]
use tokio::sync::watch;

use crate::config::IpRange;
use crate::dcs::AnyDcs;
use matriarch_model::Secret;

pub(crate) use config_checks::pkglibdir;
pub(crate) use limits::{bind, raise_file_limit, serve, ConnectionLimits, FileLimitError};
pub(crate) use member_record::DaemonExtras;
pub(crate) use mutations::merge_patch;
pub(crate) use status::host_port as conn_url_host_port;
pub(crate) use tls::{tls_acceptor, Tls};

/// Reloads PostgreSQL's configuration (`POST /reload`): the one operation
/// the API needs that [`Postgres`] does not have.
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

/// Where the API reads the engine's status: the engine's own handle, or (in
/// the API's in-process tests) a channel fed by hand.
#[derive(Clone, Debug)]
pub(crate) enum StatusSource {
    /// [`matriarch_ha::Engine::status`].
    Engine(StatusHandle),
    /// A status published by whoever holds the sender.
    #[cfg(test)]
    Channel(watch::Receiver<EngineStatus>),
}

impl StatusSource {
    /// The latest status.
    pub(crate) fn get(&self) -> EngineStatus {
        match self {
            StatusSource::Engine(handle) => handle.get(),
            #[cfg(test)]
            StatusSource::Channel(receiver) => receiver.borrow().clone(),
        }
    }

    /// Waits until the status changes; `false` once it never will.
    pub(crate) async fn changed(&mut self) -> bool {
        match self {
            StatusSource::Engine(handle) => handle.changed().await,
            #[cfg(test)]
            StatusSource::Channel(receiver) => receiver.changed().await.is_ok(),
        }
    }
}

/// What the API serves from: the engine's status, which carries what its
/// loop observed and decided (PostgreSQL, the DCS view), and the few facts
/// [`refresh`] keeps beside it. Only changes read the DCS themselves.
pub(crate) struct ApiState {
    /// This member.
    pub name: MemberName,
    /// The cluster.
    pub scope: String,
    /// The shared DCS client.
    pub dcs: AnyDcs,
    /// The local PostgreSQL (observed; stopped by `POST /reinitialize`).
    pub pg: Arc<dyn Postgres>,
    /// Reloads PostgreSQL's configuration (`POST /reload`).
    pub pg_reload: Arc<dyn ReloadPostgres>,
    /// PostgreSQL's data directory.
    pub data_dir: PathBuf,
    /// PostgreSQL's library directory, where `shared_preload_libraries`
    /// must be found (`None`: unknown, not checked).
    pub pkglibdir: Option<PathBuf>,
    /// Serializes PostgreSQL changes with the engine's.
    pub ops: Arc<tokio::sync::Mutex<()>>,
    /// The engine's status.
    pub status: StatusSource,
    /// Basic authentication for changes.
    pub auth: Option<(String, Secret)>,
    /// Whether a verified client certificate authenticates a change.
    pub client_certs: bool,
    /// Client ranges allowed to make changes (empty: all).
    pub allowlist: Vec<IpRange>,
    /// The tags this node runs with (reported).
    pub tags: RwLock<Tags>,
    /// The dynamic configuration to fall back on before the DCS has one.
    pub bootstrap_config: ClusterConfig,
    /// Asks the daemon to reload its configuration file.
    pub reload: tokio::sync::mpsc::Sender<()>,
    /// What [`refresh`] keeps beside the engine's status.
    pub cache: RwLock<Cache>,
    /// Where `POST /failsafe` hands heartbeats to the engine
    /// ([`matriarch_ha::Engine::failsafe_handle`]); `None` answers 503.
    pub failsafe: Option<FailsafeHandle>,
    /// PostgreSQL parameters waiting for a restart.
    pub parameters: Arc<crate::params::ParameterStatus>,
    /// Where `POST /restart` asks the engine to restart PostgreSQL
    /// ([`matriarch_ha::Engine::restart_handle`]); `None` answers 503.
    pub restart: Option<RestartHandle>,
    /// The client for other members' REST APIs (the cluster's CA and client
    /// certificate, as the peer probe uses).
    pub http: crate::http_client::HttpClient,
    /// A restart `POST /restart` scheduled for later (`DELETE /restart`
    /// cancels it).
    pub scheduled_restart: Arc<restart::RestartSchedule>,
    /// The callbacks: `on_restart` for the restarts it asks for, `on_reload`
    /// for its reloads.
    pub callbacks: crate::hooks::Callbacks,
    /// Takes `POST /backup`'s backups; `None` (no pgBackRest repository) answers 503.
    pub backup: Option<Arc<dyn backup::BackupRunner>>,
}

/// What [`refresh`] keeps beside the engine's status.
#[derive(Default)]
pub(crate) struct Cache {
    /// When the engine's status last changed (the loop made progress).
    pub status_at: Option<Instant>,
    /// `PG_VERSION` × 10000.
    pub server_version: Option<u32>,
}

/// Who sent a request, as the connection tells: inserted into each
/// request's extensions by [`serve`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct Client {
    /// The client's address.
    pub peer: SocketAddr,
    /// Whether it presented a client certificate the CA verified.
    pub verified_cert: bool,
}

pub(crate) type Resp = Response;

/// A JSON response.
pub(crate) fn respond(status: StatusCode, body: Value) -> Resp {
    let mut response = (status, body.to_string()).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// A text response of `content_type`.
pub(crate) fn text(status: StatusCode, body: String, content_type: &'static str) -> Resp {
    let mut response = (status, body).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// `{"error": message}` with `status`.
pub(crate) fn error(status: StatusCode, message: impl Into<String>) -> Resp {
    respond(status, json!({ "error": message.into() }))
}

/// GET (and HEAD, which axum answers with GET's handler) and OPTIONS.
fn read<H, T>(handler: H) -> MethodRouter<Arc<ApiState>>
where
    H: axum::handler::Handler<T, Arc<ApiState>>,
    T: 'static,
{
    get(handler.clone()).options(handler)
}

/// The API's routes. Changes pass [`auth::authorize`] before their body is
/// read; HEAD and OPTIONS answer with the status alone, as Patroni's.
pub(crate) fn router(state: Arc<ApiState>) -> Router {
    let authorized = || axum::middleware::from_fn_with_state(Arc::clone(&state), auth::authorize);
    let mut routes = Router::new();
    for path in health::PATHS {
        routes = routes.route(path, read(health::check));
    }
    routes
        .route("/patroni", read(status::patroni))
        .route("/cluster", read(status::cluster))
        .route("/history", read(status::history))
        .route("/metrics", read(status::metrics))
        .route(
            "/config",
            patch(mutations::patch_config)
                .put(mutations::put_config)
                .route_layer(authorized())
                .merge(read(status::config)),
        )
        .route(
            "/failsafe",
            post(mutations::failsafe_heartbeat)
                .route_layer(authorized())
                .merge(read(status::failsafe_members)),
        )
        .route(
            "/switchover",
            post(switchover::switchover)
                .delete(cancel_switchover::delete_switchover)
                .route_layer(authorized()),
        )
        .route(
            "/failover",
            post(switchover::failover).route_layer(authorized()),
        )
        .route(
            "/restart",
            post(mutations::restart)
                .delete(mutations::cancel_restart)
                .route_layer(authorized()),
        )
        .route("/reload", post(mutations::reload).route_layer(authorized()))
        .route("/backup", post(backup::backup).route_layer(authorized()))
        .route(
            "/reinitialize",
            post(mutations::reinitialize).route_layer(authorized()),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(not_found)
        .layer(axum::middleware::from_fn(bodyless_head_and_options))
        .with_state(state)
}

/// No route for this method and path: 404 for the methods the API serves
/// (as Patroni), 405 for any other.
async fn not_found(method: Method, uri: Uri) -> Resp {
    let path = uri.path();
    match method {
        Method::GET | Method::HEAD | Method::OPTIONS => {
            error(StatusCode::NOT_FOUND, format!("no such endpoint: {path}"))
        }
        Method::POST | Method::PATCH | Method::PUT | Method::DELETE => error(
            StatusCode::NOT_FOUND,
            format!("no such endpoint: {method} {path}"),
        ),
        _ => error(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("method {method} not allowed"),
        ),
    }
}

/// Patroni answers HEAD and OPTIONS with the status alone.
async fn bodyless_head_and_options(req: Request<Body>, next: axum::middleware::Next) -> Resp {
    let bodyless = req.method() == Method::HEAD || req.method() == Method::OPTIONS;
    let mut response = next.run(req).await;
    if bodyless {
        *response.body_mut() = Body::empty();
        response.headers_mut().remove(header::CONTENT_LENGTH);
    }
    response
}

/// Routes `/patroni/` as `/patroni` and an empty path as `/`, as the API
/// always has: rewritten before routing.
pub(crate) fn normalize_path<B>(req: &mut Request<B>) {
    let path = req.uri().path();
    let trimmed = path.trim_end_matches('/');
    if trimmed.len() == path.len() && !trimmed.is_empty() {
        return;
    }
    let trimmed = if trimmed.is_empty() { "/" } else { trimmed };
    let path_and_query = match req.uri().query() {
        Some(query) => format!("{trimmed}?{query}"),
        None => trimmed.to_owned(),
    };
    let mut parts = req.uri().clone().into_parts();
    if let Ok(rewritten) = path_and_query.parse() {
        parts.path_and_query = Some(rewritten);
        if let Ok(uri) = Uri::from_parts(parts) {
            *req.uri_mut() = uri;
        }
    }
}

/// Keeps [`Cache`] in step with the engine: notes when its status last
/// changed (for `/liveness`) and the server version of the data directory.
/// It reads neither PostgreSQL nor the DCS: every endpoint but the changes
/// answers from the status, which carries what the engine's loop observed
/// and decided, published the moment it promotes or before it demotes.
pub(crate) async fn refresh(state: Arc<ApiState>) {
    let mut status = state.status.clone();
    let version_file = state.data_dir.join("PG_VERSION");
    loop {
        // A bootstrap or a clone writes it: read again on every change.
        let version = std::fs::read_to_string(&version_file)
            .ok()
            .and_then(|v| v.trim().parse::<u32>().ok())
            .map(|major| major * 10000);
        if let Ok(mut cache) = state.cache.write() {
            cache.server_version = version;
        }
        if !status.changed().await {
            break;
        }
        if let Ok(mut cache) = state.cache.write() {
            cache.status_at = Some(Instant::now());
        }
    }
}
