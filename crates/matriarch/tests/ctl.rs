//! `matriarch ctl` against a stand-in REST server that records every request, so each test
//! asserts the exact method, path, body and Authorization header ctl sends, and what ctl
//! prints and exits with for the server's answers.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Output;
use std::sync::{Arc, Mutex};
use std::thread;

use common::{ctl, ctl_env, API_PASSWORD, API_USER};
use serde_json::{json, Value};

/// One request as the stand-in server saw it.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    headers: HashMap<String, String>,
    body: String,
}

impl Seen {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
    fn auth(&self) -> Option<&str> {
        self.headers.get("authorization").map(String::as_str)
    }
    /// (method, path)
    fn request(&self) -> (&str, &str) {
        (&self.method, &self.path)
    }
}

type Handler = dyn Fn(&Seen) -> (u16, String) + Send + Sync;

/// A tiny HTTP/1.1 server on 127.0.0.1 answering with `handler` and recording requests.
struct Stub {
    port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Stub {
    fn start(handler: impl Fn(&Seen) -> (u16, String) + Send + Sync + 'static) -> Stub {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let handler: Arc<Handler> = Arc::new(handler);
        let record = seen.clone();
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let (record, handler) = (record.clone(), handler.clone());
                thread::spawn(move || serve(stream, &record, &*handler));
            }
        });
        Stub { port, seen }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `matriarch ctl ARGS --api <this server>`.
    fn ctl(&self, args: &[&str]) -> Output {
        let url = self.url();
        ctl(&[args, &["--api", &url]].concat())
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("lock").clone()
    }

    fn mutations(&self) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|s| s.method != "GET")
            .collect()
    }
}

fn serve(stream: TcpStream, record: &Mutex<Vec<Seen>>, handler: &Handler) {
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let path = parts.next().unwrap_or_default().to_string();
    let mut headers = HashMap::new();
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).unwrap_or(0) == 0 || header.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = header.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let length: usize = headers
        .get("content-length")
        .and_then(|l| l.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; length];
    reader.read_exact(&mut body).expect("body");
    let seen = Seen {
        method,
        path,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    };
    record.lock().expect("lock").push(seen.clone());
    let (status, body) = handler(&seen);
    let mut stream = stream;
    let _ = write!(
        stream,
        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

/// Expects `text` in what ctl printed to stdout.
#[track_caller]
fn assert_stdout_contains(out: &Output, text: &str) {
    assert!(stdout(out).contains(text), "{}", stdout(out));
}

/// Runs ctl with `args` and expects exit status 1 with `message` on stderr.
fn assert_fails(args: &[&str], message: &str) -> Output {
    let out = ctl(args);
    assert_eq!(code(&out), 1);
    assert!(stderr(&out).contains(message), "{}", stderr(&out));
    out
}

/// A three-member cluster whose members' api_url all point at `member_api`.
fn cluster(member_api: &str, paused: bool) -> Value {
    json!({
        "scope": "demo",
        "pause": paused,
        "members": [
            {"name": "pg1", "role": "leader", "state": "running", "api_url": format!("{member_api}/patroni"),
             "host": "127.0.0.1", "port": 5432, "timeline": 4},
            {"name": "pg2", "role": "replica", "state": "streaming", "api_url": format!("{member_api}/patroni"),
             "host": "127.0.0.1", "port": 5433, "timeline": 4, "lag": 0},
            {"name": "pg3", "role": "sync_standby", "state": "streaming", "api_url": format!("{member_api}/patroni"),
             "host": "127.0.0.1", "port": 5434, "timeline": 4, "lag": 2097152, "tags": {"nofailover": true}}
        ]
    })
}

/// A stand-in member: /cluster, /patroni, /config, /history, and 200 for mutations with
/// `mutation_reply`.
fn member(mutation_reply: (u16, &'static str)) -> Stub {
    let api = Arc::new(Mutex::new(String::new()));
    let paused = Arc::new(Mutex::new(false));
    let (a, p) = (api.clone(), paused.clone());
    let stub = Stub::start(move |req| {
        let api = a.lock().expect("lock").clone();
        let is_paused = *p.lock().expect("lock");
        match (req.method.as_str(), req.path.as_str()) {
            ("GET", "/cluster") => (200, cluster(&api, is_paused).to_string()),
            ("GET", "/patroni") => (
                200,
                json!({"state": "running", "role": "primary", "database_system_identifier": "7300000000000000042",
                       "patroni": {"scope": "demo", "name": "pg1"}, "pause": is_paused})
                .to_string(),
            ),
            ("GET", "/config") => (200, json!({"ttl": 30, "loop_wait": 10, "pause": is_paused,
                                               "postgresql": {"parameters": {"max_connections": 100}}}).to_string()),
            ("GET", "/history") => (200, json!([[1, 25623960, "no recovery target specified", "2026-01-01T00:00:00+00:00", "pg1"]]).to_string()),
            ("PATCH", "/config") => {
                if let Some(flag) = req.json().get("pause").and_then(Value::as_bool) {
                    *p.lock().expect("lock") = flag;
                }
                (mutation_reply.0, mutation_reply.1.to_string())
            }
            ("GET", _) => (404, "\"not found\"".into()),
            _ => (mutation_reply.0, mutation_reply.1.to_string()),
        }
    });
    *api.lock().expect("lock") = stub.url();
    stub
}

const AUTH: &str = "Basic YWRtaW46czNjcmV0"; // admin:s3cret

#[test]
fn list_prints_the_member_table_with_cluster_name_and_system_id() {
    let stub = member((200, "\"ok\""));
    let out = stub.ctl(&["list"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.starts_with("+ Cluster: demo (7300000000000000042) "),
        "{text}"
    );
    assert!(text.contains("| Member | Host           | Role         | State     | TL | Lag in MB | Tags             |"), "{text}");
    assert!(text.contains("| pg1    | 127.0.0.1:5432 | Leader       | running   |  4 |           |                  |"), "{text}");
    assert!(text.contains("| pg3    | 127.0.0.1:5434 | Sync Standby | streaming |  4 |         2 | nofailover: true |"), "{text}");
    assert!(
        stub.seen()
            .iter()
            .all(|s| s.method == "GET" && s.auth().is_none()),
        "reads carry no credentials"
    );
}

#[test]
fn list_and_topology_as_json() {
    let stub = member((200, "\"ok\""));
    let out = stub.ctl(&["list", "--format", "json"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let rows: Value = serde_json::from_str(&stdout(&out)).expect("json");
    assert_eq!(
        rows[1],
        json!({"Cluster": "demo", "Member": "pg2", "Host": "127.0.0.1:5433", "Role": "Replica",
                               "State": "streaming", "TL": 4, "Lag in MB": 0})
    );
    let out = stub.ctl(&["topology"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_stdout_contains(&out, "| + pg2 ");
}

#[test]
fn each_api_is_tried_until_one_answers() {
    let dead = TcpListener::bind("127.0.0.1:0").expect("bind");
    let dead_url = format!(
        "http://127.0.0.1:{}",
        dead.local_addr().expect("addr").port()
    );
    drop(dead);
    let broken = Stub::start(|_| (503, "\"starting\"".into()));
    let stub = member((200, "\"ok\""));
    let out = ctl(&[
        "list",
        "--api",
        &dead_url,
        "--api",
        &broken.url(),
        "--api",
        &stub.url(),
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(stdout(&out).contains("pg1"));
    let out = ctl(&["list", "--api", &dead_url]);
    assert_eq!(code(&out), 1);
    assert!(
        stderr(&out).contains(&format!("{dead_url}/cluster")),
        "{}",
        stderr(&out)
    );
}

#[test]
fn switchover_posts_leader_candidate_and_time_with_basic_auth() {
    let stub = member((202, "Switchover scheduled"));
    let out = stub.ctl(&[
        "switchover",
        "--username",
        "admin",
        "--password",
        "s3cret",
        "--candidate",
        "pg2",
        "--scheduled",
        "2030-01-01T12:00:00Z",
        "--force",
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_stdout_contains(&out, "Switchover scheduled");
    let posts = stub.mutations();
    assert_eq!(posts.len(), 1);
    assert_eq!(posts[0].request(), ("POST", "/switchover"));
    assert_eq!(
        posts[0].json(),
        json!({"leader": "pg1", "candidate": "pg2", "scheduled_at": "2030-01-01T12:00:00+00:00"})
    );
    assert_eq!(posts[0].auth(), Some(AUTH));
    assert_eq!(
        posts[0].headers.get("content-type").map(String::as_str),
        Some("application/json")
    );
    assert!(!stdout(&out).contains("s3cret") && !stderr(&out).contains("s3cret"));
}

#[test]
fn switchover_without_force_or_terminal_is_refused_and_sends_nothing() {
    let stub = member((200, "ok"));
    assert_fails(
        &["switchover", "--api", &stub.url(), "--candidate", "pg2"],
        "--force",
    );
    assert!(stub.mutations().is_empty());
}

#[test]
fn switchover_checks_members_before_sending() {
    let stub = member((200, "ok"));
    let url = stub.url();
    let refused = |option: &str, member: &str, message: &str| {
        assert_fails(
            &["switchover", "--api", &url, option, member, "--force"],
            message,
        );
    };
    refused("--candidate", "pg9", "member pg9 does not exist in demo");
    refused("--leader", "pg2", "pg2 is not the leader");
    refused("--candidate", "pg1", "already the leader");
    assert!(stub.mutations().is_empty());
}

/// A member that refuses a request: ctl exits 1 with the server's status and
/// message, naming the endpoint; without credentials it sent none.
#[test]
fn a_refused_request_exits_1_with_the_servers_answer() {
    for (reply, args, answer) in [
        (
            (412, "candidate name does not match with sync_standby"),
            &["switchover", "--candidate", "pg2", "--force"][..],
            "HTTP 412: candidate name does not match",
        ),
        (
            (401, "{\"message\": \"authentication required\"}"),
            &["failover", "--candidate", "pg2", "--force"][..],
            "HTTP 401: authentication required",
        ),
        (
            (503, "restart failed"),
            &["reload", "pg1", "--force"][..],
            "HTTP 503: restart failed",
        ),
    ] {
        let stub = member(reply);
        let url = stub.url();
        let out = assert_fails(&[args, &["--api", &url]].concat(), answer);
        // It names the endpoint that refused.
        let err = stderr(&out);
        assert!(err.contains(&format!("{url}/{}", args[0])), "{err}");
        assert_eq!(stub.mutations()[0].auth(), None);
    }
}

#[test]
fn failover_posts_the_candidate() {
    let stub = member((200, "Successfully failed over to \"pg3\""));
    let out = ctl_env(
        &[
            "failover",
            "--api",
            &stub.url(),
            "--candidate",
            "pg3",
            "--force",
        ],
        &[
            ("MATRIARCH_CTL_USERNAME", "admin"),
            ("MATRIARCH_CTL_PASSWORD", "s3cret"),
        ],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let posts = stub.mutations();
    assert_eq!(posts[0].request(), ("POST", "/failover"));
    assert_eq!(posts[0].json(), json!({"candidate": "pg3"}));
    assert_eq!(posts[0].auth(), Some(AUTH));
    assert!(stdout(&out).contains("Successfully failed over"));
}

#[test]
fn pause_and_resume_patch_config_and_wait_for_members() {
    let stub = member((200, "{}"));
    let out = stub.ctl(&["pause", "--wait", "--timeout", "10"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(stdout(&out).contains("paused"));
    assert_eq!(stub.mutations()[0].path, "/config");
    assert_eq!(stub.mutations()[0].method, "PATCH");
    assert_eq!(stub.mutations()[0].json(), json!({"pause": true}));
    let out = stub.ctl(&["pause"]);
    assert_eq!(code(&out), 1);
    assert!(stderr(&out).contains("already paused"));
    let out = stub.ctl(&["resume", "--wait"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(stub.mutations()[1].json(), json!({"pause": false}));
    let out = stub.ctl(&["resume"]);
    assert_eq!(code(&out), 1);
    assert!(stderr(&out).contains("not paused"));
}

#[test]
fn edit_config_sends_the_merge_patch() {
    let stub = member((200, "{}"));
    let out = stub.ctl(&[
        "edit-config",
        "--force",
        "-s",
        "ttl=20",
        "-s",
        "postgresql.use_pg_rewind=false",
        "-s",
        "name=x y",
        "-p",
        "max_connections=200",
        "-p",
        "pg_stat_statements.track=all",
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_stdout_contains(&out, "-ttl: 30\n+ttl: 20");
    let patch = &stub.mutations()[0];
    assert_eq!(patch.request(), ("PATCH", "/config"));
    assert_eq!(
        patch.json(),
        json!({"ttl": 20, "name": "x y", "postgresql": {"use_pg_rewind": false,
               "parameters": {"max_connections": 200, "pg_stat_statements.track": "all"}}})
    );
    let out = stub.ctl(&["edit-config", "--force", "-s", "ttl=30"]);
    assert_eq!(code(&out), 0);
    assert!(stdout(&out).contains("Not changed"));
    assert_eq!(stub.mutations().len(), 1);
}

#[test]
fn restart_reload_and_reinit_go_to_the_members_own_api() {
    let target = member((200, "\"done\""));
    // The cluster is read through `front`, whose members point at `target`.
    let target_url = target.url();
    let front = Stub::start(move |req| match req.path.as_str() {
        "/cluster" => (200, cluster(&target_url, false).to_string()),
        _ => (500, "\"wrong API\"".into()),
    });
    let auth = ["--username", "admin", "--password", "s3cret", "--api"];
    let run = |cmd: &[&str]| {
        let mut args: Vec<&str> = cmd.to_vec();
        args.extend(auth);
        let url = front.url();
        args.push(&url);
        let out = ctl(&args);
        assert_eq!(code(&out), 0, "{:?}: {}", cmd, stderr(&out));
        out
    };
    run(&["restart", "pg2", "--force"]);
    let out = run(&["restart", "pg3", "--pending", "--force"]);
    assert_stdout_contains(&out, "Skipped: member pg3 has no pending restart");
    run(&["reload", "pg2", "--force"]);
    let out = run(&["reinit", "pg3", "--force"]);
    assert_stdout_contains(&out, "Success: reinitialize on member pg3: done");
    let sent: Vec<(String, String, String)> = target
        .mutations()
        .iter()
        .map(|s| (s.method.clone(), s.path.clone(), s.body.clone()))
        .collect();
    assert_eq!(
        sent,
        vec![
            ("POST".into(), "/restart".into(), "{}".into()),
            ("POST".into(), "/reload".into(), String::new()),
            (
                "POST".into(),
                "/reinitialize".into(),
                "{\"force\":true}".into()
            ),
        ]
    );
    assert!(target.mutations().iter().all(|s| s.auth() == Some(AUTH)));
    assert!(front.mutations().is_empty());
    assert_fails(
        &["restart", "pg7", "--force", "--api", &front.url()],
        "member pg7 does not exist",
    );
}

#[test]
fn history_and_show_config_in_text_and_json() {
    let stub = member((200, "{}"));
    let out = stub.ctl(&["history"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_stdout_contains(
        &out,
        "|  1 | 25623960 | no recovery target specified | 2026-01-01T00:00:00+00:00 | pg1        |",
    );
    let out = stub.ctl(&["history", "--format", "json"]);
    let rows: Value = serde_json::from_str(&stdout(&out)).expect("json");
    assert_eq!(rows[0]["New Leader"], json!("pg1"));
    let out = stub.ctl(&["show-config"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_stdout_contains(&out, "ttl: 30");
    assert_stdout_contains(&out, "  parameters:\n    max_connections: 100");
    let out = stub.ctl(&["show-config", "--format", "json"]);
    let config: Value = serde_json::from_str(&stdout(&out)).expect("json");
    assert_eq!(config["loop_wait"], json!(10));
}

#[test]
fn node_yaml_gives_address_and_credentials() {
    let stub = member((200, "\"ok\""));
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("node.yaml");
    std::fs::write(
        &file,
        format!(
            "scope: demo\nname: pg1\nrestapi:\n  listen: 0.0.0.0:{port}\n  authentication:\n    username: admin\n    password: s3cret\netcd3: {{hosts: x}}\n",
            port = stub.port
        ),
    )
    .expect("write");
    let path = file.to_string_lossy().into_owned();
    let out = ctl(&[
        "failover",
        "--config",
        &path,
        "--candidate",
        "pg2",
        "--force",
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(stub.mutations()[0].auth(), Some(AUTH));
}

#[test]
fn usage_errors_exit_2_and_send_nothing() {
    let stub = member((200, "{}"));
    for args in [
        vec!["edit-config", "-s", "ttl"],
        vec!["edit-config"],
        vec!["edit-config", "-s", "a=1", "-s", "a.b=2"],
        vec!["switchover", "--scheduled", "tomorrow", "--force"],
        vec!["failover"],
        vec!["list", "--format", "xml"],
        vec!["frobnicate"],
    ] {
        let mut full = args.clone();
        let url = stub.url();
        full.extend(["--api", &url]);
        let out = ctl(&full);
        assert_eq!(code(&out), 2, "{args:?}: {}", stderr(&out));
        assert!(!stderr(&out).is_empty());
    }
    assert!(stub.seen().is_empty(), "usage errors contact no server");
}

#[test]
fn an_api_that_answers_503_is_named_with_its_answer() {
    let starting = Stub::start(|_| (503, "\"starting up\"".into()));
    let out = starting.ctl(&["show-config"]);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    let err = stderr(&out);
    assert!(!err.contains("no REST API answered"), "{err}");
    assert!(
        err.contains(&format!(
            "{}/config answered HTTP 503: starting up",
            starting.url()
        )),
        "{err}"
    );
}

#[test]
fn list_shows_a_scheduled_switchover_under_the_table() {
    let stub = Stub::start(|req| match req.path.as_str() {
        "/cluster" => {
            let mut body = cluster("http://127.0.0.1:1", false);
            body["scheduled_switchover"] =
                json!({"at": "2030-01-01T12:00:00+00:00", "from": "pg1", "to": "pg2"});
            (200, body.to_string())
        }
        _ => (404, "\"not found\"".into()),
    });
    let out = stub.ctl(&["list"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains(
            "+\n Switchover scheduled at: 2030-01-01T12:00:00+00:00\n                    from: pg1\n                      to: pg2\n"
        ),
        "{text}"
    );
}

#[test]
fn the_password_option_warns_that_ps_shows_it_and_names_the_variable() {
    let out = ctl(&["--help"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let help = stdout(&out);
    assert!(help.contains("MATRIARCH_CTL_PASSWORD"), "{help}");
    assert!(help.contains("visible to other users"), "{help}");
    // The variable works on its own.
    let stub = member((200, "\"ok\""));
    let out = ctl_env(
        &["pause", "--api", &stub.url(), "--username", "admin"],
        &[("MATRIARCH_CTL_PASSWORD", "s3cret")],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(stub.mutations()[0].auth(), Some(AUTH));
}

#[test]
fn a_body_that_is_not_json_is_a_clear_error() {
    let stub = Stub::start(|_| (200, "<html>".into()));
    let out = assert_fails(&["list", "--api", &stub.url()], "is not JSON");
    assert!(stderr(&out).contains(&stub.url()), "{}", stderr(&out));
}

// ---------------------------------------------------------------------------------------
// Against the real daemon: `matriarch run` members on a real etcd and real PostgreSQL.
// ---------------------------------------------------------------------------------------

mod real {
    use super::*;
    use std::time::{Duration, Instant};

    use crate::common::{Cluster, Node, Options};

    /// `n` members (pg1, pg2, ...) of scope `scope` on an etcd of their own,
    /// configured but not started.
    pub(crate) fn cluster(scope: &'static str, n: usize) -> Cluster {
        let options = Options {
            dcs: "    ttl: 10\n    loop_wait: 1\n    retry_timeout: 3\n".to_owned(),
            scope,
            member_prefix: "pg",
            ..Options::default()
        };
        Cluster::configure_on_etcd(n, options)
    }

    /// Polls `ctl list --format json` until `check` accepts the rows.
    pub(crate) fn wait_for(
        node: &Node,
        what: &str,
        timeout: Duration,
        check: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let out = ctl(&["list", "--format", "json", "--api", &node.api()]);
            if let Ok(Value::Array(rows)) = serde_json::from_slice::<Value>(&out.stdout) {
                if check(&rows) {
                    return rows;
                }
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out waiting for {what}; last ctl output: {}{}\nlog of {}:\n{}",
                    stdout(&out),
                    stderr(&out),
                    node.name,
                    node.log_tail(30)
                );
            }
            thread::sleep(Duration::from_millis(500));
        }
    }

    pub(crate) fn leader_running(rows: &[Value]) -> bool {
        rows.iter()
            .any(|r| r["Role"] == "Leader" && r["State"] == "running")
    }
}

/// One real member: list, show-config, edit-config, pause/resume --wait, refusals (no
/// credentials, unknown member), reload and restart, all through the daemon's REST API.
#[test]
fn real_daemon_single_member() {
    use std::time::Duration;
    let mut cluster = real::cluster("ctl-single", 1);
    cluster.nodes[0].start(&[]);
    let node = &cluster.nodes[0];
    real::wait_for(
        node,
        "a running leader",
        Duration::from_secs(90),
        real::leader_running,
    );
    let api = node.api();
    let auth = [
        "--username",
        API_USER,
        "--password",
        API_PASSWORD,
        "--api",
        api.as_str(),
    ];
    let with_auth = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(auth);
        ctl(&all)
    };

    let out = ctl(&["list", "--api", &api]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.starts_with("+ Cluster: ctl-single ("),
        "system id in the title: {text}"
    );
    assert!(
        text.contains("| pg1    |") && text.contains("| Leader |") && text.contains("| running |"),
        "{text}"
    );

    // Without credentials the daemon refuses and nothing changes.
    assert_fails(&["pause", "--api", &api], "401");
    let out = ctl(&["show-config", "--format", "json", "--api", &api]);
    let config: Value = serde_json::from_slice(&out.stdout).expect("config json");
    assert_ne!(config["pause"], json!(true));

    let out = with_auth(&["pause", "--wait", "--timeout", "30"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    // /cluster may lag a loop behind the members' own /patroni that --wait watched.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let out = ctl(&["list", "--api", &api]);
        if stdout(&out).contains("Maintenance mode: on") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{}", stdout(&out));
        thread::sleep(Duration::from_millis(200));
    }
    let out = with_auth(&["pause"]);
    assert_eq!(code(&out), 1, "already paused");
    let out = with_auth(&["resume", "--wait", "--timeout", "30"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));

    let out = with_auth(&[
        "edit-config",
        "--force",
        "-s",
        "ttl=20",
        "-p",
        "work_mem=8MB",
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let out = ctl(&["show-config", "--format", "json", "--api", &api]);
    let config: Value = serde_json::from_slice(&out.stdout).expect("config json");
    assert_eq!(config["ttl"], json!(20));
    assert_eq!(config["postgresql"]["parameters"]["work_mem"], json!("8MB"));

    let out = with_auth(&["switchover", "--candidate", "nobody", "--force"]);
    assert_eq!(code(&out), 1);
    assert!(
        stderr(&out).contains("member nobody does not exist"),
        "{}",
        stderr(&out)
    );

    let out = with_auth(&["reload", "pg1", "--force"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let out = with_auth(&["restart", "pg1", "--force"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    real::wait_for(
        node,
        "the leader back after restart",
        Duration::from_secs(60),
        real::leader_running,
    );
    let out = ctl(&["history", "--api", &api]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
}

/// Two real members: `ctl switchover` hands the leader role to the replica.
#[test]
fn real_daemon_switchover_by_ctl() {
    use std::time::Duration;
    let mut cluster = real::cluster("ctl-switch", 2);
    cluster.nodes[0].start(&[]);
    real::wait_for(
        &cluster.nodes[0],
        "a running leader",
        Duration::from_secs(90),
        real::leader_running,
    );
    cluster.nodes[1].start(&[]);
    let (pg1, pg2) = (&cluster.nodes[0], &cluster.nodes[1]);
    real::wait_for(pg1, "pg2 streaming", Duration::from_secs(120), |rows| {
        rows.iter()
            .any(|r| r["Member"] == "pg2" && r["State"] == "streaming")
    });
    let apis = format!("{},{}", pg1.api(), pg2.api());
    let out = ctl(&[
        "switchover",
        "--api",
        &apis,
        "--username",
        API_USER,
        "--password",
        API_PASSWORD,
        "--leader",
        "pg1",
        "--candidate",
        "pg2",
        "--force",
    ]);
    assert_eq!(code(&out), 0, "{}\n{}", stderr(&out), pg2.log_tail(30));
    real::wait_for(pg2, "pg2 leading", Duration::from_secs(60), |rows| {
        rows.iter()
            .any(|r| r["Member"] == "pg2" && r["Role"] == "Leader" && r["State"] == "running")
    });
    // The new leader records the timeline switch after its promotion, and
    // each API serves the DCS view it last refreshed: allow a few seconds.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let history = loop {
        let out = ctl(&["history", "--format", "json", "--api", &apis]);
        let history: Value = serde_json::from_slice(&out.stdout).expect("history json");
        if history.as_array().map(Vec::len) == Some(1) || std::time::Instant::now() > deadline {
            break history;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    assert_eq!(history.as_array().map(Vec::len), Some(1), "{history}");
}

/// A member record as Patroni writes it under `/service/demo/members/NAME`.
fn member_record(role: &str, state: &str, pg_port: u16, api_port: u16, lsn: u64) -> String {
    json!({
        "conn_url": format!("postgres://127.0.0.1:{pg_port}/postgres"),
        "api_url": format!("http://127.0.0.1:{api_port}/patroni"),
        "state": state, "role": role, "version": "4.1.0",
        "xlog_location": lsn, "timeline": 3,
    })
    .to_string()
}

/// With no member's REST API answering, `list` and `topology` show the
/// cluster from the DCS the node's configuration names (members from their
/// records, the leader from the leader key) and say that no API answered.
#[test]
fn list_and_topology_read_the_dcs_when_no_api_answers() {
    let etcd = matriarch_testkit::EtcdServer::start().expect("etcd");
    let url = etcd.client_url();
    // Nothing listens on these ports.
    let dead = |_| matriarch_testkit::free_port().expect("port");
    let (api1, api2, api3) = (dead(1), dead(2), dead(3));
    let put =
        |key: &str, value: &str| common::etcd_put(&url, &format!("/service/demo/{key}"), value);
    put(
        "members/pg1",
        &member_record("primary", "running", 5432, api1, 50_331_648),
    );
    put(
        "members/pg2",
        &member_record("replica", "running", 5433, api2, 48_234_496),
    );
    put(
        "members/pg3",
        &member_record("replica", "stopped", 5434, api3, 0),
    );
    put("leader", "pg1");
    put("config", r#"{"ttl": 30, "loop_wait": 10, "pause": true}"#);
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("node.yaml");
    std::fs::write(
        &file,
        format!(
            "scope: demo\nname: pg1\nrestapi:\n  listen: 127.0.0.1:{api1}\n  authentication:\n    username: admin\n    password: s3cret\netcd3:\n  hosts: {hosts}\npostgresql:\n  listen: 127.0.0.1:5432\n  data_dir: {data}\n  authentication:\n    superuser: {{username: postgres, password: pg}}\n    replication: {{username: replicator, password: repl}}\n",
            hosts = url.trim_start_matches("http://"),
            data = dir.path().join("data").display(),
        ),
    )
    .expect("write node.yaml");
    let config = file.to_string_lossy().into_owned();

    let out = ctl(&["list", "demo", "--config", &config]);
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
    let table = stdout(&out);
    for row in ["| pg1 ", "| pg2 ", "| pg3 "] {
        assert!(table.contains(row), "{row} in\n{table}");
    }
    let row = |name: &str| {
        table
            .lines()
            .find(|l| l.contains(&format!("| {name} ")))
            .unwrap_or_default()
            .to_owned()
    };
    assert!(row("pg1").contains("Leader"), "{table}");
    assert!(row("pg1").contains("127.0.0.1:5432"), "{table}");
    assert!(row("pg2").contains("Replica"), "{table}");
    // 2 MiB behind the leader's position.
    assert!(row("pg2").contains(" 2 |"), "{table}");
    assert!(row("pg3").contains("stopped"), "{table}");
    assert!(table.contains("Cluster: demo"), "{table}");
    assert!(table.contains("Maintenance mode: on"), "{table}");
    let said = format!("{}{}", stdout(&out), stderr(&out));
    assert!(
        said.contains("no member's REST API answered") && said.contains("from the DCS"),
        "{said}"
    );

    let out = ctl(&["topology", "demo", "--config", &config]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(stdout(&out).contains("| + pg2 "), "{}", stdout(&out));

    let out = ctl(&["list", "--format", "json", "--config", &config]);
    let rows: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}{}", stdout(&out), stderr(&out)));
    assert_eq!(rows.as_array().map(Vec::len), Some(3), "{rows}");
    assert!(stderr(&out).contains("no member's REST API answered"));

    // Another cluster's name is still refused.
    let out = ctl(&["list", "other", "--config", &config]);
    assert_eq!(code(&out), 1, "{}", stdout(&out));
    assert!(stderr(&out).contains("not other"), "{}", stderr(&out));

    // Without a DCS to read, the APIs' failure is the answer.
    let out = ctl(&["list", "--api", &format!("http://127.0.0.1:{api1}")]);
    assert_eq!(code(&out), 1);
    assert!(
        stderr(&out).contains("no REST API answered"),
        "{}",
        stderr(&out)
    );
}
