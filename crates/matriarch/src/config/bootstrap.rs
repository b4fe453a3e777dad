//! `bootstrap:`: what a new cluster is created with, in Patroni's shape:
//! initdb, or a custom method (`method: <name>` and a `<name>:` section)
//! whose command restores a backup.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use matriarch_model::ParameterValue;
use matriarch_postgres::{check_recovery_conf, BootstrapMethod, CustomBootstrap};
use serde::Deserialize;

use super::unknown_key::unknown_key;
use crate::error::ConfigError;

/// `bootstrap:`. Unknown keys are refused by [`BootstrapConfig::method`]:
/// besides `dcs`, `initdb` and `method`, only the section `method` names.
#[derive(Clone, Debug, Default, Deserialize)]
pub(crate) struct BootstrapConfig {
    /// The dynamic configuration a new cluster starts with (Patroni's
    /// `bootstrap.dcs`); checked with `ClusterConfig::validate`.
    #[serde(default)]
    pub dcs: Option<serde_json::Value>,
    /// Extra `initdb` arguments (e.g. `--locale=C`, `--no-sync`).
    #[serde(default)]
    pub initdb: Vec<String>,
    /// The bootstrap method: `initdb` (the default) or the name of a
    /// custom method's section.
    #[serde(default)]
    pub method: Option<String>,
    /// The custom method's section (and, refused, any other key).
    #[serde(flatten)]
    pub sections: BTreeMap<String, serde_json::Value>,
}

/// A custom method's section (Patroni's `bootstrap.<method>`); the keys
/// not named here become `--key=value` arguments of the command.
#[derive(Clone, Debug, Deserialize)]
struct CustomSection {
    /// The command, split as a shell would (no shell runs it).
    command: String,
    /// Keep the recovery settings the command wrote.
    #[serde(default)]
    keep_existing_recovery_conf: bool,
    /// Do not pass `--scope=... --datadir=...`.
    #[serde(default)]
    no_params: bool,
    /// Recovery settings written before the first start.
    #[serde(default)]
    recovery_conf: Option<BTreeMap<String, ParameterValue>>,
    /// A new system identifier for the restored cluster: refused.
    #[serde(default)]
    new_system_identifier: bool,
    /// Extra `--key=value` arguments.
    #[serde(flatten)]
    args: BTreeMap<String, serde_json::Value>,
}

/// Arguments Patroni never passes from the section (it passes `scope` and
/// `datadir` itself).
const RESERVED_ARGS: &[&str] = &["scope", "datadir"];

/// Why `new_system_identifier: true` is refused.
pub(crate) const NEW_SYSTEM_ID_REFUSED: &str = "PostgreSQL cannot give a restored cluster a new \
     system identifier: pg_resetwal has no option for it (up to PostgreSQL 17; one is only \
     proposed), and rewriting global/pg_control by hand is unsupported. A restored backup keeps \
     its source's identifier; for a new one, initdb a cluster and load a dump or subscribe to \
     the source with logical replication";

impl BootstrapConfig {
    /// The method: initdb, or the custom method whose command restores a
    /// backup into `data_dir` of the cluster `scope`, given `timeout` for
    /// the command and again for the recovery. The error names the key.
    pub(crate) fn method(
        &self,
        scope: &str,
        data_dir: &Path,
        timeout: Duration,
    ) -> Result<BootstrapMethod, ConfigError> {
        let name = match self.method.as_deref() {
            None | Some("initdb") => None,
            Some("") => {
                return Err(ConfigError::invalid(
                    "bootstrap.method",
                    "must not be empty",
                ))
            }
            Some(name @ ("dcs" | "method")) => {
                return Err(ConfigError::invalid(
                    "bootstrap.method",
                    format!("{name:?} is a bootstrap setting, not a method's name"),
                ))
            }
            Some(name) => Some(name),
        };
        if let Some(key) = self.sections.keys().find(|key| Some(key.as_str()) != name) {
            return Err(unknown_key(
                &format!("bootstrap.{key}"),
                key,
                &[
                    "dcs",
                    "initdb",
                    "method",
                    "the section bootstrap.method names",
                ],
            ));
        }
        let Some(name) = name else {
            return Ok(BootstrapMethod::Initdb);
        };
        let key = format!("bootstrap.{name}");
        let section = self.sections.get(name).ok_or_else(|| {
            ConfigError::invalid(
                "bootstrap.method",
                format!("names {name:?} but there is no `{key}` section with its command"),
            )
        })?;
        let section: CustomSection = serde_json::from_value(section.clone())
            .map_err(|e| ConfigError::invalid(&key, e.to_string()))?;
        if section.new_system_identifier {
            return Err(ConfigError::invalid(
                format!("{key}.new_system_identifier"),
                NEW_SYSTEM_ID_REFUSED,
            ));
        }
        let mut argv = shlex::split(&section.command)
            .filter(|argv| !argv.is_empty())
            .ok_or_else(|| {
                ConfigError::invalid(
                    format!("{key}.command"),
                    "empty, or its quotes do not close",
                )
            })?;
        if !section.no_params {
            argv.push(format!("--scope={scope}"));
            argv.push(format!("--datadir={}", data_dir.display()));
        }
        for (arg, value) in &section.args {
            if RESERVED_ARGS.contains(&arg.as_str()) {
                continue;
            }
            let value = match value {
                serde_json::Value::String(text) => text.clone(),
                serde_json::Value::Number(_) | serde_json::Value::Bool(_) => value.to_string(),
                _ => {
                    return Err(ConfigError::invalid(
                        format!("{key}.{arg}"),
                        "a command argument must be a string, number or boolean",
                    ))
                }
            };
            argv.push(format!("--{arg}={value}"));
        }
        if let Some(conf) = &section.recovery_conf {
            check_recovery_conf(conf)
                .map_err(|reason| ConfigError::invalid(format!("{key}.recovery_conf"), reason))?;
        }
        Ok(BootstrapMethod::Custom(CustomBootstrap {
            name: name.to_owned(),
            argv,
            keep_existing_recovery_conf: section.keep_existing_recovery_conf,
            recovery_conf: section.recovery_conf,
            timeout,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::NodeConfig;

    const NODE: &str = "scope: restored\nname: node1\netcd3:\n  hosts: 127.0.0.1:2379\n\
        postgresql:\n  listen: 127.0.0.1:5432\n  data_dir: /srv/pg/data\n  authentication:\n    \
        superuser: {username: postgres}\n    replication: {username: replicator}\n";

    /// The method of `NODE` with `bootstrap` (indented by 2) or its error.
    fn method(bootstrap: &str) -> Result<BootstrapMethod, String> {
        let text = format!("{NODE}bootstrap:\n{bootstrap}");
        NodeConfig::parse(&text, |_| None)
            .map(|(_, validated)| validated.bootstrap_method)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn a_patroni_custom_method_runs_its_command_with_scope_datadir_and_extra_arguments() {
        let BootstrapMethod::Custom(custom) = method(
            "  method: pitr\n  pitr:\n    command: /usr/bin/restore-it --from 'last night'\n    \
             keep_existing_recovery_conf: true\n    target: 42\n    scope: ignored\n    \
             recovery_conf:\n      restore_command: cp /archive/%f %p\n      \
             recovery_target_time: '2026-12-06 12:00:00+00'\n",
        )
        .unwrap() else {
            panic!("not a custom method");
        };
        assert_eq!(custom.name, "pitr");
        assert_eq!(
            custom.argv,
            [
                "/usr/bin/restore-it",
                "--from",
                "last night",
                "--scope=restored",
                "--datadir=/srv/pg/data",
                "--target=42",
            ]
        );
        assert!(custom.keep_existing_recovery_conf);
        let conf = custom.recovery_conf.unwrap();
        assert_eq!(conf.len(), 2, "{conf:?}");

        let BootstrapMethod::Custom(custom) =
            method("  method: copy\n  copy: {command: restore-it, no_params: true}\n").unwrap()
        else {
            panic!("not a custom method");
        };
        assert_eq!(custom.argv, ["restore-it"]);
        assert!(!custom.keep_existing_recovery_conf && custom.recovery_conf.is_none());

        for initdb in ["  initdb: [--no-sync]\n", "  method: initdb\n"] {
            assert_eq!(method(initdb), Ok(BootstrapMethod::Initdb));
        }
    }

    #[test]
    fn a_wrong_custom_method_is_refused_naming_the_key() {
        let cases = [
            ("  method: pitr\n", "bootstrap.method", "no `bootstrap.pitr` section"),
            (
                "  pitr: {command: x}\n",
                "bootstrap.pitr",
                "the section bootstrap.method names",
            ),
            ("  intdb: [--no-sync]\n", "bootstrap.intdb", "did you mean `initdb`"),
            (
                "  method: pitr\n  pitr: {command: x}\n  other: {command: y}\n",
                "bootstrap.other",
                "unknown key",
            ),
            ("  method: pitr\n  pitr: {no_params: true}\n", "bootstrap.pitr", "command"),
            (
                "  method: pitr\n  pitr: {command: \"'open\"}\n",
                "bootstrap.pitr.command",
                "quotes",
            ),
            (
                "  method: pitr\n  pitr: {command: x, nested: {a: 1}}\n",
                "bootstrap.pitr.nested",
                "string, number or boolean",
            ),
            (
                "  method: pitr\n  pitr: {command: x, recovery_conf: {recovery_target_action: pause}}\n",
                "bootstrap.pitr.recovery_conf",
                "needs `promote`",
            ),
            (
                "  method: pitr\n  pitr: {command: x, new_system_identifier: true}\n",
                "bootstrap.pitr.new_system_identifier",
                "pg_resetwal has no option",
            ),
        ];
        for (bootstrap, key, reason) in cases {
            let err = method(bootstrap).unwrap_err();
            assert!(
                err.contains(key) && err.contains(reason),
                "{bootstrap}: {err}"
            );
        }
    }
}
