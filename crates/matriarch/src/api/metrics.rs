//! Prometheus text for `GET /metrics`: Patroni's `patroni_*` series, built
//! as Patroni builds them from its `/patroni` status, so that dashboards
//! and alerts written for Patroni work; matriarch's own series follow
//! (`super::status`). Label values are escaped per the text format.

use std::fmt::Write as _;

use serde_json::Value;

use super::state::ApiState;
use super::view::Node;

/// A label value escaped for the Prometheus text format: backslash, double
/// quote and newline.
pub(crate) fn escape_label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// `scope="…",name="…"`, escaped.
pub(crate) fn labels(scope: &str, name: &str) -> String {
    format!(
        "scope=\"{}\",name=\"{}\"",
        escape_label(scope),
        escape_label(name)
    )
}

/// Patroni's padded semver without periods: 4.1.0 is `040100`.
fn padded_semver(version: &str) -> String {
    version
        .split('.')
        .map(|part| {
            let digits: String = part.chars().take_while(char::is_ascii_digit).collect();
            format!("{digits:0>2}")
        })
        .collect()
}

/// Seconds since the epoch as Python prints a float (`1714554000.0`,
/// `1714557600.25`); `0` when unknown, as Patroni.
fn epoch_seconds(micros: Option<i64>) -> String {
    match micros {
        Some(micros) => {
            let seconds = micros as f64 / 1_000_000.0;
            if seconds.fract() == 0.0 {
                format!("{seconds:.1}")
            } else {
                format!("{seconds}")
            }
        }
        None => "0".to_owned(),
    }
}

fn flag(value: bool) -> &'static str {
    if value {
        "1"
    } else {
        "0"
    }
}

/// Patroni's series for this node, from `status` (the `/patroni` body).
pub(crate) fn patroni_series(state: &ApiState, node: &Node, status: &Value) -> String {
    let labels = labels(&state.scope, state.name.as_str());
    let mut out = String::new();
    let mut series = |name: &str, kind: &str, help: &str, value: &str| {
        let _ = write!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name}{{{labels}}} {value}\n"
        );
    };
    let xlog = |key: &str| {
        status
            .get("xlog")
            .and_then(|x| x.get(key))
            .and_then(Value::as_u64)
            .unwrap_or(0)
            .to_string()
    };
    let truthy = |key: &str| status.get(key).and_then(Value::as_bool).unwrap_or(false);
    let role = status.get("role").and_then(Value::as_str).unwrap_or("");
    let local = node.local.as_ref();

    series(
        "patroni_version",
        "gauge",
        "Patroni semver without periods.",
        &padded_semver(env!("CARGO_PKG_VERSION")),
    );
    series(
        "patroni_postgres_running",
        "gauge",
        "Value is 1 if Postgres is running, 0 otherwise.",
        flag(status.get("state").and_then(Value::as_str) == Some("running")),
    );
    series(
        "patroni_postmaster_start_time",
        "gauge",
        "Epoch seconds since Postgres started.",
        &epoch_seconds(local.and_then(|l| l.postmaster_start_unix_micros)),
    );
    series(
        "patroni_primary",
        "gauge",
        "Value is 1 if this node is the leader, 0 otherwise.",
        flag(role == "primary"),
    );
    series(
        "patroni_xlog_location",
        "counter",
        "Current location of the Postgres transaction log, 0 if this node is not the leader.",
        &xlog("location"),
    );
    series(
        "patroni_standby_leader",
        "gauge",
        "Value is 1 if this node is the standby_leader, 0 otherwise.",
        flag(role == "standby_leader"),
    );
    series(
        "patroni_replica",
        "gauge",
        "Value is 1 if this node is a replica, 0 otherwise.",
        flag(role == "replica"),
    );
    series(
        "patroni_sync_standby",
        "gauge",
        "Value is 1 if this node is a sync standby, 0 otherwise.",
        flag(truthy("sync_standby")),
    );
    series(
        "patroni_quorum_standby",
        "gauge",
        "Value is 1 if this node is a quorum standby, 0 otherwise.",
        flag(truthy("quorum_standby")),
    );
    series(
        "patroni_xlog_received_location",
        "counter",
        "Current location of the received Postgres transaction log, 0 if this node is not a replica.",
        &xlog("received_location"),
    );
    series(
        "patroni_xlog_replayed_location",
        "counter",
        "Current location of the replayed Postgres transaction log, 0 if this node is not a replica.",
        &xlog("replayed_location"),
    );
    let replica = role == "replica";
    series(
        "patroni_xlog_replayed_timestamp",
        "gauge",
        "Current timestamp of the replayed Postgres transaction log, 0 if null.",
        &epoch_seconds(
            local
                .filter(|_| replica)
                .and_then(|l| l.last_replay_unix_micros),
        ),
    );
    series(
        "patroni_xlog_paused",
        "gauge",
        "Value is 1 if the Postgres xlog is paused, 0 otherwise.",
        flag(
            status
                .get("xlog")
                .and_then(|x| x.get("paused"))
                .and_then(Value::as_bool)
                == Some(true),
        ),
    );
    let replication_state = status.get("replication_state").and_then(Value::as_str);
    series(
        "patroni_postgres_streaming",
        "gauge",
        "Value is 1 if Postgres is streaming, 0 otherwise.",
        flag(replication_state == Some("streaming")),
    );
    series(
        "patroni_postgres_in_archive_recovery",
        "gauge",
        "Value is 1 if Postgres is replicating from archive, 0 otherwise.",
        flag(replication_state == Some("in archive recovery")),
    );
    series(
        "patroni_postgres_server_version",
        "gauge",
        "Version of Postgres (if running), 0 otherwise.",
        &status
            .get("server_version")
            .and_then(Value::as_u64)
            .unwrap_or(0)
            .to_string(),
    );
    series(
        "patroni_cluster_unlocked",
        "gauge",
        "Value is 1 if the cluster is unlocked, 0 if locked.",
        flag(truthy("cluster_unlocked")),
    );
    series(
        "patroni_failsafe_mode_is_active",
        "gauge",
        "Value is 1 if failsafe mode is active, 0 if inactive.",
        flag(truthy("failsafe_mode_is_active")),
    );
    series(
        "patroni_failsafe_mode_enabled",
        "gauge",
        "Value is 1 if failsafe_mode is enabled, 0 otherwise.",
        flag(node.config.failsafe_mode),
    );
    let failsafe_member = node
        .view
        .as_ref()
        .and_then(|v| v.failsafe.as_ref())
        .and_then(|f| f.as_ref().ok())
        .is_some_and(|f| f.value.0.contains_key(&state.name));
    series(
        "patroni_failsafe_member",
        "gauge",
        "Value is 1 if this node is a member of failsafe, 0 otherwise.",
        flag(failsafe_member),
    );
    series(
        "patroni_postgres_timeline",
        "gauge",
        "Postgres timeline of this node (if running), 0 otherwise.",
        &status
            .get("timeline")
            .and_then(Value::as_u64)
            .unwrap_or(0)
            .to_string(),
    );
    series(
        "patroni_dcs_last_seen",
        "gauge",
        "Epoch timestamp when DCS was last contacted successfully by Patroni.",
        &status
            .get("dcs_last_seen")
            .and_then(Value::as_i64)
            .unwrap_or(0)
            .to_string(),
    );
    series(
        "patroni_pending_restart",
        "gauge",
        "Value is 1 if the node needs a restart, 0 otherwise.",
        flag(truthy("pending_restart")),
    );
    series(
        "patroni_is_paused",
        "gauge",
        "Value is 1 if auto failover is disabled, 0 otherwise.",
        flag(truthy("pause")),
    );
    let priority = if node.tags.nofailover {
        0
    } else {
        node.tags.failover_priority
    };
    series(
        "patroni_failover_priority",
        "gauge",
        "Failover priority of this node.",
        &priority.to_string(),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        assert_eq!(labels("s", "n"), "scope=\"s\",name=\"n\"");
    }

    #[test]
    fn versions_and_times_print_as_patronis() {
        assert_eq!(padded_semver("4.1.0"), "040100");
        assert_eq!(padded_semver("0.1.0"), "000100");
        assert_eq!(epoch_seconds(Some(1_714_554_000_000_000)), "1714554000.0");
        assert_eq!(epoch_seconds(Some(1_714_557_600_250_000)), "1714557600.25");
        assert_eq!(epoch_seconds(None), "0");
    }
}
