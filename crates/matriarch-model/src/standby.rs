//! The `standby_cluster` section of the dynamic configuration: this cluster
//! replicates from another one, and its leader is a standby leader.

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use crate::slot_name::valid_slot_name;

/// Where a standby cluster takes its WAL from (Patroni's `standby_cluster`):
/// the member holding the lock streams from `host:port` with the
/// replication credentials (through slot `primary_slot_name` when set)
/// and/or restores from the archive with `restore_command`; it never
/// promotes while the section is set. Removing the section promotes it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize)]
pub struct StandbyCluster {
    /// The source's PostgreSQL host (its primary, or anything that follows it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// The source's PostgreSQL port (libpq's default 5432 when only `host` is set).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// The replication slot on the source to stream through (created there
    /// by whoever runs the source; none is created by the standby cluster).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub primary_slot_name: Option<String>,
    /// `restore_command` for the standby leader: WAL from the source's archive.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restore_command: Option<String>,
    /// `archive_cleanup_command` for the standby leader.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub archive_cleanup_command: Option<String>,
    /// `recovery_min_apply_delay` for the standby leader (a PostgreSQL time
    /// value: `300`, `5min`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recovery_min_apply_delay: Option<String>,
    /// How the first member of a new standby cluster is created (Patroni's
    /// list of methods; matriarch clones with pg_basebackup from `host:port`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub create_replica_methods: Option<Vec<String>>,
}

/// Why a `standby_cluster` section was refused: the message names the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("standby_cluster.{field}: {reason}")]
pub struct StandbyClusterError {
    /// The offending key (`host`, `port`, ...; `*` for the whole section).
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
}

fn refuse(field: &str, reason: impl Into<String>) -> StandbyClusterError {
    StandbyClusterError {
        field: field.to_owned(),
        reason: reason.into(),
    }
}

/// A text value that may go into a PostgreSQL configuration line.
fn text(field: &str, value: &Value) -> Result<String, StandbyClusterError> {
    let Value::String(text) = value else {
        return Err(refuse(field, format!("expected a string, got {value}")));
    };
    if text.is_empty() {
        return Err(refuse(field, "is empty"));
    }
    if text.contains(['\n', '\r', '\0']) {
        return Err(refuse(field, "contains a line break or NUL"));
    }
    Ok(text.clone())
}

/// A PostgreSQL time value: a whole number, optionally with a unit.
fn time_value(field: &str, value: &Value) -> Result<String, StandbyClusterError> {
    let text = match value {
        Value::Number(number) if number.is_u64() => number.to_string(),
        _ => text(field, value)?,
    };
    let trimmed = text.trim();
    let digits = trimmed.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = trimmed[digits.len()..].trim();
    let digits = digits.trim();
    let known_unit = ["", "us", "ms", "s", "min", "h", "d"].contains(&unit);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) || !known_unit {
        return Err(refuse(
            field,
            format!("{text:?} is not a time (a whole number with an optional unit: us, ms, s, min, h, d)"),
        ));
    }
    Ok(text)
}

impl StandbyCluster {
    /// Reads the section from its JSON value, refusing by name any key of
    /// the wrong type or value, any unknown key, and a section with none of
    /// `host`, `port`, `restore_command` (Patroni would take that for no
    /// standby cluster at all and promote: ambiguity must not promote).
    pub fn from_value(value: &Value) -> Result<Self, StandbyClusterError> {
        let Value::Object(map) = value else {
            return Err(refuse("*", format!("expected a mapping, got {value}")));
        };
        let mut section = StandbyCluster::default();
        for (key, value) in map {
            match key.as_str() {
                "host" => section.host = Some(text(key, value)?),
                "port" => {
                    let port = value
                        .as_u64()
                        .filter(|port| (1..=65535).contains(port))
                        .ok_or_else(|| {
                            refuse(
                                key,
                                format!("expected a port number (1-65535), got {value}"),
                            )
                        })?;
                    // Bounded just above.
                    section.port = u16::try_from(port).ok();
                }
                "primary_slot_name" => {
                    let slot = text(key, value)?;
                    if !valid_slot_name(&slot) {
                        return Err(refuse(
                            key,
                            format!("{slot:?} is not a replication slot name (lower-case letters, digits and '_', at most 63)"),
                        ));
                    }
                    section.primary_slot_name = Some(slot);
                }
                "restore_command" => section.restore_command = Some(text(key, value)?),
                "archive_cleanup_command" => {
                    section.archive_cleanup_command = Some(text(key, value)?)
                }
                "recovery_min_apply_delay" => {
                    section.recovery_min_apply_delay = Some(time_value(key, value)?)
                }
                "create_replica_methods" => {
                    let methods = value
                        .as_array()
                        .ok_or_else(|| refuse(key, format!("expected a list, got {value}")))?
                        .iter()
                        .map(|method| text(key, method))
                        .collect::<Result<Vec<_>, _>>()?;
                    section.create_replica_methods = Some(methods);
                }
                other => return Err(refuse(other, "unknown key")),
            }
        }
        if section.host.is_none() && section.port.is_none() && section.restore_command.is_none() {
            return Err(refuse(
                "*",
                "needs at least one of host, port and restore_command (remove the section to promote the cluster)",
            ));
        }
        Ok(section)
    }

    /// Whether the standby leader streams from the source (not only
    /// restores from the archive).
    pub fn streams(&self) -> bool {
        self.host.is_some() || self.port.is_some()
    }

    /// The source's port, libpq's default when unset.
    pub fn port_or_default(&self) -> u16 {
        self.port.unwrap_or(5432)
    }
}

/// `standby_cluster` as a `config` key field: absent or `null` is none,
/// anything else must be a valid section.
pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Box<StandbyCluster>>, D::Error> {
    let value = Option::<Value>::deserialize(deserializer)?;
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(value) => StandbyCluster::from_value(&value)
            .map(|section| Some(Box::new(section)))
            .map_err(serde::de::Error::custom),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<StandbyCluster, StandbyClusterError> {
        StandbyCluster::from_value(&serde_json::from_str(json).unwrap())
    }

    #[test]
    fn patroni_sections_are_read() {
        let section = parse(
            r#"{"host": "10.0.0.1", "port": 5433, "primary_slot_name": "standby_a",
                "restore_command": "cp /arch/%f %p", "archive_cleanup_command": "true",
                "recovery_min_apply_delay": "5min", "create_replica_methods": ["basebackup"]}"#,
        )
        .unwrap();
        assert_eq!(section.host.as_deref(), Some("10.0.0.1"));
        assert_eq!(section.port_or_default(), 5433);
        assert!(section.streams());
        let archive_only = parse(r#"{"restore_command": "cp /arch/%f %p"}"#).unwrap();
        assert!(!archive_only.streams());
        assert_eq!(
            parse(r#"{"host": "h", "recovery_min_apply_delay": 300}"#)
                .unwrap()
                .recovery_min_apply_delay
                .as_deref(),
            Some("300")
        );
    }

    #[test]
    fn invalid_values_are_refused_by_name() {
        for (json, field) in [
            (r#"{"host": 5}"#, "host"),
            (r#"{"host": ""}"#, "host"),
            (r#"{"host": "a\nb"}"#, "host"),
            (r#"{"port": 70000}"#, "port"),
            (r#"{"port": "5432"}"#, "port"),
            (r#"{"port": 0}"#, "port"),
            (
                r#"{"host": "h", "primary_slot_name": "Bad-Slot"}"#,
                "primary_slot_name",
            ),
            (
                r#"{"host": "h", "recovery_min_apply_delay": "soon"}"#,
                "recovery_min_apply_delay",
            ),
            (
                r#"{"host": "h", "create_replica_methods": "basebackup"}"#,
                "create_replica_methods",
            ),
            (r#"{"host": "h", "hots": "x"}"#, "hots"),
            (r#"{"primary_slot_name": "a"}"#, "*"),
            (r#"{}"#, "*"),
            (r#""yes""#, "*"),
        ] {
            let err = parse(json).unwrap_err();
            assert_eq!(err.field, field, "{json}: {err}");
            assert!(
                err.to_string()
                    .starts_with(&format!("standby_cluster.{field}")),
                "{err}"
            );
        }
    }

    #[test]
    fn encoding_keeps_only_the_keys_given() {
        let json = r#"{"host":"127.0.0.1","port":5432,"create_replica_methods":["basebackup"]}"#;
        let section = parse(json).unwrap();
        assert_eq!(serde_json::to_string(&section).unwrap(), json);
    }
}
