//! The pieces of one node of a test cluster: a restartable agent process, its
//! PostgreSQL directory, and its REST API.

use std::ffi::OsString;
use std::fs;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use serde_json::Value;

use super::config::{AgentConfig, Credentials};
use crate::error::{IoContext, Result, TestkitError};
use crate::http::http_request_timeout;
use crate::postgres::PgOsUser;
use crate::process::describe;

/// A long-running program started with the same command line each time (an
/// agent, or a service of the chaos run in a network namespace), its output
/// appended to a log, in its own process group so that a terminal's Ctrl-C
/// reaches the harness alone, which then stops it in order (unless
/// [`Supervised::in_callers_group`]). Killed on drop.
#[derive(Debug)]
pub struct Supervised {
    argv: Vec<OsString>,
    log: PathBuf,
    child: Option<Child>,
    user: Option<PgOsUser>,
    own_group: bool,
}

impl Supervised {
    /// `argv` (the program first), logging to `log`; not started yet.
    pub fn new(argv: Vec<OsString>, log: PathBuf) -> Supervised {
        Supervised {
            argv,
            log,
            child: None,
            user: None,
            own_group: true,
        }
    }

    /// Keeps it in the caller's process group, so that a terminal's Ctrl-C
    /// stops it with the caller (a test binary, which has no handler to stop
    /// its programs in order).
    pub fn in_callers_group(mut self) -> Supervised {
        self.own_group = false;
        self
    }

    /// Runs it as `user` (Patroni runs as PostgreSQL's OS user).
    pub fn run_as(mut self, user: PgOsUser) -> Supervised {
        self.user = Some(user);
        self
    }

    /// `argv` run in network namespace `ns` with `ip netns exec` (which execs
    /// the program: the pid is the program's).
    pub fn in_namespace(ns: &str, argv: Vec<OsString>, log: PathBuf) -> Supervised {
        let mut full: Vec<OsString> = vec!["ip".into(), "netns".into(), "exec".into(), ns.into()];
        full.extend(argv);
        Supervised::new(full, log)
    }

    /// Starts it (appending to its log).
    pub fn start(&mut self) -> Result<()> {
        self.start_with_env(&[])
    }

    /// Starts it with `env` added to its environment (appending to its log).
    pub fn start_with_env(&mut self, env: &[(&str, &str)]) -> Result<()> {
        let open = || {
            fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.log)
                .ctx(|| format!("opening {}", self.log.display()))
        };
        let Some((program, args)) = self.argv.split_first() else {
            return Err(TestkitError::InvalidArgument(
                "an empty command line".into(),
            ));
        };
        let mut cmd = Command::new(program);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(open()?)
            .stderr(open()?)
            .envs(env.iter().copied());
        if self.own_group {
            cmd.process_group(0);
        }
        if let Some(user) = &self.user {
            user.apply(&mut cmd);
        }
        let what = describe(&cmd);
        self.child = Some(cmd.spawn().ctx(|| format!("starting `{what}`"))?);
        Ok(())
    }

    /// Its pid while it runs (an exited process is reaped and forgotten).
    pub fn pid(&mut self) -> Option<i32> {
        self.exited().is_none().then_some(())?;
        self.child.as_ref().and_then(|c| i32::try_from(c.id()).ok())
    }

    /// The pid of the process last started, until it is reaped (by
    /// [`Supervised::exited`], [`Supervised::pid`] or [`Supervised::kill`]).
    pub fn id(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether it runs.
    pub fn is_running(&mut self) -> bool {
        self.pid().is_some()
    }

    /// How it ended, once it was started and has exited (reaping it); `None`
    /// while it runs or when it was never started.
    pub fn exited(&mut self) -> Option<String> {
        match self.try_exit()? {
            Ok(status) => Some(status.to_string()),
            Err(e) => Some(format!("cannot wait for it: {e}")),
        }
    }

    /// Its exit status, once it was started and has exited (reaping it).
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.try_exit()?.ok()
    }

    /// `None` while it runs or when it was never started; its status (or why
    /// it cannot be waited for) once it exited, reaping it.
    fn try_exit(&mut self) -> Option<std::io::Result<ExitStatus>> {
        match self.child.as_mut()?.try_wait() {
            Ok(None) => None,
            Ok(Some(status)) => {
                self.child = None;
                Some(Ok(status))
            }
            Err(e) => Some(Err(e)),
        }
    }

    /// Sends `sig` to it (a child not reaped yet keeps its pid, so this never
    /// hits another process); whether there was a child to send it to.
    pub fn signal(&self, sig: libc::c_int) -> bool {
        let Some(pid) = self.id().and_then(|id| i32::try_from(id).ok()) else {
            return false;
        };
        // SAFETY: kill(2) on our own child, which is not reaped yet.
        unsafe { libc::kill(pid, sig) == 0 }
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Its log file.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// Node `config.name`'s agent, not started: writes the configuration to
    /// `<logs>/<name>.yaml` and runs `matriarch run --config` on it, logging to
    /// `<logs>/<name>.log` (emptied first), in network namespace `namespace`
    /// when one is given. Returns the configuration file too.
    pub fn agent(
        matriarch: &Path,
        config: &AgentConfig,
        logs: &Path,
        namespace: Option<&str>,
    ) -> Result<(PathBuf, Supervised)> {
        let path = logs.join(format!("{}.yaml", config.name));
        config.write(&path)?;
        let log = logs.join(format!("{}.log", config.name));
        let _ = fs::remove_file(&log);
        let argv: Vec<OsString> = vec![
            matriarch.into(),
            "run".into(),
            "--config".into(),
            path.clone().into(),
        ];
        let agent = match namespace {
            Some(ns) => Supervised::in_namespace(ns, argv, log),
            None => Supervised::new(argv, log),
        };
        Ok((path, agent))
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        // A stopped process ignores SIGKILL until continued.
        self.signal(libc::SIGCONT);
        self.kill();
    }
}

/// A node's directory: PostgreSQL's data directory (`data`) and the server log
/// pg_ctl writes next to it (`data.log`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeDir(pub PathBuf);

impl NodeDir {
    /// The directory itself.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// The data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.0.join("data")
    }

    /// PostgreSQL's server log.
    pub fn server_log(&self) -> PathBuf {
        self.0.join("data.log")
    }

    /// The postmaster's pid, if `postmaster.pid` names a live postgres process.
    pub fn postmaster_pid(&self) -> Option<i32> {
        let text = fs::read_to_string(self.data_dir().join("postmaster.pid")).ok()?;
        let pid: i32 = text.lines().next()?.trim().parse().ok()?;
        is_postgres(pid).then_some(pid)
    }
}

/// Whether process `pid` is a PostgreSQL process (postmaster or backend).
pub fn is_postgres(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .is_ok_and(|c| c.starts_with("postgres") || c.starts_with("postmaster"))
}

/// A node's REST API, with the cluster's basic-auth credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestApi {
    /// `http://host:port`.
    pub base: String,
    /// The API user.
    pub user: String,
    /// Its password.
    pub password: String,
    /// How long a `GET` may take to connect and each read.
    pub get_timeout: Duration,
}

impl RestApi {
    /// The API listening on `listen`, called with `credentials`' API user.
    pub fn new(listen: SocketAddr, credentials: &Credentials, get_timeout: Duration) -> RestApi {
        RestApi {
            base: format!("http://{listen}"),
            user: credentials.api_user.clone(),
            password: credentials.api_password.clone(),
            get_timeout,
        }
    }

    /// `GET path`: status and body (status 0 when it does not answer).
    pub fn get(&self, path: &str) -> (u16, Vec<u8>) {
        let url = format!("{}{path}", self.base);
        match http_request_timeout("GET", &url, &[], b"", self.get_timeout) {
            Ok(response) => (response.status, response.body),
            Err(_) => (0, Vec::new()),
        }
    }

    /// `GET path` as JSON, if the API answers 200 with JSON.
    pub fn get_json(&self, path: &str) -> Option<Value> {
        let (status, body) = self.get(path);
        (status == 200)
            .then(|| serde_json::from_slice(&body).ok())
            .flatten()
    }

    /// `method path` with a JSON `body` and basic auth: status and body text.
    /// `timeout` bounds the connection and each read (a switchover answers once
    /// it is done).
    pub fn call(
        &self,
        method: &str,
        path: &str,
        body: &Value,
        timeout: Duration,
    ) -> Result<(u16, String)> {
        use base64::Engine as _;
        let auth = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD
                .encode(format!("{}:{}", self.user, self.password))
        );
        let body = body.to_string();
        http_request_timeout(
            method,
            &format!("{}{path}", self.base),
            &[
                ("Authorization", &auth),
                ("Content-Type", "application/json"),
            ],
            body.as_bytes(),
            timeout,
        )
        .map(|r| (r.status, r.body_text()))
    }

    /// Whether `/primary` answers 200: the leader, with PostgreSQL running as primary.
    pub fn is_primary(&self) -> bool {
        self.get("/primary").0 == 200
    }

    /// Whether `/replica` answers 200: a running, streaming replica.
    pub fn is_replica(&self) -> bool {
        self.get("/replica").0 == 200
    }
}

/// The index of the only one of `apis` answering 200 on `/primary` (`None` when
/// none or several do).
pub fn only_primary<'a>(apis: impl IntoIterator<Item = &'a RestApi>) -> Option<usize> {
    let primaries: Vec<usize> = apis
        .into_iter()
        .enumerate()
        .filter(|(_, api)| api.is_primary())
        .map(|(i, _)| i)
        .collect();
    match primaries[..] {
        [one] => Some(one),
        _ => None,
    }
}

/// The last `lines` lines of a file (or why it cannot be read).
pub fn tail(path: &Path, lines: usize) -> String {
    let text = match fs::read(path) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) => return format!("(cannot read {}: {e})", path.display()),
    };
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The last `lines` lines of node `name`'s agent log and half as many of its
/// PostgreSQL server log, under headings.
pub fn node_log_tails(name: &str, agent_log: &Path, server_log: &Path, lines: usize) -> String {
    format!(
        "----- {name} agent ({}) -----\n{}\n----- {name} PostgreSQL ({}) -----\n{}\n",
        agent_log.display(),
        tail(agent_log, lines),
        server_log.display(),
        tail(server_log, lines / 2)
    )
}

/// Copies node `name`'s PostgreSQL server log to `<logs>/<name>-postgresql.log`,
/// so that it outlives the data directory.
pub fn keep_server_log(name: &str, server_log: &Path, logs: &Path) {
    let _ = fs::copy(server_log, logs.join(format!("{name}-postgresql.log")));
}

/// SIGKILLs every process whose command line names a path under `dir` (a
/// harness's own temporary directory: postgres processes, fence watchdogs a
/// killed agent left behind).
pub fn kill_processes_under(dir: &Path) {
    let needle = dir.display().to_string();
    let me = std::process::id();
    let Ok(entries) = fs::read_dir("/proc") else {
        return;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
            .filter(|pid| *pid != me)
        else {
            continue;
        };
        let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(&needle) {
            if let Ok(pid) = i32::try_from(pid) {
                // SAFETY: kill(2) on a process started for this harness's directory.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_supervised_program_restarts_logs_and_reports_its_exit() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("out.log");
        let mut p = Supervised::new(
            ["sh", "-c", "echo hello; exit 3"]
                .map(OsString::from)
                .to_vec(),
            log.clone(),
        );
        assert_eq!(p.exited(), None, "never started");
        for _ in 0..2 {
            p.start().unwrap();
            let status = (0..200)
                .find_map(|_| {
                    std::thread::sleep(Duration::from_millis(10));
                    p.exited()
                })
                .expect("sh exits");
            assert!(status.contains('3'), "{status}");
            assert!(!p.is_running());
        }
        assert_eq!(tail(&log, 5), "hello\nhello", "the log is appended to");
    }

    #[test]
    fn a_supervised_program_is_signalled_and_killed() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = Supervised::new(
            ["sleep", "30"].map(OsString::from).to_vec(),
            dir.path().join("sleep.log"),
        );
        assert!(!p.signal(libc::SIGTERM), "nothing to signal yet");
        p.start().unwrap();
        assert!(p.is_running());
        assert!(p.signal(libc::SIGSTOP));
        drop(p); // SIGCONT, SIGKILL, reaped: the test would hang on a leak otherwise.
    }

    #[test]
    fn an_agent_runs_matriarch_run_on_its_written_configuration() {
        let dir = tempfile::tempdir().unwrap();
        let config = super::super::config::sample_config();
        let log = dir.path().join("node2.log");
        fs::write(&log, "an older run\n").unwrap();
        // `echo` in place of matriarch prints the arguments it was given.
        let (path, mut agent) =
            Supervised::agent(Path::new("/bin/echo"), &config, dir.path(), None).unwrap();
        assert_eq!(path, dir.path().join("node2.yaml"));
        assert_eq!(fs::read_to_string(&path).unwrap(), config.to_yaml());
        agent.start().unwrap();
        (0..200)
            .find_map(|_| {
                std::thread::sleep(Duration::from_millis(10));
                agent.exited()
            })
            .expect("echo exits");
        assert_eq!(tail(&log, 5), format!("run --config {}", path.display()));
    }

    /// A REST API on a free port that answers every request with `status`.
    fn api_answering(status: u16) -> RestApi {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let listen = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for mut stream in listener.incoming().flatten() {
                let mut request = [0u8; 1024];
                let _ = stream.read(&mut request);
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                );
            }
        });
        let credentials = super::super::config::Credentials::with_prefix("t");
        RestApi::new(listen, &credentials, Duration::from_secs(2))
    }

    #[test]
    fn only_primary_is_the_single_api_answering_primary() {
        let (replica, primary, other_primary) =
            (api_answering(503), api_answering(200), api_answering(200));
        assert_eq!(only_primary([&replica, &primary]), Some(1));
        assert_eq!(only_primary([&primary, &replica, &other_primary]), None);
        assert_eq!(only_primary([&replica]), None);
    }

    #[test]
    fn node_logs_are_tailed_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (agent, server) = (dir.path().join("a.log"), dir.path().join("s.log"));
        fs::write(&agent, "1\n2\n3\n4\n").unwrap();
        fs::write(&server, "x\ny\nz\n").unwrap();
        let text = node_log_tails("node1", &agent, &server, 2);
        assert!(text.contains("----- node1 agent ("), "{text}");
        assert!(
            text.contains("\n3\n4\n"),
            "the agent's last 2 lines: {text}"
        );
        assert!(
            text.ends_with(") -----\nz\n"),
            "the server's last line: {text}"
        );
        let kept = dir.path().join("kept");
        fs::create_dir(&kept).unwrap();
        keep_server_log("node1", &server, &kept);
        assert_eq!(
            fs::read_to_string(kept.join("node1-postgresql.log")).unwrap(),
            "x\ny\nz\n"
        );
    }

    #[test]
    fn tails_and_node_dirs() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        fs::write(&file, "a\nb\nc\n").unwrap();
        assert_eq!(tail(&file, 2), "b\nc");
        assert!(tail(&dir.path().join("none"), 2).starts_with("(cannot read"));
        let node = NodeDir(dir.path().to_path_buf());
        assert_eq!(node.data_dir(), dir.path().join("data"));
        assert_eq!(node.postmaster_pid(), None);
        fs::create_dir(node.data_dir()).unwrap();
        fs::write(node.data_dir().join("postmaster.pid"), "1\n").unwrap();
        assert_eq!(node.postmaster_pid(), None, "pid 1 is not postgres");
    }
}
