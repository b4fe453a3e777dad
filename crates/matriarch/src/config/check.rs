//! [`NodeConfig::validate`]: every setting checked, the error naming the key.

use std::net::{IpAddr, SocketAddr};

use matriarch_model::{ClusterConfig, HostPort, KeyLayout, MemberName};

use super::{cluster_config_from_json, IpRange, NodeConfig, Validated, WatchdogMode};
use crate::error::ConfigError;

/// How long a custom bootstrap method's command, and then its recovery, may
/// run: a restore of a large backup takes long, but one that never ends must
/// give the initialize race up.
const CUSTOM_BOOTSTRAP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3600);

impl NodeConfig {
    /// Checks every setting; the error names the key.
    pub(crate) fn validate(&self) -> Result<Validated, ConfigError> {
        if self.scope.is_empty() {
            return Err(ConfigError::missing("scope", "MATRIARCH_SCOPE"));
        }
        if self.name.is_empty() {
            return Err(ConfigError::missing("name", "MATRIARCH_NAME"));
        }
        let name = MemberName::new(self.name.as_str())
            .map_err(|e| ConfigError::invalid("name", e.to_string()))?;
        let layout = KeyLayout::new(&self.namespace, &self.scope)
            .map_err(|e| ConfigError::invalid("scope/namespace", e.to_string()))?;
        tracing_subscriber::EnvFilter::try_new(&self.log.level)
            .map_err(|e| ConfigError::invalid("log.level", e.to_string()))?;
        if let Some(dir) = &self.log.dir {
            if !dir.is_absolute() {
                return Err(ConfigError::invalid(
                    "log.dir",
                    format!("{} must be an absolute path", dir.display()),
                ));
            }
        }
        if self.log.file_size == 0 {
            return Err(ConfigError::invalid(
                "log.file_size",
                "must be at least 1 byte",
            ));
        }

        let bootstrap_dcs = match &self.bootstrap.dcs {
            Some(value) => cluster_config_from_json("bootstrap.dcs", value)?,
            None => ClusterConfig::default(),
        };

        // REST API.
        let restapi_listen: SocketAddr = self.restapi.listen.parse().map_err(|_| {
            ConfigError::invalid(
                "restapi.listen",
                format!("{:?} is not an ip:port address", self.restapi.listen),
            )
        })?;
        // Port 0 would bind a random port that no member record, peer or tool knows.
        if restapi_listen.port() == 0 {
            return Err(ConfigError::invalid(
                "restapi.listen",
                "the port must not be 0: peers and tools reach the API at the port given here",
            ));
        }
        let tls = match (&self.restapi.certfile, &self.restapi.keyfile) {
            (Some(_), Some(_)) => true,
            (None, None) => false,
            (Some(_), None) => {
                return Err(ConfigError::invalid(
                    "restapi.keyfile",
                    "required with restapi.certfile",
                ))
            }
            (None, Some(_)) => {
                return Err(ConfigError::invalid(
                    "restapi.certfile",
                    "required with restapi.keyfile",
                ))
            }
        };
        if self.restapi.cafile.is_some() && !tls {
            return Err(ConfigError::invalid(
                "restapi.cafile",
                "client certificates need TLS: set restapi.certfile and restapi.keyfile",
            ));
        }
        require_files(
            &[
                ("restapi.certfile", &self.restapi.certfile),
                ("restapi.keyfile", &self.restapi.keyfile),
                ("restapi.cafile", &self.restapi.cafile),
            ],
            "is not a readable file",
        )?;
        for (key, value) in [
            ("restapi.max_connections", self.restapi.max_connections),
            (
                "restapi.max_connections_per_ip",
                self.restapi.max_connections_per_ip,
            ),
        ] {
            if value == Some(0) {
                return Err(ConfigError::invalid(key, "must be at least 1"));
            }
        }
        let connect = match &self.restapi.connect_address {
            Some(addr) => host_port("restapi.connect_address", addr)?,
            None => HostPort {
                host: if restapi_listen.ip().is_unspecified() {
                    "127.0.0.1".to_owned()
                } else {
                    restapi_listen.ip().to_string()
                },
                port: restapi_listen.port(),
            },
        };
        let scheme = if tls { "https" } else { "http" };
        let api_url = format!("{scheme}://{connect}/patroni");
        if let Some(auth) = &self.restapi.authentication {
            if auth.username.is_empty() || auth.username.contains(':') {
                return Err(ConfigError::invalid(
                    "restapi.authentication.username",
                    "must be non-empty and without ':'",
                ));
            }
            if auth.password.expose().is_empty() {
                return Err(ConfigError::invalid(
                    "restapi.authentication.password",
                    "must not be empty",
                ));
            }
        }
        let allowlist = self
            .restapi
            .allowlist
            .iter()
            .map(|entry| IpRange::parse(entry))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ConfigError::invalid("restapi.allowlist", e))?;

        // DCS.
        match (&self.etcd3, &self.zookeeper) {
            (None, None) => {
                return Err(ConfigError::invalid(
                    "etcd3/zookeeper",
                    "configure one DCS: an etcd3 or a zookeeper section",
                ))
            }
            (Some(_), Some(_)) => {
                return Err(ConfigError::invalid(
                    "etcd3/zookeeper",
                    "configure only one DCS, not both etcd3 and zookeeper",
                ))
            }
            (Some(etcd), None) => {
                if etcd.hosts.hosts().is_empty() {
                    return Err(ConfigError::invalid("etcd3.hosts", "no host given"));
                }
                if etcd.username.is_some() != etcd.password.is_some() {
                    return Err(ConfigError::invalid(
                        "etcd3.username/password",
                        "give both or neither",
                    ));
                }
                if (etcd.cert.is_some() || etcd.key.is_some()) && etcd.cacert.is_none() {
                    return Err(ConfigError::invalid(
                        "etcd3.cacert",
                        "required with cert/key",
                    ));
                }
                if etcd.cert.is_some() != etcd.key.is_some() {
                    return Err(ConfigError::invalid(
                        "etcd3.cert/key",
                        "give both or neither",
                    ));
                }
            }
            (None, Some(zk)) => {
                if zk.hosts.hosts().is_empty() {
                    return Err(ConfigError::invalid("zookeeper.hosts", "no host given"));
                }
            }
        }

        // PostgreSQL.
        let pg = self
            .postgresql
            .as_ref()
            .ok_or_else(|| ConfigError::invalid("postgresql", "missing section"))?;
        let pg_listen = host_port("postgresql.listen", &pg.listen)?;
        let connect = match &pg.connect_address {
            Some(addr) => host_port("postgresql.connect_address", addr)?,
            None => HostPort {
                host: match pg_listen.host.as_str() {
                    "0.0.0.0" | "*" | "::" => "127.0.0.1".to_owned(),
                    host => host.to_owned(),
                },
                port: pg_listen.port,
            },
        };
        let conn_url = format!("postgres://{connect}/postgres");
        let pg_listen = (pg_listen.host, pg_listen.port);
        if !pg.data_dir.is_absolute() {
            return Err(ConfigError::invalid(
                "postgresql.data_dir",
                format!("{} must be an absolute path", pg.data_dir.display()),
            ));
        }
        if let Some(dir) = &pg.socket_dir {
            if !dir.is_absolute() {
                return Err(ConfigError::invalid(
                    "postgresql.socket_dir",
                    "must be an absolute path",
                ));
            }
        }
        if let Some(bin) = &pg.bin_dir {
            if !bin.join("pg_ctl").is_file() {
                return Err(ConfigError::invalid(
                    "postgresql.bin_dir",
                    format!("{} has no pg_ctl", bin.display()),
                ));
            }
        }
        for (key, role) in [
            (
                "postgresql.authentication.superuser",
                Some(&pg.authentication.superuser),
            ),
            (
                "postgresql.authentication.replication",
                Some(&pg.authentication.replication),
            ),
            (
                "postgresql.authentication.rewind",
                pg.authentication.rewind.as_ref(),
            ),
        ] {
            if let Some(role) = role {
                if role.username.is_empty() {
                    return Err(ConfigError::invalid(
                        format!("{key}.username"),
                        "must not be empty",
                    ));
                }
            }
        }

        let bootstrap_method =
            self.bootstrap
                .method(&self.scope, &pg.data_dir, CUSTOM_BOOTSTRAP_TIMEOUT)?;

        // Routers.
        let mut dns_server = None;
        if let Some(dns) = &self.router.dns {
            let server: SocketAddr = dns
                .server
                .parse()
                .or_else(|_| {
                    dns.server
                        .parse::<IpAddr>()
                        .map(|ip| SocketAddr::new(ip, 53))
                })
                .map_err(|_| {
                    ConfigError::invalid(
                        "router.dns.server",
                        format!("{:?} is not ip or ip:port", dns.server),
                    )
                })?;
            dns_server = Some(server);
            matriarch_dns::TsigKey::from_base64(
                dns.tsig.key_name.clone(),
                dns.tsig.algorithm.clone(),
                dns.tsig.secret.expose(),
            )
            .map_err(|e| ConfigError::invalid("router.dns.tsig", e.to_string()))?;
        }
        if let Some(elb) = &self.router.elb {
            if !elb.writer_target_group_arn.starts_with("arn:") {
                return Err(ConfigError::invalid(
                    "router.elb.writer_target_group_arn",
                    "must be an ARN (arn:aws:elasticloadbalancing:...)",
                ));
            }
        }

        // Callbacks.
        require_files(
            &[
                ("callbacks.on_start", &self.callbacks.on_start),
                ("callbacks.on_stop", &self.callbacks.on_stop),
                ("callbacks.on_role_change", &self.callbacks.on_role_change),
                ("callbacks.on_restart", &self.callbacks.on_restart),
                ("callbacks.on_reload", &self.callbacks.on_reload),
                ("callbacks.pre_promote", &self.callbacks.pre_promote),
            ],
            "is not a file",
        )?;

        // Watchdog.
        if self.watchdog.mode != WatchdogMode::Off && !self.watchdog.device.is_absolute() {
            return Err(ConfigError::invalid(
                "watchdog.device",
                format!(
                    "{} must be an absolute path",
                    self.watchdog.device.display()
                ),
            ));
        }
        self.check_backup()?;

        Ok(Validated {
            name,
            layout,
            bootstrap_dcs,
            bootstrap_method,
            restapi_listen,
            api_url,
            allowlist,
            pg_listen,
            conn_url,
            dns_server,
        })
    }
}

/// `host:port` (`[v6]:port`) from the setting `key`; port 0 is refused.
fn host_port(key: &str, text: &str) -> Result<HostPort, ConfigError> {
    HostPort::parse(text).map_err(|e| ConfigError::invalid(key, e.to_string()))
}

/// Refuses the first of the set `paths` (by config key) that is not a file,
/// saying it `is_not`.
fn require_files(
    paths: &[(&str, &Option<std::path::PathBuf>)],
    is_not: &str,
) -> Result<(), ConfigError> {
    for (key, path) in paths {
        if let Some(path) = path {
            if !path.is_file() {
                return Err(ConfigError::invalid(
                    *key,
                    format!("{} {is_not}", path.display()),
                ));
            }
        }
    }
    Ok(())
}

impl NodeConfig {
    /// `pgbackrest:` and the replica methods: the `pgbackrest` method needs
    /// the repository, and its archiving owns `archive_mode`/`archive_command`.
    fn check_backup(&self) -> Result<(), ConfigError> {
        let pg = self.pg()?;
        let methods = super::replica_methods::replica_methods(pg)?;
        if pg.clone_stall_timeout == 0 {
            return Err(ConfigError::invalid(
                "postgresql.clone_stall_timeout",
                "must be at least 1 second",
            ));
        }
        let restores = methods
            .iter()
            .any(|m| matches!(m, matriarch_postgres::ReplicaMethod::PgBackRest { .. }));
        match &self.pgbackrest {
            None if restores => Err(ConfigError::invalid(
                "postgresql.create_replica_methods",
                "the pgbackrest method needs the pgbackrest section (the repository)",
            )),
            None => Ok(()),
            Some(backrest) => {
                backrest.check(&pg.data_dir)?;
                for name in ["archive_mode", "archive_command"] {
                    if backrest.archive && pg.parameters.contains_key(name) {
                        return Err(ConfigError::invalid(
                            format!("postgresql.parameters.{name}"),
                            "pgbackrest.archive sets it; set pgbackrest.archive: false to archive otherwise",
                        ));
                    }
                }
                Ok(())
            }
        }
    }
}
