//! Prometheus text for `GET /metrics`: Patroni's `patroni_*` series, built
//! as Patroni builds them from its `/patroni` status, so that dashboards
//! and alerts written for Patroni work; matriarch's own series follow
//! (`super::status`). Label values are escaped per the text format.

use std::fmt::{Display, Write as _};

use serde_json::Value;

use super::state::ApiState;
use super::view::Node;

/// A label value escaped for the Prometheus text format: backslash, double
/// quote and newline.
fn escape_label(value: &str) -> String {
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
fn labels(scope: &str, name: &str) -> String {
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

/// `1` for true, `0` for false, as Patroni's flag series.
pub(crate) fn flag(value: bool) -> &'static str {
    if value {
        "1"
    } else {
        "0"
    }
}

/// Series in the Prometheus text format, each with this node's labels.
pub(crate) struct Exposition {
    /// `scope="…",name="…"`, escaped.
    labels: String,
    /// The text so far.
    text: String,
}

impl Exposition {
    /// No series yet, labelled with the cluster and member.
    pub(crate) fn new(scope: &str, name: &str) -> Exposition {
        Exposition {
            labels: labels(scope, name),
            text: String::new(),
        }
    }

    /// One series of `kind` (`gauge`, `counter`): its HELP and TYPE lines and
    /// its value.
    pub(crate) fn series(&mut self, name: &str, kind: &str, help: &str, value: impl Display) {
        let labels = &self.labels;
        let _ = write!(
            self.text,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name}{{{labels}}} {value}\n"
        );
    }

    /// A gauge.
    pub(crate) fn gauge(&mut self, name: &str, help: &str, value: impl Display) {
        self.series(name, "gauge", help, value);
    }

    /// One of Patroni's flag gauges: 1 if `what` holds (`value`), 0
    /// otherwise, with Patroni's help text.
    fn patroni_flag(&mut self, name: &str, what: &str, value: bool) {
        self.gauge(
            name,
            &format!("Value is 1 if {what}, 0 otherwise."),
            flag(value),
        );
    }

    /// The text of every series so far.
    pub(crate) fn into_text(self) -> String {
        self.text
    }
}

/// Patroni's series for this node, from `status` (the `/patroni` body).
pub(crate) fn patroni_series(out: &mut Exposition, state: &ApiState, node: &Node, status: &Value) {
    let xlog = |key: &str| {
        status
            .get("xlog")
            .and_then(|x| x.get(key))
            .and_then(Value::as_u64)
            .unwrap_or(0)
    };
    let number = |key: &str| status.get(key).and_then(Value::as_u64).unwrap_or(0);
    let truthy = |key: &str| status.get(key).and_then(Value::as_bool).unwrap_or(false);
    let role = status.get("role").and_then(Value::as_str).unwrap_or("");
    let local = node.local.as_ref();
    let running = status.get("state").and_then(Value::as_str) == Some("running");
    let replica = role == "replica";
    let replication_state = status.get("replication_state").and_then(Value::as_str);
    let failsafe_member = node
        .view
        .as_ref()
        .and_then(|v| v.failsafe.as_ref())
        .and_then(|f| f.as_ref().ok())
        .is_some_and(|f| f.value.0.contains_key(&state.name));
    let priority = if node.tags.nofailover {
        0
    } else {
        node.tags.failover_priority
    };

    out.gauge(
        "patroni_version",
        "Patroni semver without periods.",
        padded_semver(env!("CARGO_PKG_VERSION")),
    );
    out.patroni_flag("patroni_postgres_running", "Postgres is running", running);
    out.gauge(
        "patroni_postmaster_start_time",
        "Epoch seconds since Postgres started.",
        epoch_seconds(local.and_then(|l| l.postmaster_start_unix_micros)),
    );
    out.patroni_flag(
        "patroni_primary",
        "this node is the leader",
        role == "primary",
    );
    out.series(
        "patroni_xlog_location",
        "counter",
        "Current location of the Postgres transaction log, 0 if this node is not the leader.",
        xlog("location"),
    );
    out.patroni_flag(
        "patroni_standby_leader",
        "this node is the standby_leader",
        role == "standby_leader",
    );
    out.patroni_flag("patroni_replica", "this node is a replica", replica);
    out.patroni_flag(
        "patroni_sync_standby",
        "this node is a sync standby",
        truthy("sync_standby"),
    );
    out.patroni_flag(
        "patroni_quorum_standby",
        "this node is a quorum standby",
        truthy("quorum_standby"),
    );
    for (name, what, key) in [
        (
            "patroni_xlog_received_location",
            "received",
            "received_location",
        ),
        (
            "patroni_xlog_replayed_location",
            "replayed",
            "replayed_location",
        ),
    ] {
        let help = format!(
            "Current location of the {what} Postgres transaction log, 0 if this node is not a replica."
        );
        out.series(name, "counter", &help, xlog(key));
    }
    out.gauge(
        "patroni_xlog_replayed_timestamp",
        "Current timestamp of the replayed Postgres transaction log, 0 if null.",
        epoch_seconds(
            local
                .filter(|_| replica)
                .and_then(|l| l.last_replay_unix_micros),
        ),
    );
    let xlog_paused = status
        .get("xlog")
        .and_then(|x| x.get("paused"))
        .and_then(Value::as_bool);
    out.patroni_flag(
        "patroni_xlog_paused",
        "the Postgres xlog is paused",
        xlog_paused == Some(true),
    );
    out.patroni_flag(
        "patroni_postgres_streaming",
        "Postgres is streaming",
        replication_state == Some("streaming"),
    );
    out.patroni_flag(
        "patroni_postgres_in_archive_recovery",
        "Postgres is replicating from archive",
        replication_state == Some("in archive recovery"),
    );
    out.gauge(
        "patroni_postgres_server_version",
        "Version of Postgres (if running), 0 otherwise.",
        number("server_version"),
    );
    out.gauge(
        "patroni_cluster_unlocked",
        "Value is 1 if the cluster is unlocked, 0 if locked.",
        flag(truthy("cluster_unlocked")),
    );
    out.gauge(
        "patroni_failsafe_mode_is_active",
        "Value is 1 if failsafe mode is active, 0 if inactive.",
        flag(truthy("failsafe_mode_is_active")),
    );
    out.patroni_flag(
        "patroni_failsafe_mode_enabled",
        "failsafe_mode is enabled",
        node.config.failsafe_mode,
    );
    out.patroni_flag(
        "patroni_failsafe_member",
        "this node is a member of failsafe",
        failsafe_member,
    );
    out.gauge(
        "patroni_postgres_timeline",
        "Postgres timeline of this node (if running), 0 otherwise.",
        number("timeline"),
    );
    out.gauge(
        "patroni_dcs_last_seen",
        "Epoch timestamp when DCS was last contacted successfully by Patroni.",
        status
            .get("dcs_last_seen")
            .and_then(Value::as_i64)
            .unwrap_or(0),
    );
    out.patroni_flag(
        "patroni_pending_restart",
        "the node needs a restart",
        truthy("pending_restart"),
    );
    out.patroni_flag(
        "patroni_is_paused",
        "auto failover is disabled",
        truthy("pause"),
    );
    out.gauge(
        "patroni_failover_priority",
        "Failover priority of this node.",
        priority,
    );
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
