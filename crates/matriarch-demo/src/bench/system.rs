//! The HA systems the failover benchmark runs side by side: matriarch at its
//! defaults, and (with `--against patroni`) Patroni 4.1 on the same etcd, the
//! same loopback addresses and the same PostgreSQL 15 settings.

use std::path::{Path, PathBuf};

use matriarch_testkit::cluster::{
    AgentKind, LoopbackOptions, Timing, PATRONI_DEFAULT_TIMING, PATRONI_MIN_TIMING,
};
use serde_json::{json, Value};

use crate::cluster::Cluster;

/// One system under test.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum System {
    /// `matriarch run` with `timing` (the daemon's defaults unless the
    /// benchmark was given `--ttl`, `--loop-wait`, `--retry-timeout`) and its
    /// DNS router.
    Matriarch {
        /// Its `bootstrap.dcs` timing.
        timing: Timing,
    },
    /// Patroni from the venv `venv` with `timing`.
    Patroni {
        /// The venv with `bin/patroni`.
        venv: PathBuf,
        /// Its `bootstrap.dcs` timing.
        timing: Timing,
    },
}

/// Which Patroni timing `--against patroni` uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatroniTiming {
    /// Its smallest legal values: ttl 20, loop_wait 1, retry_timeout 3.
    Minimum,
    /// Its defaults: ttl 30, loop_wait 10, retry_timeout 10.
    Defaults,
}

impl PatroniTiming {
    /// The timing.
    pub fn timing(self) -> Timing {
        match self {
            PatroniTiming::Minimum => PATRONI_MIN_TIMING,
            PatroniTiming::Defaults => PATRONI_DEFAULT_TIMING,
        }
    }
}

impl System {
    /// `matriarch` or `patroni`.
    pub fn name(&self) -> &'static str {
        match self {
            System::Matriarch { .. } => "matriarch",
            System::Patroni { .. } => "patroni",
        }
    }

    /// The cluster's options: the demo's cluster with this system's agent and
    /// timing, and `pg_parameters` on every node.
    pub fn options(
        &self,
        matriarch: &Path,
        logs: &Path,
        pg_parameters: &[(String, String)],
    ) -> LoopbackOptions {
        let mut opts = Cluster::options(matriarch, logs);
        match self {
            System::Matriarch { timing } => opts.timing = *timing,
            System::Patroni { venv, timing } => {
                opts.agent = AgentKind::Patroni { venv: venv.clone() };
                opts.timing = *timing;
            }
        }
        opts.pg_parameters = pg_parameters.to_vec();
        opts
    }

    /// Its timing and how clients find its primary, for the results.
    pub fn settings(&self) -> Value {
        let (timing, router) = match self {
            System::Matriarch { timing } => (
                *timing,
                "REST GET /primary (the benchmark's client); DNS name also timed",
            ),
            System::Patroni { timing, .. } => (*timing, "REST GET /primary"),
        };
        json!({
            "system": self.name(),
            "ttl_s": timing.ttl,
            "loop_wait_s": timing.loop_wait,
            "retry_timeout_s": timing.retry_timeout,
            "client_finds_primary_by": router,
        })
    }
}
