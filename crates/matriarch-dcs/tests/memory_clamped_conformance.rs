//! MemoryDcs passes the whole conformance suite also when the store clamps
//! the TTLs it grants (as a ZooKeeper server clamps session timeouts to its
//! `maxSessionTimeout`): the suite's ttl is the limit, and the lock lifetime
//! check asks for more than it.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use matriarch_dcs::conformance::Harness;
use matriarch_dcs::{ManualClock, MemoryDcs};
use matriarch_model::KeyLayout;

/// The longest TTL the store grants.
const LIMIT: Duration = Duration::from_secs(10);

struct ClampedHarness {
    store: MemoryDcs,
    clock: ManualClock,
}

#[async_trait]
impl Harness for ClampedHarness {
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
        LIMIT
    }

    fn expiry_slack(&self) -> Duration {
        Duration::from_millis(1)
    }
}

async fn clamped_harness() -> ClampedHarness {
    let clock = ManualClock::new();
    let layout = KeyLayout::new("service", "clamped").expect("layout");
    let store = MemoryDcs::with_clock(layout, Arc::new(clock.clone()));
    store.set_max_ttl(Some(LIMIT));
    ClampedHarness { store, clock }
}

matriarch_dcs::dcs_conformance_tests!(clamped_harness());
