//! A primary whose disk fills up (issue 21): PostgreSQL 15 with its pg_wal on
//! a small tmpfs, filled while a writer commits through it. The primary's
//! PostgreSQL cannot write WAL, stops and cannot start again; a synchronous
//! replica must take over within `primary_start_timeout` plus a few ttl,
//! the old primary must name the full disk as the cause, and no
//! acknowledged write may be lost.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{etcd_get, psql_at, serial, wait_for, Cluster, DcsSpec, Options};
use matriarch_testkit::{EtcdServer, PgOsUser};

/// The test's dynamic config: synchronous mode (so that acknowledged writes
/// survive a failover by rule, not by luck) and a short
/// `primary_start_timeout`.
const PRIMARY_START_TIMEOUT: Duration = Duration::from_secs(5);
const TTL: Duration = Duration::from_secs(4);

/// A tmpfs mounted for the test, unmounted (and its mount point removed)
/// when dropped, whatever the test's outcome.
struct TmpfsMount {
    path: PathBuf,
}

impl TmpfsMount {
    /// Mounts a tmpfs of `size` (e.g. `64m`) on `path`, owned by `user`.
    fn mount(path: &Path, size: &str, user: &PgOsUser) -> Result<TmpfsMount, String> {
        std::fs::create_dir_all(path).map_err(|e| e.to_string())?;
        let options = format!(
            "size={size},mode=0700,uid={},gid={}",
            user.uid(),
            user.gid()
        );
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &options, "tmpfs"])
            .arg(path)
            .status()
            .map_err(|e| e.to_string())?;
        if !status.success() {
            return Err(format!("mount -t tmpfs failed: {status}"));
        }
        Ok(TmpfsMount {
            path: path.to_owned(),
        })
    }
}

impl Drop for TmpfsMount {
    fn drop(&mut self) {
        let unmounted = Command::new("umount")
            .arg(&self.path)
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            // Still in use (a PostgreSQL not yet gone): detach it now, the
            // kernel frees it when the last user goes.
            let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        }
        let _ = std::fs::remove_dir(&self.path);
    }
}

/// The cluster first, then the mount: fields drop in order, so PostgreSQL
/// is stopped before its pg_wal is unmounted.
struct Scenario {
    cluster: Cluster,
    _wal: TmpfsMount,
}

/// Fills the file system holding `dir` with a filler file until it is full.
fn fill(dir: &Path) -> u64 {
    let mut file = std::fs::File::create(dir.join("filler")).expect("create the filler");
    let chunk = vec![0u8; 1 << 20];
    let mut written = 0u64;
    while file.write_all(&chunk).is_ok() {
        written += chunk.len() as u64;
    }
    // The last partial chunk: byte by byte is too slow; 4 KiB pages.
    while file.write_all(&chunk[..4096]).is_ok() {
        written += 4096;
    }
    let _ = file.sync_all();
    written
}

fn get_json(node: &common::Node, path: &str) -> serde_json::Value {
    serde_json::from_slice(&node.call("GET", path, "", false).body)
        .unwrap_or(serde_json::Value::Null)
}

#[test]
fn a_primary_on_a_full_disk_hands_over_to_a_synchronous_replica_and_names_the_cause() {
    let _serial = serial();
    let user = PgOsUser::detect().expect("the PostgreSQL OS user");
    let etcd = EtcdServer::start().expect("etcd");
    let options = Options {
        dcs: format!(
            "    ttl: {}\n    loop_wait: 1\n    retry_timeout: 1.5\n    maximum_lag_on_failover: 104857600\n    synchronous_mode: true\n",
            TTL.as_secs(),
        ),
        ..Options::default()
    };
    let mut cluster = Cluster::configure(3, DcsSpec::Etcd(etcd.client_url()), options);
    // node1 bootstraps alone, its pg_wal on a tmpfs inside its directory.
    let wal_dir = cluster.nodes[0].dir.join("wal");
    let mount = match TmpfsMount::mount(&wal_dir, "256m", &user) {
        Ok(mount) => mount,
        Err(error) => panic!("cannot mount a tmpfs for the test (root is needed): {error}"),
    };
    let wal = wal_dir.join("pg_wal");
    cluster.edit_config(
        0,
        "initdb: [--no-sync]",
        &format!("initdb: [--no-sync, \"--waldir={}\"]", wal.display()),
    );
    cluster.nodes[0].start(&[]);
    assert!(
        wait_for(Duration::from_secs(60), || {
            (cluster.nodes[0].status("/primary") == 200).then_some(())
        })
        .is_some(),
        "node1 did not bootstrap\n{}",
        cluster.logs()
    );
    for node in &mut cluster.nodes[1..] {
        node.start(&[]);
    }
    let scenario = Scenario {
        cluster,
        _wal: mount,
    };
    let cluster = &scenario.cluster;
    let primary = cluster.wait_healthy(2, Duration::from_secs(60));
    assert_eq!(primary, 0, "node1 bootstrapped, so it leads");
    // Set at run time, as an operator would (`edit-config`).
    let patched = cluster.nodes[0].call(
        "PATCH",
        "/config",
        &format!(
            r#"{{"primary_start_timeout": {}}}"#,
            PRIMARY_START_TIMEOUT.as_secs()
        ),
        true,
    );
    assert_eq!(patched.status, 200, "{}", patched.body_text());
    // A synchronous standby is named in the `sync` key (not only in
    // PostgreSQL) before a handover to it can be safe.
    assert!(
        wait_for(Duration::from_secs(30), || {
            etcd_get(&etcd.client_url(), "/service/e2e/sync")
                .map(|(value, _)| value)
                .filter(|value| value.contains("node2") || value.contains("node3"))
        })
        .is_some(),
        "no synchronous standby in the sync key\n{}",
        cluster.logs()
    );
    cluster.nodes[0]
        .psql("create table acked (id int primary key)")
        .expect("create table");

    // The writer: one row per transaction, to whichever node takes it.
    let addresses: Vec<(String, u16)> = cluster
        .nodes
        .iter()
        .map(|n| (n.pg_host.clone(), n.pg_port))
        .collect();
    let acked = Arc::new(Mutex::new(Vec::<u32>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let acked = Arc::clone(&acked);
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut target = 0usize;
            let mut id = 0u32;
            while !stop.load(Ordering::Relaxed) {
                id += 1;
                let (host, port) = &addresses[target];
                match psql_at(host, *port, &format!("insert into acked values ({id})")) {
                    Ok(_) => acked.lock().expect("acked").push(id),
                    Err(_) => {
                        target = (target + 1) % addresses.len();
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            }
        })
    };
    assert!(
        wait_for(Duration::from_secs(10), || {
            (acked.lock().expect("acked").len() >= 20).then_some(())
        })
        .is_some(),
        "the writer wrote nothing\n{}",
        cluster.logs()
    );

    // Fill the disk, then make PostgreSQL need a new WAL segment.
    let filled = fill(&wal_dir);
    let filled_at = Instant::now();
    let bulk = cluster.nodes[0].psql(
        "create table bulk as select g, repeat('x', 1000) as pad from generate_series(1, 40000) g",
    );
    assert!(
        bulk.is_err(),
        "a 40 MB write succeeded on a full pg_wal ({filled} bytes of filler)"
    );

    // Another member takes over within primary_start_timeout + a few ttl.
    let bound = PRIMARY_START_TIMEOUT + TTL * 3;
    let new_primary = wait_for(bound + Duration::from_secs(10), || {
        (1..3).find(|i| cluster.nodes[*i].status("/primary") == 200)
    });
    let took = filled_at.elapsed();
    let old = get_json(&cluster.nodes[0], "/patroni");
    let Some(new_primary) = new_primary else {
        panic!(
            "no replica took over within {:?} of the disk filling; node1 says {old}\n{}",
            bound + Duration::from_secs(10),
            cluster.logs()
        );
    };
    assert!(
        took <= bound,
        "took over after {took:?}, more than primary_start_timeout + 3 × ttl = {bound:?}"
    );

    // The old primary names the cause (its record or its status).
    let cause = wait_for(Duration::from_secs(10), || {
        let body = get_json(&cluster.nodes[0], "/patroni").to_string();
        body.to_ascii_lowercase()
            .contains("no space left on device")
            .then_some(body)
    });
    assert!(
        cause.is_some(),
        "node1's /patroni does not name the full disk: {}\n{}",
        get_json(&cluster.nodes[0], "/patroni"),
        cluster.logs()
    );
    // Logged once at warn or error, not once per attempt to start.
    let agent_log = std::fs::read_to_string(&cluster.nodes[0].log).unwrap_or_default();
    let warned: Vec<&str> = agent_log
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .filter(|l| l.to_ascii_lowercase().contains("no space left on device"))
        .collect();
    assert_eq!(
        warned.len(),
        1,
        "the cause logged {} times: {warned:#?}",
        warned.len()
    );
    eprintln!("a replica took over {took:?} after the disk filled (bound {bound:?})");
    // ... and does not claim to stream while it cannot.
    let old_status = get_json(&cluster.nodes[0], "/patroni");
    assert_ne!(
        old_status["replication_state"], "streaming",
        "node1 on a full disk claims to stream: {old_status}"
    );

    // `ctl list` (GET /cluster) does not show it streaming either.
    let listed = get_json(&cluster.nodes[new_primary], "/cluster");
    let node1_state = listed["members"]
        .as_array()
        .and_then(|members| members.iter().find(|m| m["name"] == "node1"))
        .map(|m| m["state"].clone());
    assert_ne!(
        node1_state,
        Some(serde_json::json!("streaming")),
        "GET /cluster: {listed}"
    );

    // Writes go on at the new primary; none acknowledged is lost.
    let before = acked.lock().expect("acked").len();
    assert!(
        wait_for(Duration::from_secs(20), || {
            (acked.lock().expect("acked").len() >= before + 20).then_some(())
        })
        .is_some(),
        "writes did not resume on {}\n{}",
        cluster.nodes[new_primary].name,
        cluster.logs()
    );
    stop.store(true, Ordering::Relaxed);
    writer.join().expect("writer");
    let acked = acked.lock().expect("acked").clone();
    let present = cluster.nodes[new_primary]
        .psql("select string_agg(id::text, ',') from acked")
        .expect("read acked rows");
    let present: std::collections::BTreeSet<u32> = present
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let lost: Vec<u32> = acked
        .iter()
        .copied()
        .filter(|id| !present.contains(id))
        .collect();
    assert!(
        lost.is_empty(),
        "acknowledged writes lost in the handover: {lost:?}"
    );
    drop(scenario);
}
