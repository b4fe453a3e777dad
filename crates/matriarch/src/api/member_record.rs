//! The member record as Patroni's `touch_member` writes it: the engine
//! builds the record, and [`MemberRecordDcs`] (the engine's DCS client)
//! adds what this daemon knows besides the engine: `pending_restart`
//! (parameters waiting for a restart), `scheduled_restart` (from
//! `POST /restart`), and a replica's `replay_lsn` (from the engine's last
//! published observation of PostgreSQL). `patronictl list` shows them and
//! `patronictl flush … restart` needs `scheduled_restart` to act.

use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use async_trait::async_trait;
use matriarch_dcs::{Dcs, DcsError, Expected, WatchOutcome};
use matriarch_model::{
    ClusterView, DcsKey, KeyLayout, Member, MemberName, MemberState, Record, Role, SystemId,
    Version,
};
use matriarch_postgres::PgRole;

use super::restart::RestartSchedule;
use super::ApiState;
use crate::dcs::AnyDcs;
use crate::params::ParameterStatus;

/// What the daemon adds to the engine's member record.
#[derive(Default)]
pub(crate) struct MemberExtras {
    /// The restart `POST /restart` scheduled (shared with the API).
    pub(crate) schedule: Arc<RestartSchedule>,
    /// Parameters waiting for a restart (shared with the parameter task).
    pub(crate) parameters: Arc<ParameterStatus>,
    /// The REST API, once it runs: the engine's status it serves.
    api: OnceLock<Weak<ApiState>>,
}

impl MemberExtras {
    /// Extras with the parameter task's status and no restart scheduled.
    pub(crate) fn new(parameters: Arc<ParameterStatus>) -> MemberExtras {
        MemberExtras {
            parameters,
            ..MemberExtras::default()
        }
    }

    /// Lets the record carry the engine's last observation of PostgreSQL.
    pub(crate) fn attach(&self, state: &Arc<ApiState>) {
        let _ = self.api.set(Arc::downgrade(state));
    }

    /// `member` with the daemon's fields.
    pub(crate) fn complete(&self, member: &Member) -> Member {
        let mut member = member.clone();
        member.pending_restart = !self.parameters.pending().is_empty();
        member.scheduled_restart = self.schedule.get().map(|r| r.as_json());
        if member.role == Role::Replica && member.state == MemberState::Running {
            member.replayed_lsn = self.replayed(&member);
        }
        member
    }

    /// The replay position the API last observed on this replica, never
    /// beyond the position the engine observed now: the record's freshest
    /// position (which failover compares) stays the engine's.
    fn replayed(&self, member: &Member) -> Option<matriarch_model::Lsn> {
        let fresh = member.wal_position()?;
        let api = self.api.get()?.upgrade()?;
        let local = api.status.get().postgres?;
        if local.role() != Some(PgRole::Replica) {
            return None;
        }
        local.wal.replayed.map(|replayed| replayed.min(fresh))
    }
}

/// The engine's DCS client: every call forwarded, member records completed
/// by [`MemberExtras`].
pub(crate) struct MemberRecordDcs {
    inner: AnyDcs,
    extras: Arc<MemberExtras>,
}

impl MemberRecordDcs {
    /// Wraps the shared client.
    pub(crate) fn new(inner: AnyDcs, extras: Arc<MemberExtras>) -> MemberRecordDcs {
        MemberRecordDcs { inner, extras }
    }
}

#[async_trait]
impl Dcs for MemberRecordDcs {
    fn layout(&self) -> &KeyLayout {
        self.inner.layout()
    }
    async fn read_view(&self) -> Result<ClusterView, DcsError> {
        self.inner.read_view().await
    }
    async fn try_initialize(&self) -> Result<bool, DcsError> {
        self.inner.try_initialize().await
    }
    async fn complete_initialize(&self, system_id: SystemId) -> Result<(), DcsError> {
        self.inner.complete_initialize(system_id).await
    }
    async fn cancel_initialize(&self) -> Result<(), DcsError> {
        self.inner.cancel_initialize().await
    }
    async fn acquire_leader(&self, me: &MemberName, ttl: Duration) -> Result<bool, DcsError> {
        self.inner.acquire_leader(me, ttl).await
    }
    async fn renew_leader(&self, me: &MemberName, ttl: Duration) -> Result<(), DcsError> {
        self.inner.renew_leader(me, ttl).await
    }
    fn lock_lifetime(&self) -> Option<Duration> {
        self.inner.lock_lifetime()
    }
    async fn release_leader(&self, me: &MemberName) -> Result<(), DcsError> {
        self.inner.release_leader(me).await
    }
    async fn publish_member(&self, member: &Member, ttl: Duration) -> Result<(), DcsError> {
        let member = self.extras.complete(member);
        self.inner.publish_member(&member, ttl).await
    }
    async fn remove_member(&self, name: &MemberName) -> Result<(), DcsError> {
        self.inner.remove_member(name).await
    }
    async fn remove_cluster(&self) -> Result<(), DcsError> {
        self.inner.remove_cluster().await
    }
    async fn write(&self, record: &Record, expected: Expected) -> Result<Version, DcsError> {
        self.inner.write(record, expected).await
    }
    async fn delete(&self, key: &DcsKey, expected: Expected) -> Result<(), DcsError> {
        self.inner.delete(key, expected).await
    }
    async fn watch(
        &self,
        after_revision: u64,
        timeout: Duration,
    ) -> Result<WatchOutcome, DcsError> {
        self.inner.watch(after_revision, timeout).await
    }
}

#[cfg(test)]
mod tests {
    use matriarch_dcs::MemoryDcs;
    use serde_json::json;

    use super::super::restart::RestartRequest;
    use super::*;

    #[tokio::test]
    async fn published_records_carry_pending_and_scheduled_restarts() {
        let store = MemoryDcs::new(KeyLayout::new("/service/", "test").unwrap());
        let extras = Arc::new(MemberExtras::new(Arc::default()));
        let dcs = MemberRecordDcs::new(Arc::new(store.clone()), Arc::clone(&extras));
        let name = MemberName::new("me").unwrap();
        let mut member = Member::new(
            name.clone(),
            "postgres://h:5432/postgres",
            "http://h:8008/patroni",
        );
        member.role = Role::Replica;
        member.state = MemberState::Running;
        let ttl = Duration::from_secs(30);

        dcs.publish_member(&member, ttl).await.unwrap();
        let record =
            |view: &ClusterView| view.members[name.as_str()].as_ref().unwrap().value.clone();
        let plain = record(&store.read_view().await.unwrap());
        assert!(!plain.pending_restart && plain.scheduled_restart.is_none());

        *extras.parameters.pending_restart.write().unwrap() = vec!["max_connections".into()];
        let at = chrono::DateTime::parse_from_rfc3339("2030-01-01T12:00:00+00:00").unwrap();
        extras.schedule.put(RestartRequest {
            schedule: Some(at),
            postgres_version: Some("15.3".into()),
            ..RestartRequest::default()
        });
        dcs.publish_member(&member, ttl).await.unwrap();
        let written = record(&store.read_view().await.unwrap());
        assert!(written.pending_restart);
        assert_eq!(
            written.scheduled_restart,
            Some(json!({"schedule": "2030-01-01T12:00:00+00:00", "postgres_version": "15.3"}))
        );
    }
}
