//! The in-memory PostgreSQL (`matriarch_postgres::memory`) passes the same
//! `Postgres` conformance suite as `PgController` against real PostgreSQL:
//! the stand-in the simulation and the examples run may not drift from it.

use std::time::Duration;

use async_trait::async_trait;
use matriarch_model::{MemberName, SystemId};
use matriarch_postgres::conformance::{Harness, MEMBERS};
use matriarch_postgres::memory::Commit;
use matriarch_postgres::{BootstrapSpec, MemoryPostgres, MemoryPostgresCluster, Upstream};

struct MemoryHarness {
    cluster: MemoryPostgresCluster,
    members: Vec<MemoryPostgres>,
}

async fn harness() -> MemoryHarness {
    let cluster = MemoryPostgresCluster::new(SystemId(7_500_000_000_000_000_001));
    let members = (0..MEMBERS)
        .map(|index| cluster.member(MemberName::new(format!("pg-{index}")).expect("member name")))
        .collect();
    MemoryHarness { cluster, members }
}

#[async_trait]
impl Harness for MemoryHarness {
    type Postgres = MemoryPostgres;

    fn member(&self, index: usize) -> &MemoryPostgres {
        &self.members[index]
    }

    fn upstream(&self, index: usize) -> Upstream {
        Upstream {
            member: MemberName::new(format!("pg-{index}")).expect("member name"),
            host: "127.0.0.1".to_owned(),
            port: 5432 + index as u16,
            standby_source: None,
        }
    }

    fn bootstrap_spec(&self) -> BootstrapSpec {
        BootstrapSpec::passwordless()
    }

    async fn write(&self, index: usize) {
        let commit = self.members[index].commit();
        assert!(
            matches!(commit, Commit::Acknowledged { .. }),
            "write on member {index}: {commit:?}"
        );
    }

    async fn crash(&self, index: usize) {
        self.members[index].crash();
    }

    async fn pass_time(&self, _duration: Duration) {
        // No clock of its own: WAL ships one round per step of time.
        self.cluster.servers().replicate();
        tokio::task::yield_now().await;
    }
}

matriarch_postgres::postgres_conformance_tests!(harness());

/// Beyond the shared suite (which cannot make a real commit wait without
/// blocking its client): a commit waits for the standbys
/// `synchronous_standby_names` names, as PostgreSQL does.
mod synchronous_commit {
    use matriarch_postgres::{Postgres, StartAs, StopMode, SyncStandbyNames};

    use super::*;

    /// Member 0 primary, members 1 and 2 streaming from it.
    async fn cluster() -> MemoryHarness {
        let harness = harness().await;
        harness
            .member(0)
            .bootstrap(&harness.bootstrap_spec())
            .await
            .expect("bootstrap");
        for index in 1..MEMBERS {
            let member = harness.member(index);
            member
                .clone_replica(&harness.upstream(0))
                .await
                .expect("clone");
            member
                .start(StartAs::ReplicaOf(harness.upstream(0)))
                .await
                .expect("start");
        }
        harness.pass_time(Duration::ZERO).await;
        harness
    }

    /// A commit on member 0: who confirmed it, or `None` if it waits.
    fn commit(harness: &MemoryHarness) -> Option<Vec<MemberName>> {
        match harness.members[0].commit() {
            Commit::Acknowledged { standbys, .. } => Some(standbys),
            Commit::Waiting { .. } => None,
            Commit::Refused => panic!("member 0 refused a commit"),
        }
    }

    /// Sets `synchronous_standby_names` on member 0, the primary.
    async fn set_on_primary(harness: &MemoryHarness, names: &SyncStandbyNames) {
        harness
            .member(0)
            .set_synchronous_standby_names(names)
            .await
            .expect("set names");
    }

    /// Stops member `index` (fast).
    async fn stop(harness: &MemoryHarness, index: usize) {
        harness
            .member(index)
            .stop(StopMode::Fast)
            .await
            .expect("stop");
    }

    fn names(names: &[&str]) -> SyncStandbyNames {
        SyncStandbyNames::first(1, names.iter().copied()).expect("valid names")
    }

    #[tokio::test]
    async fn an_empty_setting_is_not_waited_for() {
        let harness = cluster().await;
        stop(&harness, 1).await;
        stop(&harness, 2).await;
        assert_eq!(commit(&harness), Some(Vec::new()));
    }

    #[tokio::test]
    async fn a_commit_waits_for_a_named_standby_and_no_other() {
        let harness = cluster().await;
        set_on_primary(&harness, &names(&["pg-1"])).await;
        let standby = MemberName::new("pg-1").expect("name");
        assert_eq!(commit(&harness), Some(vec![standby]));
        stop(&harness, 1).await;
        // pg-2 streams, but is not named.
        assert_eq!(commit(&harness), None);
        let state = harness.member(0).observe().await.expect("observe");
        assert_eq!(state.synchronous_standby_names, Some(names(&["pg-1"])));
    }

    #[tokio::test]
    async fn a_star_is_any_standby_and_none_means_waiting() {
        let harness = cluster().await;
        set_on_primary(&harness, &names(&["*"])).await;
        stop(&harness, 1).await;
        assert_eq!(commit(&harness).map(|standbys| standbys.len()), Some(1));
        stop(&harness, 2).await;
        assert_eq!(commit(&harness), None);
    }

    #[tokio::test]
    async fn any_two_needs_two_standbys() {
        let harness = cluster().await;
        let any_two = SyncStandbyNames::any(2, ["pg-1", "pg-2"]).expect("valid");
        set_on_primary(&harness, &any_two).await;
        assert_eq!(commit(&harness).map(|standbys| standbys.len()), Some(2));
        stop(&harness, 2).await;
        assert_eq!(commit(&harness), None);
    }
}
