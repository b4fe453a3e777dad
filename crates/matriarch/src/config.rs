//! The node configuration file (`matriarch run --config node.yaml`), in
//! Patroni's shape where it makes sense, with `MATRIARCH_*` environment
//! overrides.
//!
//! Every section refuses unknown keys (except `tags`, which holds custom tags
//! for `/replica?tag_key=value`). [`NodeConfig::load`] parses, applies the
//! environment, then [`NodeConfig::validate`]s every setting; an error names
//! the key and what is wrong, and nothing is started.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use matriarch_model::{ClusterConfig, KeyLayout, MemberName, ParameterValue, Tags};
use serde::Deserialize;

use crate::error::ConfigError;
use crate::secret::Password;

/// The whole node configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// The cluster's name (the DCS scope).
    #[serde(default)]
    pub scope: String,
    /// The DCS namespace (`/service/` by default).
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// This member's name, unique in the cluster.
    #[serde(default)]
    pub name: String,
    /// Logging.
    #[serde(default)]
    pub log: LogConfig,
    /// The REST API.
    #[serde(default)]
    pub restapi: RestApiConfig,
    /// etcd (v3 API) as the DCS.
    #[serde(default)]
    pub etcd3: Option<Etcd3Config>,
    /// ZooKeeper as the DCS.
    #[serde(default)]
    pub zookeeper: Option<ZooKeeperSection>,
    /// What a new cluster is created with.
    #[serde(default)]
    pub bootstrap: BootstrapConfig,
    /// The local PostgreSQL.
    pub postgresql: Option<PostgresqlSection>,
    /// This member's tags.
    #[serde(default)]
    pub tags: Tags,
    /// Where clients are sent (none: clients use the REST health checks).
    #[serde(default)]
    pub router: RouterSection,
    /// Commands run on events.
    #[serde(default)]
    pub callbacks: CallbacksConfig,
    /// The Linux watchdog armed while this node leads (off by default).
    #[serde(default)]
    pub watchdog: WatchdogConfig,
}

fn default_namespace() -> String {
    "/service/".to_owned()
}

/// Log output.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `text` or `json`.
    #[serde(default)]
    pub format: LogFormat,
    /// A `tracing` filter: `info`, `debug`, `matriarch=debug,info`.
    #[serde(default = "default_log_level")]
    pub level: String,
    /// Also write the log to `<dir>/matriarch.log` (stderr goes on): Patroni's
    /// `log.dir`. Applied at start, not on reload.
    #[serde(default)]
    pub dir: Option<PathBuf>,
    /// How many rotated files (`matriarch.log.1` ...) to keep besides the
    /// current one, as Patroni's `log.file_num`.
    #[serde(default = "default_log_file_num")]
    pub file_num: u32,
    /// The size in bytes past which the file is rotated, as Patroni's
    /// `log.file_size`.
    #[serde(default = "default_log_file_size")]
    pub file_size: u64,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            level: default_log_level(),
            dir: None,
            file_num: default_log_file_num(),
            file_size: default_log_file_size(),
        }
    }
}

fn default_log_level() -> String {
    "info".to_owned()
}

/// Patroni's default.
fn default_log_file_num() -> u32 {
    4
}

/// Patroni's default (25 MB).
fn default_log_file_size() -> u64 {
    25_000_000
}

/// The log line format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object a line.
    Json,
}

/// `restapi:`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestApiConfig {
    /// Where the API listens (`0.0.0.0:8008` by default).
    #[serde(default = "default_restapi_listen")]
    pub listen: String,
    /// The `host:port` peers and tools use; defaults to `listen` (with
    /// `127.0.0.1` for an unspecified address).
    #[serde(default)]
    pub connect_address: Option<String>,
    /// Basic authentication required by every mutating call.
    #[serde(default)]
    pub authentication: Option<BasicAuthConfig>,
    /// Client addresses (IPs or CIDR ranges) allowed to make mutating calls;
    /// empty allows every address.
    #[serde(default)]
    pub allowlist: Vec<String>,
    /// TLS certificate chain (PEM); with `keyfile`, the API speaks HTTPS.
    #[serde(default)]
    pub certfile: Option<PathBuf>,
    /// TLS private key (PEM).
    #[serde(default)]
    pub keyfile: Option<PathBuf>,
    /// CA (PEM) that client certificates are verified against; a verified
    /// client certificate authenticates a mutating call.
    #[serde(default)]
    pub cafile: Option<PathBuf>,
    /// Concurrent connections the API serves in total; more are closed at
    /// once. Never more than a quarter of the file limit, so that the HA
    /// loop and PostgreSQL keep theirs (default: that quarter, at most
    /// 10,000).
    #[serde(default)]
    pub max_connections: Option<usize>,
    /// Concurrent connections the API serves per client address (default 100).
    #[serde(default)]
    pub max_connections_per_ip: Option<usize>,
}

impl Default for RestApiConfig {
    fn default() -> Self {
        RestApiConfig {
            listen: default_restapi_listen(),
            connect_address: None,
            authentication: None,
            allowlist: Vec::new(),
            certfile: None,
            keyfile: None,
            cafile: None,
            max_connections: None,
            max_connections_per_ip: None,
        }
    }
}

fn default_restapi_listen() -> String {
    "0.0.0.0:8008".to_owned()
}

/// A user name and password.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BasicAuthConfig {
    /// The user name.
    pub username: String,
    /// The password.
    pub password: Password,
}

/// `etcd3:`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Etcd3Config {
    /// Endpoints: a list, or one comma-separated string (`host:port` or URLs).
    pub hosts: HostList,
    /// etcd user.
    #[serde(default)]
    pub username: Option<String>,
    /// etcd password.
    #[serde(default)]
    pub password: Option<Password>,
    /// CA certificate (PEM); setting it switches to HTTPS.
    #[serde(default)]
    pub cacert: Option<PathBuf>,
    /// Client certificate (PEM).
    #[serde(default)]
    pub cert: Option<PathBuf>,
    /// Client key (PEM).
    #[serde(default)]
    pub key: Option<PathBuf>,
}

/// `zookeeper:`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZooKeeperSection {
    /// Servers (`host:port`): a list or a comma-separated string.
    pub hosts: HostList,
    /// A chroot path under which the layout lives.
    #[serde(default)]
    pub chroot: Option<String>,
    /// Digest authentication.
    #[serde(default)]
    pub auth: Option<ZooKeeperAuth>,
}

/// ZooKeeper digest authentication.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZooKeeperAuth {
    /// The user.
    pub username: String,
    /// The password.
    pub password: Password,
}

/// A list of hosts, written as a YAML list or a comma-separated string.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum HostList {
    /// `[a:2379, b:2379]`
    List(Vec<String>),
    /// `a:2379,b:2379`
    Text(String),
}

impl HostList {
    /// The hosts, trimmed, without empty entries.
    pub fn hosts(&self) -> Vec<String> {
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

/// `bootstrap:`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootstrapConfig {
    /// The dynamic configuration a new cluster starts with (Patroni's
    /// `bootstrap.dcs`); checked with `ClusterConfig::validate`.
    #[serde(default)]
    pub dcs: Option<serde_json::Value>,
    /// Extra `initdb` arguments (e.g. `--locale=C`, `--no-sync`).
    #[serde(default)]
    pub initdb: Vec<String>,
}

/// `postgresql:`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresqlSection {
    /// `host:port` PostgreSQL listens on (`listen_addresses` and `port`).
    pub listen: String,
    /// `host:port` other members and clients connect to; defaults to `listen`.
    #[serde(default)]
    pub connect_address: Option<String>,
    /// The data directory (absolute).
    pub data_dir: PathBuf,
    /// The server programs' directory.
    #[serde(default)]
    pub bin_dir: Option<PathBuf>,
    /// The Unix socket directory (absolute); defaults to the data
    /// directory's parent.
    #[serde(default)]
    pub socket_dir: Option<PathBuf>,
    /// The OS user the server programs run as when matriarch runs as root.
    #[serde(default)]
    pub os_user: Option<String>,
    /// The roles.
    pub authentication: PgAuthentication,
    /// Local parameters, over `bootstrap.dcs.postgresql.parameters`.
    #[serde(default)]
    pub parameters: BTreeMap<String, ParameterValue>,
    /// `pg_hba.conf` lines for a new cluster.
    #[serde(default)]
    pub pg_hba: Vec<String>,
}

/// `postgresql.authentication:`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PgAuthentication {
    /// The superuser matriarch connects as.
    pub superuser: PgRoleConfig,
    /// The replication role.
    pub replication: PgRoleConfig,
    /// The pg_rewind role (the superuser if absent).
    #[serde(default)]
    pub rewind: Option<PgRoleConfig>,
}

/// One PostgreSQL role.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PgRoleConfig {
    /// The role name.
    pub username: String,
    /// Its password.
    #[serde(default)]
    pub password: Option<Password>,
}

/// `router:`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouterSection {
    /// AWS ELB target groups.
    #[serde(default)]
    pub elb: Option<ElbSection>,
    /// DNS names updated with RFC 2136.
    #[serde(default)]
    pub dns: Option<DnsSection>,
}

/// `router.elb:`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ElbSection {
    /// The target group that holds exactly the primary.
    pub writer_target_group_arn: String,
    /// The target group that holds the replicas.
    #[serde(default)]
    pub reader_target_group_arn: Option<String>,
    /// The AWS region.
    #[serde(default)]
    pub region: Option<String>,
    /// An endpoint override (e.g. a local emulator).
    #[serde(default)]
    pub endpoint_url: Option<String>,
    /// `all` for addresses outside the target group's VPC.
    #[serde(default)]
    pub availability_zone: Option<String>,
}

/// `router.dns:`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsSection {
    /// The zone's primary server, `ip:port`.
    pub server: String,
    /// The zone.
    pub zone: String,
    /// The name that points at the primary.
    pub writer: String,
    /// The name that holds the replicas.
    #[serde(default)]
    pub reader: Option<String>,
    /// Record TTL in seconds.
    #[serde(default = "default_dns_ttl")]
    pub ttl: u32,
    /// TSIG key.
    pub tsig: TsigSection,
}

fn default_dns_ttl() -> u32 {
    5
}

/// `router.dns.tsig:`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TsigSection {
    /// The key's name.
    pub key_name: String,
    /// `hmac-sha256` etc.
    #[serde(default = "default_tsig_algorithm")]
    pub algorithm: String,
    /// The base64 secret.
    pub secret: Password,
}

fn default_tsig_algorithm() -> String {
    "hmac-sha256".to_owned()
}

/// `callbacks:`: commands run with `<action> <role> <scope>`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallbacksConfig {
    /// After PostgreSQL started (asynchronous).
    #[serde(default)]
    pub on_start: Option<PathBuf>,
    /// After PostgreSQL stopped (asynchronous).
    #[serde(default)]
    pub on_stop: Option<PathBuf>,
    /// After this member changed role (asynchronous).
    #[serde(default)]
    pub on_role_change: Option<PathBuf>,
    /// Before a promotion (synchronous): a non-zero exit cancels it.
    #[serde(default)]
    pub pre_promote: Option<PathBuf>,
}

/// `watchdog:` (Patroni's shape): a Linux watchdog device kept armed while
/// this node leads, so that a hung host is reset before its lock expires.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatchdogConfig {
    /// `off`, `automatic` or `required`.
    #[serde(default)]
    pub mode: WatchdogMode,
    /// The device (`/dev/watchdog` by default).
    #[serde(default = "default_watchdog_device")]
    pub device: PathBuf,
    /// Seconds between the watchdog firing and the lock expiring: the
    /// device's timeout is `ttl - safety_margin` (at least 1 s).
    #[serde(default = "default_watchdog_safety_margin")]
    pub safety_margin: u64,
}

impl Default for WatchdogConfig {
    fn default() -> Self {
        WatchdogConfig {
            mode: WatchdogMode::Off,
            device: default_watchdog_device(),
            safety_margin: default_watchdog_safety_margin(),
        }
    }
}

fn default_watchdog_device() -> PathBuf {
    PathBuf::from("/dev/watchdog")
}

fn default_watchdog_safety_margin() -> u64 {
    5
}

/// `watchdog.mode`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WatchdogMode {
    /// No watchdog.
    #[default]
    Off,
    /// Use the device when it works; a failure is logged and ignored.
    Automatic,
    /// Refuse to start when the device cannot be opened; a failure while
    /// leading is reported as a failure of the write fence.
    Required,
}

impl<'de> Deserialize<'de> for WatchdogMode {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bool(bool),
            Text(String),
        }
        // YAML 1.1 readers (Patroni's) take a bare `off` as false.
        match Raw::deserialize(deserializer)? {
            Raw::Bool(false) => Ok(WatchdogMode::Off),
            Raw::Bool(true) => Ok(WatchdogMode::Automatic),
            Raw::Text(text) => match text.to_ascii_lowercase().as_str() {
                "off" | "false" => Ok(WatchdogMode::Off),
                "automatic" | "on" | "true" => Ok(WatchdogMode::Automatic),
                "required" => Ok(WatchdogMode::Required),
                _ => Err(serde::de::Error::custom(format!(
                    "watchdog.mode must be off, automatic or required, not {text:?}"
                ))),
            },
        }
    }
}

/// The keys of the dynamic configuration, for refusing unknown ones.
const CLUSTER_CONFIG_KEYS: &[&str] = &[
    "ttl",
    "loop_wait",
    "retry_timeout",
    "maximum_lag_on_failover",
    "synchronous_mode",
    "synchronous_mode_strict",
    "synchronous_node_count",
    "failsafe_mode",
    "pause",
    "postgresql",
];
const CLUSTER_POSTGRESQL_KEYS: &[&str] = &["parameters", "use_pg_rewind", "use_slots"];

/// Reads a dynamic configuration from JSON, refusing unknown keys and
/// checking [`ClusterConfig::validate`]. `key` prefixes error messages.
pub fn cluster_config_from_json(
    key: &str,
    value: &serde_json::Value,
) -> Result<ClusterConfig, ConfigError> {
    let object = value
        .as_object()
        .ok_or_else(|| ConfigError::invalid(key, "must be a mapping"))?;
    for field in object.keys() {
        if !CLUSTER_CONFIG_KEYS.contains(&field.as_str()) {
            return Err(ConfigError::invalid(
                format!("{key}.{field}"),
                format!(
                    "unknown key; expected one of {}",
                    CLUSTER_CONFIG_KEYS.join(", ")
                ),
            ));
        }
    }
    if let Some(pg) = object.get("postgresql") {
        let pg = pg.as_object().ok_or_else(|| {
            ConfigError::invalid(format!("{key}.postgresql"), "must be a mapping")
        })?;
        for field in pg.keys() {
            if !CLUSTER_POSTGRESQL_KEYS.contains(&field.as_str()) {
                return Err(ConfigError::invalid(
                    format!("{key}.postgresql.{field}"),
                    format!(
                        "unknown key; expected one of {}",
                        CLUSTER_POSTGRESQL_KEYS.join(", ")
                    ),
                ));
            }
        }
    }
    dynamic_config_from_json(key, value)
}

/// Top-level keys of Patroni's dynamic configuration that matriarch keeps
/// without acting on them, so a Patroni cluster's `config` key round-trips.
const PATRONI_ONLY_CONFIG_KEYS: &[&str] = &[
    "slots",
    "ignore_slots",
    "member_slots_ttl",
    "standby_cluster",
    "check_timeline",
    "primary_start_timeout",
    "primary_stop_timeout",
    "master_start_timeout",
    "master_stop_timeout",
    "maximum_lag_on_syncnode",
    "max_timelines_history",
    "retain_slots",
    "use_slots",
];

/// Refuses a top-level key of a requested change (`PATCH`/`PUT /config`)
/// that neither matriarch nor Patroni knows: most likely a typo (`tll`), which
/// would otherwise be stored and silently do nothing. Keys already in the DCS
/// are never checked, so a key written by another tool survives.
pub fn check_requested_config_keys(
    key: &str,
    requested: &serde_json::Value,
) -> Result<(), ConfigError> {
    let Some(object) = requested.as_object() else {
        return Ok(());
    };
    for field in object.keys() {
        let known = CLUSTER_CONFIG_KEYS.contains(&field.as_str())
            || PATRONI_ONLY_CONFIG_KEYS.contains(&field.as_str());
        if !known {
            let hint = CLUSTER_CONFIG_KEYS
                .iter()
                .find(|k| edit_distance(k, field) <= 2)
                .map(|k| format!(" (did you mean `{k}`?)"))
                .unwrap_or_default();
            return Err(ConfigError::invalid(
                format!("{key}.{field}"),
                format!("unknown setting{hint}; neither matriarch nor Patroni has it"),
            ));
        }
    }
    Ok(())
}

/// Levenshtein distance of two short ASCII keys.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut previous = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous + usize::from(ca != *cb);
            previous = row[j + 1];
            row[j + 1] = substitution.min(row[j] + 1).min(row[j + 1] + 1);
        }
    }
    row[b.len()]
}

/// Reads a dynamic configuration from JSON as the DCS holds it: every known
/// key is type-checked (the error names it) and [`ClusterConfig::validate`]
/// applies, while unknown keys (Patroni's `slots`, `standby_cluster`,
/// `postgresql.recovery_conf`, ...) are kept in `other`, so that rewriting
/// the `config` key never drops them. `key` prefixes error messages.
pub fn dynamic_config_from_json(
    key: &str,
    value: &serde_json::Value,
) -> Result<ClusterConfig, ConfigError> {
    let object = value
        .as_object()
        .ok_or_else(|| ConfigError::invalid(key, "must be a mapping"))?;
    for field in CLUSTER_CONFIG_KEYS {
        if let Some(v) = object.get(*field) {
            // Each field on its own, so the error names it.
            let mut single = serde_json::Map::new();
            single.insert((*field).to_owned(), v.clone());
            if let Err(err) = serde_json::from_value::<ClusterConfig>(single.into()) {
                return Err(ConfigError::invalid(
                    format!("{key}.{field}"),
                    err.to_string(),
                ));
            }
        }
    }
    let config: ClusterConfig = serde_json::from_value(value.clone())
        .map_err(|err| ConfigError::invalid(key, err.to_string()))?;
    config
        .validate()
        .map_err(|err| ConfigError::invalid(key, err.to_string()))?;
    Ok(config)
}

/// Everything derived and checked from a [`NodeConfig`]: what the daemon
/// starts with.
#[derive(Clone, Debug)]
pub struct Validated {
    /// The member name.
    pub name: MemberName,
    /// The DCS layout.
    pub layout: KeyLayout,
    /// The dynamic configuration for a bootstrap.
    pub bootstrap_dcs: ClusterConfig,
    /// Where the REST API listens.
    pub restapi_listen: SocketAddr,
    /// `http(s)://host:port` of this member's API.
    pub api_url: String,
    /// Allowlist ranges.
    pub allowlist: Vec<IpRange>,
    /// PostgreSQL's listen host and port.
    pub pg_listen: (String, u16),
    /// `postgres://host:port/postgres`.
    pub conn_url: String,
    /// The DNS server address.
    pub dns_server: Option<SocketAddr>,
}

/// An IP address range (`10.0.0.0/8`, `::1/128`, or a single address).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpRange {
    network: IpAddr,
    prefix: u8,
}

impl IpRange {
    /// Parses `addr` or `addr/prefix`.
    pub fn parse(text: &str) -> Result<IpRange, String> {
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text, None),
        };
        let network: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("{text:?} is not an IP address or CIDR range"))?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{text:?}: the prefix must be 0..={max}"))?,
            None => max,
        };
        Ok(IpRange { network, prefix })
    }

    /// Whether `ip` is in the range (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.network, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// Splits `host:port` (`[v6]:port` for IPv6).
pub fn split_host_port(text: &str) -> Option<(String, u16)> {
    let (host, port) = text.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return None;
    }
    Some((host.to_owned(), port))
}

fn format_host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// The environment overrides: variable, key, and how it applies.
pub const ENV_OVERRIDES: &[(&str, &str)] = &[
    ("MATRIARCH_SCOPE", "scope"),
    ("MATRIARCH_NAMESPACE", "namespace"),
    ("MATRIARCH_NAME", "name"),
    ("MATRIARCH_LOG_LEVEL", "log.level"),
    ("MATRIARCH_LOG_FORMAT", "log.format"),
    ("MATRIARCH_LOG_DIR", "log.dir"),
    ("MATRIARCH_RESTAPI_LISTEN", "restapi.listen"),
    (
        "MATRIARCH_RESTAPI_CONNECT_ADDRESS",
        "restapi.connect_address",
    ),
    (
        "MATRIARCH_RESTAPI_USERNAME",
        "restapi.authentication.username",
    ),
    (
        "MATRIARCH_RESTAPI_PASSWORD",
        "restapi.authentication.password",
    ),
    ("MATRIARCH_ETCD3_HOSTS", "etcd3.hosts"),
    ("MATRIARCH_ETCD3_USERNAME", "etcd3.username"),
    ("MATRIARCH_ETCD3_PASSWORD", "etcd3.password"),
    ("MATRIARCH_ZOOKEEPER_HOSTS", "zookeeper.hosts"),
    ("MATRIARCH_POSTGRESQL_LISTEN", "postgresql.listen"),
    (
        "MATRIARCH_POSTGRESQL_CONNECT_ADDRESS",
        "postgresql.connect_address",
    ),
    ("MATRIARCH_POSTGRESQL_DATA_DIR", "postgresql.data_dir"),
    ("MATRIARCH_POSTGRESQL_BIN_DIR", "postgresql.bin_dir"),
    (
        "MATRIARCH_SUPERUSER_USERNAME",
        "postgresql.authentication.superuser.username",
    ),
    (
        "MATRIARCH_SUPERUSER_PASSWORD",
        "postgresql.authentication.superuser.password",
    ),
    (
        "MATRIARCH_REPLICATION_USERNAME",
        "postgresql.authentication.replication.username",
    ),
    (
        "MATRIARCH_REPLICATION_PASSWORD",
        "postgresql.authentication.replication.password",
    ),
    (
        "MATRIARCH_REWIND_USERNAME",
        "postgresql.authentication.rewind.username",
    ),
    (
        "MATRIARCH_REWIND_PASSWORD",
        "postgresql.authentication.rewind.password",
    ),
];

/// Sets `path` (dotted) in a YAML mapping, creating mappings on the way.
fn set_path(root: &mut serde_norway::Value, path: &str, value: serde_norway::Value) {
    let mut node = root;
    for segment in path.split('.') {
        if !node.is_mapping() {
            *node = serde_norway::Value::Mapping(serde_norway::Mapping::new());
        }
        let serde_norway::Value::Mapping(map) = node else {
            return;
        };
        node = map
            .entry(serde_norway::Value::String(segment.to_owned()))
            .or_insert(serde_norway::Value::Null);
    }
    *node = value;
}

impl NodeConfig {
    /// Reads `path`, applies `env` overrides (`MATRIARCH_*`), and validates.
    pub fn load(
        path: &Path,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<(NodeConfig, Validated), ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, env)
    }

    /// Parses YAML text, applies overrides, validates.
    pub fn parse(
        text: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<(NodeConfig, Validated), ConfigError> {
        let overrides: Vec<(&str, &str, String)> = ENV_OVERRIDES
            .iter()
            .filter_map(|(var, key)| env(var).map(|value| (*var, *key, value)))
            .collect();
        // Without overrides, parse as written: errors carry line and column and the key path.
        let config: NodeConfig = if overrides.is_empty() {
            serde_norway::from_str(text).map_err(ConfigError::yaml)?
        } else {
            let mut value: serde_norway::Value =
                serde_norway::from_str(text).map_err(ConfigError::yaml)?;
            if value.is_null() {
                value = serde_norway::Value::Mapping(serde_norway::Mapping::new());
            }
            for (_, key, raw) in &overrides {
                set_path(&mut value, key, serde_norway::Value::String(raw.clone()));
            }
            // A file may leave required keys to the environment (a container
            // image's file does); an error the file has on its own is still
            // reported with its line.
            match serde_norway::from_value(value) {
                Ok(config) => config,
                Err(err) => {
                    if let Err(as_written) = serde_norway::from_str::<NodeConfig>(text) {
                        return Err(ConfigError::yaml(as_written));
                    }
                    let vars: Vec<&str> = overrides.iter().map(|(var, _, _)| *var).collect();
                    return Err(ConfigError::Env {
                        vars: vars.join(", "),
                        message: err.to_string(),
                    });
                }
            }
        };
        let validated = config.validate()?;
        Ok((config, validated))
    }

    /// Checks every setting; the error names the key.
    pub fn validate(&self) -> Result<Validated, ConfigError> {
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
        for (key, file) in [
            ("restapi.certfile", &self.restapi.certfile),
            ("restapi.keyfile", &self.restapi.keyfile),
            ("restapi.cafile", &self.restapi.cafile),
        ] {
            if let Some(file) = file {
                if !file.is_file() {
                    return Err(ConfigError::invalid(
                        key,
                        format!("{} is not a readable file", file.display()),
                    ));
                }
            }
        }
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
            Some(addr) => split_host_port(addr).ok_or_else(|| {
                ConfigError::invalid(
                    "restapi.connect_address",
                    format!("{addr:?} is not host:port"),
                )
            })?,
            None => {
                let host = if restapi_listen.ip().is_unspecified() {
                    "127.0.0.1".to_owned()
                } else {
                    restapi_listen.ip().to_string()
                };
                (host, restapi_listen.port())
            }
        };
        let api_url = format!(
            "{}://{}/patroni",
            if tls { "https" } else { "http" },
            format_host_port(&connect.0, connect.1)
        );
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
        let pg_listen = split_host_port(&pg.listen).ok_or_else(|| {
            ConfigError::invalid(
                "postgresql.listen",
                format!("{:?} is not host:port", pg.listen),
            )
        })?;
        if pg_listen.1 == 0 {
            return Err(ConfigError::invalid(
                "postgresql.listen",
                "the port must not be 0",
            ));
        }
        let connect = match &pg.connect_address {
            Some(addr) => split_host_port(addr).ok_or_else(|| {
                ConfigError::invalid(
                    "postgresql.connect_address",
                    format!("{addr:?} is not host:port"),
                )
            })?,
            None => {
                let host = match pg_listen.0.as_str() {
                    "0.0.0.0" | "*" | "::" => "127.0.0.1".to_owned(),
                    host => host.to_owned(),
                };
                (host, pg_listen.1)
            }
        };
        let conn_url = format!(
            "postgres://{}/postgres",
            format_host_port(&connect.0, connect.1)
        );
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
        for (key, cmd) in [
            ("callbacks.on_start", &self.callbacks.on_start),
            ("callbacks.on_stop", &self.callbacks.on_stop),
            ("callbacks.on_role_change", &self.callbacks.on_role_change),
            ("callbacks.pre_promote", &self.callbacks.pre_promote),
        ] {
            if let Some(cmd) = cmd {
                if !cmd.is_file() {
                    return Err(ConfigError::invalid(
                        key,
                        format!("{} is not a file", cmd.display()),
                    ));
                }
            }
        }

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

        Ok(Validated {
            name,
            layout,
            bootstrap_dcs,
            restapi_listen,
            api_url,
            allowlist,
            pg_listen,
            conn_url,
            dns_server,
        })
    }

    /// Refuses a PostgreSQL outside [`SUPPORTED_PG_MAJORS`]: runs
    /// `<bin_dir>/postgres --version`, and reads `PG_VERSION` of an existing
    /// data directory (which must match the binaries). Returns the major
    /// version. `run` and `check` call it; a reload does not.
    pub fn check_postgres_version(&self) -> Result<u32, ConfigError> {
        let pg = self.pg()?;
        let bin_dir = pg
            .bin_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(matriarch_postgres::DEFAULT_BIN_DIR));
        let postgres = bin_dir.join("postgres");
        let output = run_bounded(&postgres, "--version", PG_VERSION_TIMEOUT).map_err(|e| {
            ConfigError::invalid(
                "postgresql.bin_dir",
                format!("cannot run `{} --version`: {e}", postgres.display()),
            )
        })?;
        let (major, full) = parse_postgres_version(&output).ok_or_else(|| {
            ConfigError::invalid(
                "postgresql.bin_dir",
                format!(
                    "`{} --version` printed {:?}, not `postgres (PostgreSQL) <version>`",
                    postgres.display(),
                    output.trim()
                ),
            )
        })?;
        if !SUPPORTED_PG_MAJORS.contains(&major) {
            return Err(ConfigError::invalid(
                "postgresql.bin_dir",
                format!(
                    "{} is PostgreSQL {full}; matriarch supports PostgreSQL {} to {}",
                    postgres.display(),
                    SUPPORTED_PG_MAJORS.start(),
                    SUPPORTED_PG_MAJORS.end()
                ),
            ));
        }
        let pg_version = pg.data_dir.join("PG_VERSION");
        // A missing (not yet created) or unreadable data directory is the
        // controller's business; only a version we can read is checked.
        if let Ok(text) = std::fs::read_to_string(&pg_version) {
            let data_major: u32 = text.trim().parse().map_err(|_| {
                ConfigError::invalid(
                    "postgresql.data_dir",
                    format!(
                        "{} holds {:?}, not a version",
                        pg_version.display(),
                        text.trim()
                    ),
                )
            })?;
            if data_major != major {
                return Err(ConfigError::invalid(
                    "postgresql.data_dir",
                    format!(
                        "{} is a PostgreSQL {data_major} data directory but {} is PostgreSQL                          {full}; point postgresql.bin_dir at PostgreSQL {data_major} (supported:                          {} to {})",
                        pg.data_dir.display(),
                        postgres.display(),
                        SUPPORTED_PG_MAJORS.start(),
                        SUPPORTED_PG_MAJORS.end()
                    ),
                ));
            }
        }
        Ok(major)
    }

    /// The PostgreSQL section; `validate` guarantees it is there.
    pub fn pg(&self) -> Result<&PostgresqlSection, ConfigError> {
        self.postgresql
            .as_ref()
            .ok_or_else(|| ConfigError::invalid("postgresql", "missing section"))
    }
}

/// The PostgreSQL major versions matriarch is tested with and supports.
pub const SUPPORTED_PG_MAJORS: std::ops::RangeInclusive<u32> = 15..=18;

/// How long `postgres --version` may take.
const PG_VERSION_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Runs `program arg` and returns its standard output; an exit status other
/// than 0, or no exit within `timeout` (the child is then killed), is an error.
fn run_bounded(program: &Path, arg: &str, timeout: std::time::Duration) -> Result<String, String> {
    use std::io::Read;
    let spawn = || {
        std::process::Command::new(program)
            .arg(arg)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
    };
    // ETXTBSY: a program just written (an upgrade in progress) is briefly
    // still open for writing in some process.
    let mut child = spawn()
        .or_else(|e| match e.raw_os_error() {
            Some(libc::ETXTBSY) => {
                std::thread::sleep(std::time::Duration::from_millis(100));
                spawn()
            }
            _ => Err(e),
        })
        .map_err(|e| e.to_string())?;
    let deadline = std::time::Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Ok(None) => {
                // Best effort: the error below is what matters.
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("no answer within {}s", timeout.as_secs()));
            }
            Err(e) => return Err(e.to_string()),
        }
    };
    let mut out = String::new();
    if let Some(mut stdout) = child.stdout.take() {
        // Bounded: a version line, not a stream.
        stdout
            .by_ref()
            .take(4096)
            .read_to_string(&mut out)
            .map_err(|e| e.to_string())?;
    }
    if !status.success() {
        return Err(format!("it exited with {status}"));
    }
    Ok(out)
}

/// `postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)` → (15, "15.18");
/// also `18beta1` → (18, "18beta1").
fn parse_postgres_version(output: &str) -> Option<(u32, String)> {
    let rest = output.lines().next()?.split("(PostgreSQL) ").nth(1)?;
    let full = rest.split_whitespace().next()?;
    let digits: String = full.chars().take_while(char::is_ascii_digit).collect();
    Some((digits.parse().ok()?, full.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
scope: pg
name: node1
etcd3:
  hosts: 127.0.0.1:2379
postgresql:
  listen: 127.0.0.1:5432
  data_dir: /tmp/x/data
  authentication:
    superuser: {username: postgres, password: secret}
    replication: {username: replicator, password: rsecret}
"#;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn a_minimal_config_gets_defaults() {
        let (config, v) = NodeConfig::parse(MINIMAL, no_env).unwrap();
        assert_eq!(v.layout.namespace(), "service");
        assert_eq!(v.restapi_listen.to_string(), "0.0.0.0:8008");
        assert_eq!(v.api_url, "http://127.0.0.1:8008/patroni");
        assert_eq!(v.conn_url, "postgres://127.0.0.1:5432/postgres");
        assert_eq!(v.bootstrap_dcs, ClusterConfig::default());
        let debug = format!("{config:?}");
        assert!(!debug.contains("secret"), "{debug}");
    }

    #[test]
    fn a_requested_key_nobody_knows_is_refused_with_a_hint() {
        let err = check_requested_config_keys("config", &serde_json::json!({"tll": 10}))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("config.tll") && err.contains("did you mean `ttl`"),
            "{err}"
        );
        for ok in [
            serde_json::json!({"ttl": 10}),
            serde_json::json!({"slots": {}, "standby_cluster": null, "check_timeline": true}),
        ] {
            assert!(check_requested_config_keys("config", &ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn a_file_may_leave_required_keys_to_the_environment() {
        let text = "bootstrap:\n  dcs: {ttl: 5, loop_wait: 1, retry_timeout: 2}\npostgresql:\n  data_dir: /data\n  authentication:\n    superuser: {username: postgres}\n    replication: {username: standby}\n";
        assert!(NodeConfig::parse(text, no_env).is_err());
        let env = |var: &str| match var {
            "MATRIARCH_SCOPE" => Some("img".to_owned()),
            "MATRIARCH_NAME" => Some("node1".to_owned()),
            "MATRIARCH_ETCD3_HOSTS" => Some("127.0.0.1:2379".to_owned()),
            "MATRIARCH_RESTAPI_LISTEN" => Some("127.0.0.1:8008".to_owned()),
            "MATRIARCH_POSTGRESQL_LISTEN" => Some("127.0.0.1:5432".to_owned()),
            "MATRIARCH_SUPERUSER_PASSWORD" => Some("s3cret".to_owned()),
            "MATRIARCH_REPLICATION_PASSWORD" => Some("r3pl".to_owned()),
            _ => None,
        };
        let (config, _) = NodeConfig::parse(text, env).unwrap();
        assert_eq!(config.scope, "img");
    }

    #[test]
    fn environment_overrides_win() {
        let env = |var: &str| match var {
            "MATRIARCH_NAME" => Some("node9".to_owned()),
            "MATRIARCH_ETCD3_HOSTS" => Some("a:1,b:2".to_owned()),
            "MATRIARCH_RESTAPI_LISTEN" => Some("127.0.0.1:9000".to_owned()),
            _ => None,
        };
        let (config, v) = NodeConfig::parse(MINIMAL, env).unwrap();
        assert_eq!(v.name.as_str(), "node9");
        assert_eq!(v.restapi_listen.port(), 9000);
        assert_eq!(config.etcd3.unwrap().hosts.hosts(), ["a:1", "b:2"]);
    }

    #[test]
    fn unknown_keys_are_named_with_their_line() {
        let text = MINIMAL.replace("name: node1", "name: node1\nrestapi:\n  lisen: 1");
        let err = NodeConfig::parse(&text, no_env).unwrap_err().to_string();
        assert!(err.contains("lisen"), "{err}");
        assert!(err.contains("line"), "{err}");
    }

    #[test]
    fn wrong_types_name_the_key() {
        let text = format!("{MINIMAL}tags:\n  nofailover: maybe\n");
        let err = NodeConfig::parse(&text, no_env).unwrap_err().to_string();
        assert!(err.contains("nofailover"), "{err}");
    }

    #[test]
    fn impossible_timing_is_refused() {
        let text = format!(
            "{MINIMAL}bootstrap:\n  dcs:\n    ttl: 5\n    loop_wait: 4\n    retry_timeout: 4\n"
        );
        let err = NodeConfig::parse(&text, no_env).unwrap_err().to_string();
        assert!(err.contains("bootstrap.dcs"), "{err}");
        assert!(err.contains("exceeds ttl"), "{err}");
        let text = format!("{MINIMAL}bootstrap:\n  dcs:\n    ttl: soon\n");
        let err = NodeConfig::parse(&text, no_env).unwrap_err().to_string();
        assert!(err.contains("bootstrap.dcs.ttl"), "{err}");
        let text = format!("{MINIMAL}bootstrap:\n  dcs:\n    tll: 5\n");
        let err = NodeConfig::parse(&text, no_env).unwrap_err().to_string();
        assert!(err.contains("bootstrap.dcs.tll"), "{err}");
    }

    #[test]
    fn ip_ranges() {
        let range = IpRange::parse("10.0.0.0/8").unwrap();
        assert!(range.contains("10.1.2.3".parse().unwrap()));
        assert!(!range.contains("11.1.2.3".parse().unwrap()));
        assert!(IpRange::parse("127.0.0.1")
            .unwrap()
            .contains("::ffff:127.0.0.1".parse().unwrap()));
        assert!(IpRange::parse("0.0.0.0/0")
            .unwrap()
            .contains("1.2.3.4".parse().unwrap()));
        assert!(IpRange::parse("10.0.0.0/33").is_err());
        assert!(IpRange::parse("nope").is_err());
    }

    #[test]
    fn the_watchdog_is_off_by_default_and_reads_patroni_forms() {
        let (config, _) = NodeConfig::parse(MINIMAL, no_env).unwrap();
        assert_eq!(config.watchdog, WatchdogConfig::default());
        assert_eq!(config.watchdog.mode, WatchdogMode::Off);
        for (mode, expected) in [
            ("off", WatchdogMode::Off),
            ("false", WatchdogMode::Off),
            ("automatic", WatchdogMode::Automatic),
            ("required", WatchdogMode::Required),
            ("Required", WatchdogMode::Required),
        ] {
            let text = format!(
                "{MINIMAL}watchdog:\n  mode: {mode}\n  device: /dev/watchdog1\n  safety_margin: 3\n"
            );
            let (config, _) = NodeConfig::parse(&text, no_env).unwrap();
            assert_eq!(config.watchdog.mode, expected, "{mode}");
            assert_eq!(config.watchdog.device, PathBuf::from("/dev/watchdog1"));
            assert_eq!(config.watchdog.safety_margin, 3);
        }
        let text = format!("{MINIMAL}watchdog:\n  mode: sometimes\n");
        let err = NodeConfig::parse(&text, no_env).unwrap_err().to_string();
        assert!(err.contains("off, automatic or required"), "{err}");
        let text = format!("{MINIMAL}watchdog:\n  mode: required\n  device: watchdog\n");
        let err = NodeConfig::parse(&text, no_env).unwrap_err().to_string();
        assert!(err.contains("watchdog.device"), "{err}");
        let text = format!("{MINIMAL}watchdog:\n  mode: automatic\n  timeout: 3\n");
        let err = NodeConfig::parse(&text, no_env).unwrap_err().to_string();
        assert!(err.contains("timeout"), "{err}");
    }

    #[test]
    fn the_example_configuration_is_valid() {
        let text = include_str!("../node.example.yaml");
        let (config, v) = NodeConfig::parse(text, no_env).unwrap();
        assert_eq!(v.api_url, "http://10.0.0.11:8008/patroni");
        assert_eq!(v.conn_url, "postgres://10.0.0.11:5432/postgres");
        assert_eq!(v.bootstrap_dcs.ttl, std::time::Duration::from_secs(5));
        assert_eq!(v.allowlist.len(), 2);
        assert!(config.router.elb.is_none() && config.router.dns.is_none());
        assert_eq!(config.watchdog, WatchdogConfig::default());
    }
    /// A bin_dir whose `postgres --version` prints `line`.
    fn fake_bin_dir(line: &str) -> tempfile::TempDir {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pg_ctl"), "").unwrap();
        let postgres = dir.path().join("postgres");
        std::fs::write(&postgres, format!("#!/bin/sh\necho '{line}'\n")).unwrap();
        std::fs::set_permissions(&postgres, std::fs::Permissions::from_mode(0o755)).unwrap();
        dir
    }

    fn with_bin_dir(bin: &Path, data_dir: &Path) -> NodeConfig {
        let text = MINIMAL.replace("/tmp/x/data", &data_dir.display().to_string())
            + &format!("  bin_dir: {}\n", bin.display());
        NodeConfig::parse(&text, no_env).unwrap().0
    }

    #[test]
    fn postgresql_14_is_refused_naming_the_version_and_the_range() {
        let bin = fake_bin_dir("postgres (PostgreSQL) 14.9");
        let config = with_bin_dir(bin.path(), Path::new("/nonexistent/data"));
        let err = config.check_postgres_version().unwrap_err().to_string();
        assert!(err.contains("PostgreSQL 14.9"), "{err}");
        assert!(err.contains("supports PostgreSQL 15 to 18"), "{err}");
        assert!(err.contains("postgresql.bin_dir"), "{err}");
        let bin = fake_bin_dir("postgres (PostgreSQL) 19devel");
        let config = with_bin_dir(bin.path(), Path::new("/nonexistent/data"));
        let err = config.check_postgres_version().unwrap_err().to_string();
        assert!(err.contains("PostgreSQL 19devel"), "{err}");
    }

    #[test]
    fn postgresql_15_to_18_are_accepted() {
        for (line, major) in [
            ("postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)", 15),
            ("postgres (PostgreSQL) 16.4", 16),
            ("postgres (PostgreSQL) 18.6", 18),
        ] {
            let bin = fake_bin_dir(line);
            let config = with_bin_dir(bin.path(), Path::new("/nonexistent/data"));
            assert_eq!(config.check_postgres_version().unwrap(), major, "{line}");
        }
    }

    #[test]
    fn a_data_directory_of_another_version_is_refused() {
        let bin = fake_bin_dir("postgres (PostgreSQL) 16.4");
        let data = tempfile::tempdir().unwrap();
        std::fs::write(data.path().join("PG_VERSION"), "14\n").unwrap();
        let config = with_bin_dir(bin.path(), data.path());
        let err = config.check_postgres_version().unwrap_err().to_string();
        assert!(err.contains("PostgreSQL 14 data directory"), "{err}");
        assert!(err.contains("postgresql.data_dir"), "{err}");
        std::fs::write(data.path().join("PG_VERSION"), "16\n").unwrap();
        assert_eq!(config.check_postgres_version().unwrap(), 16);
    }

    #[test]
    fn a_missing_or_unparsable_postgres_is_a_clear_error() {
        let bin = fake_bin_dir("something else");
        let config = with_bin_dir(bin.path(), Path::new("/nonexistent/data"));
        let err = config.check_postgres_version().unwrap_err().to_string();
        assert!(
            err.contains("not `postgres (PostgreSQL) <version>`"),
            "{err}"
        );
        std::fs::remove_file(bin.path().join("postgres")).unwrap();
        let err = config.check_postgres_version().unwrap_err().to_string();
        assert!(err.contains("cannot run"), "{err}");
    }

    #[test]
    fn log_dir_must_be_absolute_and_file_settings_default_to_patronis() {
        let (config, _) = NodeConfig::parse(MINIMAL, no_env).unwrap();
        assert_eq!((config.log.file_num, config.log.file_size), (4, 25_000_000));
        assert!(config.log.dir.is_none());
        let text = format!("{MINIMAL}log:\n  dir: var/log\n");
        let err = NodeConfig::parse(&text, no_env).unwrap_err().to_string();
        assert!(err.contains("log.dir"), "{err}");
        let text =
            format!("{MINIMAL}log:\n  dir: /var/log/matriarch\n  file_num: 2\n  file_size: 1000\n");
        let (config, _) = NodeConfig::parse(&text, no_env).unwrap();
        assert_eq!(config.log.dir, Some(PathBuf::from("/var/log/matriarch")));
        assert_eq!((config.log.file_num, config.log.file_size), (2, 1000));
    }
}
