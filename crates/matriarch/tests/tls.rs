//! TLS end to end: a node whose etcd speaks only TLS with client
//! certificates, and whose REST API serves https and takes a client
//! certificate signed by its CA as authentication for changes.

mod common;

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{ctl, serial, wait_for, Cluster, DcsSpec, Options, API_PASSWORD, API_USER};
use matriarch_testkit::{free_port, TestCa, TlsEtcdServer, CLIENT_EXTENSIONS};

/// `curl` against the node's https API; returns the HTTP status (0 when no
/// HTTP answer came, e.g. a refused handshake) and the body.
fn curl(certs: &Path, method: &str, url: &str, extra: &[&str]) -> (u16, String) {
    let output = Command::new("curl")
        .args([
            "-sS",
            "-m",
            "5",
            "-X",
            method,
            "-o",
            "-",
            "-w",
            "\n%{http_code}",
        ])
        .arg("--cacert")
        .arg(certs.join("ca.pem"))
        .args(extra)
        .arg(url)
        .stdin(Stdio::null())
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", text.as_str()));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

/// Starts `matriarch run` on a copy of `config` with another API port and
/// data directory (the same name) and expects it to exit at once, refused as
/// a duplicate.
fn twin_is_refused(config: &Path, api_port: u16, data_dir: &Path) {
    let dir = tempfile::tempdir().expect("temp dir");
    let original = fs::read_to_string(config).expect("config");
    let twin = original
        .replace(
            &format!("listen: 127.0.0.1:{api_port}"),
            &format!("listen: 127.0.0.1:{}", free_port().expect("port")),
        )
        .replace(
            &format!("data_dir: {}", data_dir.display()),
            &format!("data_dir: {}", dir.path().join("data").display()),
        );
    assert!(twin.contains(&dir.path().display().to_string()), "{twin}");
    let path = dir.path().join("twin.yaml");
    fs::write(&path, twin).expect("write the twin's config");
    let mut child = Command::new(env!("CARGO_BIN_EXE_matriarch"))
        .args(["run", "--config"])
        .arg(&path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the twin");
    let exited = wait_for(Duration::from_secs(20), || child.try_wait().ok().flatten());
    if exited.is_none() {
        let _ = child.kill();
    }
    let output = child.wait_with_output().expect("the twin's output");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(exited.is_some(), "the twin still ran after 20 s: {stderr}");
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("already in use"), "{stderr}");
}

#[test]
fn etcd_over_tls_and_a_rest_api_that_takes_client_certificates() {
    let _serial = serial();
    let etcd = TlsEtcdServer::start(&["admin"]).expect("etcd over TLS");
    let dir = etcd.dir();
    // A certificate from a CA the node does not trust.
    TestCa::create(dir, "rogue-ca")
        .and_then(|rogue| rogue.issue("intruder", CLIENT_EXTENSIONS))
        .expect("the rogue CA's certificate");

    let mut cluster =
        Cluster::configure(1, DcsSpec::Etcd(etcd.url().to_owned()), Options::default());
    let node = &cluster.nodes[0];
    let api_port = node.api_port;
    let p = |f: &str| dir.join(f).display().to_string();
    node.edit_config(
        &format!("  listen: 127.0.0.1:{api_port}\n"),
        &format!(
            "  listen: 127.0.0.1:{api_port}\n  certfile: {}\n  keyfile: {}\n  cafile: {}\n",
            p("server.pem"),
            p("server-key.pem"),
            p("ca.pem")
        ),
    );
    node.edit_config(
        &format!("  hosts: {}\n", etcd.url()),
        &format!(
            "  hosts: {}\n  cacert: {}\n  cert: {}\n  key: {}\n",
            etcd.url(),
            p("ca.pem"),
            p("admin.pem"),
            p("admin-key.pem")
        ),
    );
    cluster.nodes[0].start(&[]);
    let base = format!("https://127.0.0.1:{api_port}");

    // It leads (so it reached etcd over TLS), and says so over https.
    let primary = wait_for(Duration::from_secs(60), || {
        (curl(dir, "GET", &format!("{base}/primary"), &[]).0 == 200).then_some(())
    });
    assert!(
        primary.is_some(),
        "no primary over https\n{}\netcd:\n{}",
        cluster.logs(),
        etcd.log()
    );
    // /primary answers the moment PostgreSQL is promoted; /patroni from a view
    // refreshed every loop_wait.
    let mut status = serde_json::Value::Null;
    let said_primary = wait_for(Duration::from_secs(10), || {
        let (_, body) = curl(dir, "GET", &format!("{base}/patroni"), &[]);
        status = serde_json::from_str(&body).ok()?;
        (status["role"] == "primary").then_some(())
    });
    assert!(said_primary.is_some(), "{status}");
    // Its member record advertises the https API.
    let (_, body) = curl(dir, "GET", &format!("{base}/cluster"), &[]);
    assert!(body.contains(&format!("{base}/patroni")), "{body}");

    // A second agent under the same name is refused at start: the duplicate
    // check reaches the first one's https API with the cluster's CA.
    twin_is_refused(
        &cluster.nodes[0].config,
        api_port,
        &cluster.nodes[0].data_dir(),
    );

    // Plain http gets no answer from the https port.
    let plain = Command::new("curl")
        .args(["-s", "-m", "5", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(format!("http://127.0.0.1:{api_port}/primary"))
        .output()
        .expect("run curl");
    assert_ne!(String::from_utf8_lossy(&plain.stdout), "200");

    // Changes: a certificate from the node's CA authenticates; nothing, or
    // a certificate from another CA, does not; basic auth still works.
    let pause = r#"{"pause": true}"#;
    let with_cert = ["--cert", &p("admin.pem"), "--key", &p("admin-key.pem")];
    let (code, body) = curl(dir, "PATCH", &format!("{base}/config"), &["-d", pause]);
    assert_eq!(code, 401, "{body}");
    let (code, _) = curl(
        dir,
        "PATCH",
        &format!("{base}/config"),
        &[
            "-d",
            pause,
            "--cert",
            &p("intruder.pem"),
            "--key",
            &p("intruder-key.pem"),
        ],
    );
    assert!(code == 0 || code == 401, "a foreign certificate got {code}");
    let (_, body) = curl(dir, "GET", &format!("{base}/config"), &[]);
    assert!(!body.contains("\"pause\":true"), "{body}");

    let mut args = vec!["-d", pause];
    args.extend(with_cert);
    let (code, body) = curl(dir, "PATCH", &format!("{base}/config"), &args);
    assert_eq!(code, 200, "{body}");
    let paused = wait_for(Duration::from_secs(10), || {
        let (_, body) = curl(dir, "GET", &format!("{base}/patroni"), &[]);
        body.contains("\"pause\":true").then_some(())
    });
    assert!(paused.is_some(), "{}", cluster.logs());

    let auth = format!("{API_USER}:{API_PASSWORD}");
    let (code, body) = curl(
        dir,
        "PATCH",
        &format!("{base}/config"),
        &["-d", r#"{"pause": false}"#, "-u", &auth],
    );
    assert_eq!(code, 200, "{body}");
    // Resumed before `ctl pause --wait` below: until the node has seen the
    // resume, its /patroni still says paused and the wait would end at once.
    let resumed = wait_for(Duration::from_secs(10), || {
        let (_, body) = curl(dir, "GET", &format!("{base}/patroni"), &[]);
        (!body.contains("\"pause\":true")).then_some(())
    });
    assert!(resumed.is_some(), "{}", cluster.logs());

    // `matriarch ctl` over https: reads with the CA, changes with the
    // client certificate.
    let ca = p("ca.pem");
    let list = ctl(&["--api", &base, "--cacert", &ca, "list", "--format", "json"]);
    assert!(
        list.status.success(),
        "{}",
        String::from_utf8_lossy(&list.stderr)
    );
    assert!(String::from_utf8_lossy(&list.stdout).contains("node1"));
    let refused = ctl(&["--api", &base, "--cacert", &ca, "pause"]);
    assert!(
        !refused.status.success(),
        "a change without credentials succeeded"
    );
    let (cert, key) = (p("admin.pem"), p("admin-key.pem"));
    let paused = ctl(&[
        "--api",
        &base,
        "--cacert",
        &ca,
        "--certfile",
        &cert,
        "--keyfile",
        &key,
        "pause",
        "--wait",
    ]);
    assert!(
        paused.status.success(),
        "{}{}",
        String::from_utf8_lossy(&paused.stdout),
        String::from_utf8_lossy(&paused.stderr)
    );
    let (_, body) = curl(dir, "GET", &format!("{base}/patroni"), &[]);
    assert!(body.contains("\"pause\":true"), "{body}");
}
