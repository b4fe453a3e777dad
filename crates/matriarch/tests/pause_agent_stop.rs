//! Stopping an agent while the cluster is paused (maintenance mode), as
//! Patroni: PostgreSQL keeps running and taking writes, the leader key stays
//! (it expires by its ttl, or the restarted agent takes it over), no replica
//! promotes, and the restarted agent adopts the running PostgreSQL. Once
//! resumed, the fence guards the primary again. Real etcd, real PostgreSQL,
//! `matriarch run`.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{etcd_get, healthy_pair, psql_at, wait_for, Cluster, ClusterChecks, Options};

const LEADER_KEY: &str = "/service/e2e/leader";

/// Inserts into `paused_writes` at `host:port` in a loop until stopped; the
/// times of the writes acknowledged.
struct Writer {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<Instant>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    fn start(host: String, port: u16) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let (thread_stop, thread_acked) = (Arc::clone(&stop), Arc::clone(&acked));
        let thread = std::thread::spawn(move || {
            while !thread_stop.load(Ordering::SeqCst) {
                if psql_at(&host, port, "INSERT INTO paused_writes VALUES (1)").is_ok() {
                    thread_acked
                        .lock()
                        .expect("writer lock")
                        .push(Instant::now());
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        Writer {
            stop,
            acked,
            thread: Some(thread),
        }
    }

    /// The longest time between two acknowledged writes from `from` on
    /// (counting from `from` itself), and how many there were.
    fn longest_gap_since(&self, from: Instant) -> (Duration, usize) {
        let acked = self.acked.lock().expect("writer lock");
        let mut last = from;
        let mut longest = Duration::ZERO;
        let mut count = 0;
        for at in acked.iter().filter(|at| **at >= from) {
            longest = longest.max(at.duration_since(last));
            last = *at;
            count += 1;
        }
        (longest.max(last.elapsed()), count)
    }

    fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The member the leader key names, if there is one.
fn leader(cluster: &Cluster) -> Option<String> {
    etcd_get(&cluster.etcd_url(), LEADER_KEY).map(|(value, _)| value)
}

#[test]
fn stopping_the_primary_agent_while_paused_leaves_postgres_writable_and_the_lock_in_place() {
    let (mut cluster, primary, replica) = healthy_pair(Duration::from_secs(60));
    let name = cluster.nodes[primary].name.clone();
    cluster.psql_ok(primary, "CREATE TABLE paused_writes (v int)");
    let out = cluster.nodes[primary].ctl(&["pause", "--wait", "--timeout", "30"]);
    cluster.assert_ctl_ok(&out, "ctl pause");
    let postmaster = cluster.nodes[primary]
        .postmaster_pid()
        .expect("the primary's postmaster");
    let mut writer = Writer::start(
        cluster.nodes[primary].pg_host.clone(),
        cluster.nodes[primary].pg_port,
    );
    std::thread::sleep(Duration::from_secs(1));

    // The operator stops the agent (to upgrade it, say).
    let stopped = Instant::now();
    cluster.nodes[primary].signal(libc::SIGTERM);
    let exited = cluster.nodes[primary].wait_exit(Duration::from_secs(15));
    cluster.check(exited, "the agent did not stop");
    let leader_after_stop = leader(&cluster);
    assert_eq!(
        leader_after_stop.as_deref(),
        Some(name.as_str()),
        "the leader key does not name {name} right after its agent stopped in pause\n{}",
        cluster.logs()
    );
    // Beyond the ttl (4 s): the key may expire, but nobody promotes.
    std::thread::sleep(Duration::from_secs(10));
    let (gap, writes) = writer.longest_gap_since(stopped);
    eprintln!("paused agent stop: {writes} writes, longest gap {gap:?}");
    cluster.check(
        postmaster_alive(postmaster),
        &format!("postmaster {postmaster} did not survive its agent's stop in pause"),
    );
    cluster.check(
        gap < Duration::from_secs(2) && writes > 10,
        &format!("PostgreSQL stopped taking writes in pause: longest gap {gap:?}, {writes} writes"),
    );
    assert_eq!(
        cluster.nodes[replica]
            .psql("SELECT pg_is_in_recovery()")
            .as_deref(),
        Ok("t"),
        "the replica promoted in pause\n{}",
        cluster.logs()
    );
    let leader_now = leader(&cluster);
    cluster.check(
        leader_now.is_none() || leader_now.as_deref() == Some(name.as_str()),
        &format!("another member took the leader key in pause: {leader_now:?}"),
    );

    // The upgraded agent starts again: it adopts the running PostgreSQL.
    cluster.nodes[primary].start(&[]);
    cluster.check(
        cluster.nodes[primary].wait_status("/primary", 200, Duration::from_secs(30)),
        "the restarted agent does not serve as the primary",
    );
    assert_eq!(
        cluster.nodes[primary].postmaster_pid(),
        Some(postmaster),
        "the restarted agent did not adopt the running postmaster\n{}",
        cluster.logs()
    );
    cluster.check(
        wait_for(Duration::from_secs(15), || {
            (leader(&cluster).as_deref() == Some(name.as_str())).then_some(())
        })
        .is_some(),
        "the restarted agent does not hold the leader key",
    );
    let (gap, writes) = writer.longest_gap_since(stopped);
    writer.stop();
    eprintln!("paused agent stop and restart: {writes} writes, longest gap {gap:?}");
    cluster.check(
        gap < Duration::from_secs(2),
        &format!("PostgreSQL stopped taking writes across the agent restart: longest gap {gap:?}"),
    );

    // Resumed: the fence guards the primary again; a killed agent takes
    // its PostgreSQL with it and the replica takes over.
    let out = cluster.nodes[primary].ctl(&["resume", "--wait", "--timeout", "30"]);
    cluster.assert_ctl_ok(&out, "ctl resume");
    // Two loops (loop_wait 1 s): the fence is armed.
    std::thread::sleep(Duration::from_secs(3));
    cluster.nodes[primary].kill_agent();
    let dead = wait_for(Duration::from_secs(10), || {
        (!postmaster_alive(postmaster)).then_some(())
    });
    cluster.check(
        dead.is_some(),
        &format!("postmaster {postmaster} outlives its killed agent after resume"),
    );
    let new = cluster.new_primary(primary, Duration::from_secs(30));
    assert_eq!(new, replica);
    cluster.psql_ok(new, "INSERT INTO paused_writes VALUES (2)");
}

/// Whether `pid` runs (not a zombie).
fn postmaster_alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let rest = &stat[stat.rfind(')')? + 1..];
            rest.split_whitespace().next().map(|s| s != "Z" && s != "X")
        })
        .unwrap_or(false)
}

/// A SIGKILL of the agent alone in pause (not of its fence) leaves
/// PostgreSQL running too, as under Patroni, and the agent adopts it again.
#[test]
fn killing_the_primary_agent_alone_while_paused_leaves_postgres_running() {
    let (mut cluster, primary) =
        Cluster::healthy_on_etcd(2, Options::default(), Duration::from_secs(60));
    let out = cluster.nodes[primary].ctl(&["pause", "--wait", "--timeout", "30"]);
    cluster.assert_ctl_ok(&out, "ctl pause");
    let postmaster = cluster.nodes[primary]
        .postmaster_pid()
        .expect("the primary's postmaster");
    cluster.nodes[primary].kill_agent();
    std::thread::sleep(Duration::from_secs(3));
    cluster.check(
        postmaster_alive(postmaster),
        &format!("postmaster {postmaster} died with its agent in pause"),
    );
    cluster.nodes[primary]
        .psql("CREATE TABLE after_kill (v int)")
        .unwrap_or_else(|e| panic!("no write after the agent's kill in pause: {e}"));
    cluster.nodes[primary].start(&[]);
    cluster.check(
        cluster.nodes[primary].wait_status("/primary", 200, Duration::from_secs(30)),
        "the restarted agent does not serve as the primary",
    );
    assert_eq!(cluster.nodes[primary].postmaster_pid(), Some(postmaster));
}
