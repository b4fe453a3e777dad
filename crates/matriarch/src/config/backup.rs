//! `pgbackrest:`: the cluster's pgBackRest repository (continuous archiving,
//! backups, replicas restored from it).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use matriarch_model::{ParameterValue, Secret};
use matriarch_postgres::PgBackRestConfig;
use serde::Deserialize;

use crate::error::ConfigError;

/// `pgbackrest:`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PgBackRestSection {
    /// The stanza (one per cluster; every member names the same).
    pub stanza: String,
    /// The `pgbackrest` program (`/usr/bin/pgbackrest` by default).
    #[serde(default)]
    pub program: Option<PathBuf>,
    /// Where matriarch writes `pgbackrest.conf` (mode 0600) and pgBackRest
    /// keeps its log, lock and spool files: `<data_dir>.pgbackrest` by default.
    #[serde(default)]
    pub directory: Option<PathBuf>,
    /// Set `archive_mode: on` and `archive_command` (archive-push); `true` by default.
    #[serde(default = "yes")]
    pub archive: bool,
    /// The repository (pgBackRest's repo1).
    pub repo: RepoSection,
    /// Further `[global]` options, written as they are (`compress-type: lz4`,
    /// `process-max: 4`, ...).
    #[serde(default)]
    pub options: BTreeMap<String, serde_norway::Value>,
}

fn yes() -> bool {
    true
}

/// `pgbackrest.repo:`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RepoSection {
    /// `s3` or `posix`.
    #[serde(rename = "type")]
    pub kind: RepoType,
    /// `repo1-path`: a directory (posix) or the prefix in the bucket (s3).
    pub path: String,
    /// `repo1-bundle`: small files in a few objects (`true` by default).
    #[serde(default = "yes")]
    pub bundle: bool,
    /// `repo1-retention-full`.
    #[serde(default)]
    pub retention_full: Option<u32>,
    /// `repo1-s3-bucket`.
    #[serde(default)]
    pub bucket: Option<String>,
    /// `repo1-s3-endpoint`: the host.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// `repo1-storage-port`.
    #[serde(default)]
    pub port: Option<u16>,
    /// `repo1-s3-region`.
    #[serde(default)]
    pub region: Option<String>,
    /// `repo1-s3-uri-style`: `host` (default) or `path`.
    #[serde(default)]
    pub uri_style: Option<String>,
    /// `repo1-storage-ca-file`: the CA that signed the endpoint's certificate.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// `repo1-s3-key`, read from a file or the environment.
    #[serde(default)]
    pub key: Option<SecretSource>,
    /// `repo1-s3-key-secret`, read from a file or the environment.
    #[serde(default)]
    pub key_secret: Option<SecretSource>,
}

/// `pgbackrest.repo.type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum RepoType {
    /// An S3 bucket (or an S3-compatible server).
    S3,
    /// A directory on this host (shared storage).
    Posix,
}

/// Where a credential is read from: never written in the configuration file itself.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SecretSource {
    /// An environment variable of the agent.
    #[serde(default)]
    pub env: Option<String>,
    /// A file (its content, trailing newline removed).
    #[serde(default)]
    pub file: Option<PathBuf>,
}

impl SecretSource {
    fn check(&self, key: &str) -> Result<(), ConfigError> {
        match (&self.env, &self.file) {
            (Some(_), None) | (None, Some(_)) => Ok(()),
            _ => Err(ConfigError::invalid(
                key,
                "give exactly one of `env` (a variable name) or `file` (a path)",
            )),
        }
    }

    fn read(&self, key: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Secret, ConfigError> {
        let value = match (&self.env, &self.file) {
            (Some(var), _) => env(var).ok_or_else(|| {
                ConfigError::invalid(key, format!("environment variable {var} is not set"))
            })?,
            (None, Some(file)) => std::fs::read_to_string(file)
                .map_err(|e| ConfigError::invalid(key, format!("reading {}: {e}", file.display())))?
                .trim_end_matches(['\n', '\r'])
                .to_owned(),
            (None, None) => return Err(ConfigError::invalid(key, "give `env` or `file`")),
        };
        if value.is_empty() {
            return Err(ConfigError::invalid(key, "the credential is empty"));
        }
        Ok(Secret::new(value))
    }
}

impl PgBackRestSection {
    /// Checks the section without reading any credential, for a member
    /// whose data directory is `data_dir`.
    pub(crate) fn check(&self, data_dir: &Path) -> Result<(), ConfigError> {
        if self
            .directory
            .as_ref()
            .is_some_and(|dir| !dir.is_absolute())
        {
            return Err(ConfigError::invalid(
                "pgbackrest.directory",
                "must be an absolute path",
            ));
        }
        self.without_secrets(data_dir)
            .validate()
            .map_err(|reason| ConfigError::invalid("pgbackrest", reason))?;
        let repo = &self.repo;
        if repo.kind == RepoType::S3 {
            for (key, value) in [
                ("pgbackrest.repo.bucket", repo.bucket.is_some()),
                ("pgbackrest.repo.endpoint", repo.endpoint.is_some()),
                ("pgbackrest.repo.region", repo.region.is_some()),
                ("pgbackrest.repo.key", repo.key.is_some()),
                ("pgbackrest.repo.key_secret", repo.key_secret.is_some()),
            ] {
                if !value {
                    return Err(ConfigError::invalid(
                        key,
                        "missing: an s3 repository needs it",
                    ));
                }
            }
        }
        if let Some(key) = &repo.key {
            key.check("pgbackrest.repo.key")?;
        }
        if let Some(secret) = &repo.key_secret {
            secret.check("pgbackrest.repo.key_secret")?;
        }
        for (key, value) in &self.options {
            if key.starts_with("pg1-") || key == "stanza" || key == "config" {
                return Err(ConfigError::invalid(
                    format!("pgbackrest.options.{key}"),
                    "matriarch sets it for the local server",
                ));
            }
            option_text(value).ok_or_else(|| {
                ConfigError::invalid(
                    format!("pgbackrest.options.{key}"),
                    "must be a string, number or boolean",
                )
            })?;
        }
        Ok(())
    }

    /// The controller's pgBackRest configuration with the credentials read
    /// (`env` looks a variable up).
    pub(crate) fn to_controller(
        &self,
        data_dir: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<PgBackRestConfig, ConfigError> {
        self.check(data_dir)?;
        let mut config = self.without_secrets(data_dir);
        let repo = &self.repo;
        if let Some(key) = &repo.key {
            config.secrets.push((
                "repo1-s3-key".to_owned(),
                key.read("pgbackrest.repo.key", env)?,
            ));
        }
        if let Some(secret) = &repo.key_secret {
            config.secrets.push((
                "repo1-s3-key-secret".to_owned(),
                secret.read("pgbackrest.repo.key_secret", env)?,
            ));
        }
        Ok(config)
    }

    /// The controller's pgBackRest configuration without the credentials.
    fn without_secrets(&self, data_dir: &Path) -> PgBackRestConfig {
        let repo = &self.repo;
        let mut options: Vec<(String, String)> = Vec::new();
        let mut set = |key: &str, value: String| options.push((key.to_owned(), value));
        let yn = |b: bool| if b { "y" } else { "n" }.to_owned();
        match repo.kind {
            RepoType::S3 => set("repo1-type", "s3".into()),
            RepoType::Posix => set("repo1-type", "posix".into()),
        }
        set("repo1-path", repo.path.clone());
        set("repo1-bundle", yn(repo.bundle));
        if let Some(n) = repo.retention_full {
            set("repo1-retention-full", n.to_string());
        }
        let optional = [
            ("repo1-s3-bucket", repo.bucket.clone()),
            ("repo1-s3-endpoint", repo.endpoint.clone()),
            ("repo1-storage-port", repo.port.map(|p| p.to_string())),
            ("repo1-s3-region", repo.region.clone()),
            ("repo1-s3-uri-style", repo.uri_style.clone()),
            (
                "repo1-storage-ca-file",
                repo.ca_file.as_ref().map(|p| p.display().to_string()),
            ),
        ];
        for (key, value) in optional {
            if let Some(value) = value {
                set(key, value);
            }
        }
        for (key, value) in &self.options {
            if let Some(text) = option_text(value) {
                set(key, text);
            }
        }
        PgBackRestConfig {
            program: self
                .program
                .clone()
                .unwrap_or_else(|| PathBuf::from(PgBackRestConfig::DEFAULT_PROGRAM)),
            stanza: self.stanza.clone(),
            directory: self.directory.clone().unwrap_or_else(|| {
                let mut name = data_dir.as_os_str().to_owned();
                name.push(".pgbackrest");
                PathBuf::from(name)
            }),
            options,
            secrets: Vec::new(),
        }
    }

    /// `archive_mode` and `archive_command` when `archive` is on.
    pub(crate) fn archive_parameters(
        &self,
        data_dir: &Path,
    ) -> Option<BTreeMap<String, ParameterValue>> {
        if !self.archive {
            return None;
        }
        let command = self.without_secrets(data_dir).archive_command();
        Some(BTreeMap::from([
            (
                "archive_mode".to_owned(),
                ParameterValue::Text("on".to_owned()),
            ),
            ("archive_command".to_owned(), ParameterValue::Text(command)),
        ]))
    }
}

/// A `[global]` option's value as pgBackRest reads it.
fn option_text(value: &serde_norway::Value) -> Option<String> {
    match value {
        serde_norway::Value::String(s) => Some(s.clone()),
        serde_norway::Value::Number(n) => Some(n.to_string()),
        serde_norway::Value::Bool(b) => Some(if *b { "y" } else { "n" }.to_owned()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::assert_error;
    use super::super::NodeConfig;
    use matriarch_model::ParameterValue;

    const NODE: &str = "scope: pg\nname: node1\netcd3:\n  hosts: 127.0.0.1:2379\npostgresql:\n  listen: 127.0.0.1:5432\n  data_dir: /srv/pg/data\n  authentication:\n    superuser: {username: postgres}\n    replication: {username: replicator}\n";

    fn repo(extra: &str) -> String {
        format!(
            "{NODE}pgbackrest:\n  stanza: main\n  repo:\n    type: s3\n    path: /main\n    bucket: b\n    endpoint: s3.example\n    region: r\n{extra}"
        )
    }

    fn env(var: &str) -> Option<String> {
        (var == "KEY").then(|| "AKIA-TEST".to_owned())
    }

    #[test]
    fn s3_credentials_come_from_the_environment_and_a_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("secret");
        std::fs::write(&file, "very-secret\n").expect("write");
        let text = repo(&format!(
            "    key: {{env: KEY}}\n    key_secret: {{file: {}}}\n",
            file.display()
        ));
        let (config, _) = NodeConfig::parse(&text, env).expect("valid");
        let section = config.pgbackrest.as_ref().expect("section");
        let controller = section
            .to_controller(std::path::Path::new("/srv/pg/data"), &env)
            .expect("credentials read");
        let secrets: Vec<(&str, &str)> = controller
            .secrets
            .iter()
            .map(|(k, v)| (k.as_str(), v.expose()))
            .collect();
        assert_eq!(
            secrets,
            [
                ("repo1-s3-key", "AKIA-TEST"),
                ("repo1-s3-key-secret", "very-secret")
            ]
        );
        assert!(controller
            .options
            .contains(&("repo1-bundle".into(), "y".into())));
        assert_eq!(
            controller.directory,
            std::path::Path::new("/srv/pg/data.pgbackrest")
        );
        // Archiving names the file, not the credentials.
        let parameters = config.local_parameters().expect("parameters");
        assert_eq!(
            parameters["archive_mode"],
            ParameterValue::Text("on".into())
        );
        assert_eq!(
            parameters["archive_command"],
            ParameterValue::Text(
                "/usr/bin/pgbackrest --config=/srv/pg/data.pgbackrest/pgbackrest.conf --stanza=main archive-push %p".into()
            )
        );
        assert!(!format!("{config:?}{controller:?}").contains("very-secret"));
    }

    #[test]
    fn bad_sections_are_refused_naming_the_key() {
        let missing_key = repo("    key_secret: {env: KEY}\n");
        let both = repo("    key: {env: KEY, file: /x}\n    key_secret: {env: KEY}\n");
        let own_archive = repo("    key: {env: KEY}\n    key_secret: {env: KEY}\n").replace(
            "    replication: {username: replicator}\n",
            "    replication: {username: replicator}\n  parameters: {archive_command: /bin/true}\n",
        );
        let restore_without_repo = NODE.replace(
            "  data_dir: /srv/pg/data\n",
            "  data_dir: /srv/pg/data\n  create_replica_methods: [pgbackrest, basebackup]\n",
        );
        for (text, expected) in [
            (missing_key, "pgbackrest.repo.key"),
            (both, "exactly one"),
            (own_archive, "archive_command"),
            (restore_without_repo, "create_replica_methods"),
        ] {
            assert_error(NodeConfig::parse(&text, env), &[expected]);
        }
    }
}
