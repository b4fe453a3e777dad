//! What `matriarch-demo` and `matriarch-bench` do alike around their work: the
//! async runtime, Ctrl-C, the exit status, and the default paths next to the
//! binaries.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use tokio::runtime::Handle;

use crate::error::{DemoError, Result};
use crate::interrupt;

/// Runs `work` with the command line `parsed` (`None`: `--help`, which prints
/// `usage`) on a two-thread runtime with Ctrl-C and SIGTERM handled, and maps
/// the outcome to the exit status: 0 when it returns `true`; 1 when `false` or
/// it failed; 2 for a usage error; 130 when interrupted. `program` prefixes the
/// messages.
pub fn run_main<A>(
    program: &str,
    usage: &str,
    parsed: Result<Option<A>>,
    work: impl FnOnce(&A, &Handle) -> Result<bool>,
) -> ExitCode {
    let args = match parsed {
        Ok(Some(args)) => args,
        Ok(None) => {
            print!("{usage}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("{program}: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("{program}: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = interrupt::install(runtime.handle()).and_then(|()| work(&args, runtime.handle()));
    runtime.shutdown_timeout(Duration::from_secs(2));
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(DemoError::Interrupted) => {
            eprintln!("{program}: interrupted; everything was stopped");
            ExitCode::from(130)
        }
        Err(e @ DemoError::Usage(_)) => {
            eprintln!("{program}: {e}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("\n{program} FAILED: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `matriarch` next to this program (`target/<profile>/`), unless `given`.
pub fn matriarch_or_default(given: Option<PathBuf>) -> PathBuf {
    given.unwrap_or_else(|| {
        std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf))
            .unwrap_or_else(|| PathBuf::from("."))
            .join("matriarch")
    })
}

/// `<target>/<name>` for `matriarch` in `<target>/<profile>/`
/// (`target/debug/matriarch` -> `target/demo`), else `fallback`.
pub fn beside_target(matriarch: &Path, name: &str, fallback: &str) -> PathBuf {
    matriarch
        .parent()
        .and_then(Path::parent)
        .map(|target| target.join(name))
        .unwrap_or_else(|| PathBuf::from(fallback))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_paths() {
        let m = matriarch_or_default(None);
        assert!(m.ends_with("matriarch"), "{}", m.display());
        assert_eq!(
            matriarch_or_default(Some("/x/m".into())),
            PathBuf::from("/x/m")
        );
        assert_eq!(
            beside_target(Path::new("/x/target/debug/matriarch"), "demo", "f"),
            PathBuf::from("/x/target/demo")
        );
        assert_eq!(
            beside_target(Path::new("m"), "demo", "f"),
            PathBuf::from("f")
        );
    }
}
