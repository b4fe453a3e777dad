//! The files matriarch writes in the data directory: its configuration
//! includes (managed settings, upstream, synchronous standbys) and the
//! recovery signal files.

use super::files;
use super::files::{ManagedSettings, MANAGED_CONF_FILE, SYNC_CONF_FILE, UPSTREAM_CONF_FILE};
use super::PgController;
use crate::error::{Operation, PostgresError};
use crate::sync_standby::SyncStandbyNames;
use crate::upstream::Upstream;

impl PgController {
    /// Writes [`MANAGED_CONF_FILE`] and makes sure `postgresql.conf` includes
    /// the managed files.
    pub(super) fn write_managed(&self, op: Operation) -> Result<(), PostgresError> {
        let user = &self.runner.user;
        let conf = self.path("postgresql.conf");
        let text = files::read_optional(op, &conf)?.unwrap_or_default();
        if !files::has_include_block(&text) {
            let mut text = text;
            text.push_str(&files::include_block());
            files::write_file(op, &conf, &text, 0o600, user)?;
        }
        let managed = files::render_managed(&ManagedSettings {
            member: &self.config.member,
            listen_addresses: &self.config.listen_addresses,
            port: self.config.port,
            socket_dir: &self.config.socket_dir,
            parameters: &self.parameters(),
            major_version: files::read_optional(op, &self.path("PG_VERSION"))
                .ok()
                .flatten()
                .and_then(|text| text.trim().parse().ok()),
        });
        files::write_file(op, &self.path(MANAGED_CONF_FILE), &managed, 0o600, user)?;
        self.write_auth_files(op)
    }

    pub(super) fn write_upstream(
        &self,
        op: Operation,
        upstream: Option<&Upstream>,
    ) -> Result<(), PostgresError> {
        let passfile = files::passfile_path(self.data_dir());
        let unexpected = |message| PostgresError::Unexpected {
            operation: op,
            context: "writing primary_conninfo".to_owned(),
            message,
        };
        let text = files::render_upstream(
            upstream,
            &self.config.replication,
            &self.config.member,
            &passfile,
        )
        .map_err(unexpected)?;
        // The password file first: primary_conninfo names it.
        if upstream.is_some() {
            if let Some(line) =
                files::render_passfile(&self.config.replication).map_err(unexpected)?
            {
                files::write_file(op, &passfile, line.expose(), 0o600, &self.runner.user)?;
            }
        }
        files::write_file(
            op,
            &self.path(UPSTREAM_CONF_FILE),
            &text,
            0o600,
            &self.runner.user,
        )
    }

    /// Checks, before anything is written, that `upstream` and the
    /// replication credentials can be rendered, so a bad one leaves no trace.
    pub(super) fn check_upstream(&self, upstream: &Upstream) -> Result<(), PostgresError> {
        files::render_upstream(
            Some(upstream),
            &self.config.replication,
            &self.config.member,
            &files::passfile_path(self.data_dir()),
        )
        .and_then(|_| files::render_passfile(&self.config.replication).map(|_| ()))
        .map_err(|reason| PostgresError::InvalidConfig { reason })
    }

    pub(super) fn current_upstream(
        &self,
        op: Operation,
    ) -> Result<Option<Upstream>, PostgresError> {
        Ok(files::read_optional(op, &self.path(UPSTREAM_CONF_FILE))?
            .as_deref()
            .and_then(files::parse_upstream))
    }

    pub(super) fn write_sync(
        &self,
        op: Operation,
        names: &SyncStandbyNames,
    ) -> Result<(), PostgresError> {
        files::write_file(
            op,
            &self.path(SYNC_CONF_FILE),
            &files::render_sync(names),
            0o600,
            &self.runner.user,
        )
    }

    pub(super) fn write_standby_signal(&self, op: Operation) -> Result<(), PostgresError> {
        files::remove_file(op, &self.path("recovery.signal"))?;
        files::write_file(
            op,
            &self.path("standby.signal"),
            "",
            0o600,
            &self.runner.user,
        )
    }

    pub(super) fn remove_signals(&self, op: Operation) -> Result<(), PostgresError> {
        files::remove_file(op, &self.path("standby.signal"))?;
        files::remove_file(op, &self.path("recovery.signal"))
    }
}
