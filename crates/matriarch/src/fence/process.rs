//! The fence process itself (`matriarch fence --pid-file ...`): it reads
//! `arm`, `disarm`, `suspend` and `spawn` lines on its input, starts
//! postmasters as its children, reaps them, and kills the postmaster when the
//! deadline passes or the agent's pipe closes while armed. When the pipe
//! closes while suspended (the cluster is paused), it stays the postmaster's
//! parent until the postmaster exits. See the parent module for why.

use std::ffi::OsString;
use std::io::{BufRead, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};

use super::spawn_request::SpawnRequest;

/// How often the fence reaps its exited children.
pub(super) const REAP_EVERY: Duration = Duration::from_millis(100);

/// A message on the watchdog's pipe.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Message {
    Arm(Duration),
    Disarm,
    Suspend,
    Spawn(Box<SpawnRequest>),
    Closed,
}

pub(super) fn parse_line(line: &str) -> Option<Message> {
    let line = line.trim();
    if line == "disarm" {
        return Some(Message::Disarm);
    }
    if line == "suspend" {
        return Some(Message::Suspend);
    }
    if let Some(json) = line.strip_prefix("spawn ") {
        return serde_json::from_str(json)
            .ok()
            .map(|r| Message::Spawn(Box::new(r)));
    }
    let millis = line.strip_prefix("arm ")?.trim().parse::<u64>().ok()?;
    Some(Message::Arm(Duration::from_millis(millis)))
}

pub(super) fn log(message: &str) {
    eprintln!("matriarch fence[{}]: {message}", std::process::id());
}

pub(super) fn reply(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out
        .write_all(line.as_bytes())
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush());
}

/// Starts the postmaster as this process's child, in a new session, as the
/// requested user, with SIGKILL as its parent-death signal. Runs on the
/// fence's main thread only (the death signal follows the forking thread).
pub(super) fn start_postmaster(request: &SpawnRequest) -> Result<u32, String> {
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
/// Returns whether a child still runs.
pub(super) fn reap_children() -> bool {
    loop {
        let mut status: libc::c_int = 0;
        // SAFETY: waitpid with a valid pointer to a local.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid == 0 {
            return true;
        }
        if pid < 0 {
            // ECHILD: none left (EINTR cannot happen with WNOHANG).
            return false;
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
pub(crate) fn run_watchdog(pid_file: PathBuf) -> ExitCode {
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
    let mut suspended = false;
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
            Message::Arm(valid_for) => {
                deadline = Some(Instant::now() + valid_for);
                suspended = false;
            }
            Message::Disarm => {
                deadline = None;
                suspended = false;
            }
            Message::Suspend => {
                deadline = None;
                suspended = true;
            }
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
                if suspended {
                    log("the agent is gone while the cluster is paused: PostgreSQL keeps running; this fence stays its parent until it stops");
                    linger_until_children_exit();
                    return ExitCode::SUCCESS;
                }
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

/// Stays the parent of the postmasters this fence started (their death
/// signal follows this process) and reaps them, until none is left.
fn linger_until_children_exit() {
    while reap_children() {
        std::thread::sleep(REAP_EVERY);
    }
    log("no postmaster left: exiting");
}

/// The postmaster's pid from line 1 of `postmaster.pid`, if that process
/// still runs and is `postgres`.
pub(super) fn postmaster_pid(pid_file: &Path) -> Option<i32> {
    let text = std::fs::read_to_string(pid_file).ok()?;
    let pid: i32 = text.lines().next()?.trim().parse().ok()?;
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    (pid > 1 && comm.trim() == "postgres").then_some(pid)
}

/// The processes whose parent is `parent`.
pub(super) fn children_of(parent: i32) -> Vec<i32> {
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

pub(super) fn kill_postmaster(pid_file: &Path) {
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
