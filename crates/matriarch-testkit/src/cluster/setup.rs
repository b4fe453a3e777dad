//! What every agent of a cluster needs before it starts: the `matriarch`
//! binary, PostgreSQL's programs and OS user, and the nodes' directories.

use std::fs;
use std::path::{Path, PathBuf};

use tempfile::TempDir;

use super::agent::NodeDir;
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
pub(super) fn workspace_root() -> PathBuf {
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
