//! The "unknown key" error of the configuration's checks, naming the
//! closest known key.

use crate::error::ConfigError;

/// "unknown key" for `field` at `key`, with the closest known one.
pub(crate) fn unknown_key(key: &str, field: &str, known: &[&str]) -> ConfigError {
    let hint = known
        .iter()
        .find(|k| strsim::levenshtein(k, field) <= 2)
        .map(|k| format!("did you mean `{k}`? "))
        .unwrap_or_default();
    ConfigError::invalid(
        key,
        format!("unknown key; {hint}expected one of {}", known.join(", ")),
    )
}
