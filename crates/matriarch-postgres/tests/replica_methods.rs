//! `create_replica_methods` against real PostgreSQL 15: methods are tried in
//! order, a failed one's copy is removed before the next, a custom command
//! gets Patroni's arguments (the password only in its environment), and a
//! method that stops making progress is stopped.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use matriarch_postgres::{CustomMethod, PgControllerConfig, Postgres, ReplicaMethod, StartAs};
use matriarch_testkit::PgOsUser;
use tempfile::TempDir;

use support::{Node, Passwords};

const PASSWORDS: Passwords = Passwords {
    superuser: "super-secret",
    replication: "repl-secret",
    rewind: "rewind-secret",
};

/// Member `name` of the cluster `methods`, its configuration adjusted.
fn node(name: &str, adjust: impl FnOnce(&mut PgControllerConfig)) -> Node {
    Node::build(name, |member, dir, port| {
        let mut config = PASSWORDS.config(member, dir, port, &[]);
        config.scope = "methods".to_owned();
        adjust(&mut config);
        config
    })
}

/// A running primary to clone from, and a directory for the test's scripts
/// (owned by the PostgreSQL OS user).
async fn primary_and_scripts() -> (Node, TempDir) {
    let primary = node("primary", |_| {});
    primary
        .ctl
        .bootstrap(&PASSWORDS.spec())
        .await
        .expect("bootstrap");
    let user = PgOsUser::detect().expect("OS user");
    let scripts = user.tempdir("matriarch-scripts-").expect("tempdir");
    (primary, scripts)
}

/// A shell script (run as the PostgreSQL OS user) in `dir`.
fn script(dir: &Path, name: &str, body: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}")).expect("write script");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    PgOsUser::detect()
        .expect("OS user")
        .chown(&path)
        .expect("chown");
    path.display().to_string()
}

fn custom(name: &str, command: String, keep_data: bool) -> ReplicaMethod {
    ReplicaMethod::Command(CustomMethod {
        name: name.to_owned(),
        command: vec![command],
        params: vec![("threads".to_owned(), "4".to_owned())],
        keep_data,
        no_params: false,
        no_leader: false,
    })
}

/// A custom method that fails after writing into the data directory: it
/// got Patroni's arguments and the password in `PGPASSWORD` only; its copy
/// is removed, and `basebackup` then makes a replica that streams.
#[tokio::test]
async fn a_failed_custom_method_is_cleaned_up_and_basebackup_follows() {
    let (primary, scripts) = primary_and_scripts().await;
    let record = scripts.path().join("args");
    let failing = script(
        scripts.path(),
        "failing-clone",
        &format!(
            "printf '%s\\n' \"$@\" > {rec}\necho \"PGPASSWORD=$PGPASSWORD\" >> {rec}\n\
             for a in \"$@\"; do case $a in --datadir=*) touch \"${{a#--datadir=}}/junk\";; esac; done\n\
             exit 3\n",
            rec = record.display()
        ),
    );
    let replica = node("replica", |c| {
        c.replica_methods = vec![
            custom("wal_g", failing, false),
            ReplicaMethod::Basebackup {
                options: vec!["--verbose".to_owned()],
            },
        ];
    });
    let data_dir = replica.data_dir();
    replica
        .ctl
        .clone_replica(&primary.upstream())
        .await
        .expect("clone falls back to basebackup");

    let recorded = std::fs::read_to_string(&record).expect("the custom method ran");
    let lines: Vec<&str> = recorded.lines().collect();
    assert_eq!(lines[0], "--scope=methods");
    assert_eq!(lines[1], "--role=replica");
    assert_eq!(lines[2], format!("--datadir={}", data_dir.display()));
    assert!(
        lines[3].starts_with("--connstring=")
            && lines[3].contains(&format!("port={}", primary.port))
    );
    assert!(
        !lines[3].contains(PASSWORDS.replication),
        "password in the arguments: {}",
        lines[3]
    );
    assert_eq!(lines[4], "--threads=4");
    assert_eq!(lines[5], format!("PGPASSWORD={}", PASSWORDS.replication));
    assert!(
        !data_dir.join("junk").exists(),
        "the failed method's file was kept"
    );
    assert!(data_dir.join("standby.signal").exists());

    replica
        .ctl
        .start(StartAs::ReplicaOf(primary.upstream()))
        .await
        .expect("the cloned replica starts");
}

/// `keep_data` leaves a failed method's files, and nothing else is tried
/// (the next method needs an empty directory).
#[tokio::test]
async fn keep_data_keeps_a_failed_methods_files() {
    let (primary, scripts) = primary_and_scripts().await;
    let failing = script(
        scripts.path(),
        "failing-clone",
        "for a in \"$@\"; do case $a in --datadir=*) touch \"${a#--datadir=}/junk\";; esac; done\nexit 1\n",
    );
    let replica = node("replica", |c| {
        c.replica_methods = vec![
            custom("kept", failing, true),
            ReplicaMethod::Basebackup { options: vec![] },
        ];
    });
    let result = replica.ctl.clone_replica(&primary.upstream()).await;
    assert!(result.is_err(), "{result:?}");
    let data_dir = replica.data_dir();
    assert!(data_dir.join("junk").exists());
    assert!(
        !data_dir.join("PG_VERSION").exists(),
        "basebackup ran over kept data"
    );
}

/// A method whose data directory stops growing is stopped after the stall
/// limit (not after a fixed time), and the next method runs.
#[tokio::test]
async fn a_stalled_method_is_stopped_and_the_next_one_runs() {
    let (primary, scripts) = primary_and_scripts().await;
    let pid_file = scripts.path().join("pid");
    let stuck = script(
        scripts.path(),
        "stuck-clone",
        &format!("echo $$ > {}\nsleep 600\n", pid_file.display()),
    );
    let replica = node("replica", |c| {
        c.timeouts.clone_stall = Duration::from_secs(3);
        c.replica_methods = vec![
            custom("stuck", stuck, false),
            ReplicaMethod::Basebackup { options: vec![] },
        ];
    });
    let started = Instant::now();
    replica
        .ctl
        .clone_replica(&primary.upstream())
        .await
        .expect("basebackup after the stalled method");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(3),
        "stopped before the stall limit: {took:?}"
    );
    assert!(took < Duration::from_secs(30), "took {took:?}");
    // The stuck script's process group (the shell and its sleep) is gone.
    let group: u32 = std::fs::read_to_string(&pid_file)
        .expect("the stuck method ran")
        .trim()
        .parse()
        .expect("pid");
    let alive = wait_until_gone(group, Duration::from_secs(5));
    assert!(alive.is_empty(), "still running in its group: {alive:?}");
}

/// Live (not zombie) processes of process group `group`, waited for up to
/// `timeout` to disappear.
fn wait_until_gone(group: u32, timeout: Duration) -> Vec<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let alive: Vec<String> = std::fs::read_dir("/proc")
            .expect("/proc")
            .flatten()
            .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
            .filter(|stat| {
                let fields: Vec<&str> = stat
                    .rsplit_once(')')
                    .map(|(_, rest)| rest.split_whitespace().collect())
                    .unwrap_or_default();
                fields.first() != Some(&"Z") && fields.get(2) == Some(&group.to_string().as_str())
            })
            .collect();
        if alive.is_empty() || Instant::now() > deadline {
            return alive;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
