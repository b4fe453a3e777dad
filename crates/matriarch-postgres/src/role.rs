//! [`PgRole`]: what a running server is, as errors and observations name it.

use std::fmt;

/// The role of a running server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PgRole {
    /// Read-write (`pg_is_in_recovery()` is false).
    Primary,
    /// In recovery: streaming from an upstream or replaying archived WAL.
    Replica,
}

impl fmt::Display for PgRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PgRole::Primary => "primary",
            PgRole::Replica => "replica",
        })
    }
}
