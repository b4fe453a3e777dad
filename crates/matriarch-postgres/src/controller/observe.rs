//! Observing the server: the data directory, the running server's state
//! over SQL, and a replica's timeline.

use matriarch_model::{Lsn, SystemId, Timeline};
use tokio_postgres::Client;

use super::files::DirContents;
use super::sql;
use super::PgController;
use crate::error::{Operation, PostgresError};
use crate::role::PgRole;
use crate::state::{
    DataDirectoryState, LocalState, ReplicationConnection, ServerState, StandbySyncState,
    WalPositions, WalSenderState,
};
use crate::sync_standby::SyncStandbyNames;
use crate::upstream::Upstream;

impl PgController {
    pub(super) async fn observe_inner(&self) -> Result<LocalState, PostgresError> {
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
            ..LocalState::empty()
        })
    }

    pub(super) async fn observe_running(
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
        let replay_paused = sql::text(row, 9) == Some("t");
        let last_replay_unix_micros = sql::parsed::<i64>(row, 10, op, context)?;
        let postmaster_start_unix_micros = sql::parsed::<i64>(row, 11, op, context)?;
        let server_version_num = sql::parsed::<u32>(row, 12, op, context)?;
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
            replay_paused,
            last_replay_unix_micros,
            postmaster_start_unix_micros,
            server_version_num,
        })
    }

    /// The timeline a running replica replays on: `IDENTIFY_SYSTEM` over a
    /// local replication connection, or the later of that and `estimate`
    /// (the WAL receiver's timeline while it streams, which it replays
    /// next). When the probe fails (a `pg_hba.conf` without the local
    /// replication line), `estimate` alone: it may lag behind a timeline
    /// switch until the replica's next restartpoint.
    pub(super) async fn replica_timeline(&self, estimate: Option<Timeline>) -> Option<Timeline> {
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
}
