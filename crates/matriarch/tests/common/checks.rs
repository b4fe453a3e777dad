//! Assertions of the end-to-end tests whose failure shows what the tests
//! need to see why: a command's output, every node's log.

use std::process::Output;

use matriarch_testkit::cluster::ScenarioCluster;

/// A command's stdout then its stderr, as text.
pub(crate) fn output_text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Assertions on a running cluster that fail with every node's log.
pub(crate) trait ClusterChecks {
    /// Asserts `ok`, else panics with `what` and every node's log.
    fn check(&self, ok: bool, what: &str);

    /// Asserts that a `matriarch ctl` (or other command) run succeeded, else
    /// panics with `what`, its output and every node's log.
    fn assert_ctl_ok(&self, out: &Output, what: &str);

    /// Runs `sql` on node `i`: its output, else panics with the error and
    /// every node's log.
    fn psql_ok(&self, i: usize, sql: &str) -> String;
}

impl ClusterChecks for ScenarioCluster {
    #[track_caller]
    fn check(&self, ok: bool, what: &str) {
        assert!(ok, "{what}\n{}", self.logs());
    }

    #[track_caller]
    fn assert_ctl_ok(&self, out: &Output, what: &str) {
        if !out.status.success() {
            self.check(false, &format!("{what} failed: {}", output_text(out)));
        }
    }

    #[track_caller]
    fn psql_ok(&self, i: usize, sql: &str) -> String {
        self.nodes[i]
            .psql(sql)
            .unwrap_or_else(|e| panic!("{sql} on node {i}: {e}\n{}", self.logs()))
    }
}
