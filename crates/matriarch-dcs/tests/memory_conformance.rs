//! MemoryDcs passes the whole conformance suite, on a clock the tests drive:
//! as it is, and when the store clamps the TTLs it grants (as a ZooKeeper
//! server clamps session timeouts to its `maxSessionTimeout`; the suite's ttl
//! is then the limit, and the lock lifetime check asks for more than it).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use matriarch_dcs::conformance::Harness;
use matriarch_dcs::{Dcs, ManualClock, MemoryDcs};
use matriarch_model::KeyLayout;

struct MemoryHarness {
    store: MemoryDcs,
    clock: ManualClock,
    ttl: Duration,
}

#[async_trait]
impl Harness for MemoryHarness {
    type Client = MemoryDcs;

    async fn client(&self) -> MemoryDcs {
        self.store.connect()
    }

    async fn sibling_client(&self) -> MemoryDcs {
        let layout = self.store.layout();
        let sibling = format!("{}-sibling", layout.scope());
        let layout = KeyLayout::new(layout.namespace(), &sibling).expect("sibling layout");
        self.store.connect_to(layout)
    }

    async fn put_raw(&self, relative_key: &str, value: &[u8]) {
        self.store.put_raw(relative_key, value);
    }

    async fn pass_time(&self, duration: Duration) {
        self.clock.advance(duration);
    }

    fn ttl(&self) -> Duration {
        self.ttl
    }

    fn expiry_slack(&self) -> Duration {
        Duration::from_millis(1)
    }
}

/// A store on its own clock; with `max_ttl`, it grants no longer TTL.
fn harness(scope: &str, max_ttl: Option<Duration>) -> MemoryHarness {
    let clock = ManualClock::new();
    let layout = KeyLayout::new("service", scope).expect("layout");
    let store = MemoryDcs::with_clock(layout, Arc::new(clock.clone()));
    store.set_max_ttl(max_ttl);
    MemoryHarness {
        store,
        clock,
        ttl: max_ttl.unwrap_or(Duration::from_secs(30)),
    }
}

async fn memory_harness() -> MemoryHarness {
    harness("conformance", None)
}

matriarch_dcs::dcs_conformance_tests!(memory_harness());

mod clamped {
    use super::*;

    async fn clamped_harness() -> MemoryHarness {
        harness("clamped", Some(Duration::from_secs(10)))
    }

    matriarch_dcs::dcs_conformance_tests!(clamped_harness());
}
