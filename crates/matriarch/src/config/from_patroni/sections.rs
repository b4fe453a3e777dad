//! The top level of a Patroni file and its small sections: `log`,
//! `restapi`, the DCS, `watchdog`, `tags`.

use serde_norway::Value;

use super::builder::{entries, scalar_text, Builder};
use super::postgresql;

/// Converts the top-level Patroni `key` (the whole file is `patroni`).
pub(super) fn top_level(out: &mut Builder, patroni: &Value, key: &str, value: Value) {
    match key {
        "scope" | "namespace" | "name" => match scalar_text(&value) {
            Some(text) => out.set(key, Value::String(text)),
            None => out.drop_key(key, "not a string"),
        },
        "log" => log(out, &value),
        "restapi" => restapi(out, &value),
        "ctl" => out.drop_key(
            key,
            "`matriarch ctl` takes its API address and TLS files from --api and MATRIARCH_CTL_* \
             (MATRIARCH_CTL_CONFIG), not from the node file",
        ),
        "etcd3" => etcd(out, "etcd3", &value),
        "etcd" => {
            out.kept(
                "etcd",
                "written as etcd3: Patroni's `etcd` section speaks the etcd v2 API, whose keys \
                 matriarch (v3 API) does not see; move Patroni to `etcd3` before migrating",
            );
            etcd(out, "etcd", &value);
        }
        "zookeeper" => zookeeper(out, &value),
        "consul" | "kubernetes" | "raft" | "exhibitor" => out.drop_key(
            key,
            "matriarch's DCS is etcd (etcd3) or ZooKeeper (zookeeper): configure one of them",
        ),
        "bootstrap" => postgresql::bootstrap(out, patroni, &value),
        "postgresql" => postgresql::postgresql(out, &value),
        "watchdog" => watchdog(out, &value),
        "tags" => tags(out, &value),
        "citus" => out.drop_key(key, "matriarch does not manage Citus clusters"),
        "thread_pool_size" | "thread_stack_size" => {
            out.drop_key(key, "matriarch sizes its own runtime")
        }
        _ => out.drop_key(key, "not a Patroni setting matriarch has"),
    }
}

/// `log:`.
fn log(out: &mut Builder, section: &Value) {
    for (field, value) in entries(section) {
        let key = format!("log.{field}");
        match field.as_str() {
            "level" => {
                let patroni_level = scalar_text(&value).unwrap_or_default();
                let level = match patroni_level.to_ascii_uppercase().as_str() {
                    "DEBUG" | "NOTSET" => "debug",
                    "INFO" => "info",
                    "WARNING" | "WARN" => "warn",
                    "ERROR" | "CRITICAL" | "FATAL" => "error",
                    _ => {
                        out.drop_key(&key, format!("{patroni_level:?} is not a Python log level"));
                        continue;
                    }
                };
                if patroni_level == level {
                    out.set(&key, Value::String(level.to_owned()));
                } else {
                    out.map(
                        &key,
                        "log.level",
                        Value::String(level.to_owned()),
                        Some(format!("{patroni_level} is the tracing level `{level}`")),
                    );
                }
            }
            "type" => match scalar_text(&value).as_deref() {
                Some("plain") => out.map(&key, "log.format", "text".into(), None),
                Some("json") => out.map(&key, "log.format", "json".into(), None),
                _ => out.drop_key(&key, "neither plain nor json"),
            },
            "format" => out.drop_key(
                &key,
                "a Python logging format string; matriarch's lines are fixed, \
                 `log.format` chooses text or json",
            ),
            "dateformat" => out.drop_key(&key, "matriarch writes RFC 3339 UTC timestamps"),
            "static_fields" => out.drop_key(
                &key,
                "json lines carry the cluster and member fields; other static fields are not supported",
            ),
            "loggers" => out.drop_key(
                &key,
                "per-module levels go in `log.level` as a tracing filter (`matriarch=debug,info`)",
            ),
            "traceback_level" | "max_queue_size" | "deduplicate_heartbeat_logs" => {
                out.drop_key(&key, "Python logging only")
            }
            "mode" => out.drop_key(&key, "the log file's mode follows the umask"),
            "dir" | "file_num" | "file_size" => out.set(&key, value),
            _ => out.drop_key(&key, "not a Patroni log setting matriarch has"),
        }
    }
}

/// `restapi:`.
fn restapi(out: &mut Builder, section: &Value) {
    for (field, value) in entries(section) {
        let key = format!("restapi.{field}");
        match field.as_str() {
            "listen" => {
                let listen = scalar_text(&value).unwrap_or_default();
                // Patroni accepts `:8008` for all addresses; matriarch wants ip:port.
                if let Some(port) = listen.strip_prefix(':') {
                    out.map(
                        &key,
                        &key,
                        Value::String(format!("0.0.0.0:{port}")),
                        Some("`:port` is 0.0.0.0:port".to_owned()),
                    );
                } else {
                    out.set(&key, Value::String(listen));
                }
            }
            "connect_address" | "certfile" | "keyfile" | "cafile" | "allowlist" => {
                out.set(&key, value)
            }
            "authentication" => {
                for (sub, v) in entries(&value) {
                    let sub_key = format!("{key}.{sub}");
                    match sub.as_str() {
                        "username" | "password" => out.set(&sub_key, v),
                        _ => out.drop_key(&sub_key, "not an authentication setting"),
                    }
                }
            }
            "keyfile_password" => out.drop_key(
                &key,
                "matriarch reads unencrypted PEM keys: decrypt the key file (readable by its owner only)",
            ),
            "verify_client" => out.drop_key(
                &key,
                "with `restapi.cafile` a client certificate verified against it authenticates a \
                 change; reads never need one",
            ),
            "ciphers" => out.drop_key(&key, "matriarch uses rustls's safe default cipher suites"),
            "allowlist_include_members" => out.drop_key(
                &key,
                "list the members' addresses in `restapi.allowlist`",
            ),
            "http_extra_headers" | "https_extra_headers" | "server_tokens" => {
                out.drop_key(&key, "matriarch sends fixed headers")
            }
            "request_queue_size" | "thread_pool_size" => out.drop_key(
                &key,
                "use `restapi.max_connections` and `restapi.max_connections_per_ip`",
            ),
            _ => out.drop_key(&key, "not a Patroni restapi setting matriarch has"),
        }
    }
}

/// `etcd3:` (or Patroni's v2 `etcd:`, written as `etcd3`).
fn etcd(out: &mut Builder, section_name: &str, section: &Value) {
    let mut hosts: Vec<String> = Vec::new();
    let mut https = false;
    let has_ca = section.get("cacert").is_some();
    for (field, value) in entries(section) {
        let key = format!("{section_name}.{field}");
        match field.as_str() {
            "host" | "url" | "proxy" => {
                hosts.extend(scalar_text(&value));
                out.mapped(
                    &key,
                    "etcd3.hosts",
                    (field == "proxy")
                        .then(|| "matriarch talks to the proxy as to an etcd member".to_owned()),
                );
            }
            "hosts" => {
                hosts.extend(host_list(&value));
                if section_name != "etcd3" {
                    out.mapped(&key, "etcd3.hosts", None);
                }
            }
            "protocol" => match scalar_text(&value).as_deref() {
                Some("https") => {
                    https = true;
                    let how = if has_ca {
                        "https:// URLs, verified against etcd3.cacert".to_owned()
                    } else {
                        "https:// URLs; matriarch needs etcd3.cacert for them (it does not use the \
                         system CA store): add it, `matriarch check` refuses the file until then"
                            .to_owned()
                    };
                    out.mapped(&key, "etcd3.hosts", Some(how));
                }
                _ => out.drop_key(&key, "http is the default"),
            },
            "username" | "password" | "cacert" | "cert" | "key" => {
                let to = format!("etcd3.{field}");
                if section_name == "etcd3" {
                    out.set(&to, value);
                } else {
                    out.map(&key, &to, value, None);
                }
            }
            "key_password" => out.drop_key(&key, "matriarch reads unencrypted PEM keys"),
            "srv" | "srv_suffix" => {
                out.drop_key(&key, "no SRV discovery: list the endpoints in etcd3.hosts")
            }
            "use_proxies" => out.drop_key(&key, "matriarch uses the endpoints listed, as given"),
            "verify" => out.drop_key(&key, "certificates are always verified (etcd3.cacert)"),
            _ => out.drop_key(&key, "not an etcd setting matriarch has"),
        }
    }
    if https {
        hosts = hosts
            .into_iter()
            .map(|host| {
                if host.contains("://") {
                    host
                } else {
                    format!("https://{host}")
                }
            })
            .collect();
    }
    out.set(
        "etcd3.hosts",
        Value::Sequence(hosts.into_iter().map(Value::String).collect()),
    );
}

/// A host list: a YAML list or a comma-separated string.
fn host_list(value: &Value) -> Vec<String> {
    match value {
        Value::Sequence(items) => items.iter().filter_map(scalar_text).collect(),
        other => scalar_text(other)
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .map(str::to_owned)
            .collect(),
    }
}

/// `zookeeper:`.
fn zookeeper(out: &mut Builder, section: &Value) {
    for (field, value) in entries(section) {
        let key = format!("zookeeper.{field}");
        match field.as_str() {
            "hosts" => out.set(
                &key,
                Value::Sequence(host_list(&value).into_iter().map(Value::String).collect()),
            ),
            "use_ssl" | "cacert" | "cert" | "key" | "key_password" | "verify" => {
                out.drop_key(&key, "matriarch talks to ZooKeeper without TLS")
            }
            "set_acls" => out.drop_key(&key, "matriarch sets no ACLs on its znodes"),
            "auth_data" => out.drop_key(
                &key,
                "use `zookeeper.auth: {username, password}` (digest authentication)",
            ),
            _ => out.drop_key(&key, "not a ZooKeeper setting matriarch has"),
        }
    }
}

/// `watchdog:`.
fn watchdog(out: &mut Builder, section: &Value) {
    for (field, value) in entries(section) {
        let key = format!("watchdog.{field}");
        match field.as_str() {
            "mode" | "device" | "safety_margin" => out.set(&key, value),
            "driver" => out.drop_key(&key, "matriarch drives the Linux default watchdog device"),
            _ => out.drop_key(&key, "not a watchdog setting matriarch has"),
        }
    }
}

/// `tags:`: all kept; those matriarch does not act on are noted.
fn tags(out: &mut Builder, section: &Value) {
    for (field, value) in entries(section) {
        let key = format!("tags.{field}");
        match field.as_str() {
            "nofailover" | "failover_priority" | "noloadbalance" | "nosync" | "sync_priority"
            | "clonefrom" | "replicatefrom" | "nostream" => {}
            _ => out.kept(
                &key,
                "a custom tag for `GET /replica?tag=value`; matriarch does not act on it",
            ),
        }
        out.set(&key, value);
    }
}
