//! `ZooKeeperDcs` against a real ZooKeeper that fails: frozen longer than the
//! session timeout, restarted quickly, gone; plus chroot, several servers in
//! the connect string, digest auth, and a three-server ensemble.

mod common;

use std::fs;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{eventually, lead, member, name, publish, RETRY_TIMEOUT, TTL};
use matriarch_dcs::{Dcs, DcsError, WatchOutcome};
use matriarch_model::MemberName;
use matriarch_testkit::{free_port, zk_four_letter_word, ZooKeeperOptions, ZooKeeperServer};
use matriarch_zookeeper::{DigestAuth, ZooKeeperConfig, ZooKeeperDcs};
use zookeeper_client as zk;

/// A ZooKeeper server of the test's own, and the configuration of a fresh
/// scope tagged `tag` on it with the session timeout `ttl`.
fn own_server(tag: &str, ttl: Duration) -> (ZooKeeperServer, ZooKeeperConfig) {
    let server = ZooKeeperServer::start().expect("start ZooKeeper");
    let config = common::config(&server.connect_string(), &common::unique_scope(tag))
        .with_session_timeout(ttl);
    (server, config)
}

/// Asserts that `holder` still has its session `session` and that a newcomer
/// (connected with `config`) cannot take the lock; the newcomer.
async fn the_session_and_the_lock_survived(
    holder: &ZooKeeperDcs,
    session: i64,
    config: ZooKeeperConfig,
    ttl: Duration,
) -> ZooKeeperDcs {
    assert_eq!(
        holder.session_id().await,
        Some(session),
        "the session survived"
    );
    common::locked_out_newcomer(&config, ttl).await
}

/// Renews `member`'s lock until it succeeds, within half the ttl; while the
/// service is coming back only "unreachable" may come first, never a lost lock.
async fn renew_within_half_a_ttl(
    holder: &ZooKeeperDcs,
    member: &MemberName,
    ttl: Duration,
    when: &str,
) {
    eventually(&format!("the renewal {when} succeeds"), ttl / 2, || async {
        match holder.renew_leader(member, ttl).await {
            Ok(()) => Some(()),
            Err(e) if e.is_unreachable() => None,
            Err(e) => panic!("renewal {when} gave {e}"),
        }
    })
    .await;
}

/// The server is frozen (SIGSTOP) for longer than the session timeout, then
/// resumed: ZooKeeper expires the session, the holder learns that it lost the
/// lock (and never believes it still holds it), another member takes it, and
/// the holder's next publish re-creates its member record in a new session.
///
/// The lock is taken with a TTL far longer than the session timeout the
/// server grants (its `maxSessionTimeout` is the test TTL: the session
/// follows the ttl asked for, clamped), so that only the session's expiry
/// (not the client-side lease) can tell the holder
/// that the lock is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_server_expires_the_session_and_the_holder_learns_it_lost_the_lock() {
    let server = ZooKeeperServer::start_with(ZooKeeperOptions {
        min_session_timeout: Duration::from_secs(1),
        max_session_timeout: TTL,
    })
    .expect("start ZooKeeper");
    let config = common::config(&server.connect_string(), &common::unique_scope("frozen"));
    let holder = common::connect(&config).await;
    let (a, b) = (name("holder"), name("other"));
    let long_ttl = Duration::from_secs(300);
    assert!(holder.acquire_leader(&a, long_ttl).await.expect("acquire"));
    // The server keeps the lock for its maximum session timeout, not the ttl.
    assert_eq!(holder.lock_lifetime(), Some(TTL));
    publish(&holder, "holder", long_ttl).await;
    let first_session = holder.session_id().await.expect("a session");

    server.pause().expect("SIGSTOP ZooKeeper");
    let frozen = Instant::now();
    let mut outcomes = Vec::new();
    while frozen.elapsed() < TTL * 2 {
        let started = Instant::now();
        let outcome = holder.renew_leader(&a, long_ttl).await;
        assert!(
            started.elapsed() < RETRY_TIMEOUT + Duration::from_secs(1),
            "a call hung for {:?}",
            started.elapsed()
        );
        match &outcome {
            Err(e) if e.is_unreachable() => {}
            Err(DcsError::LockNotHeld { .. }) => {}
            other => panic!("renewal against a frozen server gave {other:?}"),
        }
        outcomes.push(outcome);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    server.resume().expect("SIGCONT ZooKeeper");

    // From now on the holder must learn it lost the lock, and never see it held.
    let lost_holder = eventually(
        "the holder learns it lost the lock",
        Duration::from_secs(30),
        || async {
            match holder.renew_leader(&a, long_ttl).await {
                Err(DcsError::LockNotHeld { member, holder }) => {
                    assert_eq!(member, a);
                    Some(holder)
                }
                Err(e) if e.is_unreachable() => None,
                other => panic!("renewal after the session expired gave {other:?}"),
            }
        },
    )
    .await;
    // The old session's znode is gone (expired by the server, or deleted by
    // the holder's new session): the lock is free.
    assert_eq!(lost_holder, None);
    let second_session = holder.session_id().await.expect("a new session");
    assert_ne!(
        first_session, second_session,
        "an expired session is never reused"
    );

    let other = ZooKeeperDcs::connect(config.clone())
        .await
        .expect("connect other");
    eventually(
        "another member takes the lock",
        Duration::from_secs(30),
        || async {
            other
                .acquire_leader(&b, TTL)
                .await
                .expect("acquire")
                .then_some(())
        },
    )
    .await;
    match holder.renew_leader(&a, long_ttl).await {
        Err(DcsError::LockNotHeld { member, holder }) => {
            assert_eq!((member, holder), (a.clone(), Some(b.clone())));
        }
        other => panic!("renewal by the old holder gave {other:?}"),
    }
    assert!(!holder
        .acquire_leader(&a, TTL)
        .await
        .expect("acquire by the old holder"));
    assert_eq!(
        holder.read_view().await.expect("read").leader_name(),
        Some(&b)
    );

    // The member record died with the session; the next publish re-creates it.
    holder
        .publish_member(&member("holder"), TTL)
        .await
        .expect("publish again");
    let view = other.read_view().await.expect("read");
    assert!(view.members["holder"].is_ok(), "{:?}", view.members);
}

/// The server is killed and restarted on the same port and data directory
/// faster than the session timeout: the session and the lock survive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quick_server_restart_keeps_the_session_and_the_lock() {
    let ttl = Duration::from_secs(12);
    let (server, config) = own_server("restart", ttl);
    let holder = common::connect(&config).await;
    let a = name("holder");
    lead(&holder, "holder", ttl).await;
    let session = holder.session_id().await.expect("a session");

    let started = Instant::now();
    server.restart().expect("restart ZooKeeper");
    let restart = started.elapsed();
    eprintln!("ZooKeeper restarted in {restart:?}");
    assert!(
        restart < ttl / 2,
        "the restart took {restart:?}: too slow for this test"
    );

    renew_within_half_a_ttl(&holder, &a, ttl, "after a quick restart").await;
    let other = the_session_and_the_lock_survived(&holder, session, config, ttl).await;
    let view = other.read_view().await.expect("read");
    assert_eq!(view.leader_name(), Some(&a));
    assert!(view.members["holder"].is_ok());
}

/// With the server gone, every call fails within the retry timeout as
/// unreachable (never hangs, and a renewal within the TTL is not a lost lock).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_to_a_dead_server_fail_in_time_as_unreachable() {
    let ttl = Duration::from_secs(30);
    let (server, config) = own_server("dead", ttl);
    let dcs = ZooKeeperDcs::connect(config).await.expect("connect");
    let a = name("holder");
    assert!(dcs.acquire_leader(&a, ttl).await.expect("acquire"));
    server.kill();
    let bound = RETRY_TIMEOUT + Duration::from_secs(1);

    let started = Instant::now();
    let err = dcs.renew_leader(&a, ttl).await.expect_err("renew");
    assert!(err.is_unreachable(), "{err}");
    assert!(started.elapsed() < bound, "{:?}", started.elapsed());

    let started = Instant::now();
    let err = dcs.read_view().await.expect_err("read_view");
    assert!(err.is_unreachable(), "{err}");
    assert!(started.elapsed() < bound, "{:?}", started.elapsed());

    let started = Instant::now();
    let err = dcs
        .watch(0, Duration::from_secs(30))
        .await
        .expect_err("watch");
    assert!(err.is_unreachable(), "{err}");
    assert!(started.elapsed() < bound, "{:?}", started.elapsed());

    let started = Instant::now();
    let err = dcs
        .publish_member(&member("holder"), ttl)
        .await
        .expect_err("publish");
    assert!(err.is_unreachable(), "{err}");
    assert!(started.elapsed() < bound, "{:?}", started.elapsed());

    // A client that never reached the server fails to connect, in time.
    let started = Instant::now();
    let config = common::config(&server.connect_string(), "never");
    ZooKeeperDcs::connect(config)
        .await
        .expect_err("connect to a dead server");
    assert!(started.elapsed() < bound, "{:?}", started.elapsed());
}

/// The keys live under the chroot and the namespace, as ephemeral znodes
/// (leader, members) of the client's session, with Patroni's values; a
/// connect string with a dead server first still works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_live_under_the_chroot_as_ephemeral_znodes() {
    let server = ZooKeeperServer::start().expect("start ZooKeeper");
    let dead = format!("127.0.0.1:{}", free_port().expect("free port"));
    let scope = common::unique_scope("layout");
    let config = common::config(&format!("{dead},{}", server.connect_string()), &scope)
        .with_chroot("/tenants/blue")
        .with_namespace("pg-clusters");
    let dcs = common::connect(&config).await;
    lead(&dcs, "node1", TTL).await;
    let session = dcs.session_id().await.expect("session");

    let raw = common::raw_client(&server.connect_string()).await;
    let base = format!("/tenants/blue/pg-clusters/{scope}");
    let (data, stat) = raw
        .get_data(&format!("{base}/leader"))
        .await
        .expect("leader znode");
    assert_eq!(data, b"node1");
    assert_eq!(stat.ephemeral_owner, session);
    let (data, stat) = raw
        .get_data(&format!("{base}/members/node1"))
        .await
        .expect("member znode");
    assert_eq!(stat.ephemeral_owner, session);
    let json: String = String::from_utf8(data).expect("utf-8");
    assert!(json.contains("\"conn_url\""), "{json}");

    // The same scope under another chroot is another cluster.
    let elsewhere = ZooKeeperDcs::connect(config.with_chroot("/tenants/green"))
        .await
        .expect("connect");
    let view = elsewhere.read_view().await.expect("read");
    assert!(view.leader.is_none() && view.members.is_empty());

    // Dropping the client closes its session: its ephemeral znodes go at once.
    drop(dcs);
    eventually(
        "the leader znode goes with the closed session",
        Duration::from_secs(3),
        || async {
            matches!(raw.check_stat(&format!("{base}/leader")).await, Ok(None)).then_some(())
        },
    )
    .await;
}

/// With digest auth, the znodes are readable and writable only by clients
/// with the same credentials; the password never shows in Debug output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn digest_auth_protects_the_cluster() {
    let server = ZooKeeperServer::start().expect("start ZooKeeper");
    let scope = common::unique_scope("auth");
    let config = common::config(&server.connect_string(), &scope)
        .with_chroot("/secured")
        .with_auth(DigestAuth::new("matriarch", "correct horse"));
    assert!(!format!("{config:?}").contains("correct horse"));
    let dcs = common::connect(&config).await;
    assert!(!format!("{dcs:?}").contains("correct horse"));
    assert!(dcs
        .acquire_leader(&name("node1"), TTL)
        .await
        .expect("acquire"));

    let peer = ZooKeeperDcs::connect(config.clone())
        .await
        .expect("connect a peer");
    assert_eq!(
        peer.read_view().await.expect("read").leader_name(),
        Some(&name("node1"))
    );

    let raw = common::raw_client(&server.connect_string()).await;
    let leader = format!("/secured/service/{scope}/leader");
    assert_eq!(
        raw.get_data(&leader).await.expect_err("anonymous read"),
        zk::Error::NoAuth
    );
    assert_eq!(
        raw.delete(&leader, None)
            .await
            .expect_err("anonymous delete"),
        zk::Error::NoAuth
    );

    // The session opens; the ACLs refuse.
    let intruder = common::connect(&config.with_auth(DigestAuth::new("matriarch", "wrong"))).await;
    let err = intruder
        .read_view()
        .await
        .expect_err("read, wrong password");
    assert!(matches!(err, DcsError::Backend { .. }), "{err}");
    assert!(!err.to_string().contains("wrong"), "{err}");
}

/// A watch wakes on a change made through another client after the server
/// restarted (the persistent watch is re-read after the reconnection).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_sees_changes_across_a_reconnection() {
    let ttl = Duration::from_secs(12);
    let (server, config) = own_server("rewatch", ttl);
    let watcher = common::connect(&config).await;
    let revision = watcher.read_view().await.expect("read").revision;
    server.restart().expect("restart ZooKeeper");
    let writer = ZooKeeperDcs::connect(config).await.expect("connect writer");
    publish(&writer, "late", ttl).await;
    let outcome = eventually("the watch reports the change", ttl, || async {
        match watcher.watch(revision, Duration::from_secs(5)).await {
            Ok(outcome) => Some(outcome),
            Err(e) if e.is_unreachable() => None,
            Err(e) => panic!("watch gave {e}"),
        }
    })
    .await;
    assert_eq!(outcome, WatchOutcome::Changed);
    let view = watcher.read_view().await.expect("read");
    assert!(view.members.contains_key("late"), "{:?}", view.members);
}

// ------------------------------------------------------------ the ensemble

/// A three-server ZooKeeper ensemble on 127.0.0.1 (the test kit starts only
/// standalone servers), killed on drop.
struct Ensemble {
    client_ports: Vec<u16>,
    children: Vec<Option<Child>>,
    _dir: tempfile::TempDir,
}

impl Ensemble {
    fn start() -> Ensemble {
        let dir = tempfile::Builder::new()
            .prefix("matriarch-zk-ensemble-")
            .tempdir()
            .expect("temporary directory");
        let ports: Vec<(u16, u16, u16)> = (0..3)
            .map(|_| {
                let port = || free_port().expect("free port");
                (port(), port(), port())
            })
            .collect();
        let servers: String = ports
            .iter()
            .enumerate()
            .map(|(i, (_, quorum, election))| {
                format!("server.{}=127.0.0.1:{quorum}:{election}\n", i + 1)
            })
            .collect();
        let mut children = Vec::new();
        for (i, (client, _, _)) in ports.iter().enumerate() {
            let home = dir.path().join(format!("zk{}", i + 1));
            let data = home.join("data");
            fs::create_dir_all(&data).expect("data dir");
            fs::write(data.join("myid"), format!("{}\n", i + 1)).expect("myid");
            let cfg = format!(
                "tickTime=2000\ninitLimit=10\nsyncLimit=5\nminSessionTimeout=1000\n\
                 maxSessionTimeout=60000\ndataDir={}\nclientPort={client}\n\
                 clientPortAddress=127.0.0.1\nadmin.enableServer=false\n\
                 4lw.commands.whitelist=*\nforceSync=no\n{servers}",
                data.display()
            );
            fs::write(home.join("zoo.cfg"), cfg).expect("zoo.cfg");
            let log4j = "/etc/zookeeper/conf_example/log4j.properties";
            if Path::new(log4j).is_file() {
                fs::copy(log4j, home.join("log4j.properties")).expect("log4j.properties");
            }
            let log = fs::File::create(home.join("zookeeper.log")).expect("log file");
            let child = Command::new("java")
                .arg("-Xmx256m")
                .arg("-XX:+UseSerialGC")
                .arg("-XX:TieredStopAtLevel=1")
                .arg("-Dzookeeper.admin.enableServer=false")
                .arg("-cp")
                .arg(format!("{}:/usr/share/java/zookeeper.jar", home.display()))
                .arg("org.apache.zookeeper.server.quorum.QuorumPeerMain")
                .arg(home.join("zoo.cfg"))
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log file"))
                .stderr(log)
                .spawn()
                .expect("start java");
            children.push(Some(child));
        }
        Ensemble {
            client_ports: ports.iter().map(|(client, _, _)| *client).collect(),
            children,
            _dir: dir,
        }
    }

    fn connect_string(&self) -> String {
        let servers: Vec<String> = self
            .client_ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        servers.join(",")
    }

    /// Each live server's mode (`leader`, `follower`), or `None` while it
    /// does not serve.
    fn modes(&self) -> Vec<Option<String>> {
        self.client_ports
            .iter()
            .zip(&self.children)
            .map(|(port, child)| {
                child.as_ref()?;
                let answer = zk_four_letter_word(*port, "srvr").ok()?;
                answer
                    .lines()
                    .find_map(|line| line.strip_prefix("Mode: "))
                    .map(str::to_owned)
            })
            .collect()
    }

    fn kill(&mut self, index: usize) {
        if let Some(mut child) = self.children[index].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Ensemble {
    fn drop(&mut self) {
        for index in 0..self.children.len() {
            self.kill(index);
        }
    }
}

/// A three-server ensemble: the lock and a watch work through it, and killing
/// the ensemble's leader keeps the session and the lock (the client moves to
/// a surviving server, the survivors elect a new leader).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_server_ensemble_survives_the_loss_of_its_leader() {
    let started = Instant::now();
    let mut ensemble = Ensemble::start();
    eventually(
        "the ensemble elects a leader",
        Duration::from_secs(60),
        || async {
            let modes = ensemble.modes();
            (modes.iter().all(Option::is_some) && modes.iter().flatten().any(|m| m == "leader"))
                .then_some(())
        },
    )
    .await;
    eprintln!(
        "three-server ensemble serving after {:?}",
        started.elapsed()
    );

    let ttl = Duration::from_secs(10);
    let config = common::config(
        &ensemble.connect_string(),
        &common::unique_scope("ensemble"),
    )
    .with_session_timeout(ttl)
    .with_retry_timeout(Duration::from_secs(4));
    let holder = common::connect(&config).await;
    let watcher = common::connect(&config).await;
    let a = name("holder");
    lead(&holder, "holder", ttl).await;
    let session = holder.session_id().await.expect("session");
    let revision = watcher.read_view().await.expect("read").revision;

    let leader = ensemble
        .modes()
        .iter()
        .position(|m| m.as_deref() == Some("leader"))
        .expect("a leader");
    let killed = Instant::now();
    ensemble.kill(leader);
    renew_within_half_a_ttl(&holder, &a, ttl, "after the loss of the ensemble leader").await;
    eprintln!(
        "renewed {:?} after killing the ensemble leader",
        killed.elapsed()
    );
    let other = the_session_and_the_lock_survived(&holder, session, config, ttl).await;
    holder.release_leader(&a).await.expect("release");
    let outcome = eventually("the watch reports the release", ttl, || async {
        watcher.watch(revision, Duration::from_secs(5)).await.ok()
    })
    .await;
    assert_eq!(outcome, WatchOutcome::Changed);
    assert!(other
        .acquire_leader(&name("other"), ttl)
        .await
        .expect("acquire"));
}
