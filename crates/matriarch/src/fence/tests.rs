//! Unit tests of the write fence: its pipe protocol, the combined fence
//! policy, and postmasters started under it.

use std::ffi::OsString;

use super::process::*;
use super::*;

#[test]
fn messages_parse() {
    assert_eq!(
        parse_line("arm 1500"),
        Some(Message::Arm(Duration::from_millis(1500)))
    );
    assert_eq!(parse_line("disarm\n"), Some(Message::Disarm));
    assert_eq!(parse_line("suspend\n"), Some(Message::Suspend));
    assert_eq!(parse_line("arm soon"), None);
    assert_eq!(parse_line("kill"), None);
}

/// What [`FakeFence`] fails with.
fn device_gone() -> FenceError {
    FenceError::Watchdog {
        source: "device gone".into(),
    }
}

/// A fence that records calls and fails when told to.
#[derive(Default)]
struct FakeFence {
    calls: Mutex<Vec<String>>,
    fail: AtomicBool,
}

impl FakeFence {
    /// Records `call`; fails when told to.
    fn answer(&self, call: String) -> Result<(), FenceError> {
        self.calls.lock().unwrap().push(call);
        if self.fail.load(Ordering::Relaxed) {
            Err(device_gone())
        } else {
            Ok(())
        }
    }
}

#[async_trait]
impl Fence for FakeFence {
    async fn arm(&self, valid_for: Duration) -> Result<(), FenceError> {
        self.answer(format!("arm {}", valid_for.as_millis()))
    }

    async fn disarm(&self) -> Result<(), FenceError> {
        self.answer("disarm".to_owned())
    }

    async fn suspend(&self) -> Result<(), FenceError> {
        self.calls.lock().unwrap().push("suspend".to_owned());
        Ok(())
    }
}

fn combined(policy: SecondFence) -> (Arc<FakeFence>, Arc<FakeFence>, CombinedFence) {
    let first = Arc::new(FakeFence::default());
    let second = Arc::new(FakeFence::default());
    let fence = CombinedFence::new(first.clone(), second.clone(), policy);
    (first, second, fence)
}

#[tokio::test]
async fn both_fences_are_armed_and_disarmed() {
    let (first, second, fence) = combined(SecondFence::BestEffort);
    fence.arm(Duration::from_millis(1500)).await.unwrap();
    fence.disarm().await.unwrap();
    for f in [&first, &second] {
        assert_eq!(*f.calls.lock().unwrap(), ["arm 1500", "disarm"]);
    }
}

#[tokio::test]
async fn in_pause_the_process_fence_is_suspended_and_the_watchdog_disarmed() {
    let (first, second, fence) = combined(SecondFence::Required);
    fence.suspend().await.unwrap();
    assert_eq!(*first.calls.lock().unwrap(), ["suspend"]);
    assert_eq!(*second.calls.lock().unwrap(), ["disarm"]);
}

#[tokio::test]
async fn an_automatic_watchdog_failure_is_ignored_but_a_required_one_is_reported() {
    let (first, second, fence) = combined(SecondFence::BestEffort);
    second.fail.store(true, Ordering::Relaxed);
    fence.arm(Duration::from_secs(1)).await.unwrap();
    fence.arm(Duration::from_secs(1)).await.unwrap();
    // The process fence is still armed every time.
    assert_eq!(first.calls.lock().unwrap().len(), 2);

    let (_, second, fence) = combined(SecondFence::Required);
    second.fail.store(true, Ordering::Relaxed);
    let err = fence.arm(Duration::from_secs(1)).await.unwrap_err();
    assert!(
        matches!(&err, FenceError::Watchdog { source } if source.to_string() == "device gone"),
        "{err}"
    );
    second.fail.store(false, Ordering::Relaxed);
    fence.arm(Duration::from_secs(1)).await.unwrap();
}

#[tokio::test]
async fn a_process_fence_failure_is_always_reported() {
    let (first, second, fence) = combined(SecondFence::BestEffort);
    first.fail.store(true, Ordering::Relaxed);
    assert!(fence.arm(Duration::from_secs(1)).await.is_err());
    // The watchdog is armed even so.
    assert_eq!(second.calls.lock().unwrap().len(), 1);
}

#[test]
fn a_missing_pid_file_kills_nothing() {
    assert_eq!(
        postmaster_pid(Path::new("/nonexistent/postmaster.pid")),
        None
    );
}

fn request(program: &str, args: &[&str], log: &Path) -> SpawnRequest {
    SpawnRequest::from_spec(&PostmasterSpec {
        program: PathBuf::from(program),
        args: args.iter().map(OsString::from).collect(),
        env: vec![("PATH".into(), "/usr/bin:/bin".into())],
        cwd: PathBuf::from("/"),
        log: log.to_owned(),
        identity: None,
    })
    .unwrap()
}

#[test]
fn spawn_requests_and_replies_round_trip() {
    let spawn = request("/usr/bin/postgres", &["-D", "/data"], Path::new("/x.log"));
    let line = format!("spawn {}", serde_json::to_string(&spawn).unwrap());
    assert_eq!(parse_line(&line), Some(Message::Spawn(Box::new(spawn))));
    assert_eq!(parse_line("spawn {not json"), None);
    assert_eq!(parse_reply("spawned 4242"), Some(Ok(4242)));
    assert_eq!(
        parse_reply("failed no such file"),
        Some(Err("no such file".to_owned()))
    );
    assert_eq!(parse_reply("spawned soon"), None);
    assert_eq!(parse_reply("hello"), None);
}

/// How `pid` (a child of this process) ended, waiting up to 5 s.
fn wait_child(pid: i32) -> Option<libc::c_int> {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let mut status = 0;
        // SAFETY: waitpid on our own child with a valid pointer.
        if unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) } == pid {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

#[test]
fn a_started_postmaster_leads_its_session_logs_and_dies_with_its_parent_thread() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("server.log");
    let spawn = request("/bin/sh", &["-c", "echo started; exec sleep 30"], &log);
    // The forking thread ends once the child wrote to the log, as a
    // dying fence would.
    let watched = log.clone();
    let pid = std::thread::spawn(move || {
        let pid = start_postmaster(&spawn);
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::fs::metadata(&watched).map_or(0, |m| m.len()) == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        pid
    })
    .join()
    .unwrap()
    .unwrap() as i32;
    let status = wait_child(pid).expect("the child outlived its parent thread");
    assert!(libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGKILL);
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "started\n");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&log).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn a_started_postmaster_is_a_session_leader() {
    let dir = tempfile::tempdir().unwrap();
    let spawn = request("/bin/sleep", &["30"], &dir.path().join("log"));
    let pid = start_postmaster(&spawn).unwrap() as i32;
    // SAFETY: getsid/kill on our own child.
    let sid = unsafe { libc::getsid(pid) };
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
    let _ = wait_child(pid);
    assert_eq!(sid, pid);
}

#[test]
fn a_failed_start_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let spawn = request("/nonexistent/postgres", &[], &dir.path().join("log"));
    let err = start_postmaster(&spawn).unwrap_err();
    assert!(err.contains("/nonexistent/postgres"), "{err}");
}
