//! Two primaries on ZooKeeper when the server grants a shorter session than
//! the ttl (outside testers' report): three agents on one ZooKeeper server
//! whose `maxSessionTimeout` (4 s) is below the cluster's ttl (10 s), then
//! the primary's agent alone cut from ZooKeeper. The lock (an ephemeral
//! znode) dies with the session after ~4 s; the old primary must have
//! stopped acknowledging writes before another node is promoted.
//!
//! Each agent reaches ZooKeeper through its own TCP relay in this process;
//! cutting a node makes its relay drop every byte both ways (like a firewall
//! DROP rule, on loopback only), so the agent, its PostgreSQL and the other
//! nodes are untouched.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{serial, Cluster, DcsSpec, Options};
use matriarch_testkit::{ZooKeeperOptions, ZooKeeperServer};

/// How often the sampler writes to the old primary and asks every node
/// whether it is in recovery.
const SAMPLE_EVERY: Duration = Duration::from_millis(50);
/// How long the cut lasts.
const CUT_FOR: Duration = Duration::from_secs(20);

/// A TCP relay from a loopback port to ZooKeeper that can black-hole its
/// traffic.
struct Relay {
    port: u16,
    cut: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

impl Relay {
    fn start(upstream: String) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the relay");
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let port = listener.local_addr().expect("relay address").port();
        let cut = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let acceptor = {
            let (cut, stop) = (Arc::clone(&cut), Arc::clone(&stop));
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((client, _)) => {
                            let Ok(server) = TcpStream::connect(&upstream) else {
                                continue;
                            };
                            for (from, to) in [(&client, &server), (&server, &client)] {
                                let (from, to) = (
                                    from.try_clone().expect("clone socket"),
                                    to.try_clone().expect("clone socket"),
                                );
                                let (cut, stop) = (Arc::clone(&cut), Arc::clone(&stop));
                                std::thread::spawn(move || pump(from, to, &cut, &stop));
                            }
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(20));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(20)),
                    }
                }
            })
        };
        Relay {
            port,
            cut,
            stop,
            acceptor: Some(acceptor),
        }
    }

    fn set_cut(&self, cut: bool) {
        self.cut.store(cut, Ordering::SeqCst);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

/// Copies `from` to `to`; while cut, reads and drops the bytes instead.
fn pump(mut from: TcpStream, mut to: TcpStream, cut: &AtomicBool, stop: &AtomicBool) {
    let _ = from.set_read_timeout(Some(Duration::from_millis(200)));
    let mut buffer = [0u8; 16 * 1024];
    while !stop.load(Ordering::SeqCst) {
        match from.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => {
                if !cut.load(Ordering::SeqCst) && to.write_all(&buffer[..n]).is_err() {
                    break;
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => break,
        }
    }
    // A connection closed while cut stays silent: a DROP rule passes no FIN.
    if !cut.load(Ordering::SeqCst) {
        let _ = to.shutdown(Shutdown::Write);
    }
}

/// What the sampler saw, each at the time (since the cut) it saw it.
#[derive(Debug, Default)]
struct Samples {
    /// Writes the old primary acknowledged: when each was sent.
    acknowledged: Vec<Duration>,
    /// Answers `pg_is_in_recovery() = false` by node index.
    not_in_recovery: Vec<(usize, Duration)>,
}

/// Three agents, each behind its own relay to `zk`, with `dcs` as
/// `bootstrap.dcs`; returns the relays (dropped after the cluster) and the
/// cluster once it has a primary and two replicas.
fn start_behind_relays(zk: &ZooKeeperServer, dcs: &str) -> (Vec<Relay>, Cluster, usize) {
    let options = Options {
        dcs: dcs.to_owned(),
        ..Options::default()
    };
    let relays: Vec<Relay> = (0..3).map(|_| Relay::start(zk.connect_string())).collect();
    let mut cluster = Cluster::configure(3, DcsSpec::ZooKeeper(zk.connect_string()), options);
    for (node, relay) in cluster.nodes.iter_mut().zip(&relays) {
        node.edit_config(
            &format!("hosts: {}", zk.connect_string()),
            &format!("hosts: 127.0.0.1:{}", relay.port),
        );
        node.start(&[]);
    }
    let primary = cluster.wait_healthy(2, Duration::from_secs(120));
    cluster.nodes[primary]
        .psql("CREATE TABLE split_brain_probe (v bigint)")
        .unwrap();
    (relays, cluster, primary)
}

/// Cuts node `old` (the primary) from ZooKeeper for [`CUT_FOR`] while
/// writing to it and asking every node whether it is a primary every 50 ms;
/// then checks that no write sent to the old primary after another node
/// answered `pg_is_in_recovery() = false` was acknowledged, that another
/// node was promoted, and that the old primary's last acknowledged write was
/// sent within `lock_lifetime` (the ZooKeeper session timeout) of the cut.
fn cut_and_check(cluster: &Cluster, relays: &[Relay], old: usize, lock_lifetime: Duration) {
    assert_eq!(cluster.primary(), Some(old), "{}", cluster.logs());
    let samples = Arc::new(Mutex::new(Samples::default()));
    let done = Arc::new(AtomicBool::new(false));
    let cut_at = Instant::now();
    relays[old].set_cut(true);
    let mut samplers = Vec::new();
    // The writer: one insert every 50 ms on the old primary.
    {
        let (host, port) = (
            cluster.nodes[old].pg_host.clone(),
            cluster.nodes[old].pg_port,
        );
        let (samples, done) = (Arc::clone(&samples), Arc::clone(&done));
        samplers.push(std::thread::spawn(move || {
            let mut n = 0u64;
            while !done.load(Ordering::SeqCst) {
                let sent = cut_at.elapsed();
                n += 1;
                let sql = format!("INSERT INTO split_brain_probe VALUES ({n})");
                if common::psql_at(&host, port, &sql).is_ok() {
                    samples.lock().unwrap().acknowledged.push(sent);
                }
                std::thread::sleep(SAMPLE_EVERY);
            }
        }));
    }
    // One observer a node: is it a primary?
    for (i, node) in cluster.nodes.iter().enumerate() {
        let (host, port) = (node.pg_host.clone(), node.pg_port);
        let (samples, done) = (Arc::clone(&samples), Arc::clone(&done));
        samplers.push(std::thread::spawn(move || {
            while !done.load(Ordering::SeqCst) {
                let at = cut_at.elapsed();
                if common::psql_at(&host, port, "SELECT pg_is_in_recovery()").as_deref() == Ok("f")
                {
                    samples.lock().unwrap().not_in_recovery.push((i, at));
                }
                std::thread::sleep(SAMPLE_EVERY);
            }
        }));
    }
    std::thread::sleep(CUT_FOR);
    done.store(true, Ordering::SeqCst);
    for sampler in samplers {
        sampler.join().expect("sampler");
    }
    relays[old].set_cut(false);

    let samples = samples.lock().unwrap();
    let promoted = samples
        .not_in_recovery
        .iter()
        .filter(|(i, _)| *i != old)
        .map(|(_, at)| *at)
        .min()
        .unwrap_or_else(|| {
            panic!(
                "no other node was promoted within {CUT_FOR:?} of the cut\n{}",
                cluster.logs()
            )
        });
    let old_primary_until = samples
        .not_in_recovery
        .iter()
        .filter(|(i, _)| *i == old)
        .map(|(_, at)| *at)
        .max();
    let last_write = samples.acknowledged.iter().max().copied();
    eprintln!(
        "cut node{}: another node primary from {promoted:?}; old primary answered false until \
         {old_primary_until:?}; last acknowledged write sent at {last_write:?}",
        old + 1,
    );
    let late: Vec<Duration> = samples
        .acknowledged
        .iter()
        .copied()
        .filter(|sent| *sent >= promoted)
        .collect();
    assert!(
        late.is_empty(),
        "the old primary acknowledged {} write(s) sent after another node answered \
         pg_is_in_recovery() = false at {promoted:?} after the cut (the last sent at {:?}; the \
         old primary answered false until {old_primary_until:?})\n{}",
        late.len(),
        late.last(),
        cluster.logs()
    );
    // It stopped within the lock's real lifetime, whatever the ttl.
    assert!(
        last_write.is_some_and(|at| at < lock_lifetime),
        "the old primary's last acknowledged write was sent {last_write:?} after the cut, \
         the lock lives {lock_lifetime:?}\n{}",
        cluster.logs()
    );
}

/// The server clamps the session (4 s) below the ttl (10 s): the primary
/// counts its lock from the negotiated timeout.
#[test]
fn a_primary_cut_from_zookeeper_stops_writes_before_its_session_dies() {
    let _serial = serial();
    let zk = ZooKeeperServer::start_with(ZooKeeperOptions {
        min_session_timeout: Duration::from_secs(1),
        max_session_timeout: Duration::from_secs(4),
    })
    .expect("ZooKeeper");
    let (relays, cluster, old) = start_behind_relays(
        &zk,
        "    ttl: 10\n    loop_wait: 1\n    retry_timeout: 1.5\n    maximum_lag_on_failover: 104857600\n",
    );
    // A few loops with the lock renewed on the clamped session.
    std::thread::sleep(Duration::from_secs(3));
    cut_and_check(&cluster, &relays, old, Duration::from_secs(4));
}

/// The testers' sequence: started at ttl 4, then `edit-config ttl=10`. The
/// sessions opened with the bootstrap ttl follow the new one, so the lock
/// lives as long as the primary counts on.
#[test]
fn after_a_ttl_change_the_session_follows_and_a_cut_primary_stops_writes_in_time() {
    let _serial = serial();
    let zk = ZooKeeperServer::start().expect("ZooKeeper");
    let (relays, cluster, old) = start_behind_relays(
        &zk,
        "    ttl: 4\n    loop_wait: 1\n    retry_timeout: 1.5\n    maximum_lag_on_failover: 104857600\n",
    );
    let response = cluster.nodes[old].call("PATCH", "/config", r#"{"ttl": 10}"#, true);
    assert_eq!(response.status, 200, "{response:?}");
    // Every agent adopts it within a loop or two, and re-opens its session.
    std::thread::sleep(Duration::from_secs(5));
    cut_and_check(&cluster, &relays, old, Duration::from_secs(10));
}
