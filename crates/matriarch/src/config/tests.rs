//! Tests of the node configuration: parsing, overrides, validation.

use super::*;

const MINIMAL: &str = r#"
scope: pg
name: node1
etcd3:
  hosts: 127.0.0.1:2379
postgresql:
  listen: 127.0.0.1:5432
  data_dir: /tmp/x/data
  authentication:
    superuser: {username: postgres, password: secret}
    replication: {username: replicator, password: rsecret}
"#;

fn no_env(_: &str) -> Option<String> {
    None
}

/// Asserts that `result` is an error naming each of `expected`.
pub(super) fn assert_error<T>(result: Result<T, ConfigError>, expected: &[&str]) {
    let err = match result {
        Ok(_) => panic!("accepted, expected an error naming {expected:?}"),
        Err(err) => err.to_string(),
    };
    for part in expected {
        assert!(err.contains(part), "{part:?} missing from: {err}");
    }
}

/// Asserts that `text` is refused with an error naming each of `expected`.
fn assert_refused(text: &str, expected: &[&str]) {
    assert_error(NodeConfig::parse(text, no_env), expected);
}

#[test]
fn a_minimal_config_gets_defaults() {
    let (config, v) = NodeConfig::parse(MINIMAL, no_env).unwrap();
    assert_eq!(v.layout.namespace(), "service");
    assert_eq!(v.restapi_listen.to_string(), "0.0.0.0:8008");
    assert_eq!(v.api_url, "http://127.0.0.1:8008/patroni");
    assert_eq!(v.conn_url, "postgres://127.0.0.1:5432/postgres");
    assert_eq!(v.bootstrap_dcs, ClusterConfig::default());
    let debug = format!("{config:?}");
    assert!(!debug.contains("secret"), "{debug}");
}

#[test]
fn a_requested_key_nobody_knows_is_refused_with_a_hint() {
    let err = check_requested_config_keys("config", &serde_json::json!({"tll": 10}))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("config.tll") && err.contains("did you mean `ttl`"),
        "{err}"
    );
    for ok in [
        serde_json::json!({"ttl": 10}),
        serde_json::json!({"slots": {}, "standby_cluster": null, "check_timeline": true}),
    ] {
        assert!(check_requested_config_keys("config", &ok).is_ok(), "{ok}");
    }
}

#[test]
fn a_file_may_leave_required_keys_to_the_environment() {
    let text = "bootstrap:\n  dcs: {ttl: 5, loop_wait: 1, retry_timeout: 2}\npostgresql:\n  data_dir: /data\n  authentication:\n    superuser: {username: postgres}\n    replication: {username: standby}\n";
    assert!(NodeConfig::parse(text, no_env).is_err());
    let env = |var: &str| match var {
        "MATRIARCH_SCOPE" => Some("img".to_owned()),
        "MATRIARCH_NAME" => Some("node1".to_owned()),
        "MATRIARCH_ETCD3_HOSTS" => Some("127.0.0.1:2379".to_owned()),
        "MATRIARCH_RESTAPI_LISTEN" => Some("127.0.0.1:8008".to_owned()),
        "MATRIARCH_POSTGRESQL_LISTEN" => Some("127.0.0.1:5432".to_owned()),
        "MATRIARCH_SUPERUSER_PASSWORD" => Some("s3cret".to_owned()),
        "MATRIARCH_REPLICATION_PASSWORD" => Some("r3pl".to_owned()),
        _ => None,
    };
    let (config, _) = NodeConfig::parse(text, env).unwrap();
    assert_eq!(config.scope, "img");
}

#[test]
fn environment_overrides_win() {
    let env = |var: &str| match var {
        "MATRIARCH_NAME" => Some("node9".to_owned()),
        "MATRIARCH_ETCD3_HOSTS" => Some("a:1,b:2".to_owned()),
        "MATRIARCH_RESTAPI_LISTEN" => Some("127.0.0.1:9000".to_owned()),
        _ => None,
    };
    let (config, v) = NodeConfig::parse(MINIMAL, env).unwrap();
    assert_eq!(v.name.as_str(), "node9");
    assert_eq!(v.restapi_listen.port(), 9000);
    assert_eq!(config.etcd3.unwrap().hosts.hosts(), ["a:1", "b:2"]);
}

#[test]
fn unknown_keys_are_named_with_their_line() {
    let text = MINIMAL.replace("name: node1", "name: node1\nrestapi:\n  lisen: 1");
    assert_refused(&text, &["lisen", "line"]);
}

#[test]
fn wrong_types_name_the_key() {
    assert_refused(
        &format!("{MINIMAL}tags:\n  nofailover: maybe\n"),
        &["nofailover"],
    );
}

#[test]
fn impossible_timing_is_refused() {
    for (dcs, expected) in [
        (
            "ttl: 5\n    loop_wait: 4\n    retry_timeout: 4",
            &["bootstrap.dcs", "exceeds ttl"][..],
        ),
        ("ttl: soon", &["bootstrap.dcs.ttl"]),
        ("tll: 5", &["bootstrap.dcs.tll"]),
    ] {
        assert_refused(
            &format!("{MINIMAL}bootstrap:\n  dcs:\n    {dcs}\n"),
            expected,
        );
    }
}

/// Asserts, for each `(range, address, inside)`, whether the allowlist entry
/// `range` holds `address`.
fn assert_ranges(cases: &[(&str, &str, bool)]) {
    for (range, address, inside) in cases {
        let parsed = IpRange::parse(range).unwrap();
        assert_eq!(
            parsed.contains(address.parse().unwrap()),
            *inside,
            "{address} in {range}"
        );
    }
}

#[test]
fn ip_ranges() {
    assert_ranges(&[
        ("10.0.0.0/8", "10.1.2.3", true),
        ("10.0.0.0/8", "11.1.2.3", false),
        ("127.0.0.1", "::ffff:127.0.0.1", true),
        ("0.0.0.0/0", "1.2.3.4", true),
    ]);
    assert!(IpRange::parse("10.0.0.0/33").is_err());
    assert!(IpRange::parse("nope").is_err());
}

#[test]
fn the_watchdog_is_off_by_default_and_reads_patroni_forms() {
    let (config, _) = NodeConfig::parse(MINIMAL, no_env).unwrap();
    assert_eq!(config.watchdog, WatchdogConfig::default());
    assert_eq!(config.watchdog.mode, WatchdogMode::Off);
    for (mode, expected) in [
        ("off", WatchdogMode::Off),
        ("false", WatchdogMode::Off),
        ("automatic", WatchdogMode::Automatic),
        ("required", WatchdogMode::Required),
        ("Required", WatchdogMode::Required),
    ] {
        let text = format!(
            "{MINIMAL}watchdog:\n  mode: {mode}\n  device: /dev/watchdog1\n  safety_margin: 3\n"
        );
        let (config, _) = NodeConfig::parse(&text, no_env).unwrap();
        assert_eq!(config.watchdog.mode, expected, "{mode}");
        assert_eq!(config.watchdog.device, PathBuf::from("/dev/watchdog1"));
        assert_eq!(config.watchdog.safety_margin, 3);
    }
    for (watchdog, expected) in [
        ("mode: sometimes", "off, automatic or required"),
        ("mode: required\n  device: watchdog", "watchdog.device"),
        ("mode: automatic\n  timeout: 3", "timeout"),
    ] {
        assert_refused(&format!("{MINIMAL}watchdog:\n  {watchdog}\n"), &[expected]);
    }
}

#[test]
fn the_example_configuration_is_valid() {
    let text = include_str!("../../node.example.yaml");
    let (config, v) = NodeConfig::parse(text, no_env).unwrap();
    assert_eq!(v.api_url, "http://10.0.0.11:8008/patroni");
    assert_eq!(v.conn_url, "postgres://10.0.0.11:5432/postgres");
    // The example spells out the defaults.
    let defaults = matriarch_model::ClusterConfig::default();
    assert_eq!(v.bootstrap_dcs.ttl, defaults.ttl);
    assert_eq!(v.bootstrap_dcs.retry_timeout, defaults.retry_timeout);
    assert_eq!(v.allowlist.len(), 2);
    assert!(config.router.elb.is_none() && config.router.dns.is_none());
    assert_eq!(config.watchdog, WatchdogConfig::default());
}
/// A bin_dir whose `postgres --version` prints `line`.
fn fake_bin_dir(line: &str) -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("pg_ctl"), "").unwrap();
    let postgres = dir.path().join("postgres");
    std::fs::write(&postgres, format!("#!/bin/sh\necho '{line}'\n")).unwrap();
    std::fs::set_permissions(&postgres, std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

fn with_bin_dir(bin: &Path, data_dir: &Path) -> NodeConfig {
    let text = MINIMAL.replace("/tmp/x/data", &data_dir.display().to_string())
        + &format!("  bin_dir: {}\n", bin.display());
    NodeConfig::parse(&text, no_env).unwrap().0
}

#[test]
fn postgresql_14_is_refused_naming_the_version_and_the_range() {
    let bin = fake_bin_dir("postgres (PostgreSQL) 14.9");
    let config = with_bin_dir(bin.path(), Path::new("/nonexistent/data"));
    assert_error(
        config.check_postgres_version(),
        &[
            "PostgreSQL 14.9",
            "supports PostgreSQL 15 to 18",
            "postgresql.bin_dir",
        ],
    );
    let bin = fake_bin_dir("postgres (PostgreSQL) 19devel");
    let config = with_bin_dir(bin.path(), Path::new("/nonexistent/data"));
    assert_error(config.check_postgres_version(), &["PostgreSQL 19devel"]);
}

#[test]
fn postgresql_15_to_18_are_accepted() {
    for (line, major) in [
        ("postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)", 15),
        ("postgres (PostgreSQL) 16.4", 16),
        ("postgres (PostgreSQL) 18.6", 18),
    ] {
        let bin = fake_bin_dir(line);
        let config = with_bin_dir(bin.path(), Path::new("/nonexistent/data"));
        assert_eq!(config.check_postgres_version().unwrap(), major, "{line}");
    }
}

#[test]
fn a_data_directory_of_another_version_is_refused() {
    let bin = fake_bin_dir("postgres (PostgreSQL) 16.4");
    let data = tempfile::tempdir().unwrap();
    std::fs::write(data.path().join("PG_VERSION"), "14\n").unwrap();
    let config = with_bin_dir(bin.path(), data.path());
    assert_error(
        config.check_postgres_version(),
        &[
            "PostgreSQL 14 data directory",
            "postgresql.data_dir",
            "is PostgreSQL 16.4; point postgresql.bin_dir at PostgreSQL 14 (supported: 15 to 18)",
        ],
    );
    std::fs::write(data.path().join("PG_VERSION"), "16\n").unwrap();
    assert_eq!(config.check_postgres_version().unwrap(), 16);
}

#[test]
fn a_missing_or_unparsable_postgres_is_a_clear_error() {
    let bin = fake_bin_dir("something else");
    let config = with_bin_dir(bin.path(), Path::new("/nonexistent/data"));
    assert_error(
        config.check_postgres_version(),
        &["not `postgres (PostgreSQL) <version>`"],
    );
    std::fs::remove_file(bin.path().join("postgres")).unwrap();
    assert_error(config.check_postgres_version(), &["cannot run"]);
}

#[test]
fn log_dir_must_be_absolute_and_file_settings_default_to_patronis() {
    let (config, _) = NodeConfig::parse(MINIMAL, no_env).unwrap();
    assert_eq!((config.log.file_num, config.log.file_size), (4, 25_000_000));
    assert!(config.log.dir.is_none());
    assert_refused(&format!("{MINIMAL}log:\n  dir: var/log\n"), &["log.dir"]);
    let text =
        format!("{MINIMAL}log:\n  dir: /var/log/matriarch\n  file_num: 2\n  file_size: 1000\n");
    let (config, _) = NodeConfig::parse(&text, no_env).unwrap();
    assert_eq!(config.log.dir, Some(PathBuf::from("/var/log/matriarch")));
    assert_eq!((config.log.file_num, config.log.file_size), (2, 1000));
}

#[test]
fn a_rest_api_on_port_0_is_refused() {
    for (restapi, key) in [
        ("listen: 127.0.0.1:0", "restapi.listen"),
        (
            "listen: 127.0.0.1:8008\n  connect_address: db1:0",
            "restapi.connect_address",
        ),
    ] {
        let text = MINIMAL.replace(
            "name: node1",
            &format!("name: node1\nrestapi:\n  {restapi}"),
        );
        assert_refused(&text, &[key, "port must not be 0"]);
    }
}

#[test]
fn a_duplicate_key_is_reported_with_its_line() {
    // `scope` again on line 12 of the file (MINIMAL starts with an empty line).
    let text = format!("{MINIMAL}scope: other\n");
    assert_refused(&text, &["scope", "line 12"]);
    // The same with environment overrides in play.
    let env = |var: &str| (var == "MATRIARCH_NAME").then(|| "node9".to_owned());
    assert_error(NodeConfig::parse(&text, env), &["line 12"]);
    // And in a section.
    let text = MINIMAL.replace(
        "  data_dir: /tmp/x/data",
        "  data_dir: /tmp/x/data\n  data_dir: /tmp/y",
    );
    assert_refused(&text, &["data_dir", "line 9"]);
}

#[test]
fn an_ipv4_mapped_allowlist_entry_matches_the_ipv4_client() {
    assert_ranges(&[
        ("::ffff:127.0.0.1", "127.0.0.1", true),
        ("::ffff:127.0.0.1", "::ffff:127.0.0.1", true),
        ("::ffff:127.0.0.1", "127.0.0.2", false),
        ("::ffff:10.0.0.0/104", "10.9.8.7", true),
        ("::ffff:10.0.0.0/104", "11.0.0.1", false),
        ("::1", "::1", true),
        ("::1", "127.0.0.1", false),
    ]);
}

#[test]
fn slot_settings_are_accepted_in_bootstrap_dcs_and_invalid_ones_refused_by_name() {
    let ok = serde_json::json!({
        "member_slots_ttl": "2s",
        "slots": {"cdc": {"type": "logical", "database": "app", "plugin": "pgoutput"}},
        "ignore_slots": [{"name": "debezium"}]
    });
    let config = cluster_config_from_json("bootstrap.dcs", &ok).expect("valid slot settings");
    assert!(config.other.contains_key("slots"), "kept for the agents");
    for (bad, field) in [
        (
            serde_json::json!({"slots": {"cdc": {"type": "logical"}}}),
            "bootstrap.dcs.slots",
        ),
        (
            serde_json::json!({"ignore_slots": [{}]}),
            "bootstrap.dcs.ignore_slots",
        ),
        (
            serde_json::json!({"member_slots_ttl": "soon"}),
            "bootstrap.dcs.member_slots_ttl",
        ),
    ] {
        let err = cluster_config_from_json("bootstrap.dcs", &bad)
            .expect_err("an invalid slot setting")
            .to_string();
        assert!(err.contains(field), "{err}");
    }
}

#[test]
fn standby_cluster_is_read_from_bootstrap_dcs_and_invalid_values_refused_by_name() {
    let section = serde_json::json!({"standby_cluster": {"host": "10.0.0.1", "port": 5433}});
    let config = cluster_config_from_json("bootstrap.dcs", &section).unwrap();
    let standby = config.standby_cluster.expect("a standby cluster");
    assert_eq!(standby.host.as_deref(), Some("10.0.0.1"));
    assert_eq!(standby.port, Some(5433));
    for (bad, field) in [
        (serde_json::json!({"port": "x"}), "standby_cluster.port"),
        (
            serde_json::json!({"host": "h", "primary_slot_name": "No"}),
            "standby_cluster.primary_slot_name",
        ),
        (
            serde_json::json!({"create_replica_methods": ["basebackup"]}),
            "standby_cluster.*",
        ),
    ] {
        let err = cluster_config_from_json(
            "bootstrap.dcs",
            &serde_json::json!({"standby_cluster": bad}),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains(field), "{bad}: {err}");
    }
    // null: no standby cluster (how PATCH /config removes it).
    let none =
        cluster_config_from_json("config", &serde_json::json!({"standby_cluster": null})).unwrap();
    assert_eq!(none.standby_cluster, None);
}
