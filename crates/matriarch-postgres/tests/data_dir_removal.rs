//! Emptying a data directory (reinitialize, re-clone) touches only a
//! directory that holds the expected PostgreSQL cluster; no PostgreSQL
//! server is needed to see the refusals.

use std::fs;
use std::path::Path;

use matriarch_model::SystemId;
use matriarch_postgres::{empty_cluster_data_dir, Operation, PostgresError};

const OP: Operation = Operation::CloneReplica;

fn write(path: &Path, contents: &[u8]) {
    fs::create_dir_all(path.parent().expect("a parent")).expect("create parent");
    fs::write(path, contents).expect("write");
}

/// A fake cluster: `PG_VERSION`, a `pg_control` naming `id`, one relation.
fn fake_cluster(dir: &Path, id: u64) {
    write(&dir.join("PG_VERSION"), b"15\n");
    let mut control = id.to_ne_bytes().to_vec();
    control.resize(8192, 0);
    write(&dir.join("global/pg_control"), &control);
    write(&dir.join("base/1/1259"), b"catalog");
}

#[test]
fn a_directory_without_pg_version_is_left_alone() {
    let tmp = tempfile::tempdir().expect("tempdir");
    write(&tmp.path().join("thesis.tex"), b"mine");
    write(&tmp.path().join("notes/a.txt"), b"mine too");
    let err = empty_cluster_data_dir(OP, tmp.path(), Some(SystemId(7))).unwrap_err();
    assert!(matches!(err, PostgresError::NotOurCluster { .. }), "{err}");
    assert!(err.to_string().contains("PG_VERSION"), "{err}");
    assert!(tmp.path().join("thesis.tex").exists());
    assert!(tmp.path().join("notes/a.txt").exists());
}

#[test]
fn another_clusters_directory_is_left_alone() {
    let tmp = tempfile::tempdir().expect("tempdir");
    fake_cluster(tmp.path(), 42);
    let err = empty_cluster_data_dir(OP, tmp.path(), Some(SystemId(7))).unwrap_err();
    assert!(
        matches!(
            err,
            PostgresError::SystemIdMismatch {
                expected: SystemId(7),
                found: SystemId(42),
                ..
            }
        ),
        "{err}"
    );
    assert!(tmp.path().join("base/1/1259").exists());
}

#[test]
fn pg_version_without_a_control_file_is_left_alone() {
    let tmp = tempfile::tempdir().expect("tempdir");
    write(&tmp.path().join("PG_VERSION"), b"15\n");
    write(&tmp.path().join("photo.jpg"), b"jpeg");
    let err = empty_cluster_data_dir(OP, tmp.path(), None).unwrap_err();
    assert!(matches!(err, PostgresError::NotOurCluster { .. }), "{err}");
    assert!(tmp.path().join("photo.jpg").exists());
}

#[test]
fn this_clusters_directory_is_emptied_in_place_without_following_links() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    let outside = tmp.path().join("outside");
    write(&outside.join("keep.txt"), b"not in the data directory");
    fake_cluster(&data, 7);
    std::os::unix::fs::symlink(&outside, data.join("pg_wal")).expect("symlink");
    empty_cluster_data_dir(OP, &data, Some(SystemId(7))).expect("emptied");
    assert!(
        data.is_dir(),
        "the directory itself (a mount point) must stay"
    );
    assert_eq!(fs::read_dir(&data).expect("list").count(), 0);
    assert!(outside.join("keep.txt").exists(), "followed a symlink");
    let siblings: Vec<_> = fs::read_dir(tmp.path())
        .expect("list")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(siblings.len(), 2, "a sibling was created: {siblings:?}");
}
