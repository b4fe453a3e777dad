//! Helpers shared by the end-to-end tests of the demo and the benchmark.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The workspace's `target/debug/matriarch`, built when it is missing.
///
/// `cargo test --workspace` builds it anyway (for the daemon's own end-to-end tests);
/// `cargo test -p matriarch-demo` alone may find none, or an old one: rebuild with
/// `cargo build -p matriarch` then.
pub fn matriarch_binary() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let root = manifest.parent().unwrap_or(manifest);
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|dir| {
            if dir.is_relative() {
                root.join(dir)
            } else {
                dir
            }
        })
        .unwrap_or_else(|| root.join("target"));
    let binary = target.join("debug").join("matriarch");
    if !binary.is_file() {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-p", "matriarch"])
            .current_dir(root)
            .status()
            .expect("run cargo build -p matriarch");
        assert!(status.success(), "cargo build -p matriarch failed");
    }
    assert!(binary.is_file(), "{} is missing", binary.display());
    binary
}

/// Processes whose command line mentions `needle`.
#[allow(dead_code)]
pub fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in fs::read_dir("/proc").expect("read /proc").flatten() {
        if !entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
        {
            continue;
        }
        if let Ok(cmdline) = fs::read(entry.path().join("cmdline")) {
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.contains(needle) {
                found.push(cmdline);
            }
        }
    }
    found
}
