//! Replication: the connection strings programs use, slots on the
//! upstream, following another upstream, and synchronous standbys.

use std::time::Instant;

use matriarch_model::SystemId;
use tokio_postgres::Client;

use super::files::SYNC_CONF_FILE;
use super::sql::Target;
use super::{files, sql};
use super::{Live, PgController, POLL};
use crate::error::{Operation, PostgresError};
use crate::quoting;
use crate::role::PgRole;
use crate::secret::Credentials;
use crate::sync_standby::SyncStandbyNames;
use crate::upstream::{push_libpq_value, Upstream};

impl PgController {
    /// The libpq connection string for a program that connects to
    /// `upstream` (no password: it goes through `PGPASSWORD`). Its
    /// `application_name` is the member name, a space and `suffix`, which no
    /// member name can be, so pg_stat_replication never mistakes a base
    /// backup for the member's replica.
    pub(super) fn program_conninfo(
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
    pub(super) async fn ensure_slot(
        &self,
        op: Operation,
        upstream: &Upstream,
    ) -> Result<Option<SystemId>, PostgresError> {
        if upstream.standby_source.is_some() {
            // Another cluster: its slot (primary_slot_name) is its own business.
            return Ok(None);
        }
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
        let literal = quoting::sql_literal(&slot);
        let query = format!(
            "SELECT system_identifier::text FROM pg_control_system(); \
             SELECT pg_create_physical_replication_slot({literal}, true) \
             WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = {literal})"
        );
        match self
            .query(
                &client,
                op,
                &format!("creating replication slot {slot} on {}", upstream.member),
                &query,
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
    pub(super) async fn ensure_slot_best_effort(&self, op: Operation, upstream: &Upstream) {
        if let Err(err) = self.ensure_slot(op, upstream).await {
            tracing::warn!(member = self.member(), upstream = %upstream.member, error = %err, "could not ensure the replication slot on the upstream");
        }
    }

    /// Points a running replica at `upstream` with a reload.
    pub(super) async fn follow_running(
        &self,
        op: Operation,
        upstream: &Upstream,
        client: &Client,
    ) -> Result<(), PostgresError> {
        if self.current_upstream(op)?.as_ref() == Some(upstream) {
            let rows = self
                .query(
                    client,
                    op,
                    "reading pg_stat_wal_receiver",
                    "SELECT status FROM pg_stat_wal_receiver",
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
        self.reload_conf(client, op).await?;
        tracing::info!(member = self.member(), upstream = %upstream.member, "following a new upstream");
        Ok(())
    }

    pub(super) async fn follow_inner(&self, upstream: &Upstream) -> Result<(), PostgresError> {
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

    pub(super) async fn current_sync(
        &self,
        client: &Client,
    ) -> Result<SyncStandbyNames, PostgresError> {
        let row = self
            .query_row(
                client,
                Operation::SetSynchronousStandbyNames,
                "reading synchronous_standby_names",
                "SELECT current_setting('synchronous_standby_names')",
            )
            .await?;
        sql::text(&row, 0)
            .unwrap_or_default()
            .parse::<SyncStandbyNames>()
    }

    pub(super) async fn set_sync_inner(
        &self,
        names: &SyncStandbyNames,
    ) -> Result<(), PostgresError> {
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
        self.reload_conf(&client, op).await?;
        tracing::info!(member = self.member(), synchronous_standby_names = %names, "set synchronous_standby_names");
        let deadline = Instant::now() + self.config.timeouts.reload;
        loop {
            // A new session sees the postmaster's configuration once it has
            // processed the reload.
            let probe = self.session(op, "connecting to check the reload").await?;
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
