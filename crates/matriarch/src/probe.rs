//! [`HttpPeerProbe`]: asks each peer's REST API (`GET /patroni`) for its WAL
//! position, fresher than its member record, during a leader race.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use matriarch_ha::{PeerProbe, PeerReport};
use matriarch_model::{Lsn, Member, MemberName, Timeline};
use tracing::debug;

use crate::http_client;

/// Probes peers in parallel, each bounded by `timeout`; a peer that does not
/// answer in time (or not with a readable body) is left out.
#[derive(Debug, Clone)]
pub struct HttpPeerProbe {
    timeout: Duration,
}

impl HttpPeerProbe {
    /// A probe with a per-peer timeout.
    pub fn new(timeout: Duration) -> Self {
        HttpPeerProbe { timeout }
    }
}

/// Reads the WAL position and timeline from a `/patroni` body: the largest
/// of `xlog.location`, `xlog.received_location`, `xlog.replayed_location`
/// (numbers, as Patroni writes them, or `X/Y` text).
pub fn report_from_body(body: &serde_json::Value) -> PeerReport {
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
    PeerReport {
        wal_position: position,
        timeline,
    }
}

#[async_trait]
impl PeerProbe for HttpPeerProbe {
    async fn probe(&self, members: &[Member]) -> BTreeMap<MemberName, PeerReport> {
        let asks = members.iter().map(|member| async move {
            let result = http_client::get(&member.api_url, self.timeout).await;
            let report = match result {
                Ok((200 | 503, body)) => serde_json::from_slice::<serde_json::Value>(&body)
                    .ok()
                    .map(|body| report_from_body(&body)),
                Ok((status, _)) => {
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
}
