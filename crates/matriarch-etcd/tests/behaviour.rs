//! EtcdDcs behaviour beyond the shared contract: third-party garbage in the
//! scope, how the one lease is kept, endpoints that are down.

mod common;

use std::time::{Duration, Instant};

use common::{
    blocking, dcs, eventually, holder_and_rival, member, name, own_server, publish, raw_client,
    unique_scope,
};
use matriarch_dcs::{Dcs, DcsError, Expected};
use matriarch_etcd::EtcdDcs;
use matriarch_model::{ClusterConfig, Member, Record};
use matriarch_testkit::{free_port, EtcdServer};

const TTL: Duration = Duration::from_secs(2);
const RETRY: Duration = Duration::from_secs(1);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn third_party_garbage_is_an_error_for_its_key_only() {
    let (_server, urls, scope) = own_server("garbage");
    let client = dcs(&urls, &scope, RETRY);
    publish(&client, "good", TTL).await;
    client
        .write(&Record::Config(ClusterConfig::default()), Expected::Absent)
        .await
        .expect("write config");
    let mut raw = raw_client(&urls).await;
    let put = |key: &str| format!("/service/{scope}/{key}");
    let garbage: [(&str, &[u8]); 6] = [
        ("members/wrong-type", br#"{"conn_url": "postgres://x", "api_url": "http://x", "state": "running", "role": "replica", "timeline": "2"}"#),
        ("members/bad name", b"{}"),
        ("status", b"{not json"),
        ("leader", b"\xff\xfe"),
        ("initialize", b"not-a-number"),
        // Keys matriarch does not use are not errors.
        ("optime/leader", b"whatever"),
    ];
    for (key, value) in garbage {
        raw.put(put(key), value, None).await.expect("raw put");
    }
    // Another cluster's keys are not read at all.
    raw.put(format!("/service/{scope}-other/leader"), "x y", None)
        .await
        .expect("raw put");

    let view = client
        .read_view()
        .await
        .expect("a read with garbage still succeeds");
    let mut bad: Vec<&str> = view.errors().iter().map(|e| e.key.as_str()).collect();
    bad.sort_unstable();
    assert_eq!(
        bad,
        [
            "initialize",
            "leader",
            "members/bad name",
            "members/wrong-type",
            "status"
        ]
    );
    assert_eq!(
        view.members["good"].as_ref().expect("good member").value,
        member("good")
    );
    assert!(view.config.as_ref().expect("config").is_ok());
    assert!(view.leader_name().is_none());
    // An unreadable leader key is not a free lock, and nobody's to renew.
    assert!(!client
        .acquire_leader(&name("good"), TTL)
        .await
        .expect("acquire"));
    let err = client
        .renew_leader(&name("good"), TTL)
        .await
        .expect_err("renew");
    assert!(
        matches!(err, DcsError::LockNotHeld { holder: None, .. }),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_the_member_record_does_not_extend_an_unrenewed_lock() {
    let (_server, urls, scope) = own_server("no-extend");
    let (holder, other) = holder_and_rival(&urls, &scope, RETRY, TTL).await;
    let acquired = Instant::now();
    // The holder keeps publishing (its loop runs) but stops renewing.
    let taken = loop {
        publish(&holder, "holder", TTL).await;
        if other
            .acquire_leader(&name("other"), TTL)
            .await
            .expect("acquire")
        {
            break acquired.elapsed();
        }
        assert!(
            acquired.elapsed() < TTL * 3,
            "publishing kept the lock alive"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert!(
        taken >= TTL - Duration::from_millis(100),
        "the lock expired early: {taken:?}"
    );
    // The member record comes back with the next publication.
    publish(&holder, "holder", TTL).await;
    let view = other.read_view().await.expect("read");
    assert!(view.members.contains_key("holder"));
    assert_eq!(view.leader_name(), Some(&name("other")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_member_takes_back_its_own_lock_and_keeps_it() {
    let (_server, urls, scope) = own_server("restarted");
    let me = name("node1");
    let before = dcs(&urls, &scope, RETRY);
    assert!(before.acquire_leader(&me, TTL).await.expect("acquire"));
    let old_lease = before.lease_id().await.expect("lease");
    drop(before); // the process dies; its lease runs out on its own

    let after = dcs(&urls, &scope, RETRY);
    assert!(after
        .acquire_leader(&me, TTL)
        .await
        .expect("acquire by the same member"));
    assert_ne!(after.lease_id().await, Some(old_lease));
    let observer = dcs(&urls, &scope, RETRY);
    let until = Instant::now() + TTL * 2;
    while Instant::now() < until {
        tokio::time::sleep(TTL / 3).await;
        after.renew_leader(&me, TTL).await.expect("renew");
    }
    let view = observer.read_view().await.expect("read");
    assert_eq!(
        view.leader_name(),
        Some(&me),
        "the lock went with the old lease"
    );
    assert!(!observer
        .acquire_leader(&name("other"), TTL)
        .await
        .expect("acquire"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_with_a_longer_ttl_extends_the_lock_to_it() {
    let (_server, urls, scope) = own_server("ttl-change");
    let (holder, other) = holder_and_rival(&urls, &scope, RETRY, TTL).await;
    let longer = Duration::from_secs(6);
    holder
        .renew_leader(&name("holder"), longer)
        .await
        .expect("renew with a longer ttl");
    tokio::time::sleep(TTL + Duration::from_millis(1500)).await;
    assert!(
        !other
            .acquire_leader(&name("other"), TTL)
            .await
            .expect("acquire"),
        "the lock expired with the old ttl"
    );
    holder
        .renew_leader(&name("holder"), longer)
        .await
        .expect("renew");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etcd_that_is_not_there_is_unreachable_in_time() {
    let port = free_port().expect("free port");
    let urls = [format!("http://127.0.0.1:{port}")];
    let client = dcs(&urls, &unique_scope("nobody"), RETRY);
    let started = Instant::now();
    let results: Vec<(&str, Result<(), DcsError>)> = vec![
        ("read_view", client.read_view().await.map(|_| ())),
        (
            "acquire_leader",
            client.acquire_leader(&name("a"), TTL).await.map(|_| ()),
        ),
        ("renew_leader", client.renew_leader(&name("a"), TTL).await),
        (
            "watch",
            client.watch(0, Duration::from_secs(30)).await.map(|_| ()),
        ),
    ];
    for (what, result) in results {
        let err = result.expect_err(what);
        assert!(err.is_unreachable(), "{what} gave {err}");
        assert!(
            err.to_string().contains(&port.to_string()) || matches!(err, DcsError::Timeout { .. }),
            "{err}"
        );
    }
    assert!(
        started.elapsed() < RETRY * 4 + Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_that_is_down_is_skipped() {
    let server = blocking(EtcdServer::start).expect("start etcd");
    let dead = format!("http://127.0.0.1:{}", free_port().expect("free port"));
    let urls = [dead, server.client_url()];
    let scope = unique_scope("skip-dead");
    let client = dcs(&urls, &scope, Duration::from_secs(2));
    let started = Instant::now();
    assert!(client
        .acquire_leader(&name("a"), TTL)
        .await
        .expect("acquire past a dead endpoint"));
    client.renew_leader(&name("a"), TTL).await.expect("renew");
    let view = client.read_view().await.expect("read");
    assert_eq!(view.leader_name(), Some(&name("a")));
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    // It stays on the live endpoint.
    eventually("calls are fast again", Duration::from_secs(5), || async {
        let call = Instant::now();
        client.read_view().await.expect("read");
        (call.elapsed() < Duration::from_millis(200)).then_some(())
    })
    .await;
}

/// etcd's current revision, as a third party reads it.
async fn revision(raw: &mut etcd_client::Client) -> i64 {
    raw.get("/", None)
        .await
        .expect("raw get")
        .header()
        .map(|header| header.revision())
        .expect("a response header")
}

/// An idle cluster's loop (renew the lock, publish unchanged records) makes
/// no etcd revision: the lock and the member keys are kept alive by lease
/// keep-alives, and a record is rewritten only when it changed or is gone.
/// (Every loop was a put per member: 4 revisions a second for an idle
/// 3-member cluster at loop_wait 1 s, against 0.15 for Patroni.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_loops_write_no_revisions_and_keep_every_key_alive() {
    let (_server, urls, scope) = own_server("idle");
    let leader = dcs(&urls, &scope, RETRY);
    let replica = dcs(&urls, &scope, RETRY);
    let observer = dcs(&urls, &scope, RETRY);
    let mut raw = raw_client(&urls).await;
    let (me, other) = (name("leader"), name("replica"));
    assert!(leader.acquire_leader(&me, TTL).await.expect("acquire"));
    publish(&leader, "leader", TTL).await;
    publish(&replica, "replica", TTL).await;

    // Idle loops for twice the TTL: the keys outlive it, and nothing is written.
    let before = revision(&mut raw).await;
    let until = Instant::now() + TTL * 2;
    let mut loops = 0;
    while Instant::now() < until {
        leader.renew_leader(&me, TTL).await.expect("renew");
        publish(&leader, "leader", TTL).await;
        publish(&replica, "replica", TTL).await;
        loops += 1;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let after = revision(&mut raw).await;
    assert_eq!(
        after - before,
        0,
        "{loops} idle loops wrote {} revisions",
        after - before
    );
    let view = observer.read_view().await.expect("read");
    assert_eq!(view.leader_name(), Some(&me));
    assert!(view.members.contains_key("leader") && view.members.contains_key("replica"));
    assert_eq!(leader.lock_lifetime(), Some(TTL));

    // The lock is still exclusive and still expires TTL after the last renewal.
    assert!(!observer
        .acquire_leader(&other, TTL)
        .await
        .expect("acquire by another"));
    let err = replica
        .renew_leader(&other, TTL)
        .await
        .expect_err("a renewal by a non-holder");
    assert!(matches!(err, DcsError::LockNotHeld { .. }), "{err}");

    // A change is written, at once.
    let mut changed = member("replica");
    changed.received_lsn = Some(matriarch_model::Lsn(0x300_0000));
    let read_back = publish_and_read(&replica, &changed, &observer).await;
    assert_eq!(read_back.as_ref(), Some(&changed));
    // A record deleted behind the member's back comes back with its next
    // publication, though unchanged.
    raw.delete(format!("/service/{scope}/members/replica"), None)
        .await
        .expect("raw delete");
    let read_back = publish_and_read(&replica, &changed, &observer).await;
    assert_eq!(read_back.as_ref(), Some(&changed), "the record stayed gone");

    // Without renewals the lock goes TTL after the last one, though the
    // holder keeps publishing its (unchanged) record.
    leader.renew_leader(&me, TTL).await.expect("renew");
    let renewed = Instant::now();
    let taken = loop {
        publish(&leader, "leader", TTL).await;
        if observer.acquire_leader(&other, TTL).await.expect("acquire") {
            break renewed.elapsed();
        }
        assert!(renewed.elapsed() < TTL * 3, "the lock outlived its ttl");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        taken >= TTL - Duration::from_millis(100),
        "the lock expired early: {taken:?}"
    );
}

/// Publishes `record` through `client`, and the record of its name as
/// `observer` then reads it.
async fn publish_and_read(client: &EtcdDcs, record: &Member, observer: &EtcdDcs) -> Option<Member> {
    client.publish_member(record, TTL).await.expect("publish");
    let view = observer.read_view().await.expect("read");
    let entry = view.members.get(record.name.as_str())?;
    Some(entry.as_ref().expect("decodes").value.clone())
}
