//! How to reach ZooKeeper and where the cluster lives in it.

use std::time::Duration;

use matriarch_model::{HostPort, KeyLayout, Secret, DEFAULT_NAMESPACE};

use crate::error::ConfigError;

/// matriarch's default TTL (`ttl` in the dynamic configuration), used as the
/// session timeout unless configured.
pub const DEFAULT_SESSION_TIMEOUT: Duration = Duration::from_secs(5);

/// matriarch's default `retry_timeout`.
pub const DEFAULT_RETRY_TIMEOUT: Duration = Duration::from_secs(2);

/// ZooKeeper `digest` authentication (`user:password`). Znodes created by a
/// client with credentials are readable and writable only by sessions
/// authenticated as the same user (ZooKeeper's `auth` ACL scheme).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DigestAuth {
    /// The user name (no `:`).
    pub user: String,
    /// The password (redacted in `Debug`).
    pub password: Secret,
}

impl DigestAuth {
    /// Credentials for `user`.
    pub fn new(user: impl Into<String>, password: impl Into<String>) -> Self {
        DigestAuth {
            user: user.into(),
            password: Secret::new(password),
        }
    }

    /// The `user:password` bytes ZooKeeper's digest scheme expects.
    pub(crate) fn credentials(&self) -> Vec<u8> {
        format!("{}:{}", self.user, self.password.expose()).into_bytes()
    }
}

/// Configuration of a [`crate::ZooKeeperDcs`].
///
/// ```
/// use std::time::Duration;
/// use matriarch_zookeeper::{DigestAuth, ZooKeeperConfig};
///
/// let config = ZooKeeperConfig::new(["zk1:2181", "zk2:2181", "zk3:2181"], "pg-main")
///     .with_chroot("/matriarch")
///     .with_auth(DigestAuth::new("matriarch", "s3cret"))
///     .with_session_timeout(Duration::from_secs(5))
///     .with_retry_timeout(Duration::from_secs(2));
/// assert!(config.validate().is_ok());
/// assert!(!format!("{config:?}").contains("s3cret"));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ZooKeeperConfig {
    /// The servers, each `host:port`; the client connects to any of them.
    pub servers: Vec<String>,
    /// A ZooKeeper chroot (`/matriarch`) under which every path lives; it is
    /// created if it is missing. `None` for the root.
    pub chroot: Option<String>,
    /// The Patroni namespace (`service` by default).
    pub namespace: String,
    /// The cluster's name.
    pub scope: String,
    /// Digest credentials, if the ensemble requires them.
    pub auth: Option<DigestAuth>,
    /// The ZooKeeper session timeout of the first session, which is the TTL
    /// of the leader lock and of the member record when this client dies or
    /// is cut off. Use the cluster's `ttl`: once a lock or member call passes
    /// another ttl, the session is re-established with that one. The server
    /// clamps it to its `minSessionTimeout` and `maxSessionTimeout` (by
    /// default 2 and 20 times its `tickTime`);
    /// [`matriarch_dcs::Dcs::lock_lifetime`] reports the result.
    pub session_timeout: Duration,
    /// The bound of every call: a call that cannot finish in time fails with
    /// [`matriarch_dcs::DcsError::Timeout`].
    pub retry_timeout: Duration,
}

impl ZooKeeperConfig {
    /// A configuration for `scope` on `servers`, with the `service` namespace,
    /// no chroot, no authentication and matriarch's default timeouts.
    pub fn new<S: Into<String>>(
        servers: impl IntoIterator<Item = S>,
        scope: impl Into<String>,
    ) -> Self {
        ZooKeeperConfig {
            servers: servers.into_iter().map(Into::into).collect(),
            chroot: None,
            namespace: DEFAULT_NAMESPACE.to_owned(),
            scope: scope.into(),
            auth: None,
            session_timeout: DEFAULT_SESSION_TIMEOUT,
            retry_timeout: DEFAULT_RETRY_TIMEOUT,
        }
    }

    /// Sets the chroot (an absolute path such as `/matriarch`).
    pub fn with_chroot(mut self, chroot: impl Into<String>) -> Self {
        self.chroot = Some(chroot.into());
        self
    }

    /// Sets the namespace.
    pub fn with_namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// Sets digest credentials.
    pub fn with_auth(mut self, auth: DigestAuth) -> Self {
        self.auth = Some(auth);
        self
    }

    /// Sets the session timeout (the TTL).
    pub fn with_session_timeout(mut self, timeout: Duration) -> Self {
        self.session_timeout = timeout;
        self
    }

    /// Sets the bound of every call.
    pub fn with_retry_timeout(mut self, timeout: Duration) -> Self {
        self.retry_timeout = timeout;
        self
    }

    /// Checks every field; returns the key layout of the cluster.
    pub fn validate(&self) -> Result<KeyLayout, ConfigError> {
        if self.servers.is_empty() {
            return Err(ConfigError::NoServers);
        }
        for server in &self.servers {
            let bad = |reason: &str| ConfigError::InvalidServer {
                server: server.clone(),
                reason: reason.to_owned(),
            };
            if server.is_empty()
                || server.contains([',', '/'])
                || server.contains(char::is_whitespace)
            {
                return Err(bad("expected host:port without ',', '/' or spaces"));
            }
            HostPort::parse(server).map_err(|e| bad(&e.problem.to_string()))?;
        }
        if let Some(chroot) = &self.chroot {
            let bad = |reason: &str| ConfigError::InvalidChroot {
                chroot: chroot.clone(),
                reason: reason.to_owned(),
            };
            if !chroot.starts_with('/') {
                return Err(bad("it must start with '/'"));
            }
            if chroot.len() > 1 && chroot.ends_with('/') {
                return Err(bad("it must not end with '/'"));
            }
            if chroot.len() > 1
                && chroot[1..]
                    .split('/')
                    .any(|s| s.is_empty() || s == "." || s == "..")
            {
                return Err(bad("it has an empty, '.' or '..' path segment"));
            }
            if chroot.chars().any(char::is_control) {
                return Err(bad("control characters are not allowed"));
            }
        }
        if let Some(auth) = &self.auth {
            if auth.user.is_empty() || auth.user.contains(':') {
                return Err(ConfigError::InvalidAuth(
                    "the user must be non-empty and without ':'".to_owned(),
                ));
            }
        }
        if self.session_timeout.is_zero()
            || self.session_timeout > Duration::from_millis(i32::MAX as u64)
        {
            return Err(ConfigError::InvalidTimeout {
                name: "session_timeout",
                value: self.session_timeout,
            });
        }
        if self.retry_timeout.is_zero() {
            return Err(ConfigError::InvalidTimeout {
                name: "retry_timeout",
                value: self.retry_timeout,
            });
        }
        KeyLayout::new(&self.namespace, &self.scope).map_err(ConfigError::Layout)
    }

    /// The connect string: the servers, comma-separated (the chroot is
    /// applied after connecting, so that it can be created first).
    pub(crate) fn connect_string(&self) -> String {
        self.servers.join(",")
    }

    /// The chroot, if any other than `/`.
    pub(crate) fn effective_chroot(&self) -> Option<&str> {
        self.chroot.as_deref().filter(|c| *c != "/")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> ZooKeeperConfig {
        ZooKeeperConfig::new(["127.0.0.1:2181", "zk2.example:2182"], "pg")
    }

    #[test]
    fn bracketed_ipv6_servers_are_accepted() {
        let config = ZooKeeperConfig::new(["[::1]:2181", "zk2.example:2182"], "pg");
        assert!(config.validate().is_ok());
    }

    #[test]
    fn a_complete_config_validates_and_hides_the_password() {
        let config = base()
            .with_chroot("/matriarch/prod")
            .with_namespace("/service/")
            .with_auth(DigestAuth::new("agent", "hunter2"));
        let layout = config.validate().expect("valid");
        assert_eq!(layout.prefix(), "/service/pg/");
        assert_eq!(config.connect_string(), "127.0.0.1:2181,zk2.example:2182");
        assert_eq!(config.effective_chroot(), Some("/matriarch/prod"));
        let debug = format!("{config:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(debug.contains("agent"), "{debug}");
    }

    #[test]
    fn bad_fields_are_rejected_with_their_reason() {
        let cases = [
            ZooKeeperConfig::new(Vec::<String>::new(), "pg"),
            ZooKeeperConfig::new(["127.0.0.1"], "pg"),
            ZooKeeperConfig::new(["127.0.0.1:0"], "pg"),
            ZooKeeperConfig::new(["a:1,b:2"], "pg"),
            ZooKeeperConfig::new(["a:1/chroot"], "pg"),
            base().with_chroot("matriarch"),
            base().with_chroot("/matriarch/"),
            base().with_chroot("/a//b"),
            base().with_auth(DigestAuth::new("a:b", "x")),
            base().with_session_timeout(Duration::ZERO),
            base().with_retry_timeout(Duration::ZERO),
            ZooKeeperConfig::new(["a:1"], "a/b"),
            ZooKeeperConfig::new(["::1"], "pg"),
            ZooKeeperConfig::new(["[::1]"], "pg"),
            ZooKeeperConfig::new([":2181"], "pg"),
        ];
        for config in cases {
            let err = config.validate().expect_err("invalid");
            assert!(!err.to_string().is_empty());
        }
        assert_eq!(base().with_chroot("/").effective_chroot(), None);
    }
}
