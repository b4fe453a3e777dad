//! How a replica's data directory is made (Patroni's
//! `postgresql.create_replica_methods`), and the pgBackRest repository the
//! cluster archives to and restores from.

use std::path::{Path, PathBuf};

use crate::secret::Secret;

/// One way to create a replica's data directory; the controller tries them in
/// order, empties the data directory after a failed one (unless it keeps its
/// data) and goes on with the next.
#[derive(Clone, Debug, PartialEq)]
pub enum ReplicaMethod {
    /// `pg_basebackup -X stream` from the upstream, with these extra
    /// arguments (`--max-rate=100M`, `--verbose`, ...).
    Basebackup {
        /// Extra pg_basebackup arguments, each `--name` or `--name=value`.
        options: Vec<String>,
    },
    /// `pgbackrest restore --type=standby` from the configured repository
    /// ([`PgBackRestConfig`]), then streaming from the upstream; the restored
    /// `restore_command` (`archive-get`) replays the archive meanwhile.
    PgBackRest {
        /// Extra `pgbackrest restore` arguments (`--delta`, `--process-max=4`, ...).
        options: Vec<String>,
    },
    /// A program of the user's (Patroni's custom replica method).
    Command(CustomMethod),
}

impl ReplicaMethod {
    /// The method's name as logged: `basebackup`, `pgbackrest` or the custom
    /// method's name.
    pub fn name(&self) -> &str {
        match self {
            ReplicaMethod::Basebackup { .. } => "basebackup",
            ReplicaMethod::PgBackRest { .. } => "pgbackrest",
            ReplicaMethod::Command(custom) => &custom.name,
        }
    }

    /// Whether a failure leaves the data directory as it is (Patroni's
    /// `keep_data`); every other failed method's copy is removed.
    pub fn keeps_data(&self) -> bool {
        matches!(self, ReplicaMethod::Command(custom) if custom.keep_data)
    }
}

/// A custom replica method: `command` is split like a shell would (no shell
/// runs it) and called with Patroni's arguments `--scope=<cluster>
/// --role=replica --datadir=<data dir> --connstring=<upstream>` (unless
/// `no_params`) and `--<key>=<value>` for each of `params`. The replication
/// password is in `PGPASSWORD`, never in the arguments.
#[derive(Clone, Debug, PartialEq)]
pub struct CustomMethod {
    /// The method's name in `create_replica_methods`.
    pub name: String,
    /// The program and its own arguments.
    pub command: Vec<String>,
    /// Further `--key=value` arguments (the method's other options).
    pub params: Vec<(String, String)>,
    /// Leave the data directory as it is when the method fails.
    pub keep_data: bool,
    /// Pass neither Patroni's arguments nor `params`.
    pub no_params: bool,
    /// Patroni's `no_leader` (`no_master`): the method works without a
    /// replication connection. matriarch clones only from a member, so this
    /// is accepted and recorded but never widens the choice.
    pub no_leader: bool,
}

/// The pgBackRest repository of the cluster: the controller writes
/// `<directory>/pgbackrest.conf` (mode 0600: it holds the repository's keys)
/// with `[global]` = `options` + `secrets` and the stanza's `pg1-*` keys for
/// the local server, and keeps pgBackRest's log, lock and spool paths in
/// `<directory>`.
#[derive(Clone, Debug, PartialEq)]
pub struct PgBackRestConfig {
    /// The `pgbackrest` program.
    pub program: PathBuf,
    /// The stanza (one per cluster).
    pub stanza: String,
    /// The directory holding the configuration file and pgBackRest's log,
    /// lock and spool paths: one per member (two members on one host must not
    /// share a lock path).
    pub directory: PathBuf,
    /// `[global]` options written as they are (`repo1-type=s3`, ...), in order.
    pub options: Vec<(String, String)>,
    /// `[global]` options whose values are secrets (`repo1-s3-key-secret`):
    /// written to the file only, never logged or put on a command line.
    pub secrets: Vec<(String, Secret)>,
}

impl PgBackRestConfig {
    /// Debian's pgBackRest.
    pub const DEFAULT_PROGRAM: &'static str = "/usr/bin/pgbackrest";

    /// Checks what can be checked without pgBackRest: an absolute
    /// directory, a stanza of letters, digits, `_`, `-` or `.`, and options
    /// with a name and a one-line value. The reason when it is wrong.
    pub fn validate(&self) -> Result<(), String> {
        if !self.directory.is_absolute() {
            return Err(format!(
                "the pgBackRest directory {} must be an absolute path",
                self.directory.display()
            ));
        }
        let stanza_ok = !self.stanza.is_empty()
            && self
                .stanza
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c));
        if !stanza_ok {
            return Err(format!(
                "the pgBackRest stanza {:?} must be letters, digits, '_', '-' or '.'",
                self.stanza
            ));
        }
        let options = self.options.iter().map(|(k, v)| (k, v.as_str()));
        let secrets = self.secrets.iter().map(|(k, v)| (k, v.expose()));
        for (key, value) in options.chain(secrets) {
            if key.is_empty()
                || value.is_empty()
                || format!("{key}{value}").contains(['\n', '\r', '\0'])
            {
                return Err(format!(
                    "pgBackRest option {key:?} is empty or holds a line break"
                ));
            }
        }
        Ok(())
    }

    /// `<directory>/pgbackrest.conf`.
    pub fn config_file(&self) -> PathBuf {
        self.directory.join("pgbackrest.conf")
    }

    /// `archive_command`: `pgbackrest --config=<file> --stanza=<stanza>
    /// archive-push %p`, each part shell-quoted.
    pub fn archive_command(&self) -> String {
        format!(
            "{} --config={} --stanza={} archive-push %p",
            shell_quote(&self.program.display().to_string()),
            shell_quote(&self.config_file().display().to_string()),
            shell_quote(&self.stanza)
        )
    }

    /// The configuration file's text for a server at `data_dir`, listening on
    /// `port` with its socket in `socket_dir`, connected to as `user`.
    pub fn render(&self, data_dir: &Path, port: u16, socket_dir: &Path, user: &str) -> String {
        let dir = |name: &str| self.directory.join(name).display().to_string();
        let mut text = String::from("[global]\n");
        let defaults = [
            ("log-path", dir("log")),
            ("lock-path", dir("lock")),
            ("spool-path", dir("spool")),
        ];
        for (key, value) in defaults {
            if !self.options.iter().any(|(k, _)| k == key) {
                text.push_str(&format!("{key}={value}\n"));
            }
        }
        for (key, value) in &self.options {
            text.push_str(&format!("{key}={value}\n"));
        }
        for (key, value) in &self.secrets {
            text.push_str(&format!("{key}={}\n", value.expose()));
        }
        text.push_str(&format!("\n[{}]\n", self.stanza));
        text.push_str(&format!("pg1-path={}\n", data_dir.display()));
        text.push_str(&format!("pg1-port={port}\n"));
        text.push_str(&format!("pg1-socket-path={}\n", socket_dir.display()));
        text.push_str(&format!("pg1-user={user}\n"));
        text
    }
}

/// `pgbackrest backup --type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackupType {
    /// Every file.
    Full,
    /// What changed since the last backup of any type.
    Incr,
    /// What changed since the last full backup.
    Diff,
}

impl BackupType {
    /// `full`, `incr` or `diff`.
    pub fn as_str(self) -> &'static str {
        match self {
            BackupType::Full => "full",
            BackupType::Incr => "incr",
            BackupType::Diff => "diff",
        }
    }

    /// Parses `full`, `incr` or `diff`.
    pub fn parse(text: &str) -> Option<BackupType> {
        match text {
            "full" => Some(BackupType::Full),
            "incr" => Some(BackupType::Incr),
            "diff" => Some(BackupType::Diff),
            _ => None,
        }
    }
}

/// `text` quoted for `/bin/sh` (PostgreSQL runs `archive_command` through it).
fn shell_quote(text: &str) -> String {
    if !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-=+:,@".contains(c))
    {
        text.to_owned()
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> PgBackRestConfig {
        PgBackRestConfig {
            program: PathBuf::from("/usr/bin/pgbackrest"),
            stanza: "main".into(),
            directory: PathBuf::from("/srv/pg/data.pgbackrest"),
            options: vec![("repo1-type".into(), "s3".into())],
            secrets: vec![("repo1-s3-key-secret".into(), Secret::new("s3cr3t"))],
        }
    }

    #[test]
    fn archive_command_pushes_through_the_config_file() {
        assert_eq!(
            config().archive_command(),
            "/usr/bin/pgbackrest --config=/srv/pg/data.pgbackrest/pgbackrest.conf --stanza=main archive-push %p"
        );
        let mut spaced = config();
        spaced.directory = PathBuf::from("/srv/my pg");
        assert!(spaced
            .archive_command()
            .contains(" --config='/srv/my pg/pgbackrest.conf' "));
    }

    #[test]
    fn render_has_paths_options_secrets_and_the_local_server() {
        let text = config().render(
            Path::new("/srv/pg/data"),
            5432,
            Path::new("/run/pg"),
            "postgres",
        );
        assert!(text.starts_with("[global]\nlog-path=/srv/pg/data.pgbackrest/log\n"));
        assert!(text.contains("lock-path=/srv/pg/data.pgbackrest/lock\n"));
        assert!(text.contains("repo1-type=s3\nrepo1-s3-key-secret=s3cr3t\n"));
        assert!(text.ends_with(
            "[main]\npg1-path=/srv/pg/data\npg1-port=5432\npg1-socket-path=/run/pg\npg1-user=postgres\n"
        ));
        // The secret never shows in Debug.
        assert!(!format!("{:?}", config()).contains("s3cr3t"));
    }
}
