//! Where each record lives in the DCS: Patroni's key layout
//! `/<namespace>/<scope>/<key>`, described in docs/dcs-layout.md.

use std::fmt;

use crate::member::MemberName;
use crate::ModelError;

/// The keys matriarch keeps under a cluster's scope.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DcsKey {
    /// `initialize`: the bootstrap race and the system identifier.
    Initialize,
    /// `config`: the dynamic configuration (JSON).
    Config,
    /// `leader`: the leader lock (the holder's name).
    Leader,
    /// `members/<name>`: a member's record (JSON).
    Member(MemberName),
    /// `failover`: a switchover or failover request (JSON).
    Failover,
    /// `sync`: the synchronous replication state (JSON).
    Sync,
    /// `history`: the timeline history (JSON).
    History,
    /// `status`: the leader's optime and slots (JSON).
    Status,
    /// `failsafe`: the members a primary may rely on during a DCS outage (JSON).
    Failsafe,
}

/// The folder under the scope that holds one key per member.
pub const MEMBERS_DIR: &str = "members/";

impl DcsKey {
    /// The key's path relative to the scope (`members/node1`, `leader`, ...).
    pub fn relative_path(&self) -> String {
        match self {
            DcsKey::Member(name) => format!("{MEMBERS_DIR}{name}"),
            other => other.fixed_name().unwrap_or_default().to_owned(),
        }
    }

    fn fixed_name(&self) -> Option<&'static str> {
        Some(match self {
            DcsKey::Initialize => "initialize",
            DcsKey::Config => "config",
            DcsKey::Leader => "leader",
            DcsKey::Failover => "failover",
            DcsKey::Sync => "sync",
            DcsKey::History => "history",
            DcsKey::Status => "status",
            DcsKey::Failsafe => "failsafe",
            DcsKey::Member(_) => return None,
        })
    }

    /// Recognises a path relative to the scope; `None` for keys matriarch does
    /// not use (other tools may keep their own keys there).
    ///
    /// A `members/` key whose name is not a valid [`MemberName`] is an error,
    /// so that a bad record is reported rather than silently ignored.
    pub fn parse_relative(path: &str) -> Result<Option<DcsKey>, ModelError> {
        if let Some(name) = path.strip_prefix(MEMBERS_DIR) {
            return MemberName::new(name).map(|name| Some(DcsKey::Member(name)));
        }
        Ok(match path {
            "initialize" => Some(DcsKey::Initialize),
            "config" => Some(DcsKey::Config),
            "leader" => Some(DcsKey::Leader),
            "failover" => Some(DcsKey::Failover),
            "sync" => Some(DcsKey::Sync),
            "history" => Some(DcsKey::History),
            "status" => Some(DcsKey::Status),
            "failsafe" => Some(DcsKey::Failsafe),
            _ => None,
        })
    }
}

impl fmt::Display for DcsKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.relative_path())
    }
}

/// A cluster's place in the DCS: `/<namespace>/<scope>/`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct KeyLayout {
    namespace: String,
    scope: String,
}

/// Patroni's default namespace.
pub const DEFAULT_NAMESPACE: &str = "service";

impl KeyLayout {
    /// A layout for `scope` (the cluster name) under `namespace`
    /// (`service` by default in Patroni). Leading and trailing slashes of the
    /// namespace are ignored; the scope must be one path segment.
    pub fn new(namespace: &str, scope: &str) -> Result<Self, ModelError> {
        let namespace = namespace.trim_matches('/');
        let invalid = |reason: &str| ModelError::InvalidLayout {
            namespace: namespace.to_owned(),
            scope: scope.to_owned(),
            reason: reason.to_owned(),
        };
        if namespace.is_empty() {
            return Err(invalid("the namespace is empty"));
        }
        if namespace.split('/').any(str::is_empty) {
            return Err(invalid("the namespace has an empty path segment"));
        }
        if scope.is_empty() || scope.contains('/') {
            return Err(invalid("the scope must be a non-empty name without '/'"));
        }
        if namespace.chars().chain(scope.chars()).any(char::is_control) {
            return Err(invalid("control characters are not allowed"));
        }
        Ok(KeyLayout {
            namespace: namespace.to_owned(),
            scope: scope.to_owned(),
        })
    }

    /// The namespace, without slashes.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The scope (cluster name).
    pub fn scope(&self) -> &str {
        &self.scope
    }

    /// The prefix of every key of this cluster, ending in `/`.
    pub fn prefix(&self) -> String {
        format!("/{}/{}/", self.namespace, self.scope)
    }

    /// The full path of a key.
    pub fn path(&self, key: &DcsKey) -> String {
        format!("{}{}", self.prefix(), key.relative_path())
    }

    /// The full path of the members folder, ending in `/`.
    pub fn members_prefix(&self) -> String {
        format!("{}{MEMBERS_DIR}", self.prefix())
    }

    /// The part of a full path after the prefix, if it is under this scope.
    pub fn strip<'a>(&self, full_path: &'a str) -> Option<&'a str> {
        full_path.strip_prefix(&self.prefix())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_follow_patroni() {
        let layout = KeyLayout::new("/service/", "pg").unwrap();
        assert_eq!(layout.prefix(), "/service/pg/");
        assert_eq!(layout.path(&DcsKey::Leader), "/service/pg/leader");
        let member = DcsKey::Member(MemberName::new("n1").unwrap());
        assert_eq!(layout.path(&member), "/service/pg/members/n1");
        assert_eq!(layout.strip("/service/pg/members/n1"), Some("members/n1"));
        assert_eq!(layout.strip("/service/other/leader"), None);
    }

    #[test]
    fn every_key_round_trips_through_its_path() {
        let keys = [
            DcsKey::Initialize,
            DcsKey::Config,
            DcsKey::Leader,
            DcsKey::Member(MemberName::new("n-1").unwrap()),
            DcsKey::Failover,
            DcsKey::Sync,
            DcsKey::History,
            DcsKey::Status,
            DcsKey::Failsafe,
        ];
        for key in keys {
            assert_eq!(
                DcsKey::parse_relative(&key.relative_path()).unwrap(),
                Some(key)
            );
        }
        assert_eq!(DcsKey::parse_relative("optime/leader").unwrap(), None);
    }

    #[test]
    fn bad_layouts_and_member_keys_are_errors() {
        for (namespace, scope) in [
            ("", "pg"),
            ("service", ""),
            ("service", "a/b"),
            ("a//b", "pg"),
        ] {
            let err = KeyLayout::new(namespace, scope).unwrap_err();
            assert!(matches!(err, ModelError::InvalidLayout { .. }), "{err}");
        }
        assert!(DcsKey::parse_relative("members/bad name").is_err());
        assert!(DcsKey::parse_relative("members/").is_err());
    }
}
