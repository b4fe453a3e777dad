//! The ELB router against moto: after a failover the writer target group
//! holds exactly the new primary.

mod common;

#[path = "../../matriarch-elb/tests/common/mod.rs"]
mod elb_lab;

use std::time::Duration;

use common::{serial, wait_for, Cluster, DcsSpec, Options};
use matriarch_testkit::{EtcdServer, MotoServer};

#[test]
fn the_elb_writer_group_follows_a_failover() {
    let _serial = serial();
    let etcd = EtcdServer::start().expect("etcd");
    let moto = MotoServer::start().expect("moto (run `cargo xtask deps`)");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let lab = runtime.block_on(elb_lab::lab(&moto));
    let elb = elb_lab::client(&moto);
    let options = Options {
        distinct_ips: true,
        extra: format!(
            "router:\n  elb:\n    writer_target_group_arn: {}\n    reader_target_group_arn: {}\n    region: {}\n    endpoint_url: {}\n    availability_zone: all\n",
            lab.writer_arn,
            lab.reader_arn,
            elb_lab::REGION,
            moto.endpoint_url()
        ),
        ..Options::default()
    };
    let mut cluster = Cluster::configure(3, DcsSpec::Etcd(etcd.client_url()), options);
    for node in &mut cluster.nodes {
        node.start(&[
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
        ]);
    }
    let old = cluster.wait_healthy(2, Duration::from_secs(60));
    let addresses: Vec<String> = cluster
        .nodes
        .iter()
        .map(|n| format!("{}:{}", n.pg_host, n.pg_port))
        .collect();
    let writer_is = |i: usize| {
        let want = vec![addresses[i].clone()];
        wait_for(Duration::from_secs(30), || {
            (runtime.block_on(elb_lab::targets(&elb, &lab.writer_arn)) == want).then_some(())
        })
        .is_some()
    };
    assert!(
        writer_is(old),
        "writer group: {:?}\n{}",
        runtime.block_on(elb_lab::targets(&elb, &lab.writer_arn)),
        cluster.logs()
    );
    cluster.nodes[old].kill_agent();
    cluster.nodes[old].kill_postgres();
    let new = wait_for(Duration::from_secs(30), || {
        cluster.primary().filter(|p| *p != old)
    })
    .unwrap_or_else(|| panic!("no failover\n{}", cluster.logs()));
    assert!(
        writer_is(new),
        "writer group: {:?}\n{}",
        runtime.block_on(elb_lab::targets(&elb, &lab.writer_arn)),
        cluster.logs()
    );
}
