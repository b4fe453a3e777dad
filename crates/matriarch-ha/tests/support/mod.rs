//! Helpers shared by the engine test binaries.

#![allow(dead_code)] // each test binary uses its own subset

use std::sync::{Arc, Mutex};

use matriarch_model::{RawEntry, Version};

pub(crate) mod fake_pg;
pub(crate) mod scene;
pub(crate) mod timed;

/// Every key under the scope except the member records, in the order the
/// garbage tests fill them.
pub(crate) const CLUSTER_KEYS: [&str; 8] = [
    "leader",
    "sync",
    "failover",
    "config",
    "status",
    "history",
    "initialize",
    "failsafe",
];

/// Puts `key` into a DCS snapshot's entries, replacing any entry of that
/// key, with a version that grows with the snapshot.
pub(crate) fn put_entry(entries: &mut Vec<RawEntry>, key: &str, value: Vec<u8>) {
    entries.retain(|e| e.key != key);
    let version = Version(entries.len() as u64 + 10);
    entries.push(RawEntry {
        key: key.to_owned(),
        value,
        version,
    });
}

/// Collects the events logged on this thread (the test runtime is
/// single-threaded), one line each: level, then every field.
#[derive(Clone, Default)]
pub(crate) struct LogCapture(Arc<Mutex<Vec<String>>>);

thread_local! {
    /// The capture events on this thread go to, if any.
    static THIS_THREAD_CAPTURE: std::cell::RefCell<Option<LogCapture>> =
        const { std::cell::RefCell::new(None) };
}

/// Stops capturing this thread's events when dropped.
pub(crate) struct CaptureGuard;

impl Drop for CaptureGuard {
    fn drop(&mut self) {
        THIS_THREAD_CAPTURE.with(|capture| capture.borrow_mut().take());
    }
}

impl LogCapture {
    /// Sends the events logged on this thread here until the guard drops.
    ///
    /// One global subscriber routes each event to its thread's capture.
    /// Per-thread `set_default` subscribers are not used because tracing
    /// caches a callsite's interest when it is first hit: a callsite first
    /// reached by a test thread without a capture, while another test
    /// installs its own, can be cached as "never" and its events vanish
    /// (seen under load in CI).
    pub(crate) fn capture_this_thread(&self) -> CaptureGuard {
        static INSTALL: std::sync::Once = std::sync::Once::new();
        INSTALL.call_once(|| {
            // Fails only if this binary already set one; then nothing to do.
            let _ = tracing::subscriber::set_global_default(ThreadRouter);
        });
        THIS_THREAD_CAPTURE.with(|capture| *capture.borrow_mut() = Some(self.clone()));
        CaptureGuard
    }

    /// Every line captured so far.
    pub(crate) fn all(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }

    /// Lines at `level` logged by `member` that contain `text`.
    pub(crate) fn lines(&self, level: &str, member: &str, text: &str) -> Vec<String> {
        let tag = format!(" member={member} ");
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|line| line.starts_with(level) && line.contains(&tag) && line.contains(text))
            .cloned()
            .collect()
    }

    /// Warnings about the `config` key logged by `member`.
    pub(crate) fn config_warnings(&self, member: &str) -> Vec<String> {
        let tag = format!(" member={member} ");
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|line| {
                line.starts_with("WARN") && line.contains(&tag) && line.contains("config")
            })
            .cloned()
            .collect()
    }
}

/// The global subscriber: hands each event to the capture of the thread it
/// was logged on, and asks again for every event (interest "sometimes") so
/// no callsite is ever cached as uninteresting.
struct ThreadRouter;

impl tracing::Subscriber for ThreadRouter {
    fn register_callsite(
        &self,
        _metadata: &'static tracing::Metadata<'static>,
    ) -> tracing::subscriber::Interest {
        tracing::subscriber::Interest::sometimes()
    }
    fn enabled(&self, _metadata: &tracing::Metadata<'_>) -> bool {
        THIS_THREAD_CAPTURE.with(|capture| capture.borrow().is_some())
    }
    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        Some(tracing::level_filters::LevelFilter::TRACE)
    }
    fn new_span(&self, _span: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _span: &tracing::span::Id, _values: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _span: &tracing::span::Id, _follows: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        struct Line(String);
        impl tracing::field::Visit for Line {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                self.0.push_str(&format!(" {}={:?} ", field.name(), value));
            }
        }
        let Some(capture) = THIS_THREAD_CAPTURE.with(|capture| capture.borrow().clone()) else {
            return;
        };
        let mut line = Line(event.metadata().level().to_string());
        event.record(&mut line);
        capture.0.lock().unwrap().push(line.0);
    }
    fn enter(&self, _span: &tracing::span::Id) {}
    fn exit(&self, _span: &tracing::span::Id) {}
}
