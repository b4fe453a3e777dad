//! etcd's own failures, as a member holding the lock lives through them: the
//! etcd leader killed, a whole outage longer than the TTL, a member restart
//! under a watch, a compaction past a watcher's revision.

mod common;

use std::time::{Duration, Instant};

use common::{
    blocking, dcs, eventually, holder_and_rival, lead, member, name, own_server, publish,
    raw_client, status, timed_watch, unique_scope, write_status,
};
use matriarch_dcs::{Dcs, DcsError, Expected, WatchOutcome};
use matriarch_etcd::EtcdDcs;
use matriarch_model::{Lsn, Record};
use matriarch_testkit::EtcdCluster;

const TTL: Duration = Duration::from_secs(3);
const RETRY: Duration = Duration::from_secs(1);
/// What a bounded call may take beyond retry_timeout (scheduling on a busy machine).
const CALL_MARGIN: Duration = Duration::from_millis(1500);

/// Writes `record`, retrying while etcd is unreachable (never on other errors).
async fn write_eventually(client: &EtcdDcs, record: &Record, bound: Duration) {
    eventually("a write succeeds", bound, || async {
        match client.write(record, Expected::Any).await {
            Ok(_) => Some(()),
            Err(e) if e.is_unreachable() => None,
            Err(e) => panic!("write failed with {e}"),
        }
    })
    .await
}

/// Asserts that `call` ends within retry_timeout (plus a margin) with an
/// "unreachable" error: the engine's demotion deadline depends on both.
async fn assert_unreachable<T: std::fmt::Debug>(
    what: &str,
    call: impl std::future::Future<Output = Result<T, DcsError>>,
) {
    let started = Instant::now();
    let result = tokio::time::timeout(RETRY + CALL_MARGIN * 3, call)
        .await
        .unwrap_or_else(|_| panic!("{what} hung during the outage"));
    let took = started.elapsed();
    match result {
        Err(e) => assert!(
            e.is_unreachable(),
            "{what} during the outage gave {e}, not unreachable"
        ),
        Ok(value) => panic!("{what} succeeded during the outage: {value:?}"),
    }
    assert!(
        took <= RETRY + CALL_MARGIN,
        "{what} took {took:?}, more than retry_timeout {RETRY:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lock_survives_a_sigkill_of_the_etcd_leader() {
    let cluster = blocking(|| EtcdCluster::start(3)).expect("start etcd cluster");
    let leader = blocking(|| cluster.leader()).expect("find the etcd leader");
    // Every client talks to the etcd leader first: the worst member to lose.
    let mut urls = cluster.client_urls();
    urls.rotate_left(leader);
    let scope = unique_scope("leader-kill");
    // matriarch's defaults: etcd's election (1 to 2 s after the kill, more on
    // a busy machine) fits in them, as it must in production.
    let (ttl, retry) = (Duration::from_secs(5), Duration::from_secs(2));
    let holder = dcs(&urls, &scope, retry);
    let other = dcs(&urls, &scope, retry);
    let watcher = dcs(&urls, &scope, retry);
    let (a, b) = (name("holder"), name("other"));

    lead(&holder, "holder", ttl).await;
    let revision = watcher.read_view().await.expect("read").revision;
    let watch = tokio::spawn(async move {
        let outcome = watcher.watch(revision, Duration::from_secs(30)).await;
        (watcher, outcome)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;

    blocking(|| cluster.member(leader).kill());
    let killed = Instant::now();

    // The holder renews every loop_wait (1 s), as the engine would; renewals may fail
    // as unreachable during the election, but never as a lost lock, and they
    // succeed again well before the ttl runs out.
    let mut last_success = killed;
    let mut successes = 0;
    while killed.elapsed() < ttl * 2 {
        let started = Instant::now();
        match holder.renew_leader(&a, ttl).await {
            Ok(()) => {
                let gap = last_success.elapsed();
                if successes == 0 {
                    eprintln!(
                        "first renewal after the kill: {:?} after it",
                        killed.elapsed()
                    );
                }
                assert!(gap < ttl, "no successful renewal for {gap:?} (ttl {ttl:?})");
                last_success = Instant::now();
                successes += 1;
            }
            Err(e) if e.is_unreachable() => {
                eprintln!("renewal {:?} after the kill: {e}", killed.elapsed());
                assert!(
                    started.elapsed() <= retry + CALL_MARGIN,
                    "renewal took {:?}",
                    started.elapsed()
                );
            }
            Err(e) => panic!("renewal after the etcd leader was killed gave {e}"),
        }
        holder.publish_member(&member("holder"), ttl).await.ok();
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert!(successes >= 3, "only {successes} renewals succeeded");
    let view = other.read_view().await.expect("read after the kill");
    assert_eq!(view.leader_name(), Some(&a), "the lock did not survive");
    assert!(view.members.contains_key("holder"));
    assert!(!other.acquire_leader(&b, ttl).await.expect("acquire"));

    // Writes and watches recover.
    write_eventually(&other, &status(0x500_0000), Duration::from_secs(10)).await;
    let (watcher, outcome) = tokio::time::timeout(Duration::from_secs(10), watch)
        .await
        .expect("the watch woke after the write")
        .expect("watch task");
    assert_eq!(
        outcome.expect("watch across the leader kill"),
        WatchOutcome::Changed
    );
    let revision = watcher.read_view().await.expect("read").revision;
    let writer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        other.write(&status(0x600_0000), Expected::Any).await
    });
    let outcome = watcher
        .watch(revision, Duration::from_secs(10))
        .await
        .expect("new watch");
    assert_eq!(outcome, WatchOutcome::Changed);
    writer.await.expect("writer").expect("write");
}

/// The holder's side of an outage: every call fails as unreachable, in time.
async fn calls_during_an_outage(holder: &EtcdDcs, me: &matriarch_model::MemberName, revision: u64) {
    assert_unreachable("renew_leader", holder.renew_leader(me, TTL)).await;
    assert_unreachable("read_view", holder.read_view()).await;
    assert_unreachable("write", holder.write(&status(1), Expected::Any)).await;
    assert_unreachable(
        "publish_member",
        holder.publish_member(&member("holder"), TTL),
    )
    .await;
    assert_unreachable("watch", holder.watch(revision, Duration::from_secs(30))).await;
}

/// After etcd is back: the lease ran out during the outage (or runs out a TTL
/// after etcd's restart, which restores leases with a fresh TTL), so another
/// member gets the lock and the old holder learns it lost it.
async fn after_the_outage(holder: &EtcdDcs, other: &EtcdDcs) {
    let (a, b) = (name("holder"), name("other"));
    eventually(
        "another member acquires the expired lock",
        TTL + Duration::from_secs(20),
        || async {
            match other.acquire_leader(&b, TTL).await {
                Ok(acquired) => acquired.then_some(()),
                Err(e) if e.is_unreachable() => None,
                Err(e) => panic!("acquire after the outage gave {e}"),
            }
        },
    )
    .await;
    let result = eventually(
        "the old holder hears back",
        Duration::from_secs(10),
        || async {
            match holder.renew_leader(&a, TTL).await {
                Err(e) if e.is_unreachable() => None,
                other => Some(other),
            }
        },
    )
    .await;
    match result {
        Err(DcsError::LockNotHeld { member, holder }) => {
            assert_eq!(member, a);
            assert_eq!(holder, Some(b));
        }
        other => panic!("renewal by the old holder after the outage gave {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_cluster_is_unreachable_and_the_lock_is_free_when_it_returns() {
    let cluster = blocking(|| EtcdCluster::start(3)).expect("start etcd cluster");
    let urls = cluster.client_urls();
    let scope = unique_scope("frozen");
    let (holder, other) = holder_and_rival(&urls, &scope, RETRY, TTL).await;
    publish(&holder, "holder", TTL).await;
    let revision = holder.read_view().await.expect("read").revision;

    for m in cluster.members() {
        m.pause().expect("SIGSTOP an etcd member");
    }
    let frozen = Instant::now();
    // Resume even if an assertion fails, so the cluster can be torn down.
    struct Thaw<'a>(&'a EtcdCluster);
    impl Drop for Thaw<'_> {
        fn drop(&mut self) {
            for m in self.0.members() {
                let _ = m.resume();
            }
        }
    }
    let thaw = Thaw(&cluster);
    while frozen.elapsed() < TTL + Duration::from_secs(2) {
        calls_during_an_outage(&holder, &name("holder"), revision).await;
    }
    drop(thaw);
    after_the_outage(&holder, &other).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_single_member_is_unreachable_and_the_lock_is_free_after_its_restart() {
    let (server, urls, scope) = own_server("restart");
    let (holder, other) = holder_and_rival(&urls, &scope, RETRY, TTL).await;
    let revision = holder.read_view().await.expect("read").revision;

    blocking(|| server.kill());
    let stopped = Instant::now();
    while stopped.elapsed() < TTL + Duration::from_secs(1) {
        calls_during_an_outage(&holder, &name("holder"), revision).await;
    }
    blocking(|| server.restart()).expect("restart etcd");
    after_the_outage(&holder, &other).await;
}

/// A watch rides out a restart of the etcd member it watches through and
/// reports the change written meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_lives_through_a_restart_of_its_etcd_member() {
    let (server, urls, scope) = own_server("watch-restart");
    // A retry_timeout longer than the restart: the watch call rides it out.
    let watcher = dcs(&urls, &scope, Duration::from_secs(10));
    let writer = dcs(&urls, &scope, Duration::from_secs(10));
    let revision = watcher.read_view().await.expect("read").revision;
    let watch = tokio::spawn(async move { watcher.watch(revision, Duration::from_secs(60)).await });
    tokio::time::sleep(Duration::from_millis(300)).await;

    blocking(|| server.member().kill());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !watch.is_finished(),
        "the watch ended when its member died: {:?}",
        watch.await
    );
    blocking(|| server.restart()).expect("restart etcd");
    write_eventually(&writer, &status(7), Duration::from_secs(10)).await;
    let outcome = tokio::time::timeout(Duration::from_secs(10), watch)
        .await
        .expect("the watch woke after the restart")
        .expect("watch task");
    assert_eq!(outcome.expect("watch"), WatchOutcome::Changed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_misses_no_change_made_while_its_member_was_down() {
    let cluster = blocking(|| EtcdCluster::start(3)).expect("start etcd cluster");
    let urls = cluster.client_urls();
    let scope = unique_scope("watch-resume");
    // The watcher knows only member 0; the writer only the others.
    let watcher = dcs(&urls[..1], &scope, RETRY);
    let writer = dcs(&urls[1..], &scope, RETRY);
    let revision = watcher.read_view().await.expect("read").revision;

    blocking(|| cluster.member(0).kill());
    write_eventually(&writer, &status(9), Duration::from_secs(15)).await;
    let written = writer.read_view().await.expect("read").revision;
    assert!(written > revision);

    let watching = tokio::spawn(async move {
        // While member 0 is down the watch reports it unreachable (in time);
        // asked again from the same revision, it finds the change.
        let started = Instant::now();
        loop {
            let call = Instant::now();
            match watcher.watch(revision, Duration::from_secs(30)).await {
                Ok(outcome) => return (watcher, outcome),
                Err(e) => {
                    assert!(e.is_unreachable(), "{e}");
                    assert!(
                        call.elapsed() <= RETRY + CALL_MARGIN,
                        "watch took {:?}",
                        call.elapsed()
                    );
                }
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "the watch never came back"
            );
        }
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    blocking(|| cluster.member(0).restart()).expect("restart member 0");
    let (watcher, outcome) = tokio::time::timeout(Duration::from_secs(60), watching)
        .await
        .expect("the watch came back")
        .expect("watch task");
    assert_eq!(outcome, WatchOutcome::Changed);
    let view = watcher.read_view().await.expect("read through member 0");
    assert!(view.revision >= written && view.status.is_some());
}

/// A watch from a revision etcd has compacted away reports a change at once
/// (the caller re-reads the view), not an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compaction_past_the_watched_revision_is_reported_as_a_change() {
    let (_server, urls, scope) = own_server("compaction");
    let retry = Duration::from_secs(2);
    let (watcher, writer) = (dcs(&urls, &scope, retry), dcs(&urls, &scope, retry));
    let before = watcher.read_view().await.expect("read").revision;
    for optime in 1..=3 {
        write_status(&writer, optime).await;
    }
    let latest = writer.read_view().await.expect("read").revision;
    let mut admin = raw_client(&urls).await;
    let options = etcd_client::CompactionOptions::new().with_physical();
    admin
        .compact(i64::try_from(latest).expect("revision"), Some(options))
        .await
        .expect("compact");

    let (outcome, took) = timed_watch(&watcher, before, Duration::from_secs(30)).await;
    assert_eq!(outcome, WatchOutcome::Changed);
    assert!(took < Duration::from_secs(2), "{took:?}");
    let view = watcher.read_view().await.expect("re-read");
    assert!(view.revision >= latest);
    let stored = view.status.expect("status present").expect("decodes");
    assert_eq!(stored.value.optime, Lsn(3));

    // A watch from the fresh view is an ordinary watch again.
    let outcome = watcher
        .watch(view.revision, Duration::from_millis(500))
        .await
        .expect("watch");
    assert_eq!(outcome, WatchOutcome::TimedOut);
}
