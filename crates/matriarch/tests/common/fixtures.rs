//! Clusters in the states several end-to-end tests start from.

use std::time::Duration;

use matriarch_testkit::cluster::{ScenarioCluster, ScenarioOptions};

use super::ClusterChecks;

/// Two nodes on etcd with the default options, healthy within `timeout`:
/// the cluster, its primary and its replica.
pub(crate) fn healthy_pair(timeout: Duration) -> (ScenarioCluster, usize, usize) {
    let (cluster, primary) =
        ScenarioCluster::healthy_on_etcd(2, ScenarioOptions::default(), timeout);
    (cluster, primary, 1 - primary)
}

/// Three nodes on etcd with the default options, healthy within `timeout`,
/// each with table `t` holding the row 1 the primary wrote: the cluster and
/// its primary.
pub(crate) fn three_with_a_replicated_row(timeout: Duration) -> (ScenarioCluster, usize) {
    let (cluster, primary) =
        ScenarioCluster::healthy_on_etcd(3, ScenarioOptions::default(), timeout);
    cluster.psql_ok(primary, "CREATE TABLE t (v int); INSERT INTO t VALUES (1)");
    for i in 0..3 {
        let replicated = cluster.wait_sql(i, "SELECT count(*) FROM t", "1", timeout);
        cluster.check(replicated, &format!("node {i} does not have the row"));
    }
    (cluster, primary)
}
