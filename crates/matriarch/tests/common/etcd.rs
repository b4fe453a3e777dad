//! etcd read and written straight through its JSON gateway, so a scenario can
//! check (or tamper with) what the agents keep in the DCS without going
//! through them.

use base64::Engine as _;
use matriarch_testkit::http_request;
use serde_json::{json, Value};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// POSTs `body` to the gateway's `path`; the reply's status and JSON (`Null`
/// when it is not JSON), or `None` when etcd does not answer.
fn gateway(client_url: &str, path: &str, body: &Value) -> Option<(u16, Value)> {
    let response = http_request(
        "POST",
        &format!("{client_url}{path}"),
        &[("Content-Type", "application/json")],
        body.to_string().as_bytes(),
    )
    .ok()?;
    let reply = serde_json::from_slice(&response.body).unwrap_or(Value::Null);
    Some((response.status, reply))
}

/// A base64 field of a reply as text (empty when absent).
fn decoded(field: &Value) -> String {
    field
        .as_str()
        .and_then(|v| B64.decode(v).ok())
        .map(|v| String::from_utf8_lossy(&v).into_owned())
        .unwrap_or_default()
}

/// An int64 field of a reply: the gateway writes them as JSON strings; absent means 0.
fn int(field: &Value) -> i64 {
    field.as_str().and_then(|s| s.parse().ok()).unwrap_or(0)
}

/// Writes `value` under `key`, as `etcdctl put` would (an operator, a Patroni
/// member, or another member's lock as far as the agents can tell).
pub(crate) fn etcd_put(client_url: &str, key: &str, value: &str) {
    let body = json!({ "key": B64.encode(key), "value": B64.encode(value) });
    let (status, reply) =
        gateway(client_url, "/v3/kv/put", &body).expect("etcd answers /v3/kv/put");
    assert_eq!(status, 200, "{reply}");
}

/// One key: `None` when it is absent, else its value and lease id (0 without
/// a lease). Panics if etcd does not answer.
pub(crate) fn etcd_get(client_url: &str, key: &str) -> Option<(String, i64)> {
    let body = json!({ "key": B64.encode(key) });
    let (_, reply) = gateway(client_url, "/v3/kv/range", &body).expect("etcd answers /v3/kv/range");
    assert!(reply.is_object(), "etcd's range reply is not JSON");
    let kv = reply["kvs"].as_array()?.first()?;
    Some((decoded(&kv["value"]), int(&kv["lease"])))
}

/// etcd's current revision and every key under `prefix` with its
/// mod_revision.
pub(crate) fn etcd_range(client_url: &str, prefix: &str) -> (i64, Vec<(String, i64)>) {
    // The prefix's range end: its last byte plus one.
    let mut end = prefix.as_bytes().to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    let body = json!({ "key": B64.encode(prefix), "range_end": B64.encode(end) });
    let (_, reply) = gateway(client_url, "/v3/kv/range", &body).expect("etcd answers /v3/kv/range");
    assert!(reply.is_object(), "etcd's range reply is not JSON");
    let keys = reply["kvs"]
        .as_array()
        .map(|kvs| {
            kvs.iter()
                .map(|kv| (decoded(&kv["key"]), int(&kv["mod_revision"])))
                .collect()
        })
        .unwrap_or_default();
    (int(&reply["header"]["revision"]), keys)
}

/// The TTL an etcd lease was granted with (`/v3/lease/timetolive`), if it
/// is still alive.
pub(crate) fn etcd_lease_granted_ttl(client_url: &str, lease: i64) -> Option<i64> {
    let (_, reply) = gateway(client_url, "/v3/lease/timetolive", &json!({ "ID": lease }))?;
    // An expired lease reports ttl -1.
    let ttl: i64 = reply["TTL"].as_str()?.parse().ok()?;
    (ttl >= 0).then_some(())?;
    reply["grantedTTL"].as_str()?.parse().ok()
}
