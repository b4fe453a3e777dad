//! Randomness and time: the seeded generator every choice comes from, the
//! virtual clock, and each node's drifting clock.

use std::time::Duration;

use matriarch_dcs::{Clock, TokioClock};
use matriarch_postgres::memory::MemoryClock;
use tokio::time::Instant;

/// SplitMix64: small, fast and the same everywhere.
#[derive(Clone, Debug)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    pub(crate) fn millis(&mut self, low: u64, high: u64) -> Duration {
        Duration::from_millis(low + self.below(high.saturating_sub(low) + 1))
    }

    pub(crate) fn chance(&mut self, p: f64) -> bool {
        ((self.next() >> 11) as f64 / (1u64 << 53) as f64) < p
    }
}

/// One node's monotonic clock: its own offset, running `ppm` parts per
/// million fast (positive) or slow (negative) against real time.
#[derive(Debug)]
pub(crate) struct NodeClock {
    pub(crate) start: Instant,
    pub(crate) offset: Duration,
    pub(crate) ppm: i64,
}

impl Clock for NodeClock {
    fn now(&self) -> Duration {
        let real = self.start.elapsed();
        let skew = real.as_nanos() as i128 * self.ppm as i128 / 1_000_000;
        let nanos = (real.as_nanos() as i128 + skew).max(0) as u64;
        self.offset + Duration::from_nanos(nanos)
    }
}

/// How long a span `local` long on a clock `ppm` off lasts in real time.
pub(crate) fn real_span(local: Duration, ppm: i64) -> Duration {
    let nanos = local.as_nanos() as i128 * 1_000_000 / (1_000_000 + ppm as i128);
    Duration::from_nanos(nanos.clamp(0, u64::MAX as i128) as u64)
}

/// The in-memory PostgreSQL's clock: tokio's, as the DCS's.
pub(crate) struct ServersClock(pub(crate) TokioClock);

impl MemoryClock for ServersClock {
    fn now(&self) -> Duration {
        Clock::now(&self.0)
    }
}
