//! This node as the health checks see it ([`Node`]), and the checks
//! themselves, Patroni's semantics.

use std::time::Duration;

use matriarch_ha::EngineRole;
use matriarch_model::{ClusterConfig, ClusterView, Lsn, MemberName, SynchronousMode, Tags};
use matriarch_postgres::{DataDirectoryState, LocalState, PgRole, ServerState};
use serde_json::Value;

use super::state::ApiState;

/// Parses `?lag=`: bytes, or a size with a unit (`1MB`, `16 kB`, `1GB`).
pub(crate) fn parse_size(text: &str) -> Option<u64> {
    let (number, unit) = matriarch_model::number_with_unit(text)?;
    let factor: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" | "k" => 1 << 10,
        "mb" | "m" => 1 << 20,
        "gb" | "g" => 1 << 30,
        "tb" | "t" => 1 << 40,
        _ => return None,
    };
    number.checked_mul(factor)
}

/// This node as the health checks see it.
pub(crate) struct Node {
    pub(crate) role: EngineRole,
    pub(crate) leader: Option<MemberName>,
    pub(crate) local: Option<LocalState>,
    pub(crate) view: Option<ClusterView>,
    /// When the engine read `view` (wall clock).
    pub(crate) view_read_at: Option<chrono::DateTime<chrono::Utc>>,
    pub(crate) tags: Tags,
    pub(crate) paused: bool,
    pub(crate) dcs_reachable: bool,
    pub(crate) loops: u64,
    pub(crate) status_age: Option<Duration>,
    pub(crate) timeline: Option<u32>,
    pub(crate) wal_position: Option<Lsn>,
    /// The dynamic configuration this node's engine decides with.
    pub(crate) config: ClusterConfig,
    /// The possible loss this node reported at its last failover.
    pub(crate) last_failover_loss: Option<u64>,
    /// Leading on failsafe.
    pub(crate) failsafe_active: bool,
    /// The engine's word that PostgreSQL runs read-write under its lock,
    /// published the moment it promotes or before it demotes.
    pub(crate) writable: bool,
    /// The postmaster named in `postmaster.pid` is alive now.
    pub(crate) postmaster_alive: bool,
    /// The engine clones a replica into the data directory.
    pub(crate) creating_replica: bool,
}

impl Node {
    pub(crate) fn pg_role(&self) -> Option<PgRole> {
        self.local.as_ref().and_then(LocalState::role)
    }

    pub(crate) fn running(&self) -> bool {
        self.pg_role().is_some()
    }

    /// Answered from the engine's latest word (published the moment it
    /// promotes, and before it demotes) and from whether PostgreSQL is alive
    /// now: a fence that just killed the postmaster (say while the agent was
    /// paused) must not leave a moment of 200.
    pub(crate) fn is_primary(&self) -> bool {
        self.role == EngineRole::Leader && self.writable && self.postmaster_alive
    }

    /// Holds the lock of a standby cluster with a running replica: the
    /// standby leader (Patroni's role `standby_leader`).
    pub(crate) fn is_standby_leader(&self) -> bool {
        self.role == EngineRole::Leader
            && self.config.standby_cluster.is_some()
            && self.pg_role() == Some(PgRole::Replica)
            && self.postmaster_alive
    }

    /// Patroni's `role` of this node: `primary`, `standby_leader`,
    /// `replica` or `uninitialized`.
    pub(crate) fn patroni_role(&self) -> &'static str {
        match self.pg_role() {
            Some(PgRole::Primary) => "primary",
            Some(PgRole::Replica) if self.is_standby_leader() => "standby_leader",
            Some(PgRole::Replica) => "replica",
            None => "uninitialized",
        }
    }

    pub(crate) fn is_replica(&self) -> bool {
        self.pg_role() == Some(PgRole::Replica) && self.role != EngineRole::Leader
    }

    pub(crate) fn in_sync(&self, name: &MemberName) -> bool {
        self.view
            .as_ref()
            .and_then(|v| v.sync.as_ref())
            .and_then(|s| s.as_ref().ok())
            .is_some_and(|s| s.value.sync_standbys.contains(name))
    }

    /// The leader's last known WAL position.
    pub(crate) fn leader_optime(&self) -> Option<Lsn> {
        let view = self.view.as_ref()?;
        let from_status = view
            .status
            .as_ref()
            .and_then(|s| s.as_ref().ok())
            .map(|s| s.value.optime);
        let from_member = view
            .leader_name()
            .and_then(|l| view.members.get(l.as_str()))
            .and_then(|m| m.as_ref().ok())
            .and_then(|m| m.value.wal_position());
        from_status.into_iter().chain(from_member).max()
    }

    /// Bytes behind the leader, from the freshest of the engine's
    /// observations of this server.
    pub(crate) fn lag(&self) -> Option<u64> {
        let leader = self.leader_optime()?;
        let cached = self.local.as_ref().and_then(|l| {
            [l.wal.received, l.wal.replayed, l.wal.flush]
                .into_iter()
                .flatten()
                .max()
        });
        let mine = self.wal_position.into_iter().chain(cached).max()?;
        Some(leader.bytes_ahead_of(mine))
    }

    pub(crate) fn state(&self) -> &'static str {
        if self.creating_replica || self.awaits_clone() {
            return "creating replica";
        }
        match self.local.as_ref().map(|l| &l.server) {
            Some(ServerState::Running(_)) => "running",
            Some(ServerState::Unavailable) => "starting",
            Some(ServerState::NotRunning(DataDirectoryState::Crashed)) => "crashed",
            Some(ServerState::NotRunning(DataDirectoryState::Empty)) => "uninitialized",
            Some(ServerState::NotRunning(DataDirectoryState::CleanShutdown)) => "stopped",
            None => "unknown",
        }
    }
}

impl Node {
    /// An empty data directory on a member of an initialized cluster that
    /// has a leader: the engine clones it at its next loop (after `POST
    /// /reinitialize` emptied it, or on a new member), so it is a replica
    /// being created, as Patroni reports it from the moment it starts.
    fn awaits_clone(&self) -> bool {
        let empty = matches!(
            self.local.as_ref().map(|l| &l.server),
            Some(ServerState::NotRunning(DataDirectoryState::Empty))
        );
        let initialized = self.view.as_ref().is_some_and(|v| {
            v.leader_name().is_some()
                && matches!(
                    &v.initialize,
                    Some(Ok(entry)) if matches!(entry.value, matriarch_model::Initialize::Done(_))
                )
        });
        empty && initialized && self.role != EngineRole::Leader
    }
}

/// Whether the health check `path` (other than `/liveness`) passes for
/// `node`, as Patroni answers it; `None` if `path` is not one.
pub(crate) fn health_check(
    path: &str,
    query: &[(String, String)],
    node: &Node,
    me: &MemberName,
) -> Option<bool> {
    let in_sync = node.in_sync(me);
    let sync_standby =
        node.is_replica() && node.config.synchronous_mode == SynchronousMode::On && in_sync;
    let quorum_standby =
        node.is_replica() && node.config.synchronous_mode == SynchronousMode::Quorum && in_sync;
    let ok = match path {
        "/" | "/primary" | "/master" | "/read-write" => node.is_primary(),
        "/standby-leader" | "/standby_leader" => node.is_standby_leader(),
        "/leader" => node.role == EngineRole::Leader && node.running(),
        "/replica" => {
            node.is_replica() && !node.tags.noloadbalance && replica_filters(query, node, true)
        }
        "/read-only" => node.is_primary() || node.is_standby_leader() || node.is_replica(),
        "/synchronous" | "/sync" => sync_standby,
        "/read-only-sync" => node.is_primary() || node.is_standby_leader() || sync_standby,
        "/quorum" => quorum_standby,
        "/read-only-quorum" => node.is_primary() || node.is_standby_leader() || quorum_standby,
        "/asynchronous" | "/async" => {
            node.is_replica() && !in_sync && replica_filters(query, node, false)
        }
        "/health" => node.running(),
        "/readiness" => {
            node.is_primary()
                || (node.is_replica() && node.running() && replica_filters(query, node, false))
        }
        _ => return None,
    };
    Some(ok)
}

/// The query parameters of a replica check: `lag` (the bound on the bytes
/// behind the leader; ignored while the leader's position is unknown, as
/// Patroni does), `replication_state`, and, if `tags`, any other key as a
/// tag to match.
fn replica_filters(query: &[(String, String)], node: &Node, tags: bool) -> bool {
    let mut ok = true;
    for (key, value) in query {
        match key.as_str() {
            "lag" => match (parse_size(value), node.lag()) {
                (Some(max), Some(lag)) => ok &= lag <= max,
                (Some(_), None) => {}
                (None, _) => ok = false,
            },
            "replication_state" => {
                // Patroni's values: the WAL receiver streams, or not.
                let state = if node.local.as_ref().is_some_and(|l| l.receiving) {
                    "streaming"
                } else {
                    "in archive recovery"
                };
                ok &= state.eq_ignore_ascii_case(value);
            }
            "mode" => {}
            _ if tags => {
                let tags = serde_json::to_value(&node.tags).unwrap_or(Value::Null);
                let actual = match tags.get(key) {
                    Some(Value::String(s)) => s.clone(),
                    Some(Value::Null) | None => {
                        // Known boolean tags default to false.
                        if [
                            "nofailover",
                            "noloadbalance",
                            "nosync",
                            "clonefrom",
                            "nostream",
                        ]
                        .contains(&key.as_str())
                        {
                            "false".to_owned()
                        } else {
                            String::new()
                        }
                    }
                    Some(other) => other.to_string(),
                };
                ok &= actual.eq_ignore_ascii_case(value);
            }
            _ => {}
        }
    }
    ok
}

/// Whether the postmaster that `data_dir/postmaster.pid` names is alive
/// (not a zombie): a cheap check of what PostgreSQL is now, between two
/// observations.
pub(crate) fn postmaster_alive(data_dir: &std::path::Path) -> bool {
    let Ok(text) = std::fs::read_to_string(data_dir.join("postmaster.pid")) else {
        return false;
    };
    let Some(pid) = text
        .lines()
        .next()
        .and_then(|l| l.trim().parse::<u32>().ok())
        .filter(|pid| *pid > 0)
    else {
        return false;
    };
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the command name, which may itself hold ") ".
    stat.rfind(')')
        .and_then(|i| stat[i + 1..].split_whitespace().next())
        .is_some_and(|state| state != "Z" && state != "X")
}

impl ApiState {
    /// This node now: the engine's latest status (with what its loop
    /// observed of PostgreSQL and of the DCS), and whether the postmaster is
    /// alive this instant. Reads neither PostgreSQL nor the DCS.
    pub(crate) fn node(&self) -> Node {
        let status = self.status.get();
        let cache = self.cache.read().unwrap_or_else(|e| e.into_inner());
        Node {
            role: status.role,
            leader: status.leader.clone(),
            local: status.postgres.as_deref().cloned(),
            view: status.view.as_deref().cloned(),
            view_read_at: status.view_read_at,
            tags: self.tags.read().map(|t| t.clone()).unwrap_or_default(),
            paused: status.paused,
            dcs_reachable: status.dcs_reachable,
            loops: status.loops,
            status_age: cache.status_at.map(|at| at.elapsed()),
            timeline: status.timeline.map(|t| t.0),
            wal_position: status.wal_position,
            config: status.config,
            last_failover_loss: status.last_failover_possible_loss_bytes,
            failsafe_active: status.failsafe_active,
            writable: status.writable,
            postmaster_alive: postmaster_alive(&self.data_dir),
            creating_replica: status.creating_replica,
        }
    }

    /// The DCS `config` key's value, or the bootstrap configuration.
    pub(crate) fn config_in_force(&self, node: &Node) -> ClusterConfig {
        node.view
            .as_ref()
            .and_then(|v| v.config.as_ref())
            .and_then(|c| c.as_ref().ok())
            .map(|c| c.value.clone())
            .unwrap_or_else(|| self.bootstrap_config.clone())
    }
}
