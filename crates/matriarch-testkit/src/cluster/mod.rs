//! The cluster harness: real `matriarch run` agents with their PostgreSQL, shared
//! by the demo, the benchmarks and the chaos run.
//!
//! * [`LoopbackCluster`]: etcd, BIND and N agents on 127.0.0.1, .2, .3, …, each
//!   PostgreSQL on its own loopback address and the same port (the demo and the
//!   benchmarks).
//! * The pieces it is built from, for a cluster laid out elsewhere (the chaos
//!   run's network namespaces): [`preflight`], [`node_dirs`], [`AgentConfig`]
//!   (the node YAML), [`Supervised`] (a restartable agent or service, optionally
//!   in a namespace; [`Supervised::agent`] writes a node's configuration and
//!   makes its agent), [`NodeDir`], [`RestApi`], [`only_primary`],
//!   [`crate::BindConfig`] and the DNS client in [`crate::dns`].
//! * [`ScenarioCluster`]: the end-to-end tests' cluster: N agents on free
//!   ports of 127.0.0.1 sharing one DCS (etcd of its own, or any etcd or
//!   ZooKeeper), node files from YAML pieces a test adds to or edits, nodes
//!   started one by one if need be ([`ScenarioNode`]: REST, psql, `matriarch
//!   ctl`, crash and kill), one cluster at a time per test binary ([`serial`]).
//! * Patroni 4.1 in place of matriarch: [`PatroniConfig`] (a member's YAML),
//!   [`Supervised::patroni`], [`patronictl`]; [`LoopbackCluster`] runs it with
//!   [`AgentKind::Patroni`] (the failover benchmark's comparison).

mod agent;
mod config;
mod loopback;
mod patroni;
mod scenario;
mod scenario_node;
mod serial;

use std::fs;
use std::path::{Path, PathBuf};

use tempfile::TempDir;

pub use agent::{
    is_postgres, keep_server_log, kill_processes_under, node_log_tails, only_primary, tail,
    NodeDir, RestApi, Supervised,
};
pub use config::{AgentConfig, Credentials, DcsHosts, DnsRoute, Timing};
pub use loopback::{AgentKind, LoopbackCluster, LoopbackNode, LoopbackOptions};
pub use patroni::{
    patroni_venv, patronictl, PatroniConfig, PATRONI_DEFAULT_TIMING, PATRONI_MIN_TIMING,
};
pub use scenario::{DcsSpec, ScenarioCluster, ScenarioOptions, SCENARIO_LOGS};
pub use scenario_node::{
    basic_auth, psql_at, psql_command, run_ctl, scenario_credentials, switchover_body,
    ScenarioNode, API_PASSWORD, API_USER, PG_PASSWORD, REPLICATION_PASSWORD,
};
pub use serial::{serial, Serial};

use crate::error::{IoContext, Result, TestkitError};
use crate::postgres::{bin_dir, PgOsUser};

/// Checks what every agent needs: the `matriarch` binary and PostgreSQL's
/// programs; the OS user PostgreSQL runs as.
pub fn preflight(matriarch: &Path) -> Result<PgOsUser> {
    if !matriarch.is_file() {
        return Err(TestkitError::Setup(format!(
            "the matriarch binary {} does not exist (cargo build -p matriarch)",
            matriarch.display()
        )));
    }
    let user = PgOsUser::detect()?;
    let pg_ctl = bin_dir().join("pg_ctl");
    if !pg_ctl.is_file() {
        return Err(TestkitError::Setup(format!(
            "PostgreSQL 15 is missing ({} not found): run `cargo xtask deps`",
            pg_ctl.display()
        )));
    }
    Ok(user)
}

/// A temporary directory (`/tmp/<prefix>…`, owned by PostgreSQL's OS `user`)
/// with a directory per name in it, each owned by `user` too: the nodes'
/// [`NodeDir`]s, in the order of `names`.
pub fn node_dirs(
    user: &PgOsUser,
    prefix: &str,
    names: &[String],
) -> Result<(TempDir, Vec<NodeDir>)> {
    let root = user.tempdir(prefix)?;
    let mut dirs = Vec::new();
    for name in names {
        let dir = root.path().join(name);
        fs::create_dir_all(&dir).ctx(|| format!("creating {}", dir.display()))?;
        user.chown(&dir)?;
        dirs.push(NodeDir(dir));
    }
    Ok((root, dirs))
}

/// The workspace's target directory: `CARGO_TARGET_DIR` (relative to the
/// workspace root) or `<workspace>/target`.
pub fn target_dir() -> PathBuf {
    // Joining an absolute CARGO_TARGET_DIR replaces the root.
    workspace_root().join(std::env::var_os("CARGO_TARGET_DIR").unwrap_or_else(|| "target".into()))
}

/// The workspace's root (crates/matriarch-testkit/../..).
fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .ancestors()
        .nth(2)
        .unwrap_or(manifest)
        .to_path_buf()
}

/// The workspace's `debug/matriarch` (honouring `CARGO_TARGET_DIR`), built with
/// `cargo build -p matriarch` when it is missing; for end-to-end tests.
pub fn matriarch_binary() -> Result<PathBuf> {
    let binary = target_dir().join("debug").join("matriarch");
    if !binary.is_file() {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut cmd = std::process::Command::new(cargo);
        cmd.args(["build", "-p", "matriarch"])
            .current_dir(workspace_root());
        crate::process::run_checked(&mut cmd)?;
    }
    if binary.is_file() {
        Ok(binary)
    } else {
        Err(TestkitError::Setup(format!(
            "{} is missing after cargo build -p matriarch",
            binary.display()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_target_dir_is_the_workspace_s() {
        if std::env::var_os("CARGO_TARGET_DIR").is_none() {
            let target = target_dir();
            assert!(target.ends_with("target"), "{}", target.display());
            assert!(target.parent().unwrap().join("Cargo.lock").is_file());
        }
    }

    #[test]
    fn preflight_names_a_missing_binary() {
        let err = preflight(Path::new("/nonexistent/matriarch")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/matriarch"), "{err}");
    }
}
