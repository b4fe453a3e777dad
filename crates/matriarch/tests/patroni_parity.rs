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

use common::{
    etcd_get, healthy_pair, output_text, wait_for, Cluster, Node, Options, API_PASSWORD, API_USER,
};
use serde_json::Value;

/// Asserts that a command printed exactly `expected` on stdout.
#[track_caller]
fn assert_printed(out: &Output, expected: &str) {
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        expected,
        "{}",
        output_text(out)
    );
}

/// Asserts that a command printed the DSN of `node` (`dsn`).
#[track_caller]
fn assert_dsn(out: &Output, node: &Node) {
    let dsn = format!("host={} port={}", node.pg_host, node.pg_port);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        dsn,
        "{}",
        output_text(out)
    );
}

/// Asserts that a command said `needle` (on stdout or stderr).
#[track_caller]
fn assert_says(out: &Output, needle: &str) {
    let said = output_text(out);
    assert!(said.contains(needle), "{needle:?} not in:\n{said}");
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

/// The real patronictl, configured for one test cluster.
struct Patronictl {
    bin: PathBuf,
    config: PathBuf,
}

impl Patronictl {
    /// patronictl for `cluster` (its etcd, its API credentials).
    fn for_cluster(cluster: &Cluster) -> Patronictl {
        Patronictl {
            bin: patronictl_path(),
            config: patronictl_config(Path::new(&cluster.nodes[0].dir), &cluster.etcd_url()),
        }
    }

    /// `patronictl -c CONFIG ARGS` with nothing on stdin.
    fn run(&self, args: &[&str]) -> Output {
        self.run_with_input(args, "")
    }

    /// `patronictl -c CONFIG ARGS` answering its prompts with `input`.
    fn run_with_input(&self, args: &[&str], input: &str) -> Output {
        use std::io::Write as _;
        let mut child = Command::new(&self.bin)
            .arg("-c")
            .arg(&self.config)
            .args(args)
            .env("PGPASSWORD", common::PG_PASSWORD)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run patronictl");
        if let Some(mut stdin) = child.stdin.take() {
            // patronictl may exit without reading its prompts' answers.
            let _ = stdin.write_all(input.as_bytes());
        }
        let out = child.wait_with_output().expect("patronictl's output");
        // Shown with a failing test's output (or --nocapture).
        eprintln!("$ patronictl {}\n{}", args.join(" "), output_text(&out));
        out
    }

    /// Waits until `patronictl list` shows `member` streaming, as an operator
    /// checks before moving the leader: a member's record follows its
    /// health checks by up to a loop.
    fn wait_streaming(&self, member: &str, cluster: &Cluster) {
        wait_for(Duration::from_secs(30), || {
            let rows = self.json(&["list", "e2e", "-f", "json"]);
            rows.as_array()?
                .iter()
                .any(|m| m["Member"] == member && m["State"] == "streaming")
                .then_some(())
        })
        .unwrap_or_else(|| panic!("{member} is not listed streaming\n{}", cluster.logs()));
    }

    /// `patronictl ARGS` whose stdout is JSON (`-f json`).
    fn json(&self, args: &[&str]) -> Value {
        let out = self.run(args);
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "patronictl {args:?}: not JSON ({e}):\n{}",
                output_text(&out)
            )
        })
    }
}

/// After patronictl's `out`, node `leader` alone leads, with the other node
/// streaming from it.
fn assert_leads_after(cluster: &Cluster, leader: usize, out: &Output) {
    assert!(
        cluster.wait_primary_is(leader, Duration::from_secs(60)),
        "{}\n{}",
        output_text(out),
        cluster.logs()
    );
    assert_eq!(cluster.wait_healthy(1, Duration::from_secs(60)), leader);
}

/// `node`'s `/metrics` has each series with Patroni's labels (scope and
/// member name) and the value given.
fn assert_metrics(node: &Node, series: &[(&str, u8)]) {
    let metrics = node.call("GET", "/metrics", "", false).body_text();
    let labels = format!("{{scope=\"e2e\",name=\"{}\"}}", node.name);
    for (name, value) in series {
        let line = format!("{name}{labels} {value}");
        assert!(metrics.contains(&line), "{line} in:\n{metrics}");
    }
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
    assert_metrics(
        p,
        &[
            ("patroni_primary", 1),
            ("patroni_replica", 0),
            ("patroni_postgres_running", 1),
            ("patroni_cluster_unlocked", 0),
            ("patroni_is_paused", 0),
        ],
    );
    assert_metrics(r, &[("patroni_postgres_streaming", 1)]);

    // matriarch ctl with patronictl's arguments.
    let out = p.ctl(&["list", "e2e", "--format", "json"]);
    assert!(out.status.success(), "{}", output_text(&out));
    let out = p.ctl(&["list", "another"]);
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
    assert_says(&out, "not another");
    let out = p.ctl(&["version", "e2e"]);
    assert!(out.status.success(), "{}", output_text(&out));
    for node in &cluster.nodes {
        assert_says(&out, &format!("{}: Patroni ", node.name));
    }
    let out = p.ctl(&["dsn", "e2e"]);
    assert_dsn(&out, p);
    // A restart only if pending: nothing is pending, the member says so.
    let out = p.ctl(&["restart", "e2e", &r.name, "--pending", "--force"]);
    assert_says(
        &out,
        &format!("Skipped: member {} has no pending restart", r.name),
    );
    // A scheduled switchover, flushed.
    let at = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let out = p.ctl(&["switchover", "e2e", "--scheduled", &at, "--force"]);
    assert!(out.status.success(), "{}", output_text(&out));
    let out = p.ctl(&["flush", "e2e", "switchover"]);
    assert_says(&out, "Success: scheduled switchover deleted");
    let out = p.ctl(&["flush", "e2e", "switchover"]);
    assert_says(&out, "No pending scheduled switchover");
    // A scheduled restart, flushed.
    let at = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let body = format!("{{\"schedule\": \"{at}\"}}");
    let scheduled = r.call("POST", "/restart", &body, true);
    assert_eq!(scheduled.status, 202, "{}", scheduled.body_text());
    let out = p.ctl(&["flush", "e2e", &r.name, "restart"]);
    assert_says(
        &out,
        &format!("Success: flush scheduled restart for member {}", r.name),
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
    assert_printed(&out, "x\ty\n1\tNone\n");
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

    let patronictl = Patronictl::for_cluster(&cluster);

    let out = patronictl.run(&["list", "e2e", "-f", "json"]);
    assert!(out.status.success(), "{}", output_text(&out));
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
    let out = patronictl.run(&["pause", "e2e", "--wait"]);
    assert!(
        output_text(&out).contains("Success: cluster management is paused"),
        "{}\n{}",
        output_text(&out),
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
    let out = patronictl.run(&["list", "e2e"]);
    assert_says(&out, "Maintenance mode: on");
    let out = patronictl.run(&["resume", "e2e", "--wait"]);
    assert_says(&out, "Success: cluster management is resumed");

    // A scheduled switchover, flushed by patronictl.
    let at = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let body = format!("{{\"leader\": \"{}\", \"scheduled_at\": \"{at}\"}}", p.name);
    let scheduled = p.call("POST", "/switchover", &body, true);
    assert_eq!(scheduled.status, 202, "{}", scheduled.body_text());
    let out = patronictl.run(&["flush", "e2e", "switchover"]);
    assert_says(&out, "Success: scheduled switchover deleted");

    // Restarts by patronictl whose conditions do not hold: none happens.
    let before = r.postmaster_pid();
    let out = patronictl.run(&["restart", "e2e", &r.name, "--pending", "--force"]);
    assert!(
        !output_text(&out).contains("Success"),
        "{}",
        output_text(&out)
    );
    let out = patronictl.run(&["restart", "e2e", &r.name, "--pg-version", "10.0", "--force"]);
    assert_says(&out, &format!(
            "Failed: restart for member {}, status code=503, (restart conditions are not satisfied)",
            r.name
        ));
    assert_eq!(
        r.postmaster_pid(),
        before,
        "restarted although the conditions do not hold"
    );
    // A restart scheduled by patronictl, shown by the member, flushed by patronictl.
    let at = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let out = patronictl.run(&["restart", "e2e", &r.name, "--scheduled", &at, "--force"]);
    assert_says(
        &out,
        &format!("Success: restart scheduled on member {}", r.name),
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
    let out = patronictl.run(&["list", "e2e"]);
    assert_says(&out, "Scheduled restart");
    let out = patronictl.run(&["flush", "e2e", &r.name, "restart", "--force"]);
    let cancelled = r.call("DELETE", "/restart", "", true);
    assert_eq!(
        cancelled.status,
        404,
        "patronictl flush left the restart: {}\n{}",
        cancelled.body_text(),
        output_text(&out)
    );

    // Replay positions in the member records: patronictl lists them.
    wait_for(Duration::from_secs(20), || {
        let out = patronictl.run(&["list", "e2e", "-f", "json"]);
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
            output_text(&patronictl.run(&["list", "e2e"]))
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
        let out = patronictl.run(&["list", "e2e", "-f", "json"]);
        let rows: Value = serde_json::from_slice(&out.stdout).ok()?;
        let rows = rows.as_array()?;
        (rows.len() == 2 && rows.iter().all(|m| m["Pending restart"] == "*")).then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "no pending restart listed\n{}\n{}",
            output_text(&patronictl.run(&["list", "e2e"])),
            cluster.logs()
        )
    });
    assert_metrics(r, &[("patroni_pending_restart", 1)]);
    let before = r.postmaster_pid();
    let out = patronictl.run(&["restart", "e2e", &r.name, "--pending", "--force"]);
    assert!(
        output_text(&out).contains(&format!("Success: restart on member {}", r.name)),
        "{}\n{}",
        output_text(&out),
        cluster.logs()
    );
    assert_ne!(r.postmaster_pid(), before, "not restarted");

    let out = patronictl.run(&["version", "e2e"]);
    assert_says(&out, &format!("{}: Patroni ", p.name));
}

/// The stdout lines of `out` that contain `needle`.
fn lines_with<'a>(out: &'a str, needle: &str) -> Vec<&'a str> {
    out.lines().filter(|l| l.contains(needle)).collect()
}

/// topology, show-config, edit-config, reload, query and dsn by the real
/// patronictl, each checked by what it did to the cluster.
#[test]
fn patronictl_reads_and_configures_the_cluster() {
    let (cluster, primary, replica) = healthy_pair(Duration::from_secs(120));
    let (p, r) = (&cluster.nodes[primary], &cluster.nodes[replica]);
    let patronictl = Patronictl::for_cluster(&cluster);

    // topology: the leader first, its replica nested under it.
    let out = patronictl.run(&["topology", "e2e"]);
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    let leader_row = table
        .lines()
        .position(|l| l.contains(&format!("| {} ", p.name)) && l.contains("| Leader"));
    let replica_row = table
        .lines()
        .position(|l| l.contains(&format!("| + {} ", r.name)) && l.contains("| Replica"));
    assert!(
        matches!((leader_row, replica_row), (Some(l), Some(r)) if l < r),
        "{}",
        output_text(&out)
    );

    // show-config: the dynamic configuration the members serve.
    let out = patronictl.run(&["show-config", "e2e"]);
    let shown: Value = serde_norway::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("show-config is not YAML ({e}):\n{}", output_text(&out)));
    assert_eq!(shown["ttl"], 4, "{shown}");
    assert_eq!(shown["loop_wait"], 1, "{shown}");
    assert_eq!(shown, p.get_json("/config"), "show-config vs GET /config");

    // edit-config: a setting and a PostgreSQL parameter applied by reload.
    let out = patronictl.run(&[
        "edit-config",
        "e2e",
        "--force",
        "-s",
        "maximum_lag_on_failover=1048576",
        "--pg",
        "work_mem=9MB",
    ]);
    assert_says(&out, "Configuration changed");
    for node in &cluster.nodes {
        let config = wait_for(Duration::from_secs(20), || {
            let config = node.get_json("/config");
            (config["maximum_lag_on_failover"] == 1_048_576).then_some(config)
        })
        .unwrap_or_else(|| panic!("{}: {}", node.name, node.get_json("/config")));
        assert_eq!(
            config["postgresql"]["parameters"]["work_mem"], "9MB",
            "{config}"
        );
    }
    for i in [primary, replica] {
        assert!(
            cluster.wait_sql(i, "SHOW work_mem", "9MB", Duration::from_secs(20)),
            "{}: work_mem {:?}\n{}",
            cluster.nodes[i].name,
            cluster.nodes[i].psql("SHOW work_mem"),
            cluster.logs()
        );
    }

    // reload: the replica reads its configuration file again and
    // PostgreSQL applies the parameter added there; the primary does not.
    assert_eq!(r.psql("SHOW maintenance_work_mem").as_deref(), Ok("64MB"));
    cluster.edit_config(
        replica,
        "    wal_keep_size: 128MB\n",
        "    wal_keep_size: 128MB\n    maintenance_work_mem: 77MB\n",
    );
    let out = patronictl.run(&["reload", "e2e", &r.name, "--force"]);
    assert_says(
        &out,
        &format!("Reload request received for member {}", r.name),
    );
    assert!(
        cluster.wait_sql(
            replica,
            "SHOW maintenance_work_mem",
            "77MB",
            Duration::from_secs(20)
        ),
        "not reloaded: {:?}\n{}",
        r.psql("SHOW maintenance_work_mem"),
        cluster.logs()
    );
    assert_eq!(p.psql("SHOW maintenance_work_mem").as_deref(), Ok("64MB"));

    // query: SQL on the leader's PostgreSQL, rows as tsv.
    let out = patronictl.run(&[
        "query",
        "e2e",
        "-U",
        "postgres",
        "-c",
        // Numbers: psycopg hands text back as bytes from a SQL_ASCII database
        // (initdb in the C locale), which patronictl prints as b'...'.
        "SELECT 1 AS one, current_setting('port')::int AS port, pg_is_in_recovery() AS standby",
    ]);
    assert_printed(
        &out,
        &format!("one\tport\tstandby\n1\t{}\tFalse\n", p.pg_port),
    );
    let out = patronictl.run(&[
        "query",
        "e2e",
        "-U",
        "postgres",
        "-r",
        "replica",
        "-c",
        "SELECT pg_is_in_recovery() AS standby",
    ]);
    assert_printed(&out, "standby\nTrue\n");

    // dsn: the leader's address, or a replica's.
    let out = patronictl.run(&["dsn", "e2e"]);
    assert_dsn(&out, p);
    let out = patronictl.run(&["dsn", "e2e", "-r", "replica"]);
    assert_dsn(&out, r);
}

/// switchover (now, and scheduled then flushed), history, failover, reinit
/// and remove by the real patronictl, each checked by what it did.
#[test]
fn patronictl_moves_the_leader_and_rebuilds_a_replica() {
    let (mut cluster, first) =
        Cluster::healthy_on_etcd(2, Options::default(), Duration::from_secs(120));
    let second = 1 - first;
    let patronictl = Patronictl::for_cluster(&cluster);
    let first_name = cluster.nodes[first].name.clone();
    let second_name = cluster.nodes[second].name.clone();
    let timeline = cluster.nodes[first]
        .timeline()
        .expect("the leader's timeline");

    // switchover now, no candidate named: the replica leads, the old
    // leader follows it.
    patronictl.wait_streaming(&second_name, &cluster);
    let out = patronictl.run(&["switchover", "e2e", "--force"]);
    assert_leads_after(&cluster, second, &out);

    // history: the timeline that ended, and who leads the next one.
    let entry = wait_for(Duration::from_secs(20), || {
        let history = patronictl.json(&["history", "e2e", "-f", "json"]);
        history
            .as_array()?
            .iter()
            .find(|line| line["TL"] == timeline)
            .cloned()
    })
    .unwrap_or_else(|| {
        panic!(
            "no history line for timeline {timeline}\n{}",
            output_text(&patronictl.run(&["history", "e2e"]))
        )
    });
    assert_eq!(entry["New Leader"], second_name.as_str(), "{entry}");
    assert!(entry["LSN"].as_u64().is_some_and(|l| l > 0), "{entry}");
    let out = patronictl.run(&["history", "e2e"]);
    // The table's row: `| TL | LSN | Reason | Timestamp | New Leader |`.
    assert!(
        lines_with(&String::from_utf8_lossy(&out.stdout), &second_name)
            .iter()
            .any(|l| l
                .trim_start_matches(['|', ' '])
                .starts_with(&format!("{timeline} "))),
        "{}",
        output_text(&out)
    );

    // A switchover scheduled in a few seconds, flushed at once: none happens.
    patronictl.wait_streaming(&first_name, &cluster);
    let at = chrono::Utc::now() + chrono::Duration::seconds(10);
    let out = patronictl.run(&[
        "switchover",
        "e2e",
        "--candidate",
        &first_name,
        "--scheduled",
        &at.to_rfc3339(),
        "--force",
    ]);
    let scheduled = cluster.nodes[second].get_json("/cluster");
    assert!(
        scheduled["scheduled_switchover"]["at"].is_string(),
        "{scheduled}\n{}",
        output_text(&out)
    );
    let out = patronictl.run(&["flush", "e2e", "switchover"]);
    assert_says(&out, "Success: scheduled switchover deleted");
    let timeline = cluster.nodes[second].timeline();
    while chrono::Utc::now() < at + chrono::Duration::seconds(4) {
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(cluster.primary(), Some(second), "{}", cluster.logs());
    assert_eq!(cluster.nodes[second].timeline(), timeline);

    // failover to a named candidate: it leads.
    let out = patronictl.run(&["failover", "e2e", "--candidate", &first_name, "--force"]);
    assert_leads_after(&cluster, first, &out);

    // reinit --wait: the replica's data directory is rebuilt from the
    // leader (a file left in it is gone, PostgreSQL started anew, the same
    // system), and it streams again.
    let replica = &cluster.nodes[second];
    let marker = replica.data_dir().join("left-by-the-test");
    std::fs::write(&marker, "x").expect("write into the replica's data directory");
    let system = replica.get_json("/patroni")["database_system_identifier"].clone();
    assert!(system.is_string(), "{system}");
    let postmaster = replica.postmaster_pid();
    // patronictl waits while the member reports `creating replica`: the
    // member and its record say so until the clone is done.
    let reinit = std::thread::scope(|scope| {
        let waiting =
            scope.spawn(|| patronictl.run(&["reinit", "e2e", &second_name, "--force", "--wait"]));
        let record_key = format!("/service/e2e/members/{second_name}");
        let (mut reported, mut recorded) = (Vec::new(), Vec::new());
        while !waiting.is_finished() {
            let state = replica.get_json("/patroni")["state"].clone();
            if reported.last() != Some(&state) {
                reported.push(state);
            }
            let record = etcd_get(&cluster.etcd_url(), &record_key)
                .and_then(|(value, _)| serde_json::from_str::<Value>(&value).ok())
                .unwrap_or_default();
            if recorded.last() != Some(&record["state"]) {
                recorded.push(record["state"].clone());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        (
            waiting.join().expect("patronictl reinit"),
            reported,
            recorded,
        )
    });
    let (out, reported, recorded) = reinit;
    eprintln!("during reinit: /patroni states {reported:?}, record states {recorded:?}");
    for states in [&reported, &recorded] {
        assert!(
            states.contains(&Value::from("creating replica")),
            "/patroni states {reported:?}, record states {recorded:?}\n{}",
            output_text(&out)
        );
    }
    assert!(
        output_text(&out).contains(&format!("Reinitialize is completed on: {second_name}")),
        "{}\n{}",
        output_text(&out),
        cluster.logs()
    );
    // --wait returned: the clone is over (PostgreSQL may still be starting,
    // as under Patroni).
    assert!(
        !marker.exists(),
        "not rebuilt\n{}\n{}",
        output_text(&out),
        cluster.logs()
    );
    let now = replica.get_json("/patroni");
    assert_ne!(now["state"], "creating replica", "{now}");
    let status = wait_for(Duration::from_secs(30), || {
        let status = replica.get_json("/patroni");
        (status["state"] == "running").then_some(status)
    })
    .unwrap_or_else(|| panic!("not running again\n{}", cluster.logs()));
    assert_eq!(status["database_system_identifier"], system, "{status}");
    assert_ne!(
        replica.postmaster_pid(),
        postmaster,
        "{}",
        output_text(&out)
    );
    cluster.nodes[first]
        .psql("CREATE TABLE after_reinit(x int); INSERT INTO after_reinit VALUES (7)")
        .expect("write on the leader");
    assert!(
        cluster.wait_sql(
            second,
            "SELECT x FROM after_reinit",
            "7",
            Duration::from_secs(30)
        ),
        "{}",
        cluster.logs()
    );
    assert_eq!(
        replica.get_json("/patroni")["replication_state"],
        "streaming",
        "{}",
        replica.get_json("/patroni")
    );

    // remove: with the agents stopped, everything of the cluster leaves the DCS.
    for node in &cluster.nodes {
        node.signal(libc::SIGTERM);
    }
    for node in &mut cluster.nodes {
        assert!(
            node.wait_exit(Duration::from_secs(30)),
            "{} did not stop",
            node.name
        );
    }
    let (_, keys) = common::etcd_range(&cluster.etcd_url(), "/service/e2e/");
    assert!(!keys.is_empty());
    let leader = common::etcd_get(&cluster.etcd_url(), "/service/e2e/leader")
        .map(|(holder, _)| holder)
        .unwrap_or_default();
    let out = patronictl.run_with_input(
        &["remove", "e2e"],
        &format!("e2e\nYes I am aware\n{leader}\n"),
    );
    let (_, keys) = common::etcd_range(&cluster.etcd_url(), "/service/e2e/");
    assert!(keys.is_empty(), "{keys:?}\n{}", output_text(&out));
}
