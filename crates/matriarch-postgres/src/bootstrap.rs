//! What a brand-new cluster is created with.

use std::collections::BTreeMap;
use std::time::Duration;

use matriarch_model::ParameterValue;

use crate::secret::Credentials;

/// How [`crate::Postgres::bootstrap`] creates a new cluster.
///
/// Data checksums are always enabled by initdb: pg_rewind needs them (or
/// `wal_log_hints`), and they catch storage corruption before it spreads to
/// replicas. `Debug` is safe to log: passwords print as `***`.
#[derive(Clone, Debug, PartialEq)]
pub struct BootstrapSpec {
    /// The superuser `initdb` creates, which matriarch connects as.
    pub superuser: Credentials,
    /// The role replicas stream and take base backups as (`REPLICATION`).
    pub replication: Credentials,
    /// The role pg_rewind connects as, with only the function grants it
    /// needs; `None` makes pg_rewind connect as the superuser.
    pub rewind: Option<Credentials>,
    /// PostgreSQL settings for the new cluster, written to the
    /// configuration that matriarch manages.
    pub parameters: BTreeMap<String, ParameterValue>,
    /// `pg_hba.conf` lines, in order (the first match wins in PostgreSQL).
    pub pg_hba: Vec<String>,
    /// How the data directory is made: initdb, or a command that restores it.
    pub method: BootstrapMethod,
}

impl BootstrapSpec {
    /// PostgreSQL's usual role names without passwords (`postgres`, `replicator`),
    /// no rewind role, parameters or `pg_hba` lines, initdb: what the in-memory
    /// PostgreSQL, the simulation and the examples need, where nothing checks passwords.
    pub fn passwordless() -> Self {
        BootstrapSpec {
            superuser: Credentials::without_password("postgres"),
            replication: Credentials::without_password("replicator"),
            rewind: None,
            parameters: BTreeMap::new(),
            pg_hba: Vec::new(),
            method: BootstrapMethod::Initdb,
        }
    }

    /// The longest the bootstrap's own steps may take beyond the usual
    /// PostgreSQL operations: a custom method's [`CustomBootstrap::timeout`],
    /// `None` for initdb. The engine waits that much longer for it.
    pub fn extra_time(&self) -> Option<Duration> {
        match &self.method {
            BootstrapMethod::Initdb => None,
            BootstrapMethod::Custom(custom) => Some(custom.timeout),
        }
    }
}

/// How the data directory of a new cluster is made (Patroni's
/// `bootstrap.method`).
#[derive(Clone, Debug, Default, PartialEq)]
pub enum BootstrapMethod {
    /// `initdb` (Patroni's default method).
    #[default]
    Initdb,
    /// A user command that fills the data directory (restores a backup),
    /// then recovery (Patroni's custom bootstrap).
    Custom(CustomBootstrap),
}

/// A custom bootstrap method (Patroni's `bootstrap.<method>`): `argv` fills
/// the empty data directory, typically by restoring a backup; matriarch then
/// writes the recovery settings, starts PostgreSQL, waits until recovery
/// reached its target and promoted, and finishes the bootstrap as after
/// initdb (its configuration files, roles, `pg_hba.conf`).
///
/// The restored cluster keeps its source's system identifier: PostgreSQL
/// has no supported way to give it a new one.
#[derive(Clone, Debug, PartialEq)]
pub struct CustomBootstrap {
    /// The method's name (`bootstrap.method`), for logs and errors.
    pub name: String,
    /// The program and its arguments, run as the PostgreSQL OS user (the
    /// program is looked up in `PATH` unless it names a path). The caller
    /// adds Patroni's `--scope=... --datadir=...` unless `no_params`.
    pub argv: Vec<String>,
    /// Keep the recovery settings and signal files the command wrote
    /// (pgBackRest's `--type`/`--target`); otherwise they are removed from
    /// `postgresql.auto.conf` and only [`CustomBootstrap::recovery_conf`] applies.
    pub keep_existing_recovery_conf: bool,
    /// Recovery settings (`restore_command`, `recovery_target_time`, ...)
    /// written with `recovery.signal` before the first start; checked with
    /// [`check_recovery_conf`].
    pub recovery_conf: Option<BTreeMap<String, ParameterValue>>,
    /// The longest the command and then the recovery may each take.
    pub timeout: Duration,
}

/// The recovery settings a custom bootstrap's `recovery_conf` may hold.
pub const RECOVERY_PARAMETERS: &[&str] = &[
    "restore_command",
    "archive_cleanup_command",
    "recovery_end_command",
    "recovery_target",
    "recovery_target_name",
    "recovery_target_time",
    "recovery_target_xid",
    "recovery_target_lsn",
    "recovery_target_inclusive",
    "recovery_target_timeline",
    "recovery_target_action",
];

/// The settings that each name a recovery target; at most one may be set.
const RECOVERY_TARGETS: &[&str] = &[
    "recovery_target",
    "recovery_target_name",
    "recovery_target_time",
    "recovery_target_xid",
    "recovery_target_lsn",
];

/// Checks a custom bootstrap's `recovery_conf`: only recovery settings, at
/// most one target, and `recovery_target_action` `promote` (the default
/// matriarch writes with a target): a paused recovery would wait forever
/// and `shutdown` stops the server the bootstrap waits for. The error
/// says which setting is wrong and why.
pub fn check_recovery_conf(conf: &BTreeMap<String, ParameterValue>) -> Result<(), String> {
    for (name, value) in conf {
        if !RECOVERY_PARAMETERS.contains(&name.as_str()) {
            return Err(format!(
                "{name} is not a recovery setting (allowed: {})",
                RECOVERY_PARAMETERS.join(", ")
            ));
        }
        if value.to_string().contains(['\n', '\r', '\0']) {
            return Err(format!("{name} holds a line break"));
        }
    }
    let targets: Vec<&str> = RECOVERY_TARGETS
        .iter()
        .copied()
        .filter(|name| conf.contains_key(*name))
        .collect();
    if targets.len() > 1 {
        return Err(format!(
            "more than one recovery target ({}): PostgreSQL accepts one",
            targets.join(", ")
        ));
    }
    if let Some(action) = conf.get("recovery_target_action") {
        if !action.to_string().eq_ignore_ascii_case("promote") {
            return Err(format!(
                "recovery_target_action is {action:?}: matriarch needs `promote` (with `pause` \
                 recovery would wait forever at the target, `shutdown` stops the server)"
            ));
        }
    }
    Ok(())
}

/// `conf` as it is written: with a recovery target, `recovery_target_action`
/// defaults to `promote` (PostgreSQL's own default is `pause`).
pub(crate) fn recovery_settings(
    conf: &BTreeMap<String, ParameterValue>,
) -> BTreeMap<String, ParameterValue> {
    let mut settings = conf.clone();
    if RECOVERY_TARGETS.iter().any(|name| conf.contains_key(*name)) {
        settings
            .entry("recovery_target_action".to_owned())
            .or_insert_with(|| ParameterValue::Text("promote".to_owned()));
    }
    settings
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(pairs: &[(&str, &str)]) -> BTreeMap<String, ParameterValue> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), ParameterValue::Text((*v).to_owned())))
            .collect()
    }

    #[test]
    fn recovery_conf_takes_recovery_settings_with_one_target_that_promotes() {
        let ok = conf(&[
            ("restore_command", "pgbackrest archive-get %f \"%p\""),
            ("recovery_target_time", "2026-01-01 00:00:00+00"),
            ("recovery_target_inclusive", "false"),
        ]);
        assert_eq!(check_recovery_conf(&ok), Ok(()));
        assert_eq!(
            recovery_settings(&ok).get("recovery_target_action"),
            Some(&ParameterValue::Text("promote".to_owned()))
        );
        // To the end of the archive: no target, no action added.
        let end = conf(&[("restore_command", "cp /a/%f %p")]);
        assert_eq!(recovery_settings(&end), end);

        let err = check_recovery_conf(&conf(&[("primary_conninfo", "host=x")])).unwrap_err();
        assert!(
            err.contains("primary_conninfo is not a recovery setting"),
            "{err}"
        );
        let err = check_recovery_conf(&conf(&[
            ("recovery_target_time", "2026-01-01"),
            ("recovery_target_lsn", "0/3000000"),
        ]))
        .unwrap_err();
        assert!(err.contains("more than one recovery target"), "{err}");
        let err = check_recovery_conf(&conf(&[("recovery_target_action", "pause")])).unwrap_err();
        assert!(err.contains("needs `promote`"), "{err}");
        let err = check_recovery_conf(&conf(&[("restore_command", "a\nb")])).unwrap_err();
        assert!(err.contains("line break"), "{err}");
    }
}
