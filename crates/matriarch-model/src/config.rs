//! The dynamic cluster configuration (the `config` key), shared by every member.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::standby::StandbyCluster;

/// Why a cluster configuration was rejected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A primary could not give up its role before its lock expires.
    #[error(
        "unsafe timing: loop_wait ({loop_wait:?}) + 2 × retry_timeout ({retry_timeout:?}) = {needed:?} \
         exceeds ttl ({ttl:?}); a primary that loses the DCS could still take writes after its lock \
         expired and another member was promoted. Raise ttl to at least {needed:?} or lower \
         loop_wait/retry_timeout"
    )]
    UnsafeTiming {
        /// The lock's time to live.
        ttl: Duration,
        /// The pause between two loops.
        loop_wait: Duration,
        /// How long one DCS or PostgreSQL call may be retried.
        retry_timeout: Duration,
        /// `loop_wait + 2 × retry_timeout`.
        needed: Duration,
    },
    /// A duration that must be positive is zero.
    #[error("{field} must be greater than zero")]
    ZeroDuration {
        /// The configuration key.
        field: &'static str,
    },
    /// `synchronous_node_count` is zero.
    #[error("synchronous_node_count must be at least 1")]
    ZeroSynchronousNodeCount,
    /// A value above its bound.
    #[error("{field} = {value} exceeds {max}: {why}")]
    OutOfRange {
        /// The configuration key.
        field: &'static str,
        /// The value as read.
        value: String,
        /// The bound, in words (`the maximum (86400s)`, `ttl (30s)`).
        max: String,
        /// Why the bound exists.
        why: &'static str,
    },
}

/// A duration as the `config` key writes it (seconds).
fn seconds_text(value: Duration) -> String {
    format!("{}s", value.as_secs_f64())
}

/// How commits wait for replicas (`synchronous_mode`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum SynchronousMode {
    /// Asynchronous replication: a failover may lose what the replicas had
    /// not yet received (bounded by `maximum_lag_on_failover`).
    #[default]
    Off,
    /// `synchronous_standby_names = FIRST n (...)`.
    On,
    /// `synchronous_standby_names = ANY n (...)`.
    Quorum,
}

impl Serialize for SynchronousMode {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // Patroni writes booleans for off/on and the string "quorum".
        match self {
            SynchronousMode::Off => serializer.serialize_bool(false),
            SynchronousMode::On => serializer.serialize_bool(true),
            SynchronousMode::Quorum => serializer.serialize_str("quorum"),
        }
    }
}

impl<'de> Deserialize<'de> for SynchronousMode {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let word = crate::deserialize_switch(deserializer)?;
        match word.as_str() {
            "off" | "false" => Ok(SynchronousMode::Off),
            "on" | "true" => Ok(SynchronousMode::On),
            "quorum" => Ok(SynchronousMode::Quorum),
            _ => Err(serde::de::Error::custom(format!(
                "synchronous_mode must be true, false, \"on\", \"off\" or \"quorum\", not {word:?}"
            ))),
        }
    }
}

/// A PostgreSQL parameter value as written in YAML or JSON.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ParameterValue {
    /// `on`/`off` style settings.
    Bool(bool),
    /// Integer settings (units are PostgreSQL's default for the parameter).
    Integer(i64),
    /// Real-valued settings.
    Real(f64),
    /// Anything else, passed through as text (`'64MB'`, `'replica'`).
    Text(String),
}

impl fmt::Display for ParameterValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParameterValue::Bool(true) => f.write_str("on"),
            ParameterValue::Bool(false) => f.write_str("off"),
            ParameterValue::Integer(value) => write!(f, "{value}"),
            ParameterValue::Real(value) => write!(f, "{value}"),
            ParameterValue::Text(value) => f.write_str(value),
        }
    }
}

/// The `postgresql` section of the dynamic configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PostgresqlConfig {
    /// Parameters applied on every member (`postgresql.conf` settings).
    #[serde(default)]
    pub parameters: BTreeMap<String, ParameterValue>,
    /// Whether a diverged former primary may be repaired with pg_rewind
    /// instead of a new base backup.
    #[serde(default = "default_true")]
    pub use_pg_rewind: bool,
    /// Whether each replica gets a physical replication slot on the primary.
    #[serde(default = "default_true")]
    pub use_slots: bool,
    /// Every other key of the section (Patroni's `recovery_conf`, `pg_hba`,
    /// ...): matriarch does not act on them, but keeps them so that rewriting
    /// the `config` key never drops what another tool or an operator put there.
    #[serde(flatten)]
    pub other: serde_json::Map<String, serde_json::Value>,
}

impl Default for PostgresqlConfig {
    fn default() -> Self {
        PostgresqlConfig {
            parameters: BTreeMap::new(),
            use_pg_rewind: true,
            use_slots: true,
            other: serde_json::Map::new(),
        }
    }
}

fn default_true() -> bool {
    true
}

/// Durations are whole or fractional seconds in JSON, as Patroni's integers are.
mod seconds {
    use std::time::Duration;

    use serde::{Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(
        value: &Duration,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        if value.subsec_nanos() == 0 {
            serializer.serialize_u64(value.as_secs())
        } else {
            serializer.serialize_f64(value.as_secs_f64())
        }
    }

    /// Never panics: NaN, infinite, negative or too large for a
    /// `Duration` is an error naming `field`.
    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        field: &'static str,
        deserializer: D,
    ) -> Result<Duration, D::Error> {
        let seconds: f64 = super::named::deserialize(field, deserializer)?;
        Duration::try_from_secs_f64(seconds).map_err(|_| {
            serde::de::Error::custom(format!(
                "{field}: expected a non-negative number of seconds, got {seconds}"
            ))
        })
    }

    /// A `with` module for each duration key, naming it in its errors.
    macro_rules! keys {
        ($($key:ident),+) => {$(
            pub(super) mod $key {
                use std::time::Duration;

                use serde::{Deserializer, Serializer};

                pub(in super::super) fn serialize<S: Serializer>(
                    value: &Duration,
                    serializer: S,
                ) -> Result<S::Ok, S::Error> {
                    super::serialize(value, serializer)
                }

                pub(in super::super) fn deserialize<'de, D: Deserializer<'de>>(
                    deserializer: D,
                ) -> Result<Duration, D::Error> {
                    super::deserialize(stringify!($key), deserializer)
                }
            }
        )+};
    }

    keys!(ttl, loop_wait, retry_timeout, primary_start_timeout);
}

/// Deserializers whose errors name the key: serde's own do not say which
/// field a wrong type or an overflowing number was in, and a refused
/// `config` key must say which setting is wrong.
mod named {
    use serde::{Deserialize, Deserializer};

    pub(super) fn deserialize<'de, T: Deserialize<'de>, D: Deserializer<'de>>(
        field: &'static str,
        deserializer: D,
    ) -> Result<T, D::Error> {
        T::deserialize(deserializer).map_err(|e| serde::de::Error::custom(format!("{field}: {e}")))
    }

    /// A deserializer for each numeric key, naming it in its errors.
    macro_rules! keys {
        ($($key:ident: $type:ty),+) => {$(
            pub(super) fn $key<'de, D: Deserializer<'de>>(deserializer: D) -> Result<$type, D::Error> {
                deserialize(stringify!($key), deserializer)
            }
        )+};
    }

    keys!(maximum_lag_on_failover: u64, synchronous_node_count: u32);
}

/// The dynamic configuration every member reads from the `config` key.
///
/// Field names and JSON follow Patroni's so that `patronictl edit-config`
/// habits carry over. matriarch's defaults are tighter than Patroni's
/// (ttl 30 s, loop_wait 10 s) because failover time is bounded by ttl.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
// A missing key takes its value from `ClusterConfig::default()`.
#[serde(default)]
pub struct ClusterConfig {
    /// How long the leader lock lives without renewal.
    #[serde(with = "seconds::ttl")]
    pub ttl: Duration,
    /// The pause between two HA loops.
    #[serde(with = "seconds::loop_wait")]
    pub loop_wait: Duration,
    /// How long a DCS or PostgreSQL call is retried before it counts as failed.
    #[serde(with = "seconds::retry_timeout")]
    pub retry_timeout: Duration,
    /// A replica more than this many bytes behind may not be promoted automatically.
    #[serde(deserialize_with = "named::maximum_lag_on_failover")]
    pub maximum_lag_on_failover: u64,
    /// Synchronous replication mode.
    pub synchronous_mode: SynchronousMode,
    /// Block writes rather than fall back to asynchronous when no synchronous
    /// standby is available.
    pub synchronous_mode_strict: bool,
    /// How many synchronous standbys the primary waits for.
    #[serde(deserialize_with = "named::synchronous_node_count")]
    pub synchronous_node_count: u32,
    /// How long a leader whose PostgreSQL stopped keeps trying to start it
    /// again in place, counted from the first start that failed, before it
    /// hands the lock to a healthy replica (Patroni's key; 0: at once).
    /// matriarch's default is 30 s, not Patroni's 300 s: a primary that
    /// cannot start (a full disk) costs that long without writes.
    #[serde(with = "seconds::primary_start_timeout")]
    pub primary_start_timeout: Duration,
    /// Keep a primary running through a DCS outage while every member confirms it.
    pub failsafe_mode: bool,
    /// Maintenance mode: agents observe and publish but change nothing.
    pub pause: bool,
    /// PostgreSQL settings shared by all members.
    pub postgresql: PostgresqlConfig,
    /// This cluster is a standby cluster of another one: its leader is a
    /// standby leader that replicates from the source and never promotes.
    #[serde(
        deserialize_with = "crate::standby::deserialize",
        skip_serializing_if = "Option::is_none"
    )]
    pub standby_cluster: Option<Box<StandbyCluster>>,
    /// Every other key (Patroni's `slots`, `check_timeline`, ...): not acted on, but
    /// kept, so that `PATCH /config`, `pause` or `edit-config` rewrite the key
    /// without dropping them and `GET /config` shows them.
    #[serde(flatten)]
    pub other: serde_json::Map<String, serde_json::Value>,
}

mod defaults {
    use std::time::Duration;

    pub(super) fn ttl() -> Duration {
        Duration::from_secs(4)
    }
    pub(super) fn loop_wait() -> Duration {
        Duration::from_secs(1)
    }
    pub(super) fn retry_timeout() -> Duration {
        Duration::from_millis(1500)
    }
    pub(super) fn primary_start_timeout() -> Duration {
        Duration::from_secs(30)
    }
    pub(super) fn maximum_lag_on_failover() -> u64 {
        1024 * 1024
    }
    pub(super) fn synchronous_node_count() -> u32 {
        1
    }
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            ttl: defaults::ttl(),
            loop_wait: defaults::loop_wait(),
            retry_timeout: defaults::retry_timeout(),
            maximum_lag_on_failover: defaults::maximum_lag_on_failover(),
            synchronous_mode: SynchronousMode::Off,
            synchronous_mode_strict: false,
            synchronous_node_count: defaults::synchronous_node_count(),
            primary_start_timeout: defaults::primary_start_timeout(),
            failsafe_mode: false,
            pause: false,
            postgresql: PostgresqlConfig::default(),
            standby_cluster: None,
            other: serde_json::Map::new(),
        }
    }
}

/// [`ClusterConfig::write_stop_margin`] for a lock that lives `lock_ttl`
/// and DCS calls bounded by `retry_timeout`.
pub fn write_stop_margin(lock_ttl: Duration, retry_timeout: Duration) -> Duration {
    (lock_ttl / 8).min(retry_timeout)
}

impl ClusterConfig {
    /// The longest `ttl`: one day.
    ///
    /// The lock must fit in every DCS: etcd refuses leases above its maximum
    /// lease TTL (9 000 000 000 s by default, less when configured), and
    /// ZooKeeper's session timeout is an int32 of milliseconds (about 24.8
    /// days, clamped further by the server's `maxSessionTimeout`). A day is
    /// far below both, and far beyond any useful failover time. It also keeps
    /// every `now + ttl` the agents compute from overflowing.
    pub const MAX_TTL: Duration = Duration::from_secs(24 * 60 * 60);

    /// The largest `synchronous_node_count`: PostgreSQL's `MAX_BACKENDS`
    /// (the upper bound of `max_wal_senders`), so the most standbys a primary
    /// can ever have.
    ///
    /// The tighter bound, fewer than the cluster's members, is not checked
    /// here: members come and go while the key stays, so a count that is too
    /// high today may fit tomorrow. Like PostgreSQL itself, a count above the
    /// standbys present makes commits wait; the leader names at most the
    /// eligible standbys it sees, and the promotion rule's
    /// |sync key| − count + 1 saturates (see `matriarch_ha::decide`).
    pub const MAX_SYNCHRONOUS_NODE_COUNT: u32 = 262_143;

    /// How long before its lock can expire a primary that could not renew
    /// it must have stopped taking writes: an eighth of `lock_ttl` (the
    /// ttl, or less when the DCS keeps the lock for less), at most
    /// `retry_timeout`.
    ///
    /// The write fence stops writes at this margin by SIGKILLing the
    /// postmaster and its backends, which takes milliseconds: the margin only
    /// has to cover how far the agent's clock may run slower than the DCS
    /// server's over one lock life (the simulation drifts clocks by up to
    /// 2 %, a sixth of it) and the fence's wake-up on a loaded host. The
    /// rest of the lock's life is how long a primary rides out a DCS that
    /// does not answer (an etcd leader election).
    pub fn write_stop_margin(&self, lock_ttl: Duration) -> Duration {
        write_stop_margin(lock_ttl, self.retry_timeout)
    }

    /// [`ConfigError::OutOfRange`] when `value` exceeds [`Self::MAX_TTL`].
    fn at_most_max_ttl(
        field: &'static str,
        value: Duration,
        why: &'static str,
    ) -> Result<(), ConfigError> {
        if value <= Self::MAX_TTL {
            return Ok(());
        }
        Err(ConfigError::OutOfRange {
            field,
            value: seconds_text(value),
            max: format!("the maximum ({})", seconds_text(Self::MAX_TTL)),
            why,
        })
    }

    /// Checks the rules that keep a primary safe and the bounds every DCS
    /// can hold; a config that breaks one is rejected as it is, never
    /// adjusted. Never panics, whatever the values.
    ///
    /// The timing rule (Patroni's): a primary that stops reaching the DCS
    /// notices within one `loop_wait` and then spends at most `retry_timeout`
    /// on the failing renewal and `retry_timeout` on demoting, so
    /// `loop_wait + 2 × retry_timeout ≤ ttl` lets it stop taking writes before
    /// its lock can expire and another member can be promoted. (The write
    /// fence makes the stop certain: it kills the postmaster
    /// [`Self::write_stop_margin`] before the lock can expire, whatever the
    /// loop is doing.)
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (field, value) in [
            ("ttl", self.ttl),
            ("loop_wait", self.loop_wait),
            ("retry_timeout", self.retry_timeout),
        ] {
            if value.is_zero() {
                return Err(ConfigError::ZeroDuration { field });
            }
        }
        Self::at_most_max_ttl(
            "ttl",
            self.ttl,
            "the lock must fit in every DCS (etcd leases, ZooKeeper sessions)",
        )?;
        // Named before the timing rule, so the error points at the culprit.
        for (field, value) in [
            ("loop_wait", self.loop_wait),
            ("retry_timeout", self.retry_timeout),
        ] {
            if value > self.ttl {
                return Err(ConfigError::OutOfRange {
                    field,
                    value: seconds_text(value),
                    max: format!("ttl ({})", seconds_text(self.ttl)),
                    why: "the leader lock would expire before a loop could renew it",
                });
            }
        }
        // Each term is at most MAX_TTL now; checked all the same.
        let needed = self
            .retry_timeout
            .checked_mul(2)
            .and_then(|retries| retries.checked_add(self.loop_wait));
        if needed.is_none_or(|needed| needed > self.ttl) {
            return Err(ConfigError::UnsafeTiming {
                ttl: self.ttl,
                loop_wait: self.loop_wait,
                retry_timeout: self.retry_timeout,
                needed: needed.unwrap_or(Duration::MAX),
            });
        }
        Self::at_most_max_ttl(
            "primary_start_timeout",
            self.primary_start_timeout,
            "a primary that cannot start would hold the lock that long without taking writes",
        )?;
        if self.synchronous_node_count == 0 {
            return Err(ConfigError::ZeroSynchronousNodeCount);
        }
        if self.synchronous_node_count > Self::MAX_SYNCHRONOUS_NODE_COUNT {
            return Err(ConfigError::OutOfRange {
                field: "synchronous_node_count",
                value: self.synchronous_node_count.to_string(),
                max: format!("the maximum ({})", Self::MAX_SYNCHRONOUS_NODE_COUNT),
                why: "no primary can have that many standbys",
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
