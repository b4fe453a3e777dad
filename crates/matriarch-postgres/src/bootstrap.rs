//! What a brand-new cluster is created with.

use std::collections::BTreeMap;

use matriarch_model::ParameterValue;

use crate::secret::Credentials;

/// How [`crate::Postgres::bootstrap`] creates a new cluster.
///
/// Data checksums are always enabled: pg_rewind needs them (or
/// `wal_log_hints`), and they catch storage corruption before it spreads to
/// replicas. `Debug` is safe to log: passwords print as `***`.
#[derive(Clone, Debug, PartialEq)]
pub struct BootstrapSpec {
    /// The superuser `initdb` creates, which matriarch connects as.
    pub superuser: Credentials,
    /// The role replicas stream and take base backups as (`REPLICATION`).
    pub replication: Credentials,
    /// The role pg_rewind connects as, with only the function grants it
    /// needs; `None` makes pg_rewind connect as the superuser.
    pub rewind: Option<Credentials>,
    /// PostgreSQL settings for the new cluster, written to the
    /// configuration that matriarch manages.
    pub parameters: BTreeMap<String, ParameterValue>,
    /// `pg_hba.conf` lines, in order (the first match wins in PostgreSQL).
    pub pg_hba: Vec<String>,
}

impl BootstrapSpec {
    /// PostgreSQL's usual role names without passwords (`postgres`, `replicator`),
    /// no rewind role, parameters or `pg_hba` lines: what the in-memory
    /// PostgreSQL, the simulation and the examples need, where nothing checks passwords.
    pub fn passwordless() -> Self {
        BootstrapSpec {
            superuser: Credentials::without_password("postgres"),
            replication: Credentials::without_password("replicator"),
            rewind: None,
            parameters: BTreeMap::new(),
            pg_hba: Vec::new(),
        }
    }
}
