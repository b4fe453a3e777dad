//! Bootstrapping a new cluster with initdb.

use std::ffi::OsString;

use matriarch_model::SystemId;

use super::process::arg;
use super::PgController;
use super::{config, files, sql};
use crate::bootstrap::BootstrapSpec;
use crate::error::{Operation, PostgresError};
use crate::secret::Credentials;
use crate::sync_standby::SyncStandbyNames;
use crate::StopMode;

impl PgController {
    pub(super) async fn bootstrap_inner(
        &self,
        spec: &BootstrapSpec,
    ) -> Result<SystemId, PostgresError> {
        let op = Operation::Bootstrap;
        self.runner.require(op, &["initdb", "pg_ctl"])?;
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
        match self.bootstrap_steps(spec).await {
            Ok(system_id) => Ok(system_id),
            Err(err) => {
                tracing::warn!(member = self.member(), error = %err, "bootstrap failed, removing the new cluster");
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
        let user = &self.runner.user;
        files::write_file(op, &self.path("pg_hba.conf"), &hba, 0o600, user)?;
        let conf_path = self.path("postgresql.conf");
        let mut conf = files::read_optional(op, &conf_path)?.unwrap_or_default();
        conf.push_str(&files::render_parameters(&spec.parameters));
        conf.push_str(&files::include_block());
        files::write_file(op, &conf_path, &conf, 0o600, user)?;
        self.write_managed(op)?;
        self.write_upstream(op, None)?;
        self.write_sync(op, &SyncStandbyNames::Off)?;
        self.remove_signals(op)?;
        self.pg_ctl_start(op).await?;

        let client = self.session(op, "connecting to the new cluster").await?;
        let mut script = String::from(
            "SET log_statement = 'none'; SET log_min_duration_statement = -1; \
             SET log_min_error_statement = 'panic';\n",
        );
        let password = |credentials: &Credentials| match &credentials.password {
            Some(secret) => format!("PASSWORD {}", files::sql_literal(secret.expose())),
            None => "PASSWORD NULL".to_owned(),
        };
        if spec.superuser.password.is_some() {
            script.push_str(&format!(
                "ALTER ROLE {} WITH {};\n",
                files::sql_ident(&spec.superuser.username),
                password(&spec.superuser)
            ));
        }
        script.push_str(&format!(
            "CREATE ROLE {} WITH REPLICATION LOGIN {};\n",
            files::sql_ident(&spec.replication.username),
            password(&spec.replication)
        ));
        if let Some(rewind) = &spec.rewind {
            let name = files::sql_ident(&rewind.username);
            script.push_str(&format!(
                "CREATE ROLE {name} WITH LOGIN {};\n\
                 GRANT EXECUTE ON FUNCTION pg_catalog.pg_ls_dir(text, boolean, boolean) TO {name};\n\
                 GRANT EXECUTE ON FUNCTION pg_catalog.pg_stat_file(text, boolean) TO {name};\n\
                 GRANT EXECUTE ON FUNCTION pg_catalog.pg_read_binary_file(text) TO {name};\n\
                 GRANT EXECUTE ON FUNCTION pg_catalog.pg_read_binary_file(text, bigint, bigint, boolean) TO {name};\n\
                 GRANT pg_checkpoint TO {name};\n",
                password(rewind)
            ));
        }
        // The script holds passwords: its errors must not echo it.
        sql::simple(
            &client,
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
        let row = self
            .query_row(
                &client,
                op,
                "reading the system identifier",
                "SELECT system_identifier FROM pg_control_system()",
            )
            .await?;
        let system_id = sql::parsed::<SystemId>(&row, 0, op, "reading the system identifier")?
            .ok_or_else(|| PostgresError::Unexpected {
                operation: op,
                context: "reading the system identifier".to_owned(),
                message: "NULL".to_owned(),
            })?;
        tracing::info!(member = self.member(), %system_id, "bootstrapped a new cluster");
        Ok(system_id)
    }
}
