//! `matriarch check` finds everything `matriarch run` refuses before starting,
//! and reports every error in one run, a line each, naming the key and what
//! to use instead.

use std::process::Command;

const GOOD: &str = r#"scope: e2e
name: node1
restapi:
  listen: 127.0.0.1:8008
etcd3:
  hosts: 127.0.0.1:1
bootstrap:
  dcs:
    ttl: 30
    loop_wait: 10
    retry_timeout: 10
postgresql:
  listen: 127.0.0.1:5999
  data_dir: /tmp/matriarch-check-all-never-created/data
  authentication:
    superuser: {username: postgres, password: pg-secret}
    replication: {username: replicator, password: repl-secret}
"#;

/// `matriarch check` of `config`: exit code and stderr.
fn check(config: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.yaml");
    std::fs::write(&path, config).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_matriarch"))
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        !stderr.contains("pg-secret") && !stderr.contains("repl-secret"),
        "a secret leaked: {stderr}"
    );
    (output.status.code(), stderr)
}

/// The lines of `stderr` that report an error.
fn error_lines(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|line| line.contains("invalid configuration"))
        .collect()
}

#[test]
fn check_refuses_a_parameter_matriarch_manages_and_names_the_replacement() {
    let config = GOOD.replace(
        "  listen: 127.0.0.1:5999\n",
        "  listen: 127.0.0.1:5999\n  parameters:\n    unix_socket_directories: /var/run/postgresql\n",
    );
    let (code, stderr) = check(&config);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("`postgresql.parameters.unix_socket_directories`")
            && stderr.contains("postgresql.socket_dir"),
        "{stderr}"
    );
}

#[test]
fn check_refuses_a_managed_parameter_in_bootstrap_dcs() {
    let config = GOOD.replace(
        "    retry_timeout: 10\n",
        "    retry_timeout: 10\n    postgresql:\n      parameters:\n        port: 5433\n",
    );
    let (code, stderr) = check(&config);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("`bootstrap.dcs.postgresql.parameters.port`")
            && stderr.contains("postgresql.listen"),
        "{stderr}"
    );
}

#[test]
fn three_distinct_errors_get_three_lines_in_one_run() {
    let config = GOOD
        .replace("127.0.0.1:8008", "not-an-address")
        .replace("    ttl: 30\n", "    ttl: 30\n    tll: 20\n")
        .replace(
            "  listen: 127.0.0.1:5999\n",
            "  listen: 127.0.0.1:5999\n  parameters:\n    hba_file: /etc/postgresql/pg_hba.conf\n",
        );
    let (code, stderr) = check(&config);
    assert_eq!(code, Some(2), "{stderr}");
    let lines = error_lines(&stderr);
    assert_eq!(lines.len(), 3, "{stderr}");
    for key in [
        "`restapi.listen`",
        "`bootstrap.dcs.tll`",
        "`postgresql.parameters.hba_file`",
    ] {
        assert!(
            lines.iter().any(|line| line.contains(key)),
            "no line names {key}: {stderr}"
        );
    }
    // What to use instead.
    assert!(stderr.contains("postgresql.pg_hba"), "{stderr}");
}

#[test]
fn every_bootstrap_dcs_error_is_reported() {
    let config = GOOD.replace(
        "    ttl: 30\n",
        "    ttl: thirty\n    synchronous_mode: maybe\n",
    );
    let (code, stderr) = check(&config);
    assert_eq!(code, Some(2), "{stderr}");
    let lines = error_lines(&stderr);
    assert!(
        lines.iter().any(|l| l.contains("`bootstrap.dcs.ttl`"))
            && lines
                .iter()
                .any(|l| l.contains("`bootstrap.dcs.synchronous_mode`")),
        "{stderr}"
    );
}

#[test]
fn errors_in_several_sections_are_all_reported() {
    let config = GOOD
        .replace("127.0.0.1:8008", "127.0.0.1:0")
        .replace("name: node1\n", "name: node1\nlog:\n  level: \"not a [filter\"\ncallbacks:\n  on_start: /nonexistent/on_start.sh\n");
    let (code, stderr) = check(&config);
    assert_eq!(code, Some(2), "{stderr}");
    let lines = error_lines(&stderr);
    for key in ["`log.level`", "`restapi.listen`", "`callbacks.on_start`"] {
        assert!(
            lines.iter().any(|line| line.contains(key)),
            "no line names {key}: {stderr}"
        );
    }
    assert_eq!(lines.len(), 3, "{stderr}");
}

#[test]
fn check_refuses_etcd_endpoints_run_cannot_use() {
    let config = GOOD.replace(
        "  hosts: 127.0.0.1:1\n",
        "  hosts: https://127.0.0.1:2379\n",
    );
    let (code, stderr) = check(&config);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("`etcd3`") && stderr.contains("https:// needs a TLS configuration"),
        "{stderr}"
    );
}

#[test]
fn pg_hba_in_bootstrap_dcs_must_be_a_list_of_lines() {
    let with_lines = |lines: &str| {
        GOOD.replace(
            "    retry_timeout: 10\n",
            &format!("    retry_timeout: 10\n    postgresql:\n      pg_hba: {lines}\n"),
        )
    };
    let (code, stderr) = check(&with_lines("[\"host all all 10.0.0.0/8 scram-sha-256\"]"));
    assert_eq!(code, Some(0), "{stderr}");
    let (code, stderr) = check(&with_lines("\"host all all 10.0.0.0/8 scram-sha-256\""));
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("`bootstrap.dcs.postgresql.pg_hba`: must be a list of lines"),
        "{stderr}"
    );
}

#[test]
fn check_refuses_a_required_watchdog_whose_device_is_missing_as_run_does() {
    let config = format!(
        "{GOOD}watchdog:\n  mode: required\n  device: /nonexistent/matriarch-check-watchdog\n"
    );
    let (code, stderr) = check(&config);
    assert_eq!(code, Some(2), "{stderr}");
    let lines = error_lines(&stderr);
    assert!(
        lines.iter().any(|line| line.contains("watchdog.device")
            && line.contains("/nonexistent/matriarch-check-watchdog")),
        "{stderr}"
    );
    // automatic runs without the device, so check lets it pass.
    let config = config.replace("mode: required", "mode: automatic");
    let (code, stderr) = check(&config);
    assert!(
        !stderr.contains("watchdog.device"),
        "automatic needs no device: {stderr}"
    );
    assert_eq!(code, Some(0), "{stderr}");
}
