//! `pg_hba.conf` and `pg_ident.conf` from the configuration's lines, kept in
//! step with it: written whenever the managed configuration is (every start,
//! clone, rewind, bootstrap and [`PgController::reload`]), so a change applies
//! with a reload, without a restart. An empty list leaves its file alone
//! (initdb's, a base backup's, or one edited by hand).

use super::auth_lines::{check_lines, AuthLines};
use super::files;
use super::PgController;
use crate::error::{Operation, PostgresError};

impl PgController {
    /// Sets the `pg_hba.conf` and `pg_ident.conf` lines; they are written at
    /// the next [`PgController::reload`] or start. Returns whether anything
    /// changed. [`PostgresError::InvalidConfig`] for a line with a line break;
    /// then nothing changes.
    pub fn set_auth_lines(
        &self,
        pg_hba: Vec<String>,
        pg_ident: Vec<String>,
    ) -> Result<bool, PostgresError> {
        Self::replace_lines(&self.auth_lines, pg_hba, pg_ident)
    }

    /// Sets the cluster's lines (the dynamic configuration's
    /// `postgresql.pg_hba`/`pg_ident`, as Patroni's): each file uses them
    /// when the node's own lines ([`PgController::set_auth_lines`]) are
    /// empty. Written at the next reload or start; returns whether anything
    /// changed; [`PostgresError::InvalidConfig`] for a line with a line break.
    pub fn set_cluster_auth_lines(
        &self,
        pg_hba: Vec<String>,
        pg_ident: Vec<String>,
    ) -> Result<bool, PostgresError> {
        Self::replace_lines(&self.cluster_auth_lines, pg_hba, pg_ident)
    }

    fn replace_lines(
        lines: &std::sync::RwLock<AuthLines>,
        pg_hba: Vec<String>,
        pg_ident: Vec<String>,
    ) -> Result<bool, PostgresError> {
        check_lines("pg_hba", &pg_hba)?;
        check_lines("pg_ident", &pg_ident)?;
        let wanted = AuthLines { pg_hba, pg_ident };
        let mut current = match lines.write() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        if *current == wanted {
            return Ok(false);
        }
        *current = wanted;
        Ok(true)
    }

    /// Writes `pg_hba.conf` (the configured lines, then matriarch's own:
    /// local connections for the agent, replication) and `pg_ident.conf`
    /// when their lines are set and the file differs.
    pub(super) fn write_auth_files(&self, op: Operation) -> Result<(), PostgresError> {
        let read = |lines: &std::sync::RwLock<AuthLines>| match lines.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        let (node, cluster) = (read(&self.auth_lines), read(&self.cluster_auth_lines));
        // The node's lines win, file by file, as in Patroni.
        let pick =
            |own: Vec<String>, cluster: Vec<String>| if own.is_empty() { cluster } else { own };
        let lines = AuthLines {
            pg_hba: pick(node.pg_hba, cluster.pg_hba),
            pg_ident: pick(node.pg_ident, cluster.pg_ident),
        };
        if !lines.pg_hba.is_empty() {
            let mut hba = String::from(
                "# Written by matriarch from postgresql.pg_hba (the node's or the cluster's): rewritten when it changes.\n",
            );
            for line in lines
                .pg_hba
                .iter()
                .cloned()
                .chain(files::default_hba(&self.config.replication.username))
            {
                hba.push_str(&line);
                hba.push('\n');
            }
            self.write_if_changed(op, "pg_hba.conf", &hba)?;
        }
        if !lines.pg_ident.is_empty() {
            let mut ident = String::from(
                "# Written by matriarch from postgresql.pg_ident (the node's or the cluster's): rewritten when it changes.\n",
            );
            for line in &lines.pg_ident {
                ident.push_str(line);
                ident.push('\n');
            }
            self.write_if_changed(op, "pg_ident.conf", &ident)?;
        }
        Ok(())
    }

    fn write_if_changed(&self, op: Operation, name: &str, text: &str) -> Result<(), PostgresError> {
        let path = self.path(name);
        if files::read_optional(op, &path)?.as_deref() == Some(text) {
            return Ok(());
        }
        tracing::info!(member = self.member(), file = name, "writing");
        files::write_file(op, &path, text, 0o600, &self.runner.user)
    }
}
