//! Every call to the DCS and PostgreSQL is bounded: one that does not
//! answer in time fails like one that answered with an error.

use std::future::Future;
use std::time::Duration;

use matriarch_dcs::DcsError;
use matriarch_postgres::PostgresError;

use super::errors::PostgresCallError;

/// `future`, or [`DcsError::Timeout`] after `after`.
pub(super) async fn bounded<T, E: From<DcsError>>(
    operation: &'static str,
    after: Duration,
    future: impl Future<Output = Result<T, E>>,
) -> Result<T, E> {
    match tokio::time::timeout(after, future).await {
        Ok(result) => result,
        Err(_) => Err(DcsError::Timeout { operation, after }.into()),
    }
}

/// `future`, or [`PostgresCallError::Timeout`] after `after`.
pub(super) async fn pg_bounded<T>(
    after: Duration,
    future: impl Future<Output = Result<T, PostgresError>>,
) -> Result<T, PostgresCallError> {
    match tokio::time::timeout(after, future).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(PostgresCallError::Timeout { after }),
    }
}
