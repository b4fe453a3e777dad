//! `create_replica_methods` against real PostgreSQL 15: methods are tried in
//! order, a failed one's copy is removed before the next, a custom command
//! gets Patroni's arguments (the password only in its environment), and a
//! method that stops making progress is stopped.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use matriarch_postgres::{
    CustomMethod, PgControllerConfig, Postgres, PostgresError, ReplicaMethod, StartAs,
};
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

/// What every test here clones from: a running primary, and a directory
/// (owned by the PostgreSQL OS user) for the custom methods' scripts and
/// what they leave behind.
struct Cluster {
    primary: Node,
    scripts: TempDir,
}

impl Cluster {
    async fn start() -> Cluster {
        let primary = node("primary", |_| {});
        primary
            .ctl
            .bootstrap(&PASSWORDS.spec())
            .await
            .expect("bootstrap");
        let user = PgOsUser::detect().expect("OS user");
        let scripts = user.tempdir("matriarch-scripts-").expect("tempdir");
        Cluster { primary, scripts }
    }

    /// `name` in the scripts' directory.
    fn file(&self, name: &str) -> PathBuf {
        self.scripts.path().join(name)
    }

    /// Custom method `name` (with `--threads=4`): the shell script `body`,
    /// run as the PostgreSQL OS user.
    fn custom(&self, name: &str, body: &str, keep_data: bool) -> ReplicaMethod {
        let path = self.file(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}")).expect("write script");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        PgOsUser::detect()
            .expect("OS user")
            .chown(&path)
            .expect("chown");
        ReplicaMethod::Command(CustomMethod {
            name: name.to_owned(),
            command: vec![path.display().to_string()],
            params: vec![("threads".to_owned(), "4".to_owned())],
            keep_data,
            no_params: false,
            no_leader: false,
        })
    }

    /// Member `replica` trying `methods` in order, its configuration
    /// adjusted, and what cloning it from the primary returned.
    async fn clone_replica(
        &self,
        methods: Vec<ReplicaMethod>,
        adjust: impl FnOnce(&mut PgControllerConfig),
    ) -> (Node, Result<(), PostgresError>) {
        let replica = node("replica", |c| {
            c.replica_methods = methods;
            adjust(c);
        });
        let cloned = replica.ctl.clone_replica(&self.primary.upstream()).await;
        (replica, cloned)
    }
}

/// A custom method that fails after writing into the data directory: it
/// got Patroni's arguments and the password in `PGPASSWORD` only; its copy
/// is removed, and `basebackup` then makes a replica that streams.
#[tokio::test]
async fn a_failed_custom_method_is_cleaned_up_and_basebackup_follows() {
    let cluster = Cluster::start().await;
    let primary = &cluster.primary;
    let record = cluster.file("args");
    let failing = cluster.custom(
        "wal_g",
        &format!(
            "printf '%s\\n' \"$@\" > {rec}\necho \"PGPASSWORD=$PGPASSWORD\" >> {rec}\n\
             for a in \"$@\"; do case $a in --datadir=*) touch \"${{a#--datadir=}}/junk\";; esac; done\n\
             exit 3\n",
            rec = record.display()
        ),
        false,
    );
    let basebackup = ReplicaMethod::Basebackup {
        options: vec!["--verbose".to_owned()],
    };
    let (replica, cloned) = cluster
        .clone_replica(vec![failing, basebackup], |_| {})
        .await;
    cloned.expect("clone falls back to basebackup");
    let data_dir = replica.data_dir();

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
    let cluster = Cluster::start().await;
    let failing = cluster.custom(
        "kept",
        "for a in \"$@\"; do case $a in --datadir=*) touch \"${a#--datadir=}/junk\";; esac; done\nexit 1\n",
        true,
    );
    let basebackup = ReplicaMethod::Basebackup { options: vec![] };
    let (replica, cloned) = cluster
        .clone_replica(vec![failing, basebackup], |_| {})
        .await;
    assert!(cloned.is_err(), "{cloned:?}");
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
    let cluster = Cluster::start().await;
    let pid_file = cluster.file("pid");
    let stuck = cluster.custom(
        "stuck",
        &format!("echo $$ > {}\nsleep 600\n", pid_file.display()),
        false,
    );
    let basebackup = ReplicaMethod::Basebackup { options: vec![] };
    let started = Instant::now();
    let (_replica, cloned) = cluster
        .clone_replica(vec![stuck, basebackup], |c| {
            c.timeouts.clone_stall = Duration::from_secs(3);
        })
        .await;
    cloned.expect("basebackup after the stalled method");
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
