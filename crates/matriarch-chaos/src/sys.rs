//! Small system helpers: running commands, signals, the wall clock, Ctrl-C, and
//! the seeded random number generator.

use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use matriarch_testkit::command_line;
use matriarch_testkit::wait::Interruptible;

use crate::error::{ChaosError, Result};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Makes SIGINT and SIGTERM set a flag that every wait of the run checks: the run
/// then stops with [`ChaosError::Interrupted`] and tears everything down.
pub fn install_interrupt_handler() {
    // SAFETY: the handler only stores into an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
}

/// [`ChaosError::Interrupted`] once Ctrl-C was pressed.
pub fn check_interrupt() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        Err(ChaosError::Interrupted)
    } else {
        Ok(())
    }
}

/// The run's waits: they look at the Ctrl-C flag every 50 ms.
const WAITS: Interruptible<ChaosError> = Interruptible {
    check: check_interrupt,
    step: Duration::from_millis(50),
};

/// Sleeps `d` in short steps, stopping early on Ctrl-C.
pub fn sleep(d: Duration) -> Result<()> {
    WAITS.sleep(d)
}

/// Polls `f` every `every` until it returns `Some`, for at most `timeout`.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    every: Duration,
    f: impl FnMut() -> Option<T>,
) -> Result<T> {
    WAITS
        .poll(timeout, every, f)?
        .ok_or_else(|| ChaosError::Timeout {
            what: what.to_owned(),
            waited: timeout,
        })
}

/// Microseconds since the Unix epoch (the wall clock every record uses).
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Runs `cmd` to completion (stdin closed); its stdout, or an error with its stderr.
pub fn run(cmd: &mut Command) -> Result<String> {
    let what = command_line(cmd);
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|source| ChaosError::spawn(&what, source))?;
    stdout_of(what, out)
}

/// Runs `cmd` with `input` on its stdin; its stdout, or an error with its stderr.
pub fn run_with_input(cmd: &mut Command, input: &str) -> Result<String> {
    use std::io::Write;
    let what = command_line(cmd);
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| ChaosError::spawn(&what, source))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(input.as_bytes())
            .map_err(|e| ChaosError::io(format!("writing to `{what}`"), e))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| ChaosError::io(format!("waiting for `{what}`"), e))?;
    stdout_of(format!("{what} <<< {input:?}"), out)
}

/// The stdout of `command`, which ended with `out`, or an error with its stderr.
fn stdout_of(command: String, out: Output) -> Result<String> {
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(ChaosError::Command {
            command,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

/// `ip <args>`.
pub fn ip(args: &[&str]) -> Result<String> {
    run(Command::new("ip").args(args))
}

/// Sends `sig` to `pid` (a negative pid: the process group). Whether it was delivered.
pub fn signal(pid: i32, sig: libc::c_int) -> bool {
    if pid == 0 || pid == -1 {
        return false;
    }
    // SAFETY: kill(2) has no memory effects; the callers only name processes of
    // this run (children, or processes found in the run's namespaces).
    unsafe { libc::kill(pid, sig) == 0 }
}

/// Whether a process with this pid exists.
pub fn alive(pid: i32) -> bool {
    pid > 0 && std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid cannot fail and touches no memory.
    unsafe { libc::geteuid() == 0 }
}

/// SplitMix64: a small, fast, seedable generator. The same seed gives the same
/// fault sequence on every machine.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }

    /// A number in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi.saturating_sub(lo) + 1)
    }

    /// Shuffles `items` (Fisher-Yates).
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            items.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rng_is_deterministic_and_in_range() {
        let mut a = Rng::new(7);
        let mut b = Rng::new(7);
        for _ in 0..100 {
            let x = a.range(3, 9);
            assert_eq!(x, b.range(3, 9));
            assert!((3..=9).contains(&x));
        }
        let mut v: Vec<u32> = (0..20).collect();
        Rng::new(1).shuffle(&mut v);
        let mut sorted = v.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..20).collect::<Vec<_>>());
        assert_ne!(v, sorted, "a shuffle of 20 items moves something");
    }
}
