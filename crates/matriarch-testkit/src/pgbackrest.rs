//! pgBackRest (Debian's `pgbackrest`) for a [`PostgresServer`]: a configuration
//! file of its own (mode 0600, the repository keys are in it) with the log, lock
//! and spool paths in a throwaway directory, and the command run as the
//! PostgreSQL OS user, as `archive_command` runs it.

use std::fmt::Write as _;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tempfile::TempDir;

use crate::error::{IoContext, Result};
use crate::moto_s3::MotoS3;
use crate::postgres::{PgOsUser, PostgresServer};
use crate::process::{require_program, run_checked};

/// Debian's pgBackRest, installed by `cargo xtask deps`.
pub const PGBACKREST: &str = "/usr/bin/pgbackrest";

/// Where the repository (repo1) lives.
#[derive(Debug, Clone, Copy)]
pub enum PgBackRestRepo<'a> {
    /// A bucket on moto's S3 over HTTPS.
    S3(&'a MotoS3),
    /// A directory on this machine (`repo1-type=posix`) below the throwaway directory.
    Posix,
}

/// A pgBackRest configuration for one stanza of one server; its files are
/// removed on drop.
#[derive(Debug)]
pub struct PgBackRest {
    config: PathBuf,
    stanza: String,
    user: PgOsUser,
    _dir: TempDir,
}

impl PgBackRest {
    /// Writes the configuration of `stanza` for `server` with `repo` as repo1.
    pub fn configure(
        stanza: &str,
        server: &PostgresServer,
        repo: PgBackRestRepo<'_>,
    ) -> Result<PgBackRest> {
        require_program("pgbackrest", Path::new(PGBACKREST))?;
        let user = server.os_user().clone();
        let dir = user.tempdir("matriarch-pgbackrest-")?;
        // pgBackRest does not make its log and spool paths.
        for sub in ["log", "lock", "spool"] {
            let path = dir.path().join(sub);
            fs::create_dir(&path).ctx(|| format!("creating {}", path.display()))?;
            user.chown(&path)?;
        }
        let config = dir.path().join("pgbackrest.conf");
        let text = render_config(stanza, server, repo, dir.path());
        fs::write(&config, text).ctx(|| format!("writing {}", config.display()))?;
        fs::set_permissions(&config, fs::Permissions::from_mode(0o600))
            .ctx(|| format!("chmod {}", config.display()))?;
        user.chown(&config)?;
        Ok(PgBackRest {
            config,
            stanza: stanza.to_owned(),
            user,
            _dir: dir,
        })
    }

    /// The configuration file.
    pub fn config_file(&self) -> &Path {
        &self.config
    }

    /// The stanza name.
    pub fn stanza(&self) -> &str {
        &self.stanza
    }

    /// The `archive_command` that pushes a WAL file to the repository.
    pub fn archive_command(&self) -> String {
        format!(
            "{PGBACKREST} --config={} --stanza={} archive-push %p",
            self.config.display(),
            self.stanza
        )
    }

    /// Runs `pgbackrest --config=... --stanza=... <args>` as the PostgreSQL OS
    /// user; fails with its output when it exits non-zero.
    pub fn run(&self, args: &[&str]) -> Result<Output> {
        run_pgbackrest(&self.user, &self.config, &self.stanza, args)
    }
}

/// Runs `pgbackrest --config=<config> --stanza=<stanza> <args>` as `user` (a
/// configuration written by someone else, such as a matriarch agent); fails
/// with its output when it exits non-zero.
pub fn run_pgbackrest(
    user: &PgOsUser,
    config: &Path,
    stanza: &str,
    args: &[&str],
) -> Result<Output> {
    let mut cmd = Command::new(PGBACKREST);
    cmd.arg(format!("--config={}", config.display()))
        .arg(format!("--stanza={stanza}"))
        .args(args);
    user.apply(&mut cmd);
    run_checked(&mut cmd)
}

/// The types (`full`, `incr`, `diff`) of the backups in `pgbackrest info
/// --output=json`'s answer, oldest first, and the newest WAL segment in the
/// archive (`None` when it has none).
pub fn backup_summary(info_json: &[u8]) -> Result<(Vec<String>, Option<String>)> {
    let info: serde_json::Value =
        serde_json::from_slice(info_json).map_err(|e| crate::error::TestkitError::Parse {
            context: "pgbackrest info --output=json".to_owned(),
            detail: e.to_string(),
        })?;
    let stanza = &info[0];
    let types = stanza["backup"]
        .as_array()
        .map(|list| {
            list.iter()
                .filter_map(|b| b["type"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let newest_wal = stanza["archive"]
        .as_array()
        .and_then(|list| list.iter().filter_map(|a| a["max"].as_str()).max())
        .map(str::to_owned);
    Ok((types, newest_wal))
}

/// The configuration file's text; `dir` holds the log, lock and spool paths (and
/// the posix repository).
fn render_config(
    stanza: &str,
    server: &PostgresServer,
    repo: PgBackRestRepo<'_>,
    dir: &Path,
) -> String {
    let mut text = String::from("[global]\n");
    let path = |name: &str| dir.join(name).display().to_string();
    let mut line = |key: &str, value: &str| {
        // Writing to a String cannot fail.
        let _ = writeln!(text, "{key}={value}");
    };
    line("log-path", &path("log"));
    line("lock-path", &path("lock"));
    line("spool-path", &path("spool"));
    line("log-level-console", "warn");
    line("log-level-file", "detail");
    line("start-fast", "y");
    line("repo1-retention-full", "2");
    // Small files in a few objects: one HTTPS request per file is slow.
    line("repo1-bundle", "y");
    line("compress-type", "lz4");
    match repo {
        PgBackRestRepo::S3(s3) => {
            line("repo1-type", "s3");
            line("repo1-path", &format!("/{stanza}"));
            line("repo1-s3-endpoint", s3.host());
            line("repo1-storage-port", &s3.port().to_string());
            line("repo1-storage-ca-file", &s3.ca_file().display().to_string());
            line("repo1-s3-bucket", s3.bucket());
            line("repo1-s3-region", s3.region());
            line("repo1-s3-uri-style", "path");
            line("repo1-s3-key", s3.access_key_id());
            line("repo1-s3-key-secret", s3.secret_access_key());
        }
        PgBackRestRepo::Posix => {
            line("repo1-type", "posix");
            line("repo1-path", &path("repo"));
        }
    }
    let _ = writeln!(text, "\n[{stanza}]");
    let _ = writeln!(text, "pg1-path={}", server.data_dir().display());
    let _ = writeln!(text, "pg1-port={}", server.port());
    let _ = writeln!(text, "pg1-socket-path={}", server.socket_dir().display());
    text
}
