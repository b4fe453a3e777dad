//! Unit tests of the health checks, the connection caps and the merge patch.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use matriarch_ha::EngineRole;
use matriarch_model::{ClusterConfig, ClusterView, Lsn, MemberName, SynchronousMode, Tags};
use matriarch_postgres::{DataDirectoryState, LocalState, PgRole, ServerState};
use serde_json::json;

use super::auth::constant_time_eq;
use super::limits::ConnectionLimits;
use super::limits::DEFAULT_MAX_CONNECTIONS;
use super::limits::{ConnectionGate, Refusal};
use super::mutations::merge_patch;
use super::view::{health_check, parse_size, postmaster_alive, Node};

/// A query string as the health endpoints' `Query` extractor decodes it.
fn query_pairs(query: Option<&str>) -> Vec<(String, String)> {
    let uri: axum::http::Uri = format!("/?{}", query.unwrap_or("")).parse().unwrap();
    axum::extract::Query::<Vec<(String, String)>>::try_from_uri(&uri)
        .unwrap()
        .0
}

#[test]
fn sizes_parse() {
    assert_eq!(parse_size("1024"), Some(1024));
    assert_eq!(parse_size("1MB"), Some(1 << 20));
    assert_eq!(parse_size("16 kB"), Some(16 << 10));
    assert_eq!(parse_size("lots"), None);
    assert_eq!(parse_size("1XB"), None);
}

#[test]
fn queries_decode() {
    assert_eq!(
        query_pairs(Some("lag=1MB&zone=eu%2D1&dc=a+b")),
        vec![
            ("lag".to_owned(), "1MB".to_owned()),
            ("zone".to_owned(), "eu-1".to_owned()),
            ("dc".to_owned(), "a b".to_owned())
        ]
    );
}

#[test]
fn merge_patch_follows_rfc_7396() {
    // RFC 7396 Appendix A, in order: (target, patch, result).
    let cases = [
        (json!({"a": "b"}), json!({"a": "c"}), json!({"a": "c"})),
        (
            json!({"a": "b"}),
            json!({"b": "c"}),
            json!({"a": "b", "b": "c"}),
        ),
        (json!({"a": "b"}), json!({"a": null}), json!({})),
        (
            json!({"a": "b", "b": "c"}),
            json!({"a": null}),
            json!({"b": "c"}),
        ),
        (json!({"a": ["b"]}), json!({"a": "c"}), json!({"a": "c"})),
        (json!({"a": "c"}), json!({"a": ["b"]}), json!({"a": ["b"]})),
        (
            json!({"a": {"b": "c"}}),
            json!({"a": {"b": "d", "c": null}}),
            json!({"a": {"b": "d"}}),
        ),
        (
            json!({"a": [{"b": "c"}]}),
            json!({"a": [1]}),
            json!({"a": [1]}),
        ),
        (json!(["a", "b"]), json!(["c", "d"]), json!(["c", "d"])),
        (json!({"a": "b"}), json!(["c"]), json!(["c"])),
        (json!({"a": "foo"}), json!(null), json!(null)),
        (json!({"a": "foo"}), json!("bar"), json!("bar")),
        (
            json!({"e": null}),
            json!({"a": 1}),
            json!({"e": null, "a": 1}),
        ),
        (
            json!([1, 2]),
            json!({"a": "b", "c": null}),
            json!({"a": "b"}),
        ),
        (
            json!({}),
            json!({"a": {"bb": {"ccc": null}}}),
            json!({"a": {"bb": {}}}),
        ),
    ];
    for (target, patch, expected) in cases {
        let mut merged = target.clone();
        merge_patch(&mut merged, &patch);
        assert_eq!(merged, expected, "{target} + {patch}");
    }
}

#[test]
fn connection_caps_keep_three_quarters_of_the_files() {
    let limits = ConnectionLimits::new(1024, None, None);
    assert_eq!((limits.total, limits.per_ip), (256, 100));
    let limits = ConnectionLimits::new(1 << 20, None, None);
    assert_eq!(limits.total, DEFAULT_MAX_CONNECTIONS);
    let limits = ConnectionLimits::new(1 << 20, Some(500_000), Some(1_000_000));
    assert_eq!((limits.total, limits.per_ip), (1 << 18, 1 << 18));
    let limits = ConnectionLimits::new(u64::MAX, Some(50), Some(10));
    assert_eq!((limits.total, limits.per_ip), (50, 10));
    assert_eq!(ConnectionLimits::new(2, None, None).total, 1);
}

#[test]
fn per_client_and_total_caps_refuse_and_give_places_back() {
    let gate = Arc::new(ConnectionGate::new(ConnectionLimits {
        total: 3,
        per_ip: 2,
    }));
    let a: IpAddr = "127.0.0.2".parse().unwrap();
    let b: IpAddr = "::ffff:127.0.0.3".parse().unwrap();
    let first = gate.admit(a).unwrap();
    let _second = gate.admit(a).unwrap();
    assert_eq!(gate.admit(a).err(), Some(Refusal::PerIp));
    let _third = gate.admit(b).unwrap();
    assert_eq!(
        gate.admit("127.0.0.4".parse().unwrap()).err(),
        Some(Refusal::Total)
    );
    drop(first);
    // The mapped and the plain address are one client.
    let _fourth = gate.admit("127.0.0.3".parse().unwrap()).unwrap();
    assert_eq!(gate.admit(b).err(), Some(Refusal::PerIp));
    assert_eq!(
        gate.admit("127.0.0.5".parse().unwrap()).err(),
        Some(Refusal::Total)
    );
}

use matriarch_model::{LeaderStatus, SyncState};

/// A node as the health checks see it: `role` under the engine,
/// PostgreSQL running as `pg` (or not), everything else quiet.
fn health_node(role: EngineRole, pg: Option<PgRole>) -> Node {
    let mut local = LocalState::empty();
    if let Some(pg) = pg {
        local.server = ServerState::Running(pg);
    }
    Node {
        role,
        leader: None,
        local: Some(local),
        view: Some(ClusterView::default()),
        view_read_at: None,
        tags: Tags::default(),
        paused: false,
        dcs_reachable: true,
        loops: 1,
        status_age: Some(Duration::from_millis(1)),
        timeline: None,
        wal_position: None,
        config: ClusterConfig::default(),
        last_failover_loss: None,
        failsafe_active: false,
        writable: role == EngineRole::Leader && pg == Some(PgRole::Primary),
        postmaster_alive: pg.is_some(),
        creating_replica: false,
    }
}

/// patronictl's `reinit --wait` waits while the state is `creating
/// replica`: from the emptied data directory until the clone is done.
#[test]
fn state_is_creating_replica_while_the_data_directory_is_cloned() {
    let mut node = health_node(EngineRole::Replica, None);
    node.local = Some(LocalState {
        server: ServerState::NotRunning(DataDirectoryState::Empty),
        ..LocalState::empty()
    });
    // No cluster to clone from: nothing is being created.
    assert_eq!(node.state(), "uninitialized");
    node.view = Some(ClusterView::decode(
        1,
        [("initialize", "7300000000000000001"), ("leader", "other")].map(|(key, value)| {
            matriarch_model::RawEntry {
                key: key.to_owned(),
                value: value.as_bytes().to_vec(),
                version: matriarch_model::Version(1),
            }
        }),
    ));
    assert_eq!(node.state(), "creating replica");
    // pg_basebackup runs: whatever the half-written directory looks like.
    node.local = None;
    assert_eq!(node.state(), "unknown");
    node.creating_replica = true;
    assert_eq!(node.state(), "creating replica");
}

fn me() -> MemberName {
    MemberName::new("me").unwrap()
}

fn check(path_and_query: &str, node: &Node) -> Option<bool> {
    let (path, query) = match path_and_query.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path_and_query, None),
    };
    health_check(path, &query_pairs(query), node, &me())
}

fn listed_in_sync(node: &mut Node, mode: SynchronousMode) {
    node.config.synchronous_mode = mode;
    let sync: SyncState =
        serde_json::from_value(json!({"leader": "other", "sync_standby": "me"})).unwrap();
    node.view = Some(ClusterView {
        sync: Some(Ok(matriarch_model::Versioned {
            value: sync,
            version: matriarch_model::Version(1),
        })),
        ..ClusterView::default()
    });
}

#[test]
fn replication_state_is_the_receivers_not_a_tag() {
    let mut replica = health_node(EngineRole::Replica, Some(PgRole::Replica));
    if let Some(local) = replica.local.as_mut() {
        local.receiving = true;
    }
    assert_eq!(
        check("/replica?replication_state=streaming", &replica),
        Some(true)
    );
    assert_eq!(
        check("/replica?replication_state=stopped", &replica),
        Some(false)
    );
    if let Some(local) = replica.local.as_mut() {
        local.receiving = false;
    }
    assert_eq!(
        check("/replica?replication_state=streaming", &replica),
        Some(false)
    );
    // Other keys are still tags.
    assert_eq!(check("/replica?nofailover=false", &replica), Some(true));
    assert_eq!(check("/replica?dc=east", &replica), Some(false));
}

#[test]
fn lag_bounds_asynchronous_and_readiness() {
    let mut replica = health_node(EngineRole::Replica, Some(PgRole::Replica));
    replica.wal_position = Some(Lsn(1_000));
    let status: LeaderStatus = LeaderStatus {
        optime: Lsn(1_000 + 2 * 1024 * 1024),
        ..LeaderStatus::default()
    };
    replica.view = Some(ClusterView {
        status: Some(Ok(matriarch_model::Versioned {
            value: status,
            version: matriarch_model::Version(1),
        })),
        ..ClusterView::default()
    });
    for path in ["/asynchronous", "/async", "/readiness", "/replica"] {
        assert_eq!(
            check(&format!("{path}?lag=1MB"), &replica),
            Some(false),
            "{path}"
        );
        assert_eq!(
            check(&format!("{path}?lag=3MB"), &replica),
            Some(true),
            "{path}"
        );
        assert_eq!(
            check(&format!("{path}?lag=nonsense"), &replica),
            Some(false),
            "{path}"
        );
    }
}

#[test]
fn sync_and_quorum_standbys_follow_the_mode() {
    let primary = health_node(EngineRole::Leader, Some(PgRole::Primary));
    let mut sync = health_node(EngineRole::Replica, Some(PgRole::Replica));
    listed_in_sync(&mut sync, SynchronousMode::On);
    let mut quorum = health_node(EngineRole::Replica, Some(PgRole::Replica));
    listed_in_sync(&mut quorum, SynchronousMode::Quorum);
    let asynchronous = health_node(EngineRole::Replica, Some(PgRole::Replica));
    let table = [
        // path, primary, sync standby, quorum standby, async replica
        ("/sync", false, true, false, false),
        ("/read-only-sync", true, true, false, false),
        ("/quorum", false, false, true, false),
        ("/read-only-quorum", true, false, true, false),
        ("/asynchronous", false, false, false, true),
        ("/standby-leader", false, false, false, false),
        ("/standby_leader", false, false, false, false),
    ];
    for (path, p, s, q, a) in table {
        assert_eq!(check(path, &primary), Some(p), "{path} on the primary");
        assert_eq!(check(path, &sync), Some(s), "{path} on a sync standby");
        assert_eq!(check(path, &quorum), Some(q), "{path} on a quorum standby");
        assert_eq!(
            check(path, &asynchronous),
            Some(a),
            "{path} on an async replica"
        );
    }
}

#[test]
fn primary_answers_from_the_engine_and_a_live_postmaster() {
    // The cache still says replica, but the engine has promoted.
    let mut promoted = health_node(EngineRole::Leader, Some(PgRole::Replica));
    promoted.writable = true;
    promoted.postmaster_alive = true;
    assert_eq!(check("/primary", &promoted), Some(true));
    // The cache still says primary, but the engine is demoting.
    let mut demoting = health_node(EngineRole::Leader, Some(PgRole::Primary));
    demoting.writable = false;
    for path in ["/", "/primary", "/master", "/read-write"] {
        assert_eq!(check(path, &demoting), Some(false), "{path}");
    }
    // Everything says primary but the fence just killed the postmaster.
    let mut fenced = health_node(EngineRole::Leader, Some(PgRole::Primary));
    fenced.postmaster_alive = false;
    for path in ["/", "/primary", "/master", "/read-write"] {
        assert_eq!(check(path, &fenced), Some(false), "{path}");
    }
}

/// Patroni's answers in a standby cluster: its lock holder, a running
/// replica of the source, is the standby leader, never a primary.
#[test]
fn the_standby_leader_answers_standby_leader_not_primary() {
    let standby = matriarch_model::StandbyCluster {
        host: Some("10.0.0.1".to_owned()),
        ..Default::default()
    };
    let mut leader = health_node(EngineRole::Leader, Some(PgRole::Replica));
    leader.config.standby_cluster = Some(Box::new(standby.clone()));
    let mut replica = health_node(EngineRole::Replica, Some(PgRole::Replica));
    replica.config.standby_cluster = Some(Box::new(standby));
    for (path, on_leader, on_replica) in [
        ("/standby-leader", true, false),
        ("/standby_leader", true, false),
        ("/primary", false, false),
        ("/leader", true, false),
        ("/replica", false, true),
        ("/read-only", true, true),
    ] {
        assert_eq!(
            check(path, &leader),
            Some(on_leader),
            "{path} on the standby leader"
        );
        assert_eq!(
            check(path, &replica),
            Some(on_replica),
            "{path} on its replica"
        );
    }
    assert_eq!(leader.patroni_role(), "standby_leader");
    assert_eq!(replica.patroni_role(), "replica");
    // Once the section is removed (and before the promotion) it is neither.
    leader.config.standby_cluster = None;
    assert_eq!(check("/standby-leader", &leader), Some(false));
    assert_eq!(leader.patroni_role(), "replica");
}

#[test]
fn postmaster_liveness_reads_the_pid_file() {
    let dir = tempfile::tempdir().unwrap();
    assert!(!postmaster_alive(dir.path()), "no pid file");
    std::fs::write(
        dir.path().join("postmaster.pid"),
        format!("{}\n/data\n", std::process::id()),
    )
    .unwrap();
    assert!(postmaster_alive(dir.path()), "this process is alive");
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let gone = child.id();
    child.wait().unwrap();
    std::fs::write(dir.path().join("postmaster.pid"), format!("{gone}\n")).unwrap();
    assert!(!postmaster_alive(dir.path()), "a reaped process is dead");
    std::fs::write(dir.path().join("postmaster.pid"), "garbage\n").unwrap();
    assert!(!postmaster_alive(dir.path()), "an unreadable pid");
}

#[test]
fn comparison_is_exact() {
    assert!(constant_time_eq(b"a:b", b"a:b"));
    assert!(!constant_time_eq(b"a:b", b"a:c"));
    assert!(!constant_time_eq(b"a:b", b"a:bc"));
}
