//! Real PostgreSQL 15 instances, and helpers to run PostgreSQL programs as the right
//! OS user (PostgreSQL refuses to run as root).

use std::ffi::OsStr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use matriarch_os_user::OsIdentity;
use tempfile::TempDir;

use crate::error::{IoContext, Result, TestkitError};
use crate::ports::free_port;
use crate::process::{
    is_port_clash, process_controls, require_program, retry_on_port_clash, run_checked,
    ServiceProcess, Spec,
};

const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// The default PostgreSQL binary directory (Debian's postgresql-15).
pub const DEFAULT_PG_BIN: &str = "/usr/lib/postgresql/15/bin";
/// The OS user PostgreSQL programs run as when the tests run as root.
pub const PG_OS_USER: &str = "postgres";

/// The PostgreSQL binary directory: `$MATRIARCH_PG_BIN`, else `/usr/lib/postgresql/15/bin`.
pub fn bin_dir() -> PathBuf {
    std::env::var_os("MATRIARCH_PG_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_PG_BIN))
}

/// The path of a PostgreSQL program (e.g. `initdb`) in [`bin_dir`]; an error that says
/// to run `cargo xtask deps` when it is missing.
pub fn pg_program(name: &str) -> Result<PathBuf> {
    let p = bin_dir().join(name);
    require_program(name, &p)?;
    Ok(p)
}

/// The OS user that PostgreSQL server programs run as: the Debian `postgres` user when
/// the tests run as root (euid 0), otherwise the current user (no switch).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgOsUser {
    name: String,
    uid: u32,
    gid: u32,
    home: PathBuf,
    switch: bool,
}

impl PgOsUser {
    /// Finds the user to run PostgreSQL programs as (cached after the first call).
    pub fn detect() -> Result<PgOsUser> {
        static USER: OnceLock<PgOsUser> = OnceLock::new();
        if let Some(u) = USER.get() {
            return Ok(u.clone());
        }
        let user = if OsIdentity::running_as_root() {
            let identity = OsIdentity::lookup(PG_OS_USER)
                .map_err(|err| TestkitError::io(format!("looking up OS user `{PG_OS_USER}`"), err))?
                .ok_or_else(|| TestkitError::MissingUser {
                    user: PG_OS_USER.to_string(),
                })?;
            PgOsUser::from_identity(identity, true)
        } else {
            PgOsUser::from_identity(OsIdentity::current(), false)
        };
        Ok(USER.get_or_init(|| user).clone())
    }

    fn from_identity(identity: OsIdentity, switch: bool) -> PgOsUser {
        PgOsUser {
            name: identity.name,
            uid: identity.uid,
            gid: identity.gid,
            home: identity.home,
            switch,
        }
    }

    /// The user name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The numeric user id.
    pub fn uid(&self) -> u32 {
        self.uid
    }

    /// The numeric primary group id.
    pub fn gid(&self) -> u32 {
        self.gid
    }

    /// Whether commands switch user (true when the tests run as root).
    pub fn switches_user(&self) -> bool {
        self.switch
    }

    /// Makes `cmd` run as this user: sets uid/gid (dropping root's supplementary
    /// groups), `HOME`/`USER`/`LOGNAME`, and the working directory to `/` unless one
    /// was set (root's working directory may not be accessible). Use absolute paths.
    pub fn apply<'a>(&self, cmd: &'a mut Command) -> &'a mut Command {
        if self.switch {
            cmd.uid(self.uid)
                .gid(self.gid)
                .env("HOME", &self.home)
                .env("USER", &self.name)
                .env("LOGNAME", &self.name);
            if cmd.get_current_dir().is_none() {
                cmd.current_dir("/");
            }
        }
        cmd
    }

    /// Changes the owner of `path` (not recursive) to this user; no-op without a switch.
    pub fn chown(&self, path: &Path) -> Result<()> {
        if self.switch {
            std::os::unix::fs::chown(path, Some(self.uid), Some(self.gid))
                .ctx(|| format!("chown {} to {}", path.display(), self.name))?;
        }
        Ok(())
    }

    /// Changes the owner of `path` and everything below it to this user.
    pub fn chown_recursive(&self, path: &Path) -> Result<()> {
        if !self.switch {
            return Ok(());
        }
        self.chown(path)?;
        let meta = std::fs::symlink_metadata(path).ctx(|| format!("stat {}", path.display()))?;
        if meta.is_dir() {
            for entry in std::fs::read_dir(path).ctx(|| format!("listing {}", path.display()))? {
                let entry = entry.ctx(|| format!("listing {}", path.display()))?;
                self.chown_recursive(&entry.path())?;
            }
        }
        Ok(())
    }

    /// Creates a throwaway directory under `/tmp` (traversable by every user) owned by
    /// this user. It is removed when the returned handle drops.
    pub fn tempdir(&self, prefix: &str) -> Result<TempDir> {
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir_in("/tmp")
            .ctx(|| format!("creating a temporary directory {prefix}* under /tmp"))?;
        self.chown(dir.path())?;
        Ok(dir)
    }
}

/// Makes `cmd` run as the PostgreSQL OS user (see [`PgOsUser::apply`]).
pub fn run_as_pg_user(cmd: &mut Command) -> Result<&mut Command> {
    Ok(PgOsUser::detect()?.apply(cmd))
}

/// A [`Command`] for the PostgreSQL program `name` (from [`bin_dir`]) set up to run as
/// the PostgreSQL OS user.
pub fn pg_command(name: &str) -> Result<Command> {
    let mut cmd = Command::new(pg_program(name)?);
    run_as_pg_user(&mut cmd)?;
    Ok(cmd)
}

/// Runs the PostgreSQL program `name` (e.g. `pg_controldata`) with `args` as the
/// PostgreSQL OS user, waits for it, and returns its output; fails on a non-zero exit
/// with the captured stdout/stderr in the error.
pub fn run_pg_program<I, S>(name: &str, args: I) -> Result<Output>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = pg_command(name)?;
    cmd.args(args);
    run_checked(&mut cmd)
}

/// A PostgreSQL 15 server (initdb with data checksums, trust auth, superuser
/// `postgres`) listening on 127.0.0.1 on a free port, with its socket in the throwaway
/// directory. The postmaster is the handle's own child: on drop it gets an immediate
/// shutdown (SIGQUIT), then the process group is SIGKILLed and the directory removed.
#[derive(Debug)]
pub struct PostgresServer {
    port: u16,
    data_dir: PathBuf,
    socket_dir: PathBuf,
    user: PgOsUser,
    process: Mutex<ServiceProcess>,
    _dir: TempDir,
}

impl PostgresServer {
    /// Runs initdb and starts the server; returns once `pg_isready` says it accepts
    /// connections.
    pub fn start() -> Result<Self> {
        let initdb = pg_program("initdb")?;
        let postgres = pg_program("postgres")?;
        pg_program("pg_isready")?;
        let user = PgOsUser::detect()?;
        let dir = user.tempdir("matriarch-pg-")?;
        let data_dir = dir.path().join("data");
        let mut cmd = Command::new(&initdb);
        cmd.arg("-D")
            .arg(&data_dir)
            .args([
                "-U",
                "postgres",
                "-A",
                "trust",
                "--no-sync",
                "--data-checksums",
            ])
            .args(["-E", "UTF8", "--locale=C", "--no-instructions"])
            .current_dir(dir.path());
        user.apply(&mut cmd);
        run_checked(&mut cmd)?;

        let socket_dir = dir.path().to_path_buf();
        let log = dir.path().join("postgres.log");
        let (port, process) = retry_on_port_clash("postgres start", Duration::ZERO, || {
            let port = free_port()?;
            let mut spec = Spec::new(&postgres)
                .arg("-D")
                .arg(&data_dir)
                .arg("-p")
                .arg(port.to_string())
                .arg("-k")
                .arg(&socket_dir)
                .arg("-c")
                .arg("listen_addresses=127.0.0.1")
                .arg("-c")
                .arg("fsync=off");
            spec.cwd = Some(dir.path().to_path_buf());
            if user.switches_user() {
                spec.user = Some((user.uid(), user.gid()));
                spec.envs = vec![
                    ("HOME".into(), user.home.clone().into_os_string()),
                    ("USER".into(), user.name().into()),
                    ("LOGNAME".into(), user.name().into()),
                ];
            }
            let mut process = ServiceProcess::spawn("postgres", spec, log.clone())?;
            if let Err(e) = wait_ready(&mut process, port) {
                shutdown(&mut process);
                return Err(e);
            }
            Ok((port, process))
        })?;
        Ok(PostgresServer {
            port,
            data_dir,
            socket_dir,
            user,
            process: Mutex::new(process),
            _dir: dir,
        })
    }

    process_controls!("the postmaster");

    /// Always `127.0.0.1`.
    pub fn host(&self) -> &'static str {
        "127.0.0.1"
    }

    /// The TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A key=value connection string for tokio-postgres / libpq:
    /// `host=127.0.0.1 port=PORT user=postgres dbname=postgres`.
    pub fn connection_string(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres",
            self.port
        )
    }

    /// The data directory (`PGDATA`), owned by the PostgreSQL OS user.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The Unix socket directory (`-k`).
    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }

    /// The OS user the server runs as.
    pub fn os_user(&self) -> &PgOsUser {
        &self.user
    }

    /// Fast shutdown (SIGINT), waiting up to 30 s before SIGKILL. No-op when not running.
    pub fn stop(&self) {
        self.lock().terminate(libc::SIGINT, Duration::from_secs(30));
    }

    /// Starts the server again on the same data directory and port (after an immediate
    /// shutdown if it still runs) and waits until it accepts connections.
    pub fn restart(&self) -> Result<()> {
        let mut p = self.lock();
        shutdown(&mut p);
        retry_on_port_clash("postgres restart", Duration::from_millis(500), || {
            p.start()?;
            wait_ready(&mut p, self.port).inspect_err(|e| {
                if is_port_clash(e) {
                    shutdown(&mut p);
                }
            })
        })
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        shutdown(&mut self.lock());
    }
}

/// Immediate shutdown (SIGQUIT, which also removes shared memory), then SIGKILL for
/// whatever is left in the process group.
fn shutdown(p: &mut ServiceProcess) {
    p.terminate(libc::SIGQUIT, Duration::from_secs(5));
}

/// Waits until `pg_isready` reports that the server accepts connections.
fn wait_ready(p: &mut ServiceProcess, port: u16) -> Result<()> {
    let pg_isready = pg_program("pg_isready")?;
    let port_s = port.to_string();
    p.wait_until(READY_TIMEOUT, || {
        let out = Command::new(&pg_isready)
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port_s,
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-t",
                "2",
            ])
            .output()
            .map_err(|e| format!("running pg_isready: {e}"))?;
        if out.status.success() {
            Ok(true)
        } else {
            Err(format!(
                "pg_isready: {}",
                String::from_utf8_lossy(&out.stdout).trim()
            ))
        }
    })
}
