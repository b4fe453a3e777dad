//! `POST /reinitialize` removes only a data directory that holds this
//! cluster's PostgreSQL: a directory without `PG_VERSION` (somebody's own
//! files) or with another cluster's system identifier is left untouched.

mod common;

use std::fs;
use std::path::Path;
use std::time::Duration;

use common::{healthy_pair, wait_for, Cluster, ClusterChecks, Options};

/// Starts a healthy primary (node1), fills node2's data directory with
/// `prepare`, starts node2's agent and asks it to reinitialize; returns the
/// HTTP status and body.
fn reinitialize_foreign_dir(prepare: impl FnOnce(&Path)) -> (Cluster, u16, String) {
    let mut cluster = Cluster::configure_on_etcd(2, Options::default());
    cluster.start_node1_as_primary(Duration::from_secs(60));
    let data_dir = cluster.nodes[1].data_dir();
    fs::create_dir_all(&data_dir).expect("create node2's data directory");
    prepare(&data_dir);
    // The agent runs as root and hands the directory to PostgreSQL's user;
    // the tester's files stay theirs (owned by root) either way.
    cluster.nodes[1].start(&[]);
    let node = &cluster.nodes[1];
    let answered = wait_for(Duration::from_secs(30), || {
        let response = node.call("POST", "/reinitialize", "{}", true);
        (response.status != 0 && !response.body_text().contains("no leader to clone from"))
            .then(|| (response.status, response.body_text()))
    });
    let (status, body) = answered.unwrap_or((0, String::new()));
    (cluster, status, body)
}

fn write(path: &Path, contents: &[u8]) {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).expect("create parent");
    }
    fs::write(path, contents).expect("write file");
}

/// The answer was a 503 naming `reason`, and node2's data directory still
/// holds every one of `kept` (what would be lost: `lost`).
fn assert_refused_and_kept(
    cluster: &Cluster,
    (status, body): (u16, &str),
    kept: &[&str],
    lost: &str,
    reason: &str,
) {
    let dir = cluster.nodes[1].data_dir();
    cluster.check(
        kept.iter().all(|file| dir.join(file).exists()),
        &format!("reinitialize deleted {lost} (HTTP {status} {body})"),
    );
    assert_eq!(status, 503, "the refusal is not reported: {body}");
    assert!(
        body.contains(reason),
        "the refusal does not say why: {body}"
    );
}

#[test]
fn reinitialize_refuses_a_directory_without_a_cluster() {
    let (cluster, status, body) = reinitialize_foreign_dir(|dir| {
        write(&dir.join("thesis.tex"), b"four years of work");
        write(&dir.join("notes/today.txt"), b"do not delete");
    });
    assert_refused_and_kept(
        &cluster,
        (status, &body),
        &["thesis.tex", "notes/today.txt"],
        "files from a directory with no PostgreSQL cluster",
        "PG_VERSION",
    );
}

#[test]
fn reinitialize_refuses_another_clusters_data_directory() {
    let (cluster, status, body) = reinitialize_foreign_dir(|dir| {
        write(&dir.join("PG_VERSION"), b"15\n");
        // pg_control starts with the 64-bit system identifier (native order).
        let mut control = 42u64.to_ne_bytes().to_vec();
        control.resize(8192, 0);
        write(&dir.join("global/pg_control"), &control);
        write(&dir.join("base/1/1259"), b"another cluster's catalog");
    });
    assert_refused_and_kept(
        &cluster,
        (status, &body),
        &["PG_VERSION", "base/1/1259"],
        "another cluster's data directory",
        "system identifier",
    );
}

/// The check does not get in the way of a real reinitialize: a replica's
/// own cluster is emptied in place (no sibling directory) and cloned again.
#[test]
fn reinitialize_of_a_replica_clones_it_again_in_place() {
    let (cluster, primary, replica) = healthy_pair(Duration::from_secs(90));
    cluster.psql_ok(primary, "CREATE TABLE before_reinit (v int)");
    let before = cluster.nodes[replica].postmaster_pid();
    let r = cluster.nodes[replica].call("POST", "/reinitialize", "{}", true);
    cluster.assert_status(&r, 200);
    assert_eq!(cluster.wait_healthy(1, Duration::from_secs(90)), primary);
    cluster.check(
        cluster.wait_sql(
            replica,
            "SELECT count(*) FROM pg_tables WHERE tablename = 'before_reinit'",
            "1",
            Duration::from_secs(60),
        ),
        "the reinitialized replica does not have the primary's data",
    );
    assert_ne!(
        cluster.nodes[replica].postmaster_pid(),
        before,
        "PostgreSQL was not restarted"
    );
    let parent = cluster.nodes[replica].dir.clone();
    let siblings: Vec<String> = fs::read_dir(&parent)
        .expect("list the node directory")
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .filter(|n| n.starts_with("data") && n != "data" && n != "data.log" && n != "data.pgpass")
        .collect();
    assert!(
        siblings.is_empty(),
        "a sibling of the data directory appeared: {siblings:?}"
    );
}
