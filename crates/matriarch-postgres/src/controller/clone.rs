//! Cloning a replica from its upstream with pg_basebackup.

use std::ffi::OsString;

use super::files;
use super::process::arg;
use super::PgController;
use crate::error::{Operation, PostgresError};
use crate::sync_standby::SyncStandbyNames;
use crate::upstream::Upstream;

impl PgController {
    pub(super) async fn clone_inner(&self, source: &Upstream) -> Result<(), PostgresError> {
        let op = Operation::CloneReplica;
        self.runner
            .require(op, &["pg_basebackup", "pg_controldata"])?;
        self.require_empty_data_dir(op)?;
        // Checked before anything is written, so a bad upstream leaves no trace.
        self.check_upstream(source)?;
        files::create_data_dir(op, self.data_dir(), &self.runner.user)?;
        tracing::info!(member = self.member(), source = %source.member, "cloning a replica with pg_basebackup");
        match self.clone_steps(source).await {
            Ok(()) => {
                self.set_cloned_from(Some(source.member.clone()));
                Ok(())
            }
            Err(err) => {
                tracing::warn!(member = self.member(), error = %err, "clone failed, removing the partial copy");
                files::empty_data_dir(op, self.data_dir())?;
                Err(err)
            }
        }
    }

    pub(super) async fn clone_steps(&self, source: &Upstream) -> Result<(), PostgresError> {
        let op = Operation::CloneReplica;
        if let Some(found) = self.ensure_slot(op, source).await? {
            self.check_system_id(op, found, || {
                format!(
                    "clone source {} ({}:{})",
                    source.member, source.host, source.port
                )
            })?;
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
        self.runner
            .run(
                op,
                "pg_basebackup",
                &args,
                self.config.replication.password.as_ref(),
                self.config.timeouts.clone,
            )
            .await?;
        let control = self.controldata(op).await?;
        self.check_system_id(op, control.system_id, || {
            format!(
                "clone source {} ({}:{})",
                source.member, source.host, source.port
            )
        })?;
        self.write_managed(op)?;
        self.write_upstream(op, Some(source))?;
        self.write_sync(op, &SyncStandbyNames::Off)?;
        self.write_standby_signal(op)?;
        tracing::info!(member = self.member(), source = %source.member, "cloned a replica");
        Ok(())
    }
}
