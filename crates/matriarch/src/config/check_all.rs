//! `matriarch check`: every error `matriarch run` would refuse the
//! configuration for before starting, all in one run, one error each.
//!
//! [`NodeConfig::validate`] stops at the first error (that is what `run`
//! needs); here each error found is reported and its key taken out of the
//! file, and the rest is checked again, so that one run lists them all.
//! On top, the checks `run` only makes later (the PostgreSQL controller's:
//! parameters matriarch manages itself) and one error per `bootstrap.dcs` key.

use std::collections::BTreeMap;

use matriarch_model::ParameterValue;

use super::dynamic::{CLUSTER_CONFIG_KEYS, CLUSTER_POSTGRESQL_KEYS};
use super::unknown_key::unknown_key;
use super::{cluster_config_from_json, set_path, NodeConfig, ENV_OVERRIDES};
use crate::error::ConfigError;

/// How many errors of [`NodeConfig::validate`] one run collects at most
/// (each is one more validation of the file).
const MAX_VALIDATE_ROUNDS: usize = 32;

/// What a run of `matriarch check` found.
#[derive(Debug)]
pub(crate) struct CheckReport {
    /// Every error, in the order found; empty for a usable configuration.
    pub errors: Vec<ConfigError>,
    /// The PostgreSQL major version, when the binaries could be checked.
    pub postgres_major: Option<u32>,
}

/// Checks the configuration `text` (with `env`'s `MATRIARCH_*` overrides)
/// as `matriarch run` would before starting, collecting every error. A file
/// that does not parse is one error (with its line and column).
pub(crate) fn check_text(text: &str, env: impl Fn(&str) -> Option<String>) -> CheckReport {
    let config = match NodeConfig::parse_unvalidated(text, &env) {
        Ok(config) => config,
        Err(error) => {
            return CheckReport {
                errors: vec![error],
                postgres_major: None,
            }
        }
    };
    let mut errors = Vec::new();
    // Parsed above, so these succeed; a failure only ends the extra rounds.
    let mut value = raw_value(text, &env);

    // bootstrap.dcs: every key on its own.
    let dcs_errors = match &config.bootstrap.dcs {
        Some(dcs) => bootstrap_dcs_errors(dcs),
        None => Vec::new(),
    };
    if !dcs_errors.is_empty() {
        if let Some(value) = value.as_mut() {
            remove_path(value, "bootstrap.dcs");
        }
    }
    errors.extend(dcs_errors);

    // Local parameters (bootstrap.dcs's were checked above).
    if let Some(pg) = &config.postgresql {
        for (name, error) in parameter_errors("postgresql.parameters", &pg.parameters) {
            if let Some(value) = value.as_mut() {
                remove_path(value, &format!("postgresql.parameters.{name}"));
            }
            errors.push(error);
        }
    }

    // validate(), again and again without the keys already reported.
    let mut current = value
        .as_ref()
        .and_then(|value| serde_norway::from_value::<NodeConfig>(value.clone()).ok())
        .unwrap_or_else(|| config.clone());
    for _ in 0..MAX_VALIDATE_ROUNDS {
        match current.validate() {
            Ok(validated) => {
                // What run checks next: the PostgreSQL controller's setup.
                let controller = crate::node::controller_config(&current, &validated)
                    .map_err(|error| error.to_string())
                    .and_then(|pg_config| {
                        matriarch_postgres::PgController::new(pg_config)
                            .map_err(|error| error.to_string())
                    });
                if let Err(message) = controller {
                    errors.push(ConfigError::invalid("postgresql", message));
                }
                // And the DCS client (no network call: etcd endpoints and TLS files).
                let dcs = &validated.bootstrap_dcs;
                if let Err(error) = crate::dcs::build(&current, dcs.retry_timeout, dcs.ttl) {
                    let key = if current.etcd3.is_some() {
                        "etcd3"
                    } else {
                        "zookeeper"
                    };
                    errors.push(ConfigError::invalid(key, error.to_string()));
                }
                break;
            }
            Err(error) => {
                let next = match (&value, error_key(&error)) {
                    (Some(value), Some(key)) => without_key(value, &key),
                    _ => None,
                };
                errors.push(error);
                let Some((next_value, next_config)) = next else {
                    break;
                };
                value = Some(next_value);
                current = next_config;
            }
        }
    }

    // What run refuses next: a required watchdog it cannot use.
    if config.watchdog.mode == super::WatchdogMode::Required {
        if let Err(error) = crate::watchdog::check_device_usable(&config.watchdog.device) {
            errors.push(ConfigError::invalid(
                "watchdog.device",
                format!("watchdog.mode is required and {error}; run refuses to start without it"),
            ));
        }
    }

    let postgres_major = match config.check_postgres_version() {
        Ok(major) => Some(major),
        Err(error) => {
            errors.push(error);
            None
        }
    };
    CheckReport {
        errors,
        postgres_major,
    }
}

/// The file as a YAML value with the environment overrides applied.
fn raw_value(text: &str, env: &impl Fn(&str) -> Option<String>) -> Option<serde_norway::Value> {
    let mut value: serde_norway::Value = serde_norway::from_str(text).ok()?;
    if value.is_null() {
        value = serde_norway::Value::Mapping(serde_norway::Mapping::new());
    }
    for (var, key) in ENV_OVERRIDES {
        if let Some(raw) = env(var) {
            set_path(&mut value, key, serde_norway::Value::String(raw));
        }
    }
    Some(value)
}

/// The dotted key an error names, if it is one.
fn error_key(error: &ConfigError) -> Option<String> {
    match error {
        ConfigError::Invalid { key, .. } if !key.contains('/') => Some(key.clone()),
        _ => None,
    }
}

/// `value` without `key`, and the configuration it parses to; `None` when
/// the key is not in the file (a missing required key: `scope` and `name`
/// get a placeholder instead) or the rest no longer parses.
fn without_key(
    value: &serde_norway::Value,
    key: &str,
) -> Option<(serde_norway::Value, NodeConfig)> {
    let mut next = value.clone();
    if !remove_path(&mut next, key) {
        if key != "scope" && key != "name" {
            return None;
        }
        set_path(
            &mut next,
            key,
            serde_norway::Value::String("placeholder".to_owned()),
        );
    }
    let config = serde_norway::from_value(next.clone()).ok()?;
    Some((next, config))
}

/// Removes the dotted `path` from a YAML mapping; whether it was there.
fn remove_path(root: &mut serde_norway::Value, path: &str) -> bool {
    let mut node = root;
    let mut segments: Vec<&str> = path.split('.').collect();
    let Some(last) = segments.pop() else {
        return false;
    };
    for segment in segments {
        match node.get_mut(segment) {
            Some(child) => node = child,
            None => return false,
        }
    }
    match node.as_mapping_mut() {
        Some(map) => map.remove(last).is_some(),
        None => false,
    }
}

/// One error per wrong key of `bootstrap.dcs` (unknown keys, wrong types,
/// managed parameters); then, if every key is right on its own, the checks
/// across keys (`ttl` against `loop_wait` ...).
fn bootstrap_dcs_errors(dcs: &serde_json::Value) -> Vec<ConfigError> {
    const KEY: &str = "bootstrap.dcs";
    let mut errors = mapping_errors(KEY, dcs, CLUSTER_CONFIG_KEYS, |key, field, value| {
        if field == "postgresql" {
            return dcs_postgresql_errors(&key, value);
        }
        cluster_config_error(key, serde_json::json!({ field: value }))
    });
    if errors.is_empty() {
        if let Err(error) = cluster_config_from_json(KEY, dcs) {
            errors.push(error);
        }
    }
    errors
}

/// The errors of `bootstrap.dcs.postgresql` (at `key`).
fn dcs_postgresql_errors(key: &str, value: &serde_json::Value) -> Vec<ConfigError> {
    mapping_errors(key, value, CLUSTER_POSTGRESQL_KEYS, |key, field, value| {
        if field != "parameters" {
            return cluster_config_error(
                key,
                serde_json::json!({ "postgresql": { field: value } }),
            );
        }
        match serde_json::from_value::<BTreeMap<String, ParameterValue>>(value.clone()) {
            Ok(parameters) => parameter_errors(&key, &parameters)
                .into_iter()
                .map(|(_, e)| e)
                .collect(),
            Err(error) => vec![ConfigError::invalid(key, error.to_string())],
        }
    })
}

/// The errors of the mapping at `key`: "must be a mapping", else per field an
/// unknown key (against `known`) or what `field_errors(<key>.<field>, field,
/// value)` finds.
fn mapping_errors(
    key: &str,
    mapping: &serde_json::Value,
    known: &[&str],
    mut field_errors: impl FnMut(String, &str, &serde_json::Value) -> Vec<ConfigError>,
) -> Vec<ConfigError> {
    let Some(object) = mapping.as_object() else {
        return vec![ConfigError::invalid(key, "must be a mapping")];
    };
    let mut errors = Vec::new();
    for (field, value) in object {
        let key = format!("{key}.{field}");
        if known.contains(&field.as_str()) {
            errors.extend(field_errors(key, field, value));
        } else {
            errors.push(unknown_key(&key, field, known));
        }
    }
    errors
}

/// The error, at `key`, of a cluster configuration of one key alone.
fn cluster_config_error(key: String, alone: serde_json::Value) -> Vec<ConfigError> {
    match serde_json::from_value::<matriarch_model::ClusterConfig>(alone) {
        Ok(_) => Vec::new(),
        Err(error) => vec![ConfigError::invalid(key, error.to_string())],
    }
}

/// The parameters of `parameters` (at `key`) that the PostgreSQL
/// controller refuses, with the error (naming what to use instead).
fn parameter_errors(
    key: &str,
    parameters: &BTreeMap<String, ParameterValue>,
) -> Vec<(String, ConfigError)> {
    parameters
        .iter()
        .filter_map(|(name, value)| {
            let error = matriarch_postgres::check_parameter(name, value).err()?;
            let message = match managed_parameter_replacement(name) {
                Some(instead) => {
                    format!("matriarch sets this parameter itself; {instead}")
                }
                None => error.to_string(),
            };
            Some((
                name.clone(),
                ConfigError::invalid(format!("{key}.{name}"), message),
            ))
        })
        .collect()
}

/// What to configure instead of a parameter matriarch manages.
pub(crate) fn managed_parameter_replacement(name: &str) -> Option<&'static str> {
    Some(match name.to_ascii_lowercase().as_str() {
        "listen_addresses" | "port" => "use `postgresql.listen` (host:port)",
        "unix_socket_directories" => "use `postgresql.socket_dir` (one absolute directory)",
        "unix_socket_permissions" => "remove it: the socket is always 0700",
        "data_directory" => "use `postgresql.data_dir`",
        "config_file" | "include" | "include_if_exists" | "include_dir" => {
            "remove it: put each setting in `postgresql.parameters`"
        }
        "hba_file" => "use `postgresql.pg_hba` (a list of pg_hba.conf lines)",
        "ident_file" => "use `postgresql.pg_ident` (a list of pg_ident.conf lines)",
        "primary_conninfo" | "primary_slot_name" => {
            "remove it: matriarch points replicas at the leader (`postgresql.authentication.replication`)"
        }
        "synchronous_standby_names" => {
            "use `synchronous_mode` and `synchronous_node_count` in the dynamic configuration"
        }
        _ => return None,
    })
}
