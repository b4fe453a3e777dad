//! SQL connections (tokio-postgres) and the queries the controller runs.

use std::path::Path;
use std::time::Duration;

use tokio_postgres::{Client, Config, NoTls, SimpleQueryMessage, SimpleQueryRow};

use crate::error::{Operation, PostgresError};
use crate::secret::Credentials;

/// A libpq-like connection target.
pub(crate) enum Target<'a> {
    /// The local server's Unix socket directory.
    Socket(&'a Path),
    /// A host name, address, or (starting with `/`) a socket directory.
    Host(&'a str),
}

/// Opens a connection; the error is a message for humans.
pub(crate) async fn connect(
    target: Target<'_>,
    port: u16,
    credentials: &Credentials,
    application_name: &str,
    timeout: Duration,
) -> Result<Client, String> {
    let mut config = Config::new();
    match target {
        Target::Socket(dir) => {
            config.host_path(dir);
        }
        Target::Host(host) if host.starts_with('/') => {
            config.host_path(host);
        }
        Target::Host(host) => {
            config.host(host);
        }
    }
    config
        .port(port)
        .user(&credentials.username)
        .dbname("postgres")
        .application_name(application_name)
        .connect_timeout(timeout);
    if let Some(password) = &credentials.password {
        config.password(password.expose());
    }
    let (client, connection) = tokio::time::timeout(timeout, config.connect(NoTls))
        .await
        .map_err(|_| format!("no connection within {timeout:?}"))?
        .map_err(|err| describe(&err))?;
    tokio::spawn(async move {
        // Ends when the client is dropped or the server goes away.
        let _ = connection.await;
    });
    Ok(client)
}

/// The server's message (with detail) or the driver's.
pub(crate) fn describe(err: &tokio_postgres::Error) -> String {
    if let Some(db) = err.as_db_error() {
        let mut text = format!("{}: {}", db.severity(), db.message());
        if let Some(detail) = db.detail() {
            text.push_str(&format!(" ({detail})"));
        }
        return text;
    }
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

/// Runs `sql` (one or more statements) in one round trip; returns the rows
/// of each statement.
pub(crate) async fn simple(
    client: &Client,
    op: Operation,
    context: &str,
    sql: &str,
    timeout: Duration,
) -> Result<Vec<Vec<SimpleQueryRow>>, PostgresError> {
    let messages = tokio::time::timeout(timeout, client.simple_query(sql))
        .await
        .map_err(|_| PostgresError::Timeout {
            operation: op,
            after: timeout,
        })?
        .map_err(|err| PostgresError::Query {
            operation: op,
            context: context.to_owned(),
            message: describe(&err),
        })?;
    let mut statements = vec![Vec::new()];
    for message in messages {
        match message {
            SimpleQueryMessage::Row(row) => {
                if let Some(rows) = statements.last_mut() {
                    rows.push(row);
                }
            }
            SimpleQueryMessage::CommandComplete(_) => statements.push(Vec::new()),
            _ => {}
        }
    }
    statements.pop();
    Ok(statements)
}

/// The first row of the first statement.
pub(crate) async fn one_row(
    client: &Client,
    op: Operation,
    context: &str,
    sql: &str,
    timeout: Duration,
) -> Result<SimpleQueryRow, PostgresError> {
    simple(client, op, context, sql, timeout)
        .await?
        .into_iter()
        .next()
        .and_then(|rows| rows.into_iter().next())
        .ok_or_else(|| PostgresError::Unexpected {
            operation: op,
            context: context.to_owned(),
            message: "the query returned no row".to_owned(),
        })
}

/// Column `index` of `row` as text (`None` for NULL or a missing column).
pub(crate) fn text(row: &SimpleQueryRow, index: usize) -> Option<&str> {
    row.try_get(index).ok().flatten()
}

/// Column `index` parsed with `FromStr`; NULL is `None`, junk an error.
pub(crate) fn parsed<T: std::str::FromStr>(
    row: &SimpleQueryRow,
    index: usize,
    op: Operation,
    context: &str,
) -> Result<Option<T>, PostgresError> {
    match text(row, index) {
        None => Ok(None),
        Some(value) => value
            .parse::<T>()
            .map(Some)
            .map_err(|_| PostgresError::Unexpected {
                operation: op,
                context: context.to_owned(),
                message: format!("cannot parse {value:?} (column {index})"),
            }),
    }
}

/// One round trip for `observe`: the state, then `pg_stat_replication`.
///
/// The primary's timeline comes from the name of its current WAL file (as
/// Patroni does): right after a promotion `pg_control_checkpoint()` still
/// shows the old timeline until the next checkpoint.
pub(crate) const OBSERVE_SQL: &str = "\
SELECT pg_is_in_recovery(), \
 (SELECT system_identifier FROM pg_control_system()), \
 CASE WHEN pg_is_in_recovery() \
   THEN GREATEST((SELECT received_tli FROM pg_stat_wal_receiver), \
                 (SELECT timeline_id FROM pg_control_checkpoint()), \
                 (SELECT min_recovery_end_timeline FROM pg_control_recovery())) \
   ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int END, \
 CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_lsn() END, \
 CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_flush_lsn() END, \
 pg_last_wal_receive_lsn(), \
 pg_last_wal_replay_lsn(), \
 current_setting('synchronous_standby_names'), \
 COALESCE((SELECT status = 'streaming' FROM pg_stat_wal_receiver), false); \
SELECT application_name, state, sync_state, sent_lsn, write_lsn, flush_lsn, replay_lsn \
 FROM pg_stat_replication ORDER BY application_name, pid";

/// The timeline of a server that runs read-write.
pub(crate) const PRIMARY_TIMELINE_SQL: &str =
    "SELECT ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int";
