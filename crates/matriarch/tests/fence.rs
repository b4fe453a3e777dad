//! The write fence against a kill of the agent together with its helper
//! processes (`pkill -9 matriarch`, a kill of the unit's process group, the
//! OOM killer taking the group): real etcd, real PostgreSQL, `matriarch run`.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{wait_for, Cluster, Options};

/// The parent pid and state of `pid`, from `/proc/<pid>/stat`.
fn parent_and_state(pid: i32) -> Option<(i32, char)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((ppid, state))
}

/// The agent's `matriarch fence` child.
fn fence_of(agent: i32) -> Option<i32> {
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .find(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            parent_and_state(*pid).map(|(ppid, _)| ppid) == Some(agent)
                && args.get(1).is_some_and(|a| *a == b"fence")
        })
}

/// Whether `pid` no longer runs (absent, or a zombie: it executes nothing).
fn gone(pid: i32) -> bool {
    !Path::new(&format!("/proc/{pid}")).exists()
        || matches!(parent_and_state(pid), None | Some((_, 'Z' | 'X')))
}

fn sigkill(pid: i32) {
    // SAFETY: kill(2) on a pid of this test's own cluster.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
}

#[test]
fn killing_the_primary_agent_with_its_fence_kills_its_postgres() {
    let (mut cluster, primary) =
        Cluster::healthy_on_etcd(2, Options::default(), Duration::from_secs(60));
    let node = &cluster.nodes[primary];
    node.psql("CREATE TABLE fenced (v int)").unwrap();
    let agent = node.pid().expect("the agent runs") as i32;
    let fence = fence_of(agent).unwrap_or_else(|| {
        panic!(
            "no `matriarch fence` child of agent {agent}\n{}",
            cluster.logs()
        )
    });
    let postmaster = node.postmaster_pid().expect("the primary's postmaster");
    // What `pkill -9 matriarch` or an OOM kill of the group does: every
    // matriarch process dies, in an order the kernel does not promise. The
    // fence first: it cannot act on its pipe closing.
    sigkill(fence);
    sigkill(agent);
    let killed = Instant::now();
    cluster.nodes[primary].kill_agent();
    let dead = wait_for(Duration::from_secs(1), || gone(postmaster).then_some(()));
    let write = cluster.nodes[primary].psql("INSERT INTO fenced VALUES (1)");
    assert!(
        dead.is_some() && killed.elapsed() < Duration::from_millis(1500),
        "postmaster {postmaster} still runs {:?} after its agent and fence were killed \
         (a write: {write:?})\n{}",
        killed.elapsed(),
        cluster.logs()
    );
    assert!(write.is_err(), "the deposed primary acknowledged a write");
    let new = wait_for(Duration::from_secs(30), || {
        cluster.primary().filter(|p| *p != primary)
    })
    .unwrap_or_else(|| panic!("no new primary\n{}", cluster.logs()));
    cluster.nodes[new]
        .psql("INSERT INTO fenced VALUES (2)")
        .unwrap();
    // The agent comes back and its PostgreSQL rejoins, again guarded.
    cluster.nodes[primary].start(&[]);
    assert!(
        cluster.nodes[primary].wait_status("/replica", 200, Duration::from_secs(60)),
        "the old primary did not rejoin\n{}",
        cluster.logs()
    );
    assert!(cluster.wait_sql(
        primary,
        "SELECT count(*) FROM fenced",
        "1",
        Duration::from_secs(30)
    ));
}

#[test]
fn a_primary_whose_fence_dies_stops_at_once_and_its_agent_recovers() {
    let (cluster, primary) =
        Cluster::healthy_on_etcd(2, Options::default(), Duration::from_secs(60));
    let node = &cluster.nodes[primary];
    let agent = node.pid().expect("the agent runs") as i32;
    let fence = fence_of(agent).expect("the agent's fence");
    let postmaster = node.postmaster_pid().expect("the primary's postmaster");
    sigkill(fence);
    let dead = wait_for(Duration::from_secs(1), || gone(postmaster).then_some(()));
    assert!(
        dead.is_some(),
        "postmaster {postmaster} outlives its fence\n{}",
        cluster.logs()
    );
    // The agent notices, starts a new fence and serves again (as a replica
    // or as the primary), its new postmaster a child of the new fence.
    let guarded = wait_for(Duration::from_secs(60), || {
        let fence = fence_of(agent)?;
        let pid = cluster.nodes[primary].postmaster_pid()?;
        let healthy = cluster.nodes[primary].status("/health") == 200;
        (healthy && parent_and_state(pid).map(|(ppid, _)| ppid) == Some(fence)).then_some(())
    });
    assert!(
        guarded.is_some(),
        "the node does not run a fenced PostgreSQL again\n{}",
        cluster.logs()
    );
    assert!(
        cluster.nodes[primary]
            .log_tail(400)
            .contains("write fence process died"),
        "the agent did not report its dead fence\n{}",
        cluster.logs()
    );
    wait_for(Duration::from_secs(30), || cluster.primary())
        .unwrap_or_else(|| panic!("no primary\n{}", cluster.logs()));
}
