//! The controller's queries on a connected client, each bounded by its
//! connect timeout.

use tokio_postgres::{Client, SimpleQueryRow};

use super::{sql, PgController};
use crate::error::{Operation, PostgresError};

impl PgController {
    /// A local superuser session, within the connect timeout; a failure is
    /// a [`PostgresError::Query`] with `context`.
    pub(super) async fn session(
        &self,
        op: Operation,
        context: &str,
    ) -> Result<Client, PostgresError> {
        self.connect_local(self.config.timeouts.connect)
            .await
            .map_err(|message| PostgresError::Query {
                operation: op,
                context: context.to_owned(),
                message,
            })
    }

    /// Runs `query` (one or more statements) within the connect timeout;
    /// returns the rows of each statement.
    pub(super) async fn query(
        &self,
        client: &Client,
        op: Operation,
        context: &str,
        query: &str,
    ) -> Result<Vec<Vec<SimpleQueryRow>>, PostgresError> {
        sql::simple(client, op, context, query, self.config.timeouts.connect).await
    }

    /// The first row of `query`'s first statement, within the connect
    /// timeout.
    pub(super) async fn query_row(
        &self,
        client: &Client,
        op: Operation,
        context: &str,
        query: &str,
    ) -> Result<SimpleQueryRow, PostgresError> {
        sql::one_row(client, op, context, query, self.config.timeouts.connect).await
    }
}
