//! Patroni's `postgresql:` and `bootstrap:` sections.

use serde_norway::Value;

use super::builder::{entries, scalar_text, Builder};
use crate::config::check_all::managed_parameter_replacement;
use crate::config::dynamic::{CLUSTER_CONFIG_KEYS, CLUSTER_POSTGRESQL_KEYS};

/// `bootstrap:` (the whole file is `patroni`, for the node's own `pg_hba`).
/// A custom method (`method` and the section it names) is carried over as
/// it is; another method's section is dropped.
pub(super) fn bootstrap(out: &mut Builder, patroni: &Value, section: &Value) {
    let has_command = |name: &str| {
        section
            .get(name)
            .is_some_and(|v| v.get("command").is_some())
    };
    let chosen = section
        .get("method")
        .and_then(Value::as_str)
        .filter(|name| *name == "initdb" || has_command(name));
    for (field, value) in entries(section) {
        let key = format!("bootstrap.{field}");
        match field.as_str() {
            "dcs" => dcs(out, &value),
            "initdb" => initdb(out, &value),
            "users" => out.drop_key(
                &key,
                "create roles with SQL once the cluster runs (Patroni removed this setting too)",
            ),
            "post_bootstrap" | "post_init" => out.drop_key(
                &key,
                "matriarch runs no script after the bootstrap: run it once against the new leader",
            ),
            "method" if chosen.is_some() => out.set(&key, value),
            "method" => out.drop_key(&key, "it names no section with a command"),
            "pg_hba" => move_lines(out, patroni, &key, "pg_hba", &value),
            _ if chosen == Some(field.as_str()) => out.set(&key, value),
            _ if has_command(&field) => out.drop_key(
                &key,
                "a custom bootstrap method that bootstrap.method does not choose",
            ),
            _ => out.drop_key(&key, "not a bootstrap setting matriarch has"),
        }
    }
}

/// `bootstrap.dcs`.
fn dcs(out: &mut Builder, section: &Value) {
    // An empty mapping stays a mapping (not null) in the node file.
    out.set("bootstrap.dcs", Value::Mapping(Default::default()));
    for (field, value) in entries(section) {
        let key = format!("bootstrap.dcs.{field}");
        if field == "postgresql" {
            dcs_postgresql(out, &value);
        } else if CLUSTER_CONFIG_KEYS.contains(&field.as_str()) {
            out.set(&key, value);
        } else {
            out.drop_key(
                &key,
                "a Patroni-only dynamic setting matriarch does not act on",
            );
        }
    }
}

/// `bootstrap.dcs.postgresql`.
fn dcs_postgresql(out: &mut Builder, section: &Value) {
    for (field, value) in entries(section) {
        let key = format!("bootstrap.dcs.postgresql.{field}");
        match field.as_str() {
            "parameters" => parameters(out, &key, &key, &value),
            "recovery_conf" => out.drop_key(
                &key,
                "matriarch writes the recovery settings itself; `restore_command` goes in \
                 `postgresql.parameters`",
            ),
            _ if CLUSTER_POSTGRESQL_KEYS.contains(&field.as_str()) => out.set(&key, value),
            _ => out.drop_key(&key, "not a dynamic PostgreSQL setting matriarch has"),
        }
    }
}

/// Patroni's dynamic (or old `bootstrap.pg_hba`) `pg_hba`/`pg_ident` lines:
/// matriarch has them per node, so they become the node's lines unless it
/// has its own, which win (as in Patroni).
fn move_lines(out: &mut Builder, patroni: &Value, key: &str, field: &str, value: &Value) {
    let node_has_own = patroni
        .get("postgresql")
        .and_then(|pg| pg.get(field))
        .is_some();
    if node_has_own {
        out.drop_key(
            key,
            format!("the node's `postgresql.{field}` wins over it, as in Patroni"),
        );
    } else {
        out.map(
            key,
            &format!("postgresql.{field}"),
            value.clone(),
            Some("matriarch keeps these lines in each node's file".to_owned()),
        );
    }
}

/// `bootstrap.initdb`: Patroni's list of options (`data-checksums`) and
/// single-entry maps (`encoding: UTF8`) as initdb arguments.
fn initdb(out: &mut Builder, value: &Value) {
    let Some(items) = value.as_sequence() else {
        out.drop_key("bootstrap.initdb", "not a list");
        return;
    };
    let mut args = Vec::new();
    for item in items {
        if let Some(text) = scalar_text(item) {
            args.push(if text.starts_with('-') {
                text
            } else {
                format!("--{text}")
            });
        } else {
            for (option, v) in entries(item) {
                match scalar_text(&v) {
                    Some(v) => args.push(format!("--{option}={v}")),
                    None => out.drop_key(
                        &format!("bootstrap.initdb.{option}"),
                        "the value is not a scalar",
                    ),
                }
            }
        }
    }
    let how = format!("as initdb arguments: {}", args.join(" "));
    out.map(
        "bootstrap.initdb",
        "bootstrap.initdb",
        Value::Sequence(args.into_iter().map(Value::String).collect()),
        Some(how),
    );
}

/// `postgresql:`.
pub(super) fn postgresql(out: &mut Builder, section: &Value) {
    let methods: Vec<String> = section
        .get("create_replica_methods")
        .and_then(Value::as_sequence)
        .map(|seq| seq.iter().filter_map(scalar_text).collect())
        .unwrap_or_default();
    for (field, value) in entries(section) {
        let key = format!("postgresql.{field}");
        match field.as_str() {
            "listen" => listen(out, &value),
            "connect_address" | "data_dir" | "bin_dir" | "pg_hba" | "pg_ident" => {
                if field == "data_dir"
                    && !scalar_text(&value).is_some_and(|dir| dir.starts_with('/'))
                {
                    out.kept(&key, "matriarch needs an absolute path: make it one");
                }
                out.set(&key, value)
            }
            "authentication" => authentication(out, &value),
            "parameters" => parameters(out, &key, &key, &value),
            "callbacks" => callbacks(out, &value),
            "pre_promote" => out.map(&key, "callbacks.pre_promote", value, None),
            "before_stop" => out.drop_key(
                &key,
                "matriarch runs no script before stopping PostgreSQL; `callbacks.on_stop` runs after",
            ),
            "pgpass" => out.drop_key(
                &key,
                "matriarch keeps the replication password in `<data_dir>.pgpass` itself",
            ),
            "config_dir" => out.drop_key(
                &key,
                "matriarch keeps the configuration in the data directory (postgresql.conf includes its managed files)",
            ),
            "use_pg_rewind" | "use_slots" => out.drop_key(
                &key,
                format!("a dynamic setting: `bootstrap.dcs.postgresql.{field}` or `matriarch ctl edit-config`"),
            ),
            "use_unix_socket" | "use_unix_socket_repl" => out.drop_key(
                &key,
                "matriarch always connects through the socket in `postgresql.socket_dir`; replicas stream over TCP",
            ),
            // The methods and their sections, in Patroni's shape.
            "create_replica_methods" => out.set(&key, value),
            _ if methods.contains(&field) => out.set(&key, value),
            "pg_ctl_timeout" => out.drop_key(
                &key,
                "matriarch waits up to 300 s for start, stop, promote and rewind; a clone has only a stall limit (`postgresql.clone_stall_timeout`)",
            ),
            "recovery_conf" => out.drop_key(
                &key,
                "matriarch writes the recovery settings itself; `restore_command` goes in `postgresql.parameters`",
            ),
            "custom_conf" => out.drop_key(
                &key,
                "put the settings in `postgresql.parameters` (matriarch does not include another file)",
            ),
            "remove_data_directory_on_rewind_failure" | "remove_data_directory_on_diverged_timelines" => {
                out.drop_key(
                    &key,
                    "matriarch never empties a data directory on its own: use `matriarch ctl reinit`",
                )
            }
            "rewind" => out.drop_key(&key, "matriarch runs pg_rewind with fixed options"),
            "bin_name" => out.drop_key(&key, "matriarch runs the standard program names in `postgresql.bin_dir`"),
            "proxy_address" => out.drop_key(&key, "matriarch publishes no proxy_url"),
            "parameters_primary" | "parameters_replica" | "parameters_standby_leader" => out.drop_key(
                &key,
                "matriarch has no role-specific parameters: merge them into `postgresql.parameters`",
            ),
            "pg_hba_primary" | "pg_hba_replica" | "pg_hba_standby_leader" | "pg_ident_primary"
            | "pg_ident_replica" | "pg_ident_standby_leader" => out.drop_key(
                &key,
                "matriarch has no role-specific pg_hba/pg_ident: merge them into `postgresql.pg_hba`/`pg_ident`",
            ),
            _ => out.drop_key(&key, "not a Patroni postgresql setting matriarch has"),
        }
    }
}

/// `postgresql.listen`: one address (Patroni allows `a,b:port`).
fn listen(out: &mut Builder, value: &Value) {
    let text = scalar_text(value).unwrap_or_default();
    match text.rsplit_once(':') {
        Some((hosts, port)) if hosts.contains(',') => {
            let first = hosts.split(',').next().unwrap_or("").trim();
            out.map(
                "postgresql.listen",
                "postgresql.listen",
                Value::String(format!("{first}:{port}")),
                Some(format!(
                    "matriarch listens on one address: kept {first} of {hosts} (use 0.0.0.0 for all)"
                )),
            );
        }
        _ => out.set("postgresql.listen", Value::String(text)),
    }
}

/// `postgresql.authentication`: only `username` and `password` of each role.
fn authentication(out: &mut Builder, section: &Value) {
    for (role, value) in entries(section) {
        let key = format!("postgresql.authentication.{role}");
        if !matches!(role.as_str(), "superuser" | "replication" | "rewind") {
            out.drop_key(
                &key,
                "matriarch has the superuser, replication and rewind roles",
            );
            continue;
        }
        for (field, v) in entries(&value) {
            let field_key = format!("{key}.{field}");
            match field.as_str() {
                "username" | "password" => out.set(&field_key, v),
                _ => out.drop_key(
                    &field_key,
                    "matriarch connects with a username and password only (the superuser through the Unix socket)",
                ),
            }
        }
    }
}

/// Parameters at the Patroni key `from`, written to `to`: those matriarch
/// manages itself are dropped (`unix_socket_directories` becomes
/// `postgresql.socket_dir`).
fn parameters(out: &mut Builder, from: &str, to: &str, section: &Value) {
    // Keep the section even when every parameter is dropped.
    if !out.has(to) {
        out.set(to, Value::Mapping(Default::default()));
    }
    for (name, value) in entries(section) {
        let key = format!("{from}.{name}");
        match name.to_ascii_lowercase().as_str() {
            "unix_socket_directories" => socket_dir(out, &key, &value),
            "port" | "listen_addresses" => out.drop_key(
                &key,
                "matriarch sets it from `postgresql.listen` (host:port)",
            ),
            lower => match managed_parameter_replacement(lower) {
                Some(instead) => out.drop_key(
                    &key,
                    format!("matriarch sets this parameter itself; {instead}"),
                ),
                None => out.set(&format!("{to}.{name}"), value),
            },
        }
    }
}

/// `unix_socket_directories` (a comma-separated list): its first absolute
/// directory is `postgresql.socket_dir`.
fn socket_dir(out: &mut Builder, key: &str, value: &Value) {
    let text = scalar_text(value).unwrap_or_default();
    let dirs: Vec<&str> = text
        .split(',')
        .map(|d| d.trim().trim_matches(['\'', '"']))
        .filter(|d| !d.is_empty())
        .collect();
    let first = dirs.first().copied().unwrap_or("");
    if out.has("postgresql.socket_dir") || !first.starts_with('/') {
        out.drop_key(
            key,
            format!(
                "matriarch uses one absolute socket directory, `postgresql.socket_dir` (by default the data directory's parent); {text:?} does not give one"
            ),
        );
        return;
    }
    let how = (dirs.len() > 1).then(|| {
        format!(
            "matriarch uses one directory: the first of {}",
            dirs.join(", ")
        )
    });
    out.map(
        key,
        "postgresql.socket_dir",
        Value::String(first.to_owned()),
        how,
    );
}

/// `postgresql.callbacks` becomes the top-level `callbacks`.
fn callbacks(out: &mut Builder, section: &Value) {
    for (event, value) in entries(section) {
        let key = format!("postgresql.callbacks.{event}");
        match event.as_str() {
            "on_start" | "on_stop" | "on_role_change" | "on_restart" | "on_reload" => {
                let command = scalar_text(&value).unwrap_or_default();
                let how = command.contains(char::is_whitespace).then(|| {
                    "matriarch runs a program file, without shell words: wrap the command in a script"
                        .to_owned()
                });
                out.map(&key, &format!("callbacks.{event}"), value, how)
            }
            _ => out.drop_key(&key, "not a callback event matriarch has"),
        }
    }
}
