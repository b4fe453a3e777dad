//! Running the PostgreSQL server programs as the right OS user.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use matriarch_os_user::OsIdentity;
use tokio::process::Command;

use crate::error::{Operation, PostgresError};
use crate::secret::Secret;

/// The OS user the server programs run as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct OsUser {
    pub(crate) name: String,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    pub(crate) home: PathBuf,
    /// Whether commands switch to this user (this process runs as root).
    pub(crate) switch: bool,
}

impl OsUser {
    /// `name` when running as root, else the current user.
    pub(crate) fn resolve(name: &str) -> Result<OsUser, PostgresError> {
        if !OsIdentity::running_as_root() {
            return Ok(OsUser::from_identity(OsIdentity::current(), false));
        }
        let identity = OsIdentity::lookup(name)
            .map_err(|err| PostgresError::InvalidConfig {
                reason: if err.kind() == std::io::ErrorKind::InvalidInput {
                    err.to_string()
                } else {
                    format!("looking up OS user {name:?}: {err}")
                },
            })?
            .ok_or_else(|| PostgresError::InvalidConfig {
                reason: format!(
                    "OS user {name:?} does not exist (PostgreSQL refuses to run as root)"
                ),
            })?;
        if identity.uid == 0 {
            return Err(PostgresError::InvalidConfig {
                reason: format!("OS user {name:?} is root; PostgreSQL refuses to run as root"),
            });
        }
        Ok(OsUser::from_identity(identity, true))
    }

    fn from_identity(identity: OsIdentity, switch: bool) -> OsUser {
        OsUser {
            name: identity.name,
            uid: identity.uid,
            gid: identity.gid,
            home: identity.home,
            switch,
        }
    }
}

/// Runs server programs from one bin directory as one OS user.
#[derive(Clone, Debug)]
pub(crate) struct Runner {
    pub(crate) bin_dir: PathBuf,
    pub(crate) user: OsUser,
    pub(crate) member: String,
}

/// What a finished program printed.
pub(crate) struct Finished {
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

impl Runner {
    /// The program's path, or [`PostgresError::MissingProgram`].
    pub(crate) fn program(&self, op: Operation, name: &str) -> Result<PathBuf, PostgresError> {
        let path = self.bin_dir.join(name);
        if path.is_file() {
            Ok(path)
        } else {
            Err(PostgresError::MissingProgram {
                operation: op,
                program: name.to_owned(),
                path,
            })
        }
    }

    /// Checks that every program `op` runs is installed, before it
    /// changes anything: the first missing one is
    /// [`PostgresError::MissingProgram`].
    pub(crate) fn require(&self, op: Operation, names: &[&str]) -> Result<(), PostgresError> {
        names
            .iter()
            .try_for_each(|name| self.program(op, name).map(drop))
    }

    /// A command for `name` with a clean environment (no inherited `PG*`
    /// variables), the C locale, and the OS user's identity.
    pub(crate) fn command(&self, op: Operation, name: &str) -> Result<Command, PostgresError> {
        Ok(self.command_at(&self.program(op, name)?))
    }

    /// Like [`Runner::command`] for a program outside the bin directory
    /// (pgBackRest, a custom replica method).
    pub(crate) fn command_at(&self, program: &Path) -> Command {
        let mut cmd = Command::new(program);
        cmd.env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("LC_ALL", "C")
            .env("LANG", "C")
            .env("HOME", &self.user.home)
            .env("USER", &self.user.name)
            .env("LOGNAME", &self.user.name)
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if self.user.switch {
            cmd.uid(self.user.uid).gid(self.user.gid);
        }
        cmd
    }

    /// Runs `name args` to completion within `timeout`. `password` goes to
    /// the child's environment as `PGPASSWORD`, never on its command line.
    /// A non-zero exit is [`PostgresError::CommandFailed`] with the tail of
    /// its output.
    pub(crate) async fn run(
        &self,
        op: Operation,
        name: &str,
        args: &[OsString],
        password: Option<&Secret>,
        timeout: Duration,
    ) -> Result<Finished, PostgresError> {
        let cmd = self.prepared(op, name, args, password)?;
        self.run_command(op, name, cmd, timeout).await
    }

    /// Runs `cmd` (made by [`Runner::prepared`] or [`Runner::command_at`]) like
    /// [`Runner::run`].
    pub(crate) async fn run_command(
        &self,
        op: Operation,
        name: &str,
        cmd: Command,
        timeout: Duration,
    ) -> Result<Finished, PostgresError> {
        let output = self.output(op, name, cmd, timeout).await?;
        finish(op, name, &output)
    }

    /// The command [`Runner::run`] runs for `name args`: `password` in its
    /// environment as `PGPASSWORD`, never on its command line.
    pub(crate) fn prepared(
        &self,
        op: Operation,
        name: &str,
        args: &[OsString],
        password: Option<&Secret>,
    ) -> Result<Command, PostgresError> {
        let mut cmd = self.command(op, name)?;
        cmd.args(args);
        if let Some(password) = password {
            cmd.env("PGPASSWORD", password.expose());
        }
        // Arguments never hold passwords (they go through PGPASSWORD).
        tracing::debug!(member = %self.member, program = name, ?args, "running PostgreSQL program");
        Ok(cmd)
    }

    /// Runs `cmd` like [`Runner::run_command`] but returns the output
    /// whatever the exit status.
    pub(crate) async fn output(
        &self,
        op: Operation,
        name: &str,
        mut cmd: Command,
        timeout: Duration,
    ) -> Result<Output, PostgresError> {
        let child = cmd.spawn().map_err(|source| PostgresError::Io {
            operation: op,
            context: format!("starting {name} as OS user {}", self.user.name),
            source,
        })?;
        match tokio::time::timeout(timeout, child.wait_with_output()).await {
            Ok(Ok(output)) => Ok(output),
            Ok(Err(source)) => Err(PostgresError::Io {
                operation: op,
                context: format!("waiting for {name}"),
                source,
            }),
            // Dropping the future kills the child (kill_on_drop).
            Err(_) => Err(PostgresError::Timeout {
                operation: op,
                after: timeout,
            }),
        }
    }
}

impl Runner {
    /// How to start the postmaster of `data_dir` directly (what `pg_ctl
    /// start` would exec), with its output appended to `log`: the same
    /// clean environment and OS user as [`Runner::command`].
    pub(crate) fn postmaster_spec(
        &self,
        op: Operation,
        data_dir: &Path,
        log: &Path,
    ) -> Result<PostmasterSpec, PostgresError> {
        Ok(PostmasterSpec {
            program: self.program(op, "postgres")?,
            args: vec!["-D".into(), arg(data_dir)],
            env: [
                ("PATH", OsString::from("/usr/local/bin:/usr/bin:/bin")),
                ("LC_ALL", "C".into()),
                ("LANG", "C".into()),
                ("HOME", self.user.home.clone().into_os_string()),
                ("USER", self.user.name.clone().into()),
                ("LOGNAME", self.user.name.clone().into()),
            ]
            .into_iter()
            .map(|(k, v)| (OsString::from(k), v))
            .collect(),
            cwd: PathBuf::from("/"),
            log: log.to_owned(),
            identity: self.user.switch.then_some((self.user.uid, self.user.gid)),
        })
    }
}

/// How to start a postmaster: what a [`PostmasterLauncher`] runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PostmasterSpec {
    /// The `postgres` program of the configured bin directory.
    pub program: PathBuf,
    /// Its arguments (`-D <data_dir>`).
    pub args: Vec<OsString>,
    /// Its whole environment: nothing else is inherited (no `PG*` variables).
    pub env: Vec<(OsString, OsString)>,
    /// Its working directory.
    pub cwd: PathBuf,
    /// The server log its stdout and stderr are appended to; opened as the
    /// OS user (never as root: the file sits in a directory that user may
    /// write), created with mode 0600 like `pg_ctl -l` does.
    pub log: PathBuf,
    /// The uid and gid it runs as (supplementary groups dropped) when the
    /// launcher runs as root; `None` to keep the launcher's identity.
    pub identity: Option<(u32, u32)>,
}

/// Starts the postmaster on behalf of a [`super::PgController`].
///
/// Without one (the default) the controller runs `pg_ctl start -w`, whose
/// postmaster is reparented to init and outlives every matriarch process.
/// A launcher lets the daemon make the postmaster the child of a guard
/// process that the kernel kills it with (`PR_SET_PDEATHSIG`), so that a
/// primary never outlives all of matriarch's processes; see
/// `docs/safety.md`.
///
/// The controller prepares the server log, waits for readiness itself (the
/// `ready`/`standby` status line of `postmaster.pid`, as `pg_ctl -w` does)
/// and reports a failed start with the log's tail; `pg_ctl stop`, `promote`
/// and `reload` keep working as they signal through `postmaster.pid`.
#[async_trait::async_trait]
pub trait PostmasterLauncher: Send + Sync + std::fmt::Debug {
    /// Starts `spec` in the background and returns the postmaster's pid
    /// without waiting for it to accept connections. The postmaster must
    /// lead its own session and process group (the controller's kill
    /// escalation signals `-pid`) and must not be waited for by anyone but
    /// its parent. `Err` with a one-line reason when nothing was started.
    async fn launch(&self, spec: &PostmasterSpec) -> Result<u32, String>;
}

/// Whether `pid` exists and is not a zombie (which runs nothing more).
pub(crate) fn process_running(pid: i32) -> bool {
    if !process_alive(pid) {
        return false;
    }
    let state = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let (_, rest) = stat.rsplit_once(')')?;
            rest.trim_start().chars().next()
        });
    !matches!(state, Some('Z' | 'X'))
}

/// The status line (`ready`, `standby`, `starting`, `stopping`) of a
/// `postmaster.pid` written by `pid`, if it has one yet.
pub(crate) fn postmaster_status(pid_file_text: &str, pid: i32) -> Option<&str> {
    let mut lines = pid_file_text.lines();
    let owner: i32 = lines.next()?.trim().parse().ok()?;
    // Line 8 (LOCK_FILE_LINE_PM_STATUS) once the postmaster wrote it.
    (owner == pid).then(|| lines.nth(6).map(str::trim))?
}

/// `output` as [`Finished`]; a non-zero exit is
/// [`PostgresError::CommandFailed`] with the tail of its output.
pub(crate) fn finish(
    op: Operation,
    name: &str,
    output: &Output,
) -> Result<Finished, PostgresError> {
    let finished = Finished {
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    };
    if output.status.success() {
        Ok(finished)
    } else {
        Err(PostgresError::CommandFailed {
            operation: op,
            program: name.to_owned(),
            status: output.status,
            stderr_tail: tail_of(&finished),
        })
    }
}

/// The last lines a program wrote to stderr (or stdout when stderr is empty).
pub(crate) fn tail_of(finished: &Finished) -> String {
    let text = if finished.stderr.trim().is_empty() {
        &finished.stdout
    } else {
        &finished.stderr
    };
    last_lines(text, 12)
}

/// The last `count` non-empty lines of `text`, joined by newlines.
pub(crate) fn last_lines(text: &str, count: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(count)..].join("\n")
}

/// Whether a process with this pid exists.
pub(crate) fn process_alive(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    // SAFETY: kill with signal 0 only checks for existence.
    let rc = unsafe { libc::kill(pid, 0) };
    if rc == 0 {
        return true;
    }
    std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Sends `signal` to `pid`; `true` if it was delivered.
pub(crate) fn send_signal(pid: i32, signal: libc::c_int) -> bool {
    if pid <= 0 {
        return false;
    }
    // SAFETY: kill(2) involves no memory.
    unsafe { libc::kill(pid, signal) == 0 }
}

/// The path as an argument.
pub(crate) fn arg(path: &Path) -> OsString {
    path.as_os_str().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_line_counts_only_for_the_launched_postmaster() {
        let ready = "4242\n/data\n1700000000\n5432\n/tmp\n127.0.0.1\n  1234  5678\nready   \n";
        assert_eq!(postmaster_status(ready, 4242), Some("ready"));
        // A stale file of an earlier postmaster says nothing about this one.
        assert_eq!(postmaster_status(ready, 4243), None);
        // Written before the status line.
        assert_eq!(postmaster_status("4242\n/data\n", 4242), None);
        assert_eq!(postmaster_status("garbage", 4242), None);
    }
}
