//! One cluster at a time per test binary.

use std::cell::Cell;
use std::sync::{Mutex, MutexGuard, PoisonError};

/// Serializes the scenarios of one test binary: each runs up to three
/// PostgreSQL servers, and two cores do not run two such clusters at once
/// reliably. Every [`super::ScenarioCluster`] holds it; a test takes it first
/// when it sets up more than the cluster. Reentrant on one thread.
pub fn serial() -> Serial {
    static LOCK: Mutex<()> = Mutex::new(());
    if SERIAL_HELD.get() {
        return Serial(None);
    }
    let guard = LOCK.lock().unwrap_or_else(PoisonError::into_inner);
    SERIAL_HELD.set(true);
    Serial(Some(guard))
}

thread_local! {
    /// Whether this thread holds [`serial`]'s lock.
    static SERIAL_HELD: Cell<bool> = const { Cell::new(false) };
}

/// The hold on [`serial`]'s lock (none when the thread held it already).
#[derive(Debug)]
pub struct Serial(Option<MutexGuard<'static, ()>>);

impl Drop for Serial {
    fn drop(&mut self) {
        if self.0.take().is_some() {
            SERIAL_HELD.set(false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hold_is_reentrant_on_one_thread_and_released_by_the_outer_one() {
        let outer = serial();
        assert!(outer.0.is_some());
        let inner = serial();
        assert!(inner.0.is_none(), "the thread holds it already");
        drop(inner);
        assert!(SERIAL_HELD.get(), "the inner hold releases nothing");
        drop(outer);
        assert!(!SERIAL_HELD.get());
    }
}
