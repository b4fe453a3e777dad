//! Creating a replica: the configured methods (Patroni's
//! `create_replica_methods`) in order, pg_basebackup from the upstream,
//! pgBackRest's restore or a custom command; a failed method's copy is
//! removed and the next one tried.

use std::ffi::OsString;

use super::files;
use super::process::arg;
use super::watched::Watched;
use super::PgController;
use crate::error::{Operation, PostgresError};
use crate::replica_method::{CustomMethod, ReplicaMethod};
use crate::sync_standby::SyncStandbyNames;
use crate::upstream::Upstream;

const OP: Operation = Operation::CloneReplica;

impl PgController {
    pub(super) async fn clone_inner(&self, source: &Upstream) -> Result<(), PostgresError> {
        self.runner.require(OP, &["pg_controldata"])?;
        self.require_empty_data_dir(OP)?;
        // Checked before anything is written, so a bad upstream leaves no trace.
        self.check_upstream(source)?;
        let mut last_error = None;
        for method in &self.config.replica_methods {
            files::create_data_dir(OP, self.data_dir(), &self.runner.user)?;
            tracing::info!(member = self.member(), source = %source.member, method = method.name(), "creating a replica");
            let created = match self.run_method(method, source).await {
                Ok(()) => self.finish_clone(source).await,
                Err(err) => Err(err),
            };
            match created {
                Ok(()) => {
                    tracing::info!(member = self.member(), source = %source.member, method = method.name(), "created a replica");
                    self.set_cloned_from(Some(source.member.clone()));
                    return Ok(());
                }
                Err(err) => {
                    if method.keeps_data() {
                        tracing::warn!(member = self.member(), method = method.name(), error = %err, "replica creation method failed, keeping its data (keep_data)");
                    } else {
                        tracing::warn!(member = self.member(), method = method.name(), error = %err, "replica creation method failed, removing its partial copy");
                        files::empty_data_dir(OP, self.data_dir())?;
                    }
                    last_error = Some(err);
                }
            }
            if !self.data_dir_is_empty() {
                // A kept copy: the next method would refuse it anyway.
                break;
            }
        }
        Err(last_error.unwrap_or_else(|| PostgresError::InvalidConfig {
            reason: "create_replica_methods is empty".to_owned(),
        }))
    }

    fn data_dir_is_empty(&self) -> bool {
        std::fs::read_dir(self.data_dir()).map_or(true, |mut d| d.next().is_none())
    }

    async fn run_method(
        &self,
        method: &ReplicaMethod,
        source: &Upstream,
    ) -> Result<(), PostgresError> {
        match method {
            ReplicaMethod::Basebackup { options } => self.basebackup(source, options).await,
            ReplicaMethod::PgBackRest { options } => self.pgbackrest_restore(source, options).await,
            ReplicaMethod::Command(custom) => self.custom_method(source, custom).await,
        }
    }

    fn watched<'a>(&'a self, name: &'a str) -> Watched<'a> {
        Watched {
            op: OP,
            name,
            dir: self.data_dir(),
            stall: self.config.timeouts.clone_stall,
        }
    }

    async fn basebackup(&self, source: &Upstream, options: &[String]) -> Result<(), PostgresError> {
        if let Some(found) = self.ensure_slot(OP, source).await? {
            self.check_system_id(OP, found, || source_context(source))?;
        }
        // A standby source's slot is the one its section names, if any.
        let slot = match &source.standby_source {
            Some(section) => section.primary_slot_name.clone(),
            None => Some(self.config.member.slot_name()),
        };
        let mut args: Vec<OsString> = vec![
            "-D".into(),
            arg(self.data_dir()),
            "-d".into(),
            self.program_conninfo(source, &self.config.replication, " basebackup")
                .into(),
            "-X".into(),
            "stream".into(),
            "-c".into(),
            "fast".into(),
            "--no-password".into(),
        ];
        if let Some(slot) = slot {
            args.extend(["-S".into(), slot.into()]);
        }
        args.extend(options.iter().map(OsString::from));
        let mut cmd = self.runner.command(OP, "pg_basebackup")?;
        cmd.args(&args);
        self.run_replicating(cmd, "pg_basebackup").await
    }

    async fn pgbackrest_restore(
        &self,
        source: &Upstream,
        options: &[String],
    ) -> Result<(), PostgresError> {
        let Some(backrest) = &self.config.pgbackrest else {
            return Err(PostgresError::InvalidConfig {
                reason: "the pgbackrest replica method needs the pgbackrest section".to_owned(),
            });
        };
        // Streaming later needs the slot; the restore itself does not reach
        // the upstream, so an upstream that refuses us now is no reason to fail.
        self.ensure_slot_best_effort(OP, source).await;
        self.write_pgbackrest_config(OP)?;
        let mut cmd = self.runner.command_at(&backrest.program);
        cmd.arg(format!("--config={}", backrest.config_file().display()))
            .arg(format!("--stanza={}", backrest.stanza))
            .arg(format!("--pg1-path={}", self.data_dir().display()))
            .arg("--type=standby")
            .args(options)
            .arg("restore");
        self.runner
            .run_watched(cmd, self.watched("pgbackrest restore"))
            .await?;
        Ok(())
    }

    async fn custom_method(
        &self,
        source: &Upstream,
        custom: &CustomMethod,
    ) -> Result<(), PostgresError> {
        let Some((program, own_args)) = custom.command.split_first() else {
            return Err(PostgresError::InvalidConfig {
                reason: format!("replica method {} has an empty command", custom.name),
            });
        };
        let mut cmd = self.runner.command_at(std::path::Path::new(program));
        cmd.args(own_args);
        if !custom.no_params {
            let connstring = self.program_conninfo(source, &self.config.replication, "");
            cmd.arg(format!("--scope={}", self.config.scope))
                .arg("--role=replica")
                .arg(format!("--datadir={}", self.data_dir().display()))
                .arg(format!("--connstring={connstring}"));
            cmd.args(custom.params.iter().map(|(k, v)| format!("--{k}={v}")));
        }
        self.run_replicating(cmd, &custom.name).await
    }

    /// Runs a method's program, watched for progress, with the replication
    /// password in `PGPASSWORD`.
    async fn run_replicating(
        &self,
        mut cmd: tokio::process::Command,
        name: &str,
    ) -> Result<(), PostgresError> {
        if let Some(password) = &self.config.replication.password {
            cmd.env("PGPASSWORD", password.expose());
        }
        self.runner.run_watched(cmd, self.watched(name)).await?;
        Ok(())
    }

    /// After any method: the copy must be of this cluster; matriarch's files
    /// make it a standby of `source`.
    async fn finish_clone(&self, source: &Upstream) -> Result<(), PostgresError> {
        let control = self.controldata(OP).await?;
        self.check_system_id(OP, control.system_id, || source_context(source))?;
        self.write_managed(OP)?;
        self.write_upstream(OP, Some(source))?;
        self.write_sync(OP, &SyncStandbyNames::Off)?;
        self.write_standby_signal(OP)?;
        Ok(())
    }
}

fn source_context(source: &Upstream) -> String {
    format!(
        "clone source {} ({}:{})",
        source.member, source.host, source.port
    )
}
