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
//! # With a watchdog
//!
//! When `watchdog.mode` is not `off`, [`CombinedFence`] arms and disarms
//! both the process fence and the [`crate::watchdog::Watchdog`]: the first
//! guards against a dead or hung agent, the second against a hung host.

use std::ffi::{CString, OsString};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use matriarch_ha::Fence;
use matriarch_postgres::{PostmasterLauncher, PostmasterSpec};
use serde::{Deserialize, Serialize};
use tracing::{debug, error, info, warn};

use crate::error::DaemonError;

/// How long the agent waits for the fence to answer a `spawn`.
const SPAWN_REPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the fence reaps its exited children.
const REAP_EVERY: Duration = Duration::from_millis(100);

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

    fn send(&mut self, line: &str) -> Result<(), String> {
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| "the watchdog pipe is closed".to_owned())?;
        stdin
            .write_all(line.as_bytes())
            .and_then(|()| stdin.flush())
            .map_err(|e| format!("the watchdog is gone: {e}"))
    }
}

/// The agent's end of the fence: the watchdog process and its pipes. It
/// starts a new fence process when it finds the last one dead.
#[derive(Debug)]
pub struct ProcessFence {
    pid_file: PathBuf,
    member: String,
    guard: Arc<Mutex<Guard>>,
}

impl ProcessFence {
    /// Spawns the watchdog for the postmaster of `data_dir`.
    pub fn spawn(data_dir: &Path, member: &str) -> Result<ProcessFence, DaemonError> {
        let pid_file = data_dir.join("postmaster.pid");
        let guard = Guard::spawn(&pid_file, member)?;
        Ok(ProcessFence {
            pid_file,
            member: member.to_owned(),
            guard: Arc::new(Mutex::new(guard)),
        })
    }

    /// The watchdog's process id.
    pub fn pid(&self) -> Option<u32> {
        self.guard.lock().ok().map(|g| g.child.id())
    }

    /// Locks the current fence; when it has died, starts a new one and
    /// returns `true` as well (what it guarded died with it).
    fn live_guard(&self) -> Result<(std::sync::MutexGuard<'_, Guard>, bool), String> {
        let mut guard = self
            .guard
            .lock()
            .map_err(|_| "fence lock poisoned".to_owned())?;
        if !guard.dead() {
            return Ok((guard, false));
        }
        let old = guard.child.id();
        let _ = guard.child.kill();
        let status = guard.child.wait().map(|s| s.to_string()).ok();
        error!(member = %self.member, fence_pid = old, ?status, "the write fence process died: starting a new one");
        *guard = Guard::spawn(&self.pid_file, &self.member).map_err(|e| e.to_string())?;
        info!(member = %self.member, fence_pid = guard.child.id(), "write fence watchdog restarted");
        Ok((guard, true))
    }

    /// Disarms and closes the pipe, so the watchdog exits (a clean stop;
    /// a postmaster still running dies with it).
    pub fn close(&self) {
        let Ok(mut guard) = self.guard.lock() else {
            return;
        };
        guard.closing.store(true, Ordering::SeqCst);
        let _ = guard.send("disarm\n");
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
        guard.send(&format!("spawn {line}\n"))?;
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
    async fn arm(&self, valid_for: Duration) -> Result<(), String> {
        let (mut guard, restarted) = self.live_guard()?;
        if restarted {
            // Its postmaster died with it: this node has nothing to lead with.
            return Err("the write fence process died (PostgreSQL died with it)".to_owned());
        }
        guard.send(&format!("arm {}\n", valid_for.as_millis()))
    }

    async fn disarm(&self) -> Result<(), String> {
        // A fence found dead is replaced; a new one starts disarmed anyway.
        let (mut guard, _) = self.live_guard()?;
        guard.send("disarm\n")
    }
}

#[async_trait]
impl PostmasterLauncher for ProcessFence {
    async fn launch(&self, spec: &PostmasterSpec) -> Result<u32, String> {
        let request = SpawnRequest::from_spec(spec)?;
        // A dead fence is replaced first: the postmaster needs a live parent.
        drop(self.live_guard()?);
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

/// A `spawn` request: a [`PostmasterSpec`] on the pipe (paths as bytes, so
/// that any path goes through JSON).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct SpawnRequest {
    program: Vec<u8>,
    args: Vec<Vec<u8>>,
    env: Vec<(Vec<u8>, Vec<u8>)>,
    cwd: Vec<u8>,
    log: Vec<u8>,
    identity: Option<(u32, u32)>,
}

impl SpawnRequest {
    fn from_spec(spec: &PostmasterSpec) -> Result<SpawnRequest, String> {
        let bytes = |s: &std::ffi::OsStr| s.as_bytes().to_vec();
        let request = SpawnRequest {
            program: bytes(spec.program.as_os_str()),
            args: spec.args.iter().map(|a| bytes(a.as_os_str())).collect(),
            env: spec
                .env
                .iter()
                .map(|(k, v)| (bytes(k.as_os_str()), bytes(v.as_os_str())))
                .collect(),
            cwd: bytes(spec.cwd.as_os_str()),
            log: bytes(spec.log.as_os_str()),
            identity: spec.identity,
        };
        // Checked here so that the fence never gets one it cannot exec.
        request.log_path()?;
        Ok(request)
    }

    fn log_path(&self) -> Result<CString, String> {
        CString::new(self.log.clone())
            .map_err(|_| "the server log path holds a NUL byte".to_owned())
    }
}

/// A message on the watchdog's pipe.
#[derive(Debug, PartialEq, Eq)]
enum Message {
    Arm(Duration),
    Disarm,
    Spawn(Box<SpawnRequest>),
    Closed,
}

fn parse_line(line: &str) -> Option<Message> {
    let line = line.trim();
    if line == "disarm" {
        return Some(Message::Disarm);
    }
    if let Some(json) = line.strip_prefix("spawn ") {
        return serde_json::from_str(json)
            .ok()
            .map(|r| Message::Spawn(Box::new(r)));
    }
    let millis = line.strip_prefix("arm ")?.trim().parse::<u64>().ok()?;
    Some(Message::Arm(Duration::from_millis(millis)))
}

/// The fence's answer to a `spawn`: the pid, or why it failed.
fn parse_reply(line: &str) -> Option<Result<u32, String>> {
    if let Some(pid) = line.strip_prefix("spawned ") {
        return pid.trim().parse().ok().map(Ok);
    }
    line.strip_prefix("failed ").map(|r| Err(r.to_owned()))
}

fn log(message: &str) {
    eprintln!("matriarch fence[{}]: {message}", std::process::id());
}

fn reply(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out
        .write_all(line.as_bytes())
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush());
}

/// Starts the postmaster as this process's child, in a new session, as the
/// requested user, with SIGKILL as its parent-death signal. Runs on the
/// fence's main thread only (the death signal follows the forking thread).
fn start_postmaster(request: &SpawnRequest) -> Result<u32, String> {
    use std::os::unix::process::CommandExt;
    let log_path = request.log_path()?;
    // SAFETY: getpid has no preconditions.
    let fence_pid = unsafe { libc::getpid() };
    let identity = request.identity;
    let mut cmd = Command::new(OsString::from_vec(request.program.clone()));
    cmd.args(request.args.iter().map(|a| OsString::from_vec(a.clone())))
        .env_clear()
        .envs(
            request
                .env
                .iter()
                .map(|(k, v)| (OsString::from_vec(k.clone()), OsString::from_vec(v.clone()))),
        )
        .current_dir(OsString::from_vec(request.cwd.clone()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let hook = move || -> std::io::Result<()> {
        // Only async-signal-safe calls from here on (the fork of a process
        // with threads), and no allocation.
        let check = |rc: libc::c_int| {
            if rc < 0 {
                Err(std::io::Error::last_os_error())
            } else {
                Ok(rc)
            }
        };
        // SAFETY: plain system calls on values owned by this closure; the
        // log path is a valid C string.
        unsafe {
            // Its own session and process group, as under pg_ctl: kill(-pid)
            // reaches the whole server.
            check(libc::setsid())?;
            if let Some((uid, gid)) = identity {
                check(libc::setgroups(0, std::ptr::null()))?;
                check(libc::setgid(gid))?;
                check(libc::setuid(uid))?;
            }
            // The fence ignores these; PostgreSQL's children rely on defaults.
            libc::signal(libc::SIGINT, libc::SIG_DFL);
            libc::signal(libc::SIGHUP, libc::SIG_DFL);
            // Opened as the OS user: never follow its symlinks as root.
            let fd = check(libc::open(
                log_path.as_ptr(),
                libc::O_WRONLY | libc::O_APPEND | libc::O_CREAT | libc::O_CLOEXEC,
                0o600 as libc::c_uint,
            ))?;
            check(libc::dup2(fd, 1))?;
            check(libc::dup2(fd, 2))?;
            libc::close(fd);
            // After the uid change, which clears it.
            check(libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
            ))?;
            // The fence died before the death signal was set: do not run
            // unguarded.
            if libc::getppid() != fence_pid {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
        }
        Ok(())
    };
    // SAFETY: the hook only makes async-signal-safe system calls.
    unsafe {
        cmd.pre_exec(hook);
    }
    let child = cmd.spawn().map_err(|e| {
        format!(
            "cannot start {}: {e}",
            Path::new(std::ffi::OsStr::from_bytes(&request.program)).display()
        )
    })?;
    // Reaped by reap_children; the handle is not needed.
    Ok(child.id())
}

/// Reaps every exited child (the postmasters this fence started), so that
/// none lingers as a zombie that PostgreSQL would take for a running server.
fn reap_children() {
    loop {
        let mut status: libc::c_int = 0;
        // SAFETY: waitpid with a valid pointer to a local.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid <= 0 {
            return;
        }
        let how = if libc::WIFEXITED(status) {
            format!("exit status {}", libc::WEXITSTATUS(status))
        } else if libc::WIFSIGNALED(status) {
            format!("signal {}", libc::WTERMSIG(status))
        } else {
            format!("status {status}")
        };
        log(&format!("postmaster {pid} ended ({how})"));
    }
}

/// The watchdog's main loop (`matriarch fence --pid-file ...`).
pub fn run_watchdog(pid_file: PathBuf) -> ExitCode {
    // SAFETY: setting a signal disposition to SIG_IGN has no preconditions.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
        // An agent gone mid-reply must not kill the fence.
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
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
                        let shown: String = line.chars().take(80).collect();
                        log(&format!("ignoring an unknown message {shown:?}"));
                        if line.starts_with("spawn ") {
                            reply("failed malformed spawn request");
                        }
                    }
                }
                Err(_) => break,
            }
        }
        let _ = tx.send(Message::Closed);
    });
    let mut deadline: Option<Instant> = None;
    loop {
        reap_children();
        let wait = deadline.map_or(REAP_EVERY, |at| {
            at.saturating_duration_since(Instant::now()).min(REAP_EVERY)
        });
        let message = match rx.recv_timeout(wait) {
            Ok(message) => message,
            Err(RecvTimeoutError::Timeout) => {
                if deadline.is_some_and(|at| Instant::now() >= at) {
                    log("the agent did not renew in time: killing the postmaster");
                    kill_postmaster(&pid_file);
                    deadline = None;
                }
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => Message::Closed,
        };
        match message {
            Message::Arm(valid_for) => deadline = Some(Instant::now() + valid_for),
            Message::Disarm => deadline = None,
            Message::Spawn(request) => match start_postmaster(&request) {
                Ok(pid) => {
                    log(&format!("started postmaster {pid}"));
                    reply(&format!("spawned {pid}"));
                }
                Err(reason) => {
                    log(&reason);
                    reply(&format!("failed {}", reason.replace('\n', " ")));
                }
            },
            Message::Closed => {
                if deadline.is_some() {
                    log("the agent is gone while leading: killing the postmaster");
                    kill_postmaster(&pid_file);
                }
                // A postmaster this fence started dies with it (its death signal).
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

    fn request(program: &str, args: &[&str], log: &Path) -> SpawnRequest {
        SpawnRequest::from_spec(&PostmasterSpec {
            program: PathBuf::from(program),
            args: args.iter().map(OsString::from).collect(),
            env: vec![("PATH".into(), "/usr/bin:/bin".into())],
            cwd: PathBuf::from("/"),
            log: log.to_owned(),
            identity: None,
        })
        .unwrap()
    }

    #[test]
    fn spawn_requests_and_replies_round_trip() {
        let spawn = request("/usr/bin/postgres", &["-D", "/data"], Path::new("/x.log"));
        let line = format!("spawn {}", serde_json::to_string(&spawn).unwrap());
        assert_eq!(parse_line(&line), Some(Message::Spawn(Box::new(spawn))));
        assert_eq!(parse_line("spawn {not json"), None);
        assert_eq!(parse_reply("spawned 4242"), Some(Ok(4242)));
        assert_eq!(
            parse_reply("failed no such file"),
            Some(Err("no such file".to_owned()))
        );
        assert_eq!(parse_reply("spawned soon"), None);
        assert_eq!(parse_reply("hello"), None);
    }

    /// How `pid` (a child of this process) ended, waiting up to 5 s.
    fn wait_child(pid: i32) -> Option<libc::c_int> {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            let mut status = 0;
            // SAFETY: waitpid on our own child with a valid pointer.
            if unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) } == pid {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    #[test]
    fn a_started_postmaster_leads_its_session_logs_and_dies_with_its_parent_thread() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("server.log");
        let spawn = request("/bin/sh", &["-c", "echo started; exec sleep 30"], &log);
        // The forking thread ends once the child wrote to the log, as a
        // dying fence would.
        let watched = log.clone();
        let pid = std::thread::spawn(move || {
            let pid = start_postmaster(&spawn);
            let deadline = Instant::now() + Duration::from_secs(5);
            while std::fs::metadata(&watched).map_or(0, |m| m.len()) == 0
                && Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            pid
        })
        .join()
        .unwrap()
        .unwrap() as i32;
        let status = wait_child(pid).expect("the child outlived its parent thread");
        assert!(libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGKILL);
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "started\n");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&log).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_started_postmaster_is_a_session_leader() {
        let dir = tempfile::tempdir().unwrap();
        let spawn = request("/bin/sleep", &["30"], &dir.path().join("log"));
        let pid = start_postmaster(&spawn).unwrap() as i32;
        // SAFETY: getsid/kill on our own child.
        let sid = unsafe { libc::getsid(pid) };
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
        let _ = wait_child(pid);
        assert_eq!(sid, pid);
    }

    #[test]
    fn a_failed_start_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let spawn = request("/nonexistent/postgres", &[], &dir.path().join("log"));
        let err = start_postmaster(&spawn).unwrap_err();
        assert!(err.contains("/nonexistent/postgres"), "{err}");
    }
}
