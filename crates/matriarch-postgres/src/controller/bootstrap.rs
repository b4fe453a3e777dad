//! Bootstrapping a new cluster: initdb, or a custom method (`restore.rs`),
//! and the steps both end with (roles, the system identifier).

use std::ffi::OsString;

use matriarch_model::SystemId;
use tokio_postgres::Client;

use super::process::arg;
use super::PgController;
use super::{config, files, sql};
use crate::bootstrap::{check_recovery_conf, BootstrapMethod, BootstrapSpec};
use crate::error::{Operation, PostgresError};
use crate::quoting;
use crate::secret::Credentials;
use crate::sync_standby::SyncStandbyNames;
use crate::StopMode;

impl PgController {
    pub(super) async fn bootstrap_inner(
        &self,
        spec: &BootstrapSpec,
    ) -> Result<SystemId, PostgresError> {
        let op = Operation::Bootstrap;
        match &spec.method {
            BootstrapMethod::Initdb => self.runner.require(op, &["initdb", "pg_ctl"])?,
            BootstrapMethod::Custom(custom) => {
                self.runner.require(op, &["pg_ctl", "pg_controldata"])?;
                if custom.argv.is_empty() {
                    return Err(PostgresError::InvalidConfig {
                        reason: format!("bootstrap method {:?} has no command", custom.name),
                    });
                }
                if let Some(conf) = &custom.recovery_conf {
                    check_recovery_conf(conf).map_err(|reason| PostgresError::InvalidConfig {
                        reason: format!("bootstrap.{}.recovery_conf: {reason}", custom.name),
                    })?;
                }
            }
        }
        if spec.superuser.username != self.config.superuser.username {
            return Err(PostgresError::InvalidConfig {
                reason: format!(
                    "the bootstrap superuser {:?} is not the configured superuser {:?}",
                    spec.superuser.username, self.config.superuser.username
                ),
            });
        }
        for (name, value) in &spec.parameters {
            config::check_parameter(name, value)?;
        }
        if let Some(line) = spec.pg_hba.iter().find(|line| line.contains(['\n', '\r'])) {
            return Err(PostgresError::InvalidConfig {
                reason: format!("pg_hba line {line:?} holds a line break"),
            });
        }
        self.require_empty_data_dir(op)?;
        files::create_data_dir(op, self.data_dir(), &self.runner.user)?;
        tracing::info!(member = self.member(), data_dir = %self.data_dir().display(), "bootstrapping a new cluster");
        let result = match &spec.method {
            BootstrapMethod::Initdb => self.bootstrap_steps(spec).await,
            BootstrapMethod::Custom(custom) => self.custom_bootstrap_steps(spec, custom).await,
        };
        match result {
            Ok(system_id) => Ok(system_id),
            Err(err) => {
                // The caller logs `err`; this says only what is undone.
                tracing::info!(
                    member = self.member(),
                    "bootstrap failed: removing the new cluster"
                );
                if self.postmaster_pid().is_some() {
                    if let Err(stop) = self.stop_escalating(op, StopMode::Immediate).await {
                        tracing::error!(member = self.member(), error = %stop, "could not stop the failed bootstrap's server; leaving its data directory");
                        return Err(err);
                    }
                }
                files::empty_data_dir(op, self.data_dir())?;
                Err(err)
            }
        }
    }

    pub(super) async fn bootstrap_steps(
        &self,
        spec: &BootstrapSpec,
    ) -> Result<SystemId, PostgresError> {
        let op = Operation::Bootstrap;
        let mut args: Vec<OsString> = vec![
            "-D".into(),
            arg(self.data_dir()),
            "-U".into(),
            spec.superuser.username.clone().into(),
            "--data-checksums".into(),
            "--auth-local=trust".into(),
            "--auth-host=scram-sha-256".into(),
            "--no-instructions".into(),
        ];
        args.extend(self.config.initdb_args.iter().map(OsString::from));
        self.runner
            .run(op, "initdb", &args, None, self.config.timeouts.command)
            .await?;

        self.write_bootstrap_hba(spec)?;
        let conf_path = self.path("postgresql.conf");
        let mut conf = files::read_optional(op, &conf_path)?.unwrap_or_default();
        conf.push_str(&files::render_parameters(&spec.parameters));
        conf.push_str(&files::include_block());
        files::write_file(op, &conf_path, &conf, 0o600, &self.runner.user)?;
        self.write_managed(op)?;
        self.write_upstream(op, None)?;
        self.write_sync(op, &SyncStandbyNames::Off)?;
        self.remove_signals(op)?;
        self.pg_ctl_start(op).await?;

        let client = self.session(op, "connecting to the new cluster").await?;
        self.create_bootstrap_roles(&client, spec).await?;
        let system_id = self.bootstrapped_system_id(&client).await?;
        tracing::info!(member = self.member(), %system_id, "bootstrapped a new cluster");
        Ok(system_id)
    }

    /// Writes `pg_hba.conf`: the spec's lines, then matriarch's defaults.
    pub(super) fn write_bootstrap_hba(&self, spec: &BootstrapSpec) -> Result<(), PostgresError> {
        let mut hba = String::from("# Written by matriarch at bootstrap.\n");
        for line in spec
            .pg_hba
            .iter()
            .cloned()
            .chain(files::default_hba(&spec.replication.username))
        {
            hba.push_str(&line);
            hba.push('\n');
        }
        let path = self.path("pg_hba.conf");
        files::write_file(Operation::Bootstrap, &path, &hba, 0o600, &self.runner.user)
    }

    /// Sets the superuser's password and creates (or, in a restored
    /// cluster that has them, updates) the replication and rewind roles.
    pub(super) async fn create_bootstrap_roles(
        &self,
        client: &Client,
        spec: &BootstrapSpec,
    ) -> Result<(), PostgresError> {
        let op = Operation::Bootstrap;
        let existing: Vec<String> = self
            .query(
                client,
                op,
                "listing the roles",
                "SELECT rolname FROM pg_roles",
            )
            .await?
            .into_iter()
            .flatten()
            .filter_map(|row| sql::text(&row, 0).map(str::to_owned))
            .collect();
        let mut script = String::from(
            "SET log_statement = 'none'; SET log_min_duration_statement = -1; \
             SET log_min_error_statement = 'panic';\n",
        );
        let password = |credentials: &Credentials| match &credentials.password {
            Some(secret) => format!("PASSWORD {}", quoting::sql_literal(secret.expose())),
            None => "PASSWORD NULL".to_owned(),
        };
        // CREATE, or ALTER for a role a restored backup brought along.
        let role = |credentials: &Credentials, options: &str| {
            let verb = if existing.contains(&credentials.username) {
                "ALTER"
            } else {
                "CREATE"
            };
            format!(
                "{verb} ROLE {} WITH {options} {};\n",
                quoting::sql_ident(&credentials.username),
                password(credentials)
            )
        };
        if spec.superuser.password.is_some() {
            script.push_str(&format!(
                "ALTER ROLE {} WITH {};\n",
                quoting::sql_ident(&spec.superuser.username),
                password(&spec.superuser)
            ));
        }
        script.push_str(&role(&spec.replication, "REPLICATION LOGIN"));
        if let Some(rewind) = &spec.rewind {
            let name = quoting::sql_ident(&rewind.username);
            script.push_str(&role(rewind, "LOGIN"));
            script.push_str(&format!(
                "GRANT EXECUTE ON FUNCTION pg_catalog.pg_ls_dir(text, boolean, boolean) TO {name};\n\
                 GRANT EXECUTE ON FUNCTION pg_catalog.pg_stat_file(text, boolean) TO {name};\n\
                 GRANT EXECUTE ON FUNCTION pg_catalog.pg_read_binary_file(text) TO {name};\n\
                 GRANT EXECUTE ON FUNCTION pg_catalog.pg_read_binary_file(text, bigint, bigint, boolean) TO {name};\n\
                 GRANT pg_checkpoint TO {name};\n",
            ));
        }
        // The script holds passwords: its errors must not echo it.
        sql::simple(
            client,
            op,
            "creating the superuser password, the replication and the rewind roles",
            &script,
            self.config.timeouts.command,
        )
        .await
        .map_err(|err| match err {
            PostgresError::Query {
                operation,
                context,
                message,
            } => PostgresError::Query {
                operation,
                context,
                message: message.lines().next().unwrap_or_default().to_owned(),
            },
            other => other,
        })?;
        Ok(())
    }

    /// The new cluster's system identifier, for the `initialize` key.
    pub(super) async fn bootstrapped_system_id(
        &self,
        client: &Client,
    ) -> Result<SystemId, PostgresError> {
        let op = Operation::Bootstrap;
        let context = "reading the system identifier";
        let row = self
            .query_row(
                client,
                op,
                context,
                "SELECT system_identifier FROM pg_control_system()",
            )
            .await?;
        sql::parsed::<SystemId>(&row, 0, op, context)?.ok_or_else(|| PostgresError::Unexpected {
            operation: op,
            context: context.to_owned(),
            message: "NULL".to_owned(),
        })
    }
}
