//! Rate limiting of log lines: a flood of refused requests or connections
//! is logged once per interval, with a count of what was left out.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often a refused connection is logged at most.
pub(super) const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Lets one log line through per [`REFUSAL_LOG_INTERVAL`], so that a flood
/// of refused requests or connections cannot flood the log.
pub(crate) struct Throttle {
    /// Events since the last line let through.
    since: AtomicU64,
    /// When that was.
    last: Mutex<Option<Instant>>,
}

impl Throttle {
    pub(crate) const fn new() -> Self {
        Throttle {
            since: AtomicU64::new(0),
            last: Mutex::new(None),
        }
    }

    /// Counts one event; `Some(events left unlogged before it)` when it is
    /// to be logged.
    pub(crate) fn due(&self) -> Option<u64> {
        let since = self.since.fetch_add(1, Ordering::Relaxed);
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_some_and(|at| at.elapsed() < REFUSAL_LOG_INTERVAL) {
            return None;
        }
        *last = Some(Instant::now());
        self.since.store(0, Ordering::Relaxed);
        Some(since)
    }
}
