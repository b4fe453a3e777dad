//! The REST API, compatible with Patroni's so that HAProxy, ELB and
//! Kubernetes probes written for Patroni work unchanged. Served by axum over
//! hyper: [`routes::router`] declares the routes, [`serve`] the connections.
//!
//! Health endpoints ([`health`]; GET, HEAD, OPTIONS; 200 or 503 with the
//! `/patroni` body): `/primary` (`/`, `/master`, `/read-write`), `/replica`
//! (`?lag=<bytes or 1MB>`, `?<tag>=<value>`), `/read-only`, `/leader`,
//! `/synchronous` (`/sync`), `/asynchronous` (`/async`), `/health`,
//! `/liveness`, `/readiness`.
//!
//! Information ([`status`]): GET `/patroni`, `/cluster`, `/history`,
//! `/config`, `/metrics` (Prometheus text), `/failsafe`.
//!
//! Changes ([`mutations`], [`switchover`], [`restart`]; authenticated by
//! [`auth`]): PATCH and PUT `/config`, POST `/switchover`, `/failover`,
//! `/restart`, `/reload`, `/reinitialize`; DELETE `/switchover` and
//! `/restart` (cancel a scheduled one).
//!
//! Failsafe: POST `/failsafe`, a primary's heartbeat while the DCS is
//! unreachable; authenticated like every change (the sender presents
//! `restapi.authentication` or its client certificate), so that nobody else
//! can hold a replica back from a race.
//!
//! Exhaustion ([`limits`]): connections are capped in total (a share of the
//! file limit, so that the HA loop and PostgreSQL keep theirs) and per client
//! address, and headers, bodies ([`body`]) and TLS handshakes ([`tls`]) are
//! read under timeouts; bodies are bounded.

// Refusals are returned as the response itself (`Result<_, Response>`): they
// are built only on the error path of one request, so their size is no cost.
#![allow(clippy::result_large_err)]

mod auth;
mod backup;
mod body;
mod cancel_switchover;
mod config_checks;
mod health;
mod limits;
mod member_record;
mod metrics;
mod mutations;
mod patroni_status;
mod pg_ops;
mod response;
mod restart;
mod restart_request;
mod routes;
mod state;
mod status;
mod switchover;
mod throttle;
mod tls;
mod view;

#[cfg(test)]
mod parity_tests;
#[cfg(test)]
mod router_tests;
#[cfg(test)]
mod status_follow_tests;
#[cfg(test)]
mod tests;

pub(crate) use config_checks::pkglibdir;
pub(crate) use limits::{bind, raise_file_limit, serve, ConnectionLimits, FileLimitError};
pub(crate) use member_record::DaemonExtras;
pub(crate) use mutations::merge_patch;
pub(crate) use pg_ops::{BackupRunner, ReloadPostgres};
pub(crate) use state::{refresh, ApiState, Cache};
pub(crate) use status::host_port as conn_url_host_port;
pub(crate) use tls::tls_acceptor;
