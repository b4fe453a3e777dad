//! `postgresql:`: the local PostgreSQL, its roles, and the version check.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use matriarch_model::ParameterValue;
use serde::Deserialize;

use crate::error::ConfigError;
use matriarch_model::Secret;

/// `postgresql:`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PostgresqlSection {
    /// `host:port` PostgreSQL listens on (`listen_addresses` and `port`).
    pub listen: String,
    /// `host:port` other members and clients connect to; defaults to `listen`.
    pub connect_address: Option<String>,
    /// The data directory (absolute).
    pub data_dir: PathBuf,
    /// The server programs' directory.
    pub bin_dir: Option<PathBuf>,
    /// The Unix socket directory (absolute); defaults to the data
    /// directory's parent.
    pub socket_dir: Option<PathBuf>,
    /// The OS user the server programs run as when matriarch runs as root.
    pub os_user: Option<String>,
    /// The roles.
    pub authentication: PgAuthentication,
    /// Local parameters, over `bootstrap.dcs.postgresql.parameters`.
    #[serde(default)]
    pub parameters: BTreeMap<String, ParameterValue>,
    /// `pg_hba.conf` lines for a new cluster.
    #[serde(default)]
    pub pg_hba: Vec<String>,
    /// `pg_ident.conf` lines (user name maps).
    #[serde(default)]
    pub pg_ident: Vec<String>,
    /// How a replica is created, in order (Patroni's
    /// `create_replica_methods`): `basebackup`, `pgbackrest` or a custom
    /// method with its own section; `[basebackup]` when empty.
    #[serde(default)]
    pub create_replica_methods: Vec<String>,
    /// Seconds a replica creation method may go without its data directory
    /// growing before it is stopped and the next one tried (300).
    #[serde(default = "default_clone_stall_timeout")]
    pub clone_stall_timeout: u64,
    /// Each listed method's own section (`postgresql.<method>`), taken out
    /// of the section before the rest is read.
    #[serde(skip)]
    pub replica_method_sections: BTreeMap<String, serde_norway::Value>,
}

fn default_clone_stall_timeout() -> u64 {
    300
}

/// `postgresql.authentication:`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PgAuthentication {
    /// The superuser matriarch connects as.
    pub superuser: PgRoleConfig,
    /// The replication role.
    pub replication: PgRoleConfig,
    /// The pg_rewind role (the superuser if absent).
    pub rewind: Option<PgRoleConfig>,
}

/// One PostgreSQL role.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PgRoleConfig {
    /// The role name.
    pub username: String,
    /// Its password.
    pub password: Option<Secret>,
}

impl PostgresqlSection {
    /// Refuses a PostgreSQL outside [`SUPPORTED_PG_MAJORS`]: runs
    /// `<bin_dir>/postgres --version`, and reads `PG_VERSION` of an existing
    /// data directory (which must match the binaries). Returns the major
    /// version.
    pub(super) fn check_postgres_version(&self) -> Result<u32, ConfigError> {
        let bin_dir = self
            .bin_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(matriarch_postgres::DEFAULT_BIN_DIR));
        let postgres = bin_dir.join("postgres");
        let output = run_bounded(&postgres, "--version", PG_VERSION_TIMEOUT).map_err(|e| {
            ConfigError::invalid(
                "postgresql.bin_dir",
                format!("cannot run `{} --version`: {e}", postgres.display()),
            )
        })?;
        let (major, full) = parse_postgres_version(&output).ok_or_else(|| {
            ConfigError::invalid(
                "postgresql.bin_dir",
                format!(
                    "`{} --version` printed {:?}, not `postgres (PostgreSQL) <version>`",
                    postgres.display(),
                    output.trim()
                ),
            )
        })?;
        if !SUPPORTED_PG_MAJORS.contains(&major) {
            return Err(ConfigError::invalid(
                "postgresql.bin_dir",
                format!(
                    "{} is PostgreSQL {full}; matriarch supports PostgreSQL {} to {}",
                    postgres.display(),
                    SUPPORTED_PG_MAJORS.start(),
                    SUPPORTED_PG_MAJORS.end()
                ),
            ));
        }
        let pg_version = self.data_dir.join("PG_VERSION");
        // A missing (not yet created) or unreadable data directory is the
        // controller's business; only a version we can read is checked.
        if let Ok(text) = std::fs::read_to_string(&pg_version) {
            let data_major: u32 = text.trim().parse().map_err(|_| {
                ConfigError::invalid(
                    "postgresql.data_dir",
                    format!(
                        "{} holds {:?}, not a version",
                        pg_version.display(),
                        text.trim()
                    ),
                )
            })?;
            if data_major != major {
                return Err(ConfigError::invalid(
                    "postgresql.data_dir",
                    format!(
                        "{} is a PostgreSQL {data_major} data directory but {} is PostgreSQL \
                         {full}; point postgresql.bin_dir at PostgreSQL {data_major} (supported: \
                         {} to {})",
                        self.data_dir.display(),
                        postgres.display(),
                        SUPPORTED_PG_MAJORS.start(),
                        SUPPORTED_PG_MAJORS.end()
                    ),
                ));
            }
        }
        Ok(major)
    }
}

/// The PostgreSQL major versions matriarch is tested with and supports.
pub(super) const SUPPORTED_PG_MAJORS: std::ops::RangeInclusive<u32> = 15..=18;

/// How long `postgres --version` may take.
const PG_VERSION_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Runs `program arg` and returns its standard output; an exit status other
/// than 0, or no exit within `timeout` (the child is then killed), is an error.
fn run_bounded(program: &Path, arg: &str, timeout: std::time::Duration) -> Result<String, String> {
    use std::io::Read;
    let spawn = || {
        std::process::Command::new(program)
            .arg(arg)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
    };
    // ETXTBSY: a program just written (an upgrade in progress) is briefly
    // still open for writing in some process.
    let mut child = spawn()
        .or_else(|e| match e.raw_os_error() {
            Some(libc::ETXTBSY) => {
                std::thread::sleep(std::time::Duration::from_millis(100));
                spawn()
            }
            _ => Err(e),
        })
        .map_err(|e| e.to_string())?;
    let deadline = std::time::Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Ok(None) => {
                // Best effort: the error below is what matters.
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("no answer within {}s", timeout.as_secs()));
            }
            Err(e) => return Err(e.to_string()),
        }
    };
    let mut out = String::new();
    if let Some(mut stdout) = child.stdout.take() {
        // Bounded: a version line, not a stream.
        stdout
            .by_ref()
            .take(4096)
            .read_to_string(&mut out)
            .map_err(|e| e.to_string())?;
    }
    if !status.success() {
        return Err(format!("it exited with {status}"));
    }
    Ok(out)
}

/// `postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)` → (15, "15.18");
/// also `18beta1` → (18, "18beta1").
fn parse_postgres_version(output: &str) -> Option<(u32, String)> {
    let rest = output.lines().next()?.split("(PostgreSQL) ").nth(1)?;
    let full = rest.split_whitespace().next()?;
    let digits: String = full.chars().take_while(char::is_ascii_digit).collect();
    Some((digits.parse().ok()?, full.to_owned()))
}
