//! The dynamic configuration's defaults, validation and Patroni encoding.

use super::*;

/// The default configuration with this timing, in seconds.
fn timing(ttl: u64, loop_wait: u64, retry_timeout: u64) -> ClusterConfig {
    ClusterConfig {
        ttl: Duration::from_secs(ttl),
        loop_wait: Duration::from_secs(loop_wait),
        retry_timeout: Duration::from_secs(retry_timeout),
        ..ClusterConfig::default()
    }
}

#[test]
fn defaults_are_safe() {
    ClusterConfig::default().validate().unwrap();
}

#[test]
fn writes_stop_an_eighth_of_the_lock_life_early_at_most_retry_timeout() {
    let ms = Duration::from_millis;
    // The defaults, 4/1/1.5.
    let defaults = ClusterConfig::default();
    assert_eq!(defaults.write_stop_margin(defaults.ttl), ms(500));
    let five = timing(5, 1, 2);
    assert_eq!(five.write_stop_margin(five.ttl), ms(625));
    // Patroni's defaults: 30/10/10.
    let patroni = timing(30, 10, 10);
    assert_eq!(patroni.write_stop_margin(patroni.ttl), ms(3750));
    // A short retry_timeout caps it.
    let long = timing(40, 1, 1);
    assert_eq!(long.write_stop_margin(long.ttl), ms(1000));
    // A store that keeps the lock for less than the ttl: from that life.
    assert_eq!(patroni.write_stop_margin(ms(6000)), ms(750));
}

#[test]
fn timing_that_lets_a_lock_expire_before_demotion_is_rejected_unchanged() {
    let config = timing(10, 4, 4);
    let before = config.clone();
    let err = config.validate().unwrap_err();
    assert_eq!(
        err,
        ConfigError::UnsafeTiming {
            ttl: Duration::from_secs(10),
            loop_wait: Duration::from_secs(4),
            retry_timeout: Duration::from_secs(4),
            needed: Duration::from_secs(12),
        }
    );
    assert!(err.to_string().contains("exceeds ttl"), "{err}");
    assert_eq!(config, before);
}

#[test]
fn the_boundary_is_allowed() {
    let config = timing(30, 10, 10);
    config.validate().unwrap();
}

#[test]
fn zero_values_are_rejected() {
    let config = ClusterConfig {
        loop_wait: Duration::ZERO,
        ..ClusterConfig::default()
    };
    assert_eq!(
        config.validate(),
        Err(ConfigError::ZeroDuration { field: "loop_wait" })
    );
    let config = ClusterConfig {
        synchronous_node_count: 0,
        ..ClusterConfig::default()
    };
    assert_eq!(
        config.validate(),
        Err(ConfigError::ZeroSynchronousNodeCount)
    );
}

/// Decodes `json` as the `config` key would be and validates it, the way
/// every agent's `read_view` and `PATCH /config` do.
fn decode_and_validate(json: &str) -> Result<ClusterConfig, String> {
    let config: ClusterConfig = serde_json::from_str(json).map_err(|e| e.to_string())?;
    config.validate().map_err(|e| e.to_string())?;
    Ok(config)
}

#[test]
fn huge_retry_timeout_is_rejected_without_panicking() {
    // 2 × 1e19 s does not fit in a Duration: this used to panic.
    let err = decode_and_validate(r#"{"retry_timeout": 1e19}"#).unwrap_err();
    assert!(err.contains("retry_timeout"), "{err}");
}

#[test]
fn huge_loop_wait_is_rejected_without_panicking() {
    let err = decode_and_validate(r#"{"loop_wait": 1e19, "retry_timeout": 5e18}"#).unwrap_err();
    assert!(err.contains("loop_wait"), "{err}");
    let config = ClusterConfig {
        loop_wait: Duration::MAX,
        ..ClusterConfig::default()
    };
    let err = config.validate().unwrap_err();
    assert!(err.to_string().contains("loop_wait"), "{err}");
}

#[test]
fn ttl_no_dcs_can_hold_is_rejected() {
    // Consistent timing, but etcd refuses such a lease and ZooKeeper's
    // session timeout is an int32 of milliseconds.
    let err =
        decode_and_validate(r#"{"ttl": 1e12, "loop_wait": 10, "retry_timeout": 10}"#).unwrap_err();
    assert!(err.contains("ttl"), "{err}");
    let err = decode_and_validate(r#"{"ttl": 1.8e19, "loop_wait": 9e18, "retry_timeout": 4.5e18}"#)
        .unwrap_err();
    assert!(err.contains("ttl"), "{err}");
    // The bound itself is allowed.
    let day = ClusterConfig {
        ttl: ClusterConfig::MAX_TTL,
        loop_wait: Duration::from_secs(10),
        retry_timeout: Duration::from_secs(10),
        ..ClusterConfig::default()
    };
    day.validate().unwrap();
    let longer = ClusterConfig {
        ttl: ClusterConfig::MAX_TTL + Duration::from_secs(1),
        ..day
    };
    assert!(matches!(
        longer.validate(),
        Err(ConfigError::OutOfRange { field: "ttl", .. })
    ));
}

#[test]
fn loop_wait_and_retry_timeout_longer_than_ttl_are_rejected_by_name() {
    let config = timing(30, 31, 1);
    let err = config.validate().unwrap_err();
    assert!(
        matches!(
            err,
            ConfigError::OutOfRange {
                field: "loop_wait",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("exceeds ttl (30s)"), "{err}");
    let config = ClusterConfig {
        retry_timeout: Duration::MAX,
        ..timing(30, 1, 1)
    };
    assert!(matches!(
        config.validate(),
        Err(ConfigError::OutOfRange {
            field: "retry_timeout",
            ..
        })
    ));
}

#[test]
fn unparsable_durations_are_errors_not_panics() {
    use serde::de::value::{Error, F64Deserializer};
    for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, -1.0, 1e30] {
        let result = seconds::ttl::deserialize(F64Deserializer::<Error>::new(bad));
        assert!(result.is_err(), "{bad} gave {result:?}");
    }
    for (json, field) in [
        (r#"{"retry_timeout": -1}"#, "retry_timeout"),
        (r#"{"ttl": 1e300}"#, "ttl"),
        (r#"{"loop_wait": "soon"}"#, "loop_wait"),
    ] {
        let err = decode_and_validate(json).unwrap_err();
        assert!(err.contains(field), "{json}: {err}");
    }
}

#[test]
fn counts_out_of_range_are_refused_at_parse_or_validation() {
    for json in [
        r#"{"maximum_lag_on_failover": 1e30}"#,
        r#"{"maximum_lag_on_failover": -1}"#,
        r#"{"maximum_lag_on_failover": 18446744073709551616}"#,
        r#"{"synchronous_node_count": 4294967296}"#,
        r#"{"synchronous_node_count": -1}"#,
        r#"{"synchronous_node_count": 0}"#,
    ] {
        let err = decode_and_validate(json).unwrap_err();
        let field = if json.contains("maximum_lag") {
            "maximum_lag_on_failover"
        } else {
            "synchronous_node_count"
        };
        assert!(err.contains(field), "{json}: {err}");
    }
    let err = decode_and_validate(r#"{"synchronous_node_count": 4294967295}"#).unwrap_err();
    assert!(err.contains("synchronous_node_count"), "{err}");
    decode_and_validate(r#"{"synchronous_node_count": 3, "maximum_lag_on_failover": 0}"#).unwrap();
}

/// A Patroni `config` key: the keys matriarch does not act on must
/// survive decode → encode, or every rewrite (PATCH, pause) drops them.
const PATRONI_CONFIG: &str = r#"{
    "ttl": 30, "loop_wait": 10, "retry_timeout": 10,
    "maximum_lag_on_failover": 1048576,
    "check_timeline": true,
    "primary_start_timeout": 300,
    "member_slots_ttl": "30min",
    "ignore_slots": [{"name": "ignored", "type": "logical"}],
    "slots": {"cdc": {"type": "logical", "database": "app", "plugin": "pgoutput"}},
    "standby_cluster": {"host": "127.0.0.1", "port": 5432, "create_replica_methods": ["basebackup"]},
    "postgresql": {
        "use_pg_rewind": true, "use_slots": false,
        "parameters": {"max_connections": 200},
        "recovery_conf": {"restore_command": "cp /arch/%f %p"},
        "pg_hba": ["host replication replicator 127.0.0.1/32 md5"]
    }
}"#;

#[test]
fn unknown_keys_survive_decode_and_encode() {
    let original: serde_json::Value = serde_json::from_str(PATRONI_CONFIG).unwrap();
    let config = decode_and_validate(PATRONI_CONFIG).unwrap();
    assert_eq!(config.ttl, Duration::from_secs(30));
    assert!(!config.postgresql.use_slots);
    let encoded = serde_json::to_value(&config).unwrap();
    // Every key and value of the original is in the encoding (which adds
    // the defaults of the known keys it lacked).
    fn assert_contains(whole: &serde_json::Value, part: &serde_json::Value, path: &str) {
        match (whole, part) {
            (serde_json::Value::Object(whole), serde_json::Value::Object(part)) => {
                for (key, value) in part {
                    let inner = format!("{path}.{key}");
                    let found = whole.get(key).unwrap_or_else(|| panic!("{inner} lost"));
                    assert_contains(found, value, &inner);
                }
            }
            _ => assert_eq!(whole, part, "{path}"),
        }
    }
    assert_contains(&encoded, &original, "config");
    // And the encoding decodes to an equal config: equality covers them.
    let again: ClusterConfig = serde_json::from_value(encoded).unwrap();
    assert_eq!(again, config);
    let mut changed = again.clone();
    changed
        .other
        .insert("check_timeline".into(), serde_json::Value::Bool(false));
    assert_ne!(changed, config);
}

#[test]
fn unknown_keys_do_not_lift_the_bounds_of_known_keys() {
    let mut value: serde_json::Value = serde_json::from_str(PATRONI_CONFIG).unwrap();
    value["retry_timeout"] = 20.into();
    let err = decode_and_validate(&value.to_string()).unwrap_err();
    assert!(err.contains("exceeds ttl"), "{err}");
    value["retry_timeout"] = "soon".into();
    let err = decode_and_validate(&value.to_string()).unwrap_err();
    assert!(err.contains("retry_timeout"), "{err}");
    value["retry_timeout"] = 10.into();
    value["synchronous_node_count"] = 0.into();
    let err = decode_and_validate(&value.to_string()).unwrap_err();
    assert!(err.contains("synchronous_node_count"), "{err}");
    value["synchronous_node_count"] = 1.into();
    value["ttl"] = 1e12.into();
    let err = decode_and_validate(&value.to_string()).unwrap_err();
    assert!(err.contains("ttl"), "{err}");
    value["ttl"] = 30.into();
    value["postgresql"]["use_slots"] = "yes".into();
    assert!(decode_and_validate(&value.to_string()).is_err());
}

#[test]
fn synchronous_mode_reads_patroni_forms() {
    for (json, mode) in [
        ("false", SynchronousMode::Off),
        ("true", SynchronousMode::On),
        ("\"on\"", SynchronousMode::On),
        ("\"quorum\"", SynchronousMode::Quorum),
    ] {
        assert_eq!(serde_json::from_str::<SynchronousMode>(json).unwrap(), mode);
    }
    let err = serde_json::from_str::<SynchronousMode>("\"sometimes\"").unwrap_err();
    assert!(
        err.to_string().contains("synchronous_mode must be"),
        "{err}"
    );
    assert!(serde_json::from_str::<SynchronousMode>("1").is_err());
}

#[test]
fn parameter_values_render_for_postgresql_conf() {
    let params: BTreeMap<String, ParameterValue> = serde_json::from_str(
        r#"{"hot_standby": true, "max_connections": 100, "wal_level": "replica", "x": 0.5}"#,
    )
    .unwrap();
    let rendered: Vec<String> = params.iter().map(|(k, v)| format!("{k}={v}")).collect();
    assert_eq!(
        rendered,
        [
            "hot_standby=on",
            "max_connections=100",
            "wal_level=replica",
            "x=0.5"
        ]
    );
}
