//! End-to-end tests of the synchronous replication modes and of the Linux
//! watchdog, on real etcd and real PostgreSQL with `matriarch run` processes.
//!
//! The machine running the tests has no `/dev/watchdog`, so the watchdog
//! tests give each node a FIFO as a stand-in device and read what the agent
//! writes to it: keepalives (`1`) while it leads, the magic `V` and a close
//! on a clean demotion, nothing while it is a replica.

mod common;

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{etcd_get, serial, wait_for, Cluster, ClusterChecks, DcsSpec, Options};
use matriarch_testkit::bin_dir;

/// The `sync` key as etcd holds it: (leader, standbys).
fn sync_key(etcd_url: &str) -> Option<(String, BTreeSet<String>)> {
    let (value, _) = etcd_get(etcd_url, "/service/e2e/sync")?;
    let json: serde_json::Value = serde_json::from_str(&value).ok()?;
    let leader = json["leader"].as_str()?.to_owned();
    let standbys = json["sync_standby"]
        .as_str()
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    Some((leader, standbys))
}

/// Starts `nodes` nodes on etcd with `dcs` added to the dynamic
/// configuration and waits until the primary has a synchronous standby
/// ([`wait_sync_established`]): the cluster, its primary, etcd's URL, and the
/// sync key's standbys with `synchronous_standby_names`.
fn start_synchronous(
    nodes: usize,
    dcs: &str,
) -> (Cluster, usize, String, (BTreeSet<String>, String)) {
    let (cluster, primary) =
        Cluster::healthy_on_etcd(nodes, Options::with_dcs(dcs), Duration::from_secs(90));
    let url = cluster.etcd_url();
    let established = wait_sync_established(&cluster, &url, primary);
    (cluster, primary, url, established)
}

/// Waits until the primary `primary` wrote a `sync` key naming a standby and
/// PostgreSQL waits for exactly those standbys; returns the key's standbys
/// and `synchronous_standby_names`.
fn wait_sync_established(
    cluster: &Cluster,
    etcd_url: &str,
    primary: usize,
) -> (BTreeSet<String>, String) {
    let name = cluster.nodes[primary].name.clone();
    wait_for(Duration::from_secs(30), || {
        let (leader, standbys) = sync_key(etcd_url)?;
        if leader != name || standbys.is_empty() {
            return None;
        }
        let setting = cluster.nodes[primary]
            .psql("SHOW synchronous_standby_names")
            .ok()?;
        standbys
            .iter()
            .all(|s| setting.contains(&format!("\"{s}\"")))
            .then_some((standbys, setting))
    })
    .unwrap_or_else(|| {
        panic!(
            "no synchronous standby established within 30 s (sync key {:?})\n{}",
            sync_key(etcd_url),
            cluster.logs()
        )
    })
}

/// Writes rows 1, 2, ... on `host:port`, one commit per `psql` call, until
/// told to stop or a write fails; returns the ids whose commit was
/// acknowledged.
struct Writer {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<Vec<i64>>,
}

impl Writer {
    fn start(host: String, port: u16, table: &'static str) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let handle = std::thread::spawn(move || {
            let mut acknowledged = Vec::new();
            let mut id = 1i64;
            while !flag.load(Ordering::Relaxed) {
                match common::psql_at(&host, port, &format!("INSERT INTO {table} VALUES ({id})")) {
                    Ok(_) => acknowledged.push(id),
                    Err(_) => break,
                }
                id += 1;
            }
            acknowledged
        });
        Writer { stop, handle }
    }

    /// Stops the writer and returns the acknowledged ids.
    fn finish(self) -> Vec<i64> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().expect("the writer thread")
    }
}

/// The ids in `table` on node `i`.
fn ids_on(cluster: &Cluster, i: usize, table: &str) -> BTreeSet<i64> {
    let text = cluster.nodes[i]
        .psql(&format!("SELECT string_agg(id::text, ',') FROM {table}"))
        .unwrap_or_else(|e| panic!("read {table} on {}: {e}", cluster.nodes[i].name));
    text.split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().expect("an id"))
        .collect()
}

/// Crashes the primary while a client writes to it, and checks that the new
/// primary holds every acknowledged write. Returns (the new primary, the
/// sync key's standbys read just before the crash).
fn crash_primary_while_writing(
    cluster: &mut Cluster,
    etcd_url: &str,
    primary: usize,
) -> (usize, BTreeSet<String>) {
    cluster.psql_ok(primary, "CREATE TABLE acked (id bigint PRIMARY KEY)");
    let writer = Writer::start(
        cluster.nodes[primary].pg_host.clone(),
        cluster.nodes[primary].pg_port,
        "acked",
    );
    std::thread::sleep(Duration::from_secs(3));
    let (leader, standbys_before) = sync_key(etcd_url).expect("the sync key");
    assert_eq!(leader, cluster.nodes[primary].name);
    // The whole node dies while the client writes: agent and PostgreSQL.
    cluster.nodes[primary].crash();
    let acknowledged = writer.finish();
    assert!(
        acknowledged.len() > 10,
        "only {} writes were acknowledged before the crash\n{}",
        acknowledged.len(),
        cluster.logs()
    );
    let crashed = Instant::now();
    let new = cluster.new_primary(primary, Duration::from_secs(40));
    eprintln!(
        "{} promoted {:?} after the crash; {} writes acknowledged",
        cluster.nodes[new].name,
        crashed.elapsed(),
        acknowledged.len()
    );
    let on_new = ids_on(cluster, new, "acked");
    let lost: Vec<i64> = acknowledged
        .iter()
        .filter(|id| !on_new.contains(id))
        .copied()
        .collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged writes are missing on the new primary {}: {:?}\n{}",
        lost.len(),
        cluster.nodes[new].name,
        &lost[..lost.len().min(20)],
        cluster.logs()
    );
    // The new primary takes writes.
    cluster.psql_ok(new, "INSERT INTO acked VALUES (-1)");
    (new, standbys_before)
}

#[test]
fn synchronous_mode_promotes_the_synchronous_standby_without_losing_acknowledged_writes() {
    let (mut cluster, primary, url, (standbys, setting)) =
        start_synchronous(3, "    synchronous_mode: true\n");
    assert_eq!(standbys.len(), 1, "synchronous_node_count 1: {standbys:?}");
    let standby = standbys.iter().next().cloned().unwrap_or_default();
    assert_eq!(setting, format!("FIRST 1 (\"{standby}\")"));
    // GET /cluster agrees with the key (its view is refreshed every second).
    let sync_members_of = |body: &serde_json::Value| -> Vec<String> {
        body["members"]
            .as_array()
            .map(|m| {
                m.iter()
                    .filter(|m| m["role"] == "sync_standby")
                    .filter_map(|m| m["name"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut body = serde_json::Value::Null;
    let agreed = wait_for(Duration::from_secs(10), || {
        body = serde_json::from_slice(
            &cluster.nodes[primary]
                .call("GET", "/cluster", "", false)
                .body,
        )
        .ok()?;
        (sync_members_of(&body) == [standby.clone()]).then_some(())
    });
    assert!(
        agreed.is_some(),
        "GET /cluster never named {standby}: {body}"
    );

    // A switchover to the standby that is not synchronous is refused at once
    // (Patroni's 412), and no request is left for the leader.
    let other = (0..3)
        .find(|i| *i != primary && cluster.nodes[*i].name != standby)
        .expect("a non-synchronous replica");
    let asked = Instant::now();
    let response = cluster.switchover(other, primary, other);
    assert_eq!(response.status, 412, "{}", response.body_text());
    assert!(
        response.body_text().contains("not a synchronous standby"),
        "{}",
        response.body_text()
    );
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "{:?}",
        asked.elapsed()
    );
    assert_eq!(etcd_get(&url, "/service/e2e/failover"), None);
    assert_eq!(cluster.primary(), Some(primary));

    let (new, standbys_before) = crash_primary_while_writing(&mut cluster, &url, primary);
    assert_eq!(
        standbys_before, standbys,
        "the sync key changed while writing"
    );
    assert_eq!(
        cluster.nodes[new].name,
        standby,
        "the promoted node is not the one the sync key named\n{}",
        cluster.logs()
    );
}

#[test]
fn quorum_mode_promotes_a_node_holding_every_acknowledged_write() {
    let (mut cluster, primary, url, _) = start_synchronous(
        3,
        "    synchronous_mode: quorum\n    synchronous_node_count: 1\n",
    );
    // A quorum names every streaming standby: any one of the two may
    // acknowledge a commit, and both are in the key.
    let replicas: BTreeSet<String> = (0..3)
        .filter(|i| *i != primary)
        .map(|i| cluster.nodes[i].name.clone())
        .collect();
    let both = wait_for(Duration::from_secs(30), || {
        let (_, standbys) = sync_key(&url)?;
        let setting = cluster.nodes[primary]
            .psql("SHOW synchronous_standby_names")
            .ok()?;
        (standbys == replicas
            && replicas
                .iter()
                .all(|r| setting.contains(&format!("\"{r}\""))))
        .then_some(setting)
    });
    let setting = both.unwrap_or_else(|| {
        panic!(
            "the quorum never named both standbys (key {:?})\n{}",
            sync_key(&url),
            cluster.logs()
        )
    });
    eprintln!("quorum mode: synchronous_standby_names = {setting}");
    assert!(
        setting.starts_with("ANY 1 ("),
        "quorum mode sets {setting:?}"
    );
    let (new, standbys_before) = crash_primary_while_writing(&mut cluster, &url, primary);
    // Only a member of the key may be promoted.
    assert!(
        standbys_before.contains(&cluster.nodes[new].name),
        "{} was promoted, not one of {standbys_before:?}\n{}",
        cluster.nodes[new].name,
        cluster.logs()
    );
}

/// `psql` running one statement in the background, to observe a commit
/// that blocks.
fn spawn_psql(host: &str, port: u16, sql: &str) -> Child {
    Command::new(bin_dir().join("psql"))
        .args([
            "-h",
            host,
            "-p",
            &port.to_string(),
            "-U",
            "postgres",
            "-d",
            "postgres",
        ])
        .args(["-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .env("PGPASSWORD", common::PG_PASSWORD)
        .env("PGCONNECT_TIMEOUT", "3")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn psql")
}

#[test]
fn strict_synchronous_mode_blocks_commits_without_a_standby_and_resumes_when_it_returns() {
    let (mut cluster, primary, _, (standbys, setting)) = start_synchronous(
        2,
        "    synchronous_mode: true\n    synchronous_mode_strict: true\n",
    );
    let replica = 1 - primary;
    let standby = cluster.nodes[replica].name.clone();
    assert_eq!(standbys, BTreeSet::from([standby.clone()]));
    assert_eq!(setting, format!("FIRST 1 (\"{standby}\")"));
    let p = &cluster.nodes[primary];
    p.psql("CREATE TABLE strict_t (id int PRIMARY KEY)")
        .unwrap();
    p.psql("INSERT INTO strict_t VALUES (1)").unwrap();

    // The standby goes away (its agent stops it cleanly and leaves).
    cluster.nodes[replica].signal(libc::SIGTERM);
    assert!(
        cluster.nodes[replica].wait_exit(Duration::from_secs(30)),
        "the standby's agent did not exit"
    );
    assert_eq!(cluster.nodes[replica].postmaster_pid(), None);
    // Give the primary a few loops to react; strict mode keeps waiting for it.
    std::thread::sleep(Duration::from_secs(3));
    let p = &cluster.nodes[primary];
    assert_eq!(
        p.psql("SHOW synchronous_standby_names").unwrap(),
        setting,
        "strict mode must not go asynchronous\n{}",
        cluster.logs()
    );
    let mut blocked = spawn_psql(&p.pg_host, p.pg_port, "INSERT INTO strict_t VALUES (2)");
    std::thread::sleep(Duration::from_secs(5));
    let early = blocked.try_wait().expect("try_wait psql");
    if let Some(status) = early {
        let mut err = String::new();
        if let Some(mut stderr) = blocked.stderr.take() {
            let _ = stderr.read_to_string(&mut err);
        }
        panic!(
            "the commit returned ({status}) without a synchronous standby: {err}\n{}",
            cluster.logs()
        );
    }
    // Not committed as far as anyone else can see.
    assert_eq!(
        p.psql("SELECT count(*) FROM strict_t WHERE id = 2")
            .unwrap(),
        "0"
    );
    assert_eq!(cluster.primary(), Some(primary), "{}", cluster.logs());

    // The standby returns: the blocked commit completes, later ones succeed.
    cluster.nodes[replica].start(&[]);
    let returned = Instant::now();
    let status = wait_for(Duration::from_secs(60), || {
        blocked.try_wait().ok().flatten()
    });
    let Some(status) = status else {
        let _ = blocked.kill();
        panic!(
            "the blocked commit did not return within 60 s of the standby's return\n{}",
            cluster.logs()
        );
    };
    eprintln!(
        "the blocked commit returned {:?} after the standby's restart",
        returned.elapsed()
    );
    assert!(status.success(), "the blocked commit failed: {status}");
    let p = &cluster.nodes[primary];
    assert_eq!(
        p.psql("SELECT count(*) FROM strict_t WHERE id = 2")
            .unwrap(),
        "1"
    );
    p.psql("INSERT INTO strict_t VALUES (3)")
        .unwrap_or_else(|e| panic!("a later commit: {e}\n{}", cluster.logs()));
    cluster.check(
        cluster.wait_sql(
            replica,
            "SELECT count(*) FROM strict_t",
            "3",
            Duration::from_secs(20),
        ),
        "the standby does not have the commits",
    );
}

// ----------------------------------------------------------------------
// The watchdog.

/// What one stand-in device received: one entry per time the agent opened
/// it, with the bytes written and whether it closed the device since.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Session {
    bytes: Vec<u8>,
    closed: bool,
}

/// A FIFO standing in for `/dev/watchdog`, read by a thread that keeps it
/// open (so the agent's non-blocking open succeeds) and splits what arrives
/// into sessions at each close.
struct StandIn {
    path: PathBuf,
    sessions: Arc<Mutex<Vec<Session>>>,
    stop: Arc<AtomicBool>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl StandIn {
    fn create(path: PathBuf) -> StandIn {
        use std::os::unix::fs::OpenOptionsExt;
        let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("path");
        // SAFETY: mkfifo(3) with a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o666) }, 0, "mkfifo");
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&path)
            .expect("open the FIFO for reading");
        let sessions = Arc::new(Mutex::new(Vec::<Session>::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (Arc::clone(&sessions), Arc::clone(&stop));
        let reader = std::thread::spawn(move || {
            let mut buf = [0u8; 256];
            let mut open = false;
            while !st.load(Ordering::Relaxed) {
                match file.read(&mut buf) {
                    Ok(0) => {
                        // EOF: no writer. A session ends here if one was open.
                        if open {
                            if let Some(last) = s.lock().unwrap().last_mut() {
                                last.closed = true;
                            }
                            open = false;
                        }
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Ok(n) => {
                        let mut sessions = s.lock().unwrap();
                        if !open {
                            sessions.push(Session::default());
                            open = true;
                        }
                        if let Some(last) = sessions.last_mut() {
                            last.bytes.extend_from_slice(&buf[..n]);
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Err(e) => panic!("reading the stand-in watchdog: {e}"),
                }
            }
        });
        StandIn {
            path,
            sessions,
            stop,
            reader: Some(reader),
        }
    }

    fn sessions(&self) -> Vec<Session> {
        self.sessions.lock().unwrap().clone()
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

/// [`watchdog_options`] naming a device that does not exist: the temporary
/// directory it would be in (kept until dropped), its path, the options.
fn missing_watchdog(mode: &str) -> (tempfile::TempDir, PathBuf, Options) {
    let dir = tempfile::tempdir().expect("temp dir");
    let missing = dir.path().join("no-such-watchdog");
    let options = watchdog_options(&missing, mode);
    (dir, missing, options)
}

fn keepalives(session: &Session) -> usize {
    session.bytes.iter().filter(|b| **b == b'1').count()
}

/// Options with a watchdog section: `device` (`{name}` is each node's
/// name) in `mode`, safety margin 1 s.
fn watchdog_options(device: &Path, mode: &str) -> Options {
    Options {
        extra: format!(
            "watchdog:\n  mode: {mode}\n  device: {}\n  safety_margin: 1\n",
            device.display()
        ),
        ..Options::default()
    }
}

#[test]
fn the_watchdog_is_fed_while_primary_and_closed_with_v_on_demotion_never_touched_by_a_replica() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    // Each node gets its own stand-in device: <dir>/<name>.wd.
    let options = watchdog_options(&dir.path().join("{name}.wd"), "required");
    let devices: Vec<StandIn> = (1..=2)
        .map(|i| StandIn::create(dir.path().join(format!("node{i}.wd"))))
        .collect();
    let (mut cluster, primary) = Cluster::healthy_on_etcd(2, options, Duration::from_secs(90));
    let replica = 1 - primary;

    // While primary: one open session, refreshed after each renewal
    // (loop_wait 1 s), never a V.
    let first = wait_for(Duration::from_secs(10), || {
        let s = devices[primary].sessions();
        (s.len() == 1 && keepalives(&s[0]) >= 2).then(|| keepalives(&s[0]))
    })
    .unwrap_or_else(|| {
        panic!(
            "no keepalives on {}: {:?}\n{}",
            devices[primary].path.display(),
            devices[primary].sessions(),
            cluster.logs()
        )
    });
    std::thread::sleep(Duration::from_secs(3));
    let sessions = devices[primary].sessions();
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    assert!(!sessions[0].closed, "the device was closed while leading");
    assert!(sessions[0].bytes.iter().all(|b| *b == b'1'), "{sessions:?}");
    assert!(
        keepalives(&sessions[0]) >= first + 2,
        "keepalives stopped: {first} then {}",
        keepalives(&sessions[0])
    );
    // A replica never opens the device.
    assert_eq!(devices[replica].sessions(), Vec::<Session>::new());
    let log = std::fs::read_to_string(&cluster.nodes[primary].log).unwrap();
    assert!(
        log.contains("watchdog opened"),
        "{}",
        cluster.nodes[primary].log_tail(40)
    );
    assert!(
        log.contains("not a watchdog device (ENOTTY)"),
        "the stand-in cannot set a timeout, and the agent says so\n{}",
        cluster.nodes[primary].log_tail(40)
    );

    // A switchover demotes the primary cleanly: V, then close.
    cluster.switchover_ok(primary, primary, replica);
    let closed = wait_for(Duration::from_secs(30), || {
        let s = devices[primary].sessions();
        (s.len() == 1 && s[0].closed).then(|| s[0].clone())
    })
    .unwrap_or_else(|| {
        panic!(
            "the old primary did not close its watchdog: {:?}\n{}",
            devices[primary].sessions(),
            cluster.logs()
        )
    });
    let (last, before) = closed.bytes.split_last().expect("bytes");
    assert_eq!(*last, b'V', "{closed:?}");
    assert!(before.iter().all(|b| *b == b'1'), "{closed:?}");
    // The new primary opens its own and feeds it.
    assert!(
        wait_for(Duration::from_secs(30), || {
            let s = devices[replica].sessions();
            (s.len() == 1 && !s[0].closed && keepalives(&s[0]) >= 2).then_some(())
        })
        .is_some(),
        "the new primary does not feed its watchdog: {:?}\n{}",
        devices[replica].sessions(),
        cluster.logs()
    );
    cluster.check(
        cluster.nodes[primary].wait_status("/replica", 200, Duration::from_secs(60)),
        "the old primary did not rejoin as a replica",
    );
    // As a replica, the old primary writes nothing more.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(devices[primary].sessions(), vec![closed]);

    // A primary agent that dies is not a clean demotion: the kernel closes
    // the device without the V, so a real watchdog would reset the host.
    cluster.nodes[replica].kill_agent();
    let s = wait_for(Duration::from_secs(10), || {
        let s = devices[replica].sessions();
        (s.len() == 1 && s[0].closed).then(|| s[0].clone())
    })
    .expect("the killed agent's device closed");
    assert!(!s.bytes.contains(&b'V'), "{s:?}");
}

#[test]
fn a_required_watchdog_that_cannot_be_opened_stops_the_start_and_names_the_device() {
    let _serial = serial();
    let (_dir, missing, options) = missing_watchdog("required");
    // No DCS is needed: the check comes before any connection.
    let mut cluster = Cluster::configure(1, DcsSpec::Etcd("127.0.0.1:9".to_owned()), options);
    cluster.nodes[0].start(&[]);
    let node = &mut cluster.nodes[0];
    let status = wait_for(Duration::from_secs(20), || node.exit_status());
    let Some(status) = status else {
        node.kill_agent();
        panic!("the agent started without its required watchdog");
    };
    assert_eq!(status.code(), Some(1), "{status}");
    let log = std::fs::read_to_string(&cluster.nodes[0].log).unwrap();
    assert!(
        log.contains(&format!(
            "the watchdog device {} cannot be opened",
            missing.display()
        )),
        "{log}"
    );
    assert!(log.contains("watchdog.mode is required"), "{log}");
    // Nothing was started.
    assert_eq!(cluster.nodes[0].postmaster_pid(), None);
}

#[test]
fn an_automatic_watchdog_that_cannot_be_opened_is_logged_and_the_node_still_leads() {
    let _serial = serial();
    let (_dir, missing, options) = missing_watchdog("automatic");
    let (cluster, primary) = Cluster::healthy_on_etcd(1, options, Duration::from_secs(90));
    cluster.psql_ok(primary, "CREATE TABLE unguarded (v int)");
    let log = std::fs::read_to_string(&cluster.nodes[primary].log).unwrap();
    let device = missing.display().to_string();
    assert!(
        log.lines()
            .any(|l| l.contains("watchdog.mode is automatic") && l.contains(&device)),
        "{log}"
    );
    // Logged once when it failed as leader, not every loop.
    let failures = log
        .lines()
        .filter(|l| l.contains("could not arm the watchdog"))
        .count();
    assert_eq!(failures, 1, "{log}");
}
