//! Who may change the cluster: the client address must be in
//! `restapi.allowlist` (when one is set), then the request authenticated by
//! a verified client certificate or `restapi.authentication`'s basic auth.
//! Without any authentication configured, changes are refused.

use std::net::IpAddr;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, Request, StatusCode};
use axum::middleware::Next;
use base64::Engine as _;
use tracing::warn;

use super::response::{error, Resp};
use super::state::{ApiState, Client, SharedState};
use super::throttle::Throttle;

/// Refused change requests (one log line per interval).
static REFUSALS: Throttle = Throttle::new();

/// The middleware in front of every change (and `POST /failsafe`): runs
/// before the body is read, so that an anonymous client holds nothing open.
pub(crate) async fn authorize(State(state): SharedState, req: Request<Body>, next: Next) -> Resp {
    let client = req.extensions().get::<Client>().copied();
    match state.check_authorization(req.headers(), client) {
        Ok(()) => next.run(req).await,
        Err(refusal) => {
            if let Some(suppressed) = REFUSALS.due() {
                let what = if req.uri().path() == "/failsafe" {
                    "refused a failsafe heartbeat"
                } else {
                    "refused a change request"
                };
                let peer = client.map(|c| c.peer.to_string()).unwrap_or_default();
                warn!(cluster = %state.scope, member = %state.name, method = %req.method(), path = req.uri().path(), %peer, status = refusal.status().as_u16(), suppressed, "{what}");
            }
            refusal
        }
    }
}

impl ApiState {
    /// Checks a change request from `client` (`None`: the address is
    /// unknown, which no allowlist admits) with `headers`.
    pub(crate) fn check_authorization(
        &self,
        headers: &HeaderMap,
        client: Option<Client>,
    ) -> Result<(), Resp> {
        let peer: Option<IpAddr> = client.map(|c| c.peer.ip());
        if !self.allowlist.is_empty()
            && !peer.is_some_and(|peer| self.allowlist.iter().any(|r| r.contains(peer)))
        {
            let who = peer.map_or_else(|| "an unknown client".to_owned(), |p| p.to_string());
            return Err(error(
                StatusCode::FORBIDDEN,
                format!("{who} is not in restapi.allowlist"),
            ));
        }
        if client.is_some_and(|c| c.verified_cert) && self.client_certs {
            return Ok(());
        }
        let Some((user, password)) = &self.auth else {
            if self.client_certs {
                return Err(unauthorized("a client certificate is required"));
            }
            return Err(error(
                StatusCode::FORBIDDEN,
                "changes are disabled: configure restapi.authentication (or client certificates)",
            ));
        };
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            // RFC 7235: the scheme's name is case-insensitive.
            .and_then(|v| {
                let (scheme, credentials) = v.trim_start().split_once(' ')?;
                scheme
                    .eq_ignore_ascii_case("basic")
                    .then_some(credentials.trim_start())
            })
            .and_then(|b| {
                base64::engine::general_purpose::STANDARD
                    .decode(b.trim())
                    .ok()
            })
            .and_then(|b| String::from_utf8(b).ok());
        let expected = format!("{user}:{}", password.expose());
        match given {
            Some(given) if constant_time_eq(given.as_bytes(), expected.as_bytes()) => Ok(()),
            Some(_) => Err(unauthorized("wrong user name or password")),
            None => Err(unauthorized("authentication required")),
        }
    }
}

fn unauthorized(message: &str) -> Resp {
    let mut response = error(StatusCode::UNAUTHORIZED, message);
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"matriarch\""),
    );
    response
}

/// Compares without an early exit, so that timing tells nothing of a
/// password's prefix.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
