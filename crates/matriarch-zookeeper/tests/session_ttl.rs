//! The ZooKeeper session follows the ttl, and the lock lifetime the client
//! reports is the one the server grants: against a real ZooKeeper 3.8 whose
//! `maxSessionTimeout` (4 s) is below the ttl the cluster asks for (10 s).

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::name;
use matriarch_dcs::Dcs;
use matriarch_model::Member;
use matriarch_testkit::{ZooKeeperOptions, ZooKeeperServer};
use matriarch_zookeeper::ZooKeeperDcs;

/// The server's `maxSessionTimeout`.
const MAX_SESSION: Duration = Duration::from_secs(4);
/// The ttl asked for, above it.
const TTL: Duration = Duration::from_secs(10);

fn clamping_server() -> ZooKeeperServer {
    ZooKeeperServer::start_with(ZooKeeperOptions {
        min_session_timeout: Duration::from_secs(1),
        max_session_timeout: MAX_SESSION,
    })
    .expect("start ZooKeeper")
}

/// A ttl change re-establishes the session with the new timeout; the client
/// reports what the server granted (clamped), and the lock and the member
/// record move to the new session without ever being free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_follows_the_ttl_and_reports_the_negotiated_timeout() {
    let server = clamping_server();
    let scope = common::unique_scope("follow-ttl");
    let config = common::config(&server.connect_string(), &scope)
        .with_session_timeout(Duration::from_secs(2));
    let holder = common::connect(&config).await;
    let observer = common::connect(&config).await;
    let me = name("holder");
    let member = Member::new(me.clone(), "postgres://h:5432/postgres", "http://h:8008");

    assert_eq!(
        holder.negotiated_session_timeout().await,
        Some(Duration::from_secs(2))
    );
    holder
        .publish_member(&member, Duration::from_secs(2))
        .await
        .expect("publish");
    assert!(holder
        .acquire_leader(&me, Duration::from_secs(2))
        .await
        .expect("acquire"));
    assert_eq!(holder.lock_lifetime(), Some(Duration::from_secs(2)));
    let first_session = holder.session_id().await.expect("a session");

    // Someone watches the lock and the record all along.
    let stop = Arc::new(AtomicBool::new(false));
    let gaps = Arc::new(AtomicUsize::new(0));
    let watch = {
        let (stop, gaps) = (Arc::clone(&stop), Arc::clone(&gaps));
        tokio::spawn(async move {
            let mut reads = 0usize;
            while !stop.load(Ordering::SeqCst) {
                if let Ok(view) = observer.read_view().await {
                    reads += 1;
                    let held = view.leader_name() == Some(&name("holder"));
                    if !held || !view.members.contains_key("holder") {
                        gaps.fetch_add(1, Ordering::SeqCst);
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            reads
        })
    };

    tokio::time::sleep(Duration::from_millis(200)).await;
    // `edit-config ttl=10`: the next renewal asks for 10 s; the server grants 4.
    holder.renew_leader(&me, TTL).await.expect("renew");
    let second_session = holder.session_id().await.expect("a session");
    assert_ne!(
        second_session, first_session,
        "the session was not re-established"
    );
    assert_eq!(holder.requested_session_timeout(), TTL);
    assert_eq!(holder.negotiated_session_timeout().await, Some(MAX_SESSION));
    assert_eq!(
        holder.lock_lifetime(),
        Some(MAX_SESSION),
        "the lock lifetime must be the negotiated session timeout, not the ttl"
    );
    holder.publish_member(&member, TTL).await.expect("publish");
    tokio::time::sleep(Duration::from_millis(200)).await;

    // And back down to 3 s, within the server's limits.
    let three = Duration::from_secs(3);
    holder.renew_leader(&me, three).await.expect("renew");
    assert_ne!(holder.session_id().await, Some(second_session));
    assert_eq!(holder.negotiated_session_timeout().await, Some(three));
    assert_eq!(holder.lock_lifetime(), Some(three));
    holder
        .publish_member(&member, three)
        .await
        .expect("publish");
    tokio::time::sleep(Duration::from_millis(200)).await;

    stop.store(true, Ordering::SeqCst);
    let reads = watch.await.expect("watcher");
    assert!(reads > 5, "the observer read only {reads} times");
    assert_eq!(
        gaps.load(Ordering::SeqCst),
        0,
        "the lock or the member record was missing during a session change"
    );
    // The old sessions are closed: nothing of theirs is left.
    common::locked_out_newcomer(&config, three).await;
    holder.renew_leader(&me, three).await.expect("still held");
}

/// A holder cut off from ZooKeeper (its process gone without closing the
/// session) keeps the lock for the negotiated timeout at most, and for no
/// less than the lifetime it reported: the engine's deadlines count from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_holder_keeps_the_lock_for_its_reported_lifetime_and_not_the_ttl() {
    let server = clamping_server();
    let scope = common::unique_scope("cut-off");
    let config = common::config(&server.connect_string(), &scope).with_session_timeout(TTL);
    let me = name("holder");

    // The holder lives in its own runtime, dropped below without closing
    // its session: the TCP connection goes, the session stays until expiry.
    let holder_config = config.clone();
    let holder_name = me.clone();
    let (lifetime, renewed) = tokio::task::spawn_blocking(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let result = runtime.block_on(async move {
            let holder = ZooKeeperDcs::connect(holder_config).await.expect("connect");
            assert!(holder
                .acquire_leader(&holder_name, TTL)
                .await
                .expect("acquire"));
            let renewed = Instant::now();
            holder.renew_leader(&holder_name, TTL).await.expect("renew");
            let lifetime = holder.lock_lifetime().expect("a lock lifetime");
            // Leaked with its runtime: no close request is ever sent.
            std::mem::forget(holder);
            (lifetime, renewed)
        });
        runtime.shutdown_background();
        result
    })
    .await
    .expect("holder thread");
    assert_eq!(lifetime, MAX_SESSION, "reported lifetime");

    let other = ZooKeeperDcs::connect(config).await.expect("connect");
    let freed_after = common::eventually("the lock freed", TTL * 2, || async {
        match other.acquire_leader(&name("other"), TTL).await {
            Ok(true) => Some(renewed.elapsed()),
            _ => None,
        }
    })
    .await;
    assert!(
        freed_after >= lifetime,
        "the lock was free {freed_after:?} after the renewal, before the reported lifetime \
         {lifetime:?}"
    );
    // The server expires sessions on 2 s ticks; and never at the ttl.
    assert!(
        freed_after < lifetime + Duration::from_secs(3),
        "the lock was free only {freed_after:?} after the renewal (lifetime {lifetime:?})"
    );
}
