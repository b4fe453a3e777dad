//! [`HttpPeerProbe`]: talks to the peers' REST APIs over HTTP or HTTPS.
//!
//! - During a leader race it asks each peer's `GET /patroni` for its WAL
//!   position, fresher than its member record ([`PeerProbe`]).
//! - In failsafe mode, a primary cut off from the DCS sends each member of
//!   the `failsafe` key a `POST /failsafe` heartbeat ([`FailsafeSender`]).
//!
//! Requests go through the crate's [`HttpClient`]: a peer whose `api_url` is
//! `https://` is reached over TLS, verified against the cluster's CA
//! (`restapi.cafile`) when one is configured, otherwise against the system's
//! roots; the node's own `restapi.certfile` and `keyfile` are presented as a
//! client certificate when set.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use hyper::Method;
use matriarch_ha::{FailsafeSender, PeerProbe, PeerReport};
use matriarch_model::{FailsafeHeartbeat, Lsn, Member, MemberName, Timeline};
use tracing::debug;

use crate::http_client::{HttpClient, HttpError, HttpRequest, HttpResponse, Target};
use matriarch_model::Secret;

/// Talks to peers in parallel, each request bounded by `timeout`; a peer that
/// does not answer in time (or not with a readable body) is left out.
#[derive(Clone)]
pub(crate) struct HttpPeerProbe {
    timeout: Duration,
    client: HttpClient,
    /// The `Authorization` header sent with `POST /failsafe` (a secret).
    authorization: Option<String>,
}

impl std::fmt::Debug for HttpPeerProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpPeerProbe")
            .field("timeout", &self.timeout)
            .field("client", &self.client)
            .field("authorization", &self.authorization.as_ref().map(|_| "***"))
            .finish()
    }
}

/// The URL of `endpoint` (`/failsafe`) on the API that `api_url` (Patroni's
/// `.../patroni`) belongs to: same scheme and address, the path replaced.
pub(crate) fn api_endpoint(api_url: &str, endpoint: &str) -> Result<String, HttpError> {
    let target = Target::parse(api_url)?;
    let scheme = if target.tls { "https" } else { "http" };
    Ok(format!("{scheme}://{}{endpoint}", target.authority))
}

impl HttpPeerProbe {
    /// A probe that asks peers with `client` (which holds the cluster's CA
    /// and this node's client certificate for HTTPS peers).
    pub(crate) fn new(timeout: Duration, client: HttpClient) -> Self {
        HttpPeerProbe {
            timeout,
            client,
            authorization: None,
        }
    }

    /// Sends `credentials` (`restapi.authentication`) as basic
    /// authentication with `POST /failsafe`, which peers authenticate like
    /// every change; without them only a client certificate can.
    pub(crate) fn with_basic_auth(mut self, credentials: Option<(&str, &Secret)>) -> Self {
        use base64::Engine as _;
        self.authorization = credentials.map(|(user, password)| {
            let pair = format!("{user}:{}", password.expose());
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(pair)
            )
        });
        self
    }
}

/// Reads the WAL position and timeline from a `/patroni` body: the largest
/// of `xlog.location`, `xlog.received_location`, `xlog.replayed_location`
/// (numbers, as Patroni writes them, or `X/Y` text).
pub(crate) fn report_from_body(body: &serde_json::Value) -> PeerReport {
    let xlog = body.get("xlog");
    let position = ["location", "received_location", "replayed_location"]
        .iter()
        .filter_map(|key| xlog.and_then(|x| x.get(*key)))
        .filter_map(|value| match value {
            serde_json::Value::Number(n) => n.as_u64().map(Lsn),
            serde_json::Value::String(s) => s.parse::<Lsn>().ok(),
            _ => None,
        })
        .max();
    let timeline = body
        .get("timeline")
        .and_then(serde_json::Value::as_u64)
        .and_then(|t| u32::try_from(t).ok())
        .map(Timeline);
    // Patroni's body: `role` "master"/"primary" and `state` "running".
    let text = |key: &str| body.get(key).and_then(serde_json::Value::as_str);
    let running_primary =
        matches!(text("role"), Some("primary" | "master")) && text("state") == Some("running");
    PeerReport {
        wal_position: position,
        timeline,
        running_primary,
    }
}

#[async_trait]
impl PeerProbe for HttpPeerProbe {
    async fn probe(&self, members: &[Member]) -> BTreeMap<MemberName, PeerReport> {
        let asks = members.iter().map(|member| async move {
            let result = self.client.get(&member.api_url, self.timeout).await;
            let report = match result {
                Ok(HttpResponse {
                    status: 200 | 503,
                    body,
                }) => serde_json::from_slice::<serde_json::Value>(&body)
                    .ok()
                    .map(|body| report_from_body(&body)),
                Ok(HttpResponse { status, .. }) => {
                    debug!(peer = %member.name, status, "peer probe: unexpected status");
                    None
                }
                Err(error) => {
                    debug!(peer = %member.name, %error, "peer probe failed");
                    None
                }
            };
            report.map(|r| (member.name.clone(), r))
        });
        futures::future::join_all(asks)
            .await
            .into_iter()
            .flatten()
            .collect()
    }
}

#[async_trait]
impl FailsafeSender for HttpPeerProbe {
    async fn send(
        &self,
        members: &[(MemberName, String)],
        heartbeat: &FailsafeHeartbeat,
        timeout: Duration,
    ) -> BTreeSet<MemberName> {
        let body = match serde_json::to_vec(heartbeat) {
            Ok(body) => Bytes::from(body),
            Err(error) => {
                debug!(%error, "cannot encode the failsafe heartbeat");
                return BTreeSet::new();
            }
        };
        let asks = members.iter().map(|(name, api_url)| {
            let body = body.clone();
            async move {
                let url = match api_endpoint(api_url, "/failsafe") {
                    Ok(url) => url,
                    Err(error) => {
                        debug!(peer = %name, %error, "failsafe: unusable api_url");
                        return None;
                    }
                };
                let request = HttpRequest::new(Method::POST, &url)
                    .json(body)
                    .authorization(self.authorization.as_deref());
                match self.client.send(request, timeout).await {
                    Ok(HttpResponse { status: 200, .. }) => Some(name.clone()),
                    Ok(HttpResponse { status, body }) => {
                        debug!(peer = %name, status, reply = %String::from_utf8_lossy(&body), "failsafe heartbeat refused");
                        None
                    }
                    Err(error) => {
                        debug!(peer = %name, %error, "failsafe heartbeat not delivered");
                        None
                    }
                }
            }
        });
        futures::future::join_all(asks)
            .await
            .into_iter()
            .flatten()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_read_patroni_bodies() {
        let body = serde_json::json!({"timeline": 3, "xlog": {"received_location": 100, "replayed_location": 90}});
        let report = report_from_body(&body);
        assert_eq!(report.wal_position, Some(Lsn(100)));
        assert_eq!(report.timeline, Some(Timeline(3)));
        let body = serde_json::json!({"xlog": {"location": "0/3000000"}});
        assert_eq!(report_from_body(&body).wal_position, Some(Lsn(0x3000000)));
        assert_eq!(report_from_body(&serde_json::json!({})).wal_position, None);
    }

    #[test]
    fn a_running_primary_is_told_from_its_body() {
        let primary = |role: &str, state: &str| {
            report_from_body(&serde_json::json!({"role": role, "state": state})).running_primary
        };
        assert!(primary("primary", "running"));
        assert!(primary("master", "running"));
        assert!(!primary("primary", "stopped"));
        assert!(!primary("replica", "running"));
        assert!(!report_from_body(&serde_json::json!({"role": 7})).running_primary);
    }

    #[test]
    fn failsafe_goes_to_the_same_api_as_the_member_record() {
        assert_eq!(
            api_endpoint("https://10.0.0.5:8008/patroni", "/failsafe").unwrap(),
            "https://10.0.0.5:8008/failsafe"
        );
        assert_eq!(
            api_endpoint("http://db1:8008", "/failsafe").unwrap(),
            "http://db1:8008/failsafe"
        );
    }

    #[tokio::test]
    async fn https_peers_are_probed_and_sent_heartbeats_verified_by_the_cluster_ca() {
        use crate::http_client::tests::{certificates, serve};
        let Some(dir) = certificates() else {
            return;
        };
        // 200 with a `/patroni` body for GET, 200 for `POST /failsafe`
        // naming db1 with the credentials, 409 otherwise.
        let port = serve(Some(dir.path()), |seen| {
            match (seen.method.clone(), seen.path.as_str()) {
                (Method::GET, "/patroni") => (
                    200,
                    r#"{"timeline": 2, "xlog": {"location": 4096}}"#.to_owned(),
                ),
                (Method::POST, "/failsafe") => {
                    let heartbeat: Result<FailsafeHeartbeat, _> =
                        serde_json::from_slice(&seen.body);
                    let authorized = seen.authorization.as_deref() == Some("Basic YWRtaW46cHc=");
                    match heartbeat {
                        Ok(hb) if hb.name.as_str() == "db1" && authorized => {
                            (200, "Accepted".to_owned())
                        }
                        _ => (409, "no".to_owned()),
                    }
                }
                _ => (404, String::new()),
            }
        })
        .await;
        let api_url = format!("https://127.0.0.1:{port}/patroni");
        let client = HttpClient::with_tls_files(Some(&dir.path().join("ca.pem")), None);
        let password: Secret = serde_json::from_str("\"pw\"").unwrap();
        let probe = HttpPeerProbe::new(Duration::from_secs(5), client)
            .with_basic_auth(Some(("admin", &password)));
        let member = Member::new(MemberName::new("db2").unwrap(), "", api_url.clone());
        let reports = probe.probe(&[member]).await;
        let report = &reports[&MemberName::new("db2").unwrap()];
        assert_eq!(report.wal_position, Some(Lsn(4096)));
        assert_eq!(report.timeline, Some(Timeline(2)));

        let heartbeat = |name: &str| FailsafeHeartbeat {
            name: MemberName::new(name).unwrap(),
            conn_url: String::new(),
            api_url: String::new(),
            timeline: Some(Timeline(2)),
            xlog_location: Some(Lsn(4096)),
        };
        let members = [(MemberName::new("db2").unwrap(), api_url.clone())];
        let acked = probe
            .send(&members, &heartbeat("db1"), Duration::from_secs(5))
            .await;
        assert_eq!(acked.len(), 1);
        let acked = probe
            .send(&members, &heartbeat("db9"), Duration::from_secs(5))
            .await;
        assert!(acked.is_empty());

        // Without the cluster's CA the peer is not trusted: left out.
        let untrusting = HttpPeerProbe::new(
            Duration::from_secs(5),
            HttpClient::with_tls_files(Some(&dir.path().join("server.pem")), None),
        );
        let member = Member::new(MemberName::new("db2").unwrap(), "", api_url.clone());
        assert!(untrusting.probe(&[member]).await.is_empty());
    }
}
