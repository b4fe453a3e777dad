//! What a chaos run is asked to do: its replication mode, its DCS, the
//! settings that decide (and replay) its fault sequence, and the other options.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::Serialize;

use crate::error::{ChaosError, Result};
use crate::faults::planned::FaultKind;

/// How commits wait for replicas (`bootstrap.dcs.synchronous_mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// `synchronous_mode: true`.
    Synchronous,
    /// `synchronous_mode: true` with `synchronous_mode_strict: true`.
    Strict,
    /// `synchronous_mode: quorum`.
    Quorum,
    /// `synchronous_mode: false`.
    Asynchronous,
}

impl Mode {
    /// The name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Synchronous => "synchronous",
            Mode::Strict => "strict",
            Mode::Quorum => "quorum",
            Mode::Asynchronous => "asynchronous",
        }
    }

    /// Whether acknowledged writes must survive every failover.
    pub fn is_synchronous(self) -> bool {
        self != Mode::Asynchronous
    }
}

impl FromStr for Mode {
    type Err = ChaosError;

    fn from_str(s: &str) -> Result<Mode> {
        match s {
            "synchronous" | "sync" => Ok(Mode::Synchronous),
            "strict" => Ok(Mode::Strict),
            "quorum" => Ok(Mode::Quorum),
            "asynchronous" | "async" => Ok(Mode::Asynchronous),
            other => Err(ChaosError::Usage(format!(
                "--mode must be synchronous, strict, quorum or asynchronous, not {other:?}"
            ))),
        }
    }
}

/// The DCS the agents use (`--dcs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Dcs {
    /// Three etcd members (the default).
    Etcd,
    /// A three-server ZooKeeper ensemble; the etcd faults hit its servers
    /// (the quorum leader, all servers) instead.
    ZooKeeper,
}

impl Dcs {
    /// The name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Dcs::Etcd => "etcd",
            Dcs::ZooKeeper => "zookeeper",
        }
    }
}

impl FromStr for Dcs {
    type Err = ChaosError;

    fn from_str(s: &str) -> Result<Dcs> {
        match s {
            "etcd" | "etcd3" => Ok(Dcs::Etcd),
            "zookeeper" | "zk" => Ok(Dcs::ZooKeeper),
            other => Err(ChaosError::Usage(format!(
                "--dcs must be etcd or zookeeper, not {other:?}"
            ))),
        }
    }
}

/// What decides a run's cluster and fault sequence: the same settings replay
/// the same run ([`RunSettings::replay_command`]). The report carries them under
/// the names of its JSON fields.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RunSettings {
    /// The seed of the fault sequence.
    pub seed: u64,
    /// The replication mode.
    pub mode: Mode,
    /// The DCS.
    pub dcs: Dcs,
    /// The fault kinds to draw from (`--kinds`); empty: all of them.
    #[serde(rename = "kinds_requested")]
    pub kinds: Vec<FaultKind>,
    /// ttl, loop_wait, retry_timeout in seconds.
    pub timing: (u64, u64, u64),
    /// How many faults.
    #[serde(rename = "faults_requested")]
    pub faults: usize,
}

impl RunSettings {
    /// The `cargo xtask chaos` command that replays this fault sequence.
    pub fn replay_command(&self) -> String {
        let mut cmd = format!(
            "cargo xtask chaos --seed {} --faults {} --mode {}",
            self.seed,
            self.faults,
            self.mode.name()
        );
        if self.dcs != Dcs::Etcd {
            cmd.push_str(&format!(" --dcs {}", self.dcs.name()));
        }
        if !self.kinds.is_empty() {
            let kinds: Vec<&str> = self.kinds.iter().map(|k| k.name()).collect();
            cmd.push_str(&format!(" --kinds {}", kinds.join(",")));
        }
        cmd
    }
}

/// What a run does.
#[derive(Clone, Debug)]
pub struct Options {
    /// The settings that decide the run (and replay it).
    pub settings: RunSettings,
    /// Keep the cluster up after the run until Ctrl-C.
    pub keep: bool,
    /// The `matriarch` binary.
    pub matriarch: PathBuf,
    /// Where the JSON reports and log directories go (`target/chaos`).
    pub out_dir: PathBuf,
    /// How long the cluster may take to become healthy after a fault is healed.
    pub recovery_timeout: Duration,
    /// Print progress lines.
    pub verbose: bool,
}

/// The workspace's target directory: `CARGO_TARGET_DIR` (relative to the
/// workspace root) or `<workspace>/target` (the test kit's
/// [`matriarch_testkit::cluster::target_dir`]).
pub fn target_dir() -> PathBuf {
    matriarch_testkit::cluster::target_dir()
}

impl Options {
    /// Defaults: 12 faults, synchronous mode, ttl 5 / loop_wait 1 / retry_timeout 2,
    /// `target/debug/matriarch`, reports in `target/chaos`.
    pub fn new(seed: u64) -> Options {
        let target = target_dir();
        Options {
            settings: RunSettings {
                seed,
                mode: Mode::Synchronous,
                dcs: Dcs::Etcd,
                kinds: Vec::new(),
                timing: (5, 1, 2),
                faults: 12,
            },
            keep: false,
            matriarch: target.join("debug").join("matriarch"),
            out_dir: target.join("chaos"),
            recovery_timeout: Duration::from_secs(90),
            verbose: true,
        }
    }
}
