//! A configuration that cannot be used stops `matriarch run` at once, with a
//! message naming the key, before anything starts.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{assert_check_refuses, on_config, OFFLINE_CONFIG as GOOD, OFFLINE_DATA_ROOT};

/// `matriarch run` of `config`: it must stop within 10 s.
fn run(config: &str) -> (i32, String) {
    let started = Instant::now();
    let (code, stderr) = on_config("run", config, &[]);
    assert!(started.elapsed() < Duration::from_secs(10));
    (code.unwrap_or(-1), stderr)
}

/// `matriarch check` of `config`.
fn check(config: &str) -> (Option<i32>, String) {
    on_config("check", config, &[])
}

#[test]
fn a_good_config_passes_check() {
    let (code, stderr) = check(GOOD);
    assert_eq!(code, Some(0), "{stderr}");
}

#[test]
fn check_refuses_a_rest_api_on_port_0() {
    assert_check_refuses(
        &GOOD.replace("127.0.0.1:8008", "127.0.0.1:0"),
        "`restapi.listen`: the port must not be 0",
    );
}

#[test]
fn bad_configs_exit_non_zero_naming_the_key() {
    let cases: Vec<(String, &[&str])> = vec![
        (format!("{GOOD}  parameters: [unclosed\n"), &["line"]),
        (
            GOOD.replace("  listen: 127.0.0.1:8008", "  lisen: 127.0.0.1:8008"),
            &["lisen", "line"],
        ),
        (
            GOOD.replace("scope: e2e", "scope: e2e\ntagz: {}"),
            &["tagz"],
        ),
        (
            format!("{GOOD}tags:\n  nofailover: sometimes\n"),
            &["nofailover"],
        ),
        (
            GOOD.replace("retry_timeout: 1.5", "retry_timeout: 3"),
            &["bootstrap.dcs", "exceeds ttl"],
        ),
        (GOOD.replace("ttl: 4", "ttl: soon"), &["bootstrap.dcs.ttl"]),
        (
            GOOD.replace("    loop_wait: 1\n", "    loop_wait: 1\n    tll: 3\n"),
            &["bootstrap.dcs.tll"],
        ),
        (
            GOOD.replace("127.0.0.1:5999", "localhost"),
            &["postgresql.listen"],
        ),
        (
            GOOD.replace("/tmp/matriarch-offline", "relative/matriarch-offline"),
            &["postgresql.data_dir"],
        ),
        (
            GOOD.replace("name: node1\n", ""),
            &["name", "MATRIARCH_NAME"],
        ),
        (
            GOOD.replace("etcd3:\n  hosts: 127.0.0.1:1\n", ""),
            &["etcd3/zookeeper"],
        ),
        (format!("{GOOD}restapi_typo: 1\n"), &["restapi_typo"]),
        (
            GOOD.replace("127.0.0.1:8008", "127.0.0.1:0"),
            &["restapi.listen", "port must not be 0"],
        ),
        (
            format!("{GOOD}name: node2\n"),
            &["duplicate key `name` at line 18", "line 2)"],
        ),
    ];
    for (config, needles) in cases {
        let (code, stderr) = run(&config);
        assert_ne!(code, 0, "accepted:\n{config}");
        for needle in needles {
            assert!(
                stderr.contains(needle),
                "{needle:?} not in {stderr:?}\nfor:\n{config}"
            );
        }
    }
}

#[test]
fn a_missing_file_is_reported() {
    let output = Command::new(env!("CARGO_BIN_EXE_matriarch"))
        .args(["run", "--config", "/nonexistent/node.yaml"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("/nonexistent/node.yaml"));
}

/// A `MATRIARCH_*` override is validated like the file: a bad value stops
/// the start with a message naming the variable or the key it sets, and
/// nothing is created.
#[test]
fn bad_environment_overrides_exit_non_zero_naming_them() {
    for (var, value, needle) in [
        ("MATRIARCH_LOG_FORMAT", "xml", "MATRIARCH_LOG_FORMAT"),
        (
            "MATRIARCH_POSTGRESQL_LISTEN",
            "localhost",
            "postgresql.listen",
        ),
        ("MATRIARCH_RESTAPI_LISTEN", "nowhere", "restapi.listen"),
    ] {
        let (code, stderr) = on_config("run", GOOD, &[(var, value)]);
        assert_eq!(code, Some(2), "{var}={value}: {stderr}");
        assert!(stderr.contains(needle), "{var}={value}: {stderr}");
    }
    assert!(!std::path::Path::new(OFFLINE_DATA_ROOT).exists());
}

#[test]
fn an_unsupported_postgresql_version_is_refused_by_run_and_check() {
    use std::os::unix::fs::PermissionsExt;
    let bin = tempfile::tempdir().unwrap();
    std::fs::write(bin.path().join("pg_ctl"), "").unwrap();
    let postgres = bin.path().join("postgres");
    std::fs::write(&postgres, "#!/bin/sh\necho 'postgres (PostgreSQL) 14.9'\n").unwrap();
    std::fs::set_permissions(&postgres, std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = format!("{GOOD}  bin_dir: {}\n", bin.path().display());
    let (code, stderr) = run(&config);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("PostgreSQL 14.9") && stderr.contains("15 to 18"),
        "{stderr}"
    );
    assert_check_refuses(&config, "PostgreSQL 14.9");
}
