//! The API in process: the axum router driven with `oneshot`, on an
//! in-memory DCS, a PostgreSQL test double and an engine status fed by hand.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use http_body_util::BodyExt;
use matriarch_dcs::{Dcs, Expected, MemoryDcs};
use matriarch_ha::{EngineRole, EngineStatus};
use matriarch_model::{
    ClusterConfig, KeyLayout, MemberName, ParameterValue, Record, SystemId, Timeline,
};
use matriarch_postgres::{
    BootstrapSpec, LocalState, Operation, PgRole, Postgres, PostgresError, RewindOutcome,
    ServerState, StartAs, StopMode, SyncStandbyNames, Upstream,
};
use serde_json::{json, Value};
use tokio::sync::watch;
use tower::ServiceExt as _;

use super::pg_ops::ReloadPostgres;
use super::routes::{normalize_path, router};
use super::state::{ApiState, Cache, Client};
use crate::config::IpRange;

/// PostgreSQL as the API sees it: what `observe` reports, and the stops
/// and reloads asked of it.
pub(super) struct FakePostgres {
    pub(super) local: Mutex<LocalState>,
    stops: AtomicUsize,
    reloads: AtomicUsize,
    reload_fails: bool,
}

impl FakePostgres {
    pub(super) fn running(role: PgRole) -> Self {
        let mut local = LocalState::empty();
        local.server = ServerState::Running(role);
        FakePostgres {
            local: Mutex::new(local),
            stops: AtomicUsize::new(0),
            reloads: AtomicUsize::new(0),
            reload_fails: false,
        }
    }
}

fn not_here(operation: Operation) -> PostgresError {
    PostgresError::NotRunning { operation }
}

#[async_trait]
impl Postgres for FakePostgres {
    async fn observe(&self) -> Result<LocalState, PostgresError> {
        Ok(self.local.lock().unwrap().clone())
    }
    async fn bootstrap(&self, _: &BootstrapSpec) -> Result<SystemId, PostgresError> {
        Err(not_here(Operation::Bootstrap))
    }
    async fn clone_replica(&self, _: &Upstream) -> Result<(), PostgresError> {
        Err(not_here(Operation::CloneReplica))
    }
    async fn start(&self, _: StartAs) -> Result<(), PostgresError> {
        Err(not_here(Operation::Start))
    }
    async fn stop(&self, _: StopMode) -> Result<(), PostgresError> {
        self.stops.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    async fn promote(&self) -> Result<Timeline, PostgresError> {
        Err(not_here(Operation::Promote))
    }
    async fn demote(&self, _: StopMode, _: Option<Upstream>) -> Result<(), PostgresError> {
        Err(not_here(Operation::Demote))
    }
    async fn follow(&self, _: &Upstream) -> Result<(), PostgresError> {
        Err(not_here(Operation::Follow))
    }
    async fn rewind(&self, _: &Upstream) -> Result<RewindOutcome, PostgresError> {
        Err(not_here(Operation::Rewind))
    }
    async fn set_synchronous_standby_names(
        &self,
        _: &SyncStandbyNames,
    ) -> Result<(), PostgresError> {
        Err(not_here(Operation::SetSynchronousStandbyNames))
    }
}

#[async_trait]
impl ReloadPostgres for FakePostgres {
    async fn reload(&self) -> Result<(), PostgresError> {
        self.reloads.fetch_add(1, Ordering::SeqCst);
        if self.reload_fails {
            return Err(not_here(Operation::Reload));
        }
        Ok(())
    }
}

/// One node's API: `role` under the engine, PostgreSQL running as `pg`.
pub(super) struct Harness {
    pub(super) state: Arc<ApiState>,
    pub(super) pg: Arc<FakePostgres>,
    pub(super) dcs: MemoryDcs,
    pub(super) status: watch::Sender<EngineStatus>,
    _data_dir: tempfile::TempDir,
}

const USER: &str = "admin";
const PASSWORD: &str = "s3cret";

/// Answers `req` with the API of `state` as [`super::serve`] would one from
/// 127.0.0.1: the status, the headers and the body.
pub(super) async fn answer(
    state: &Arc<ApiState>,
    mut req: Request<Body>,
) -> (StatusCode, axum::http::HeaderMap, bytes::Bytes) {
    req.extensions_mut().insert(Client {
        peer: SocketAddr::from(([127, 0, 0, 1], 40_000)),
        verified_cert: false,
    });
    normalize_path(&mut req);
    let response = router(Arc::clone(state)).oneshot(req).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, headers, bytes)
}

/// The Basic credentials of the harness's REST user, encoded.
pub(super) fn basic_token() -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"))
}

pub(super) fn status(role: EngineRole) -> EngineStatus {
    EngineStatus {
        role,
        reason: String::new(),
        leader: None,
        timeline: None,
        wal_position: None,
        dcs_reachable: true,
        paused: false,
        loops: 1,
        config: ClusterConfig::default(),
        failsafe_active: false,
        lock_ttl: Duration::from_secs(30),
        last_failover_possible_loss_bytes: None,
        last_switchover_failure: None,
        writable: role == EngineRole::Leader,
        pending: None,
        creating_replica: false,
        postgres: None,
        view: None,
        view_read_at: None,
    }
}

/// The REST API's state for an in-process test, as member `me` of scope
/// `test` without authentication, over `dcs` and `pg`, serving the engine
/// status `status`; with a data directory whose `postmaster.pid` names this
/// process (a live postmaster), kept alive by the returned guard.
pub(super) fn test_api_state(
    dcs: Arc<dyn Dcs>,
    pg: Arc<dyn Postgres>,
    pg_reload: Arc<dyn ReloadPostgres>,
    status: watch::Receiver<EngineStatus>,
) -> (ApiState, tempfile::TempDir) {
    let data_dir = tempfile::tempdir().expect("a temporary directory");
    std::fs::write(
        data_dir.path().join("postmaster.pid"),
        format!("{}\n", std::process::id()),
    )
    .expect("write postmaster.pid");
    let (reload, _) = tokio::sync::mpsc::channel(1);
    let state = ApiState {
        name: MemberName::new("me").expect("a member name"),
        scope: "test".to_owned(),
        dcs,
        pg,
        pg_reload,
        data_dir: data_dir.path().to_owned(),
        pkglibdir: None,
        ops: Arc::default(),
        status: status.into(),
        auth: None,
        client_certs: false,
        allowlist: Vec::new(),
        tags: RwLock::default(),
        bootstrap_config: ClusterConfig::default(),
        reload,
        cache: RwLock::new(Cache::default()),
        failsafe: None,
        http: crate::http_client::HttpClient::with_tls_files(None, None),
        parameters: Arc::default(),
        restart: None,
        scheduled_restart: Default::default(),
        callbacks: Default::default(),
        backup: None,
    };
    (state, data_dir)
}

impl Harness {
    pub(super) fn new(role: EngineRole, pg: PgRole) -> Self {
        Harness::with(role, FakePostgres::running(pg), |_| {})
    }

    pub(super) fn with(
        role: EngineRole,
        pg: FakePostgres,
        adjust: impl FnOnce(&mut ApiState),
    ) -> Self {
        let dcs = MemoryDcs::new(KeyLayout::new("/service/", "test").unwrap());
        let (status_tx, status_rx) = watch::channel(status(role));
        let pg = Arc::new(pg);
        let (mut state, data_dir) = test_api_state(
            Arc::new(dcs.clone()),
            Arc::clone(&pg) as Arc<dyn Postgres>,
            Arc::clone(&pg) as Arc<dyn ReloadPostgres>,
            status_rx,
        );
        state.auth = Some((
            USER.to_owned(),
            serde_json::from_value(json!(PASSWORD)).unwrap(),
        ));
        adjust(&mut state);
        Harness {
            state: Arc::new(state),
            pg,
            dcs,
            status: status_tx,
            _data_dir: data_dir,
        }
    }

    /// Publishes what PostgreSQL and the DCS hold now, as the engine's loop
    /// does in its status.
    pub(super) async fn refresh(&self) {
        let local = self.state.pg.observe().await.ok().map(Arc::new);
        let view = self.state.dcs.read_view().await.ok().map(Arc::new);
        self.status.send_modify(|s| {
            s.postgres = local;
            s.view = view;
        });
    }

    /// Sends `method path` from 127.0.0.1 as [`super::serve`] would.
    pub(super) async fn call(
        &self,
        method: Method,
        path: &str,
        body: &str,
        auth: bool,
    ) -> (StatusCode, Value, axum::http::HeaderMap) {
        let mut builder = Request::builder().method(method).uri(path);
        if auth {
            builder = builder.header(header::AUTHORIZATION, format!("Basic {}", basic_token()));
        }
        let req = builder.body(Body::from(body.to_owned())).unwrap();
        let (status, headers, bytes) = answer(&self.state, req).await;
        let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (status, value, headers)
    }

    pub(super) async fn get(&self, path: &str) -> StatusCode {
        self.call(Method::GET, path, "", false).await.0
    }
}

#[tokio::test]
async fn role_endpoints_answer_from_the_engine_and_postgres() {
    let primary = Harness::new(EngineRole::Leader, PgRole::Primary);
    primary.refresh().await;
    let replica = Harness::new(EngineRole::Replica, PgRole::Replica);
    replica.refresh().await;
    for (path, on_primary, on_replica) in [
        ("/", 200, 503),
        ("/primary", 200, 503),
        ("/master/", 200, 503),
        ("/read-write", 200, 503),
        ("/leader", 200, 503),
        ("/replica", 503, 200),
        ("/replica?lag=1MB&noloadbalance=false", 503, 200),
        ("/read-only", 200, 200),
        ("/asynchronous", 503, 200),
        ("/async", 503, 200),
        ("/sync", 503, 503),
        ("/quorum", 503, 503),
        ("/standby-leader", 503, 503),
        ("/health", 200, 200),
        ("/readiness", 200, 200),
    ] {
        assert_eq!(
            primary.get(path).await.as_u16(),
            on_primary,
            "{path} on the primary"
        );
        assert_eq!(
            replica.get(path).await.as_u16(),
            on_replica,
            "{path} on a replica"
        );
    }
    // The engine's word counts at once: demoting is not primary any more.
    primary.status.send_modify(|s| s.writable = false);
    assert_eq!(
        primary.get("/primary").await,
        StatusCode::SERVICE_UNAVAILABLE
    );
    // The body is `/patroni`'s, with PostgreSQL's role.
    let (_, body, headers) = replica.call(Method::GET, "/replica", "", false).await;
    assert_eq!(body["role"], "replica", "{body}");
    assert_eq!(headers[header::CONTENT_TYPE], "application/json");
}

#[tokio::test]
async fn head_and_options_answer_with_the_status_alone() {
    let primary = Harness::new(EngineRole::Leader, PgRole::Primary);
    primary.refresh().await;
    for method in [Method::HEAD, Method::OPTIONS] {
        let (status, body, _) = primary.call(method.clone(), "/primary", "", false).await;
        assert_eq!((status, body), (StatusCode::OK, Value::Null), "{method}");
        let (status, _, _) = primary.call(method.clone(), "/replica", "", false).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{method}");
    }
}

#[tokio::test]
async fn unknown_endpoints_and_methods() {
    let node = Harness::new(EngineRole::Leader, PgRole::Primary);
    assert_eq!(node.get("/nothing").await, StatusCode::NOT_FOUND);
    assert_eq!(node.get("/switchover").await, StatusCode::NOT_FOUND);
    for method in [Method::POST, Method::DELETE] {
        let (status, body, _) = node.call(method.clone(), "/patroni", "", true).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method}: {body}");
    }
    let (status, _, _) = node.call(Method::TRACE, "/patroni", "", false).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    // An unknown change is refused as unknown, not as unauthenticated.
    let (status, _, _) = node.call(Method::POST, "/nothing", "", false).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

/// Every endpoint that changes something (and needs authentication).
const CHANGES: [(Method, &str); 8] = [
    (Method::PATCH, "/config"),
    (Method::PUT, "/config"),
    (Method::POST, "/switchover"),
    (Method::POST, "/failover"),
    (Method::POST, "/restart"),
    (Method::POST, "/reload"),
    (Method::POST, "/reinitialize"),
    (Method::POST, "/failsafe"),
];

#[tokio::test]
async fn changes_need_authentication_before_the_body_is_read() {
    let node = Harness::new(EngineRole::Replica, PgRole::Replica);
    for (method, path) in CHANGES {
        let (status, _, headers) = node.call(method.clone(), path, "not json", false).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {path}");
        assert!(
            headers.contains_key(header::WWW_AUTHENTICATE),
            "{method} {path}"
        );
    }
    assert_eq!(node.pg.reloads.load(Ordering::SeqCst), 0);
    // Reads stay open.
    assert_eq!(node.get("/patroni").await, StatusCode::OK);

    let closed = Harness::with(
        EngineRole::Replica,
        FakePostgres::running(PgRole::Replica),
        |s| {
            s.auth = None;
        },
    );
    let (status, _, _) = closed.call(Method::POST, "/reload", "", true).await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "no authentication configured"
    );

    let elsewhere = Harness::with(
        EngineRole::Replica,
        FakePostgres::running(PgRole::Replica),
        |s| {
            s.allowlist = vec![IpRange::parse("10.0.0.0/8").unwrap()];
        },
    );
    let (status, body, _) = elsewhere.call(Method::POST, "/reload", "", true).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("allowlist"),
        "{body}"
    );
}

#[tokio::test]
async fn mutations_answer_with_patronis_status_codes() {
    let node = Harness::new(EngineRole::Leader, PgRole::Primary);
    node.refresh().await;
    let call = |method: Method, path: &'static str, body: &'static str| {
        let node = &node;
        async move { node.call(method, path, body, true).await }
    };
    // Bodies: JSON objects of known fields.
    assert_eq!(
        call(Method::POST, "/switchover", "{").await.0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        call(Method::POST, "/switchover", "[1]").await.0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        call(Method::POST, "/switchover", r#"{"lead": "x"}"#)
            .await
            .0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        call(Method::POST, "/switchover", "{}").await.0,
        StatusCode::BAD_REQUEST,
        "leader is required"
    );
    assert_eq!(
        call(Method::POST, "/failover", "{}").await.0,
        StatusCode::BAD_REQUEST,
        "candidate is required"
    );
    let (status, body, _) = call(Method::POST, "/switchover", r#"{"leader": "other"}"#).await;
    assert_eq!(
        status,
        StatusCode::PRECONDITION_FAILED,
        "not the leader: {body}"
    );
    let (status, _, _) = call(
        Method::POST,
        "/switchover",
        r#"{"leader": "me", "scheduled_at": "2000-01-01T00:00:00Z"}"#,
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "in the past");
    // The engine's handles are not wired in this test: 503.
    assert_eq!(
        call(Method::POST, "/restart", "").await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(
        call(Method::POST, "/failsafe", r#"{"name": "x"}"#).await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    // The leader is not reinitialized, and nothing is stopped.
    assert_eq!(
        call(Method::POST, "/reinitialize", "").await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(node.pg.stops.load(Ordering::SeqCst), 0);
    // Reload goes to PostgreSQL.
    assert_eq!(
        call(Method::POST, "/reload", "").await.0,
        StatusCode::ACCEPTED
    );
    assert_eq!(node.pg.reloads.load(Ordering::SeqCst), 1);
    let failing = Harness::with(
        EngineRole::Leader,
        FakePostgres {
            reload_fails: true,
            ..FakePostgres::running(PgRole::Primary)
        },
        |_| {},
    );
    let (status, _, _) = failing.call(Method::POST, "/reload", "", true).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn bodies_over_the_limit_are_refused_and_the_connection_closed() {
    let node = Harness::new(EngineRole::Leader, PgRole::Primary);
    let big = format!(r#"{{"pad": "{}"}}"#, "x".repeat(super::body::MAX_BODY));
    let (status, _, headers) = node.call(Method::PATCH, "/config", &big, true).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(headers[header::CONNECTION], "close");
}

#[tokio::test]
async fn config_changes_are_checked_then_written() {
    let node = Harness::with(
        EngineRole::Leader,
        FakePostgres::running(PgRole::Primary),
        |s| {
            s.pkglibdir = Some(PathBuf::from(env!("CARGO_MANIFEST_DIR")));
        },
    );
    node.dcs
        .write(&Record::Config(ClusterConfig::default()), Expected::Absent)
        .await
        .unwrap();
    for (body, named) in [
        (
            r#"{"postgresql": {"parameters": {"wal_level": "minimal"}}}"#,
            "wal_level",
        ),
        (
            r#"{"postgresql": {"parameters": {"max_wal_senders": 0}}}"#,
            "max_wal_senders",
        ),
        (
            r#"{"postgresql": {"parameters": {"hot_standby": "off"}}}"#,
            "hot_standby",
        ),
        (
            r#"{"postgresql": {"parameters": {"shared_preload_libraries": "missing_lib"}}}"#,
            "missing_lib",
        ),
        (r#"{"postgresql": {"parameters": {"port": 1}}}"#, "port"),
        (r#"{"ttl": "long"}"#, "ttl"),
    ] {
        let (status, answer, _) = node.call(Method::PATCH, "/config", body, true).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {answer}");
        assert!(
            answer["error"].as_str().unwrap().contains(named),
            "{body}: {answer}"
        );
    }
    // Cargo.toml is a file in the "library directory" this test names.
    let (status, answer, _) = node
        .call(
            Method::PATCH,
            "/config",
            r#"{"postgresql": {"parameters": {"work_mem": "8MB", "shared_preload_libraries": "Cargo.toml"}}}"#,
            true,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let view = node.dcs.read_view().await.unwrap();
    let written = view.config.unwrap().unwrap().value;
    assert_eq!(
        written.postgresql.parameters.get("work_mem"),
        Some(&ParameterValue::Text("8MB".to_owned()))
    );
    // GET /config reads it back.
    let (status, body, _) = node.call(Method::GET, "/config", "", false).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body["postgresql"]["parameters"]["work_mem"], "8MB",
        "{body}"
    );
}

#[tokio::test]
async fn the_view_follows_every_status_change() {
    let node = Harness::new(EngineRole::Replica, PgRole::Replica);
    let refresher = tokio::spawn(super::state::refresh(Arc::clone(&node.state)));
    // A leader appears in the DCS; the next engine loop publishes the view
    // it read with its status.
    let leader = MemberName::new("other").unwrap();
    node.dcs
        .write(&Record::Config(ClusterConfig::default()), Expected::Absent)
        .await
        .unwrap();
    let view = node.dcs.read_view().await.unwrap();
    node.status.send_modify(|s| {
        s.loops += 1;
        s.leader = Some(leader.clone());
        s.view = Some(Arc::new(view));
    });
    let mut seen = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(10)).await;
        let noted = node.state.cache.read().unwrap().status_at.is_some();
        if noted && node.state.node().view.is_some_and(|v| v.config.is_some()) {
            seen = true;
            break;
        }
    }
    refresher.abort();
    assert!(seen, "the status change was noted and its view served");
}

/// RFC 7235: the authentication scheme's name is case-insensitive, so a
/// client sending `basic` (curl with some proxies, hand-written scripts) is
/// authenticated like one sending `Basic`.
#[tokio::test]
async fn the_basic_scheme_is_case_insensitive() {
    let node = Harness::new(EngineRole::Leader, PgRole::Primary);
    let token = basic_token();
    for scheme in ["basic", "BASIC", "Basic"] {
        let req = Request::builder()
            .method(Method::POST)
            .uri("/reload")
            .header(header::AUTHORIZATION, format!("{scheme}  {token}"))
            .body(Body::empty())
            .unwrap();
        let (status, _, _) = answer(&node.state, req).await;
        assert_eq!(status, StatusCode::ACCEPTED, "scheme `{scheme}`");
    }
    assert_eq!(node.pg.reloads.load(Ordering::SeqCst), 3);
}

/// Issue 21: arbitrary bytes as the body and the query string of every
/// endpoint, authenticated or not, never panic the API, never answer 500,
/// and never change the cluster's leadership (no `failover` key, no lock
/// taken) unless a request was accepted.
#[tokio::test]
async fn arbitrary_bytes_to_every_endpoint_are_answered_without_harm() {
    let node = Harness::new(EngineRole::Replica, PgRole::Replica);
    node.refresh().await;
    let token = basic_token();
    let reads = [
        (Method::GET, "/"),
        (Method::GET, "/primary"),
        (Method::GET, "/replica"),
        (Method::GET, "/read-only"),
        (Method::GET, "/asynchronous"),
        (Method::GET, "/sync"),
        (Method::GET, "/quorum"),
        (Method::GET, "/health"),
        (Method::GET, "/liveness"),
        (Method::GET, "/readiness"),
        (Method::GET, "/standby-leader"),
        (Method::GET, "/patroni"),
        (Method::GET, "/cluster"),
        (Method::GET, "/history"),
        (Method::GET, "/config"),
        (Method::GET, "/metrics"),
        (Method::GET, "/failsafe"),
    ];
    let endpoints: Vec<(Method, &str)> = reads.into_iter().chain(CHANGES).collect();
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for case in 0..1500 {
        let (method, path) = &endpoints[(next() % endpoints.len() as u64) as usize];
        let body: Vec<u8> = match next() % 3 {
            0 => Vec::new(),
            1 => (0..next() % 2048).map(|_| next() as u8).collect(),
            _ => {
                let shapes: &[&[u8]] = &[
                    b"{\"leader\": 17}",
                    b"{\"candidate\": \"\\u0000\"}",
                    b"{\"postgresql\": {\"parameters\": [1]}}",
                    b"{\"ttl\": -1}",
                    b"[[[[[[[[[[[[[[[[[[[[",
                    b"{\"scheduled_at\": \"yesterday\"}",
                ];
                shapes[(next() % shapes.len() as u64) as usize].to_vec()
            }
        };
        let query: String = (0..next() % 40)
            .map(|_| format!("%{:02X}", next() as u8))
            .collect();
        let uri = format!("{path}?{query}");
        let mut builder = Request::builder().method(method.clone()).uri(&uri);
        if next() % 2 == 0 {
            builder = builder.header(header::AUTHORIZATION, format!("Basic {token}"));
        }
        let (status, _, _) = answer(&node.state, builder.body(Body::from(body)).unwrap()).await;
        assert_ne!(
            status,
            StatusCode::INTERNAL_SERVER_ERROR,
            "case {case}: {method} {uri}"
        );
        let view = node.dcs.read_view().await.unwrap();
        if status.is_success() {
            // An accepted request may have asked for a failover: start over.
            if view.failover.is_some() {
                node.dcs
                    .delete(&matriarch_model::DcsKey::Failover, Expected::Any)
                    .await
                    .unwrap();
            }
        } else {
            assert!(
                view.failover.is_none() && view.leader.is_none(),
                "case {case}: refused {method} {uri} ({status}) still changed leadership"
            );
        }
    }
}
