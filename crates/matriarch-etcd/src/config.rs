//! How to reach etcd: endpoints, credentials, TLS, the key layout and the
//! time bound of every call.

use std::path::{Path, PathBuf};
use std::time::Duration;

use etcd_client::{Certificate, ConnectOptions, Identity, TlsOptions};
use matriarch_model::{HostPort, KeyLayout, ModelError, Secret, DEFAULT_NAMESPACE};

/// matriarch's default `retry_timeout` (see `docs/dcs-layout.md`).
pub const DEFAULT_RETRY_TIMEOUT: Duration = Duration::from_secs(2);

/// A user of etcd's authentication (`etcdctl user add`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EtcdCredentials {
    /// The user name.
    pub username: String,
    /// The user's password (redacted in `Debug`).
    pub password: Secret,
}

/// TLS to etcd (rustls): the CA that signed the servers' certificates and,
/// for servers started with `--client-cert-auth`, a client certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EtcdTls {
    /// PEM file with the CA certificate(s) the servers' certificates must chain to.
    pub ca_file: PathBuf,
    /// PEM files with the client certificate and its private key.
    pub client_identity: Option<ClientIdentity>,
    /// The name the servers' certificates must carry, when it is not the
    /// endpoints' host (e.g. endpoints given by IP address).
    pub server_name: Option<String>,
}

impl EtcdTls {
    /// TLS that trusts the CA in `ca_file`, without a client certificate.
    pub fn new(ca_file: impl Into<PathBuf>) -> Self {
        EtcdTls {
            ca_file: ca_file.into(),
            client_identity: None,
            server_name: None,
        }
    }

    /// Presents the client certificate in `cert_file` (PEM) with its key in
    /// `key_file` (PEM).
    pub fn with_client_identity(
        mut self,
        cert_file: impl Into<PathBuf>,
        key_file: impl Into<PathBuf>,
    ) -> Self {
        self.client_identity = Some(ClientIdentity {
            cert_file: cert_file.into(),
            key_file: key_file.into(),
        });
        self
    }
}

/// A client certificate and its private key, as PEM files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientIdentity {
    /// The certificate (chain).
    pub cert_file: PathBuf,
    /// The private key.
    pub key_file: PathBuf,
}

/// The configuration of an [`crate::EtcdDcs`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EtcdConfig {
    /// The etcd members' client URLs (`http://host:2379`, `https://host:2379`,
    /// or `host:2379`, whose scheme follows [`EtcdConfig::tls`]). Calls go to
    /// one endpoint and move to the next when it fails.
    pub endpoints: Vec<String>,
    /// etcd authentication, if enabled on the servers.
    pub credentials: Option<EtcdCredentials>,
    /// TLS; required for `https://` endpoints.
    pub tls: Option<EtcdTls>,
    /// The key namespace (Patroni's `namespace`, `service` by default).
    pub namespace: String,
    /// The cluster's name: keys live under `/<namespace>/<scope>/`.
    pub scope: String,
    /// The bound on every call, retries included: a call that cannot finish in
    /// time fails with `DcsError::Timeout` or `DcsError::Unreachable`.
    pub retry_timeout: Duration,
}

impl EtcdConfig {
    /// A configuration for `scope` on `endpoints`, in the `service`
    /// namespace, without authentication or TLS, with `retry_timeout` 2 s.
    pub fn new<I, S>(endpoints: I, scope: impl Into<String>) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        EtcdConfig {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            credentials: None,
            tls: None,
            namespace: DEFAULT_NAMESPACE.to_owned(),
            scope: scope.into(),
            retry_timeout: DEFAULT_RETRY_TIMEOUT,
        }
    }

    /// Authenticates as `username`.
    pub fn with_credentials(
        mut self,
        username: impl Into<String>,
        password: impl Into<Secret>,
    ) -> Self {
        self.credentials = Some(EtcdCredentials {
            username: username.into(),
            password: password.into(),
        });
        self
    }

    /// Talks TLS to the servers.
    pub fn with_tls(mut self, tls: EtcdTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Uses another key namespace.
    pub fn with_namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// Bounds every call by `retry_timeout`.
    pub fn with_retry_timeout(mut self, retry_timeout: Duration) -> Self {
        self.retry_timeout = retry_timeout;
        self
    }

    /// The key layout of [`EtcdConfig::namespace`] and [`EtcdConfig::scope`].
    pub fn layout(&self) -> Result<KeyLayout, EtcdConfigError> {
        Ok(KeyLayout::new(&self.namespace, &self.scope)?)
    }

    /// Checks the configuration and reads the certificate files.
    pub(crate) fn validate(&self) -> Result<Validated, EtcdConfigError> {
        let layout = self.layout()?;
        if self.retry_timeout.is_zero() {
            return Err(EtcdConfigError::ZeroRetryTimeout);
        }
        if self.endpoints.is_empty() {
            return Err(EtcdConfigError::NoEndpoints);
        }
        let tls = self.tls.is_some();
        let endpoints = self
            .endpoints
            .iter()
            .map(|endpoint| normalize_endpoint(endpoint, tls))
            .collect::<Result<Vec<_>, _>>()?;
        let mut options = ConnectOptions::new()
            .with_require_leader(true)
            .with_auto_token_refresh(true);
        if let Some(credentials) = &self.credentials {
            if credentials.username.is_empty() {
                return Err(EtcdConfigError::EmptyUsername);
            }
            options = options.with_user(
                credentials.username.clone(),
                credentials.password.expose().to_owned(),
            );
        }
        if let Some(tls) = &self.tls {
            options = options.with_tls(tls_options(tls)?);
        }
        Ok(Validated {
            layout,
            endpoints,
            options,
        })
    }
}

/// A checked configuration, ready to connect.
pub(crate) struct Validated {
    pub(crate) layout: KeyLayout,
    pub(crate) endpoints: Vec<String>,
    /// Holds the password: never logged or printed.
    pub(crate) options: ConnectOptions,
}

fn normalize_endpoint(endpoint: &str, tls: bool) -> Result<String, EtcdConfigError> {
    let invalid = |reason: &str| EtcdConfigError::InvalidEndpoint {
        endpoint: endpoint.to_owned(),
        reason: reason.to_owned(),
    };
    let (scheme, rest) = match endpoint.split_once("://") {
        Some((scheme, rest)) => (scheme, rest),
        None => (if tls { "https" } else { "http" }, endpoint),
    };
    match (scheme, tls) {
        ("http", true) => return Err(invalid("TLS is configured, so use https://")),
        ("https", false) => return Err(invalid("https:// needs a TLS configuration (a CA file)")),
        ("http", false) | ("https", true) => {}
        _ => return Err(invalid("the scheme must be http:// or https://")),
    }
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.contains('/') {
        return Err(invalid("a client URL has no path"));
    }
    HostPort::parse(authority).map_err(|e| invalid(&e.problem.to_string()))?;
    Ok(format!("{scheme}://{authority}"))
}

fn read_pem(what: &'static str, path: &Path, marker: &str) -> Result<Vec<u8>, EtcdConfigError> {
    let bytes = std::fs::read(path).map_err(|source| EtcdConfigError::ReadFile {
        what,
        path: path.to_owned(),
        source,
    })?;
    let looks_right = std::str::from_utf8(&bytes)
        .map(|text| text.contains("-----BEGIN") && text.contains(marker))
        .unwrap_or(false);
    if !looks_right {
        return Err(EtcdConfigError::NotPem {
            what,
            path: path.to_owned(),
        });
    }
    Ok(bytes)
}

fn tls_options(tls: &EtcdTls) -> Result<TlsOptions, EtcdConfigError> {
    let ca = read_pem("CA certificate", &tls.ca_file, "CERTIFICATE-----")?;
    let mut options = TlsOptions::new().ca_certificate(Certificate::from_pem(ca));
    if let Some(identity) = &tls.client_identity {
        let cert = read_pem(
            "client certificate",
            &identity.cert_file,
            "CERTIFICATE-----",
        )?;
        let key = read_pem("client key", &identity.key_file, "PRIVATE KEY-----")?;
        options = options.identity(Identity::from_pem(cert, key));
    }
    if let Some(name) = &tls.server_name {
        options = options.domain_name(name.clone());
    }
    Ok(options)
}

/// A configuration that cannot work.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EtcdConfigError {
    /// No endpoint at all.
    #[error("no etcd endpoints configured")]
    NoEndpoints,
    /// An endpoint that is not a client URL.
    #[error("invalid etcd endpoint `{endpoint}`: {reason}")]
    InvalidEndpoint {
        /// The endpoint as configured.
        endpoint: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The namespace or scope do not make a key layout.
    #[error("invalid etcd key layout: {0}")]
    Layout(#[from] ModelError),
    /// `retry_timeout` is zero, so no call could ever succeed.
    #[error("retry_timeout must be longer than zero")]
    ZeroRetryTimeout,
    /// Credentials without a user name.
    #[error("the etcd user name is empty")]
    EmptyUsername,
    /// A certificate or key file that cannot be read.
    #[error("cannot read the etcd {what} file `{}`: {source}", path.display())]
    ReadFile {
        /// Which file (`CA certificate`, `client certificate`, `client key`).
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// Why it cannot be read.
        #[source]
        source: std::io::Error,
    },
    /// A certificate or key file that is not PEM.
    #[error("the etcd {what} file `{}` is not PEM", path.display())]
    NotPem {
        /// Which file.
        what: &'static str,
        /// Its path.
        path: PathBuf,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_normalized_and_checked() {
        assert_eq!(
            normalize_endpoint("127.0.0.1:2379", false).unwrap(),
            "http://127.0.0.1:2379"
        );
        assert_eq!(
            normalize_endpoint("etcd1:2379", true).unwrap(),
            "https://etcd1:2379"
        );
        assert_eq!(
            normalize_endpoint("http://10.0.0.1:2379/", false).unwrap(),
            "http://10.0.0.1:2379"
        );
        assert_eq!(
            normalize_endpoint("[::1]:2379", false).unwrap(),
            "http://[::1]:2379"
        );
        for (endpoint, tls) in [
            ("http://a:1", true),
            ("https://a:1", false),
            ("ftp://a:1", false),
            ("a", false),
            ("a:port", false),
            ("http://a:1/v3", false),
            (":2379", false),
            ("a:0", false),
            ("::1", false),
            ("http://::1:2379", false),
        ] {
            let err = normalize_endpoint(endpoint, tls).unwrap_err();
            assert!(err.to_string().contains(endpoint), "{err}");
        }
    }

    #[test]
    fn the_password_never_shows_in_debug_output() {
        let config = EtcdConfig::new(["127.0.0.1:2379"], "pg")
            .with_credentials("matriarch", "hunter2-secret");
        let text = format!("{config:?} {:#?}", config);
        assert!(!text.contains("hunter2-secret"), "{text}");
        assert!(text.contains("matriarch") && text.contains("***"), "{text}");
    }

    #[test]
    fn bad_configurations_are_errors_naming_the_problem() {
        let base = EtcdConfig::new(["127.0.0.1:2379"], "pg");
        let no_endpoints = EtcdConfig::new(Vec::<String>::new(), "pg");
        assert!(matches!(
            no_endpoints.validate(),
            Err(EtcdConfigError::NoEndpoints)
        ));
        let zero = base.clone().with_retry_timeout(Duration::ZERO);
        assert!(matches!(
            zero.validate(),
            Err(EtcdConfigError::ZeroRetryTimeout)
        ));
        let bad_scope = EtcdConfig::new(["127.0.0.1:2379"], "a/b");
        assert!(matches!(
            bad_scope.validate(),
            Err(EtcdConfigError::Layout(_))
        ));
        let missing = base.clone().with_tls(EtcdTls::new("/nonexistent/ca.pem"));
        let err = missing.validate().err().expect("unreadable CA");
        assert!(matches!(err, EtcdConfigError::ReadFile { .. }));
        assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
    }
}
