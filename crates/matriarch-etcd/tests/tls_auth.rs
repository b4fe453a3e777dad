//! TLS with client certificates and etcd authentication, against the test
//! kit's etcd over TLS ([`TlsEtcdServer`], killed on drop).

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{blocking, lead, name, unique_scope};
use etcd_client::{Certificate, ConnectOptions, Identity, Permission, TlsOptions};
use matriarch_dcs::{Dcs, DcsError, Expected, WatchOutcome};
use matriarch_etcd::{EtcdConfig, EtcdConfigError, EtcdDcs, EtcdTls};
use matriarch_model::{LeaderStatus, Record};
use matriarch_testkit::TlsEtcdServer;

const PASSWORD: &str = "s3cret-Pa55word";
const TTL: Duration = Duration::from_secs(2);

/// The test kit's etcd over TLS, with client certificates for `root` and
/// `matriarch`, and the clients this file makes for it.
struct TlsEtcd {
    server: TlsEtcdServer,
    url: String,
}

impl TlsEtcd {
    fn path(&self, file: &str) -> PathBuf {
        self.server.path(file)
    }

    fn start() -> TlsEtcd {
        let server = TlsEtcdServer::start(&["root", "matriarch"]).expect("etcd over TLS");
        TlsEtcd {
            url: server.url().to_owned(),
            server,
        }
    }

    fn log(&self) -> String {
        self.server.log()
    }

    fn tls(&self, client: Option<&str>) -> EtcdTls {
        let tls = EtcdTls::new(self.path("ca.pem"));
        match client {
            Some(cn) => tls.with_client_identity(
                self.path(&format!("{cn}.pem")),
                self.path(&format!("{cn}-key.pem")),
            ),
            None => tls,
        }
    }

    /// An administrator's client: its certificate's CN is `root`, which etcd
    /// takes as the user once authentication is on.
    async fn admin(&self) -> etcd_client::Client {
        let read = |file: &str| std::fs::read(self.path(file)).expect("read certificate");
        let tls = TlsOptions::new()
            .ca_certificate(Certificate::from_pem(read("ca.pem")))
            .identity(Identity::from_pem(read("root.pem"), read("root-key.pem")));
        let options = ConnectOptions::new()
            .with_tls(tls)
            .with_timeout(Duration::from_secs(2));
        let started = Instant::now();
        loop {
            if let Ok(mut client) =
                etcd_client::Client::connect([self.url.as_str()], Some(options.clone())).await
            {
                if client.status().await.is_ok() {
                    return client;
                }
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "TLS etcd did not come up:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Adds the etcd user `user` with `password` and grants it `role`.
async fn add_user(admin: &mut etcd_client::Client, user: &str, password: &str, role: &str) {
    admin
        .user_add(user, password, None)
        .await
        .unwrap_or_else(|e| panic!("add user {user}: {e}"));
    admin
        .user_grant_role(user, role)
        .await
        .unwrap_or_else(|e| panic!("grant {role} to {user}: {e}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_client_certificates_and_a_password() {
    let etcd = blocking(TlsEtcd::start);
    let scope = unique_scope("tls");
    let mut admin = etcd.admin().await;
    add_user(&mut admin, "root", "root-password", "root").await;
    admin.role_add("matriarch").await.expect("add role");
    let prefix = format!("/service/{scope}/");
    admin
        .role_grant_permission(
            "matriarch",
            Permission::read_write(prefix.as_str()).with_prefix(),
        )
        .await
        .expect("grant the scope");
    add_user(&mut admin, "matriarch", PASSWORD, "matriarch").await;
    admin.auth_enable().await.expect("enable auth");

    let config = |scope: &str, password: &str, cn: Option<&str>| {
        EtcdConfig::new([etcd.url.clone()], scope)
            .with_credentials("matriarch", password)
            .with_tls(etcd.tls(cn))
            .with_retry_timeout(Duration::from_secs(2))
    };
    let good = config(&scope, PASSWORD, Some("matriarch"));
    let node = EtcdDcs::new(&good).expect("config");
    let peer = EtcdDcs::new(&good).expect("config");
    for text in [format!("{good:?}"), format!("{node:?}")] {
        assert!(!text.contains(PASSWORD), "the password shows in {text}");
    }

    // Everything works over TLS as the authenticated user.
    assert!(node.try_initialize().await.expect("initialize"));
    lead(&node, "n1", TTL).await;
    node.renew_leader(&name("n1"), TTL).await.expect("renew");
    let view = peer.read_view().await.expect("read");
    assert_eq!(view.leader_name(), Some(&name("n1")));
    assert!(view.members.contains_key("n1") && view.initialize.is_some());
    let revision = view.revision;
    let writer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        node.write(&Record::Status(LeaderStatus::default()), Expected::Any)
            .await
            .map(|_| node)
    });
    let outcome = peer
        .watch(revision, Duration::from_secs(10))
        .await
        .expect("watch");
    assert_eq!(outcome, WatchOutcome::Changed);
    let node = writer.await.expect("writer").expect("write");
    node.release_leader(&name("n1")).await.expect("release");

    // A wrong password is refused at once, and is not "unreachable".
    let wrong = EtcdDcs::new(&config(&scope, "wrong", Some("matriarch"))).expect("config");
    let started = Instant::now();
    let err = wrong.read_view().await.expect_err("wrong password");
    assert!(!err.is_unreachable(), "{err}");
    assert!(matches!(err, DcsError::Backend { .. }), "{err}");
    assert!(
        !err.to_string().contains("wrong"),
        "the password shows in {err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );

    // Outside its granted prefix the user may do nothing.
    let elsewhere = EtcdDcs::new(&config(
        &unique_scope("not-granted"),
        PASSWORD,
        Some("matriarch"),
    ))
    .expect("config");
    let err = elsewhere
        .read_view()
        .await
        .expect_err("read outside the grant");
    assert!(matches!(err, DcsError::Backend { .. }), "{err}");
    assert!(err.to_string().contains("permission denied"), "{err}");

    // Without a client certificate the server refuses the handshake: an
    // error within retry_timeout, not a hang.
    let anonymous = EtcdDcs::new(&config(&scope, PASSWORD, None)).expect("config");
    let started = Instant::now();
    let err = anonymous
        .read_view()
        .await
        .expect_err("no client certificate");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    eprintln!("without a client certificate: {err}");

    // A certificate file that cannot be read is a configuration error naming it.
    let mut broken = good.clone();
    if let Some(tls) = broken.tls.as_mut() {
        tls.ca_file = etcd.path("missing-ca.pem");
    }
    let err = EtcdDcs::new(&broken).expect_err("missing CA file");
    assert!(matches!(err, EtcdConfigError::ReadFile { .. }), "{err}");
    assert!(err.to_string().contains("missing-ca.pem"), "{err}");
}
