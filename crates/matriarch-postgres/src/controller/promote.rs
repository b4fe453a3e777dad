//! Role changes: promoting a replica and demoting a primary.

use std::time::Instant;

use matriarch_model::Timeline;
use tokio_postgres::Client;

use super::files::DirContents;
use super::sql;
use super::{Live, PgController, PROMOTE_POLL};
use crate::error::{Operation, PostgresError};
use crate::role::PgRole;
use crate::upstream::Upstream;
use crate::{StartAs, StopMode};

impl PgController {
    pub(super) async fn promote_inner(&self) -> Result<Timeline, PostgresError> {
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
        let row = self
            .query_row(&client, op, "pg_promote()", "SELECT pg_promote(false)")
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
            let row = self
                .query_row(
                    &client,
                    op,
                    "waiting for the end of recovery",
                    "SELECT pg_is_in_recovery()",
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

    pub(super) async fn primary_timeline(
        &self,
        op: Operation,
        client: &Client,
    ) -> Result<Timeline, PostgresError> {
        let context = "reading the timeline";
        let row = self
            .query_row(client, op, context, sql::PRIMARY_TIMELINE_SQL)
            .await?;
        sql::parsed::<u32>(&row, 0, op, context)?
            .map(Timeline)
            .ok_or_else(|| PostgresError::Unexpected {
                operation: op,
                context: context.to_owned(),
                message: "NULL".to_owned(),
            })
    }

    pub(super) async fn demote_inner(
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
}
