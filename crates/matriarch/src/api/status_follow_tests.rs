//! The REST view follows the engine's status and reads nothing itself: the
//! role answers change on the status the engine publishes at a promotion or
//! before a demotion, with no read of PostgreSQL or of the DCS in between
//! (issue 20). Counting doubles stand for PostgreSQL and the DCS; the figures
//! (status publish to answer) are printed, not asserted.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use matriarch_dcs::test_support::GatedDcs;
use matriarch_dcs::MemoryDcs;
use matriarch_ha::{EngineRole, EngineStatus};
use matriarch_model::{
    ClusterView, KeyLayout, LeaderLock, MemberName, SystemId, Timeline, Version, Versioned,
};
use matriarch_postgres::{
    BootstrapSpec, LocalState, Operation, PgRole, Postgres, PostgresError, RewindOutcome,
    ServerState, StartAs, StopMode, SyncStandbyNames, Upstream,
};
use serde_json::Value;
use tokio::sync::watch;

use super::pg_ops::ReloadPostgres;
use super::router_tests::{answer, test_api_state};
use super::state::{refresh, ApiState};

/// How often the API asked PostgreSQL for anything.
#[derive(Default)]
struct Reads {
    postgres: AtomicUsize,
}

/// A PostgreSQL that still answers as a replica (as a stale read would see
/// it) and counts every call.
struct CountingPostgres(Arc<Reads>);

impl CountingPostgres {
    fn call(&self, operation: Operation) -> PostgresError {
        self.0.postgres.fetch_add(1, Ordering::SeqCst);
        PostgresError::NotRunning { operation }
    }
}

#[async_trait]
impl Postgres for CountingPostgres {
    async fn observe(&self) -> Result<LocalState, PostgresError> {
        self.0.postgres.fetch_add(1, Ordering::SeqCst);
        Ok(running(PgRole::Replica, 1))
    }
    async fn bootstrap(&self, _: &BootstrapSpec) -> Result<SystemId, PostgresError> {
        Err(self.call(Operation::Bootstrap))
    }
    async fn clone_replica(&self, _: &Upstream) -> Result<(), PostgresError> {
        Err(self.call(Operation::CloneReplica))
    }
    async fn start(&self, _: StartAs) -> Result<(), PostgresError> {
        Err(self.call(Operation::Start))
    }
    async fn stop(&self, _: StopMode) -> Result<(), PostgresError> {
        Err(self.call(Operation::Stop))
    }
    async fn promote(&self) -> Result<Timeline, PostgresError> {
        Err(self.call(Operation::Promote))
    }
    async fn demote(&self, _: StopMode, _: Option<Upstream>) -> Result<(), PostgresError> {
        Err(self.call(Operation::Demote))
    }
    async fn follow(&self, _: &Upstream) -> Result<(), PostgresError> {
        Err(self.call(Operation::Follow))
    }
    async fn rewind(&self, _: &Upstream) -> Result<RewindOutcome, PostgresError> {
        Err(self.call(Operation::Rewind))
    }
    async fn set_synchronous_standby_names(
        &self,
        _: &SyncStandbyNames,
    ) -> Result<(), PostgresError> {
        Err(self.call(Operation::SetSynchronousStandbyNames))
    }
}

#[async_trait]
impl ReloadPostgres for CountingPostgres {
    async fn reload(&self) -> Result<(), PostgresError> {
        Err(self.call(Operation::Reload))
    }
}

fn me() -> MemberName {
    MemberName::new("me").expect("a valid name")
}

fn running(role: PgRole, timeline: u32) -> LocalState {
    let mut local = LocalState::empty();
    local.server = ServerState::Running(role);
    local.timeline = Some(Timeline(timeline));
    local
}

/// The DCS as the engine's loop read it: `leader` holds the lock.
fn view_led_by(leader: &MemberName) -> ClusterView {
    ClusterView {
        leader: Some(Ok(Versioned {
            value: LeaderLock {
                holder: leader.clone(),
            },
            version: Version(7),
        })),
        ..ClusterView::default()
    }
}

/// What the engine publishes while this node is a replica of `other`.
fn replica_status() -> EngineStatus {
    let other = MemberName::new("other").expect("a valid name");
    EngineStatus {
        reason: "following other".to_owned(),
        leader: Some(other.clone()),
        timeline: Some(Timeline(1)),
        postgres: Some(Arc::new(running(PgRole::Replica, 1))),
        view: Some(Arc::new(view_led_by(&other))),
        view_read_at: Some(chrono::Utc::now()),
        ..super::router_tests::status(EngineRole::Replica)
    }
}

/// The engine's publish the moment its promotion completed.
fn promoted(status: &mut EngineStatus) {
    status.role = EngineRole::Leader;
    status.writable = true;
    status.timeline = Some(Timeline(2));
    status.leader = Some(me());
    status.postgres = Some(Arc::new(running(PgRole::Primary, 2)));
    status.view = Some(Arc::new(view_led_by(&me())));
}

struct Node {
    state: Arc<ApiState>,
    status: watch::Sender<EngineStatus>,
    reads: Arc<Reads>,
    dcs: GatedDcs,
    data_dir: tempfile::TempDir,
}

impl Node {
    fn new() -> Self {
        let reads = Arc::new(Reads::default());
        let pg = Arc::new(CountingPostgres(Arc::clone(&reads)));
        // Empty: no leader, as a stale read would see it.
        let dcs = GatedDcs::new(MemoryDcs::new(
            KeyLayout::new("/service/", "test").expect("a layout"),
        ));
        let (status, status_rx) = watch::channel(replica_status());
        let (state, data_dir) = test_api_state(
            Arc::new(dcs.clone()),
            Arc::clone(&pg) as Arc<dyn Postgres>,
            pg as Arc<dyn ReloadPostgres>,
            status_rx,
        );
        Node {
            state: Arc::new(state),
            status,
            reads,
            dcs,
            data_dir,
        }
    }

    /// The calls the API made to (PostgreSQL, the DCS).
    fn calls(&self) -> (usize, usize) {
        (self.reads.postgres.load(Ordering::SeqCst), self.dcs.calls())
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        let req = Request::builder()
            .method(Method::GET)
            .uri(path)
            .body(Body::empty())
            .expect("a request");
        let (status, _, bytes) = answer(&self.state, req).await;
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    /// Waits until the API's task that follows the status has taken the
    /// latest change in (it stamps the time of every change).
    async fn settle(&self, changes_before: Option<Instant>) {
        for _ in 0..200 {
            let at = self.state.cache.read().map(|c| c.status_at).ok().flatten();
            if at.is_some() && at != changes_before {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("the API did not take the status change in within a second");
    }

    fn status_at(&self) -> Option<Instant> {
        self.state.cache.read().map(|c| c.status_at).ok().flatten()
    }
}

#[tokio::test]
async fn primary_answers_200_on_the_promotion_status_without_reading_postgres_or_the_dcs() {
    let node = Node::new();
    let follower = tokio::spawn(refresh(Arc::clone(&node.state)));
    node.status.send_modify(|s| s.loops += 1);
    node.settle(None).await;
    assert_eq!(
        node.get("/primary").await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(node.get("/replica").await.0, StatusCode::OK);

    let before = node.status_at();
    let published = Instant::now();
    node.status.send_modify(promoted);
    let (code, body) = node.get("/primary").await;
    let answered = published.elapsed();
    assert_eq!(code, StatusCode::OK, "{body}");
    eprintln!("status publish to the first 200 on /primary: {answered:?} (in process)");
    // The body agrees with the role answer at once: it is the status's.
    assert_eq!(body["role"], "primary", "{body}");
    assert_eq!(body["timeline"], 2, "{body}");
    assert_eq!(body["cluster_unlocked"], false, "{body}");
    assert_eq!(
        node.get("/replica").await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    // Once the API's follower took the change in, still nothing was read.
    node.settle(before).await;
    let (_, patroni) = node.get("/patroni").await;
    assert_eq!(patroni["role"], "primary", "{patroni}");
    follower.abort();
    assert_eq!(
        node.calls(),
        (0, 0),
        "(PostgreSQL, DCS) calls the API made: it must answer from the engine's status alone"
    );
}

#[tokio::test]
async fn primary_answers_503_from_the_demoting_status_before_postgres_stops() {
    let node = Node::new();
    let follower = tokio::spawn(refresh(Arc::clone(&node.state)));
    node.status.send_modify(promoted);
    node.settle(None).await;
    assert_eq!(node.get("/primary").await.0, StatusCode::OK);
    // The engine's publish before it stops PostgreSQL: the last observation
    // still says primary, the postmaster still runs.
    node.status.send_modify(|s| s.writable = false);
    let (code, body) = node.get("/primary").await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    follower.abort();
    assert_eq!(node.calls(), (0, 0), "(PostgreSQL, DCS) calls the API made");
}

/// Issue 21: an agent resumed after a long pause, whose fence killed
/// PostgreSQL meanwhile, still holds a status that says primary; what
/// PostgreSQL is now decides.
#[tokio::test]
async fn a_status_that_says_primary_does_not_outlive_the_postmaster() {
    let node = Node::new();
    node.status.send_modify(promoted);
    assert_eq!(node.get("/primary").await.0, StatusCode::OK);
    let mut child = std::process::Command::new("true")
        .spawn()
        .expect("spawn true");
    let gone = child.id();
    child.wait().expect("reap true");
    std::fs::write(
        node.data_dir.path().join("postmaster.pid"),
        format!("{gone}\n"),
    )
    .expect("write postmaster.pid");
    assert_eq!(
        node.get("/primary").await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(node.calls(), (0, 0), "(PostgreSQL, DCS) calls the API made");
}
