//! `matriarch check` finds everything `matriarch run` refuses before starting,
//! and reports every error in one run, a line each, naming the key and what
//! to use instead.

mod common;

use common::{assert_check_refuses, check_refuses, on_config, OFFLINE_CONFIG};

/// The offline node file with Patroni's default timing (ttl 30, loop_wait 10,
/// retry_timeout 10).
fn good() -> String {
    OFFLINE_CONFIG.replace(
        "    ttl: 4\n    loop_wait: 1\n    retry_timeout: 1.5\n",
        "    ttl: 30\n    loop_wait: 10\n    retry_timeout: 10\n",
    )
}

/// `matriarch check` of `config`: exit code and stderr.
fn check(config: &str) -> (Option<i32>, String) {
    on_config("check", config, &[])
}

/// The lines of `stderr` that report an error.
fn error_lines(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|line| line.contains("invalid configuration"))
        .collect()
}

/// One error each: `check` exits 2 naming the key and what to use instead.
#[test]
fn check_refuses_a_setting_naming_the_key_and_the_replacement() {
    for (from, to, key, instead) in [
        // A parameter matriarch manages.
        (
            "  listen: 127.0.0.1:5999\n",
            "  listen: 127.0.0.1:5999\n  parameters:\n    unix_socket_directories: /var/run/postgresql\n",
            "`postgresql.parameters.unix_socket_directories`",
            "postgresql.socket_dir",
        ),
        // A managed parameter in bootstrap.dcs.
        (
            "    retry_timeout: 10\n",
            "    retry_timeout: 10\n    postgresql:\n      parameters:\n        port: 5433\n",
            "`bootstrap.dcs.postgresql.parameters.port`",
            "postgresql.listen",
        ),
        // etcd endpoints run cannot use.
        (
            "  hosts: 127.0.0.1:1\n",
            "  hosts: https://127.0.0.1:2379\n",
            "`etcd3`",
            "https:// needs a TLS configuration",
        ),
    ] {
        let config = good().replace(from, to);
        assert_ne!(config, good(), "{from:?} is not in the file");
        let stderr = check_refuses(&config);
        assert!(
            stderr.contains(key) && stderr.contains(instead),
            "{stderr}"
        );
    }
}

#[test]
fn three_distinct_errors_get_three_lines_in_one_run() {
    let config = good()
        .replace("127.0.0.1:8008", "not-an-address")
        .replace("    ttl: 30\n", "    ttl: 30\n    tll: 20\n")
        .replace(
            "  listen: 127.0.0.1:5999\n",
            "  listen: 127.0.0.1:5999\n  parameters:\n    hba_file: /etc/postgresql/pg_hba.conf\n",
        );
    let stderr = check_refuses(&config);
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
    let config = good().replace(
        "    ttl: 30\n",
        "    ttl: thirty\n    synchronous_mode: maybe\n",
    );
    let stderr = check_refuses(&config);
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
    let config = good()
        .replace("127.0.0.1:8008", "127.0.0.1:0")
        .replace("name: node1\n", "name: node1\nlog:\n  level: \"not a [filter\"\ncallbacks:\n  on_start: /nonexistent/on_start.sh\n");
    let stderr = check_refuses(&config);
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
fn pg_hba_in_bootstrap_dcs_must_be_a_list_of_lines() {
    let with_lines = |lines: &str| {
        good().replace(
            "    retry_timeout: 10\n",
            &format!("    retry_timeout: 10\n    postgresql:\n      pg_hba: {lines}\n"),
        )
    };
    let (code, stderr) = check(&with_lines("[\"host all all 10.0.0.0/8 scram-sha-256\"]"));
    assert_eq!(code, Some(0), "{stderr}");
    assert_check_refuses(
        &with_lines("\"host all all 10.0.0.0/8 scram-sha-256\""),
        "`bootstrap.dcs.postgresql.pg_hba`: must be a list of lines",
    );
}

#[test]
fn check_refuses_a_required_watchdog_whose_device_is_missing_as_run_does() {
    let config = format!(
        "{}watchdog:\n  mode: required\n  device: /nonexistent/matriarch-check-watchdog\n",
        good()
    );
    let stderr = check_refuses(&config);
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
