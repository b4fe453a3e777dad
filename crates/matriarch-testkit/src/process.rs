//! A child process owned by a test handle: spawned in its own process group with its
//! output appended to a log file, and killed (whole group) when dropped.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::thread::sleep;
use std::time::{Duration, Instant};

use crate::error::{IoContext, Result, TestkitError};

/// The process controls of a service handle whose `process` field is a
/// `Mutex<ServiceProcess>`: `lock`, and the public `pid`, `log_tail`, `kill`,
/// `pause` and `resume`. `$what` names the process in their docs.
macro_rules! process_controls {
    ($what:literal) => {
        fn lock(&self) -> std::sync::MutexGuard<'_, $crate::process::ServiceProcess> {
            $crate::process::lock_process(&self.process)
        }

        #[doc = concat!("The process id of ", $what, ", or `None` once it was stopped or killed.")]
        pub fn pid(&self) -> Option<u32> {
            self.lock().pid()
        }

        #[doc = concat!("The last lines of the log of ", $what, ".")]
        pub fn log_tail(&self) -> String {
            self.lock().log_tail()
        }

        #[doc = concat!(
                    "Kills ", $what, " (its whole process group) with SIGKILL and waits for it ",
                    "to be gone. No-op when not running."
                )]
        pub fn kill(&self) {
            self.lock().kill();
        }

        #[doc = concat!("Freezes ", $what, " with SIGSTOP (its sockets stay open).")]
        pub fn pause(&self) -> $crate::error::Result<()> {
            self.lock().signal(libc::SIGSTOP)
        }

        #[doc = concat!("Unfreezes ", $what, " after a pause (SIGCONT).")]
        pub fn resume(&self) -> $crate::error::Result<()> {
            self.lock().signal(libc::SIGCONT)
        }
    };
}
pub(crate) use process_controls;

/// How many log lines go into error messages.
const TAIL_LINES: usize = 40;
/// How many times a start is tried when the port turns out to be taken.
const START_ATTEMPTS: usize = 3;

/// Runs `attempt` (a start or restart that waits until the service is ready) up
/// to three times while it fails only because the service could not bind its
/// port: a free port can be taken by another process between picking it and
/// binding it. Sleeps `pause` after such a failure. Any other error is returned
/// at once; `what` names the start when every attempt clashed.
pub(crate) fn retry_on_port_clash<T>(
    what: &str,
    pause: Duration,
    mut attempt: impl FnMut() -> Result<T>,
) -> Result<T> {
    let mut last_err = None;
    for _ in 0..START_ATTEMPTS {
        match attempt() {
            Ok(value) => return Ok(value),
            Err(e) if is_port_clash(&e) => {
                sleep(pause);
                last_err = Some(e);
            }
            Err(e) => return Err(e),
        }
    }
    Err(last_err.unwrap_or_else(|| TestkitError::InvalidArgument(format!("{what} failed"))))
}

/// A throwaway directory `/tmp/<prefix>XXXX` for one start of `service`.
pub(crate) fn temp_dir(prefix: &str, service: &str) -> Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .ctx(|| format!("creating a temporary directory for {service}"))
}

/// Locks a handle's process; a panic while it was held leaves the process
/// usable, so a poisoned lock is taken over.
pub(crate) fn lock_process(process: &Mutex<ServiceProcess>) -> MutexGuard<'_, ServiceProcess> {
    process.lock().unwrap_or_else(|p| p.into_inner())
}

/// Returns an error naming `program` when `path` does not exist.
pub(crate) fn require_program(program: &str, path: &Path) -> Result<()> {
    if path.is_file() {
        Ok(())
    } else {
        Err(TestkitError::MissingProgram {
            program: program.to_string(),
            path: path.to_path_buf(),
        })
    }
}

/// Looks a program up on `PATH` and in the sbin directories (some, like `named`, live there).
pub(crate) fn find_program(program: &str) -> Result<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    for extra in [
        "/usr/local/sbin",
        "/usr/local/bin",
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/bin",
    ] {
        dirs.push(PathBuf::from(extra));
    }
    dirs.into_iter()
        .map(|d| d.join(program))
        .find(|p| p.is_file())
        .ok_or_else(|| TestkitError::MissingProgram {
            program: program.to_string(),
            path: PathBuf::from(format!("{program} on PATH, /usr/sbin and /usr/bin")),
        })
}

/// Returns the last `TAIL_LINES` lines of a log file (or a note why it cannot be read).
pub(crate) fn log_tail(path: &Path) -> String {
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) => return format!("<cannot open {}: {e}>", path.display()),
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(16 * 1024);
    if file.seek(SeekFrom::Start(start)).is_err() {
        return format!("<cannot seek in {}>", path.display());
    }
    let mut buf = Vec::new();
    if let Err(e) = file.read_to_end(&mut buf) {
        return format!("<cannot read {}: {e}>", path.display());
    }
    let text = String::from_utf8_lossy(&buf);
    let lines: Vec<&str> = text.lines().collect();
    let from = lines.len().saturating_sub(TAIL_LINES);
    lines[from..].join("\n")
}

/// Renders a command line for error messages.
pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs a command to completion, capturing its output; fails when it exits non-zero.
pub(crate) fn run_checked(cmd: &mut Command) -> Result<std::process::Output> {
    let what = describe(cmd);
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .ctx(|| format!("running `{what}`"))?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(TestkitError::CommandFailed {
            command: what,
            status: out.status.to_string(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }
}

/// Everything needed to (re)spawn a service process.
#[derive(Debug, Clone)]
pub(crate) struct Spec {
    pub program: PathBuf,
    pub args: Vec<OsString>,
    pub envs: Vec<(OsString, OsString)>,
    pub cwd: Option<PathBuf>,
    /// (uid, gid) to switch to before exec.
    pub user: Option<(u32, u32)>,
}

impl Spec {
    pub(crate) fn new(program: impl Into<PathBuf>) -> Self {
        Spec {
            program: program.into(),
            args: Vec::new(),
            envs: Vec::new(),
            cwd: None,
            user: None,
        }
    }

    pub(crate) fn arg(mut self, a: impl Into<OsString>) -> Self {
        self.args.push(a.into());
        self
    }
}

/// A running (or stopped) service process.
#[derive(Debug)]
pub(crate) struct ServiceProcess {
    name: String,
    spec: Spec,
    log_path: PathBuf,
    child: Option<Child>,
}

impl ServiceProcess {
    /// Spawns the process described by `spec`, appending its output to `log_path`.
    pub(crate) fn spawn(name: impl Into<String>, spec: Spec, log_path: PathBuf) -> Result<Self> {
        let mut p = ServiceProcess {
            name: name.into(),
            spec,
            log_path,
            child: None,
        };
        p.start()?;
        Ok(p)
    }

    /// Starts the process again (it must not be running).
    pub(crate) fn start(&mut self) -> Result<()> {
        if self.child.is_some() {
            return Err(TestkitError::InvalidArgument(format!(
                "{} is already running",
                self.name
            )));
        }
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .ctx(|| format!("opening log file {}", self.log_path.display()))?;
        let log2 = log
            .try_clone()
            .ctx(|| format!("duplicating log file handle {}", self.log_path.display()))?;
        let mut cmd = Command::new(&self.spec.program);
        cmd.args(&self.spec.args)
            .envs(self.spec.envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .process_group(0);
        if let Some(cwd) = &self.spec.cwd {
            cmd.current_dir(cwd);
        }
        if let Some((uid, gid)) = self.spec.user {
            cmd.uid(uid).gid(gid);
        }
        let what = describe(&cmd);
        let child = cmd
            .spawn()
            .ctx(|| format!("starting {}: `{what}`", self.name))?;
        self.child = Some(child);
        Ok(())
    }

    /// The process id while the process runs.
    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The last lines of the log.
    pub(crate) fn log_tail(&self) -> String {
        log_tail(&self.log_path)
    }

    /// Fails with [`TestkitError::Exited`] if the process is not running any more.
    pub(crate) fn check_running(&mut self) -> Result<()> {
        let Some(child) = self.child.as_mut() else {
            return Err(TestkitError::Exited {
                service: self.name.clone(),
                status: "not started".into(),
                log_tail: log_tail(&self.log_path),
            });
        };
        match child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => {
                self.child = None;
                Err(TestkitError::Exited {
                    service: self.name.clone(),
                    status: status.to_string(),
                    log_tail: log_tail(&self.log_path),
                })
            }
            Err(e) => Err(TestkitError::io(format!("checking on {}", self.name), e)),
        }
    }

    /// Sends `sig` to the main process only.
    pub(crate) fn signal(&self, sig: libc::c_int) -> Result<()> {
        let pid = self.pid().ok_or_else(|| {
            TestkitError::InvalidArgument(format!("{} is not running", self.name))
        })?;
        // SAFETY: kill(2) with a pid we own; no memory is involved.
        let rc = unsafe { libc::kill(pid as libc::pid_t, sig) };
        if rc == 0 {
            Ok(())
        } else {
            Err(TestkitError::io(
                format!("sending signal {sig} to {} (pid {pid})", self.name),
                std::io::Error::last_os_error(),
            ))
        }
    }

    /// SIGKILLs the whole process group and reaps the child. Does nothing when not running.
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pgid = child.id() as libc::pid_t;
            // SAFETY: kill(2) on the process group we created; no memory is involved.
            unsafe {
                libc::kill(-pgid, libc::SIGKILL);
            }
            let _ = child.kill();
            let _ = child.wait();
            // Grandchildren that are still dying keep the group alive briefly; make sure
            // none survive (they might still hold ports).
            let deadline = Instant::now() + Duration::from_secs(5);
            // SAFETY: as above; signal 0 only probes for existence.
            while unsafe { libc::kill(-pgid, 0) } == 0 && Instant::now() < deadline {
                unsafe {
                    libc::kill(-pgid, libc::SIGKILL);
                }
                sleep(Duration::from_millis(10));
            }
        }
    }

    /// Sends `sig` to the main process and waits up to `timeout` for it to exit;
    /// SIGKILLs the group afterwards (also any leftovers).
    pub(crate) fn terminate(&mut self, sig: libc::c_int, timeout: Duration) {
        if self.child.is_none() {
            return;
        }
        let _ = self.signal(libc::SIGCONT);
        let _ = self.signal(sig);
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            match self.child.as_mut().map(Child::try_wait) {
                Some(Ok(None)) => sleep(Duration::from_millis(20)),
                _ => break,
            }
        }
        self.kill();
    }

    /// Polls `probe` until it returns `Ok(true)` or the deadline passes; fails early
    /// when the process exits.
    pub(crate) fn wait_until(
        &mut self,
        timeout: Duration,
        mut probe: impl FnMut() -> std::result::Result<bool, String>,
    ) -> Result<()> {
        let start = Instant::now();
        loop {
            self.check_running()?;
            let last = match probe() {
                Ok(true) => return Ok(()),
                Ok(false) => "probe returned not ready".to_string(),
                Err(e) => e,
            };
            if start.elapsed() >= timeout {
                return Err(TestkitError::NotReady {
                    service: self.name.clone(),
                    waited: start.elapsed(),
                    detail: last,
                    log_tail: log_tail(&self.log_path),
                });
            }
            sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Whether an error says the process could not bind its port.
pub(crate) fn is_port_clash(err: &TestkitError) -> bool {
    let text = match err {
        TestkitError::Exited { log_tail, .. } | TestkitError::NotReady { log_tail, .. } => log_tail,
        _ => return false,
    };
    let t = text.to_ascii_lowercase();
    t.contains("address already in use") || t.contains("could not bind") || t.contains("addrinuse")
}
