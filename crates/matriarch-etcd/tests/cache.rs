//! The scope cache (one watch stream per client, kept open across calls):
//! the rules on `EtcdDcs` held against real etcd. Reads see this client's
//! and other clients' completed writes; a change wakes a watch and is then
//! in the view; a killed or hung member, or a compaction while the stream
//! was down, makes reads fall back to etcd and the cache come back; another
//! member's expired lease reaches the cache as a delete.

mod common;

use std::time::{Duration, Instant};

use common::{
    blocking, dcs, eventually, lead, name, own_server, publish, raw_client, status, timed_watch,
    unique_scope, write_status,
};
use matriarch_dcs::{Dcs, Expected, WatchOutcome};
use matriarch_etcd::EtcdDcs;
use matriarch_model::{ClusterView, Lsn};
use matriarch_testkit::EtcdCluster;

const TTL: Duration = Duration::from_secs(3);
const RETRY: Duration = Duration::from_secs(2);

fn optime(view: &ClusterView) -> Option<Lsn> {
    let status = view.status.as_ref()?.as_ref().ok()?;
    Some(status.value.optime)
}

/// Asserts that the next read from `client` has the leader status at `n`,
/// which `writer` wrote.
async fn assert_next_read_has(client: &EtcdDcs, n: u64, writer: &str) {
    let view = client.read_view().await.expect("read");
    assert_eq!(
        optime(&view),
        Some(Lsn(n)),
        "{writer}'s completed write {n} not in the next read"
    );
}

/// Reads until the view comes from the cache again (a stream is live), and
/// returns it; panics after `bound`.
async fn cached_read(client: &EtcdDcs, bound: Duration) -> ClusterView {
    eventually("a read answered from the cache", bound, || async {
        let before = client.read_counters().cached_reads;
        let view = client.read_view().await.ok()?;
        (client.read_counters().cached_reads > before).then_some(view)
    })
    .await
}

/// A 3-member cluster for scope `tag`, a client on its first
/// `client_members` members (its stream on member 0) with `client_retry`, a
/// writer on members 1 and 2 (as another host would be), and the client's
/// first read from its cache.
async fn three_members(
    tag: &str,
    client_members: usize,
    client_retry: Duration,
) -> (EtcdCluster, EtcdDcs, EtcdDcs, ClusterView) {
    let cluster = blocking(|| EtcdCluster::start(3)).expect("start etcd cluster");
    let urls = cluster.client_urls();
    let scope = unique_scope(tag);
    let client = dcs(&urls[..client_members], &scope, client_retry);
    let writer = dcs(&urls[1..], &scope, RETRY);
    let view = cached_read(&client, Duration::from_secs(10)).await;
    (cluster, client, writer, view)
}

/// A read right after this client's own write sees it, every time, and comes
/// from the cache (one watch stream for all of them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_after_the_clients_own_write_sees_it() {
    let (_server, urls, scope) = own_server("cache-own");
    let client = dcs(&urls, &scope, RETRY);
    cached_read(&client, Duration::from_secs(10)).await;
    let before = client.read_counters();
    for n in 1..=30 {
        write_status(&client, n).await;
        assert_next_read_has(&client, n, "this client").await;
        publish(&client, &format!("m{n}"), TTL).await;
        let view = client.read_view().await.expect("read");
        assert!(view.members.contains_key(format!("m{n}").as_str()));
    }
    let after = client.read_counters();
    eprintln!("{before:?} -> {after:?}");
    assert_eq!(
        after.watch_streams, before.watch_streams,
        "a new watch stream"
    );
    assert!(
        after.cached_reads - before.cached_reads >= 50,
        "only {} of 60 reads from the cache",
        after.cached_reads - before.cached_reads
    );
}

/// Another client's write wakes a watch, and the next read has it; and a
/// read right after another client's write completed has it, without a
/// watch in between. No loop opens a watch stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_clients_change_wakes_the_watch_and_is_in_the_next_read() {
    // Writer and watcher on different members, as two hosts would be.
    let (_cluster, watcher, writer, mut view) = three_members("cache-other", 3, RETRY).await;
    let streams = watcher.read_counters().watch_streams;
    for n in 1..=10 {
        let revision = view.revision;
        let write = async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            write_status(&writer, n).await;
        };
        let ((outcome, took), ()) = tokio::join!(
            timed_watch(&watcher, revision, Duration::from_secs(10)),
            write
        );
        assert_eq!(outcome, WatchOutcome::Changed, "loop {n}");
        assert!(
            took < Duration::from_secs(2),
            "loop {n}: woke after {took:?}"
        );
        view = watcher.read_view().await.expect("read");
        assert_eq!(optime(&view), Some(Lsn(n)), "loop {n}");
        assert!(view.revision > revision);
        // Nothing new: the watch waits its timeout out.
        let (outcome, _) = timed_watch(&watcher, view.revision, Duration::from_millis(200)).await;
        assert_eq!(outcome, WatchOutcome::TimedOut, "loop {n}");
    }
    for n in 11..=30 {
        write_status(&writer, n).await;
        assert_next_read_has(&watcher, n, "another client").await;
    }
    assert_eq!(watcher.read_counters().watch_streams, streams);
}

/// A member that dies under the stream: reads fall back to etcd (and see
/// the writes made meanwhile), a watch from before the kill wakes, and the
/// cache comes back on another member.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_member_under_the_stream_falls_back_and_recovers() {
    let (cluster, client, writer, view) = three_members("cache-kill", 3, RETRY).await;
    let revision = view.revision;
    let streams = client.read_counters().watch_streams;

    blocking(|| cluster.member(0).kill());
    // The killed member may have been etcd's leader: the write waits out the
    // election, which on a loaded machine can take longer than one retry_timeout.
    eventually(
        "a write after the kill",
        Duration::from_secs(15),
        || async { writer.write(&status(1), Expected::Any).await.ok() },
    )
    .await;
    let started = Instant::now();
    let view = eventually("a read after the kill", Duration::from_secs(10), || async {
        client.read_view().await.ok()
    })
    .await;
    assert_eq!(optime(&view), Some(Lsn(1)), "the read missed the write");
    let (outcome, took) = timed_watch(&client, revision, Duration::from_secs(10)).await;
    assert_eq!(outcome, WatchOutcome::Changed);
    eprintln!(
        "read after {:?}, watch woke {took:?} later",
        started.elapsed() - took
    );
    let view = cached_read(&client, Duration::from_secs(10)).await;
    assert_eq!(optime(&view), Some(Lsn(1)));
    assert!(
        client.read_counters().watch_streams > streams,
        "no new stream"
    );
    // The new stream carries changes again.
    let write = async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        write_status(&writer, 2).await;
    };
    let ((outcome, _), ()) = tokio::join!(
        timed_watch(&client, view.revision, Duration::from_secs(10)),
        write
    );
    assert_eq!(outcome, WatchOutcome::Changed);
    assert_eq!(
        optime(&client.read_view().await.expect("read")),
        Some(Lsn(2))
    );
}

/// A hung (SIGSTOPped) member keeps the stream's connection open but answers
/// nothing: the stream is given up within retry_timeout and synchronised on
/// another member; the change made meanwhile wakes the watch and is read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_member_under_the_stream_is_given_up_and_the_change_seen() {
    let (cluster, client, writer, view) = three_members("cache-hung", 3, RETRY).await;
    let revision = view.revision;

    cluster.member(0).pause().expect("SIGSTOP member 0");
    struct Resume<'a>(&'a EtcdCluster);
    impl Drop for Resume<'_> {
        fn drop(&mut self) {
            let _ = self.0.member(0).resume();
        }
    }
    let _resume = Resume(&cluster);
    let paused = Instant::now();
    eventually(
        "a write without member 0",
        Duration::from_secs(15),
        || async { writer.write(&status(3), Expected::Any).await.ok() },
    )
    .await;
    let (outcome, took) = timed_watch(&client, revision, Duration::from_secs(20)).await;
    assert_eq!(outcome, WatchOutcome::Changed);
    let woke = paused.elapsed();
    eprintln!("the watch woke {woke:?} after the pause (waited {took:?})");
    assert!(
        woke < RETRY * 3 + Duration::from_secs(3),
        "woke after {woke:?}"
    );
    let view = client.read_view().await.expect("read");
    assert_eq!(optime(&view), Some(Lsn(3)));
    let view = cached_read(&client, Duration::from_secs(10)).await;
    assert_eq!(optime(&view), Some(Lsn(3)));
}

/// A compaction past everything the cache saw, while its stream was down:
/// the cache is synchronised from a range read, the watch from before wakes,
/// and a watch from the new view is an ordinary watch again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compaction_while_the_stream_was_down_is_a_resynchronisation() {
    // The client knows member 0 only, so its stream waits for it.
    let (cluster, client, writer, view) =
        three_members("cache-compact", 1, Duration::from_secs(10)).await;
    let before = view.revision;

    blocking(|| cluster.member(0).kill());
    for optime in 1..=3 {
        eventually(
            "a write without member 0",
            Duration::from_secs(15),
            || async { writer.write(&status(optime), Expected::Any).await.ok() },
        )
        .await;
    }
    let latest = writer.read_view().await.expect("read").revision;
    let mut admin = raw_client(&cluster.client_urls()[1..]).await;
    admin
        .compact(
            i64::try_from(latest).expect("revision"),
            Some(etcd_client::CompactionOptions::new().with_physical()),
        )
        .await
        .expect("compact");
    blocking(|| cluster.member(0).restart()).expect("restart member 0");

    let (outcome, _) = timed_watch(&client, before, Duration::from_secs(30)).await;
    assert_eq!(outcome, WatchOutcome::Changed);
    let view = cached_read(&client, Duration::from_secs(20)).await;
    assert!(view.revision >= latest, "{} < {latest}", view.revision);
    assert_eq!(optime(&view), Some(Lsn(3)));
    let (outcome, _) = timed_watch(&client, view.revision, Duration::from_millis(500)).await;
    assert_eq!(outcome, WatchOutcome::TimedOut);
}

/// Another member's lock that expires reaches the cache through the stream
/// as a delete: the watch wakes within the TTL (plus etcd's expiry tick), the
/// next read (from the cache) has no leader, and no stream was reopened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_members_expired_lock_reaches_the_cache_as_a_delete() {
    let (_server, urls, scope) = own_server("cache-expiry");
    let watcher = dcs(&urls, &scope, RETRY);
    {
        let holder = dcs(&urls, &scope, RETRY);
        lead(&holder, "holder", TTL).await;
        // Dropped without releasing: the lock stays until its lease expires.
    }
    let taken = Instant::now();
    let view = cached_read(&watcher, Duration::from_secs(5)).await;
    assert_eq!(view.leader_name(), Some(&name("holder")));
    let streams = watcher.read_counters().watch_streams;
    let (outcome, _) = timed_watch(&watcher, view.revision, Duration::from_secs(20)).await;
    let gone = taken.elapsed();
    assert_eq!(outcome, WatchOutcome::Changed);
    assert!(
        gone < TTL + Duration::from_millis(2500),
        "the expired lock was seen {gone:?} after it was taken"
    );
    let before = watcher.read_counters();
    let view = watcher.read_view().await.expect("read");
    assert!(view.leader.is_none(), "{:?}", view.leader);
    let after = watcher.read_counters();
    assert_eq!(
        after.cached_reads,
        before.cached_reads + 1,
        "not from the cache"
    );
    assert_eq!(
        after.watch_streams, streams,
        "the delete came by a new stream"
    );
    assert!(watcher
        .acquire_leader(&name("watcher"), TTL)
        .await
        .expect("acquire"));
}
