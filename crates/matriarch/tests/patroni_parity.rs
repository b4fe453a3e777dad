//! What operators who switch from Patroni script, against a real two-node
//! cluster: the real `patronictl` (`$PATRONICTL`, else the one `cargo xtask
//! deps` installs in `target/patroni-venv`) lists the members, pauses with
//! `--wait` and flushes a scheduled switchover; `matriarch ctl` does the
//! same with patronictl's arguments; `/patroni` and `/metrics` carry
//! Patroni's fields and series.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{etcd_get, wait_for, Cluster, Options, API_PASSWORD, API_USER};
use serde_json::Value;

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The real patronictl: `$PATRONICTL`, else `cargo xtask deps`'s venv
/// (`$MATRIARCH_PATRONI_VENV` or `<workspace>/target/patroni-venv`).
fn patronictl_path() -> PathBuf {
    let path = std::env::var_os("PATRONICTL")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::var_os("MATRIARCH_PATRONI_VENV")
                .map(PathBuf::from)
                .unwrap_or_else(|| {
                    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/patroni-venv")
                })
                .join("bin/patronictl")
        });
    assert!(
        path.is_file(),
        "{} is missing: `cargo xtask deps` installs patronictl",
        path.display()
    );
    path
}

/// A patronictl configuration for the test cluster (its DCS and the REST
/// API credentials).
fn patronictl_config(dir: &Path, etcd: &str) -> PathBuf {
    let file = dir.join("patronictl.yaml");
    let hosts = etcd.trim_start_matches("http://");
    std::fs::write(
        &file,
        format!(
            "scope: e2e\nnamespace: /service/\netcd3:\n  hosts: {hosts}\n\
             ctl:\n  authentication:\n    username: {API_USER}\n    password: {API_PASSWORD}\n\
             restapi:\n  authentication:\n    username: {API_USER}\n    password: {API_PASSWORD}\n"
        ),
    )
    .expect("write patronictl.yaml");
    file
}

fn patronictl(bin: &Path, config: &Path, args: &[&str]) -> Output {
    Command::new(bin)
        .arg("-c")
        .arg(config)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run patronictl")
}

#[test]
fn patroni_tools_work_against_matriarch() {
    let cluster = Cluster::start_on_etcd(2, Options::default());
    let primary = cluster.wait_healthy(1, Duration::from_secs(120));
    let replica = 1 - primary;
    let (p, r) = (&cluster.nodes[primary], &cluster.nodes[replica]);
    p.psql("CREATE TABLE parity(x int); INSERT INTO parity VALUES (1)")
        .expect("write on the primary");

    // /patroni on a replica: Patroni's xlog fields, the replay timestamp of
    // the write above once replayed.
    let status = wait_for(Duration::from_secs(30), || {
        let status = r.get_json("/patroni");
        status["xlog"]["replayed_timestamp"]
            .is_string()
            .then_some(status)
    })
    .unwrap_or_else(|| panic!("no replayed_timestamp\n{}", r.get_json("/patroni")));
    assert_eq!(status["xlog"]["paused"], Value::Bool(false), "{status}");
    assert!(status["xlog"]["received_location"].is_u64(), "{status}");
    assert!(status["xlog"]["replayed_location"].is_u64(), "{status}");
    assert!(status["postmaster_start_time"].is_string(), "{status}");
    assert!(
        status["server_version"].as_u64().unwrap_or(0) > 150_000,
        "{status}"
    );
    assert_eq!(status["replication_state"], "streaming", "{status}");

    // /metrics: Patroni's series with Patroni's labels.
    let metrics = p.call("GET", "/metrics", "", false).body_text();
    let labels = format!("{{scope=\"e2e\",name=\"{}\"}}", p.name);
    for line in [
        format!("patroni_primary{labels} 1"),
        format!("patroni_replica{labels} 0"),
        format!("patroni_postgres_running{labels} 1"),
        format!("patroni_cluster_unlocked{labels} 0"),
        format!("patroni_is_paused{labels} 0"),
    ] {
        assert!(metrics.contains(&line), "{line} in:\n{metrics}");
    }
    let metrics = r.call("GET", "/metrics", "", false).body_text();
    assert!(
        metrics.contains(&format!(
            "patroni_postgres_streaming{{scope=\"e2e\",name=\"{}\"}} 1",
            r.name
        )),
        "{metrics}"
    );

    // matriarch ctl with patronictl's arguments.
    let out = p.ctl(&["list", "e2e", "--format", "json"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = p.ctl(&["list", "another"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("not another"), "{}", text(&out));
    let out = p.ctl(&["version", "e2e"]);
    assert!(out.status.success(), "{}", text(&out));
    for node in &cluster.nodes {
        assert!(
            text(&out).contains(&format!("{}: Patroni ", node.name)),
            "{}",
            text(&out)
        );
    }
    let out = p.ctl(&["dsn", "e2e"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("host={} port={}", p.pg_host, p.pg_port),
        "{}",
        text(&out)
    );
    // A restart only if pending: nothing is pending, the member says so.
    let out = p.ctl(&["restart", "e2e", &r.name, "--pending", "--force"]);
    assert!(
        text(&out).contains(&format!(
            "Skipped: member {} has no pending restart",
            r.name
        )),
        "{}",
        text(&out)
    );
    // A scheduled switchover, flushed.
    let at = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let out = p.ctl(&["switchover", "e2e", "--scheduled", &at, "--force"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = p.ctl(&["flush", "e2e", "switchover"]);
    assert!(
        text(&out).contains("Success: scheduled switchover deleted"),
        "{}",
        text(&out)
    );
    let out = p.ctl(&["flush", "e2e", "switchover"]);
    assert!(
        text(&out).contains("No pending scheduled switchover"),
        "{}",
        text(&out)
    );
    // A scheduled restart, flushed.
    let at = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let body = format!("{{\"schedule\": \"{at}\"}}");
    let scheduled = r.call("POST", "/restart", &body, true);
    assert_eq!(scheduled.status, 202, "{}", scheduled.body_text());
    let out = p.ctl(&["flush", "e2e", &r.name, "restart"]);
    assert!(
        text(&out).contains(&format!(
            "Success: flush scheduled restart for member {}",
            r.name
        )),
        "{}",
        text(&out)
    );

    // query: SQL on a member's PostgreSQL, rows as patronictl's tsv.
    let api = p.api();
    let out = common::ctl_env(
        &[
            "query",
            "e2e",
            "--role",
            "replica",
            "-c",
            "SELECT x, NULL AS y FROM parity",
            "--api",
            &api,
        ],
        &[("PGPASSWORD", common::PG_PASSWORD)],
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "x\ty\n1\tNone\n",
        "{}",
        text(&out)
    );
    // list --watch prints again until interrupted.
    let mut watch = Command::new(env!("CARGO_BIN_EXE_matriarch"))
        .args(["ctl", "list", "e2e", "-w", "0.3", "--api", &api])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("ctl list -w");
    std::thread::sleep(Duration::from_millis(2000));
    watch.kill().expect("stop ctl list -w");
    let watched = watch.wait_with_output().expect("ctl list -w output");
    let tables = String::from_utf8_lossy(&watched.stdout)
        .matches("Cluster: e2e")
        .count();
    assert!(tables >= 2, "{}", String::from_utf8_lossy(&watched.stdout));

    let bin = patronictl_path();
    let config = patronictl_config(Path::new(&cluster.nodes[0].dir), &cluster.etcd_url());

    let out = patronictl(&bin, &config, &["list", "e2e", "-f", "json"]);
    assert!(out.status.success(), "{}", text(&out));
    let rows: Value = serde_json::from_slice(&out.stdout).expect("patronictl list json");
    let rows = rows.as_array().cloned().unwrap_or_default();
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert!(
        rows.iter()
            .any(|m| m["Member"] == p.name.as_str() && m["Role"] == "Leader"),
        "{rows:?}"
    );
    assert!(
        rows.iter()
            .any(|m| m["Member"] == r.name.as_str() && m["Role"] == "Replica"),
        "{rows:?}"
    );

    // pause --wait: every member acknowledges in its DCS record.
    let out = patronictl(&bin, &config, &["pause", "e2e", "--wait"]);
    assert!(
        text(&out).contains("Success: cluster management is paused"),
        "{}\n{}",
        text(&out),
        cluster.logs()
    );
    // patronictl also says Success when a member's record never changes
    // (it takes those for old versions): the records must say `pause`.
    for node in &cluster.nodes {
        let key = format!("/service/e2e/members/{}", node.name);
        let record = etcd_get(&cluster.etcd_url(), &key)
            .and_then(|(value, _)| serde_json::from_str::<Value>(&value).ok())
            .unwrap_or_default();
        assert_eq!(record["pause"], Value::Bool(true), "{key}: {record}");
    }
    let out = patronictl(&bin, &config, &["list", "e2e"]);
    assert!(
        text(&out).contains("Maintenance mode: on"),
        "{}",
        text(&out)
    );
    let out = patronictl(&bin, &config, &["resume", "e2e", "--wait"]);
    assert!(
        text(&out).contains("Success: cluster management is resumed"),
        "{}",
        text(&out)
    );

    // A scheduled switchover, flushed by patronictl.
    let at = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let body = format!("{{\"leader\": \"{}\", \"scheduled_at\": \"{at}\"}}", p.name);
    let scheduled = p.call("POST", "/switchover", &body, true);
    assert_eq!(scheduled.status, 202, "{}", scheduled.body_text());
    let out = patronictl(&bin, &config, &["flush", "e2e", "switchover"]);
    assert!(
        text(&out).contains("Success: scheduled switchover deleted"),
        "{}",
        text(&out)
    );

    // Restarts by patronictl whose conditions do not hold: none happens.
    let before = r.postmaster_pid();
    let out = patronictl(
        &bin,
        &config,
        &["restart", "e2e", &r.name, "--pending", "--force"],
    );
    assert!(!text(&out).contains("Success"), "{}", text(&out));
    let out = patronictl(
        &bin,
        &config,
        &["restart", "e2e", &r.name, "--pg-version", "10.0", "--force"],
    );
    assert!(
        text(&out).contains(&format!(
            "Failed: restart for member {}, status code=503, (restart conditions are not satisfied)",
            r.name
        )),
        "{}",
        text(&out)
    );
    assert_eq!(
        r.postmaster_pid(),
        before,
        "restarted although the conditions do not hold"
    );
    // A restart scheduled by patronictl, shown by the member, flushed by patronictl.
    let at = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let out = patronictl(
        &bin,
        &config,
        &["restart", "e2e", &r.name, "--scheduled", &at, "--force"],
    );
    assert!(
        text(&out).contains(&format!("Success: restart scheduled on member {}", r.name)),
        "{}",
        text(&out)
    );
    assert!(r.get_json("/patroni")["scheduled_restart"]["schedule"].is_string());
    // The member record carries it (the next loop writes it), as Patroni's.
    let key = format!("/service/e2e/members/{}", r.name);
    wait_for(Duration::from_secs(20), || {
        let (value, _) = etcd_get(&cluster.etcd_url(), &key)?;
        let record: Value = serde_json::from_str(&value).ok()?;
        record["scheduled_restart"]["schedule"]
            .is_string()
            .then_some(())
    })
    .unwrap_or_else(|| panic!("no scheduled_restart in {key}"));
    let out = patronictl(&bin, &config, &["list", "e2e"]);
    assert!(text(&out).contains("Scheduled restart"), "{}", text(&out));
    let out = patronictl(
        &bin,
        &config,
        &["flush", "e2e", &r.name, "restart", "--force"],
    );
    let cancelled = r.call("DELETE", "/restart", "", true);
    assert_eq!(
        cancelled.status,
        404,
        "patronictl flush left the restart: {}\n{}",
        cancelled.body_text(),
        text(&out)
    );

    // Replay positions in the member records: patronictl lists them.
    wait_for(Duration::from_secs(20), || {
        let out = patronictl(&bin, &config, &["list", "e2e", "-f", "json"]);
        let rows: Value = serde_json::from_slice(&out.stdout).ok()?;
        rows.as_array()?
            .iter()
            .any(|m| {
                m["Member"] == r.name.as_str()
                    && m["Replay LSN"].as_str().is_some_and(|l| l.contains('/'))
            })
            .then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "no replay LSN listed\n{}",
            text(&patronictl(&bin, &config, &["list", "e2e"]))
        )
    });

    // A parameter that needs a restart: the pending-restart column, and
    // `restart --pending` restarts that member.
    let changed = p.call(
        "PATCH",
        "/config",
        r#"{"postgresql": {"parameters": {"max_connections": 120}}}"#,
        true,
    );
    assert_eq!(changed.status, 200, "{}", changed.body_text());
    wait_for(Duration::from_secs(40), || {
        let out = patronictl(&bin, &config, &["list", "e2e", "-f", "json"]);
        let rows: Value = serde_json::from_slice(&out.stdout).ok()?;
        let rows = rows.as_array()?;
        (rows.len() == 2 && rows.iter().all(|m| m["Pending restart"] == "*")).then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "no pending restart listed\n{}\n{}",
            text(&patronictl(&bin, &config, &["list", "e2e"])),
            cluster.logs()
        )
    });
    let metrics = r.call("GET", "/metrics", "", false).body_text();
    assert!(
        metrics.contains(&format!(
            "patroni_pending_restart{{scope=\"e2e\",name=\"{}\"}} 1",
            r.name
        )),
        "{metrics}"
    );
    let before = r.postmaster_pid();
    let out = patronictl(
        &bin,
        &config,
        &["restart", "e2e", &r.name, "--pending", "--force"],
    );
    assert!(
        text(&out).contains(&format!("Success: restart on member {}", r.name)),
        "{}\n{}",
        text(&out),
        cluster.logs()
    );
    assert_ne!(r.postmaster_pid(), before, "not restarted");

    let out = patronictl(&bin, &config, &["version", "e2e"]);
    assert!(
        text(&out).contains(&format!("{}: Patroni ", p.name)),
        "{}",
        text(&out)
    );
}
