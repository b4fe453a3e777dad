//! The time the in-memory servers see: virtual in a simulation, real in the
//! examples.

use std::time::Duration;

/// Monotonic time as the cluster sees it (virtual in a simulation).
pub trait MemoryClock: Send + Sync {
    /// Time since an arbitrary, fixed start.
    fn now(&self) -> Duration;
}

/// The real monotonic clock, from when it was made.
#[derive(Debug)]
pub struct RealClock(std::time::Instant);

impl RealClock {
    /// A clock starting now.
    pub fn new() -> Self {
        RealClock(std::time::Instant::now())
    }
}

impl Default for RealClock {
    fn default() -> Self {
        RealClock::new()
    }
}

impl MemoryClock for RealClock {
    fn now(&self) -> Duration {
        self.0.elapsed()
    }
}
