//! TLS with client certificates and etcd authentication, against an etcd
//! started here: the test kit's `EtcdServer` has no TLS or extra flags, so
//! this file launches its own process (killed on drop).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{blocking, member, name, unique_scope};
use etcd_client::{Certificate, ConnectOptions, Identity, Permission, TlsOptions};
use matriarch_dcs::{Dcs, DcsError, Expected, WatchOutcome};
use matriarch_etcd::{EtcdConfig, EtcdConfigError, EtcdDcs, EtcdTls};
use matriarch_model::{LeaderStatus, Record};
use matriarch_testkit::free_port;

const PASSWORD: &str = "s3cret-Pa55word";
const TTL: Duration = Duration::from_secs(2);

fn openssl(dir: &Path, args: &[&str]) {
    let output = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("run openssl (it is installed with the system)");
    assert!(
        output.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A CA, a server certificate for 127.0.0.1, and client certificates
/// (`<cn>.pem` / `<cn>-key.pem`) for each common name.
fn make_certificates(dir: &Path, clients: &[&str]) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend([
        "-keyout",
        "ca-key.pem",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=matriarch test CA",
    ]);
    openssl(dir, &ca);
    let sign = |cn: &str, ext: &str| {
        std::fs::write(dir.join(format!("{cn}.ext")), ext).expect("write extensions");
        let (key, csr, pem) = (
            format!("{cn}-key.pem"),
            format!("{cn}.csr"),
            format!("{cn}.pem"),
        );
        let subject = format!("/CN={cn}");
        let mut req = vec!["req"];
        req.extend(ec);
        req.extend(["-keyout", &key, "-out", &csr, "-subj", &subject]);
        openssl(dir, &req);
        let ext_file = format!("{cn}.ext");
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca-key.pem",
                "-CAcreateserial",
                "-out",
                &pem,
                "-days",
                "2",
                "-extfile",
                &ext_file,
            ],
        );
    };
    sign(
        "server",
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n",
    );
    for cn in clients {
        sign(cn, "extendedKeyUsage=clientAuth\n");
    }
}

/// An etcd serving clients over TLS only, requiring client certificates.
struct TlsEtcd {
    child: Child,
    url: String,
    dir: tempfile::TempDir,
}

impl Drop for TlsEtcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl TlsEtcd {
    fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    fn start() -> TlsEtcd {
        let dir = tempfile::Builder::new()
            .prefix("matriarch-etcd-tls-")
            .tempdir()
            .expect("temporary directory");
        make_certificates(dir.path(), &["root", "matriarch"]);
        let (client_port, peer_port) = (free_port().expect("port"), free_port().expect("port"));
        let url = format!("https://127.0.0.1:{client_port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        let log = std::fs::File::create(dir.path().join("etcd.log")).expect("log file");
        let binary = std::env::var_os("MATRIARCH_ETCD").unwrap_or_else(|| "etcd".into());
        let p = |file: &str| dir.path().join(file);
        let child = Command::new(binary)
            .arg("--name=tls")
            .arg(format!("--data-dir={}", p("data").display()))
            .arg(format!("--listen-client-urls={url}"))
            .arg(format!("--advertise-client-urls={url}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=tls={peer}"))
            .arg(format!("--cert-file={}", p("server.pem").display()))
            .arg(format!("--key-file={}", p("server-key.pem").display()))
            .arg(format!("--trusted-ca-file={}", p("ca.pem").display()))
            .arg("--client-cert-auth")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("start etcd (cargo xtask deps installs it)");
        TlsEtcd { child, url, dir }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.path("etcd.log")).unwrap_or_default()
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_client_certificates_and_a_password() {
    let etcd = blocking(TlsEtcd::start);
    let scope = unique_scope("tls");
    let mut admin = etcd.admin().await;
    admin
        .user_add("root", "root-password", None)
        .await
        .expect("add root");
    admin
        .user_grant_role("root", "root")
        .await
        .expect("grant root");
    admin.role_add("matriarch").await.expect("add role");
    let prefix = format!("/service/{scope}/");
    admin
        .role_grant_permission(
            "matriarch",
            Permission::read_write(prefix.as_str()).with_prefix(),
        )
        .await
        .expect("grant the scope");
    admin
        .user_add("matriarch", PASSWORD, None)
        .await
        .expect("add user");
    admin
        .user_grant_role("matriarch", "matriarch")
        .await
        .expect("grant role");
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
    assert!(node
        .acquire_leader(&name("n1"), TTL)
        .await
        .expect("acquire"));
    node.publish_member(&member("n1"), TTL)
        .await
        .expect("publish");
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
