//! Patroni parity of the API in process: the `/patroni` WAL fields, the
//! `patroni_*` Prometheus series, `DELETE /switchover`, `DELETE /restart`,
//! the conditions and schedule of `POST /restart`, and `POST /reinitialize`
//! with `from_leader` (Patroni 4's `api.py` answers and status codes).

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use matriarch_dcs::{Dcs, Expected};
use matriarch_ha::EngineRole;
use matriarch_model::{ClusterConfig, FailoverRequest, Lsn, MemberName, Record};
use matriarch_postgres::PgRole;
use serde_json::{json, Value};

use super::router_tests::{answer, basic_token, FakePostgres, Harness};

/// 2024-05-01T10:00:00.25Z in microseconds since the epoch.
const REPLAYED_AT: i64 = 1_714_557_600_250_000;
/// 2024-05-01T09:00:00Z.
const STARTED_AT: i64 = 1_714_554_000_000_000;

/// `method path` with `body`, authenticated; the status and the raw body.
async fn raw(h: &Harness, method: Method, path: &str, body: &str) -> (StatusCode, String) {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header(header::AUTHORIZATION, format!("Basic {}", basic_token()))
        .body(Body::from(body.to_owned()))
        .unwrap();
    let (status, _, bytes) = answer(&h.state, req).await;
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

/// A replica whose replay is paused, with a replay timestamp and a start time.
fn paused_replica() -> FakePostgres {
    let pg = FakePostgres::running(PgRole::Replica);
    {
        let mut local = pg.local.lock().unwrap();
        local.wal.received = Some(Lsn(0x3000_0000));
        local.wal.replayed = Some(Lsn(0x2000_0000));
        local.replay_paused = true;
        local.last_replay_unix_micros = Some(REPLAYED_AT);
        local.postmaster_start_unix_micros = Some(STARTED_AT);
        local.server_version_num = Some(150_002);
    }
    pg
}

#[tokio::test]
async fn patroni_reports_a_replicas_replay_as_patroni_does() {
    let h = Harness::with(EngineRole::Replica, paused_replica(), |_| {});
    h.refresh().await;
    let (status, body) = raw(&h, Method::GET, "/patroni", "").await;
    assert_eq!(status, StatusCode::OK);
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        body["xlog"],
        json!({
            "received_location": 0x3000_0000_u64,
            "replayed_location": 0x2000_0000_u64,
            "replayed_timestamp": "2024-05-01 10:00:00.250000+00:00",
            "paused": true,
        }),
        "{body}"
    );
    assert_eq!(
        body["postmaster_start_time"],
        json!("2024-05-01 09:00:00.000000+00:00"),
        "{body}"
    );
    assert_eq!(body["server_version"], json!(150_002), "{body}");
}

#[tokio::test]
async fn patroni_reports_pause_from_the_engine() {
    let h = Harness::new(EngineRole::Replica, PgRole::Replica);
    h.status.send_modify(|s| s.paused = true);
    h.refresh().await;
    let (_, body) = raw(&h, Method::GET, "/patroni", "").await;
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["pause"], json!(true), "{body}");
}

/// The value of the series `name` in a Prometheus text body, with its labels.
fn series<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    text.lines()
        .find(|l| l.starts_with(&format!("{name}{{")))
        .and_then(|l| l.rsplit_once(' '))
        .map(|(_, v)| v)
}

#[tokio::test]
async fn metrics_carry_patronis_series_with_its_labels() {
    let h = Harness::with(EngineRole::Replica, paused_replica(), |_| {});
    h.refresh().await;
    let (status, text) = raw(&h, Method::GET, "/metrics", "").await;
    assert_eq!(status, StatusCode::OK);
    for (name, value) in [
        ("patroni_postgres_running", "1"),
        ("patroni_postmaster_start_time", "1714554000.0"),
        ("patroni_primary", "0"),
        ("patroni_xlog_location", "0"),
        ("patroni_standby_leader", "0"),
        ("patroni_replica", "1"),
        ("patroni_sync_standby", "0"),
        ("patroni_quorum_standby", "0"),
        ("patroni_xlog_received_location", "805306368"),
        ("patroni_xlog_replayed_location", "536870912"),
        ("patroni_xlog_replayed_timestamp", "1714557600.25"),
        ("patroni_xlog_paused", "1"),
        ("patroni_postgres_server_version", "150002"),
        ("patroni_cluster_unlocked", "1"),
        ("patroni_failsafe_mode_is_active", "0"),
        ("patroni_postgres_timeline", "0"),
        ("patroni_pending_restart", "0"),
        ("patroni_is_paused", "0"),
    ] {
        assert_eq!(series(&text, name), Some(value), "{name} in:\n{text}");
        assert!(
            text.contains(&format!("{name}{{scope=\"test\",name=\"me\"}} ")),
            "{name} with Patroni's labels in:\n{text}"
        );
        assert!(text.contains(&format!("# TYPE {name} ")), "{name} TYPE");
    }
    // Patroni's padded semver: 0.1.0 is 000100.
    let version = series(&text, "patroni_version").expect("patroni_version");
    assert_eq!(version.len(), 6, "{version}");
    assert!(series(&text, "patroni_dcs_last_seen").is_some());
    // matriarch's own series stay.
    assert!(series(&text, "matriarch_replica").is_some(), "{text}");
}

#[tokio::test]
async fn metrics_escape_label_values() {
    let h = Harness::with(EngineRole::Replica, paused_replica(), |s| {
        s.scope = "a\"b\\c\nd".to_owned();
    });
    h.refresh().await;
    let (_, text) = raw(&h, Method::GET, "/metrics", "").await;
    assert!(
        text.contains("patroni_replica{scope=\"a\\\"b\\\\c\\nd\",name=\"me\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("matriarch_replica{scope=\"a\\\"b\\\\c\\nd\",name=\"me\"} 1"),
        "{text}"
    );
    // No sample line is broken by the newline in the scope.
    for line in text.lines() {
        assert!(
            line.starts_with('#') || line.starts_with("patroni_") || line.starts_with("matriarch_"),
            "broken line {line:?}"
        );
    }
}

#[tokio::test]
async fn delete_switchover_cancels_only_a_scheduled_one() {
    let h = Harness::new(EngineRole::Leader, PgRole::Primary);
    let (status, body) = raw(&h, Method::DELETE, "/switchover", "").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body, "no switchover is scheduled");

    let at = (chrono::Utc::now() + chrono::Duration::hours(1)).fixed_offset();
    let request = FailoverRequest {
        leader: Some(MemberName::new("me").unwrap()),
        candidate: None,
        scheduled_at: Some(at),
    };
    h.dcs
        .write(&Record::Failover(request), Expected::Absent)
        .await
        .unwrap();
    let (status, body) = raw(&h, Method::DELETE, "/switchover", "").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, "scheduled switchover deleted");
    let view = h.dcs.read_view().await.unwrap();
    assert!(view.failover.is_none(), "{:?}", view.failover);

    // Without credentials: refused like every change.
    let (status, _, _) = h.call(Method::DELETE, "/switchover", "", false).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn restart_can_be_scheduled_and_cancelled() {
    let h = Harness::new(EngineRole::Replica, PgRole::Replica);
    h.refresh().await;
    let (status, body) = raw(&h, Method::DELETE, "/restart", "").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body, "no restarts are scheduled");

    let at = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let request = json!({"schedule": at, "postgres_version": "15.3"}).to_string();
    let (status, body) = raw(&h, Method::POST, "/restart", &request).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body, "Restart scheduled");
    let (status, body) = raw(&h, Method::POST, "/restart", &request).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body, "Another restart is already scheduled");

    let (_, patroni) = raw(&h, Method::GET, "/patroni", "").await;
    let patroni: Value = serde_json::from_str(&patroni).unwrap();
    assert_eq!(
        patroni["scheduled_restart"]["postgres_version"],
        json!("15.3"),
        "{patroni}"
    );
    assert!(patroni["scheduled_restart"]["schedule"].is_string());

    let (status, body) = raw(&h, Method::DELETE, "/restart", "").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, "scheduled restart deleted");
    let (status, _) = raw(&h, Method::DELETE, "/restart", "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn restart_requests_are_checked_as_patroni_checks_them() {
    let h = Harness::with(EngineRole::Replica, paused_replica(), |_| {});
    h.refresh().await;
    let past = (chrono::Utc::now() - chrono::Duration::hours(1)).to_rfc3339();
    for (request, code, message) in [
        (
            json!({"role": "master"}),
            400,
            "PostgreSQL role should be either primary, standby_leader, or replica",
        ),
        (
            json!({"postgres_version": "15"}),
            400,
            "Invalid PostgreSQL version format: X.Y or X.Y.Z is accepted: 15",
        ),
        (
            json!({"postgres_version": "a.b"}),
            400,
            "Invalid PostgreSQL version: a.b",
        ),
        (
            json!({"timeout": 0}),
            400,
            "Timeout should be a positive number of seconds",
        ),
        (
            json!({"bogus": 1}),
            400,
            "Unknown filter for the scheduled restart: bogus",
        ),
        (
            json!({"schedule": "2030-01-01T10:00:00"}),
            400,
            "Timezone information is mandatory for the scheduled restart",
        ),
        (
            json!({"schedule": past}),
            422,
            "Cannot schedule restart in the past",
        ),
        (
            json!({"schedule": "tomorrow-ish"}),
            422,
            "Unable to parse scheduled timestamp. It should be in an unambiguous format, e.g. ISO 8601",
        ),
        // Conditions that do not hold: no restart (Patroni's 503).
        (
            json!({"role": "primary"}),
            503,
            "restart conditions are not satisfied",
        ),
        (
            json!({"postgres_version": "15.2"}),
            503,
            "restart conditions are not satisfied",
        ),
        (
            json!({"restart_pending": true}),
            503,
            "restart conditions are not satisfied",
        ),
    ] {
        let (status, body) = raw(&h, Method::POST, "/restart", &request.to_string()).await;
        assert_eq!(status.as_u16(), code, "{request}: {body}");
        assert!(body.contains(message), "{request}: {body}");
    }
    // Conditions that hold reach the engine (not wired here: 503 saying so).
    for request in [
        json!({"role": "replica"}),
        json!({"postgres_version": "15.3", "timeout": "30s"}),
        json!({"force": true}),
    ] {
        let (status, body) = raw(&h, Method::POST, "/restart", &request.to_string()).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{request}: {body}");
        assert!(body.contains("not wired"), "{request}: {body}");
    }
}

#[tokio::test]
async fn restart_cannot_be_scheduled_while_paused() {
    let h = Harness::with(EngineRole::Replica, paused_replica(), |s| {
        s.bootstrap_config = ClusterConfig {
            pause: true,
            ..ClusterConfig::default()
        };
    });
    h.refresh().await;
    let at = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let (status, body) = raw(
        &h,
        Method::POST,
        "/restart",
        &json!({ "schedule": at }).to_string(),
    )
    .await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    assert_eq!(body, "Can't schedule restart in the paused state");
}

#[tokio::test]
async fn reinitialize_accepts_from_leader() {
    let h = Harness::new(EngineRole::Leader, PgRole::Primary);
    h.refresh().await;
    let (status, body) = raw(
        &h,
        Method::POST,
        "/reinitialize",
        &json!({"force": true, "from_leader": true}).to_string(),
    )
    .await;
    // Accepted as a request: refused only because this node leads.
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body.contains("I am the leader"), "{body}");
}
