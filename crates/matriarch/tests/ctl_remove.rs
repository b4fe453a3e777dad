//! `matriarch ctl remove CLUSTER` on a real etcd, with the answers piped on stdin as
//! patronictl users do: a wrong or missing answer removes nothing; the right ones remove
//! every key of the cluster and none of a cluster whose name begins with its own.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::{etcd_put, etcd_range, Cluster, Options};

/// A member record as an agent writes it.
const MEMBER: &str = r#"{"conn_url":"postgres://127.0.0.1:5432/postgres","api_url":"http://127.0.0.1:8008/patroni","state":"running","role":"primary","timeline":1}"#;

/// `matriarch ctl --config CONFIG remove CLUSTER` with `answers` on its stdin.
fn remove(config: &Path, cluster: &str, answers: &str) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_matriarch"));
    command
        .arg("ctl")
        .arg("--config")
        .arg(config)
        .args(["remove", cluster])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for var in ["MATRIARCH_CTL_API", "MATRIARCH_CTL_CONFIG"] {
        command.env_remove(var);
    }
    let mut child = command.spawn().expect("run matriarch ctl remove");
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(answers.as_bytes())
        .expect("write the answers");
    child.wait_with_output().expect("wait for ctl")
}

fn keys(etcd: &str, prefix: &str) -> Vec<String> {
    etcd_range(etcd, prefix)
        .1
        .into_iter()
        .map(|(key, _)| key)
        .collect()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn remove_deletes_the_cluster_only_after_every_confirmation() {
    // The node file gives ctl the DCS; no agent runs, the keys are as agents left them.
    let cluster = Cluster::configure_on_etcd(1, Options::default());
    let etcd = cluster.etcd_url();
    let config = &cluster.nodes[0].config;
    for scope in ["e2e", "e2e2"] {
        etcd_put(
            &etcd,
            &format!("/service/{scope}/initialize"),
            "7221239846937620000",
        );
        etcd_put(&etcd, &format!("/service/{scope}/leader"), "node1");
        etcd_put(&etcd, &format!("/service/{scope}/members/node1"), MEMBER);
        etcd_put(&etcd, &format!("/service/{scope}/config"), r#"{"ttl":30}"#);
    }
    let before = keys(&etcd, "/service/e2e/");
    assert_eq!(before.len(), 4, "{before:?}");

    for (answers, refusal) in [
        ("e2e2\n", "Cluster names specified do not match"),
        ("e2e\nYes I am not aware\n", "You did not exactly type"),
        (
            "e2e\nYes I am aware\nnode2\n",
            "You did not specify the current leader",
        ),
        // While a member holds the lock, its name is asked for too.
        ("e2e\nYes I am aware\n", "aborted"),
    ] {
        let out = remove(config, "e2e", answers);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{answers:?}: {stderr}");
        assert!(stderr.contains(refusal), "{answers:?}: {stderr}");
        assert_eq!(
            keys(&etcd, "/service/e2e/"),
            before,
            "{answers:?}: a refused remove deleted keys"
        );
    }

    let out = remove(config, "e2e", "e2e\nYes I am aware\nnode1\n");
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("Leader: node1"), "{stdout}");
    assert!(stdout.contains("node1 (primary, running)"), "{stdout}");
    assert!(
        stderr.contains("This cluster currently is healthy"),
        "{stderr}"
    );
    assert_eq!(keys(&etcd, "/service/e2e/"), Vec::<String>::new());
    assert_eq!(
        keys(&etcd, "/service/e2e2/").len(),
        4,
        "removing e2e touched e2e2"
    );

    // Without a leader two answers do; removing an empty cluster succeeds.
    let out = remove(config, "e2e", "e2e\nYes I am aware\n");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("Members: none"));
}

#[test]
fn remove_needs_the_node_file() {
    let out = common::ctl(&["remove", "e2e"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("--config"),
        "{}",
        text(&out.stderr)
    );
}
