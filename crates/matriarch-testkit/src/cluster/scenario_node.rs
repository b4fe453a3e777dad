//! One node of a [`super::ScenarioCluster`]: a `matriarch run` agent
//! ([`Supervised`]) with its directory, its REST API on 127.0.0.1, and the
//! calls a test makes on it (REST, psql, `matriarch ctl`).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::time::Duration;

use serde_json::Value;

use super::agent::{tail, NodeDir, Supervised};
use super::config::Credentials;
use crate::http::{http_request, HttpResponse};
use crate::postgres::bin_dir;
use crate::wait::wait_for;

/// The REST API user of every scenario node.
pub const API_USER: &str = "admin";
/// Its password.
pub const API_PASSWORD: &str = "api-secret";
/// The PostgreSQL superuser's (`postgres`) password.
pub const PG_PASSWORD: &str = "pg-secret";
/// The replication user's (`replicator`) password.
pub const REPLICATION_PASSWORD: &str = "repl-secret";

/// Every scenario node's users and passwords, as [`Credentials`] (for a
/// Patroni member beside the nodes).
pub fn scenario_credentials() -> Credentials {
    Credentials {
        api_user: API_USER.into(),
        api_password: API_PASSWORD.into(),
        pg_user: "postgres".into(),
        pg_password: PG_PASSWORD.into(),
        replication_password: REPLICATION_PASSWORD.into(),
    }
}

/// The `Authorization` header value for [`API_USER`] and [`API_PASSWORD`].
pub fn basic_auth() -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{API_USER}:{API_PASSWORD}"))
    )
}

/// The `POST /switchover` body from `leader` to `candidate`.
pub fn switchover_body(leader: &str, candidate: &str) -> String {
    format!("{{\"leader\": \"{leader}\", \"candidate\": \"{candidate}\"}}")
}

/// One `matriarch run` agent and its files. The harness panics (with the logs)
/// where a test could not go on.
#[derive(Debug)]
pub struct ScenarioNode {
    /// Member name.
    pub name: String,
    /// REST API port (on 127.0.0.1).
    pub api_port: u16,
    /// PostgreSQL port.
    pub pg_port: u16,
    /// PostgreSQL's address.
    pub pg_host: String,
    /// Its directory (owned by the PostgreSQL OS user).
    pub dir: PathBuf,
    /// The configuration file (`<dir>/node.yaml`).
    pub config: PathBuf,
    /// The agent's log (`<dir>/agent.log`).
    pub log: PathBuf,
    /// The agent process: `matriarch run --config <config>`.
    pub agent: Supervised,
    matriarch: PathBuf,
}

impl ScenarioNode {
    /// Node `name` in `dir`, its agent `matriarch` (not started, its
    /// configuration not written).
    pub fn new(
        matriarch: &Path,
        name: &str,
        api_port: u16,
        pg_host: &str,
        pg_port: u16,
        dir: PathBuf,
    ) -> ScenarioNode {
        let config = dir.join("node.yaml");
        let log = dir.join("agent.log");
        let argv: Vec<OsString> = vec![
            matriarch.into(),
            "run".into(),
            "--config".into(),
            config.clone().into(),
        ];
        ScenarioNode {
            name: name.to_owned(),
            api_port,
            pg_port,
            pg_host: pg_host.to_owned(),
            agent: Supervised::new(argv, log.clone()).in_callers_group(),
            dir,
            config,
            log,
            matriarch: matriarch.to_path_buf(),
        }
    }

    /// The data directory.
    pub fn data_dir(&self) -> PathBuf {
        NodeDir(self.dir.clone()).data_dir()
    }

    /// `http://127.0.0.1:<api>`
    pub fn api(&self) -> String {
        format!("http://127.0.0.1:{}", self.api_port)
    }

    /// The agent's pid, until it is reaped.
    pub fn pid(&self) -> Option<u32> {
        self.agent.id()
    }

    /// Whether the agent runs (reaping it when it exited).
    pub fn is_running(&mut self) -> bool {
        self.agent.is_running()
    }

    /// The agent's exit status once it exited (reaping it).
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.agent.exit_status()
    }

    /// The postmaster's pid, if its pid file names a live postgres process.
    pub fn postmaster_pid(&self) -> Option<i32> {
        NodeDir(self.dir.clone()).postmaster_pid()
    }

    /// Starts (or restarts) the agent with `extra_env` added to its environment.
    pub fn start(&mut self, extra_env: &[(&str, &str)]) {
        if let Err(e) = self.agent.start_with_env(extra_env) {
            panic!("cannot start {}'s agent: {e}", self.name);
        }
    }

    /// Sends `signal` to the agent.
    pub fn signal(&self, signal: i32) {
        self.agent.signal(signal);
    }

    /// Waits for the agent to exit; returns whether it did within `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> bool {
        wait_for(timeout, || (!self.agent.is_running()).then_some(())).is_some()
    }

    /// SIGKILLs the agent (not PostgreSQL) and reaps it.
    pub fn kill_agent(&mut self) {
        self.agent.kill();
    }

    /// The whole node dies: SIGKILL to the agent and to PostgreSQL, no clean
    /// shutdown.
    pub fn crash(&mut self) {
        self.kill_agent();
        self.kill_postgres();
    }

    /// SIGKILLs the postmaster and its children.
    pub fn kill_postgres(&self) {
        if let Some(pid) = self.postmaster_pid() {
            // SAFETY: kill(2) with a pid read from the pid file of our data dir.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
            let _ = Command::new("pkill")
                .args(["-KILL", "-P", &pid.to_string()])
                .status();
        }
    }

    /// One REST call, with basic auth when `auth` (status 0 when the API does
    /// not answer).
    pub fn call(&self, method: &str, path: &str, body: &str, auth: bool) -> HttpResponse {
        let auth_value = basic_auth();
        let mut headers = vec![("Content-Type", "application/json")];
        if auth {
            headers.push(("Authorization", auth_value.as_str()));
        }
        http_request(
            method,
            &format!("{}{path}", self.api()),
            &headers,
            body.as_bytes(),
        )
        .unwrap_or(HttpResponse {
            status: 0,
            headers: Vec::new(),
            body: Vec::new(),
        })
    }

    /// The status of `GET path` (0 when the API does not answer).
    pub fn status(&self, path: &str) -> u16 {
        self.call("GET", path, "", false).status
    }

    /// Runs SQL with psql over TCP as the superuser; `Err` with psql's output.
    pub fn psql(&self, sql: &str) -> Result<String, String> {
        psql_at(&self.pg_host, self.pg_port, sql)
    }

    /// `GET path` as JSON (`Null` when the API does not answer with JSON).
    pub fn get_json(&self, path: &str) -> Value {
        serde_json::from_slice(&self.call("GET", path, "", false).body).unwrap_or(Value::Null)
    }

    /// The timeline `/patroni` reports.
    pub fn timeline(&self) -> Option<u64> {
        self.get_json("/patroni")["timeline"].as_u64()
    }

    /// Waits until `GET path` answers `status`; returns whether it did.
    pub fn wait_status(&self, path: &str, status: u16, timeout: Duration) -> bool {
        wait_for(timeout, || (self.status(path) == status).then_some(())).is_some()
    }

    /// `matriarch ctl ARGS --api <this node>` with the test credentials (from
    /// the environment, so ctl prints no password warning).
    pub fn ctl(&self, args: &[&str]) -> Output {
        let api = self.api();
        let mut args = args.to_vec();
        args.extend(["--api", &api]);
        run_ctl(
            &self.matriarch,
            &args,
            &[
                ("MATRIARCH_CTL_USERNAME", API_USER),
                ("MATRIARCH_CTL_PASSWORD", API_PASSWORD),
            ],
        )
    }

    /// Rewrites the config file with the first `from` replaced by `to`
    /// (panics when `from` is not in it). The agent sees it at its next
    /// start, or on SIGHUP.
    pub fn edit_config(&self, from: &str, to: &str) {
        let path = &self.config;
        let text = std::fs::read_to_string(path).expect("read the node config");
        assert!(text.contains(from), "{from:?} not in {}", path.display());
        std::fs::write(path, text.replacen(from, to, 1)).expect("write the node config");
    }

    /// The last lines of the agent's log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log, lines)
    }
}

/// `<matriarch> ctl ARGS` with `env` as ctl's only variables (none of ctl's
/// variables of the caller's environment); panics when it cannot run.
pub fn run_ctl(matriarch: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(matriarch);
    command.arg("ctl").args(args).stdin(Stdio::null());
    for var in [
        "MATRIARCH_CTL_API",
        "MATRIARCH_CTL_CONFIG",
        "MATRIARCH_CTL_USERNAME",
        "MATRIARCH_CTL_PASSWORD",
    ] {
        command.env_remove(var);
    }
    command.envs(env.iter().copied());
    match command.output() {
        Ok(output) => output,
        Err(e) => panic!("cannot run {} ctl: {e}", matriarch.display()),
    }
}

/// A `psql` command running `sql` at `host:port` as the superuser, over TCP.
pub fn psql_command(host: &str, port: u16, sql: &str) -> Command {
    let mut command = Command::new(bin_dir().join("psql"));
    command
        .args(["-h", host, "-p", &port.to_string()])
        .args(["-U", "postgres", "-d", "postgres"])
        .args(["-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .env("PGPASSWORD", PG_PASSWORD)
        .env("PGCONNECT_TIMEOUT", "3");
    command
}

/// Runs SQL with psql over TCP at `host:port` as the superuser; `Err` with
/// psql's output.
pub fn psql_at(host: &str, port: u16, sql: &str) -> Result<String, String> {
    let output = psql_command(host, port, sql)
        .output()
        .map_err(|e| e.to_string())?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}
