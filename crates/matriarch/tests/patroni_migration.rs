//! Issue 17's check: a running Patroni cluster moves to matriarch and back
//! with the steps of docs/operations.md ("Moving from Patroni"), while a
//! client writes through libpq's multi-host `target_session_attrs=read-write`:
//! the primary's postmaster never restarts, the leader keeps leading once
//! each stopped agent's lease has expired, no acknowledged write is lost,
//! and no two acknowledged writes are more than a second apart. A Patroni
//! switchover at the end shows that nothing of matriarch holds the replicas
//! back. The figures (writes, longest gap, postmaster pid) go to stderr.
//!
//! Real etcd, real PostgreSQL, the real Patroni 4.1 (`cargo xtask deps`
//! installs it in `target/patroni-venv`) and `matriarch run`.

mod common;

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{etcd_get, etcd_lease_granted_ttl, wait_for, Node, PG_PASSWORD};
use matriarch_testkit::cluster::{
    patroni_venv, patronictl, scenario_credentials, tail, PatroniConfig, Supervised,
    PATRONI_MIN_TIMING,
};
use matriarch_testkit::{bin_dir, free_port, EtcdServer, PgOsUser};

/// Members of the cluster.
const MEMBERS: usize = 3;
/// The cluster's scope.
const SCOPE: &str = "migrate";
/// How long a step may take before the test gives up.
const STEP: Duration = Duration::from_secs(60);
/// The cluster's leader key.
const LEADER_KEY: &str = "/service/migrate/leader";

fn output_text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// One host: its Patroni file and agent, and the matriarch node (its file
/// written by `from-patroni`, its agent) in the same directory.
struct Host {
    node: Node,
    patroni_yaml: PathBuf,
    patroni: Supervised,
}

impl Host {
    /// Writes the Patroni file of member `i` (testkit's [`PatroniConfig`]).
    fn write(dir: &Path, i: usize, etcd_hosts: &str, user: &PgOsUser, venv: &Path) -> Host {
        let name = format!("pg{}", i + 1);
        let node_dir = dir.join(&name);
        fs::create_dir_all(&node_dir).expect("host dir");
        user.chown(&node_dir).expect("chown host dir");
        let api_port = free_port().expect("port");
        let pg_port = free_port().expect("port");
        let pg_host = format!("127.0.0.{}", i + 1);
        let config = PatroniConfig {
            scope: SCOPE.into(),
            name: name.clone(),
            api_listen: SocketAddr::from(([127, 0, 0, 1], api_port)),
            credentials: scenario_credentials(),
            etcd_hosts: vec![etcd_hosts.to_owned()],
            timing: PATRONI_MIN_TIMING,
            bootstrap_dcs: vec!["maximum_lag_on_failover: 104857600".into()],
            pg_listen: format!("{pg_host}:{pg_port}").parse().expect("address"),
            data_dir: node_dir.join("data"),
            bin_dir: bin_dir(),
            node_dir: node_dir.clone(),
            pg_parameters: Vec::new(),
        };
        let patroni_yaml = node_dir.join("patroni.yml");
        config
            .write(&patroni_yaml, user)
            .expect("write patroni.yml");
        let patroni = Supervised::patroni(venv, &patroni_yaml, node_dir.join("patroni.log"), user);
        Host {
            node: Node::new(
                Path::new(env!("CARGO_BIN_EXE_matriarch")),
                &name,
                api_port,
                &pg_host,
                pg_port,
                node_dir.clone(),
            ),
            patroni_yaml,
            patroni,
        }
    }

    /// `systemctl start patroni`: the agent as the PostgreSQL OS user.
    fn start_patroni(&mut self) {
        self.patroni.start().expect("spawn patroni");
    }

    /// `systemctl stop patroni`: SIGTERM, and the agent's exit.
    fn stop_patroni(&mut self) {
        if !self.patroni.signal(libc::SIGTERM) {
            return;
        }
        let stopped = wait_for(Duration::from_secs(30), || self.patroni.exited());
        if stopped.is_none() {
            self.patroni.kill();
            panic!(
                "Patroni on {} did not stop\n{}",
                self.node.name,
                self.logs()
            );
        }
    }

    /// `systemctl stop matriarch`.
    fn stop_matriarch(&mut self) {
        self.node.signal(libc::SIGTERM);
        assert!(
            self.node.wait_exit(Duration::from_secs(30)),
            "matriarch on {} did not stop\n{}",
            self.node.name,
            self.logs()
        );
    }

    /// Both agents' log tails.
    fn logs(&self) -> String {
        format!(
            "===== {} patroni =====\n{}\n===== {} matriarch =====\n{}",
            self.node.name,
            tail(self.patroni.log(), 40),
            self.node.name,
            self.node.log_tail(60)
        )
    }
}

/// The hosts, their etcd and temporary directory; stops everything on drop.
struct Hosts {
    hosts: Vec<Host>,
    venv: PathBuf,
    etcd: EtcdServer,
    _dir: tempfile::TempDir,
    _serial: common::Serial,
}

impl Hosts {
    fn logs(&self) -> String {
        self.hosts
            .iter()
            .map(Host::logs)
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// `patronictl -c <first host's file> ARGS` (it has `ctl.authentication`).
    fn patronictl(&self, args: &[&str]) -> Output {
        patronictl(&self.venv, &self.hosts[0].patroni_yaml, args).expect("run patronictl")
    }

    #[track_caller]
    fn assert_ok(&self, out: &Output, what: &str) {
        assert!(
            out.status.success(),
            "{what} failed: {}\n{}",
            output_text(out),
            self.logs()
        );
    }

    /// Waits until host `leader` answers 200 on `/primary` and every other
    /// host 200 on `/replica` (through whichever agent runs there).
    fn wait_healthy(&self, leader: Option<usize>, what: &str) -> usize {
        self.wait_replicas(leader, self.hosts.len() - 1, what)
    }

    /// Waits until host `leader` answers 200 on `/primary` and `replicas`
    /// other hosts 200 on `/replica`.
    fn wait_replicas(&self, leader: Option<usize>, replicas: usize, what: &str) -> usize {
        wait_for(STEP, || {
            let primaries: Vec<usize> = (0..self.hosts.len())
                .filter(|i| self.hosts[*i].node.status("/primary") == 200)
                .collect();
            let [primary] = primaries[..] else {
                return None;
            };
            if leader.is_some_and(|l| l != primary) {
                return None;
            }
            let ready = (0..self.hosts.len())
                .filter(|i| *i != primary && self.hosts[*i].node.status("/replica") == 200)
                .count();
            (ready >= replicas).then_some(primary)
        })
        .unwrap_or_else(|| panic!("{what}: no primary with healthy replicas\n{}", self.logs()))
    }

    /// Waits until every other member streams straight from the primary
    /// at `primary` (its WAL receiver's sender is the primary's address).
    fn wait_streaming(&self, primary: usize, what: &str) {
        let expected = format!(
            "streaming {}:{}",
            self.hosts[primary].node.pg_host, self.hosts[primary].node.pg_port
        );
        let sql =
            "SELECT status || ' ' || sender_host || ':' || sender_port FROM pg_stat_wal_receiver";
        let senders = || -> Vec<String> {
            (0..self.hosts.len())
                .filter(|i| *i != primary)
                .map(|i| {
                    let sender = self.hosts[i].node.psql(sql).unwrap_or_else(|e| e);
                    format!("{}: {sender}", self.hosts[i].node.name)
                })
                .collect()
        };
        let streaming = wait_for(STEP, || {
            senders()
                .iter()
                .all(|line| line.ends_with(&format!(": {expected}")))
                .then_some(())
        });
        assert!(
            streaming.is_some(),
            "{what}: the replicas do not stream from {expected}: {:?}\n{}",
            senders(),
            self.logs()
        );
    }

    /// The primary's replication slots (`name:active`), for the output.
    fn slots(&self, primary: usize) -> String {
        self.hosts[primary]
            .node
            .psql("SELECT string_agg(slot_name || ':' || active, ' ' ORDER BY slot_name) FROM pg_replication_slots")
            .unwrap_or_else(|e| e)
    }

    /// Waits until the etcd lease `lease` (a stopped agent's) has expired,
    /// then checks that host `leader` still leads ([`Hosts::assert_leads`]);
    /// returns the leader key's lease.
    fn outlive_lease(&self, lease: i64, leader: usize, postmaster: i32, what: &str) -> i64 {
        let url = self.etcd.client_url();
        let expired = wait_for(Duration::from_secs(40), || {
            etcd_lease_granted_ttl(&url, lease).is_none().then_some(())
        });
        assert!(expired.is_some(), "{what}: the lease {lease} never expired");
        self.wait_healthy(Some(leader), what);
        self.assert_leads(leader, postmaster, lease, what)
    }

    /// Checks that host `leader` leads with the postmaster `postmaster`
    /// (never restarted) and that the leader key names it under a lease
    /// other than `old_lease` (the stopped agents'); returns that lease.
    fn assert_leads(&self, leader: usize, postmaster: i32, old_lease: i64, what: &str) -> i64 {
        let (name, lease) = self.leader_key();
        assert_eq!(name, self.hosts[leader].node.name, "{what}: the leader key");
        assert_ne!(
            lease, old_lease,
            "{what}: the leader key is on the old lease"
        );
        assert_eq!(
            self.hosts[leader].node.postmaster_pid(),
            Some(postmaster),
            "{what}: the primary restarted\n{}",
            self.logs()
        );
        lease
    }

    /// `host=a,b,c port=x,y,z ... target_session_attrs=read-write`.
    fn conninfo(&self) -> String {
        let joined = |field: fn(&Node) -> String| {
            self.hosts
                .iter()
                .map(|h| field(&h.node))
                .collect::<Vec<_>>()
                .join(",")
        };
        format!(
            "host={} port={} user=postgres password={PG_PASSWORD} dbname=postgres \
             target_session_attrs=read-write connect_timeout=2",
            joined(|n| n.pg_host.clone()),
            joined(|n| n.pg_port.to_string()),
        )
    }

    /// A Patroni cluster: the first member bootstraps, the others clone.
    fn start_patroni_cluster(&mut self) -> usize {
        self.hosts[0].start_patroni();
        self.wait_replicas(Some(0), 0, "Patroni bootstrap");
        for host in &mut self.hosts[1..] {
            host.start_patroni();
        }
        let leader = self.wait_healthy(Some(0), "Patroni replicas");
        self.wait_streaming(leader, "Patroni");
        leader
    }

    /// docs/operations.md, "Moving from Patroni", steps 1 to 6 (without
    /// the switchover); `order`
    /// is the hosts, the leader's first.
    fn move_to_matriarch(&mut self, order: &[usize]) {
        let leader = order[0];
        // Step 1: each member's node file from its Patroni file, checked.
        for host in &self.hosts {
            let out = matriarch(&[
                "config".as_ref(),
                "from-patroni".as_ref(),
                host.patroni_yaml.as_os_str(),
                "-o".as_ref(),
                host.node.config.as_os_str(),
            ]);
            self.assert_ok(&out, "matriarch config from-patroni");
            eprintln!("from-patroni {}:\n{}", host.node.name, output_text(&out));
            let out = matriarch(&[
                "check".as_ref(),
                "--config".as_ref(),
                host.node.config.as_os_str(),
            ]);
            self.assert_ok(&out, "matriarch check");
        }
        // Step 2: maintenance mode.
        let out = self.patronictl(&["pause", "--wait"]);
        self.assert_ok(&out, "patronictl pause --wait");
        // Step 3: Patroni stops, matriarch starts, the leader's host first.
        for &i in order {
            self.hosts[i].stop_patroni();
            self.hosts[i].node.start(&[]);
        }
        // Step 4: every member listed; the leader answers 200 on /primary.
        self.wait_healthy(Some(leader), "matriarch in pause");
        let out = self.hosts[leader].node.ctl(&["list"]);
        self.assert_ok(&out, "matriarch ctl list");
        eprintln!("matriarch ctl list (paused):\n{}", output_text(&out));
        // Step 5: resume; each replica restarted once through matriarch.
        let out = self.hosts[leader].node.ctl(&["resume", "--wait"]);
        self.assert_ok(&out, "matriarch ctl resume --wait");
        for &i in &order[1..] {
            self.restart_replica(leader, i);
        }
        self.wait_streaming(leader, "matriarch");
        let out = self.hosts[leader].node.ctl(&["topology"]);
        self.assert_ok(&out, "matriarch ctl topology");
        eprintln!("matriarch ctl topology:\n{}", output_text(&out));
        // Step 6: matriarch's timings.
        let out = self.hosts[leader].node.ctl(&[
            "edit-config",
            "-s",
            "ttl=5",
            "-s",
            "loop_wait=1",
            "-s",
            "retry_timeout=2",
            "--force",
        ]);
        self.assert_ok(&out, "matriarch ctl edit-config");
    }

    /// `matriarch ctl restart <replica>` through the leader's API, and the
    /// replica back with a new postmaster that includes matriarch's files.
    fn restart_replica(&self, leader: usize, replica: usize) {
        let node = &self.hosts[replica].node;
        let before = node.postmaster_pid();
        let out = self.hosts[leader]
            .node
            .ctl(&["restart", &node.name, "--force"]);
        self.assert_ok(&out, "matriarch ctl restart");
        let restarted = wait_for(STEP, || {
            node.postmaster_pid()
                .filter(|pid| Some(*pid) != before)
                .filter(|_| node.status("/replica") == 200)
        });
        let conf = fs::read_to_string(node.data_dir().join("postgresql.conf")).unwrap_or_default();
        eprintln!(
            "{} restarted by matriarch: postmaster {before:?} -> {restarted:?}",
            node.name
        );
        assert!(
            restarted.is_some() && conf.contains("postgresql.matriarch.conf"),
            "{} was not restarted with matriarch's include block\n{conf}\n{}",
            node.name,
            self.logs()
        );
    }

    /// docs/operations.md, "To go back": pause, matriarch stops and Patroni
    /// starts on each host (the leader's first), resume.
    fn move_back_to_patroni(&mut self, order: &[usize]) {
        let leader = order[0];
        let out = self.hosts[leader].node.ctl(&["pause", "--wait"]);
        self.assert_ok(&out, "matriarch ctl pause --wait");
        for &i in order {
            self.hosts[i].stop_matriarch();
            self.hosts[i].start_patroni();
        }
        self.wait_healthy(Some(leader), "Patroni in pause");
        let out = self.patronictl(&["list"]);
        eprintln!("patronictl list (paused):\n{}", output_text(&out));
        let out = self.patronictl(&["resume", "--wait"]);
        self.assert_ok(&out, "patronictl resume --wait");
        self.wait_healthy(Some(leader), "Patroni resumed");
        self.wait_streaming(leader, "Patroni again");
    }

    /// A Patroni switchover from `leader` to `candidate`: every replica
    /// follows the new leader (none is held on the old one by a setting
    /// matriarch left behind), and no postgresql.conf includes matriarch's
    /// files any more.
    fn patroni_switchover(&self, leader: usize, candidate: usize) {
        let out = self.patronictl(&[
            "switchover",
            "--leader",
            &self.hosts[leader].node.name,
            "--candidate",
            &self.hosts[candidate].node.name,
            "--force",
        ]);
        self.assert_ok(&out, "patronictl switchover");
        self.wait_healthy(Some(candidate), "Patroni switchover");
        self.wait_streaming(candidate, "after Patroni's switchover");
        for host in &self.hosts {
            let conf = fs::read_to_string(host.node.data_dir().join("postgresql.conf"))
                .unwrap_or_default();
            assert!(
                !conf.contains("postgresql.matriarch.conf"),
                "{} still includes matriarch's files after Patroni's switchover:\n{conf}",
                host.node.name
            );
        }
    }

    /// The ids stored in `migration_writes` on host `primary`.
    fn stored_ids(&self, primary: usize) -> std::collections::BTreeSet<i64> {
        self.hosts[primary]
            .node
            .psql("SELECT id FROM migration_writes ORDER BY id")
            .expect("read the writes")
            .lines()
            .filter_map(|line| line.trim().parse().ok())
            .collect()
    }

    /// The leader key's value and lease.
    fn leader_key(&self) -> (String, i64) {
        etcd_get(&self.etcd.client_url(), LEADER_KEY)
            .unwrap_or_else(|| panic!("no leader key\n{}", self.logs()))
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for host in &mut self.hosts {
            host.patroni.kill();
            host.node.kill_agent();
            host.node.kill_postgres();
            let keep = Path::new("/tmp/matriarch-e2e-logs");
            let _ = fs::create_dir_all(keep);
            for (log, kind) in [
                (host.patroni.log(), "patroni"),
                (host.node.log.as_path(), "matriarch"),
            ] {
                let _ = fs::copy(
                    log,
                    keep.join(format!("patroni_migration-{}-{kind}.log", host.node.name)),
                );
            }
        }
        // etcd stops after the agents (field order would stop it first).
        self.etcd.kill();
    }
}

/// What the writer saw.
#[derive(Default)]
struct Acks {
    /// Acknowledged ids and when their commit was acknowledged.
    acked: Vec<(i64, Instant)>,
    /// Writes that failed (not acknowledged).
    failed: usize,
}

/// A client inserting one row every 25 ms through a multi-host libpq
/// connection that only accepts the read-write server, reconnecting after
/// any error.
struct Writer {
    stop: Arc<AtomicBool>,
    acks: Arc<Mutex<Acks>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    fn start(conninfo: String) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let acks = Arc::new(Mutex::new(Acks::default()));
        let (thread_stop, thread_acks) = (Arc::clone(&stop), Arc::clone(&acks));
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("writer runtime");
            runtime.block_on(write_loop(conninfo, thread_stop, thread_acks));
        });
        Writer {
            stop,
            acks,
            thread: Some(thread),
        }
    }

    fn stop(mut self) -> Acks {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            thread.join().expect("writer thread");
        }
        std::mem::take(&mut *self.acks.lock().expect("writer lock"))
    }
}

async fn write_loop(conninfo: String, stop: Arc<AtomicBool>, acks: Arc<Mutex<Acks>>) {
    let timeout = Duration::from_secs(2);
    let mut client: Option<tokio_postgres::Client> = None;
    let mut next_id: i64 = 1;
    while !stop.load(Ordering::SeqCst) {
        if client.is_none() {
            let connect = tokio_postgres::connect(&conninfo, tokio_postgres::NoTls);
            if let Ok(Ok((new_client, connection))) = tokio::time::timeout(timeout, connect).await {
                tokio::spawn(connection);
                client = Some(new_client);
            }
        }
        if let Some(connected) = &client {
            let id = next_id;
            next_id += 1;
            let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&id];
            let insert =
                connected.execute("INSERT INTO migration_writes (id) VALUES ($1)", &params);
            match tokio::time::timeout(timeout, insert).await {
                Ok(Ok(_)) => acks
                    .lock()
                    .expect("writer lock")
                    .acked
                    .push((id, Instant::now())),
                _ => {
                    acks.lock().expect("writer lock").failed += 1;
                    client = None;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The longest time between two consecutive acknowledged writes, and when
/// it began.
fn longest_gap(acked: &[(i64, Instant)]) -> (Duration, Option<Instant>) {
    acked
        .windows(2)
        .map(|pair| (pair[1].1.duration_since(pair[0].1), Some(pair[0].1)))
        .max()
        .unwrap_or_default()
}

/// `matriarch ARGS` (config and check), with its output.
fn matriarch(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_matriarch"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run matriarch")
}

#[test]
fn patroni_cluster_moves_to_matriarch_and_back_without_a_write_gap() {
    let serial = common::serial();
    let venv = patroni_venv().expect("`cargo xtask deps` installs Patroni");
    let user = PgOsUser::detect().expect("the PostgreSQL OS user");
    let dir = user.tempdir("matriarch-migration-").expect("temp dir");
    let etcd = EtcdServer::start().expect("etcd");
    let etcd_hosts = etcd.client_url().trim_start_matches("http://").to_owned();
    let hosts = (0..MEMBERS)
        .map(|i| Host::write(dir.path(), i, &etcd_hosts, &user, &venv))
        .collect();
    let mut cluster = Hosts {
        hosts,
        venv,
        etcd,
        _dir: dir,
        _serial: serial,
    };
    let started = Instant::now();

    let leader = cluster.start_patroni_cluster();
    let postmaster = cluster.hosts[leader]
        .node
        .postmaster_pid()
        .expect("the leader's postmaster");
    let (_, patroni_lease) = cluster.leader_key();
    eprintln!(
        "Patroni cluster up after {:?}: leader {}, postmaster {postmaster}, slots {}",
        started.elapsed(),
        cluster.hosts[leader].node.name,
        cluster.slots(leader)
    );
    cluster.hosts[leader]
        .node
        .psql("CREATE TABLE migration_writes (id bigint PRIMARY KEY, at timestamptz DEFAULT now())")
        .expect("create the table");
    let writer = Writer::start(cluster.conninfo());
    let order: Vec<usize> = std::iter::once(leader)
        .chain((0..MEMBERS).filter(|i| *i != leader))
        .collect();

    eprintln!("to matriarch from {:?}", started.elapsed());
    cluster.move_to_matriarch(&order);
    cluster.assert_leads(leader, postmaster, patroni_lease, "matriarch");
    // matriarch leads on its own lease: Patroni's expires, nothing changes.
    let matriarch_lease =
        cluster.outlive_lease(patroni_lease, leader, postmaster, "Patroni's lease gone");
    eprintln!(
        "matriarch leads after {:?}, Patroni's lease expired; slots {}",
        started.elapsed(),
        cluster.slots(leader)
    );

    eprintln!("back to Patroni from {:?}", started.elapsed());
    cluster.move_back_to_patroni(&order);
    cluster.assert_leads(leader, postmaster, matriarch_lease, "Patroni again");
    cluster.outlive_lease(
        matriarch_lease,
        leader,
        postmaster,
        "matriarch's lease gone",
    );
    eprintln!(
        "Patroni leads again after {:?}, matriarch's lease expired; slots {}",
        started.elapsed(),
        cluster.slots(leader)
    );
    // Writes go on under Patroni for a moment before the count.
    std::thread::sleep(Duration::from_secs(1));
    let acks = writer.stop();

    let stored = cluster.stored_ids(leader);
    let lost: Vec<i64> = acks
        .acked
        .iter()
        .map(|(id, _)| *id)
        .filter(|id| !stored.contains(id))
        .collect();
    let (gap, gap_began) = longest_gap(&acks.acked);
    eprintln!(
        "migration figures: {} writes acknowledged, {} failed, {} lost, longest gap {gap:?} \
         (from {:?} into the run), primary postmaster {postmaster} throughout, whole run {:?}",
        acks.acked.len(),
        acks.failed,
        lost.len(),
        gap_began.map(|at| at.duration_since(started)),
        started.elapsed()
    );
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
    assert!(
        gap < Duration::from_secs(1),
        "a {gap:?} gap between acknowledged writes\n{}",
        cluster.logs()
    );

    // Patroni runs the cluster as before, with every acknowledged write.
    let candidate = order[1];
    cluster.patroni_switchover(leader, candidate);
    let stored = cluster.stored_ids(candidate);
    let missing = acks
        .acked
        .iter()
        .filter(|(id, _)| !stored.contains(id))
        .count();
    assert_eq!(missing, 0, "acknowledged writes missing on the new primary");
}
