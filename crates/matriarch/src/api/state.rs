//! What every handler serves from: [`ApiState`], the engine's status
//! ([`StatusHandle`]), the facts [`refresh`] keeps beside it ([`Cache`]),
//! and who sent a request ([`Client`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use axum::extract::State;
use matriarch_ha::{FailsafeHandle, RestartHandle, StatusHandle};
use matriarch_model::{ClusterConfig, MemberName, Secret, Tags};
use matriarch_postgres::Postgres;

use super::pg_ops::{BackupRunner, ReloadPostgres};
use super::restart_request::RestartSchedule;
use crate::config::IpRange;
use crate::dcs::AnyDcs;

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
    pub status: StatusHandle,
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
    pub scheduled_restart: Arc<RestartSchedule>,
    /// The callbacks: `on_restart` for the restarts it asks for, `on_reload`
    /// for its reloads.
    pub callbacks: crate::hooks::Callbacks,
    /// Takes `POST /backup`'s backups; `None` (no pgBackRest repository) answers 503.
    pub backup: Option<Arc<dyn BackupRunner>>,
}

/// [`ApiState`] as handlers extract it.
pub(crate) type SharedState = State<Arc<ApiState>>;

/// What [`refresh`] keeps beside the engine's status.
#[derive(Default)]
pub(crate) struct Cache {
    /// When the engine's status last changed (the loop made progress).
    pub status_at: Option<Instant>,
    /// `PG_VERSION` × 10000.
    pub server_version: Option<u32>,
}

/// Who sent a request, as the connection tells: inserted into each
/// request's extensions by [`super::limits::serve`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct Client {
    /// The client's address.
    pub peer: SocketAddr,
    /// Whether it presented a client certificate the CA verified.
    pub verified_cert: bool,
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
