//! Shared setup for the moto tests: a VPC with two subnets (EC2 over plain HTTP,
//! to keep aws-sdk-ec2 out of the build), a network load balancer, and TCP target
//! groups of type ip made with the ELBv2 SDK.

#![allow(dead_code)]

use std::time::Duration;

use matriarch_elb::sdk;
use matriarch_elb::ElbRouterConfig;
pub(crate) use matriarch_router::conformance::{endpoints, routes};
use matriarch_router::Routes;
use matriarch_testkit::{http_request_timeout, MotoServer};
use sdk::types::{
    Action, ActionTypeEnum, LoadBalancerSchemeEnum, LoadBalancerTypeEnum, ProtocolEnum,
    TargetTypeEnum,
};

pub(crate) const REGION: &str = "us-east-1";

/// How long an EC2 call of the setup may take: moto loads a service's backend
/// on its first call, which took over 5 s on a loaded 2-core machine.
const EC2_CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// One EC2 query-protocol call with a fake SigV4 header (moto routes on the
/// service in the credential scope), as in the testkit's smoke test.
fn ec2_call(endpoint: &str, body: &str) -> String {
    let auth = "AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/ec2/aws4_request, \
                SignedHeaders=host;x-amz-date, Signature=0000";
    let response = http_request_timeout(
        "POST",
        &format!("{endpoint}/"),
        &[
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("X-Amz-Date", "20260101T000000Z"),
            ("Authorization", auth),
        ],
        format!("{body}&Version=2016-11-15").as_bytes(),
        EC2_CALL_TIMEOUT,
    )
    .unwrap_or_else(|e| panic!("EC2 call `{body}`: {e}"));
    let text = response.body_text();
    assert_eq!(response.status, 200, "EC2 call `{body}`: {text}");
    text
}

fn xml_value(xml: &str, tag: &str) -> String {
    let open = format!("<{tag}>");
    let start = xml
        .find(&open)
        .unwrap_or_else(|| panic!("no <{tag}> in {xml}"))
        + open.len();
    let len = xml[start..]
        .find(&format!("</{tag}>"))
        .unwrap_or_else(|| panic!("no </{tag}> in {xml}"));
    xml[start..start + len].to_owned()
}

/// The static credentials moto accepts (never the environment's).
pub(crate) fn test_credentials() -> sdk::config::Credentials {
    sdk::config::Credentials::new("testing", "testing", None, None, "test")
}

/// An SDK client for the test's own setup and checks.
pub(crate) fn client(moto: &MotoServer) -> sdk::Client {
    let config = sdk::Config::builder()
        .behavior_version(sdk::config::BehaviorVersion::latest())
        .region(sdk::config::Region::new(REGION))
        .endpoint_url(moto.endpoint_url())
        .http_client(aws_smithy_http_client::Builder::new().build_http())
        .credentials_provider(test_credentials())
        .build();
    sdk::Client::from_conf(config)
}

/// The load balancer and target groups of one test.
pub(crate) struct Lab {
    pub writer_arn: String,
    pub reader_arn: String,
}

/// Creates a VPC, two subnets, an internal network load balancer with a TCP
/// listener forwarding to the writer group, and writer and reader TCP target
/// groups of type ip.
pub(crate) async fn lab(moto: &MotoServer) -> Lab {
    lab_named(moto, "pg").await
}

/// [`lab`] with names starting with `prefix` (the load balancer `prefix`, the
/// groups `prefix-writer` and `prefix-reader`), so that several labs can
/// share one moto server.
pub(crate) async fn lab_named(moto: &MotoServer, prefix: &str) -> Lab {
    let url = moto.endpoint_url();
    let vpc = xml_value(
        &ec2_call(&url, "Action=CreateVpc&CidrBlock=10.0.0.0/16"),
        "vpcId",
    );
    let subnets: Vec<String> = [("10.0.1.0/24", "us-east-1a"), ("10.0.2.0/24", "us-east-1b")]
        .iter()
        .map(|(cidr, zone)| {
            xml_value(
                &ec2_call(
                    &url,
                    &format!(
                        "Action=CreateSubnet&VpcId={vpc}&CidrBlock={cidr}&AvailabilityZone={zone}"
                    ),
                ),
                "subnetId",
            )
        })
        .collect();
    let elb = client(moto);
    let lb = elb
        .create_load_balancer()
        .name(prefix)
        .r#type(LoadBalancerTypeEnum::Network)
        .scheme(LoadBalancerSchemeEnum::Internal)
        .set_subnets(Some(subnets))
        .send()
        .await
        .expect("create load balancer");
    let lb_arn = lb.load_balancers()[0]
        .load_balancer_arn()
        .expect("load balancer ARN")
        .to_owned();
    let mut arns = Vec::new();
    for role in ["writer", "reader"] {
        let group = elb
            .create_target_group()
            .name(format!("{prefix}-{role}"))
            .protocol(ProtocolEnum::Tcp)
            .port(5432)
            .vpc_id(&vpc)
            .target_type(TargetTypeEnum::Ip)
            .health_check_protocol(ProtocolEnum::Http)
            .health_check_port("8008")
            .health_check_path("/primary")
            .send()
            .await
            .expect("create target group");
        arns.push(
            group.target_groups()[0]
                .target_group_arn()
                .expect("target group ARN")
                .to_owned(),
        );
    }
    elb.create_listener()
        .load_balancer_arn(&lb_arn)
        .protocol(ProtocolEnum::Tcp)
        .port(5432)
        .default_actions(
            Action::builder()
                .r#type(ActionTypeEnum::Forward)
                .target_group_arn(&arns[0])
                .build(),
        )
        .send()
        .await
        .expect("create listener");
    Lab {
        writer_arn: arns[0].clone(),
        reader_arn: arns[1].clone(),
    }
}

/// A router configuration for moto with short timeouts.
pub(crate) fn config(moto: &MotoServer, lab: &Lab) -> ElbRouterConfig {
    let mut config = ElbRouterConfig::new(&lab.writer_arn);
    config.reader_target_group_arn = Some(lab.reader_arn.clone());
    config.aws.region = Some(REGION.to_owned());
    config.aws.endpoint_url = Some(moto.endpoint_url());
    config
}

/// The targets registered in a group, as moto describes them.
pub(crate) async fn registered(elb: &sdk::Client, arn: &str) -> Vec<sdk::types::TargetDescription> {
    elb.describe_target_health()
        .target_group_arn(arn)
        .send()
        .await
        .expect("describe target health")
        .target_health_descriptions()
        .iter()
        .filter_map(|d| d.target().cloned())
        .collect()
}

/// The `ip:port` targets registered in a group, sorted.
pub(crate) async fn targets(elb: &sdk::Client, arn: &str) -> Vec<String> {
    let mut out: Vec<String> = registered(elb, arn)
        .await
        .iter()
        .map(|t| format!("{}:{}", t.id().unwrap_or("?"), t.port().unwrap_or(0)))
        .collect();
    out.sort();
    out
}

/// Asserts that exactly the `ip:port` targets `expected` (in any order) are
/// registered in the group `arn`.
pub(crate) async fn assert_targets(elb: &sdk::Client, arn: &str, expected: &[&str]) {
    assert_eq!(
        targets(elb, arn).await,
        strings(expected),
        "targets of {arn}"
    );
}

/// Writers to member `a` at 10.0.1.10, no readers.
pub(crate) fn only_a() -> Routes {
    let [a] = endpoints(["10.0.1.10"]);
    routes(&a, &[])
}

pub(crate) fn strings(list: &[&str]) -> Vec<String> {
    let mut out: Vec<String> = list.iter().map(|s| (*s).to_owned()).collect();
    out.sort();
    out
}
