//! The DCS `config` key round-trips: keys matriarch does not act on (Patroni's
//! `slots`, `check_timeline`, `postgresql.recovery_conf`,
//! ...) survive every rewrite — `PATCH`/`PUT /config`, `ctl pause`, `resume`,
//! `edit-config` — and `GET /config` shows them.

mod common;

use std::process::Output;
use std::time::Duration;

use common::{etcd_get, etcd_put, wait_for, Cluster};
use serde_json::{json, Value};

const CONFIG_KEY: &str = "/service/e2e/config";

fn assert_ctl_ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what}: {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The dotted paths of `expected`'s leaves that `actual` lacks or holds
/// with another value.
fn missing(actual: &Value, expected: &Value, path: &str, out: &mut Vec<String>) {
    match (actual, expected) {
        (Value::Object(actual), Value::Object(expected)) => {
            for (key, value) in expected {
                let inner = format!("{path}.{key}");
                match actual.get(key) {
                    Some(found) => missing(found, value, &inner, out),
                    None => out.push(format!("{inner} absent")),
                }
            }
        }
        _ if actual == expected => {}
        _ => out.push(format!("{path} is {actual}, not {expected}")),
    }
}

/// Both the `config` key in etcd and `GET /config` hold every key of
/// `expected` with its value.
fn assert_kept(etcd: &str, node: &common::Node, expected: &Value, step: &str) {
    let (stored, _) = etcd_get(etcd, CONFIG_KEY).expect("the config key exists");
    let stored: Value = serde_json::from_str(&stored).expect("the config key is JSON");
    let mut lost = Vec::new();
    missing(&stored, expected, "etcd", &mut lost);
    let shown = node.call("GET", "/config", "", false);
    assert_eq!(shown.status, 200, "{step}: {}", shown.body_text());
    let shown: Value = serde_json::from_slice(&shown.body).expect("GET /config is JSON");
    missing(&shown, expected, "GET /config", &mut lost);
    assert!(
        lost.is_empty(),
        "after {step}:\n{}\netcd: {stored}\nGET /config: {shown}",
        lost.join("\n")
    );
}

#[test]
fn unknown_config_keys_survive_patch_put_pause_resume_and_edit_config() {
    let cluster = Cluster::lone_primary_on_etcd(Duration::from_secs(60));
    let (url, node) = (cluster.etcd_url(), &cluster.nodes[0]);

    // Patroni's keys, which matriarch does not act on, next to the timing the
    // test cluster runs with.
    let mut expected = json!({
        "ttl": 4, "loop_wait": 1, "retry_timeout": 1.5,
        "maximum_lag_on_failover": 104857600,
        "check_timeline": true,
        "primary_start_timeout": 300,
        "member_slots_ttl": "30min",
        "ignore_slots": [{"name": "ignored", "type": "logical"}],
        "slots": {"cdc": {"type": "logical", "database": "postgres", "plugin": "pgoutput"}},
        "postgresql": {
            "use_pg_rewind": true,
            "use_slots": true,
            "recovery_conf": {"restore_command": "false"},
            "pg_hba": ["host replication replicator 127.0.0.1/32 md5"]
        }
    });
    etcd_put(&url, CONFIG_KEY, &expected.to_string());
    assert!(
        wait_for(Duration::from_secs(20), || {
            let shown = node.call("GET", "/config", "", false);
            let shown: Value = serde_json::from_slice(&shown.body).ok()?;
            (shown["maximum_lag_on_failover"] == 104857600).then_some(())
        })
        .is_some(),
        "GET /config does not show the written key\n{}",
        cluster.logs()
    );
    assert_kept(&url, node, &expected, "the etcd put");

    let patched = node.call("PATCH", "/config", r#"{"ttl": 6}"#, true);
    assert_eq!(patched.status, 200, "{}", patched.body_text());
    expected["ttl"] = 6.into();
    let answer: Value = serde_json::from_slice(&patched.body).expect("PATCH answers JSON");
    let mut lost = Vec::new();
    missing(&answer, &expected, "PATCH answer", &mut lost);
    assert!(lost.is_empty(), "{}", lost.join("\n"));
    assert_kept(&url, node, &expected, "PATCH /config {\"ttl\": 6}");

    assert_ctl_ok(&node.ctl(&["pause"]), "ctl pause");
    expected["pause"] = true.into();
    assert_kept(&url, node, &expected, "ctl pause");

    assert_ctl_ok(&node.ctl(&["resume"]), "ctl resume");
    expected["pause"] = false.into();
    assert_kept(&url, node, &expected, "ctl resume");

    let out = node.ctl(&[
        "edit-config",
        "-s",
        "check_timeline=false",
        "-s",
        "postgresql.recovery_conf.restore_command=/bin/true",
        "--force",
    ]);
    assert_ctl_ok(&out, "ctl edit-config");
    expected["check_timeline"] = false.into();
    expected["postgresql"]["recovery_conf"]["restore_command"] = "/bin/true".into();
    assert_kept(&url, node, &expected, "ctl edit-config");

    // PUT replaces the whole value: what the body holds is what is stored.
    let mut body = expected.clone();
    body["primary_start_timeout"] = 60.into();
    if let Some(map) = body.as_object_mut() {
        map.remove("member_slots_ttl");
    }
    let put = node.call("PUT", "/config", &body.to_string(), true);
    assert_eq!(put.status, 200, "{}", put.body_text());
    assert_kept(&url, node, &body, "PUT /config");
    let (stored, _) = etcd_get(&url, CONFIG_KEY).expect("the config key exists");
    let stored: Value = serde_json::from_str(&stored).expect("JSON");
    assert!(
        stored.get("member_slots_ttl").is_none(),
        "PUT kept a key its body dropped: {stored}"
    );

    // Known keys are still checked: an unsafe timing is refused, unchanged.
    let refused = node.call("PATCH", "/config", r#"{"retry_timeout": 60}"#, true);
    assert_eq!(refused.status, 400, "{}", refused.body_text());
    assert_kept(&url, node, &body, "a refused PATCH");
}
