//! Callbacks run without the secrets in matriarch's environment.
//!
//! The agent's environment is the test process's: the test runs itself again
//! as a child process with secrets in its environment (no `set_var` in a
//! multi-threaded test process), and that child runs a `pre_promote` callback
//! that dumps its environment.

use std::path::Path;

use super::Callbacks;
use crate::config::CallbacksConfig;

/// Set in the child run: where the callback writes its environment.
const DUMP_TO: &str = "MATRIARCH_HOOKS_TEST_DUMP_TO";

/// The secrets the agent's environment holds, and what else it holds.
const SECRETS: &[(&str, &str)] = &[
    ("MATRIARCH_SUPERUSER_PASSWORD", "secret-superuser"),
    ("MATRIARCH_REPLICATION_PASSWORD", "secret-replication"),
    ("MATRIARCH_RESTAPI_PASSWORD", "secret-restapi"),
    ("MATRIARCH_ETCD3_PASSWORD", "secret-etcd"),
    ("PGPASSWORD", "secret-pgpassword"),
    ("AWS_SECRET_ACCESS_KEY", "secret-aws"),
    ("AWS_SESSION_TOKEN", "secret-aws-token"),
    ("VAULT_TOKEN", "secret-vault"),
];
const KEPT: &[(&str, &str)] = &[
    ("MATRIARCH_TEST_NODE", "node-7"),
    ("PGDATA", "/var/lib/postgresql/data"),
    ("LANG", "C.UTF-8"),
];

/// The child run: runs `pre_promote` (a script dumping its environment).
#[tokio::test]
async fn child_runs_a_callback_that_dumps_its_environment() {
    let Ok(dump) = std::env::var(DUMP_TO) else {
        return; // Not the child run.
    };
    let dump = Path::new(&dump);
    let script = dump.with_extension("sh");
    std::fs::write(&script, format!("#!/bin/sh\nenv > {}\n", dump.display())).unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let callbacks = Callbacks::new(
        CallbacksConfig {
            pre_promote: Some(script),
            ..CallbacksConfig::default()
        },
        "pg-main",
    );
    callbacks.pre_promote().await.unwrap();
}

#[test]
fn callbacks_get_no_secrets_from_the_agents_environment() {
    let dir = tempfile::tempdir().unwrap();
    let dump = dir.path().join("env.txt");
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "hooks::env_tests::child_runs_a_callback_that_dumps_its_environment",
            "--test-threads=1",
        ])
        .envs(SECRETS.iter().copied())
        .envs(KEPT.iter().copied())
        .env(DUMP_TO, &dump)
        .status()
        .unwrap();
    assert!(status.success());
    let env = std::fs::read_to_string(&dump).unwrap();
    for (name, value) in SECRETS {
        assert!(
            !env.contains(value),
            "the callback got {name} from the agent's environment:\n{env}"
        );
    }
    for (name, value) in KEPT {
        assert!(
            env.lines().any(|line| line == format!("{name}={value}")),
            "the callback lost {name}:\n{env}"
        );
    }
    // A callback still finds programs.
    assert!(env.lines().any(|line| line.starts_with("PATH=")), "{env}");
}
