//! Helpers shared by the end-to-end tests of the demo and the benchmark.

use std::fs;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

/// The workspace's `target/debug/matriarch`, built when it is missing (the test
/// kit's [`matriarch_testkit::cluster::matriarch_binary`]).
///
/// `cargo test --workspace` builds it anyway (for the daemon's own end-to-end tests);
/// `cargo test -p matriarch-demo` alone may find none, or an old one: rebuild with
/// `cargo build -p matriarch` then.
pub(crate) fn matriarch_binary() -> PathBuf {
    matriarch_testkit::cluster::matriarch_binary().expect("the matriarch binary")
}

/// Processes whose command line mentions `needle`.
#[allow(dead_code)]
pub(crate) fn processes_mentioning(needle: &str) -> Vec<String> {
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

/// What a program that succeeded printed.
pub(crate) struct Finished {
    /// Its standard output.
    pub(crate) stdout: String,
    /// Its standard output and error under headings, for failure messages.
    pub(crate) context: String,
}

/// Runs `command` to its end; panics (with what it printed) unless it
/// succeeded within `limit`.
pub(crate) fn run_ok_within(command: &mut Command, limit: Duration) -> Finished {
    let started = Instant::now();
    let output = command.output().expect("run the program");
    let took = started.elapsed();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    let context = format!("--- stdout\n{stdout}\n--- stderr\n{stderr}");
    assert!(output.status.success(), "{}\n{context}", output.status);
    assert!(took < limit, "took {took:?}\n{context}");
    Finished { stdout, context }
}
