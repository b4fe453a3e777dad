//! TLS end to end: a node whose etcd speaks only TLS with client
//! certificates, and whose REST API serves https and takes a client
//! certificate signed by its CA as authentication for changes.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{serial, wait_for, Cluster, DcsSpec, Options, API_PASSWORD, API_USER};
use matriarch_testkit::free_port;

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

/// A CA `<ca>.pem` and, signed by it, a certificate `<cn>.pem` /
/// `<cn>-key.pem` with the given extensions.
fn make_ca(dir: &Path, ca: &str) {
    let (key, pem, subject) = (
        format!("{ca}-key.pem"),
        format!("{ca}.pem"),
        format!("/CN={ca}"),
    );
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &pem,
            "-days",
            "2",
            "-subj",
            &subject,
        ],
    );
}

fn sign(dir: &Path, ca: &str, cn: &str, ext: &str) {
    fs::write(dir.join(format!("{cn}.ext")), ext).expect("write extensions");
    let (key, csr, pem, subject, ext_file, ca_pem, ca_key) = (
        format!("{cn}-key.pem"),
        format!("{cn}.csr"),
        format!("{cn}.pem"),
        format!("/CN={cn}"),
        format!("{cn}.ext"),
        format!("{ca}.pem"),
        format!("{ca}-key.pem"),
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &csr,
            "-subj",
            &subject,
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca_pem,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-out",
            &pem,
            "-days",
            "2",
            "-extfile",
            &ext_file,
        ],
    );
}

/// An etcd serving clients over TLS only and requiring a client
/// certificate; killed on drop.
struct TlsEtcd {
    child: std::process::Child,
    url: String,
    log: PathBuf,
}

impl Drop for TlsEtcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl TlsEtcd {
    fn start(certs: &Path, data: &Path) -> TlsEtcd {
        let (client_port, peer_port) = (free_port().expect("port"), free_port().expect("port"));
        let url = format!("https://127.0.0.1:{client_port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        let log = data.join("etcd.log");
        let file = fs::File::create(&log).expect("log file");
        let binary = std::env::var_os("MATRIARCH_ETCD").unwrap_or_else(|| "etcd".into());
        let p = |f: &str| certs.join(f).display().to_string();
        let child = Command::new(binary)
            .arg("--name=tls")
            .arg(format!("--data-dir={}", data.join("etcd").display()))
            .arg(format!("--listen-client-urls={url}"))
            .arg(format!("--advertise-client-urls={url}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=tls={peer}"))
            .arg(format!("--cert-file={}", p("server.pem")))
            .arg(format!("--key-file={}", p("server-key.pem")))
            .arg(format!("--trusted-ca-file={}", p("ca.pem")))
            .arg("--client-cert-auth")
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log file"))
            .stderr(file)
            .spawn()
            .expect("start etcd (cargo xtask deps installs it)");
        TlsEtcd { child, url, log }
    }
}

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

fn ctl(args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_matriarch"));
    command.arg("ctl").args(args).stdin(Stdio::null());
    for var in [
        "MATRIARCH_CTL_API",
        "MATRIARCH_CTL_CONFIG",
        "MATRIARCH_CTL_USERNAME",
        "MATRIARCH_CTL_PASSWORD",
    ] {
        command.env_remove(var);
    }
    command.output().expect("run matriarch ctl")
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
    let certs = tempfile::tempdir().expect("temp dir");
    let dir = certs.path();
    make_ca(dir, "ca");
    sign(
        dir,
        "ca",
        "server",
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n",
    );
    sign(dir, "ca", "admin", "extendedKeyUsage=clientAuth\n");
    // A certificate from a CA the node does not trust.
    make_ca(dir, "rogue-ca");
    sign(dir, "rogue-ca", "intruder", "extendedKeyUsage=clientAuth\n");

    let etcd = TlsEtcd::start(dir, dir);
    let mut cluster = Cluster::configure(1, DcsSpec::Etcd(etcd.url.clone()), Options::default());
    let node = &cluster.nodes[0];
    let api_port = node.api_port;
    let p = |f: &str| dir.join(f).display().to_string();
    let config = fs::read_to_string(&node.config).expect("config");
    let config = config
        .replacen(
            &format!("  listen: 127.0.0.1:{api_port}\n"),
            &format!(
                "  listen: 127.0.0.1:{api_port}\n  certfile: {}\n  keyfile: {}\n  cafile: {}\n",
                p("server.pem"),
                p("server-key.pem"),
                p("ca.pem")
            ),
            1,
        )
        .replacen(
            &format!("  hosts: {}\n", etcd.url),
            &format!(
                "  hosts: {}\n  cacert: {}\n  cert: {}\n  key: {}\n",
                etcd.url,
                p("ca.pem"),
                p("admin.pem"),
                p("admin-key.pem")
            ),
            1,
        );
    assert!(
        config.contains("certfile") && config.contains("cacert"),
        "{config}"
    );
    fs::write(&node.config, config).expect("write config");
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
        fs::read_to_string(&etcd.log).unwrap_or_default()
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
