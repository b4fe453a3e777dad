//! `matriarch config from-patroni`: a Patroni node file becomes a matriarch
//! node file that `matriarch check` accepts, and every Patroni key that was
//! dropped or mapped is listed on stderr.

use std::path::Path;
use std::process::Command;

/// A realistic Patroni file: etcd3 with hosts and protocol, restapi with
/// authentication, postgresql with authentication, parameters (some that
/// matriarch manages), pg_hba, pg_ident, callbacks, pgpass, initdb as a list
/// with map entries, bootstrap.dcs, tags, log, ctl, watchdog.
fn patroni_file(dir: &Path) -> String {
    let script = dir.join("callback.sh");
    std::fs::write(&script, "#!/bin/sh\nexit 0\n").unwrap();
    let script = script.display();
    format!(
        r#"scope: batman
namespace: /service/
name: postgresql0
log:
  type: json
  level: WARNING
  format: '%(asctime)s %(levelname)s: %(message)s'
  dateformat: '%Y-%m-%d %H:%M:%S'
  dir: /var/log/patroni
  file_num: 10
  file_size: 50000000
  loggers:
    patroni.postmaster: WARNING
restapi:
  listen: 127.0.0.1:8008
  connect_address: 127.0.0.1:8008
  authentication:
    username: patroni-api
    password: api-secret
  verify_client: none
ctl:
  insecure: false
  cacert: /etc/ssl/certs/ca.pem
etcd3:
  hosts:
  - 127.0.0.1:2379
  - 127.0.0.2:2379
  protocol: http
  username: etcd-user
  password: etcd-secret
bootstrap:
  dcs:
    ttl: 30
    loop_wait: 10
    retry_timeout: 10
    maximum_lag_on_failover: 1048576
    synchronous_mode: false
    check_timeline: true
    postgresql:
      use_pg_rewind: true
      use_slots: true
      pg_hba:
      - host replication replicator 127.0.0.1/32 md5
      - host all all 0.0.0.0/0 md5
      parameters:
        max_connections: 100
        wal_level: replica
        hot_standby: "on"
        synchronous_standby_names: '*'
      recovery_conf:
        restore_command: cp ../wal_archive/%f %p
  initdb:
  - encoding: UTF8
  - locale: C.UTF-8
  - data-checksums
  users:
    admin:
      password: admin-secret
      options: [createrole, createdb]
  post_init: /usr/local/bin/setup_cluster.sh
postgresql:
  listen: 127.0.0.1:5432
  connect_address: 127.0.0.1:5432
  data_dir: /var/lib/postgresql/15/main
  bin_dir: /usr/lib/postgresql/15/bin
  config_dir: /etc/postgresql/15/main
  pgpass: /tmp/pgpass0
  authentication:
    replication:
      username: replicator
      password: rep-secret
    superuser:
      username: postgres
      password: super-secret
      sslmode: prefer
    rewind:
      username: rewind_user
      password: rewind-secret
  parameters:
    unix_socket_directories: '/var/run/postgresql, /tmp'
    port: 5432
    work_mem: 8MB
    shared_buffers: 128MB
  pg_hba:
  - local all all trust
  - host replication replicator 10.0.0.0/8 md5
  - host all all 10.0.0.0/8 md5
  pg_ident:
  - omicron bryanh bryanh
  callbacks:
    on_start: {script}
    on_stop: {script}
    on_role_change: {script}
    on_restart: {script}
    on_reload: {script}
  pre_promote: {script}
  before_stop: {script}
  create_replica_methods:
  - basebackup
  basebackup:
    checkpoint: fast
  pg_ctl_timeout: 60
  use_unix_socket: true
watchdog:
  mode: automatic
  device: /dev/watchdog
  safety_margin: 5
tags:
  nofailover: false
  noloadbalance: false
  clonefrom: false
  nosync: false
  nostream: false
"#
    )
}

fn matriarch() -> Command {
    Command::new(env!("CARGO_BIN_EXE_matriarch"))
}

/// Converts the Patroni file `text` (written in `dir`) to `dir/node.yaml`
/// and checks it with `matriarch check`: the conversion's stderr, the node
/// file's path and its text. Panics if either command fails.
fn converted_and_checked(dir: &Path, text: &str) -> (String, std::path::PathBuf, String) {
    let patroni = dir.join("patroni.yml");
    std::fs::write(&patroni, text).unwrap();
    let out = dir.join("node.yaml");
    let output = matriarch()
        .args(["config", "from-patroni"])
        .arg(&patroni)
        .arg("-o")
        .arg(&out)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "{stderr}");
    let check = matriarch()
        .args(["check", "--config"])
        .arg(&out)
        .output()
        .unwrap();
    let node = std::fs::read_to_string(&out).unwrap();
    assert!(
        check.status.success(),
        "check refused the converted file:\n{}\n{node}",
        String::from_utf8_lossy(&check.stderr)
    );
    (stderr, out, node)
}

#[test]
fn a_patroni_file_converts_to_a_node_file_that_passes_check() {
    let dir = tempfile::tempdir().unwrap();
    let (stderr, out, node) = converted_and_checked(dir.path(), &patroni_file(dir.path()));
    for secret in [
        "api-secret",
        "etcd-secret",
        "rep-secret",
        "super-secret",
        "rewind-secret",
        "admin-secret",
    ] {
        assert!(
            !stderr.contains(secret),
            "{secret} leaked to stderr: {stderr}"
        );
    }
    // The output holds passwords: only its owner may read it.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&out).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "node file mode {mode:o}");

    // What was carried over.
    let yaml: serde_norway::Value = serde_norway::from_str(&node).unwrap();
    assert_eq!(
        yaml["postgresql"]["socket_dir"].as_str(),
        Some("/var/run/postgresql")
    );
    assert_eq!(yaml["log"]["format"].as_str(), Some("json"));
    assert_eq!(yaml["log"]["level"].as_str(), Some("warn"));
    for callback in ["pre_promote", "on_restart", "on_reload"] {
        assert!(yaml["callbacks"][callback].as_str().is_some(), "{callback}");
    }
    let initdb: Vec<&str> = yaml["bootstrap"]["initdb"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert_eq!(
        initdb,
        ["--encoding=UTF8", "--locale=C.UTF-8", "--data-checksums"]
    );
    assert_eq!(yaml["postgresql"]["pg_hba"].as_sequence().unwrap().len(), 3);
    assert_eq!(
        yaml["postgresql"]["pg_ident"].as_sequence().unwrap().len(),
        1
    );
    assert_eq!(
        yaml["postgresql"]["parameters"]["work_mem"].as_str(),
        Some("8MB")
    );
    assert!(yaml["postgresql"]["parameters"].get("port").is_none());
    // Patroni's dynamic pg_hba stays dynamic (the node's own lines win).
    assert_eq!(
        yaml["bootstrap"]["dcs"]["postgresql"]["pg_hba"]
            .as_sequence()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(yaml["etcd3"]["hosts"].as_sequence().unwrap().len(), 2);
    assert_eq!(yaml["watchdog"]["mode"].as_str(), Some("automatic"));
    // Replica creation methods keep Patroni's shape (`matriarch check` accepted them above).
    assert_eq!(
        yaml["postgresql"]["create_replica_methods"][0].as_str(),
        Some("basebackup")
    );
    assert_eq!(
        yaml["postgresql"]["basebackup"]["checkpoint"].as_str(),
        Some("fast")
    );

    // Every key dropped or mapped is listed, with the reason or the new key.
    for line in [
        "log.type -> log.format",
        "log.format: dropped",
        "log.dateformat: dropped",
        "log.loggers: dropped",
        "restapi.verify_client: dropped",
        "ctl: dropped",
        "etcd3.protocol: dropped",
        "bootstrap.dcs.check_timeline: dropped",
        "bootstrap.dcs.postgresql.parameters.synchronous_standby_names: dropped",
        "bootstrap.dcs.postgresql.recovery_conf: dropped",
        "bootstrap.initdb",
        "bootstrap.users: dropped",
        "bootstrap.post_init: dropped",
        "postgresql.config_dir: dropped",
        "postgresql.pgpass: dropped",
        "postgresql.authentication.superuser.sslmode: dropped",
        "postgresql.parameters.unix_socket_directories -> postgresql.socket_dir",
        "postgresql.parameters.port: dropped",
        "postgresql.callbacks.on_start -> callbacks.on_start",
        "postgresql.callbacks.on_restart -> callbacks.on_restart",
        "postgresql.callbacks.on_reload -> callbacks.on_reload",
        "postgresql.pre_promote -> callbacks.pre_promote",
        "postgresql.before_stop: dropped",
        "postgresql.pg_ctl_timeout: dropped",
        "postgresql.use_unix_socket: dropped",
    ] {
        assert!(
            stderr.contains(line),
            "stderr does not list {line:?}:\n{stderr}"
        );
    }
    // matriarch acts on nostream: not noted as a custom tag.
    assert!(!stderr.contains("tags.nostream"), "{stderr}");
}

#[test]
fn etcd3_over_https_with_a_ca_keeps_the_hosts_and_without_one_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, "not checked here").unwrap();
    let with_ca = patroni_file(dir.path()).replace(
        "  protocol: http\n",
        &format!("  protocol: https\n  cacert: {}\n", ca.display()),
    );
    let patroni = dir.path().join("patroni.yml");
    // Converts `text` as a Patroni file: the command's output and its stderr.
    let convert = |text: &str| {
        std::fs::write(&patroni, text).unwrap();
        let output = matriarch()
            .args(["config", "from-patroni"])
            .arg(&patroni)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        (output, stderr)
    };
    let (output, stderr) = convert(&with_ca);
    assert!(output.status.success(), "{stderr}");
    let node: serde_norway::Value = serde_norway::from_slice(&output.stdout).unwrap();
    assert_eq!(
        node["etcd3"]["hosts"][0].as_str(),
        Some("https://127.0.0.1:2379")
    );
    assert!(stderr.contains("etcd3.protocol -> etcd3.hosts"), "{stderr}");

    let without_ca = patroni_file(dir.path()).replace("  protocol: http\n", "  protocol: https\n");
    let (_, stderr) = convert(&without_ca);
    assert!(
        stderr.contains("etcd3.protocol") && stderr.contains("etcd3.cacert"),
        "{stderr}"
    );
}

#[test]
fn a_custom_bootstrap_method_is_carried_over_and_another_methods_section_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let text = patroni_file(dir.path()).replace(
        "  post_init: /usr/local/bin/setup_cluster.sh\n",
        "  method: pitr\n  pitr:\n    command: pgbackrest --stanza=batman restore\n    no_params: true\n    \
         recovery_conf:\n      recovery_target_time: '2026-12-06 12:00:00+00'\n  \
         barman:\n    command: patroni_barman recover\n",
    );
    let (stderr, _, node) = converted_and_checked(dir.path(), &text);
    assert!(stderr.contains("bootstrap.barman: dropped"), "{stderr}");
    let yaml: serde_norway::Value = serde_norway::from_str(&node).unwrap();
    assert_eq!(yaml["bootstrap"]["method"].as_str(), Some("pitr"));
    assert_eq!(
        yaml["bootstrap"]["pitr"]["command"].as_str(),
        Some("pgbackrest --stanza=batman restore")
    );
    assert!(yaml["bootstrap"].get("barman").is_none(), "{node}");
}
