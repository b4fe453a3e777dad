//! Every record round-trips through its DCS encoding, Patroni's JSON is read,
//! and malformed values are errors for their key only.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use matriarch_model::*;

fn name(n: &str) -> MemberName {
    MemberName::new(n).unwrap()
}

fn raw(key: &str, value: &str, version: u64) -> RawEntry {
    RawEntry {
        key: key.to_owned(),
        value: value.as_bytes().to_vec(),
        version: Version(version),
    }
}

fn sample_member() -> Member {
    let mut member = Member::new(
        name("node1"),
        "postgres://127.0.0.1:5432/postgres",
        "http://127.0.0.1:8008/patroni",
    );
    member.role = Role::Replica;
    member.state = MemberState::Running;
    member.timeline = Some(Timeline(3));
    member.xlog_location = Some(Lsn(0x5000060));
    member.received_lsn = Some(Lsn(0x5000060));
    member.replayed_lsn = Some(Lsn(0x5000000));
    member.replication_state = Some("streaming".into());
    member.version = Some("0.1.0".into());
    member.tags.nosync = true;
    member.tags.failover_priority = 3;
    member
        .tags
        .other
        .insert("zone".into(), serde_json::json!("a"));
    member
}

fn sample_records() -> Vec<Record> {
    vec![
        Record::Config(ClusterConfig {
            ttl: Duration::from_millis(7500),
            synchronous_mode: SynchronousMode::Quorum,
            postgresql: PostgresqlConfig {
                parameters: BTreeMap::from([(
                    "max_connections".to_owned(),
                    ParameterValue::Integer(200),
                )]),
                ..PostgresqlConfig::default()
            },
            ..ClusterConfig::default()
        }),
        Record::Failover(FailoverRequest {
            leader: Some(name("node1")),
            candidate: Some(name("node2")),
            scheduled_at: Some("2026-11-28T10:00:00+01:00".parse().unwrap()),
        }),
        Record::Sync(SyncState {
            leader: Some(name("node1")),
            sync_standbys: BTreeSet::from([name("node2"), name("node3")]),
            quorum: Some(1),
        }),
        Record::Sync(SyncState::default()),
        Record::History(TimelineHistory(vec![
            HistoryEntry {
                timeline: Timeline(1),
                switch_lsn: Lsn(0x3000060),
                reason: "no recovery target specified".into(),
                timestamp: Some("2026-11-27T23:00:00.123456+00:00".parse().unwrap()),
                new_leader: Some(name("node2")),
            },
            HistoryEntry {
                timeline: Timeline(2),
                switch_lsn: Lsn(0x4000000),
                reason: "r".into(),
                timestamp: None,
                new_leader: None,
            },
        ])),
        Record::Status(LeaderStatus {
            optime: Lsn(1234),
            slots: BTreeMap::from([("node2".to_owned(), Lsn(1200))]),
            retain_slots: vec!["node3".into()],
        }),
        Record::Failsafe(Failsafe(BTreeMap::from([(
            name("node1"),
            "http://127.0.0.1:8008/patroni".to_owned(),
        )]))),
    ]
}

#[test]
fn every_record_round_trips() {
    for record in sample_records() {
        let key = record.key();
        let decoded = Record::decode(&key, &record.encode()).unwrap().unwrap();
        assert_eq!(decoded, record, "{key}");
    }
    let member = sample_member();
    assert_eq!(
        decode_member(&member.name, &encode_member(&member)).unwrap(),
        member
    );
    let lock = LeaderLock {
        holder: name("node1"),
    };
    assert_eq!(decode_leader(&encode_leader(&lock)).unwrap(), lock);
    for state in [
        Initialize::InProgress,
        Initialize::Done(SystemId(7221239846937620000)),
    ] {
        assert_eq!(
            decode_initialize(&encode_initialize(&state)).unwrap(),
            state
        );
    }
}

#[test]
fn the_view_decodes_each_key_with_its_version() {
    let member = sample_member();
    let mut entries = vec![
        raw("initialize", "7221239846937620000", 1),
        raw("leader", "node1", 9),
        raw("optime/leader", "123", 3),
        RawEntry {
            key: "members/node1".into(),
            value: encode_member(&member),
            version: Version(7),
        },
    ];
    for (i, record) in sample_records().into_iter().enumerate() {
        entries.push(RawEntry {
            key: record.key().relative_path(),
            value: record.encode(),
            version: Version(100 + i as u64),
        });
    }
    let view = ClusterView::decode(42, entries);
    assert_eq!(view.revision, 42);
    assert!(view.errors().is_empty(), "{:?}", view.errors());
    assert_eq!(view.leader_name(), Some(&name("node1")));
    assert_eq!(
        view.leader.as_ref().unwrap().as_ref().unwrap().version,
        Version(9)
    );
    let stored = view.members["node1"].as_ref().unwrap();
    assert_eq!((&stored.value, stored.version), (&member, Version(7)));
    assert_eq!(
        view.initialize.unwrap().unwrap().value,
        Initialize::Done(SystemId(7221239846937620000))
    );
}

/// Values as Patroni 3 writes them must be readable by matriarch.
#[test]
fn patroni_values_are_read() {
    let view = ClusterView::decode(
        1,
        [
            raw(
                "members/pg-0",
                r#"{"conn_url":"postgres://10.0.0.5:5432/postgres","api_url":"http://10.0.0.5:8008/patroni",
                    "state":"running","role":"master","version":"3.2.2","xlog_location":50331744,
                    "timeline":2,"tags":{"nofailover":false,"clonefrom":true},"pending_restart":true}"#,
                5,
            ),
            raw(
                "config",
                r#"{"ttl":30,"loop_wait":10,"retry_timeout":10,"maximum_lag_on_failover":1048576,
                    "postgresql":{"use_pg_rewind":true,"parameters":{"max_connections":100}},
                    "synchronous_mode":false,"check_timeline":true}"#,
                6,
            ),
            raw("sync", r#"{"leader":"pg-0","sync_standby":null}"#, 7),
            raw("failover", r#"{"leader":"pg-0","member":"pg-1"}"#, 8),
            raw(
                "history",
                r#"[[1,25165984,"no recovery target specified","2024-01-02T03:04:05.678+00:00","pg-0"]]"#,
                9,
            ),
            raw(
                "status",
                r#"{"optime":50331744,"slots":{"pg_1":50331744}}"#,
                10,
            ),
        ],
    );
    assert!(view.errors().is_empty(), "{:?}", view.errors());
    let member = &view.members["pg-0"].as_ref().unwrap().value;
    assert_eq!(member.role, Role::Primary);
    assert!(member.tags.clonefrom);
    assert_eq!(member.wal_position(), Some(Lsn(50331744)));
    let config = &view.config.unwrap().unwrap().value;
    assert_eq!(config.ttl, Duration::from_secs(30));
    assert_eq!(config.synchronous_mode, SynchronousMode::Off);
    assert!(view.sync.unwrap().unwrap().value.sync_standbys.is_empty());
    let history = view.history.unwrap().unwrap().value;
    assert_eq!(history.0[0].new_leader, Some(name("pg-0")));
}

#[test]
fn malformed_values_are_errors_for_their_key_only() {
    let view = ClusterView::decode(
        1,
        [
            raw("leader", "not a/name", 1),
            raw(
                "members/good",
                r#"{"conn_url":"c","api_url":"a","state":"running","role":"replica"}"#,
                2,
            ),
            raw(
                "members/wrongtype",
                r#"{"conn_url":"c","api_url":"a","state":"running","role":"replica","timeline":"2"}"#,
                3,
            ),
            raw(
                "members/badrole",
                r#"{"conn_url":"c","api_url":"a","state":"running","role":"boss"}"#,
                4,
            ),
            raw("members/bad name", r#"{}"#, 5),
            raw("members/notjson", "{", 6),
            raw("config", r#"{"ttl":10,"loop_wait":5,"retry_timeout":5}"#, 7),
            raw("failover", r#"{}"#, 8),
            raw("sync", r#"{"sync_standby":"a,b c"}"#, 9),
            raw("history", r#"[[1,2]]"#, 10),
            raw("status", r#"{"optime":-1}"#, 11),
            raw("initialize", "abc", 12),
            raw("failsafe", r#"[]"#, 13),
        ],
    );
    // The good member is still there.
    assert!(view.members["good"].is_ok());
    let errors = view.errors();
    let keys: BTreeSet<&str> = errors.iter().map(|e| e.key.as_str()).collect();
    let expected: BTreeSet<&str> = [
        "leader",
        "members/wrongtype",
        "members/badrole",
        "members/bad name",
        "members/notjson",
        "config",
        "failover",
        "sync",
        "history",
        "status",
        "initialize",
        "failsafe",
    ]
    .into();
    assert_eq!(keys, expected);
    // A malformed leader key is never mistaken for a free lock.
    assert!(view.leader.is_some() && view.leader_name().is_none());
    let config_error = view.config.as_ref().unwrap().as_ref().unwrap_err();
    assert!(
        config_error.reason.contains("exceeds ttl"),
        "{config_error}"
    );
    for error in errors {
        assert!(
            error.to_string().starts_with("malformed value under `"),
            "{error}"
        );
    }
}

#[test]
fn non_utf8_values_are_errors() {
    let view = ClusterView::decode(
        1,
        [RawEntry {
            key: "leader".into(),
            value: vec![0xff, 0xfe],
            version: Version(1),
        }],
    );
    let err = view.leader.unwrap().unwrap_err();
    assert!(err.reason.contains("UTF-8"), "{err}");
}

#[test]
fn failover_reason_carries_the_possible_loss_and_keeps_patronis_shape() {
    let entry = HistoryEntry {
        timeline: Timeline(2),
        switch_lsn: Lsn(0x300_0000),
        reason: HistoryEntry::failover_reason(&MemberName::new("db1").unwrap(), 8192),
        timestamp: None,
        new_leader: Some(MemberName::new("db2").unwrap()),
    };
    assert_eq!(entry.possible_loss_bytes(), Some(8192));
    assert_eq!(entry.failover_from(), Some(MemberName::new("db1").unwrap()));
    let json = serde_json::to_value(TimelineHistory(vec![entry.clone()])).unwrap();
    assert_eq!(
        json,
        serde_json::json!([[
            2,
            0x300_0000u64,
            "automatic failover from db1: possible loss 8192 bytes",
            null,
            "db2"
        ]])
    );
    let back: TimelineHistory = serde_json::from_value(json).unwrap();
    assert_eq!(back.0[0], entry);
}

#[test]
fn history_reasons_of_other_writers_report_no_loss() {
    for reason in [
        "no recovery target specified",
        "promoted by matriarch",
        "automatic failover from db1",
        "automatic failover from db1: possible loss lots bytes",
    ] {
        let entry = HistoryEntry {
            timeline: Timeline(1),
            switch_lsn: Lsn(1),
            reason: reason.to_owned(),
            timestamp: None,
            new_leader: None,
        };
        assert_eq!(entry.possible_loss_bytes(), None, "{reason}");
    }
}

#[test]
fn history_rows_with_more_fields_than_patronis_are_read() {
    let history: TimelineHistory = serde_json::from_str(
        r#"[[1, 100, "r", "2026-01-01T00:00:00+00:00", "db2", {"possible_loss_bytes": 5}]]"#,
    )
    .unwrap();
    assert_eq!(
        history.0[0].new_leader,
        Some(MemberName::new("db2").unwrap())
    );
    assert!(serde_json::from_str::<TimelineHistory>(r#"[[1, 100]]"#).is_err());
}

#[test]
fn history_timestamps_are_written_as_patroni_writes_them() {
    // Patroni writes `datetime.isoformat()`: microseconds at most, `+00:00`;
    // Python before 3.11 cannot read nanoseconds or `Z`.
    let written =
        chrono::DateTime::parse_from_rfc3339("2026-12-06T11:23:45.123456789+00:00").unwrap();
    let entry = HistoryEntry {
        timeline: Timeline(1),
        switch_lsn: Lsn(100),
        reason: "r".to_owned(),
        timestamp: Some(written),
        new_leader: None,
    };
    let json = serde_json::to_value(TimelineHistory(vec![entry])).unwrap();
    assert_eq!(json[0][3], "2026-12-06T11:23:45.123456+00:00");
}

#[test]
fn failsafe_heartbeat_reads_patronis_body() {
    let heartbeat: FailsafeHeartbeat = serde_json::from_str(
        r#"{"name": "db1", "conn_url": "postgres://db1:5432/postgres", "api_url": "http://db1:8008/patroni", "slots": {}, "timeline": 3, "xlog_location": 50331744}"#,
    )
    .unwrap();
    assert_eq!(heartbeat.name, MemberName::new("db1").unwrap());
    assert_eq!(heartbeat.timeline, Some(Timeline(3)));
    assert_eq!(heartbeat.xlog_location, Some(Lsn(50331744)));
    let minimal: FailsafeHeartbeat = serde_json::from_str(r#"{"name": "db1"}"#).unwrap();
    assert_eq!(minimal.timeline, None);
    assert!(serde_json::from_str::<FailsafeHeartbeat>(r#"{"name": "bad name!"}"#).is_err());
}
