//! Running commands for `cargo xtask`: the error every step returns, running a
//! program and judging its exit, and the `cargo` command with a vendored protoc.

use std::path::PathBuf;
use std::process::Command;

use crate::paths::{target_dir, workspace_root};

/// A failure with a message for the user.
#[derive(Debug)]
pub(crate) struct Failure(pub(crate) String);

/// The result of a step of `cargo xtask`.
pub(crate) type Result<T = ()> = std::result::Result<T, Failure>;

/// Prefixes a step's failure with the step's name.
pub(crate) fn step<T>(name: &str, r: Result<T>) -> Result<T> {
    r.map_err(|Failure(msg)| Failure(format!("step `{name}` failed: {msg}")))
}

/// Whether this process runs as root.
pub(crate) fn is_root() -> bool {
    // SAFETY: geteuid cannot fail and touches no memory.
    unsafe { libc::geteuid() == 0 }
}

/// A command as a shell line, for messages.
pub(crate) fn render(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs a command with inherited stdio; fails unless it exits 0.
pub(crate) fn run(cmd: &mut Command) -> Result {
    let what = render(cmd);
    let status = cmd
        .status()
        .map_err(|e| Failure(format!("cannot run `{what}`: {e}")))?;
    if status.success() {
        Ok(())
    } else {
        Err(Failure(format!("`{what}` failed ({status})")))
    }
}

/// A `cargo` command whose build scripts use the `protoc` and the well-known
/// `.proto` files shipped in the `protoc-bin-vendored` crate, never a system
/// protobuf: etcd-client's build script needs both, and a machine with only the
/// Rust toolchain has neither (Debian splits them over two packages).
pub(crate) fn cargo_command() -> Result<Command> {
    let protoc = protoc_bin_vendored::protoc_bin_path()
        .map_err(|e| Failure(format!("no vendored protoc for this platform: {e}")))?;
    let include = protoc_bin_vendored::include_path()
        .map_err(|e| Failure(format!("no vendored protobuf include files: {e}")))?;
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.env("PROTOC", protoc).env("PROTOC_INCLUDE", include);
    Ok(cmd)
}

/// The step `build` of `cargo xtask <name>`: `cargo build` of `matriarch` and
/// `packages` (`--release` when `release`). The workspace root and target dir.
pub(crate) fn build(name: &str, release: bool, packages: &[&str]) -> Result<(PathBuf, PathBuf)> {
    let root = workspace_root();
    println!(
        "==> cargo xtask {name}: {} build",
        if release { "release" } else { "debug" }
    );
    let mut cmd = cargo_command()?;
    cmd.arg("build");
    if release {
        cmd.arg("--release");
    }
    for package in std::iter::once(&"matriarch").chain(packages) {
        cmd.args(["-p", package]);
    }
    step("build", run(cmd.current_dir(&root)))?;
    let target = target_dir(&root);
    Ok((root, target))
}
