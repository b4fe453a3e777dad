//! The scenario harness of the daemon's end-to-end tests: testkit's
//! [`matriarch_testkit::cluster::ScenarioCluster`] (real etcd or ZooKeeper,
//! real PostgreSQL, and `matriarch run` processes of the built binary on free
//! loopback ports) under the names the tests use, `matriarch ctl` of this
//! build, and the checks only these tests make (etcd's keys, callback records,
//! node files `matriarch check` and `run` refuse).

#![allow(dead_code)]
// Each test binary uses some of the names.
#![allow(unused_imports)]

use std::path::Path;
use std::process::Output;

mod callbacks;
mod checks;
mod etcd;
mod fixtures;
mod offline_config;

pub(crate) use callbacks::RecordedCallbacks;
pub(crate) use checks::{output_text, ClusterChecks};
pub(crate) use etcd::{etcd_get, etcd_lease_granted_ttl, etcd_put, etcd_range};
pub(crate) use fixtures::{healthy_pair, three_with_a_replicated_row};
pub(crate) use matriarch_testkit::cluster::{
    basic_auth, psql_at, psql_command, serial, switchover_body, DcsSpec,
    ScenarioCluster as Cluster, ScenarioNode as Node, ScenarioOptions as Options, Serial,
    API_PASSWORD, API_USER, PG_PASSWORD,
};
pub(crate) use matriarch_testkit::wait::wait_for;
pub(crate) use offline_config::{
    assert_check_refuses, check_refuses, on_config, OFFLINE_CONFIG, OFFLINE_DATA_ROOT,
};

/// `matriarch ctl ARGS` of this build, with none of ctl's variables from the
/// test's environment.
pub(crate) fn ctl(args: &[&str]) -> Output {
    ctl_env(args, &[])
}

/// `matriarch ctl ARGS` of this build with `env` as ctl's only variables.
pub(crate) fn ctl_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    matriarch_testkit::cluster::run_ctl(Path::new(env!("CARGO_BIN_EXE_matriarch")), args, env)
}
