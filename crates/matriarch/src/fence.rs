//! The write fence: a primary's PostgreSQL never outlives its agent as a
//! writable primary.
//!
//! # Mechanism
//!
//! The agent spawns a small watchdog child, `matriarch fence --pid-file
//! <data_dir>/postmaster.pid` (a hidden subcommand of the same binary), in
//! its own process group, with a pipe on its standard input. The pipe
//! carries one line per message:
//!
//! - `arm <milliseconds>`: writes are allowed for that long from now
//!   ([`matriarch_ha::Fence::arm`], sent after each successful lock renewal);
//! - `disarm`: this node no longer leads, nothing to guard.
//!
//! The watchdog SIGKILLs the postmaster (its pid is line 1 of
//! `postmaster.pid`, checked to be a `postgres` process) and the postmaster's
//! children when
//!
//! - the deadline passes without a new `arm` (the agent is hung, paused, or
//!   cannot reach the DCS and did not demote in time), or
//! - the pipe closes while armed: the agent died (SIGKILL, crash, OOM
//!   killer), since the kernel closes its end of the pipe.
//!
//! A killed postmaster acknowledges no more commits; the next agent start
//! finds a crashed data directory and lets the engine decide (rejoin as a
//! replica, rewind). When the pipe closes while disarmed the watchdog just
//! exits. It ignores SIGINT and SIGHUP (a terminal's Ctrl-C must not take
//! the fence down with the agent); SIGTERM ends it.
//!
//! # With a watchdog
//!
//! When `watchdog.mode` is not `off`, [`CombinedFence`] arms and disarms
//! both the process fence and the [`crate::watchdog::Watchdog`]: the first
//! guards against a dead or hung agent, the second against a hung host.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use matriarch_ha::Fence;
use tracing::{debug, info, warn};

use crate::error::DaemonError;

/// The agent's end of the fence: the watchdog process and its pipe.
#[derive(Debug)]
pub struct ProcessFence {
    stdin: Mutex<Option<ChildStdin>>,
    child: Mutex<Child>,
}

impl ProcessFence {
    /// Spawns the watchdog for the postmaster of `data_dir`.
    pub fn spawn(data_dir: &Path) -> Result<ProcessFence, DaemonError> {
        use std::os::unix::process::CommandExt;
        let exe = std::env::current_exe()
            .map_err(|e| DaemonError::Fence(format!("cannot find this program: {e}")))?;
        let mut child = Command::new(exe)
            .arg("fence")
            .arg("--pid-file")
            .arg(data_dir.join("postmaster.pid"))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .process_group(0)
            .spawn()
            .map_err(|e| DaemonError::Fence(format!("cannot start the watchdog: {e}")))?;
        let stdin = child.stdin.take();
        Ok(ProcessFence {
            stdin: Mutex::new(stdin),
            child: Mutex::new(child),
        })
    }

    /// The watchdog's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.lock().ok().map(|c| c.id())
    }

    fn send(&self, line: &str) -> Result<(), String> {
        let mut guard = self
            .stdin
            .lock()
            .map_err(|_| "fence pipe lock poisoned".to_owned())?;
        let stdin = guard
            .as_mut()
            .ok_or_else(|| "the watchdog pipe is closed".to_owned())?;
        stdin
            .write_all(line.as_bytes())
            .and_then(|()| stdin.flush())
            .map_err(|e| format!("the watchdog is gone: {e}"))
    }

    /// Disarms and closes the pipe, so the watchdog exits (a clean stop).
    pub fn close(&self) {
        let _ = self.send("disarm\n");
        if let Ok(mut guard) = self.stdin.lock() {
            guard.take();
        }
        if let Ok(mut child) = self.child.lock() {
            let deadline = Instant::now() + Duration::from_secs(2);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

#[async_trait]
impl Fence for ProcessFence {
    async fn arm(&self, valid_for: Duration) -> Result<(), String> {
        self.send(&format!("arm {}\n", valid_for.as_millis()))
    }

    async fn disarm(&self) -> Result<(), String> {
        self.send("disarm\n")
    }
}

/// How a failure of the second fence of a [`CombinedFence`] counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecondFence {
    /// Logged (once, until it works again) and otherwise ignored.
    BestEffort,
    /// Reported to the engine like a failure of the first.
    Required,
}

/// Two fences armed and disarmed together: the first (the process fence)
/// always counts; the second (the watchdog) counts as [`SecondFence`] says.
pub struct CombinedFence {
    first: Arc<dyn Fence>,
    second: Arc<dyn Fence>,
    policy: SecondFence,
    /// The second fence failed last time (to log a failure once, not every loop).
    second_failing: AtomicBool,
}

impl std::fmt::Debug for CombinedFence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CombinedFence")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl CombinedFence {
    /// Arms and disarms `first` and `second` together.
    pub fn new(first: Arc<dyn Fence>, second: Arc<dyn Fence>, policy: SecondFence) -> Self {
        CombinedFence {
            first,
            second,
            policy,
            second_failing: AtomicBool::new(false),
        }
    }

    /// Combines both results: the first's error always, the second's only
    /// when it is required.
    fn combine(
        &self,
        what: &str,
        first: Result<(), String>,
        second: Result<(), String>,
    ) -> Result<(), String> {
        let second = match second {
            // Only an arm proves the watchdog works (a disarm of a device
            // never opened succeeds trivially).
            Ok(()) if what != "arm" => Ok(()),
            Ok(()) => {
                if self.second_failing.swap(false, Ordering::Relaxed) {
                    info!("the watchdog works again");
                }
                Ok(())
            }
            Err(error) => {
                let first_time = !self.second_failing.swap(true, Ordering::Relaxed);
                match self.policy {
                    SecondFence::Required => Err(error),
                    SecondFence::BestEffort => {
                        if first_time {
                            warn!(%error, "watchdog.mode is automatic: could not {what} the watchdog, continuing without it");
                        } else {
                            debug!(%error, "the watchdog still fails");
                        }
                        Ok(())
                    }
                }
            }
        };
        match (first, second) {
            (Ok(()), Ok(())) => Ok(()),
            (Err(e), Ok(())) | (Ok(()), Err(e)) => Err(e),
            (Err(a), Err(b)) => Err(format!("{a}; {b}")),
        }
    }
}

#[async_trait]
impl Fence for CombinedFence {
    async fn arm(&self, valid_for: Duration) -> Result<(), String> {
        let first = self.first.arm(valid_for).await;
        let second = self.second.arm(valid_for).await;
        self.combine("arm", first, second)
    }

    async fn disarm(&self) -> Result<(), String> {
        let first = self.first.disarm().await;
        let second = self.second.disarm().await;
        self.combine("disarm", first, second)
    }
}

/// A message on the watchdog's pipe.
#[derive(Debug, PartialEq, Eq)]
enum Message {
    Arm(Duration),
    Disarm,
    Closed,
}

fn parse_line(line: &str) -> Option<Message> {
    let line = line.trim();
    if line == "disarm" {
        return Some(Message::Disarm);
    }
    let millis = line.strip_prefix("arm ")?.trim().parse::<u64>().ok()?;
    Some(Message::Arm(Duration::from_millis(millis)))
}

fn log(message: &str) {
    eprintln!("matriarch fence[{}]: {message}", std::process::id());
}

/// The watchdog's main loop (`matriarch fence --pid-file ...`).
pub fn run_watchdog(pid_file: PathBuf) -> ExitCode {
    // SAFETY: setting a signal disposition to SIG_IGN has no preconditions.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
    }
    let (tx, rx) = std::sync::mpsc::channel::<Message>();
    std::thread::spawn(move || {
        let stdin = std::io::stdin();
        for line in stdin.lock().lines() {
            match line {
                Ok(line) => {
                    if let Some(message) = parse_line(&line) {
                        if tx.send(message).is_err() {
                            return;
                        }
                    } else {
                        log(&format!("ignoring an unknown message {line:?}"));
                    }
                }
                Err(_) => break,
            }
        }
        let _ = tx.send(Message::Closed);
    });
    let mut deadline: Option<Instant> = None;
    loop {
        let message = match deadline {
            None => rx.recv().unwrap_or(Message::Closed),
            Some(at) => match rx.recv_timeout(at.saturating_duration_since(Instant::now())) {
                Ok(message) => message,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    log("the agent did not renew in time: killing the postmaster");
                    kill_postmaster(&pid_file);
                    deadline = None;
                    continue;
                }
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => Message::Closed,
            },
        };
        match message {
            Message::Arm(valid_for) => deadline = Some(Instant::now() + valid_for),
            Message::Disarm => deadline = None,
            Message::Closed => {
                if deadline.is_some() {
                    log("the agent is gone while leading: killing the postmaster");
                    kill_postmaster(&pid_file);
                }
                return ExitCode::SUCCESS;
            }
        }
    }
}

/// The postmaster's pid from line 1 of `postmaster.pid`, if that process
/// still runs and is `postgres`.
fn postmaster_pid(pid_file: &Path) -> Option<i32> {
    let text = std::fs::read_to_string(pid_file).ok()?;
    let pid: i32 = text.lines().next()?.trim().parse().ok()?;
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    (pid > 1 && comm.trim() == "postgres").then_some(pid)
}

/// The processes whose parent is `parent`.
fn children_of(parent: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| {
                    // The fields after the command's closing parenthesis.
                    let rest = &stat[stat.rfind(')')? + 1..];
                    rest.split_whitespace().nth(1)?.parse::<i32>().ok()
                })
                == Some(parent)
        })
        .collect()
}

fn kill_postmaster(pid_file: &Path) {
    let Some(pid) = postmaster_pid(pid_file) else {
        log("no running postmaster to kill");
        return;
    };
    let children = children_of(pid);
    // SAFETY: kill(2) with a positive pid and a valid signal number.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
        for child in &children {
            libc::kill(*child, libc::SIGKILL);
        }
    }
    log(&format!(
        "killed postmaster {pid} and {} backends",
        children.len()
    ));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_parse() {
        assert_eq!(
            parse_line("arm 1500"),
            Some(Message::Arm(Duration::from_millis(1500)))
        );
        assert_eq!(parse_line("disarm\n"), Some(Message::Disarm));
        assert_eq!(parse_line("arm soon"), None);
        assert_eq!(parse_line("kill"), None);
    }

    /// A fence that records calls and fails when told to.
    #[derive(Default)]
    struct FakeFence {
        calls: Mutex<Vec<String>>,
        fail: AtomicBool,
    }

    #[async_trait]
    impl Fence for FakeFence {
        async fn arm(&self, valid_for: Duration) -> Result<(), String> {
            self.calls
                .lock()
                .unwrap()
                .push(format!("arm {}", valid_for.as_millis()));
            if self.fail.load(Ordering::Relaxed) {
                Err("device gone".to_owned())
            } else {
                Ok(())
            }
        }

        async fn disarm(&self) -> Result<(), String> {
            self.calls.lock().unwrap().push("disarm".to_owned());
            if self.fail.load(Ordering::Relaxed) {
                Err("device gone".to_owned())
            } else {
                Ok(())
            }
        }
    }

    fn combined(policy: SecondFence) -> (Arc<FakeFence>, Arc<FakeFence>, CombinedFence) {
        let first = Arc::new(FakeFence::default());
        let second = Arc::new(FakeFence::default());
        let fence = CombinedFence::new(first.clone(), second.clone(), policy);
        (first, second, fence)
    }

    #[tokio::test]
    async fn both_fences_are_armed_and_disarmed() {
        let (first, second, fence) = combined(SecondFence::BestEffort);
        fence.arm(Duration::from_millis(1500)).await.unwrap();
        fence.disarm().await.unwrap();
        for f in [&first, &second] {
            assert_eq!(*f.calls.lock().unwrap(), ["arm 1500", "disarm"]);
        }
    }

    #[tokio::test]
    async fn an_automatic_watchdog_failure_is_ignored_but_a_required_one_is_reported() {
        let (first, second, fence) = combined(SecondFence::BestEffort);
        second.fail.store(true, Ordering::Relaxed);
        fence.arm(Duration::from_secs(1)).await.unwrap();
        fence.arm(Duration::from_secs(1)).await.unwrap();
        // The process fence is still armed every time.
        assert_eq!(first.calls.lock().unwrap().len(), 2);

        let (_, second, fence) = combined(SecondFence::Required);
        second.fail.store(true, Ordering::Relaxed);
        let err = fence.arm(Duration::from_secs(1)).await.unwrap_err();
        assert!(err.contains("device gone"), "{err}");
        second.fail.store(false, Ordering::Relaxed);
        fence.arm(Duration::from_secs(1)).await.unwrap();
    }

    #[tokio::test]
    async fn a_process_fence_failure_is_always_reported() {
        let (first, second, fence) = combined(SecondFence::BestEffort);
        first.fail.store(true, Ordering::Relaxed);
        assert!(fence.arm(Duration::from_secs(1)).await.is_err());
        // The watchdog is armed even so.
        assert_eq!(second.calls.lock().unwrap().len(), 1);
    }

    #[test]
    fn a_missing_pid_file_kills_nothing() {
        assert_eq!(
            postmaster_pid(Path::new("/nonexistent/postmaster.pid")),
            None
        );
    }
}
