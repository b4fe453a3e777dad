//! The parts of the `/patroni` body (and of the health bodies that carry it)
//! that follow Patroni's `get_postgresql_status` field by field: a replica's
//! `xlog` (received and replayed positions, the replay timestamp, whether
//! replay is paused), `postmaster_start_time`, the exact `server_version`,
//! `replication_state`, `sync_standby`/`quorum_standby` and a
//! `scheduled_restart`.

use matriarch_model::SynchronousMode;
use matriarch_postgres::LocalState;
use serde_json::{json, Value};

use super::state::ApiState;
use super::view::Node;

/// A PostgreSQL `timestamptz` (microseconds since the epoch) as Patroni
/// prints one: Python's `str()` of an aware datetime,
/// `2024-05-01 10:00:00.250000+00:00`.
pub(crate) fn pg_timestamp(micros: i64) -> Option<String> {
    chrono::DateTime::from_timestamp_micros(micros)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S%.6f+00:00").to_string())
}

/// A replica's `xlog`, as Patroni's: `received_location` falls back to the
/// replayed position when nothing was received (archive recovery).
pub(crate) fn replica_xlog(local: &LocalState) -> Value {
    let replayed = local.wal.replayed.map(|l| l.0);
    let received = local
        .wal
        .received
        .or(local.wal.flush)
        .map(|l| l.0)
        .or(replayed);
    json!({
        "received_location": received,
        "replayed_location": replayed,
        "replayed_timestamp": local.last_replay_unix_micros.and_then(pg_timestamp),
        "paused": local.replay_paused,
    })
}

/// `replication_state` as Patroni reports it for a replica.
pub(crate) fn replication_state(local: &LocalState) -> &'static str {
    if local.receiving {
        "streaming"
    } else {
        "in archive recovery"
    }
}

/// Adds Patroni's remaining status fields to a `/patroni` body.
pub(crate) fn extend(state: &ApiState, node: &Node, body: &mut Value) {
    if let Some(local) = &node.local {
        if let Some(started) = local.postmaster_start_unix_micros.and_then(pg_timestamp) {
            body["postmaster_start_time"] = json!(started);
        }
        // The running server's own number (150002), finer than PG_VERSION's.
        if let Some(version) = local.server_version_num {
            body["server_version"] = json!(version);
        }
        if node.is_replica() {
            body["replication_state"] = json!(replication_state(local));
        }
    }
    if node.is_replica() && node.in_sync(&state.name) {
        match node.config.synchronous_mode {
            SynchronousMode::On => body["sync_standby"] = json!(true),
            SynchronousMode::Quorum => body["quorum_standby"] = json!(true),
            _ => {}
        }
    }
    if let Some(restart) = super::restart::scheduled_restart_json(state) {
        body["scheduled_restart"] = restart;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_print_as_patronis() {
        assert_eq!(
            pg_timestamp(1_714_557_600_250_000).as_deref(),
            Some("2024-05-01 10:00:00.250000+00:00")
        );
    }
}
