//! MemoryDcs passes the whole conformance suite, on a clock the tests drive.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use matriarch_dcs::conformance::Harness;
use matriarch_dcs::{ManualClock, MemoryDcs};
use matriarch_model::KeyLayout;

struct MemoryHarness {
    store: MemoryDcs,
    clock: ManualClock,
}

#[async_trait]
impl Harness for MemoryHarness {
    type Client = MemoryDcs;

    async fn client(&self) -> MemoryDcs {
        self.store.connect()
    }

    async fn put_raw(&self, relative_key: &str, value: &[u8]) {
        self.store.put_raw(relative_key, value);
    }

    async fn pass_time(&self, duration: Duration) {
        self.clock.advance(duration);
    }

    fn ttl(&self) -> Duration {
        Duration::from_secs(30)
    }

    fn expiry_slack(&self) -> Duration {
        Duration::from_millis(1)
    }
}

async fn memory_harness() -> MemoryHarness {
    let clock = ManualClock::new();
    let layout = KeyLayout::new("service", "conformance").expect("layout");
    MemoryHarness {
        store: MemoryDcs::with_clock(layout, Arc::new(clock.clone())),
        clock,
    }
}

matriarch_dcs::dcs_conformance_tests!(memory_harness());
