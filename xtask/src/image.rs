//! `cargo xtask image [--test]`: the container image in Spilo's form (PostgreSQL
//! 15 and matriarch in one image, configured from the environment), built from
//! Debian's packages with debootstrap and imported into podman: no registry.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::args::only_flag;
use crate::cmd::{build, is_root, run, step, Failure, Result};
use crate::deps::{install_missing, Requirement};

/// What building and testing the image needs, each checked by a file it provides.
const IMAGE_REQUIREMENTS: &[Requirement] = &[
    ("podman", &["/usr/bin/podman"]),
    ("runc", &["/usr/sbin/runc"]),
    ("debootstrap", &["/usr/sbin/debootstrap"]),
    ("curl", &["/usr/bin/curl"]),
];

/// Packages inside the image besides the minimal base.
const IMAGE_PACKAGES: &str = "postgresql-15";

/// The image's name and tag.
fn image_name() -> String {
    format!("localhost/matriarch:{}", env!("CARGO_PKG_VERSION"))
}

/// Builds the image; with `--test`, also runs the failover test against it.
pub(crate) fn image(args: &[String]) -> Result {
    let test = only_flag("image", "--test", args)?;
    if !is_root() {
        return Err(Failure(
            "`image` needs root (debootstrap, podman with host networking)".into(),
        ));
    }
    step("image deps", image_deps())?;
    let (root, target) = build("image", true, &[])?;
    let work = target.join("image");
    std::fs::create_dir_all(&work)
        .map_err(|e| Failure(format!("cannot create {}: {e}", work.display())))?;
    let base = base_root(&work)
        .map_err(|Failure(msg)| Failure(format!("step `base root` failed: {msg}")))?;
    let rootfs = work.join("rootfs");
    step("root", assemble(&base, &rootfs, &root, &target))?;
    let name = image_name();
    println!("==> cargo xtask image: podman import {name}");
    let tar = Command::new("tar")
        .arg("-C")
        .arg(&rootfs)
        .args(["-c", "."])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| Failure(format!("cannot run tar: {e}")))?;
    let tar_out = tar
        .stdout
        .ok_or_else(|| Failure("tar has no standard output".into()))?;
    step(
        "import",
        run(Command::new("podman")
            .args([
                "import",
                "--change",
                "ENTRYPOINT [\"/usr/local/bin/matriarch-entrypoint\"]",
                "--change",
                "ENV LANG=C.UTF-8",
                "-",
                &name,
            ])
            .stdin(tar_out)),
    )?;
    let size = Command::new("podman")
        .args(["image", "inspect", "--format", "{{.Size}}", &name])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    println!("image {name}: {size} bytes");
    if test {
        println!("==> cargo xtask image: failover test");
        step(
            "image failover test",
            run(Command::new(root.join("packaging/image/failover-test.sh"))
                .arg(&name)
                .env("RESULT_JSON", work.join("failover.json"))),
        )?;
    }
    Ok(())
}

/// Installs what building the image needs (podman, runc, debootstrap, curl).
fn image_deps() -> Result {
    install_missing(IMAGE_REQUIREMENTS)
}

/// The Debian mirror this machine's apt uses (the first `URIs:` or `deb` line).
fn debian_mirror() -> String {
    let sources = [
        "/etc/apt/sources.list.d/debian.sources",
        "/etc/apt/sources.list",
    ];
    for file in sources {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        for line in text.lines().map(str::trim) {
            if let Some(uri) = line.strip_prefix("URIs:") {
                if let Some(first) = uri.split_whitespace().next() {
                    return first.to_owned();
                }
            }
            if let Some(rest) = line.strip_prefix("deb ") {
                if let Some(uri) = rest.split_whitespace().find(|w| w.contains("://")) {
                    return uri.to_owned();
                }
            }
        }
    }
    "http://deb.debian.org/debian".to_owned()
}

/// A minimal bookworm root with PostgreSQL 15, made once and kept as a tarball
/// (debootstrap takes about a minute).
fn base_root(work: &Path) -> Result<PathBuf> {
    let tarball = work.join(format!(
        "base-bookworm-{}.tar",
        IMAGE_PACKAGES.replace(',', "-")
    ));
    if tarball.is_file() {
        println!("base root {}: present", tarball.display());
        return Ok(tarball);
    }
    let scratch = work.join("debootstrap");
    remove_inside(work, &scratch)?;
    println!("==> cargo xtask image: debootstrap (bookworm, {IMAGE_PACKAGES})");
    run(Command::new("debootstrap")
        .args([
            "--variant=minbase",
            &format!("--include={IMAGE_PACKAGES}"),
            "bookworm",
        ])
        .arg(&scratch)
        .arg(debian_mirror()))?;
    // No package caches or lists in the image.
    for dir in ["var/cache/apt/archives", "var/lib/apt/lists"] {
        let path = scratch.join(dir);
        if let Ok(entries) = std::fs::read_dir(&path) {
            for entry in entries.flatten() {
                if entry.path().is_file() {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
    }
    let partial = tarball.with_extension("partial");
    run(Command::new("tar")
        .arg("-C")
        .arg(&scratch)
        .arg("-cf")
        .arg(&partial)
        .arg("."))?;
    std::fs::rename(&partial, &tarball)
        .map_err(|e| Failure(format!("cannot rename {}: {e}", partial.display())))?;
    remove_inside(work, &scratch)?;
    Ok(tarball)
}

/// The image's root: the base, the release binary, the entry point and the node file.
fn assemble(base: &Path, rootfs: &Path, root: &Path, target: &Path) -> Result {
    let work = rootfs
        .parent()
        .ok_or_else(|| Failure(format!("{} has no parent", rootfs.display())))?;
    remove_inside(work, rootfs)?;
    std::fs::create_dir_all(rootfs)
        .map_err(|e| Failure(format!("cannot create {}: {e}", rootfs.display())))?;
    run(Command::new("tar")
        .arg("-C")
        .arg(rootfs)
        .arg("-xf")
        .arg(base))?;
    let copy = |from: PathBuf, to: &str, mode: &str| -> Result {
        let dest = rootfs.join(to);
        run(Command::new("install")
            .args(["-D", "-m", mode])
            .arg(&from)
            .arg(&dest))
    };
    copy(
        target.join("release/matriarch"),
        "usr/bin/matriarch",
        "0755",
    )?;
    copy(
        root.join("packaging/image/entrypoint.sh"),
        "usr/local/bin/matriarch-entrypoint",
        "0755",
    )?;
    copy(
        root.join("packaging/image/node.yaml"),
        "etc/matriarch/node.yaml",
        "0644",
    )?;
    // The postgres user's home for the data directory (the uid is the image's own).
    run(Command::new("chroot")
        .arg(rootfs)
        .args([
            "install", "-d", "-o", "postgres", "-g", "postgres", "-m", "0700",
        ])
        .arg("/home/postgres/pgdata"))
}

/// Removes `path` recursively, but only when it lies strictly inside `work`
/// (a guard against a variable gone empty or wrong).
fn remove_inside(work: &Path, path: &Path) -> Result {
    if !path.starts_with(work) || path == work || work.as_os_str().is_empty() {
        return Err(Failure(format!(
            "refusing to remove {} (not inside {})",
            path.display(),
            work.display()
        )));
    }
    match std::fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Failure(format!("cannot remove {}: {e}", path.display()))),
    }
}
