//! `postgresql.create_replica_methods` and each method's own section
//! (`postgresql.basebackup`, `postgresql.pgbackrest`, `postgresql.<custom>`),
//! read as Patroni reads them.

use std::collections::BTreeMap;

use matriarch_postgres::{CustomMethod, ReplicaMethod};
use serde::{Deserialize, Deserializer};
use serde_norway::Value;

use super::postgresql::PostgresqlSection;
use crate::error::ConfigError;

/// pg_basebackup options matriarch sets itself (Patroni's list, plus the
/// ones matriarch passes: checkpoint and slot).
const BASEBACKUP_RESERVED: &[&str] = &[
    "pgdata",
    "format",
    "wal-method",
    "xlog-method",
    "gzip",
    "version",
    "dbname",
    "host",
    "port",
    "username",
    "password",
    "slot",
];

/// `postgresql:` with each replica method's section taken out before the
/// rest is read (strictly, unknown keys refused).
pub(super) fn deserialize_section<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<PostgresqlSection>, D::Error> {
    let Some(mut value) = Option::<Value>::deserialize(deserializer)? else {
        return Ok(None);
    };
    let mut sections = BTreeMap::new();
    if let Value::Mapping(map) = &mut value {
        let names: Vec<String> = map
            .get("create_replica_methods")
            .and_then(Value::as_sequence)
            .map(|seq| {
                seq.iter()
                    .filter_map(|n| n.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        for name in names {
            if let Some(section) = map.remove(name.as_str()) {
                sections.insert(name, section);
            }
        }
    }
    let mut section: PostgresqlSection =
        serde_norway::from_value(value).map_err(serde::de::Error::custom)?;
    section.replica_method_sections = sections;
    Ok(Some(section))
}

/// The methods in order: `[basebackup]` when none are configured.
pub(crate) fn replica_methods(pg: &PostgresqlSection) -> Result<Vec<ReplicaMethod>, ConfigError> {
    if pg.create_replica_methods.is_empty() {
        return Ok(vec![ReplicaMethod::Basebackup {
            options: Vec::new(),
        }]);
    }
    pg.create_replica_methods
        .iter()
        .map(|name| method(name, pg.replica_method_sections.get(name)))
        .collect()
}

fn method(name: &str, section: Option<&Value>) -> Result<ReplicaMethod, ConfigError> {
    let key = format!("postgresql.{name}");
    let has_command = matches!(section, Some(Value::Mapping(m)) if m.contains_key("command"));
    match name {
        "basebackup" => {
            let options = user_options(&key, section)?;
            for option in &options {
                let bare = option.trim_start_matches('-');
                let bare = bare.split('=').next().unwrap_or_default();
                if BASEBACKUP_RESERVED.contains(&bare) {
                    return Err(ConfigError::invalid(
                        &key,
                        format!("{option}: matriarch sets it itself"),
                    ));
                }
                if bare == "compress" && !option.contains("=server-") {
                    return Err(ConfigError::invalid(
                        &key,
                        "compress must be server-side (server-gzip, server-lz4, server-zstd)",
                    ));
                }
            }
            Ok(ReplicaMethod::Basebackup { options })
        }
        "pgbackrest" if !has_command => Ok(ReplicaMethod::PgBackRest {
            options: user_options(&key, section)?,
        }),
        _ => custom(name, &key, section),
    }
}

/// Patroni's `process_user_options`: a list of `flag` or `{name: value}`
/// items, or a map of `name: value`, as `--flag` / `--name=value`.
fn user_options(key: &str, section: Option<&Value>) -> Result<Vec<String>, ConfigError> {
    let bad = |what: &str| {
        ConfigError::invalid(
            key,
            format!("{what}: give a list of `flag` or `name: value` items, or a map"),
        )
    };
    let pair = |name: &Value, value: &Value| -> Result<String, ConfigError> {
        let name = name
            .as_str()
            .ok_or_else(|| bad("an option name is not a string"))?;
        Ok(match value {
            // pgBackRest's and pg_basebackup's switches take no value.
            Value::Bool(true) => format!("--{name}"),
            Value::Bool(false) => format!("--no-{name}"),
            _ => format!("--{name}={}", scalar(value).ok_or_else(|| bad(name))?),
        })
    };
    match section {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Sequence(items)) => items
            .iter()
            .map(|item| match item {
                Value::String(flag) => Ok(format!("--{flag}")),
                Value::Mapping(one) if one.len() == 1 => {
                    let (name, value) = one.iter().next().ok_or_else(|| bad("an empty item"))?;
                    pair(name, value)
                }
                _ => Err(bad("an item is neither a string nor a one-key map")),
            })
            .collect(),
        Some(Value::Mapping(map)) => map.iter().map(|(n, v)| pair(n, v)).collect(),
        Some(_) => Err(bad("not a list or a map")),
    }
}

fn custom(name: &str, key: &str, section: Option<&Value>) -> Result<ReplicaMethod, ConfigError> {
    let mut method = CustomMethod {
        name: name.to_owned(),
        command: Vec::new(),
        params: Vec::new(),
        keep_data: false,
        no_params: false,
        no_leader: false,
    };
    let mut command = name.to_owned();
    match section {
        None | Some(Value::Null) => {}
        Some(Value::Mapping(map)) => {
            for (option, value) in map {
                let option = option
                    .as_str()
                    .ok_or_else(|| ConfigError::invalid(key, "an option name is not a string"))?;
                let text = scalar(value).ok_or_else(|| {
                    ConfigError::invalid(
                        format!("{key}.{option}"),
                        "must be a string, number or boolean",
                    )
                })?;
                let flag = || ["true", "on", "yes", "y", "1"].contains(&text.as_str());
                match option {
                    "command" => command = text,
                    "keep_data" => method.keep_data = flag(),
                    "no_params" => method.no_params = flag(),
                    "no_leader" | "no_master" => method.no_leader = flag(),
                    _ => method.params.push((option.to_owned(), text)),
                }
            }
        }
        Some(_) => return Err(ConfigError::invalid(key, "must be a map of options")),
    }
    method.command = shlex::split(&command)
        .filter(|words| !words.is_empty())
        .ok_or_else(|| {
            ConfigError::invalid(format!("{key}.command"), "empty or unbalanced quotes")
        })?;
    Ok(ReplicaMethod::Command(method))
}

fn scalar(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(yaml: &str) -> PostgresqlSection {
        let text = format!(
            "listen: 127.0.0.1:5432\ndata_dir: /d\nauthentication:\n  superuser: {{username: postgres}}\n  replication: {{username: r}}\n{yaml}"
        );
        deserialize_section(serde_norway::Deserializer::from_str(&text))
            .expect("parses")
            .expect("present")
    }

    #[test]
    fn default_is_basebackup() {
        assert_eq!(
            replica_methods(&section("")).expect("methods"),
            [ReplicaMethod::Basebackup { options: vec![] }]
        );
    }

    #[test]
    fn patroni_shapes_of_methods_and_options() {
        let pg = section(
            "create_replica_methods: [wal_g, pgbackrest, basebackup]\n\
             wal_g: {command: '/usr/bin/clone --fast', no_master: 1, keep_data: true, threads: 4}\n\
             pgbackrest: {delta: true, process-max: 2}\n\
             basebackup: [verbose, {max-rate: 100M}]\n",
        );
        let methods = replica_methods(&pg).expect("methods");
        assert_eq!(
            methods[0],
            ReplicaMethod::Command(CustomMethod {
                name: "wal_g".into(),
                command: vec!["/usr/bin/clone".into(), "--fast".into()],
                params: vec![("threads".into(), "4".into())],
                keep_data: true,
                no_params: false,
                no_leader: true,
            })
        );
        assert_eq!(
            methods[1],
            ReplicaMethod::PgBackRest {
                options: vec!["--delta".into(), "--process-max=2".into()]
            }
        );
        assert_eq!(
            methods[2],
            ReplicaMethod::Basebackup {
                options: vec!["--verbose".into(), "--max-rate=100M".into()]
            }
        );
    }

    #[test]
    fn basebackup_options_matriarch_sets_are_refused() {
        for bad in ["[{pgdata: /x}]", "{wal-method: fetch}", "{compress: gzip}"] {
            let pg = section(&format!(
                "create_replica_methods: [basebackup]\nbasebackup: {bad}\n"
            ));
            assert!(replica_methods(&pg).is_err(), "{bad}");
        }
        let pg =
            section("create_replica_methods: [basebackup]\nbasebackup: {compress: server-lz4}\n");
        assert!(replica_methods(&pg).is_ok());
    }

    #[test]
    fn a_section_of_a_method_not_listed_is_an_unknown_key() {
        let text = "listen: 127.0.0.1:5432\ndata_dir: /d\nauthentication:\n  superuser: {username: postgres}\n  replication: {username: r}\nwal_g: {command: x}\n";
        assert!(deserialize_section(serde_norway::Deserializer::from_str(text)).is_err());
    }
}
