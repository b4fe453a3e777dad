//! Waits a harness can cut short: sleeping and polling that call a check (a
//! Ctrl-C flag) at every step and stop with its error, so that an interrupted
//! run gets to clean up at once. The demo's and the chaos run's waits; and
//! [`wait_for`], the plain poll of the end-to-end tests.

use std::time::{Duration, Instant};

/// How a harness waits: what stops it early, and how often it looks.
#[derive(Clone, Copy, Debug)]
pub struct Interruptible<E> {
    /// Called before every probe and every sleep step; an error ends the wait
    /// with it.
    pub check: fn() -> Result<(), E>,
    /// The longest one sleep step lasts (how late the check may be seen).
    pub step: Duration,
}

impl<E> Interruptible<E> {
    /// Sleeps `duration`, ending early with the check's error.
    pub fn sleep(&self, duration: Duration) -> Result<(), E> {
        let end = Instant::now() + duration;
        loop {
            (self.check)()?;
            let now = Instant::now();
            if now >= end {
                return Ok(());
            }
            std::thread::sleep((end - now).min(self.step));
        }
    }

    /// Polls `probe` every `every` until it gives `Some`, for at most `timeout`:
    /// `Ok(None)` once that has passed without a value.
    pub fn poll<T>(
        &self,
        timeout: Duration,
        every: Duration,
        mut probe: impl FnMut() -> Option<T>,
    ) -> Result<Option<T>, E> {
        let start = Instant::now();
        loop {
            (self.check)()?;
            if let Some(value) = probe() {
                return Ok(Some(value));
            }
            if start.elapsed() >= timeout {
                return Ok(None);
            }
            self.sleep(every)?;
        }
    }
}

/// Polls `check` every 200 ms until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    static STOP: AtomicBool = AtomicBool::new(false);

    fn stop_flag() -> Result<(), &'static str> {
        if STOP.load(Ordering::SeqCst) {
            Err("interrupted")
        } else {
            Ok(())
        }
    }

    const WAITS: Interruptible<&'static str> = Interruptible {
        check: stop_flag,
        step: Duration::from_millis(5),
    };

    fn never_stopped() -> Result<(), &'static str> {
        Ok(())
    }

    /// Waits no test stops: `STOP` belongs to the test that sets it (tests
    /// of one binary run at once).
    const UNSTOPPED: Interruptible<&'static str> = Interruptible {
        check: never_stopped,
        step: Duration::from_millis(5),
    };

    #[test]
    fn a_poll_returns_the_first_value_or_none_after_the_timeout() {
        let mut calls = 0;
        let found = UNSTOPPED.poll(Duration::from_secs(5), Duration::from_millis(1), || {
            calls += 1;
            (calls == 3).then_some(calls)
        });
        assert_eq!(found, Ok(Some(3)));
        let started = Instant::now();
        let nothing = UNSTOPPED.poll(Duration::from_millis(30), Duration::from_millis(5), || {
            None::<()>
        });
        assert_eq!(nothing, Ok(None));
        assert!(started.elapsed() >= Duration::from_millis(30));
    }

    #[test]
    fn the_check_cuts_a_sleep_and_a_poll_short() {
        let (flag, started) = (&STOP, Instant::now());
        let setter = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            flag.store(true, Ordering::SeqCst);
        });
        assert_eq!(WAITS.sleep(Duration::from_secs(10)), Err("interrupted"));
        assert!(started.elapsed() < Duration::from_secs(5));
        setter.join().unwrap();
        let polled = WAITS.poll(Duration::from_secs(10), Duration::from_millis(1), || {
            Some(1)
        });
        assert_eq!(polled, Err("interrupted"), "checked before the probe");
        STOP.store(false, Ordering::SeqCst);
    }
}
