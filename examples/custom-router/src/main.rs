//! A custom [`Router`]: it writes the primary's `host:port` to a file that a
//! sidecar proxy (pgbouncer, HAProxy, Envoy, a shell loop) watches, and
//! removes the file when that member steps down. It is composed the way the
//! daemon composes its ELB and DNS routers: each retried on transient
//! failures with [`Retry`], all driven at once with [`FanOut`] (a `Retry`
//! around the `FanOut` would call again the routers that had succeeded).
//!
//! The engine calls `route` only on the lock holder after its promotion
//! succeeded, and `withdraw` only for a demoting member itself; this program
//! calls both by hand to show what each does.
//!
//! Run: `cargo run -p example-custom-router [-- <file>]`

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use matriarch_model::{HostPort, MemberName};
use matriarch_router::{
    Endpoint, FanOut, RecordingRouter, Retry, Router, RouterCall, RouterError, Routes,
};

/// Keeps `path` holding one line, `host:port` of the primary, or absent when
/// no member is known to take writes.
///
/// The `Router` contract (see `matriarch_router::Router`) asks for:
/// - idempotent `route`: the file is rewritten only when its content changes;
/// - `withdraw` that removes only that member and is `Ok` if it was not the
///   writer: the file is removed only if it names that member's address;
/// - bounded calls: local file operations, nothing that can hang.
#[derive(Debug)]
struct FileRouter {
    name: String,
    path: PathBuf,
}

impl FileRouter {
    fn new(path: impl Into<PathBuf>) -> Self {
        let path = path.into();
        FileRouter {
            name: format!("file:{}", path.display()),
            path,
        }
    }

    fn error(&self, message: impl ToString) -> RouterError {
        // A local I/O failure will not go away by retrying: `Rejected` is
        // not retryable, so `Retry` gives up at once.
        RouterError::Rejected {
            router: self.name.clone(),
            message: message.to_string(),
        }
    }
}

/// The file's line: `host:port`, an IPv6 host in brackets.
fn address(endpoint: &Endpoint) -> String {
    let address = HostPort {
        host: endpoint.host.clone(),
        port: endpoint.port,
    };
    format!("{address}\n")
}

#[async_trait]
impl Router for FileRouter {
    fn name(&self) -> &str {
        &self.name
    }

    async fn route(&self, routes: &Routes) -> Result<(), RouterError> {
        // This router serves writers only; `routes.replicas` are ignored.
        let wanted = address(&routes.primary);
        if std::fs::read_to_string(&self.path).ok().as_deref() == Some(wanted.as_str()) {
            return Ok(());
        }
        // Write a temporary file and rename it over the old one, so the
        // sidecar never reads half a line. (Small local files: plain std::fs.)
        let tmp = self.path.with_extension("tmp");
        std::fs::write(&tmp, &wanted).map_err(|e| self.error(e))?;
        std::fs::rename(&tmp, &self.path).map_err(|e| self.error(e))
    }

    async fn withdraw(&self, member: &Endpoint) -> Result<(), RouterError> {
        match std::fs::read_to_string(&self.path) {
            Ok(current) if current == address(member) => {
                std::fs::remove_file(&self.path).map_err(|e| self.error(e))
            }
            // Another member's address, or no file: nothing to do.
            Ok(_) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.error(e)),
        }
    }
}

fn endpoint(name: &str, host: &str) -> Result<Endpoint, Box<dyn std::error::Error>> {
    Ok(Endpoint {
        member: MemberName::new(name)?,
        host: host.to_owned(),
        port: 5432,
    })
}

fn file_content(path: &Path) -> String {
    std::fs::read_to_string(path)
        .map(|text| format!("{:?}", text.trim_end()))
        .unwrap_or_else(|_| "absent".to_owned())
}

/// Routes to db2, shows the file, withdraws db1 (not the writer: no
/// change) and db2 (the writer: file removed). Returns the lines printed.
async fn run(path: &Path) -> Result<Vec<String>, Box<dyn std::error::Error>> {
    let mut out = Vec::new();
    // A stand-in for a second backend (a webhook, say) that is throttled on
    // its first call: its own `Retry` calls it again, and only it.
    let webhook = RecordingRouter::new("webhook");
    webhook.fail_next(
        1,
        RouterError::Throttled {
            router: "webhook".to_owned(),
        },
    );
    let backoff = Duration::from_millis(50);
    let routers: Vec<Arc<dyn Router>> = vec![
        Arc::new(Retry::new(FileRouter::new(path), 3, backoff)?),
        Arc::new(Retry::new(webhook.clone(), 3, backoff)?),
    ];
    let router = FanOut::new(routers);
    out.push(format!("router: {}", router.name()));

    let routes = Routes {
        primary: endpoint("db2", "10.0.0.12")?,
        replicas: vec![endpoint("db1", "10.0.0.11")?, endpoint("db3", "10.0.0.13")?],
    };
    router.route(&routes).await?;
    let route_calls = webhook
        .calls()
        .iter()
        .filter(|call| matches!(call, RouterCall::Route(_)))
        .count();
    out.push(format!(
        "route to db2: file {}; webhook called {route_calls} times (throttled once, then retried)",
        file_content(path)
    ));

    router.withdraw(&endpoint("db1", "10.0.0.11")?).await?;
    out.push(format!(
        "withdraw db1 (not the writer): file {}",
        file_content(path)
    ));

    router.withdraw(&endpoint("db2", "10.0.0.12")?).await?;
    out.push(format!(
        "withdraw db2 (the writer): file {}",
        file_content(path)
    ));
    Ok(out)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = match std::env::args_os().nth(1) {
        Some(path) => PathBuf::from(path),
        None => std::env::temp_dir().join(format!("matriarch-primary-{}", std::process::id())),
    };
    for line in run(&path).await? {
        println!("{line}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use matriarch_router::conformance::{self, Harness, Served};

    use super::*;

    #[tokio::test]
    async fn routes_then_withdraws() {
        let path = std::env::temp_dir().join(format!(
            "matriarch-custom-router-test-{}",
            std::process::id()
        ));
        let lines = run(&path).await.unwrap();
        assert!(lines[1].contains("\"10.0.0.12:5432\""), "{lines:?}");
        assert!(lines[1].contains("called 2 times"), "{lines:?}");
        assert!(lines[2].contains("\"10.0.0.12:5432\""), "{lines:?}");
        assert!(lines[3].ends_with("file absent"), "{lines:?}");
        assert!(!path.exists());
    }

    /// The router conformance suite on a file of its own per test.
    struct FileHarness {
        path: PathBuf,
    }

    impl Drop for FileHarness {
        fn drop(&mut self) {
            // Best effort: a leftover file in the temporary directory is harmless.
            let _ = std::fs::remove_file(&self.path);
        }
    }

    #[async_trait]
    impl Harness for FileHarness {
        type Router = FileRouter;

        async fn router(&self) -> FileRouter {
            FileRouter::new(&self.path)
        }

        fn endpoints(&self) -> [Endpoint; 3] {
            conformance::endpoints(["10.0.0.11", "10.0.0.12", "10.0.0.13"])
        }

        async fn served(&self) -> Served {
            let writers = match std::fs::read_to_string(&self.path) {
                Ok(text) => HostPort::parse(text.trim_end())
                    .map(|address| address.host)
                    .into_iter()
                    .collect(),
                Err(_) => BTreeSet::new(),
            };
            // This router serves writers only.
            Served {
                writers,
                readers: None,
            }
        }

        async fn change_count(&self) -> Option<u64> {
            None
        }

        async fn unreachable_router(&self) -> Option<FileRouter> {
            // A local file cannot be unreachable.
            None
        }

        fn call_bound(&self) -> Duration {
            Duration::from_secs(1)
        }
    }

    async fn harness() -> FileHarness {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        FileHarness {
            path: std::env::temp_dir().join(format!(
                "matriarch-file-router-conformance-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            )),
        }
    }

    matriarch_router::router_conformance_tests!(harness());
}
