//! The optional Linux watchdog (`watchdog:` in the node configuration), in
//! Patroni's manner: while this node leads, `/dev/watchdog` is open and armed,
//! so that a host whose agent stops renewing (hung, paused, a kernel stuck in
//! I/O) is reset by the kernel before the leader lock can expire.
//!
//! # Protocol
//!
//! - **Arm** (after each successful lock acquisition or renewal): the first
//!   arm opens the device, which starts the kernel's timer, and sets its
//!   timeout to `ttl − safety_margin` (whole seconds, at least 1) with the
//!   `WDIOC_SETTIMEOUT` ioctl, read back with `WDIOC_GETTIMEOUT`. A device
//!   that cannot set its timeout keeps its own, and the agent says so. Every
//!   arm then writes one keepalive byte (`1`).
//! - **Disarm** (clean demotion, lock released, clean shutdown): the magic
//!   close character `V` is written and the device closed, which stops the
//!   timer (unless the driver was loaded with `nowayout`).
//! - If the agent dies while armed, the kernel closes the device without the
//!   magic character: the timer keeps running and resets the host.
//!
//! A replica never opens the device. The ioctls tolerate a file that is not
//! a watchdog (`ENOTTY`): the tests use a FIFO as a stand-in device.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use matriarch_ha::{Fence, FenceError};
use tracing::{info, warn};

/// The keepalive byte (any byte but `V` refreshes the timer).
pub(crate) const KEEPALIVE: &[u8] = b"1";
/// The magic close character: written just before closing, it stops the timer.
pub(crate) const MAGIC_CLOSE: &[u8] = b"V";

/// Why the watchdog could not do what was asked. Every message names the
/// device.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WatchdogError {
    /// The device is missing or this process may not write to it.
    #[error("the watchdog device {device} cannot be opened: {source}")]
    Unusable {
        /// The device path.
        device: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A keepalive could not be written.
    #[error("the watchdog device {device} did not take a keepalive: {source}")]
    Keepalive {
        /// The device path.
        device: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The magic close character could not be written: the timer may keep
    /// running and reset the host.
    #[error("the watchdog device {device} did not take the magic close character: {source}")]
    Close {
        /// The device path.
        device: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The internal lock was poisoned by a panic elsewhere.
    #[error("the watchdog of {device} is in an unknown state (lock poisoned)")]
    Poisoned {
        /// The device path.
        device: PathBuf,
    },
}

/// The watchdog timeout for a lock ttl: `ttl − safety_margin`, whole seconds
/// rounded down, at least one second.
pub(crate) fn timeout_for(ttl: Duration, safety_margin: Duration) -> Duration {
    Duration::from_secs(ttl.saturating_sub(safety_margin).as_secs().max(1))
}

/// Where the current lock ttl comes from (the dynamic configuration in force
/// can change it while the device is open).
pub(crate) type TtlSource = Arc<dyn Fn() -> Duration + Send + Sync>;

/// The device while it is open.
#[derive(Debug)]
struct Armed {
    file: File,
    /// The timeout asked for.
    wanted: Duration,
}

/// One watchdog device, opened while this node leads.
pub(crate) struct Watchdog {
    device: PathBuf,
    safety_margin: Duration,
    ttl: TtlSource,
    armed: Mutex<Option<Armed>>,
}

impl std::fmt::Debug for Watchdog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watchdog")
            .field("device", &self.device)
            .field("safety_margin", &self.safety_margin)
            .finish_non_exhaustive()
    }
}

impl Watchdog {
    /// A watchdog on `device` (not opened yet); its timeout follows `ttl`.
    pub(crate) fn new(device: PathBuf, safety_margin: Duration, ttl: TtlSource) -> Watchdog {
        Watchdog {
            device,
            safety_margin,
            ttl,
            armed: Mutex::new(None),
        }
    }

    /// Checks, without opening it (opening starts the timer), that the
    /// device exists and this process may write to it.
    pub(crate) fn check_usable(&self) -> Result<(), WatchdogError> {
        check_device_usable(&self.device)
    }

    /// Whether the device is open (armed).
    #[cfg(test)]
    pub(crate) fn is_armed(&self) -> bool {
        self.armed.lock().map(|a| a.is_some()).unwrap_or(false)
    }

    /// Opens and configures the device if needed, then writes a keepalive.
    pub(crate) fn keepalive(&self) -> Result<(), WatchdogError> {
        let wanted = timeout_for((self.ttl)(), self.safety_margin);
        let mut guard = self.armed.lock().map_err(|_| WatchdogError::Poisoned {
            device: self.device.clone(),
        })?;
        match guard.as_mut() {
            None => {
                let file = self.open()?;
                info!(device = %self.device.display(), "watchdog opened: this node leads");
                set_timeout(&file, &self.device, wanted);
                *guard = Some(Armed { file, wanted });
            }
            Some(armed) if armed.wanted != wanted => {
                info!(device = %self.device.display(), "the ttl changed: setting the watchdog timeout again");
                set_timeout(&armed.file, &self.device, wanted);
                armed.wanted = wanted;
            }
            Some(_) => {}
        }
        let Some(armed) = guard.as_mut() else {
            return Ok(());
        };
        if let Err(source) = armed.file.write_all(KEEPALIVE) {
            // Keep the device open: closing it without the magic character
            // would not stop the timer anyway, and the next arm retries.
            return Err(WatchdogError::Keepalive {
                device: self.device.clone(),
                source,
            });
        }
        Ok(())
    }

    /// Writes the magic close character and closes the device, if it is open.
    pub(crate) fn disarm(&self) -> Result<(), WatchdogError> {
        let armed = self
            .armed
            .lock()
            .map_err(|_| WatchdogError::Poisoned {
                device: self.device.clone(),
            })?
            .take();
        let Some(Armed { mut file, .. }) = armed else {
            return Ok(());
        };
        let result = file.write_all(MAGIC_CLOSE);
        drop(file);
        match result {
            Ok(()) => {
                info!(device = %self.device.display(), "watchdog disarmed (magic close)");
                Ok(())
            }
            Err(source) => Err(WatchdogError::Close {
                device: self.device.clone(),
                source,
            }),
        }
    }

    fn open(&self) -> Result<File, WatchdogError> {
        use std::os::unix::fs::OpenOptionsExt;
        // Non-blocking: a stand-in FIFO without a reader fails at once rather
        // than hanging the HA loop. std opens with O_CLOEXEC, so PostgreSQL and
        // the fence child never inherit the device.
        std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&self.device)
            .map_err(|source| WatchdogError::Unusable {
                device: self.device.clone(),
                source,
            })
    }
}

/// The watchdog as a [`Fence`]: `arm` writes a keepalive (opening the
/// device on the first), `disarm` writes the magic character and closes it.
/// The device's timeout is its own (`ttl − safety_margin`), not `valid_for`.
#[async_trait]
impl Fence for Watchdog {
    async fn arm(&self, _valid_for: Duration) -> Result<(), FenceError> {
        self.keepalive().map_err(|e| FenceError::Watchdog {
            source: Box::new(e),
        })
    }

    async fn disarm(&self) -> Result<(), FenceError> {
        Watchdog::disarm(self).map_err(|e| FenceError::Watchdog {
            source: Box::new(e),
        })
    }
}

/// Whether [`ioctl`]'s request numbers are this platform's: Linux with the
/// generic `_IOC` encoding (x86, arm, aarch64, riscv, s390).
const GENERIC_LINUX_IOCTLS: bool = cfg!(all(
    target_os = "linux",
    not(any(
        target_arch = "powerpc",
        target_arch = "powerpc64",
        target_arch = "mips",
        target_arch = "mips64",
        target_arch = "sparc64"
    ))
));

/// `ioctl` request numbers of `<linux/watchdog.h>` in the generic `_IOC`
/// encoding; used only where [`GENERIC_LINUX_IOCTLS`].
mod ioctl {
    const fn ioc(dir: u32, nr: u32, size: u32) -> u32 {
        (dir << 30) | (size << 16) | ((b'W' as u32) << 8) | nr
    }
    const READ: u32 = 2;
    const WRITE: u32 = 1;
    const INT: u32 = std::mem::size_of::<libc::c_int>() as u32;
    /// `_IOWR('W', 6, int)`
    pub(super) const SET_TIMEOUT: u32 = ioc(READ | WRITE, 6, INT);
    /// `_IOR('W', 7, int)`
    pub(super) const GET_TIMEOUT: u32 = ioc(READ, 7, INT);

    /// One int-argument watchdog ioctl.
    pub(super) fn call(
        file: &std::fs::File,
        request: u32,
        value: &mut libc::c_int,
    ) -> std::io::Result<()> {
        use std::os::fd::AsRawFd;
        // SAFETY: the watchdog ioctls named above read and write one c_int
        // through the pointer, which is valid for the duration of the call.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), request as _, value as *mut libc::c_int) };
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }
}

fn set_timeout(file: &File, device: &Path, wanted: Duration) {
    if !GENERIC_LINUX_IOCTLS {
        warn!(
            device = %device.display(),
            wanted_secs = wanted.as_secs(),
            "setting a watchdog timeout is not supported on this platform: keepalives only"
        );
        return;
    }
    let secs = libc::c_int::try_from(wanted.as_secs()).unwrap_or(libc::c_int::MAX);
    let mut value = secs;
    if let Err(error) = ioctl::call(file, ioctl::SET_TIMEOUT, &mut value) {
        let reason = if error.raw_os_error() == Some(libc::ENOTTY) {
            "not a watchdog device (ENOTTY)".to_owned()
        } else {
            error.to_string()
        };
        warn!(
            device = %device.display(),
            wanted_secs = secs,
            %reason,
            "the watchdog cannot set its timeout: keepalives only, with the device's own timeout"
        );
        return;
    }
    let mut actual: libc::c_int = 0;
    match ioctl::call(file, ioctl::GET_TIMEOUT, &mut actual) {
        Ok(()) if actual == secs => {
            info!(device = %device.display(), timeout_secs = actual, "watchdog timeout set");
        }
        Ok(()) => warn!(
            device = %device.display(),
            wanted_secs = secs,
            timeout_secs = actual,
            "the watchdog device chose another timeout than ttl - safety_margin"
        ),
        Err(error) => warn!(
            device = %device.display(),
            wanted_secs = secs,
            %error,
            "the watchdog timeout was set but cannot be read back"
        ),
    }
}

/// Whether `device` exists and this process may write to it, without
/// opening it (opening a watchdog starts its timer): what `run` requires
/// of a `required` watchdog, and `check` reports.
pub(crate) fn check_device_usable(device: &std::path::Path) -> Result<(), WatchdogError> {
    let unusable = |source| WatchdogError::Unusable {
        device: device.to_path_buf(),
        source,
    };
    std::fs::metadata(device).map_err(unusable)?;
    let path = std::ffi::CString::new(device.as_os_str().as_encoded_bytes())
        .map_err(|_| unusable(std::io::Error::from(std::io::ErrorKind::InvalidInput)))?;
    // SAFETY: access(2) with a NUL-terminated path.
    if unsafe { libc::access(path.as_ptr(), libc::W_OK) } != 0 {
        return Err(unusable(std::io::Error::last_os_error()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// A FIFO `<dir>/watchdog`, a stand-in device whose writes a test reads.
    fn make_fifo(dir: &Path) -> PathBuf {
        let fifo = dir.join("watchdog");
        let c_path = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: mkfifo(3) with a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
        fifo
    }

    fn watchdog(device: PathBuf, ttl_secs: u64) -> Watchdog {
        Watchdog::new(
            device,
            Duration::from_secs(5),
            Arc::new(move || Duration::from_secs(ttl_secs)),
        )
    }

    #[test]
    fn the_timeout_is_ttl_minus_the_safety_margin_and_at_least_one_second() {
        let margin = Duration::from_secs(5);
        for (ttl, timeout_secs) in [
            (Duration::from_secs(30), 25),
            (Duration::from_millis(9_900), 4),
            (Duration::from_secs(5), 1),
            (Duration::from_secs(3), 1),
        ] {
            assert_eq!(
                timeout_for(ttl, margin),
                Duration::from_secs(timeout_secs),
                "ttl {ttl:?}"
            );
        }
    }

    #[test]
    fn a_leader_writes_keepalives_then_v_and_closes_on_a_stand_in_file() {
        let dir = tempfile::tempdir().unwrap();
        let device = dir.path().join("watchdog");
        std::fs::write(&device, b"").unwrap();
        let wd = watchdog(device.clone(), 30);
        assert!(!wd.is_armed());
        // The regular file answers ENOTTY to the ioctls: tolerated.
        wd.keepalive().unwrap();
        wd.keepalive().unwrap();
        assert!(wd.is_armed());
        wd.disarm().unwrap();
        assert!(!wd.is_armed());
        // Disarming twice writes nothing more.
        wd.disarm().unwrap();
        let mut written = Vec::new();
        File::open(&device)
            .unwrap()
            .read_to_end(&mut written)
            .unwrap();
        // Each open writes from offset 0: one session of two keepalives and a V.
        assert_eq!(written, b"11V");
    }

    #[test]
    fn the_device_is_closed_after_the_magic_character() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = make_fifo(dir.path());
        let reader_path = fifo.clone();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            use std::os::unix::fs::OpenOptionsExt;
            let mut file = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(reader_path)
                .unwrap();
            ready_tx.send(()).unwrap();
            // Reads until the writer closes (EOF after it opened).
            let mut bytes = Vec::new();
            let mut buf = [0u8; 16];
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while std::time::Instant::now() < deadline {
                match file.read(&mut buf) {
                    Ok(0) if !bytes.is_empty() => return bytes,
                    Ok(n) => bytes.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) => panic!("{e}"),
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            bytes
        });
        ready_rx.recv().unwrap();
        let wd = watchdog(fifo, 30);
        wd.keepalive().unwrap();
        wd.disarm().unwrap();
        assert_eq!(reader.join().unwrap(), b"1V");
    }

    #[cfg(all(
        target_os = "linux",
        any(target_arch = "x86_64", target_arch = "aarch64")
    ))]
    #[test]
    fn the_ioctl_numbers_are_those_of_linux_watchdog_h() {
        assert_eq!(ioctl::SET_TIMEOUT, 0xC004_5706);
        assert_eq!(ioctl::GET_TIMEOUT, 0x8004_5707);
    }

    #[test]
    fn a_missing_device_is_named_in_the_error() {
        let wd = watchdog(PathBuf::from("/nonexistent/watchdog0"), 30);
        let err = wd.check_usable().unwrap_err().to_string();
        assert!(err.contains("/nonexistent/watchdog0"), "{err}");
        let err = wd.keepalive().unwrap_err().to_string();
        assert!(err.contains("/nonexistent/watchdog0"), "{err}");
        assert!(!wd.is_armed());
        // Nothing open, nothing to disarm.
        wd.disarm().unwrap();
    }

    #[test]
    fn a_fifo_without_reader_fails_at_once_instead_of_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = make_fifo(dir.path());
        let wd = watchdog(fifo, 30);
        wd.check_usable().unwrap();
        assert!(wd.keepalive().is_err());
    }
}
