//! An idle member's loop (publish an unchanged record) writes nothing to
//! ZooKeeper: the record keeps its version (no new zxid, no watch event for
//! every other member), and stays alive as long as it is published.

mod common;

use std::time::{Duration, Instant};

use matriarch_dcs::Dcs;
use matriarch_model::{Member, MemberName, Version};
use matriarch_zookeeper::ZooKeeperDcs;

fn member(text: &str) -> Member {
    let name = MemberName::new(text).expect("valid member name");
    Member::new(name, "postgres://h:5432/postgres", "http://h:8008/patroni")
}

async fn member_version(observer: &ZooKeeperDcs, name: &str) -> Version {
    let view = observer.read_view().await.expect("read");
    view.members
        .get(name)
        .unwrap_or_else(|| panic!("member {name} is gone: {view:?}"))
        .as_ref()
        .expect("a readable member")
        .version
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unchanged_member_records_are_not_rewritten_and_stay_alive() {
    let server = common::shared_server();
    let scope = common::unique_scope("idle");
    let config = common::config(&server.connect_string(), &scope);
    let client = common::connect(&config).await;
    let observer = ZooKeeperDcs::connect(config).await.expect("connect");
    let mut record = member("idle");
    client
        .publish_member(&record, common::TTL)
        .await
        .expect("publish");
    let first = member_version(&observer, "idle").await;

    // Idle loops for twice the TTL: the record outlives it, unwritten.
    let until = Instant::now() + common::TTL * 2;
    let mut loops = 0;
    while Instant::now() < until {
        client
            .publish_member(&record, common::TTL)
            .await
            .expect("publish unchanged");
        loops += 1;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(
        member_version(&observer, "idle").await,
        first,
        "{loops} publications of an unchanged record rewrote it"
    );

    // A change is written.
    record.tags.failover_priority = 7;
    client
        .publish_member(&record, common::TTL)
        .await
        .expect("publish changed");
    let view = observer.read_view().await.expect("read");
    let changed = view.members["idle"].as_ref().expect("a readable member");
    assert_ne!(changed.version, first, "a changed record was not written");
    assert_eq!(changed.value.tags.failover_priority, 7);

    // A record deleted behind the client's back is written again.
    let raw = common::raw_client(&server.connect_string()).await;
    let path = format!("{}/service/{scope}/members/idle", common::CHROOT);
    raw.delete(&path, None)
        .await
        .expect("delete the member znode");
    client
        .publish_member(&record, common::TTL)
        .await
        .expect("publish after a delete");
    assert_eq!(
        observer.read_view().await.expect("read").members["idle"]
            .as_ref()
            .expect("a readable member")
            .value
            .tags
            .failover_priority,
        7
    );
}
