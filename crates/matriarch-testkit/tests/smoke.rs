//! Smoke tests: every service the testkit starts really answers its own client.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use matriarch_testkit::{
    http_request_timeout, run_pg_program, BindServer, EtcdCluster, EtcdServer, MotoServer,
    PostgresServer, ZooKeeperServer,
};

#[tokio::test]
async fn etcd_single_member_put_get() {
    let etcd = EtcdServer::start().expect("start etcd");
    let mut client = etcd_client::Client::connect([etcd.client_url()], None)
        .await
        .expect("connect to etcd");
    client.put("smoke/key", "value", None).await.expect("put");
    let resp = client.get("smoke/key", None).await.expect("get");
    assert_eq!(resp.kvs().len(), 1);
    assert_eq!(resp.kvs()[0].value_str().expect("utf-8 value"), "value");
}

#[tokio::test]
async fn etcd_three_member_cluster_replicates_and_survives_leader_kill() {
    let cluster = EtcdCluster::start(3).expect("start etcd cluster");
    let urls = cluster.client_urls();
    assert_eq!(urls.len(), 3);

    let mut first = etcd_client::Client::connect([urls[0].clone()], None)
        .await
        .expect("connect to member 0");
    first
        .put("smoke/k", "v1", None)
        .await
        .expect("put on member 0");
    let mut third = etcd_client::Client::connect([urls[2].clone()], None)
        .await
        .expect("connect to member 2");
    let resp = third.get("smoke/k", None).await.expect("get on member 2");
    assert_eq!(resp.kvs()[0].value_str().expect("utf-8 value"), "v1");

    // Kill the leader, write through a survivor, restart the old leader and read there.
    let leader = cluster.leader().expect("find leader");
    cluster.member(leader).kill();
    assert!(cluster.member(leader).pid().is_none());
    let survivor = (leader + 1) % 3;
    let mut client = etcd_client::Client::connect([urls[survivor].clone()], None)
        .await
        .expect("connect to survivor");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match client.put("smoke/k", "v2", None).await {
            Ok(_) => break,
            Err(e) if Instant::now() < deadline => {
                eprintln!("put after leader kill: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("put after leader kill never succeeded: {e}"),
        }
    }
    cluster
        .member(leader)
        .restart()
        .expect("restart old leader");
    cluster
        .member(leader)
        .wait_healthy(Duration::from_secs(30))
        .expect("old leader healthy again");
    let mut back = etcd_client::Client::connect([urls[leader].clone()], None)
        .await
        .expect("connect to restarted member");
    let resp = back
        .get("smoke/k", None)
        .await
        .expect("get on restarted member");
    assert_eq!(resp.kvs()[0].value_str().expect("utf-8 value"), "v2");
}

#[tokio::test]
async fn zookeeper_create_get_and_restart() {
    use zookeeper_client as zk;
    let server = ZooKeeperServer::start().expect("start ZooKeeper");
    let client = zk::Client::connect(&server.connect_string())
        .await
        .expect("connect to ZooKeeper");
    let opts = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
    client
        .create("/smoke", b"hello", &opts)
        .await
        .expect("create /smoke");
    let (data, _stat) = client.get_data("/smoke").await.expect("get /smoke");
    assert_eq!(data, b"hello");
    drop(client);

    // Data survives a restart on the same port and data directory.
    server.restart().expect("restart ZooKeeper");
    let client = zk::Client::connect(&server.connect_string())
        .await
        .expect("reconnect to ZooKeeper");
    let (data, _stat) = client
        .get_data("/smoke")
        .await
        .expect("get /smoke after restart");
    assert_eq!(data, b"hello");
}

#[tokio::test]
async fn postgres_select_one() {
    let pg = PostgresServer::start().expect("start PostgreSQL");
    let (client, connection) =
        tokio_postgres::connect(&pg.connection_string(), tokio_postgres::NoTls)
            .await
            .expect("connect to PostgreSQL");
    let conn = tokio::spawn(connection);
    let row = client.query_one("SELECT 1", &[]).await.expect("SELECT 1");
    let one: i32 = row.get(0);
    assert_eq!(one, 1);
    drop(client);
    conn.await
        .expect("join connection task")
        .expect("connection ended cleanly");

    // The helper runs server programs as the right OS user; checksums are on.
    let out = run_pg_program("pg_controldata", [pg.data_dir()]).expect("pg_controldata");
    let text = String::from_utf8_lossy(&out.stdout);
    let checksums = text
        .lines()
        .find(|l| l.starts_with("Data page checksum version:"))
        .expect("checksum line in pg_controldata output");
    assert!(checksums.trim_end().ends_with('1'), "{checksums}");
}

#[test]
fn bind_answers_and_accepts_only_signed_updates() {
    let dns = BindServer::start().expect("start BIND");
    let name = format!("primary.{}", dns.zone());
    assert_eq!(
        dns.query_a(&name).expect("query primary"),
        vec![Ipv4Addr::new(127, 0, 0, 1)]
    );

    dns.nsupdate(&format!(
        "update delete {name}. A\nupdate add {name}. 5 A 127.0.0.2\nsend\n"
    ))
    .expect("signed update");
    assert_eq!(
        dns.query_a(&name).expect("query after update"),
        vec![Ipv4Addr::new(127, 0, 0, 2)]
    );

    let err = dns
        .nsupdate_unsigned(&format!(
            "update delete {name}. A\nupdate add {name}. 5 A 127.0.0.3\n"
        ))
        .expect_err("unsigned update must be refused");
    assert!(err.to_string().contains("REFUSED"), "{err}");
    assert_eq!(
        dns.query_a(&name).expect("query after refused update"),
        vec![Ipv4Addr::new(127, 0, 0, 2)]
    );
}

/// One AWS query-protocol call over plain HTTP with a fake SigV4 header (moto
/// routes on the service name in the credential scope); the body of its 200 answer.
fn aws_call(endpoint: &str, service: &str, body: &str) -> String {
    let auth = format!(
        "AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/{service}/aws4_request, \
         SignedHeaders=host;x-amz-date, Signature=0000"
    );
    // moto imports a service's backend at its first call: on a loaded 2-core
    // machine that took over 5 s (CI failed `no answer within 5s`). This test
    // checks what moto answers, not how fast.
    let response = http_request_timeout(
        "POST",
        &format!("{endpoint}/"),
        &[
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("X-Amz-Date", "20260101T000000Z"),
            ("Authorization", &auth),
        ],
        body.as_bytes(),
        Duration::from_secs(60),
    )
    .unwrap_or_else(|e| panic!("{service} call `{body}`: {e}"));
    let answer = response.body_text();
    assert_eq!(response.status, 200, "{service} call `{body}`: {answer}");
    answer
}

fn xml_value<'a>(xml: &'a str, tag: &str) -> Option<&'a str> {
    let open = format!("<{tag}>");
    let start = xml.find(&open)? + open.len();
    let len = xml[start..].find(&format!("</{tag}>"))?;
    Some(&xml[start..start + len])
}

#[test]
fn moto_elbv2_over_plain_http() {
    let moto = MotoServer::start().expect("start moto");
    let url = moto.endpoint_url();

    let body = aws_call(
        &url,
        "elasticloadbalancing",
        "Action=DescribeLoadBalancers&Version=2015-12-01",
    );
    assert!(body.contains("DescribeLoadBalancersResponse"), "{body}");

    let body = aws_call(
        &url,
        "ec2",
        "Action=CreateVpc&CidrBlock=10.0.0.0/16&Version=2016-11-15",
    );
    let vpc = xml_value(&body, "vpcId").expect("vpcId in CreateVpc response");

    let body = aws_call(
        &url,
        "elasticloadbalancing",
        &format!(
            "Action=CreateTargetGroup&Name=pg-primary&Protocol=TCP&Port=5432&TargetType=ip\
             &VpcId={vpc}&Version=2015-12-01"
        ),
    );
    assert!(body.contains("CreateTargetGroupResponse"), "{body}");
    assert!(xml_value(&body, "TargetGroupArn").is_some(), "{body}");

    moto.reset().expect("reset moto");
    let body = aws_call(
        &url,
        "elasticloadbalancing",
        "Action=DescribeTargetGroups&Version=2015-12-01",
    );
    assert!(
        !body.contains("pg-primary"),
        "reset kept the target group: {body}"
    );
}
