//! `PgController` against real PostgreSQL 15 servers: each test builds its
//! own primary and replicas on free ports in throwaway directories.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use matriarch_model::{MemberName, ParameterValue, SystemId, Timeline};
use matriarch_postgres::{
    BootstrapSpec, DataDirectoryState, PgController, PgControllerConfig, PgRole, Postgres,
    PostgresError, RewindOutcome, ServerState, StandbySyncState, StartAs, StopMode,
    SyncStandbyNames, Upstream,
};
use matriarch_testkit::PgOsUser;
use tokio_postgres::Client;

use support::{kill_postmaster, Node, Passwords};

/// Passwords with quotes, a backslash and a space, which every place that
/// writes them must quote.
const PASSWORDS: Passwords = Passwords {
    superuser: "super-'secret\\",
    replication: "repl secret",
    rewind: "rewind-secret",
};
const SUPERUSER_PASSWORD: &str = PASSWORDS.superuser;
const REPLICATION_PASSWORD: &str = PASSWORDS.replication;
const WAIT: Duration = Duration::from_secs(30);

impl Node {
    fn new(name: &str) -> Node {
        Self::with(name, |_| {})
    }

    fn with(name: &str, adjust: impl FnOnce(&mut PgControllerConfig)) -> Node {
        Node::build(name, |_, dir, port| {
            let mut config = base_config(name, dir, port);
            adjust(&mut config);
            config
        })
    }

    /// `result`'s value, or a panic naming this node and `what` it did.
    fn ok<T>(&self, what: &str, result: Result<T, PostgresError>) -> T {
        result.unwrap_or_else(|err| panic!("{}: {what}: {err}", self.name))
    }

    async fn start(&self, as_role: StartAs) {
        let result = self.ctl.start(as_role).await;
        self.ok("start", result)
    }

    async fn stop(&self, mode: StopMode) {
        let result = self.ctl.stop(mode).await;
        self.ok("stop", result)
    }

    async fn demote(&self, mode: StopMode, follow: Option<Upstream>) {
        let result = self.ctl.demote(mode, follow).await;
        self.ok("demote", result)
    }

    async fn follow(&self, upstream: &Upstream) {
        let result = self.ctl.follow(upstream).await;
        self.ok("follow", result)
    }

    async fn rewind(&self, source: &Upstream) -> RewindOutcome {
        let result = self.ctl.rewind(source).await;
        self.ok("rewind", result)
    }

    async fn clone_replica(&self, source: &Upstream) {
        let result = self.ctl.clone_replica(source).await;
        self.ok("clone", result)
    }

    async fn set_synchronous_standby_names(&self, names: &SyncStandbyNames) {
        let result = self.ctl.set_synchronous_standby_names(names).await;
        self.ok("set synchronous_standby_names", result)
    }

    async fn client(&self) -> Client {
        PASSWORDS.client(&self.name, self.port).await
    }

    /// Inserts `value` into the test table `t`.
    async fn insert(&self, value: &str) {
        self.execute(&format!("INSERT INTO t VALUES ('{value}')"))
            .await;
    }

    /// Waits until the test table `t` holds exactly `values`, in order.
    async fn wait_table(&self, values: &[&str]) {
        self.wait_rows("SELECT v FROM t ORDER BY v", values).await;
    }

    async fn execute(&self, sql: &str) {
        self.client()
            .await
            .batch_execute(sql)
            .await
            .unwrap_or_else(|err| panic!("{sql} on {}: {err:?}", self.name));
    }

    async fn rows(&self, sql: &str) -> Vec<String> {
        self.client()
            .await
            .query(sql, &[])
            .await
            .unwrap_or_else(|err| panic!("{sql} on {}: {err:?}", self.name))
            .iter()
            .map(|row| row.get::<_, String>(0))
            .collect()
    }

    /// Waits until `sql` (one text column) returns exactly `expected`.
    async fn wait_rows(&self, sql: &str, expected: &[&str]) {
        let deadline = Instant::now() + WAIT;
        loop {
            let rows = self.rows(sql).await;
            if rows == expected {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{}: {sql} returned {rows:?}, expected {expected:?}\nserver log:\n{}",
                self.name,
                server_log(self)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn observe_until(
        &self,
        what: &str,
        check: impl Fn(&matriarch_postgres::LocalState) -> bool,
    ) -> matriarch_postgres::LocalState {
        let deadline = Instant::now() + WAIT;
        loop {
            let state = self.ctl.observe().await.expect("observe");
            if check(&state) {
                return state;
            }
            assert!(
                Instant::now() < deadline,
                "{}: never {what}; last state {state:#?}",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn server_log(node: &Node) -> String {
    std::fs::read_to_string(node.ctl.server_log()).unwrap_or_default()
}

fn base_config(name: &str, dir: &Path, port: u16) -> PgControllerConfig {
    let name = MemberName::new(name).expect("member name");
    let full_page_writes = ("full_page_writes", ParameterValue::Bool(true));
    PASSWORDS.config(&name, dir, port, &[full_page_writes])
}

fn spec() -> BootstrapSpec {
    PASSWORDS.spec()
}

/// A primary with a table `t(v text)` holding `common`, and cloned replicas
/// streaming from it with it visible.
async fn cluster(names: &[&str]) -> (Node, Vec<Node>, SystemId) {
    cluster_with(names, &spec()).await
}

/// [`cluster`] bootstrapped with `spec`.
async fn cluster_with(names: &[&str], spec: &BootstrapSpec) -> (Node, Vec<Node>, SystemId) {
    let primary = Node::new(names[0]);
    let system_id = primary.ctl.bootstrap(spec).await.expect("bootstrap");
    primary
        .execute("CREATE TABLE t (v text); INSERT INTO t VALUES ('common')")
        .await;
    let mut replicas = Vec::new();
    for name in &names[1..] {
        let replica = Node::new(name);
        replica.clone_replica(&primary.upstream()).await;

        replica.start(StartAs::ReplicaOf(primary.upstream())).await;
        replica.wait_table(&["common"]).await;
        replicas.push(replica);
    }
    (primary, replicas, system_id)
}

#[tokio::test]
async fn bootstrap_clone_two_replicas_and_replicate_writes() {
    let (primary, replicas, system_id) = cluster(&["pg-a", "pg-b", "pg-c"]).await;
    let state = primary.ctl.observe().await.expect("observe primary");
    assert_eq!(state.server, ServerState::Running(PgRole::Primary));
    assert_eq!(state.timeline, Some(Timeline(1)));
    assert_eq!(state.system_id, Some(system_id));
    assert!(state.wal.write.is_some() && state.wal.flush.is_some());
    assert_eq!(state.upstream, None);
    assert_eq!(state.synchronous_standby_names, Some(SyncStandbyNames::Off));

    primary.insert("second").await;
    for replica in &replicas {
        replica.wait_table(&["common", "second"]).await;
        let state = replica.ctl.observe().await.expect("observe replica");
        assert_eq!(state.server, ServerState::Running(PgRole::Replica));
        assert_eq!(state.system_id, Some(system_id));
        assert_eq!(state.timeline, Some(Timeline(1)));
        assert_eq!(state.upstream, Some(primary.upstream()));
        assert!(state.wal.received.is_some() && state.wal.replayed.is_some());
    }
    let state = primary
        .observe_until("sees both replicas streaming", |s| {
            s.replication.len() == 2
                && s.replication
                    .iter()
                    .all(|r| r.state == matriarch_postgres::WalSenderState::Streaming)
        })
        .await;
    let names: Vec<_> = state
        .replication
        .iter()
        .filter_map(|r| r.member())
        .collect();
    assert_eq!(
        names,
        vec![replicas[0].name.clone(), replicas[1].name.clone()]
    );
    let slots = primary
        .rows("SELECT slot_name::text FROM pg_replication_slots WHERE active ORDER BY 1")
        .await;
    assert_eq!(slots, vec!["pg_b", "pg_c"]);

    // Idempotence and role conflicts.
    // Start primary again.
    primary.start(StartAs::Primary).await;
    // Start replica again.
    replicas[0]
        .start(StartAs::ReplicaOf(primary.upstream()))
        .await;
    // Standby on a replica.
    replicas[0].start(StartAs::Standby).await;
    // Follow again.
    replicas[0].follow(&primary.upstream()).await;
    assert!(matches!(
        replicas[0].ctl.start(StartAs::Primary).await,
        Err(PostgresError::RoleConflict {
            running_as: PgRole::Replica,
            ..
        })
    ));
    assert!(matches!(
        primary.ctl.follow(&replicas[0].upstream()).await,
        Err(PostgresError::RoleConflict {
            running_as: PgRole::Primary,
            ..
        })
    ));
    assert!(matches!(
        replicas[0].ctl.clone_replica(&primary.upstream()).await,
        Err(PostgresError::NotEmpty { .. })
    ));
    assert!(matches!(
        primary.ctl.bootstrap(&spec()).await,
        Err(PostgresError::NotEmpty { .. })
    ));
    // The replication password is in the 0600 upstream file, never in the log.
    for node in [&primary, &replicas[0], &replicas[1]] {
        let log = server_log(node);
        assert!(!log.contains(REPLICATION_PASSWORD) && !log.contains(SUPERUSER_PASSWORD));
    }
}

#[tokio::test]
async fn promote_replica_after_primary_stops_and_the_other_follows() {
    let (old_primary, replicas, _) = cluster(&["pg-d", "pg-e", "pg-f"]).await;
    let (new_primary, other) = (&replicas[0], &replicas[1]);
    old_primary.demote(StopMode::Fast, None).await;
    // Demote is idempotent.
    old_primary.demote(StopMode::Fast, None).await;
    // Stop is idempotent.
    old_primary.stop(StopMode::Fast).await;
    assert!(old_primary.data_dir().join("standby.signal").exists());
    let state = old_primary.ctl.observe().await.expect("observe stopped");
    assert_eq!(
        state.server,
        ServerState::NotRunning(DataDirectoryState::CleanShutdown)
    );
    assert_eq!(state.timeline, Some(Timeline(1)));
    assert!(
        state.wal.flush.is_some(),
        "a stopped node reports its position"
    );

    let timeline = new_primary.ctl.promote().await.expect("promote");
    assert_eq!(timeline, Timeline(2));
    assert_eq!(
        new_primary.ctl.promote().await.expect("promote again"),
        timeline
    );
    let state = new_primary
        .ctl
        .observe()
        .await
        .expect("observe new primary");
    assert_eq!(state.server, ServerState::Running(PgRole::Primary));
    assert_eq!(state.timeline, Some(Timeline(2)));
    assert_eq!(state.upstream, None);

    other.follow(&new_primary.upstream()).await;
    new_primary.insert("after failover").await;
    other.wait_table(&["after failover", "common"]).await;
    let state = other
        .observe_until("follows timeline 2", |s| s.timeline == Some(Timeline(2)))
        .await;
    assert_eq!(state.upstream, Some(new_primary.upstream()));

    // The old primary stopped cleanly before the promotion: nothing to undo.
    let outcome = old_primary.rewind(&new_primary.upstream()).await;
    assert_eq!(outcome, RewindOutcome::NotNeeded);
    // A stopped server is started as a replica.
    old_primary
        .demote(StopMode::Fast, Some(new_primary.upstream()))
        .await;
    old_primary.wait_table(&["after failover", "common"]).await;
    let state = old_primary.ctl.observe().await.expect("observe rejoined");
    assert_eq!(state.server, ServerState::Running(PgRole::Replica));
    assert_eq!(state.upstream, Some(new_primary.upstream()));

    // A switchover back: demote the running primary straight into a replica
    // of the other member, which is promoted after it stopped.
    new_primary.demote(StopMode::Fast, None).await;
    assert_eq!(other.ctl.promote().await.expect("promote"), Timeline(3));
    // Start the demoted primary as a replica.
    new_primary
        .demote(StopMode::Fast, Some(other.upstream()))
        .await;
    old_primary.follow(&other.upstream()).await;
    other.insert("timeline 3").await;
    for node in [new_primary, &old_primary] {
        node.wait_table(&["after failover", "common", "timeline 3"])
            .await;
    }
}

/// Stops the replica, writes `diverged` on the primary, stops it (or kills
/// it with `crash`), then
/// promotes the replica (started with no upstream) and writes `new` there.
async fn diverge(primary: &Node, replica: &Node, crash: bool) {
    // Cut replication.
    replica.stop(StopMode::Fast).await;
    primary.insert("diverged").await;
    if crash {
        kill_postmaster(&primary.data_dir(), libc::SIGKILL).expect("postmaster pid");
        primary.observe_until("crashed", |s| s.crashed()).await;
    } else {
        primary.stop(StopMode::Fast).await;
    }
    replica.start(StartAs::Standby).await;
    let state = replica.ctl.observe().await.expect("observe standby");
    assert_eq!(state.server, ServerState::Running(PgRole::Replica));
    assert_eq!(state.upstream, None);
    assert!(
        state.wal.replayed.is_some(),
        "a standby reports its position"
    );
    assert_eq!(replica.ctl.promote().await.expect("promote"), Timeline(2));
    replica.insert("new").await;
}

#[tokio::test]
async fn crashed_diverged_old_primary_is_rewound_and_follows() {
    let (old_primary, replicas, _) = cluster(&["pg-g", "pg-h"]).await;
    let new_primary = &replicas[0];
    diverge(&old_primary, new_primary, true).await;
    assert!(matches!(
        old_primary.ctl.promote().await,
        Err(PostgresError::NotRunning { .. })
    ));

    let outcome = old_primary.rewind(&new_primary.upstream()).await;
    assert_eq!(outcome, RewindOutcome::Rewound);
    let state = old_primary.ctl.observe().await.expect("observe rewound");
    assert_eq!(
        state.server,
        ServerState::NotRunning(DataDirectoryState::CleanShutdown)
    );
    assert_eq!(state.upstream, Some(new_primary.upstream()));
    old_primary
        .start(StartAs::ReplicaOf(new_primary.upstream()))
        .await;
    old_primary.wait_table(&["common", "new"]).await;
    old_primary
        .observe_until("runs as a replica on timeline 2", |s| {
            s.role() == Some(PgRole::Replica) && s.timeline == Some(Timeline(2))
        })
        .await;
}

#[tokio::test]
async fn rewind_without_the_wal_it_needs_is_impossible() {
    let (old_primary, replicas, _) = cluster(&["pg-i", "pg-j"]).await;
    let new_primary = &replicas[0];
    diverge(&old_primary, new_primary, false).await;
    let wal = old_primary.data_dir().join("pg_wal");
    for entry in std::fs::read_dir(&wal).expect("pg_wal") {
        let path = entry.expect("entry").path();
        if path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.len() == 24)
        {
            std::fs::remove_file(&path).expect("remove WAL segment");
        }
    }
    let outcome = old_primary.rewind(&new_primary.upstream()).await;
    let RewindOutcome::Impossible { reason } = outcome else {
        panic!("expected Impossible, got {outcome:?}");
    };
    assert!(reason.contains("pg_wal"), "{reason}");
    assert!(old_primary.data_dir().join("PG_VERSION").exists());
    assert!(old_primary.data_dir().join("base").is_dir());
}

#[tokio::test]
async fn sigkill_of_the_postmaster_is_observed_as_a_crash() {
    let (primary, _, system_id) = cluster(&["pg-k"]).await;
    kill_postmaster(&primary.data_dir(), libc::SIGKILL).expect("postmaster pid");
    let state = primary
        .observe_until("observed as crashed", |s| {
            s.server == ServerState::NotRunning(DataDirectoryState::Crashed)
        })
        .await;
    assert!(state.crashed());
    assert_eq!(state.system_id, Some(system_id));
    assert_eq!(state.timeline, Some(Timeline(1)));
    // Stop of a dead server.
    primary.stop(StopMode::Fast).await;

    // Restart after crash.
    primary.start(StartAs::Primary).await;
    assert_eq!(primary.rows("SELECT v FROM t").await, vec!["common"]);

    // Parameters change on the running controller: by reload, or by
    // restart for those read only at start (reported as pending until then).
    let mut parameters = primary.ctl.parameters();
    parameters.insert(
        "work_mem".to_owned(),
        ParameterValue::Text("7MB".to_owned()),
    );
    parameters.insert("max_connections".to_owned(), ParameterValue::Integer(31));
    assert!(primary.ctl.set_parameters(parameters.clone()).expect("set"));
    assert!(!primary
        .ctl
        .set_parameters(parameters.clone())
        .expect("same"));
    primary.ctl.reload().await.expect("reload");
    primary.wait_rows("SHOW work_mem", &["7MB"]).await;
    assert_eq!(primary.rows("SHOW max_connections").await, vec!["30"]);
    assert_eq!(
        primary.ctl.pending_restart().await.expect("pending"),
        vec!["max_connections".to_owned()]
    );
    // A parameter matriarch manages is refused and changes nothing.
    let mut reserved = parameters.clone();
    reserved.insert("port".to_owned(), ParameterValue::Integer(1));
    assert!(matches!(
        primary.ctl.set_parameters(reserved),
        Err(PostgresError::InvalidConfig { .. })
    ));
    assert_eq!(primary.ctl.parameters(), parameters);
    primary.ctl.restart(StopMode::Fast).await.expect("restart");
    assert_eq!(primary.rows("SHOW max_connections").await, vec!["31"]);
    assert!(primary
        .ctl
        .pending_restart()
        .await
        .expect("pending")
        .is_empty());
    let state = primary.ctl.observe().await.expect("observe");
    assert_eq!(state.server, ServerState::Running(PgRole::Primary));
    primary.stop(StopMode::Immediate).await;
    let state = primary.ctl.observe().await.expect("observe");
    assert!(state.crashed(), "an immediate stop is a crash: {state:?}");
}

#[tokio::test]
async fn demote_kills_a_primary_that_does_not_stop() {
    let primary = Node::with("pg-s", |config| {
        config.timeouts.stop = Duration::from_secs(2);
    });
    primary.ctl.bootstrap(&spec()).await.expect("bootstrap");
    let client = primary.client().await;
    // A frozen postmaster ignores shutdown requests.
    let pid = kill_postmaster(&primary.data_dir(), libc::SIGSTOP).expect("postmaster pid");
    let started = Instant::now();
    // Demote escalates to SIGKILL.
    primary.demote(StopMode::Fast, None).await;
    assert!(started.elapsed() < Duration::from_secs(20));
    // SAFETY: kill(2) with signal 0 only probes the (dead) postmaster's pid.
    let gone = unsafe { libc::kill(pid, 0) } != 0
        || std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z"));
    assert!(gone, "the postmaster still runs");
    assert!(
        client
            .batch_execute("CREATE TABLE written (i int)")
            .await
            .is_err(),
        "a session of the killed primary still accepts writes"
    );
    assert!(primary.data_dir().join("standby.signal").exists());
    let state = primary.ctl.observe().await.expect("observe");
    assert!(state.crashed(), "{state:?}");
}

#[tokio::test]
async fn synchronous_standby_makes_commits_wait_for_it() {
    let (primary, replicas, _) = cluster(&["pg-l", "pg-m"]).await;
    let replica = &replicas[0];
    let names = SyncStandbyNames::first(1, ["pg-m"]).expect("names");
    primary.set_synchronous_standby_names(&names).await;
    // Set sync again.
    primary.set_synchronous_standby_names(&names).await;
    let state = primary
        .observe_until("reports pg-m as sync", |s| {
            s.replication
                .iter()
                .any(|r| r.application_name == "pg-m" && r.sync_state == StandbySyncState::Sync)
        })
        .await;
    assert_eq!(state.synchronous_standby_names, Some(names.clone()));
    primary.insert("sync 1").await;

    replica.stop(StopMode::Fast).await;
    let client = primary.client().await;
    let insert = tokio::spawn(async move {
        client
            .batch_execute("INSERT INTO t VALUES ('sync 2')")
            .await
            .map(|()| client)
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !insert.is_finished(),
        "the commit did not wait for the stopped standby"
    );

    replica.start(StartAs::ReplicaOf(primary.upstream())).await;
    tokio::time::timeout(WAIT, insert)
        .await
        .expect("the commit completes once the standby is back")
        .expect("task")
        .expect("insert");
    replica.wait_table(&["common", "sync 1", "sync 2"]).await;

    primary
        .set_synchronous_standby_names(&SyncStandbyNames::Off)
        .await;
    assert_eq!(
        primary
            .ctl
            .observe()
            .await
            .expect("observe")
            .synchronous_standby_names,
        Some(SyncStandbyNames::Off)
    );
    let invalid = SyncStandbyNames::First {
        count: 0,
        names: vec!["x".to_owned()],
    };
    assert!(matches!(
        primary.ctl.set_synchronous_standby_names(&invalid).await,
        Err(PostgresError::InvalidSyncStandbyNames { .. })
    ));
}

#[tokio::test]
async fn foreign_data_directory_is_refused_and_left_alone() {
    let user = PgOsUser::detect().expect("OS user");
    if !user.switches_user() {
        eprintln!("skipped: needs root to own a directory as another user");
        return;
    }
    // Owned by root, not by the PostgreSQL OS user.
    let foreign = tempfile::tempdir().expect("tempdir");
    std::fs::write(foreign.path().join("precious"), "keep me").expect("write");
    let node = Node::with("pg-n", |config| config.data_dir = foreign.path().to_owned());
    let is_foreign = |result: Result<(), PostgresError>| {
        matches!(result, Err(PostgresError::ForeignDataDirectory { .. }))
    };
    let err = node.ctl.bootstrap(&spec()).await.expect_err("bootstrap");
    assert!(err.to_string().contains("owned by uid 0"), "{err}");
    assert!(is_foreign(node.ctl.clone_replica(&node.upstream()).await));
    assert!(is_foreign(node.ctl.start(StartAs::Primary).await));
    assert!(is_foreign(node.ctl.follow(&node.upstream()).await));
    assert!(matches!(
        node.ctl.observe().await,
        Err(PostgresError::ForeignDataDirectory { .. })
    ));
    assert!(matches!(
        node.ctl.rewind(&node.upstream()).await,
        Err(PostgresError::ForeignDataDirectory { .. })
    ));
    assert_eq!(
        std::fs::read_to_string(foreign.path().join("precious")).expect("read"),
        "keep me"
    );
}

#[tokio::test]
async fn missing_binary_is_named_and_nothing_is_created() {
    let node = Node::with("pg-o", |config| {
        config.bin_dir = "/nonexistent/pg/bin".into()
    });
    let err = node.ctl.bootstrap(&spec()).await.expect_err("bootstrap");
    assert!(
        matches!(&err, PostgresError::MissingProgram { program, .. } if program == "initdb"),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("/nonexistent/pg/bin/initdb"),
        "{err}"
    );
    assert!(!node.data_dir().exists());
    assert!(matches!(
        node.ctl.clone_replica(&node.upstream()).await,
        Err(PostgresError::MissingProgram { .. })
    ));
}

#[tokio::test]
async fn wrong_system_id_and_bad_parameters_are_refused_without_deleting_data() {
    let (primary, _, system_id) = cluster(&["pg-p"]).await;
    primary.ctl.stop(StopMode::Fast).await.expect("stop");
    let dir = primary.dir.path().to_owned();
    let port = primary.port;

    let mut config = base_config("pg-p", &dir, port);
    config.expected_system_id = Some(SystemId(system_id.0 ^ 1));
    let other_cluster = PgController::new(config).expect("controller");
    let err = other_cluster
        .start(StartAs::Primary)
        .await
        .expect_err("start with a wrong system id");
    assert!(
        matches!(err, PostgresError::SystemIdMismatch { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains(&system_id.to_string()), "{err}");
    assert!(matches!(
        other_cluster.rewind(&primary.upstream()).await,
        Err(PostgresError::SystemIdMismatch { .. })
    ));
    // An operator corrects the `initialize` key: the engine passes the new
    // id on and the same controller (no agent restart) accepts the data.
    other_cluster.set_cluster_system_id(system_id);
    other_cluster
        .start(StartAs::Primary)
        .await
        .expect("start once the cluster's system id is corrected");
    other_cluster.stop(StopMode::Fast).await.expect("stop");

    let mut config = base_config("pg-p", &dir, port);
    config.parameters.insert(
        "shared_buffers".to_owned(),
        ParameterValue::Text("banana".to_owned()),
    );
    let bad_value = PgController::new(config).expect("controller");
    let err = bad_value
        .start(StartAs::Primary)
        .await
        .expect_err("start with a bad parameter value");
    assert!(err.to_string().contains("shared_buffers"), "{err}");

    let mut config = base_config("pg-p", &dir, port);
    config
        .parameters
        .insert("port".to_owned(), ParameterValue::Integer(1));
    assert!(matches!(
        PgController::new(config),
        Err(PostgresError::InvalidConfig { .. })
    ));

    // Another cluster is neither a rewind source nor a clone source.
    let stranger = Node::new("pg-q");
    let stranger_id = stranger.ctl.bootstrap(&spec()).await.expect("bootstrap");
    let rewound = primary.ctl.rewind(&stranger.upstream()).await;
    assert!(
        matches!(rewound, Err(PostgresError::SystemIdMismatch { .. })),
        "rewind from another cluster: {rewound:?}"
    );
    let clone = Node::with("pg-r", |config| config.expected_system_id = Some(system_id));
    let cloned = clone.ctl.clone_replica(&stranger.upstream()).await;
    assert!(
        matches!(cloned, Err(PostgresError::SystemIdMismatch { found, .. }) if found == stranger_id),
        "clone from another cluster: {cloned:?}"
    );
    let leftovers = std::fs::read_dir(clone.data_dir())
        .expect("data dir")
        .count();
    assert_eq!(leftovers, 0, "the refused copy was removed");

    // Nothing was deleted: the cluster starts with the right configuration.
    assert!(primary.data_dir().join("PG_VERSION").exists());
    primary.ctl.start(StartAs::Primary).await.expect("start");
    assert_eq!(primary.rows("SELECT v FROM t").await, vec!["common"]);
}

/// A standby that crashed is repaired without ending its recovery: it can
/// follow again, and once promoted the old primary can be rewound onto it
/// (single-user crash recovery would have written a checkpoint of its own
/// on the old timeline, a history the old primary never had).
#[tokio::test]
async fn a_crashed_standby_recovers_as_a_standby_and_can_later_lead() {
    let (primary, replicas, _) = cluster(&["pg-m", "pg-n"]).await;
    let standby = &replicas[0];
    kill_postmaster(&standby.data_dir(), libc::SIGKILL).expect("postmaster pid");
    standby
        .observe_until("observed as crashed", |s| {
            s.server == ServerState::NotRunning(DataDirectoryState::Crashed)
        })
        .await;
    // Rewind of a crashed standby.
    let outcome = standby.rewind(&primary.upstream()).await;
    assert_eq!(outcome, RewindOutcome::NotNeeded);
    // Start the repaired standby.
    standby.start(StartAs::ReplicaOf(primary.upstream())).await;
    primary.insert("after crash").await;
    standby.wait_table(&["after crash", "common"]).await;

    // The standby becomes primary; the old primary comes back by rewind.
    primary.stop(StopMode::Fast).await;
    standby.ctl.promote().await.expect("promote");
    standby.insert("new").await;
    // Rewind the old primary.
    let outcome = primary.rewind(&standby.upstream()).await;
    assert!(
        matches!(outcome, RewindOutcome::Rewound | RewindOutcome::NotNeeded),
        "{outcome:?}"
    );
    // Start the old primary as a replica.
    primary.start(StartAs::ReplicaOf(standby.upstream())).await;
    primary.wait_table(&["after crash", "common", "new"]).await;
}

/// A fresh clone that never started cannot have diverged from its source:
/// rewinding it onto that source is not needed (pg_rewind would refuse its
/// backup_label); onto another member it is impossible.
#[tokio::test]
async fn an_unstarted_clone_needs_no_rewind_onto_its_source() {
    let (primary, _, _) = cluster(&["pg-o"]).await;
    let clone = Node::new("pg-p");
    clone.clone_replica(&primary.upstream()).await;
    let outcome = clone.ctl.rewind(&primary.upstream()).await.expect("rewind");
    assert_eq!(outcome, RewindOutcome::NotNeeded);
    let stranger = Upstream {
        member: MemberName::new("pg-q").expect("name"),
        ..primary.upstream()
    };
    let outcome = clone.ctl.rewind(&stranger).await.expect("rewind");
    assert!(
        matches!(outcome, RewindOutcome::Impossible { .. }),
        "{outcome:?}"
    );
}

/// Builds primary A and replicas B and C (bootstrapped with `spec`),
/// promotes B onto timeline 2 with no checkpoint on C, makes C stream
/// timeline 2 from B, then stops B. Returns C (and the others, to keep them)
/// once C's walreceiver is gone.
async fn replica_whose_upstream_stopped(
    names: &[&str; 3],
    spec: &BootstrapSpec,
) -> (Node, Vec<Node>) {
    let (old_primary, mut replicas, _) = cluster_with(names, spec).await;
    let replica = replicas.pop().expect("C");
    let promoted = replicas.pop().expect("B");
    old_primary.ctl.stop(StopMode::Fast).await.expect("stop A");
    assert_eq!(
        promoted.ctl.promote().await.expect("promote B"),
        Timeline(2)
    );
    // C follows B.
    replica.follow(&promoted.upstream()).await;
    promoted.insert("timeline 2").await;
    replica.wait_table(&["common", "timeline 2"]).await;
    replica
        .wait_rows(
            "SELECT received_tli::text FROM pg_stat_wal_receiver WHERE status = 'streaming'",
            &["2"],
        )
        .await;
    // No CHECKPOINT on C: its control file still shows timeline 1.
    assert_eq!(
        replica
            .rows("SELECT timeline_id::text FROM pg_control_checkpoint()")
            .await,
        vec!["1"],
        "the scenario needs a replica whose last restartpoint is on timeline 1"
    );
    promoted.ctl.stop(StopMode::Fast).await.expect("stop B");
    replica
        .wait_rows("SELECT count(*)::text FROM pg_stat_wal_receiver", &["0"])
        .await;
    (replica, vec![old_primary, promoted])
}

/// Observes `replica` for a while (its walreceiver keeps retrying the dead
/// upstream) and returns the timelines it reported, checking that it stays a
/// replica that receives nothing.
async fn timelines_reported(replica: &Node) -> Vec<Option<Timeline>> {
    let mut timelines = Vec::new();
    for _ in 0..10 {
        let state = replica.ctl.observe().await.expect("observe C");
        assert_eq!(state.server, ServerState::Running(PgRole::Replica));
        assert!(!state.receiving, "{state:?}");
        timelines.push(state.timeline);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    timelines
}

/// A replica that followed a promoted member onto timeline 2 and then lost
/// it (no walreceiver any more, no restartpoint since the switch) still
/// reports timeline 2, the one it replays on: reporting the timeline of its
/// last restartpoint made candidates refuse to race and survivors rewind
/// against a dead node.
#[tokio::test]
async fn a_replica_whose_upstream_stopped_reports_the_timeline_it_replays() {
    let (replica, _others) =
        replica_whose_upstream_stopped(&["pg-u", "pg-v", "pg-w"], &spec()).await;
    for timeline in timelines_reported(&replica).await {
        assert_eq!(
            timeline,
            Some(Timeline(2)),
            "a replica replaying timeline 2 without its upstream reported {timeline:?}"
        );
    }
    // And it is what a promotion starts from: the next timeline is 3.
    assert_eq!(replica.ctl.promote().await.expect("promote C"), Timeline(3));
}

/// The same when the operator's pg_hba.conf asks local replication
/// connections for a SCRAM password: the controller authenticates as the
/// superuser.
#[tokio::test]
async fn the_replay_timeline_is_read_when_local_replication_needs_a_scram_password() {
    let spec = BootstrapSpec {
        pg_hba: vec!["local replication all scram-sha-256".to_owned()],
        ..spec()
    };
    let (replica, _others) = replica_whose_upstream_stopped(&["pg-x", "pg-y", "pg-z"], &spec).await;
    assert_eq!(
        timelines_reported(&replica).await,
        vec![Some(Timeline(2)); 10]
    );
}

/// When pg_hba.conf refuses the local replication connection, observe still
/// works: the replica reports the timeline SQL can see (which may lag behind
/// a timeline switch until the next restartpoint) instead of failing.
#[tokio::test]
async fn observe_still_works_when_pg_hba_refuses_local_replication() {
    let spec = BootstrapSpec {
        pg_hba: vec!["local replication all reject".to_owned()],
        ..spec()
    };
    let (replica, _others) =
        replica_whose_upstream_stopped(&["pg-ra", "pg-rb", "pg-rc"], &spec).await;
    for timeline in timelines_reported(&replica).await {
        assert!(matches!(timeline, Some(Timeline(1 | 2))), "{timeline:?}");
    }
    replica.execute("CHECKPOINT").await;
    // A restartpoint moves the control file onto timeline 2.
    assert_eq!(
        replica.ctl.observe().await.expect("observe").timeline,
        Some(Timeline(2))
    );
}

/// Every regular file under `root` whose contents hold `needle` and that
/// the OS user's group or others may read.
fn readable_by_others_holding(root: &Path, needle: &str) -> Vec<String> {
    use std::os::unix::fs::PermissionsExt;
    let mut found = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                stack.push(entry.path());
            } else if meta.is_file() && meta.permissions().mode() & 0o044 != 0 {
                let bytes = std::fs::read(entry.path()).unwrap_or_default();
                if String::from_utf8_lossy(&bytes).contains(needle) {
                    found.push(entry.path().display().to_string());
                }
            }
        }
    }
    found
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .unwrap_or_else(|err| panic!("stat {}: {err}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// A replica that follows a new upstream reloads its configuration, and
/// PostgreSQL logs the new `primary_conninfo`: the replication password
/// must not be in it (it lives in a 0600 passfile), nor in any file others
/// can read, and streaming still works.
#[tokio::test]
async fn following_a_new_upstream_keeps_the_replication_password_off_disk() {
    let (old_primary, replicas, _) = cluster(&["pg-p1", "pg-p2", "pg-p3"]).await;
    let (new_primary, other) = (&replicas[0], &replicas[1]);
    old_primary.demote(StopMode::Fast, None).await;
    new_primary.ctl.promote().await.expect("promote");
    other.follow(&new_primary.upstream()).await;
    new_primary.insert("followed").await;
    other.wait_table(&["common", "followed"]).await;
    let conninfo = other.rows("SHOW primary_conninfo").await.join("");
    assert!(
        !conninfo.contains(REPLICATION_PASSWORD),
        "primary_conninfo holds the password: {conninfo}"
    );
    for node in [&old_primary, new_primary, other] {
        let log = server_log(node);
        assert!(
            !log.contains(REPLICATION_PASSWORD),
            "{}: the replication password is in the server log:\n{log}",
            node.name
        );
        assert_eq!(
            mode(node.ctl.server_log()),
            0o600,
            "{}: server log mode",
            node.name
        );
        let leaked = readable_by_others_holding(node.dir.path(), REPLICATION_PASSWORD);
        assert!(
            leaked.is_empty(),
            "{}: readable files hold the password: {leaked:?}",
            node.name
        );
        let upstream_conf = node.data_dir().join(matriarch_postgres::UPSTREAM_CONF_FILE);
        let text = std::fs::read_to_string(&upstream_conf).unwrap_or_default();
        assert!(
            !text.contains(REPLICATION_PASSWORD),
            "{}: {} holds the password",
            node.name,
            upstream_conf.display()
        );
    }
    let passfile = conninfo
        .split_whitespace()
        .find_map(|pair| pair.strip_prefix("passfile="))
        .map(|v| v.trim_matches('\'').to_owned())
        .unwrap_or_else(|| panic!("no passfile in primary_conninfo: {conninfo}"));
    assert_eq!(mode(Path::new(&passfile)), 0o600, "passfile mode");
}

/// pg_ctl appends to a server log that may already exist with a looser mode
/// (created by hand or by an older version): it is made 0600 on start.
#[tokio::test]
async fn an_existing_server_log_is_made_private_on_start() {
    use std::os::unix::fs::PermissionsExt;
    let node = Node::new("pg-log");
    let log = node.ctl.server_log().to_path_buf();
    std::fs::write(&log, "").expect("create the server log");
    std::fs::set_permissions(&log, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    node.ctl.bootstrap(&spec()).await.expect("bootstrap");
    node.ctl.start(StartAs::Primary).await.expect("start");
    assert_eq!(mode(&log), 0o600, "server log mode after start");
}
