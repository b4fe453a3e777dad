//! One PostgreSQL node of the lab (its agent, data directory and REST API) and
//! what its `/patroni` says about its standbys.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use matriarch_testkit::cluster::{NodeDir, RestApi, Supervised};
use serde_json::Value;

/// A long-running program in a namespace, restartable with the same command line
/// (the test kit's [`Supervised`], started with `ip netns exec`).
pub type Proc = Supervised;

/// One PostgreSQL node: its agent and data directory.
#[derive(Debug)]
pub struct Node {
    /// Member name: node1..node3.
    pub name: String,
    /// Namespace short name: n1..n3.
    pub short: String,
    /// Its address.
    pub ip: Ipv4Addr,
    /// Its directory (data directory, server log, socket), owned by `postgres`.
    pub dir: NodeDir,
    /// The agent.
    pub agent: Proc,
    /// Its REST API (`http://<ip>:8008`), with the cluster's credentials for
    /// `call` (switchovers, `PATCH /config`).
    pub rest: RestApi,
}

impl Node {
    /// PostgreSQL's server log (pg_ctl's `-l`, next to the data directory).
    pub fn server_log(&self) -> PathBuf {
        self.dir.server_log()
    }

    /// The postmaster's pid, if `postmaster.pid` names a live postgres process.
    pub fn postmaster_pid(&self) -> Option<i32> {
        self.dir.postmaster_pid()
    }

    /// `GET path` as JSON when it answers 200.
    pub fn get_json(&self, path: &str) -> Option<Value> {
        self.rest.get_json(path)
    }

    /// The standbys its `/patroni` lists under `replication` (as a primary;
    /// `None` when it does not answer).
    pub fn standbys(&self) -> Option<Vec<Standby>> {
        standbys_of(&self.get_json("/patroni")?)
    }
}

/// One standby as a primary's `/patroni` lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Standby {
    /// Its `application_name` (the member name).
    pub name: String,
    /// Its `state` is `streaming`.
    pub streaming: bool,
    /// Its `sync_state` is `sync` or `quorum`: commits wait for it.
    pub synchronous: bool,
}

/// The `replication` list of a `/patroni` answer.
fn standbys_of(patroni: &Value) -> Option<Vec<Standby>> {
    let text = |r: &Value, key: &str| r.get(key).and_then(Value::as_str).map(str::to_owned);
    let standbys = patroni
        .get("replication")?
        .as_array()?
        .iter()
        .map(|r| Standby {
            name: text(r, "application_name").unwrap_or_default(),
            streaming: text(r, "state").as_deref() == Some("streaming"),
            synchronous: matches!(text(r, "sync_state").as_deref(), Some("sync" | "quorum")),
        })
        .collect();
    Some(standbys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standbys_are_read_from_the_patroni_replication_list() {
        let patroni = serde_json::json!({"replication": [
            {"application_name": "node2", "state": "streaming", "sync_state": "sync"},
            {"application_name": "node3", "state": "streaming", "sync_state": "async"},
            {"application_name": "node1", "state": "startup", "sync_state": "quorum"},
        ]});
        let standby = |name: &str, streaming, synchronous| Standby {
            name: name.into(),
            streaming,
            synchronous,
        };
        assert_eq!(
            standbys_of(&patroni),
            Some(vec![
                standby("node2", true, true),
                standby("node3", true, false),
                standby("node1", false, true),
            ])
        );
        assert_eq!(standbys_of(&serde_json::json!({"state": "running"})), None);
    }
}
