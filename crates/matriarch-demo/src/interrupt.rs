//! Ctrl-C and SIGTERM: a flag the demo's waits check, so that it stops at the next
//! poll and cleans everything up on the way out.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::error::{DemoError, Result};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Installs the handlers on `runtime`: the first SIGINT or SIGTERM sets the flag.
pub fn install(runtime: &tokio::runtime::Handle) -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let _guard = runtime.enter();
    let mut int = signal(SignalKind::interrupt())
        .map_err(|e| DemoError::io("installing the SIGINT handler", e))?;
    let mut term = signal(SignalKind::terminate())
        .map_err(|e| DemoError::io("installing the SIGTERM handler", e))?;
    runtime.spawn(async move {
        loop {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
            if !INTERRUPTED.swap(true, Ordering::SeqCst) {
                eprintln!("\ninterrupted: stopping the cluster and cleaning up ...");
            }
        }
    });
    Ok(())
}

/// Whether Ctrl-C or SIGTERM arrived.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// `Err(Interrupted)` once Ctrl-C or SIGTERM arrived.
pub fn check() -> Result<()> {
    if interrupted() {
        Err(DemoError::Interrupted)
    } else {
        Ok(())
    }
}

/// Sleeps `duration`, waking early with `Err(Interrupted)` on Ctrl-C.
pub fn sleep(duration: Duration) -> Result<()> {
    let end = Instant::now() + duration;
    loop {
        check()?;
        let now = Instant::now();
        if now >= end {
            return Ok(());
        }
        std::thread::sleep((end - now).min(Duration::from_millis(20)));
    }
}

/// Polls `probe` every `every` until it gives `Some`, for at most `timeout`;
/// `Err(Timeout)` naming `what` after that.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut probe: impl FnMut() -> Option<T>,
) -> Result<T> {
    let start = Instant::now();
    loop {
        check()?;
        if let Some(value) = probe() {
            return Ok(value);
        }
        if start.elapsed() >= timeout {
            return Err(DemoError::Timeout {
                what: what.to_owned(),
                waited: timeout,
            });
        }
        sleep(every)?;
    }
}
