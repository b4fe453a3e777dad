//! The model's error type.

use crate::config::ConfigError;

/// Errors from parsing model values.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    /// Text that is not a PostgreSQL LSN (`X/Y`).
    #[error("invalid LSN {input:?}: {reason}")]
    InvalidLsn {
        /// The rejected text.
        input: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Text that is not a database system identifier.
    #[error("invalid system identifier {input:?}: expected an unsigned 64-bit decimal number")]
    InvalidSystemId {
        /// The rejected text.
        input: String,
    },
    /// A member name that cannot be used.
    #[error("invalid member name {name:?}: {reason}")]
    InvalidMemberName {
        /// The rejected name.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A namespace or scope that cannot form DCS keys.
    #[error("invalid DCS layout (namespace {namespace:?}, scope {scope:?}): {reason}")]
    InvalidLayout {
        /// The namespace given.
        namespace: String,
        /// The scope given.
        scope: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A configuration that breaks a rule.
    #[error("invalid cluster configuration: {0}")]
    InvalidConfig(#[from] ConfigError),
}
