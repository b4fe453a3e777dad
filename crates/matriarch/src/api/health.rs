//! Role and health endpoints: 200 when the check passes, 503 when not, both
//! with the `/patroni` body, as Patroni answers them.

use axum::extract::{Query, State};
use axum::http::{StatusCode, Uri};

use super::response::{respond, Resp};
use super::state::{ApiState, SharedState};
use super::view::{health_check, Node};

/// Every health check's path (after [`super::routes::normalize_path`]).
pub(crate) const PATHS: &[&str] = &[
    "/",
    "/primary",
    "/master",
    "/read-write",
    "/standby-leader",
    "/standby_leader",
    "/leader",
    "/replica",
    "/read-only",
    "/synchronous",
    "/sync",
    "/read-only-sync",
    "/quorum",
    "/read-only-quorum",
    "/asynchronous",
    "/async",
    "/health",
    "/readiness",
    "/liveness",
];

/// `GET <health check>[?lag=..&tag=..]`.
pub(crate) async fn check(
    State(state): SharedState,
    uri: Uri,
    Query(query): Query<Vec<(String, String)>>,
) -> Resp {
    let node = state.node();
    let ok = state.health(uri.path(), &query, &node).unwrap_or(false);
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    respond(status, state.patroni_body(&node))
}

impl ApiState {
    /// Whether the health check `path` passes; `None` if `path` is not one.
    pub(crate) fn health(
        &self,
        path: &str,
        query: &[(String, String)],
        node: &Node,
    ) -> Option<bool> {
        if path == "/liveness" {
            let config = self.config_in_force(node);
            let bound = config.ttl.max(config.loop_wait * 3) + config.retry_timeout * 2;
            return Some(node.status_age.is_some_and(|age| age <= bound));
        }
        health_check(path, query, node, &self.name)
    }
}
