//! The dynamic configuration (`bootstrap.dcs`, the DCS `config` key, and
//! `PATCH /config` requests) read from JSON.

use matriarch_model::ClusterConfig;

use crate::error::ConfigError;

/// The keys of the dynamic configuration, for refusing unknown ones.
pub(super) const CLUSTER_CONFIG_KEYS: &[&str] = &[
    "ttl",
    "loop_wait",
    "retry_timeout",
    "maximum_lag_on_failover",
    "synchronous_mode",
    "synchronous_mode_strict",
    "synchronous_node_count",
    "failsafe_mode",
    "pause",
    "postgresql",
    "primary_start_timeout",
    "slots",
    "ignore_slots",
    "member_slots_ttl",
    "standby_cluster",
];
pub(super) const CLUSTER_POSTGRESQL_KEYS: &[&str] = &[
    "parameters",
    "use_pg_rewind",
    "use_slots",
    "pg_hba",
    "pg_ident",
];

/// Reads a dynamic configuration from JSON, refusing unknown keys and
/// checking [`ClusterConfig::validate`]. `key` prefixes error messages.
pub(crate) fn cluster_config_from_json(
    key: &str,
    value: &serde_json::Value,
) -> Result<ClusterConfig, ConfigError> {
    let object = mapping(key, value)?;
    refuse_unknown_keys(key, object, CLUSTER_CONFIG_KEYS)?;
    if let Some(pg) = object.get("postgresql") {
        let key = format!("{key}.postgresql");
        refuse_unknown_keys(&key, mapping(&key, pg)?, CLUSTER_POSTGRESQL_KEYS)?;
    }
    dynamic_config_from_json(key, value)
}

/// `value` as a JSON object; `key` names it in the error.
fn mapping<'a>(
    key: &str,
    value: &'a serde_json::Value,
) -> Result<&'a serde_json::Map<String, serde_json::Value>, ConfigError> {
    value
        .as_object()
        .ok_or_else(|| ConfigError::invalid(key, "must be a mapping"))
}

/// Refuses the first key of `object` (the mapping at `key`) not in `known`.
fn refuse_unknown_keys(
    key: &str,
    object: &serde_json::Map<String, serde_json::Value>,
    known: &[&str],
) -> Result<(), ConfigError> {
    match object.keys().find(|field| !known.contains(&field.as_str())) {
        Some(field) => Err(ConfigError::invalid(
            format!("{key}.{field}"),
            format!("unknown key; expected one of {}", known.join(", ")),
        )),
        None => Ok(()),
    }
}

/// Top-level keys of Patroni's dynamic configuration that matriarch keeps
/// without acting on them, so a Patroni cluster's `config` key round-trips.
const PATRONI_ONLY_CONFIG_KEYS: &[&str] = &[
    "check_timeline",
    "primary_stop_timeout",
    "master_start_timeout",
    "master_stop_timeout",
    "maximum_lag_on_syncnode",
    "max_timelines_history",
    "retain_slots",
    "use_slots",
];

/// Refuses a top-level key of a requested change (`PATCH`/`PUT /config`)
/// that neither matriarch nor Patroni knows: most likely a typo (`tll`), which
/// would otherwise be stored and silently do nothing. Keys already in the DCS
/// are never checked, so a key written by another tool survives.
pub(crate) fn check_requested_config_keys(
    key: &str,
    requested: &serde_json::Value,
) -> Result<(), ConfigError> {
    let Some(object) = requested.as_object() else {
        return Ok(());
    };
    for field in object.keys() {
        let known = CLUSTER_CONFIG_KEYS.contains(&field.as_str())
            || PATRONI_ONLY_CONFIG_KEYS.contains(&field.as_str());
        if !known {
            let hint = CLUSTER_CONFIG_KEYS
                .iter()
                .find(|k| strsim::levenshtein(k, field) <= 2)
                .map(|k| format!(" (did you mean `{k}`?)"))
                .unwrap_or_default();
            return Err(ConfigError::invalid(
                format!("{key}.{field}"),
                format!("unknown setting{hint}; neither matriarch nor Patroni has it"),
            ));
        }
    }
    Ok(())
}

/// Reads a dynamic configuration from JSON as the DCS holds it: every known
/// key is type-checked (the error names it) and [`ClusterConfig::validate`]
/// applies, while unknown keys (Patroni's `check_timeline`,
/// `postgresql.recovery_conf`, ...) are kept in `other`, so that rewriting
/// the `config` key never drops them. `key` prefixes error messages.
pub(crate) fn dynamic_config_from_json(
    key: &str,
    value: &serde_json::Value,
) -> Result<ClusterConfig, ConfigError> {
    let object = mapping(key, value)?;
    for field in CLUSTER_CONFIG_KEYS {
        if let Some(v) = object.get(*field) {
            // Each field on its own, so the error names it.
            let mut single = serde_json::Map::new();
            single.insert((*field).to_owned(), v.clone());
            if let Err(err) = serde_json::from_value::<ClusterConfig>(single.into()) {
                return Err(ConfigError::invalid(
                    format!("{key}.{field}"),
                    err.to_string(),
                ));
            }
        }
    }
    let config: ClusterConfig = serde_json::from_value(value.clone())
        .map_err(|err| ConfigError::invalid(key, err.to_string()))?;
    config
        .validate()
        .map_err(|err| ConfigError::invalid(key, err.to_string()))?;
    super::dynamic_auth::cluster_auth_lines(key, &config)?;
    // A request with an invalid slot setting is refused; one already in the
    // DCS is left out by the agents and logged (see matriarch_model::SlotsConfig).
    let (_, slot_errors) = matriarch_model::SlotsConfig::from_config(&config);
    if let Some(err) = slot_errors.first() {
        let field = match err {
            matriarch_model::SlotConfigError::InvalidIgnoreRule { .. } => "ignore_slots",
            matriarch_model::SlotConfigError::InvalidMemberSlotsTtl { .. } => "member_slots_ttl",
            _ => "slots",
        };
        return Err(ConfigError::invalid(
            format!("{key}.{field}"),
            err.to_string(),
        ));
    }
    Ok(config)
}
