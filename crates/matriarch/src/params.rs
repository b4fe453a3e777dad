//! Applies the dynamic configuration's `postgresql.parameters` to the
//! running PostgreSQL, as Patroni does: when the `config` key changes
//! (`PATCH /config`, `matriarch ctl edit-config -p`) or a SIGHUP changes the
//! node's own `postgresql.parameters`, every node rewrites its managed
//! configuration file and reloads. Parameters PostgreSQL reads only at start
//! are reported as pending a restart (`pending_restart` in `/patroni`).
//!
//! The node's own parameters win over the cluster's. A set PostgreSQL must
//! not get (a parameter matriarch manages, a malformed name or value) is
//! refused as a whole with an error in the log, and the running settings stay.
//!
//! The dynamic `postgresql.pg_hba`/`pg_ident` lines (Patroni's) are handed
//! to the controller likewise, which writes them for each file the node's
//! own lines leave empty, and reloads.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use matriarch_ha::StatusHandle;
use matriarch_model::ParameterValue;
use matriarch_postgres::{PgController, PostgresError};
use tokio::sync::{watch, Mutex};
use tracing::{error, info, warn};

use crate::hooks::Callbacks;

/// PostgreSQL parameters by name.
pub(crate) type Parameters = BTreeMap<String, ParameterValue>;

/// How often the pending-restart list is read again without a change (a
/// restart through the API or by hand clears it).
const PENDING_RECHECK: Duration = Duration::from_secs(5);

/// The parameters a node runs with: the cluster's, with its own on top.
pub(crate) fn effective(cluster: &Parameters, local: &Parameters) -> Parameters {
    let mut merged = cluster.clone();
    merged.extend(local.iter().map(|(k, v)| (k.clone(), v.clone())));
    merged
}

/// What the applier shares with the REST API.
#[derive(Debug, Default)]
pub(crate) struct ParameterStatus {
    /// Parameters whose new value waits for a restart.
    pub pending_restart: RwLock<Vec<String>>,
}

impl ParameterStatus {
    /// The parameters waiting for a restart.
    pub(crate) fn pending(&self) -> Vec<String> {
        self.pending_restart
            .read()
            .map(|p| p.clone())
            .unwrap_or_else(|e| e.into_inner().clone())
    }

    fn set_pending(&self, names: Vec<String>) {
        match self.pending_restart.write() {
            Ok(mut guard) => *guard = names,
            Err(poisoned) => *poisoned.into_inner() = names,
        }
    }
}

/// Runs until the status handle closes: applies each new effective
/// parameter set to `pg` under the PostgreSQL operations lock.
pub(crate) async fn apply_dynamic_parameters(
    mut status: StatusHandle,
    mut local: watch::Receiver<Parameters>,
    pg: Arc<PgController>,
    ops: Arc<Mutex<()>>,
    shared: Arc<ParameterStatus>,
    callbacks: Callbacks,
) {
    let mut refused: Option<Parameters> = None;
    // The cluster's pg_hba/pg_ident lines last seen (applied or refused).
    let mut seen_auth: Option<AuthLines> = None;
    loop {
        let auth = cluster_auth(&status);
        if seen_auth.as_ref() != Some(&auth) {
            apply_cluster_auth(&pg, &ops, &auth, &callbacks).await;
            seen_auth = Some(auth);
        }
        let wanted = effective(
            &status.get().config.postgresql.parameters,
            &local.borrow_and_update(),
        );
        if refused.as_ref() != Some(&wanted) {
            match pg.set_parameters(wanted.clone()) {
                Ok(true) => {
                    refused = None;
                    let names: Vec<&str> = wanted.keys().map(String::as_str).collect();
                    let _guard = ops.lock().await;
                    match pg.reload().await {
                        Ok(()) => {
                            info!(parameters = %names.join(","), "PostgreSQL parameters changed: reloaded");
                            callbacks.reloaded();
                        }
                        // Written to the managed file all the same: the
                        // next start picks them up.
                        Err(error) => {
                            warn!(%error, "PostgreSQL parameters changed but the reload failed; they apply at the next start")
                        }
                    }
                }
                Ok(false) => refused = None,
                Err(error) => {
                    error!(%error, "PostgreSQL parameters refused: keeping the running ones");
                    refused = Some(wanted);
                }
            }
        }
        match pg.pending_restart().await {
            Ok(names) => {
                if names != shared.pending() && !names.is_empty() {
                    warn!(parameters = %names.join(","), "PostgreSQL parameters wait for a restart");
                }
                shared.set_pending(names);
            }
            Err(PostgresError::NotRunning { .. }) => shared.set_pending(Vec::new()),
            Err(error) => warn!(%error, "cannot read pending_restart"),
        }
        // Sleep until the parameters change or the recheck is due; the
        // status changes every loop, the parameters seldom.
        let recheck = tokio::time::sleep(PENDING_RECHECK);
        tokio::pin!(recheck);
        loop {
            tokio::select! {
                alive = status.changed() => if !alive { return },
                changed = local.changed() => if changed.is_err() { return } else { break },
                () = &mut recheck => break,
            }
            let now = effective(&status.get().config.postgresql.parameters, &local.borrow());
            if now != pg.parameters() && refused.as_ref() != Some(&now) {
                break;
            }
            if seen_auth.as_ref() != Some(&cluster_auth(&status)) {
                break;
            }
        }
    }
}

/// The dynamic configuration's `postgresql.pg_hba`/`pg_ident`, or why it
/// cannot be used.
type AuthLines = Result<(Vec<String>, Vec<String>), String>;

fn cluster_auth(status: &StatusHandle) -> AuthLines {
    crate::config::cluster_auth_lines("config", &status.get().config).map_err(|e| e.to_string())
}

/// Hands the cluster's `pg_hba`/`pg_ident` lines to `pg` and reloads when
/// that changes a file (the node's own lines win, file by file).
async fn apply_cluster_auth(
    pg: &PgController,
    ops: &Mutex<()>,
    auth: &AuthLines,
    callbacks: &Callbacks,
) {
    let (pg_hba, pg_ident) = match auth {
        Ok(lines) => lines.clone(),
        Err(error) => {
            error!(%error, "the cluster's pg_hba/pg_ident refused: keeping the running ones");
            return;
        }
    };
    match pg.set_cluster_auth_lines(pg_hba, pg_ident) {
        Ok(false) => {}
        Ok(true) => {
            let _guard = ops.lock().await;
            match pg.reload().await {
                Ok(()) => {
                    info!("the cluster's postgresql.pg_hba/pg_ident changed: written and reloaded");
                    callbacks.reloaded();
                }
                Err(error) => {
                    warn!(%error, "the cluster's pg_hba/pg_ident changed but the reload failed; they apply at the next start")
                }
            }
        }
        Err(error) => {
            error!(%error, "the cluster's pg_hba/pg_ident refused: keeping the running ones")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_nodes_own_parameters_win_over_the_clusters() {
        let cluster: Parameters = [
            (
                "work_mem".to_owned(),
                ParameterValue::Text("4MB".to_owned()),
            ),
            ("max_connections".to_owned(), ParameterValue::Integer(100)),
        ]
        .into();
        let local: Parameters = [(
            "work_mem".to_owned(),
            ParameterValue::Text("8MB".to_owned()),
        )]
        .into();
        let merged = effective(&cluster, &local);
        assert_eq!(merged["work_mem"], ParameterValue::Text("8MB".to_owned()));
        assert_eq!(merged["max_connections"], ParameterValue::Integer(100));
        assert_eq!(merged.len(), 2);
    }
}
