//! Replication slots: reading `pg_replication_slots` and making it match
//! the slots the HA engine wants ([`crate::Postgres::reconcile_slots`]).
//!
//! One connection and one query when nothing changes (the leader runs it
//! every loop); a statement per slot created, dropped or advanced.

use matriarch_model::{DesiredSlots, Lsn, SlotKind, SlotReport, SlotState};
use tokio_postgres::Client;

use super::{sql, Live, PgController};
use crate::error::{Operation, PostgresError};
use crate::quoting::sql_literal;

const OP: Operation = Operation::ReconcileSlots;

/// `pg_replication_slots` as one row per slot. `synced` (PostgreSQL 17+)
/// is read through `to_jsonb` so the same query runs on 15 and 16.
const LIST_SLOTS: &str = "SELECT s.slot_name, s.slot_type, s.database, s.plugin, s.active::text, \
     s.temporary::text, \
     (CASE WHEN s.slot_type = 'logical' THEN s.confirmed_flush_lsn ELSE s.restart_lsn END)::text, \
     coalesce(to_jsonb(s) ->> 'synced', 'false') \
     FROM pg_replication_slots s ORDER BY s.slot_name";

/// A row of [`LIST_SLOTS`].
struct Listed {
    name: String,
    state: SlotState,
    temporary: bool,
    synced: bool,
}

impl PgController {
    pub(super) async fn reconcile_slots_inner(
        &self,
        desired: &DesiredSlots,
    ) -> Result<SlotReport, PostgresError> {
        let (role, client) = match self.live(OP).await? {
            Live::Running(role, client) => (role, client),
            Live::NotRunning | Live::Unavailable => {
                return Err(PostgresError::NotRunning { operation: OP })
            }
        };
        let in_recovery = role == crate::PgRole::Replica;
        let mut report = SlotReport::default();
        let listed = self.list_slots(&client).await?;
        for slot in &listed {
            if slot.temporary || desired.ignored(&slot.name, &slot.state.kind) {
                continue;
            }
            let wanted = desired.slots.get(&slot.name);
            if wanted.is_none() && desired.drop_others && !slot.synced {
                if slot.state.active {
                    report
                        .skipped
                        .insert(slot.name.clone(), "in use: not dropped".to_owned());
                } else {
                    self.execute(
                        &client,
                        &format!("dropping replication slot {}", slot.name),
                        &format!(
                            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
                             WHERE slot_name = {} AND NOT active",
                            sql_literal(&slot.name)
                        ),
                    )
                    .await?;
                    tracing::info!(member = self.member(), slot = %slot.name, "dropped replication slot");
                    report.dropped.insert(slot.name.clone());
                    continue;
                }
            }
            if let Some(kind) = wanted {
                if *kind != slot.state.kind {
                    report.skipped.insert(
                        slot.name.clone(),
                        format!(
                            "exists as another kind of slot ({:?}), wanted {kind:?}",
                            slot.state.kind
                        ),
                    );
                }
            }
            report.slots.insert(slot.name.clone(), slot.state.clone());
        }
        for (name, kind) in &desired.slots {
            if listed.iter().any(|slot| &slot.name == name) {
                continue;
            }
            if desired.ignored(name, kind) {
                continue;
            }
            let created = match kind {
                SlotKind::Physical => {
                    let query = format!(
                        "SELECT pg_create_physical_replication_slot({}, true)",
                        sql_literal(name)
                    );
                    self.execute(
                        &client,
                        &format!("creating replication slot {name}"),
                        &query,
                    )
                    .await
                }
                SlotKind::Logical { .. } if in_recovery => {
                    // PostgreSQL 17+ keeps copies of failover slots itself
                    // (sync_replication_slots); before, a standby has no way
                    // to hold a copy that decodes from the right place.
                    report.skipped.insert(
                        name.clone(),
                        "a logical slot is not copied to a standby (PostgreSQL 17+ synchronizes failover slots itself)".to_owned(),
                    );
                    continue;
                }
                SlotKind::Logical { database, plugin } => {
                    self.create_logical(name, database, plugin).await
                }
            };
            match created {
                Ok(()) => {
                    tracing::info!(member = self.member(), slot = %name, kind = kind.type_name(), "created replication slot");
                    report.created.insert(name.clone());
                }
                // One slot that cannot be made (no such database, no free
                // slot, a long transaction holding up a logical slot's
                // snapshot) does not stop the others or the positions.
                Err(PostgresError::Query { message, .. }) => {
                    report
                        .skipped
                        .insert(name.clone(), format!("not created: {message}"));
                }
                Err(err) => return Err(err),
            }
        }
        for (name, target) in &desired.advance_to {
            match report.slots.get(name) {
                Some(current)
                    if current.active || current.position.is_some_and(|at| at >= *target) =>
                {
                    continue
                }
                Some(current) if in_recovery && current.kind != SlotKind::Physical => continue,
                Some(_) => {}
                None if report.created.contains(name) => {}
                None => continue,
            }
            self.advance(&client, name, *target, &mut report).await?;
        }
        if !report.created.is_empty() || !report.advanced.is_empty() {
            // Positions after the changes, for the `status` key.
            for slot in self.list_slots(&client).await? {
                if let Some(known) = report.slots.get_mut(&slot.name) {
                    *known = slot.state;
                } else if report.created.contains(&slot.name) {
                    report.slots.insert(slot.name, slot.state);
                }
            }
        }
        Ok(report)
    }

    async fn advance(
        &self,
        client: &Client,
        name: &str,
        target: Lsn,
        report: &mut SlotReport,
    ) -> Result<(), PostgresError> {
        // Never past what this server has: PostgreSQL refuses that for a
        // logical slot and clamps it for a physical one.
        let query = format!(
            "SELECT pg_replication_slot_advance({name}, least({target}::pg_lsn, \
             CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_flush_lsn() END)) \
             FROM pg_replication_slots WHERE slot_name = {name} AND NOT active \
             AND coalesce(CASE WHEN slot_type = 'logical' THEN confirmed_flush_lsn ELSE restart_lsn END, '0/0') < {target}::pg_lsn",
            name = sql_literal(name),
            target = sql_literal(&target.to_string()),
        );
        match self
            .query(
                client,
                OP,
                &format!("advancing replication slot {name}"),
                &query,
            )
            .await
        {
            Ok(rows) => {
                if rows.first().is_some_and(|rows| !rows.is_empty()) {
                    report.advanced.insert(name.to_owned());
                }
                Ok(())
            }
            // A slot without a restart position yet, or a target before
            // the WAL it can reach, is retried next time.
            Err(PostgresError::Query { message, .. }) => {
                report
                    .skipped
                    .insert(name.to_owned(), format!("not advanced: {message}"));
                Ok(())
            }
            Err(err) => Err(err),
        }
    }

    async fn list_slots(&self, client: &Client) -> Result<Vec<Listed>, PostgresError> {
        let statements = self
            .query(client, OP, "reading pg_replication_slots", LIST_SLOTS)
            .await?;
        let mut out = Vec::new();
        for row in statements.first().into_iter().flatten() {
            let Some(name) = sql::text(row, 0) else {
                continue;
            };
            let kind = match (sql::text(row, 1), sql::text(row, 2), sql::text(row, 3)) {
                (Some("logical"), database, plugin) => SlotKind::Logical {
                    database: database.unwrap_or_default().to_owned(),
                    plugin: plugin.unwrap_or_default().to_owned(),
                },
                _ => SlotKind::Physical,
            };
            out.push(Listed {
                name: name.to_owned(),
                state: SlotState {
                    kind,
                    active: sql::text(row, 4) == Some("true"),
                    position: sql::text(row, 6).and_then(|text| text.parse::<Lsn>().ok()),
                },
                temporary: sql::text(row, 5) == Some("true"),
                synced: sql::text(row, 7) == Some("true"),
            });
        }
        Ok(out)
    }

    async fn execute(
        &self,
        client: &Client,
        context: &str,
        query: &str,
    ) -> Result<(), PostgresError> {
        self.query(client, OP, context, query).await?;
        Ok(())
    }
}

/// How long creating a logical slot may wait for the transactions running
/// at its start (it needs a snapshot): the server cancels it past this, so
/// a long transaction never piles up waiting creations; retried next loop.
const LOGICAL_CREATE_TIMEOUT_MS: u32 = 1000;

impl PgController {
    /// Creates logical slot `name` for `database` with `plugin`, on its own
    /// connection to that database (a logical slot belongs to the database
    /// of the session that creates it); on PostgreSQL 17+ as a failover
    /// slot, so standbys with `sync_replication_slots = on` keep a copy a
    /// promotion can use.
    async fn create_logical(
        &self,
        name: &str,
        database: &str,
        plugin: &str,
    ) -> Result<(), PostgresError> {
        let client = self.connect_database(database).await?;
        let row = self
            .query_row(
                &client,
                OP,
                "reading server_version_num",
                "SELECT current_setting('server_version_num')",
            )
            .await?;
        let version: u32 = sql::text(&row, 0)
            .and_then(|text| text.parse().ok())
            .unwrap_or(0);
        let failover = if version >= 170_000 {
            ", failover => true"
        } else {
            ""
        };
        let query = format!(
            "SET statement_timeout = {LOGICAL_CREATE_TIMEOUT_MS}; \
             SELECT pg_create_logical_replication_slot({}, {}, false, false{failover})",
            sql_literal(name),
            sql_literal(plugin)
        );
        self.execute(
            &client,
            &format!("creating logical replication slot {name} in {database}"),
            &query,
        )
        .await
    }

    /// A superuser connection to `database` over the local socket (a
    /// logical slot belongs to the database its creating session is in).
    async fn connect_database(&self, database: &str) -> Result<Client, PostgresError> {
        let timeout = self.config.timeouts.connect;
        let mut config = tokio_postgres::Config::new();
        config
            .host_path(&self.config.socket_dir)
            .port(self.config.port)
            .user(&self.config.superuser.username)
            .dbname(database)
            .application_name("matriarch slots")
            .connect_timeout(timeout);
        if let Some(password) = &self.config.superuser.password {
            config.password(password.expose());
        }
        let failed = |message: String| PostgresError::Query {
            operation: OP,
            context: format!("connecting to database {database:?} to create a logical slot"),
            message,
        };
        let (client, connection) =
            tokio::time::timeout(timeout, config.connect(tokio_postgres::NoTls))
                .await
                .map_err(|_| failed(format!("no connection within {timeout:?}")))?
                .map_err(|err| failed(sql::describe(&err)))?;
        tokio::spawn(async move {
            // Ends when the client is dropped.
            let _ = connection.await;
        });
        Ok(client)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::Path;

    use matriarch_model::{MemberName, ParameterValue};

    use super::super::files::{render_managed, ManagedSettings};

    fn managed(major: Option<u32>, parameters: &BTreeMap<String, ParameterValue>) -> String {
        render_managed(&ManagedSettings {
            member: &MemberName::new("pg1").expect("a member name"),
            listen_addresses: "127.0.0.1",
            port: 5432,
            socket_dir: Path::new("/tmp"),
            parameters,
            major_version: major,
        })
    }

    /// The last line setting `name` (the one PostgreSQL uses).
    fn setting(text: &str, name: &str) -> Option<String> {
        text.lines()
            .rev()
            .find_map(|line| line.strip_prefix(&format!("{name} = ")))
            .map(str::to_owned)
    }

    #[test]
    fn retained_wal_is_bounded_by_default_and_the_bound_can_be_changed() {
        let text = managed(Some(15), &BTreeMap::new());
        assert_eq!(
            setting(&text, "max_slot_wal_keep_size").as_deref(),
            Some("'8GB'")
        );
        let parameters = [(
            "max_slot_wal_keep_size".to_owned(),
            ParameterValue::Integer(-1),
        )]
        .into();
        let text = managed(Some(15), &parameters);
        assert_eq!(
            setting(&text, "max_slot_wal_keep_size").as_deref(),
            Some("-1")
        );
    }

    #[test]
    fn postgresql_17_standbys_synchronize_failover_slots() {
        for major in [None, Some(15), Some(16)] {
            let text = managed(major, &BTreeMap::new());
            assert_eq!(setting(&text, "sync_replication_slots"), None, "{major:?}");
        }
        for major in [17, 18] {
            let text = managed(Some(major), &BTreeMap::new());
            assert_eq!(
                setting(&text, "sync_replication_slots").as_deref(),
                Some("on")
            );
            assert_eq!(
                setting(&text, "hot_standby_feedback").as_deref(),
                Some("on")
            );
        }
    }
}
