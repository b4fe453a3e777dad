//! `watchdog:`: the Linux watchdog armed while this node leads.

use std::path::PathBuf;

use serde::Deserialize;

/// `watchdog:` (Patroni's shape): a Linux watchdog device kept armed while
/// this node leads, so that a hung host is reset before its lock expires.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct WatchdogConfig {
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
pub(crate) enum WatchdogMode {
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
        // YAML 1.1 readers (Patroni's) take a bare `off` as false.
        let text = matriarch_model::deserialize_switch(deserializer)?;
        match text.as_str() {
            "off" | "false" => Ok(WatchdogMode::Off),
            "automatic" | "on" | "true" => Ok(WatchdogMode::Automatic),
            "required" => Ok(WatchdogMode::Required),
            _ => Err(serde::de::Error::custom(format!(
                "watchdog.mode must be off, automatic or required, not {text:?}"
            ))),
        }
    }
}
