//! Time as the DCS sees it, so TTL expiry can be tested without sleeping.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// A monotonic clock: time elapsed since an arbitrary start.
pub trait Clock: Send + Sync + fmt::Debug {
    /// The current time.
    fn now(&self) -> Duration;
}

/// The machine's monotonic clock.
#[derive(Debug, Clone)]
pub struct SystemClock {
    start: Instant,
}

impl SystemClock {
    /// A clock starting now.
    pub fn new() -> Self {
        SystemClock {
            start: Instant::now(),
        }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        SystemClock::new()
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Duration {
        self.start.elapsed()
    }
}

/// A clock that moves only when told to. Clones share the same time.
#[derive(Debug, Clone, Default)]
pub struct ManualClock {
    now: Arc<Mutex<Duration>>,
}

impl ManualClock {
    /// A clock at time zero.
    pub fn new() -> Self {
        ManualClock::default()
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        // A poisoned lock still holds a valid Duration.
        let mut now = self.now.lock().unwrap_or_else(PoisonError::into_inner);
        *now += by;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Duration {
        *self.now.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Monotonic time on tokio's clock: virtual while tokio's time is paused
/// (the simulation, tests with `start_paused`), so an engine's clock and its
/// timeouts, waits and sleeps agree.
#[derive(Debug, Clone, Copy)]
pub struct TokioClock(tokio::time::Instant);

impl TokioClock {
    /// A clock that reads zero now.
    pub fn new() -> Self {
        TokioClock::starting_at(tokio::time::Instant::now())
    }

    /// A clock that reads zero at `start` (clocks sharing one start agree).
    pub fn starting_at(start: tokio::time::Instant) -> Self {
        TokioClock(start)
    }
}

impl Default for TokioClock {
    fn default() -> Self {
        TokioClock::new()
    }
}

impl Clock for TokioClock {
    fn now(&self) -> Duration {
        self.0.elapsed()
    }
}
