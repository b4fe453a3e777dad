//! The write fence: a primary's PostgreSQL never outlives its agent as a
//! writable primary, nor all of matriarch's processes.
//!
//! # Mechanism
//!
//! The agent spawns a small watchdog child, `matriarch fence --pid-file
//! <data_dir>/postmaster.pid` (a hidden subcommand of the same binary), in
//! its own process group, with a pipe on its standard input and one on its
//! standard output. The input pipe carries one line per message:
//!
//! - `arm <milliseconds>`: writes are allowed for that long from now
//!   ([`matriarch_ha::Fence::arm`], sent after each successful lock renewal);
//! - `disarm`: this node no longer leads, nothing to guard;
//! - `suspend`: the cluster is paused (see below);
//! - `spawn <json>`: start the postmaster ([`ProcessFence`] is the
//!   controller's [`PostmasterLauncher`]); the fence answers `spawned <pid>`
//!   or `failed <reason>` on its output.
//!
//! The fence is the postmaster's parent. In the child, before `exec`, it
//! calls `setsid` (the postmaster leads its session and process group, as
//! under pg_ctl), drops to the PostgreSQL OS user, opens the server log as
//! that user, and only then sets `PR_SET_PDEATHSIG` to SIGKILL (the kernel
//! clears it when credentials change), and checks that its parent is still
//! the fence. So the kernel kills the postmaster whenever the fence dies,
//! however it dies: `pkill -9 matriarch`, a SIGKILL of the unit's process
//! group or cgroup, the OOM killer. The death signal follows the parent
//! *thread*: the fence forks only from its main thread, which lives as long
//! as the process (never from the agent's tokio threads). The fence reaps its
//! children, so `pg_ctl stop` and the controller see a stopped postmaster
//! disappear.
//!
//! The watchdog also SIGKILLs the postmaster (its pid is line 1 of
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
//! replica, rewind). When the pipe closes while disarmed the watchdog exits
//! too, and the postmaster it started dies with it: a replica's PostgreSQL
//! does not survive an unclean death of its agent (a clean stop stops
//! PostgreSQL first anyway). This is on purpose: a postmaster whose guard
//! is gone could later be promoted by a new agent while nothing kills it
//! with that agent. The watchdog ignores SIGINT and SIGHUP (a terminal's
//! Ctrl-C must not take the fence down with the agent); SIGTERM ends it.
//!
//! When the fence dies alone, its postmaster dies with it. The agent notices
//! (the fence's output pipe closes), logs it, fails the next `arm` (the
//! engine then gives up the leader lock) and starts a new fence for the
//! next start of PostgreSQL.
//!
//! A postmaster already running when the agent starts (started by hand or
//! by an older version) is not the fence's child: it is guarded by the
//! deadline and the pipe only, until it is next restarted.
//!
//! # In pause
//!
//! While the cluster is paused (`pause: true`, maintenance mode) the
//! operator owns PostgreSQL, as under Patroni: the agent stops or restarts
//! nothing, and stopping the agent (to upgrade it, say) must leave a running
//! primary running. This is the one exception to "a primary never outlives
//! matriarch's processes as a writable primary", and the operator asks for it
//! by pausing. So while paused the engine sends `suspend` instead of `arm`:
//! no deadline, and when the pipe closes (a clean stop, or the agent's death)
//! the watchdog does not kill the postmaster and does not exit: it stays the
//! postmaster's parent (so the death signal does not fire), reaping it, and
//! exits once no postmaster of its own is left. The leader key is left too
//! (it expires by its ttl, or the restarted agent renews it), and a restarted
//! agent adopts the running postmaster like any it did not start. At resume
//! the engine disarms, then arms again with its first renewal, before it
//! acts on the resumed cluster. A postmaster adopted that way is guarded by
//! the new fence's deadline and pipe only (a SIGKILL of the whole of
//! matriarch, the old fence included, still kills it by its death signal),
//! until it is next restarted. A SIGTERM of the lingering fence kills the
//! postmaster; with systemd, stop the unit with `KillMode=process` (as
//! Patroni's documentation recommends) so that a stop in pause reaches the
//! agent alone.
//!
//! # With a watchdog
//!
//! When `watchdog.mode` is not `off`, [`CombinedFence`] arms and disarms
//! both the process fence and the [`crate::watchdog::Watchdog`]: the first
//! guards against a dead or hung agent, the second against a hung host.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use matriarch_ha::{Fence, FenceError};
use matriarch_postgres::{PostmasterLauncher, PostmasterSpec};
use tracing::{debug, error, info, warn};

use crate::error::DaemonError;

/// How long the agent waits for the fence to answer a `spawn`.
const SPAWN_REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// One running fence process and its pipes.
#[derive(Debug)]
struct Guard {
    child: Child,
    stdin: Option<ChildStdin>,
    /// The fence's output lines; disconnected once its output pipe closed.
    replies: Receiver<String>,
    /// Set once the fence's output pipe closed: it died (or is exiting).
    gone: Arc<AtomicBool>,
    /// Set before a clean close, so that its exit is not reported as a death.
    closing: Arc<AtomicBool>,
}

impl Guard {
    fn spawn(pid_file: &Path, member: &str) -> Result<Guard, DaemonError> {
        use std::os::unix::process::CommandExt;
        let exe = std::env::current_exe()
            .map_err(|e| DaemonError::Fence(format!("cannot find this program: {e}")))?;
        let mut child = Command::new(exe)
            .arg("fence")
            .arg("--pid-file")
            .arg(pid_file)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .process_group(0)
            .spawn()
            .map_err(|e| DaemonError::Fence(format!("cannot start the watchdog: {e}")))?;
        let stdin = child.stdin.take();
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| DaemonError::Fence("the watchdog has no output pipe".to_owned()))?;
        let (tx, replies) = std::sync::mpsc::channel();
        let gone = Arc::new(AtomicBool::new(false));
        let closing = Arc::new(AtomicBool::new(false));
        let pid = child.id();
        let (thread_gone, thread_closing, member) =
            (Arc::clone(&gone), Arc::clone(&closing), member.to_owned());
        std::thread::Builder::new()
            .name("fence-reader".to_owned())
            .spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        return;
                    }
                }
                // EOF: only the fence held the write end (the postmaster's
                // output goes to the server log).
                thread_gone.store(true, Ordering::SeqCst);
                if !thread_closing.load(Ordering::SeqCst) {
                    error!(%member, fence_pid = pid, "the write fence process died: the PostgreSQL it started died with it; this node stops leading and starts a new fence");
                }
            })
            .map_err(|e| DaemonError::Fence(format!("cannot start the fence reader: {e}")))?;
        Ok(Guard {
            child,
            stdin,
            replies,
            gone,
            closing,
        })
    }

    /// Whether the fence process has died.
    fn dead(&mut self) -> bool {
        self.gone.load(Ordering::SeqCst) || !matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends one line; `command` names it in the error.
    fn send(&mut self, command: &'static str, line: &str) -> Result<(), FenceError> {
        let stdin = self.stdin.as_mut().ok_or(FenceError::PipeClosed)?;
        stdin
            .write_all(line.as_bytes())
            .and_then(|()| stdin.flush())
            .map_err(|source| FenceError::Send { command, source })
    }
}

/// The agent's end of the fence: the watchdog process and its pipes. It
/// starts a new fence process when it finds the last one dead.
#[derive(Debug)]
pub(crate) struct ProcessFence {
    pid_file: PathBuf,
    member: String,
    guard: Arc<Mutex<Guard>>,
    /// The fence was last told `suspend` (the cluster is paused): a clean
    /// close leaves the postmaster running.
    suspended: AtomicBool,
}

impl ProcessFence {
    /// Spawns the watchdog for the postmaster of `data_dir`.
    pub(crate) fn spawn(data_dir: &Path, member: &str) -> Result<ProcessFence, DaemonError> {
        let pid_file = data_dir.join("postmaster.pid");
        let guard = Guard::spawn(&pid_file, member)?;
        Ok(ProcessFence {
            pid_file,
            member: member.to_owned(),
            guard: Arc::new(Mutex::new(guard)),
            suspended: AtomicBool::new(false),
        })
    }

    /// The watchdog's process id.
    pub(crate) fn pid(&self) -> Option<u32> {
        self.guard.lock().ok().map(|g| g.child.id())
    }

    /// Locks the current fence; when it has died, starts a new one and
    /// returns `true` as well (what it guarded died with it).
    fn live_guard(&self) -> Result<(std::sync::MutexGuard<'_, Guard>, bool), FenceError> {
        // A panic while holding it leaves nothing half-written in the guard.
        let mut guard = self
            .guard
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !guard.dead() {
            return Ok((guard, false));
        }
        let old = guard.child.id();
        let _ = guard.child.kill();
        let status = guard.child.wait().map(|s| s.to_string()).ok();
        error!(member = %self.member, fence_pid = old, ?status, "the write fence process died: starting a new one");
        *guard = Guard::spawn(&self.pid_file, &self.member).map_err(|e| FenceError::Restart {
            source: Box::new(e),
        })?;
        info!(member = %self.member, fence_pid = guard.child.id(), "write fence watchdog restarted");
        if self.suspended.load(Ordering::SeqCst) {
            // The cluster is still paused: what the new one starts must
            // outlive this agent too.
            guard.send("suspend", "suspend\n")?;
        }
        Ok((guard, true))
    }

    /// Disarms and closes the pipe, so the watchdog exits (a clean stop;
    /// a postmaster still running dies with it). While suspended (the
    /// cluster is paused) it only closes the pipe: the watchdog stays the
    /// postmaster's parent, and PostgreSQL keeps running.
    pub(crate) fn close(&self) {
        let Ok(mut guard) = self.guard.lock() else {
            return;
        };
        guard.closing.store(true, Ordering::SeqCst);
        if self.suspended.load(Ordering::SeqCst) {
            info!(member = %self.member, fence_pid = guard.child.id(), "the cluster is paused: PostgreSQL keeps running after this agent, its fence stays its parent");
            guard.stdin.take();
            return;
        }
        let _ = guard.send("disarm", "disarm\n");
        guard.stdin.take();
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = guard.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Asks the fence to start `request` and waits for its answer.
    fn spawn_postmaster(
        guard: &Mutex<Guard>,
        member: &str,
        request: &SpawnRequest,
    ) -> Result<u32, String> {
        let line = serde_json::to_string(request)
            .map_err(|e| format!("cannot encode the spawn request: {e}"))?;
        let mut guard = guard.lock().map_err(|_| "fence lock poisoned".to_owned())?;
        // Answers to an earlier request that timed out.
        while guard.replies.try_recv().is_ok() {}
        guard
            .send("spawn", &format!("spawn {line}\n"))
            .map_err(|e| e.to_string())?;
        let reply = match guard.replies.recv_timeout(SPAWN_REPLY_TIMEOUT) {
            Ok(reply) => reply,
            Err(RecvTimeoutError::Timeout) => {
                return Err(format!(
                    "the write fence did not answer within {SPAWN_REPLY_TIMEOUT:?}"
                ))
            }
            Err(RecvTimeoutError::Disconnected) => {
                return Err("the write fence died while starting PostgreSQL".to_owned())
            }
        };
        match parse_reply(&reply) {
            Some(Ok(pid)) => {
                debug!(%member, pid, "the write fence started the postmaster");
                Ok(pid)
            }
            Some(Err(reason)) => Err(format!("the write fence could not start it: {reason}")),
            None => Err(format!("unexpected answer from the write fence: {reply:?}")),
        }
    }
}

#[async_trait]
impl Fence for ProcessFence {
    async fn arm(&self, valid_for: Duration) -> Result<(), FenceError> {
        let (mut guard, restarted) = self.live_guard()?;
        if restarted {
            // Its postmaster died with it: this node has nothing to lead with.
            return Err(FenceError::Died);
        }
        guard.send("arm", &format!("arm {}\n", valid_for.as_millis()))?;
        self.suspended.store(false, Ordering::SeqCst);
        Ok(())
    }

    async fn disarm(&self) -> Result<(), FenceError> {
        // A fence found dead is replaced; a new one starts disarmed anyway.
        let (mut guard, _) = self.live_guard()?;
        guard.send("disarm", "disarm\n")?;
        self.suspended.store(false, Ordering::SeqCst);
        Ok(())
    }

    async fn suspend(&self) -> Result<(), FenceError> {
        let (mut guard, _) = self.live_guard()?;
        guard.send("suspend", "suspend\n")?;
        self.suspended.store(true, Ordering::SeqCst);
        Ok(())
    }
}

#[async_trait]
impl PostmasterLauncher for ProcessFence {
    async fn launch(&self, spec: &PostmasterSpec) -> Result<u32, String> {
        let request = SpawnRequest::from_spec(spec)?;
        // A dead fence is replaced first: the postmaster needs a live parent.
        drop(self.live_guard().map_err(|e| e.to_string())?);
        let guard = Arc::clone(&self.guard);
        let member = self.member.clone();
        // The blocking wait for the answer stays off the runtime's workers.
        tokio::task::spawn_blocking(move || {
            ProcessFence::spawn_postmaster(&guard, &member, &request)
        })
        .await
        .map_err(|e| format!("the spawn task failed: {e}"))?
    }
}

/// How a failure of the second fence of a [`CombinedFence`] counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SecondFence {
    /// Logged (once, until it works again) and otherwise ignored.
    BestEffort,
    /// Reported to the engine like a failure of the first.
    Required,
}

/// Two fences armed and disarmed together: the first (the process fence)
/// always counts; the second (the watchdog) counts as [`SecondFence`] says.
pub(crate) struct CombinedFence {
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
    pub(crate) fn new(first: Arc<dyn Fence>, second: Arc<dyn Fence>, policy: SecondFence) -> Self {
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
        first: Result<(), FenceError>,
        second: Result<(), FenceError>,
    ) -> Result<(), FenceError> {
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
            (Err(first), Err(second)) => Err(FenceError::Both {
                first: Box::new(first),
                second: Box::new(second),
            }),
        }
    }
}

#[async_trait]
impl Fence for CombinedFence {
    async fn arm(&self, valid_for: Duration) -> Result<(), FenceError> {
        let first = self.first.arm(valid_for).await;
        let second = self.second.arm(valid_for).await;
        self.combine("arm", first, second)
    }

    async fn disarm(&self) -> Result<(), FenceError> {
        let first = self.first.disarm().await;
        let second = self.second.disarm().await;
        self.combine("disarm", first, second)
    }

    async fn suspend(&self) -> Result<(), FenceError> {
        // The watchdog is off in pause, as under Patroni.
        let first = self.first.suspend().await;
        let second = self.second.disarm().await;
        self.combine("disarm", first, second)
    }
}

/// The fence's answer to a `spawn`: the pid, or why it failed.
fn parse_reply(line: &str) -> Option<Result<u32, String>> {
    if let Some(pid) = line.strip_prefix("spawned ") {
        return pid.trim().parse().ok().map(Ok);
    }
    line.strip_prefix("failed ").map(|r| Err(r.to_owned()))
}

mod process;
mod spawn_request;

use spawn_request::SpawnRequest;

pub(crate) use process::run_watchdog;

#[cfg(test)]
mod tests;
