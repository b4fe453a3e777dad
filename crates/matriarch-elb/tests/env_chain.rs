//! `ElbRouter::new` takes credentials from the usual AWS chain: here the
//! environment variables (the only test in this binary, so setting them is safe).

mod common;

use common::{client, config, lab, only_a, strings, targets};
use matriarch_elb::ElbRouter;
use matriarch_router::Router;
use matriarch_testkit::MotoServer;

#[tokio::test]
async fn credentials_come_from_the_environment() {
    // SAFETY-free in edition 2021; no other thread of this binary reads the environment yet.
    std::env::set_var("AWS_ACCESS_KEY_ID", "testing");
    std::env::set_var("AWS_SECRET_ACCESS_KEY", "testing");
    std::env::remove_var("AWS_PROFILE");
    let moto = MotoServer::start().expect("start moto");
    let lab = lab(&moto).await;
    let router = ElbRouter::new(config(&moto, &lab)).await.expect("router");
    let debug = format!("{router:?}");
    assert!(!debug.contains("testing"), "{debug}");
    router
        .route(&only_a())
        .await
        .expect("route with environment credentials");
    assert_eq!(
        targets(&client(&moto), &lab.writer_arn).await,
        strings(&["10.0.1.10:5432"])
    );
}
