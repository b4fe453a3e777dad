//! The `pg_hba.conf` and `pg_ident.conf` lines a [`super::PgController`]
//! holds (the node's and the cluster's), and the check every line passes
//! before it is taken.

use crate::error::PostgresError;

/// The `pg_hba.conf` and `pg_ident.conf` lines in force.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct AuthLines {
    /// `pg_hba.conf` lines, first match wins; empty: the file is left alone.
    pub(super) pg_hba: Vec<String>,
    /// `pg_ident.conf` lines; empty: the file is left alone.
    pub(super) pg_ident: Vec<String>,
}

/// Refuses a line that would break the file (a line break or NUL).
pub(super) fn check_lines(what: &str, lines: &[String]) -> Result<(), PostgresError> {
    match lines.iter().find(|line| line.contains(['\n', '\r', '\0'])) {
        Some(line) => Err(PostgresError::InvalidConfig {
            reason: format!("{what} line {line:?} holds a line break"),
        }),
        None => Ok(()),
    }
}
