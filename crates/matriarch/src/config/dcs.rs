//! The DCS sections: `etcd3:` and `zookeeper:`.

use std::path::PathBuf;

use serde::Deserialize;

use matriarch_model::Secret;

/// `etcd3:`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Etcd3Config {
    /// Endpoints: a list, or one comma-separated string (`host:port` or URLs).
    pub hosts: HostList,
    /// etcd user.
    pub username: Option<String>,
    /// etcd password.
    pub password: Option<Secret>,
    /// CA certificate (PEM); setting it switches to HTTPS.
    pub cacert: Option<PathBuf>,
    /// Client certificate (PEM).
    pub cert: Option<PathBuf>,
    /// Client key (PEM).
    pub key: Option<PathBuf>,
}

/// `zookeeper:`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ZooKeeperSection {
    /// Servers (`host:port`): a list or a comma-separated string.
    pub hosts: HostList,
    /// A chroot path under which the layout lives.
    pub chroot: Option<String>,
    /// Digest authentication.
    pub auth: Option<ZooKeeperAuth>,
}

/// ZooKeeper digest authentication.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ZooKeeperAuth {
    /// The user.
    pub username: String,
    /// The password.
    pub password: Secret,
}

/// A list of hosts, written as a YAML list or a comma-separated string.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum HostList {
    /// `[a:2379, b:2379]`
    List(Vec<String>),
    /// `a:2379,b:2379`
    Text(String),
}

impl HostList {
    /// The hosts, trimmed, without empty entries.
    pub(crate) fn hosts(&self) -> Vec<String> {
        let raw: Vec<&str> = match self {
            HostList::List(list) => list.iter().map(String::as_str).collect(),
            HostList::Text(text) => text.split(',').collect(),
        };
        raw.into_iter()
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .map(str::to_owned)
            .collect()
    }
}
