//! A node file for the tests of what `matriarch check` and `matriarch run`
//! refuse: valid as it is, its DCS (etcd on port 1) and PostgreSQL never
//! reached, its data directory never created.

use std::process::Command;

/// Where [`OFFLINE_CONFIG`]'s data directory would be; a refused start
/// creates nothing there.
pub(crate) const OFFLINE_DATA_ROOT: &str = "/tmp/matriarch-offline-never-created";

/// The node file.
pub(crate) const OFFLINE_CONFIG: &str = r#"scope: e2e
name: node1
restapi:
  listen: 127.0.0.1:8008
etcd3:
  hosts: 127.0.0.1:1
bootstrap:
  dcs:
    ttl: 4
    loop_wait: 1
    retry_timeout: 1.5
postgresql:
  listen: 127.0.0.1:5999
  data_dir: /tmp/matriarch-offline-never-created/data
  authentication:
    superuser: {username: postgres, password: pg-secret}
    replication: {username: replicator, password: repl-secret}
"#;

/// `matriarch <command> --config <config>` (the file in a temporary
/// directory) with `env` added: its exit code and stderr. Asserts that no
/// password of the file shows in stderr.
pub(crate) fn on_config(
    command: &str,
    config: &str,
    env: &[(&str, &str)],
) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("node.yaml");
    std::fs::write(&path, config).expect("write the node file");
    let output = Command::new(env!("CARGO_BIN_EXE_matriarch"))
        .args([command, "--config"])
        .arg(&path)
        .envs(env.iter().copied())
        .output()
        .expect("run matriarch");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        !stderr.contains("pg-secret") && !stderr.contains("repl-secret"),
        "a secret leaked: {stderr}"
    );
    (output.status.code(), stderr)
}

/// Asserts that `matriarch check` refuses `config` (exit 2); its stderr.
#[track_caller]
pub(crate) fn check_refuses(config: &str) -> String {
    let (code, stderr) = on_config("check", config, &[]);
    assert_eq!(code, Some(2), "{stderr}");
    stderr
}

/// Asserts that `matriarch check` refuses `config` (exit 2) saying `message`.
#[track_caller]
pub(crate) fn assert_check_refuses(config: &str, message: &str) {
    let stderr = check_refuses(config);
    assert!(stderr.contains(message), "{stderr}");
}
