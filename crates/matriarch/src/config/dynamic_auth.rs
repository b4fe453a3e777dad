//! The dynamic configuration's `postgresql.pg_hba` and `postgresql.pg_ident`
//! (Patroni's): lists of lines every member writes to its `pg_hba.conf` /
//! `pg_ident.conf` unless its node file has its own.

use matriarch_model::ClusterConfig;

use crate::error::ConfigError;

/// The cluster's `pg_hba` and `pg_ident` lines (empty when absent).
/// `key` prefixes error messages: a value that is not a list of strings, or
/// a line with a line break, is refused.
pub(crate) fn cluster_auth_lines(
    key: &str,
    config: &ClusterConfig,
) -> Result<(Vec<String>, Vec<String>), ConfigError> {
    let lines = |field: &str| -> Result<Vec<String>, ConfigError> {
        let Some(value) = config.postgresql.other.get(field) else {
            return Ok(Vec::new());
        };
        let key = format!("{key}.postgresql.{field}");
        let list = value
            .as_array()
            .ok_or_else(|| ConfigError::invalid(&key, "must be a list of lines"))?;
        list.iter()
            .map(|line| match line.as_str() {
                Some(text) if !text.contains(['\n', '\r', '\0']) => Ok(text.to_owned()),
                Some(_) => Err(ConfigError::invalid(&key, "a line holds a line break")),
                None => Err(ConfigError::invalid(&key, "every line must be a string")),
            })
            .collect()
    };
    Ok((lines("pg_hba")?, lines("pg_ident")?))
}
