//! `cargo xtask package [--check]`: the Debian package of the release binary,
//! built with `dpkg-deb` alone (no debhelper), from the files in `packaging/`:
//! target/debian/matriarch_<version>_<arch>.deb. `--check` (root) installs it
//! with `dpkg -i`, runs the installed `matriarch check` on the packaged
//! /etc/matriarch/node.yaml, then purges it.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use crate::args::only_flag;
use crate::cmd::{build, is_root, render, run, step, Failure, Result};
use crate::deps::package_installed;

/// The package's name.
const NAME: &str = "matriarch";

/// Where `--check` expects the package's files.
const INSTALLED_BINARY: &str = "/usr/bin/matriarch";
const INSTALLED_CONFIG: &str = "/etc/matriarch/node.yaml";
const INSTALLED_UNIT: &str = "/lib/systemd/system/matriarch.service";

/// The package's files: source in the repository, path in the package, mode.
const FILES: &[(&str, &str, u32)] = &[
    (
        "packaging/matriarch.service",
        "lib/systemd/system/matriarch.service",
        0o644,
    ),
    // Holds passwords; postinst gives it to group postgres (the unit's User=).
    ("packaging/node.yaml", "etc/matriarch/node.yaml", 0o640),
    ("packaging/postinst", "DEBIAN/postinst", 0o755),
    ("packaging/prerm", "DEBIAN/prerm", 0o755),
    ("packaging/postrm", "DEBIAN/postrm", 0o755),
];

/// Builds the package; with `--check`, installs, checks and purges it.
pub(crate) fn package(args: &[String]) -> Result {
    let check = only_flag("package", "--check", args)?;
    if check {
        if !is_root() {
            return Err(Failure(
                "`package --check` installs the package with dpkg; rerun as root".into(),
            ));
        }
        // Never purge a matriarch someone installed for real.
        if package_installed(NAME) || Path::new(INSTALLED_BINARY).exists() {
            return Err(Failure(format!(
                "a {NAME} package or {INSTALLED_BINARY} is already installed; --check \
                 would replace and then purge it"
            )));
        }
    }
    let started = Instant::now();
    let (root, target) = build("package", true, &[])?;
    let deb = build_deb(&root, &target, &target.join("release").join("matriarch"))
        .map_err(|Failure(msg)| Failure(format!("step `dpkg-deb` failed: {msg}")))?;
    let size = std::fs::metadata(&deb)
        .map_err(|e| Failure(format!("{}: {e}", deb.display())))?
        .len();
    println!(
        "==> cargo xtask package: {} ({} KiB)",
        deb.display(),
        size.div_ceil(1024)
    );
    if check {
        let checked = step("install and check", install_and_check(&deb));
        let purged = step("purge", purge());
        checked?;
        purged?;
        println!(
            "==> cargo xtask package --check: passed in {} s (release build included)",
            started.elapsed().as_secs()
        );
    }
    Ok(())
}

/// Output of a command that must exit 0, trimmed.
fn output(cmd: &mut Command) -> Result<String> {
    let what = render(cmd);
    let out = cmd
        .output()
        .map_err(|e| Failure(format!("cannot run `{what}`: {e}")))?;
    if !out.status.success() {
        return Err(Failure(format!(
            "`{what}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn io_err(path: &Path, e: std::io::Error) -> Failure {
    Failure(format!("{}: {e}", path.display()))
}

/// Writes `bytes` to `root/rel` with `mode`, creating 0755 directories.
fn put(root: &Path, rel: &str, bytes: &[u8], mode: u32) -> Result {
    let path = root.join(rel);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| io_err(parent, e))?;
    }
    std::fs::write(&path, bytes).map_err(|e| io_err(&path, e))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| io_err(&path, e))
}

/// Makes every directory under `dir` 0755 (whatever the umask made them).
fn fix_dir_modes(dir: &Path) -> Result<u64> {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| io_err(dir, e))?;
    // Installed-Size counts 1 KiB a directory and each file rounded up.
    let mut kib = 1;
    for entry in std::fs::read_dir(dir).map_err(|e| io_err(dir, e))? {
        let entry = entry.map_err(|e| io_err(dir, e))?;
        let meta = entry.metadata().map_err(|e| io_err(&entry.path(), e))?;
        if meta.is_dir() {
            let sub = fix_dir_modes(&entry.path())?;
            if entry.file_name() != "DEBIAN" {
                kib += sub;
            }
        } else {
            kib += meta.len().div_ceil(1024);
        }
    }
    Ok(kib)
}

/// The newest `GLIBC_2.N` symbol version the binary needs, for `Depends:`
/// (read from its bytes: no objdump needed).
fn glibc_needed(binary: &[u8]) -> Option<u32> {
    const TAG: &[u8] = b"GLIBC_2.";
    binary
        .windows(TAG.len())
        .enumerate()
        .filter(|(_, w)| *w == TAG)
        .filter_map(|(i, _)| {
            let digits: Vec<u8> = binary[i + TAG.len()..]
                .iter()
                .take(3)
                .take_while(|b| b.is_ascii_digit())
                .copied()
                .collect();
            std::str::from_utf8(&digits).ok()?.parse().ok()
        })
        .max()
}

/// The Apache-2.0 text in Debian's copyright format: each line indented, blank
/// lines as ` .`.
fn copyright(license: &str) -> String {
    let mut text = String::from(
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\
         Upstream-Name: matriarch\n\n\
         Files: *\n\
         Copyright: the matriarch developers\n\
         License: Apache-2.0\n\n\
         License: Apache-2.0\n",
    );
    for line in license.trim_matches('\n').lines() {
        if line.trim().is_empty() {
            text.push_str(" .\n");
        } else {
            text.push(' ');
            text.push_str(line.trim_end());
            text.push('\n');
        }
    }
    text.push_str(
        " .\n On Debian systems the license is also in /usr/share/common-licenses/Apache-2.0.\n",
    );
    text
}

/// Stages the package's tree under target/debian and runs `dpkg-deb --build`.
fn build_deb(root: &Path, target: &Path, binary: &Path) -> Result<PathBuf> {
    let version = output(Command::new(binary).arg("version"))?;
    let version = version
        .strip_prefix("matriarch ")
        .filter(|v| {
            !v.is_empty()
                && v.chars()
                    .all(|c| c.is_ascii_alphanumeric() || ".+~-".contains(c))
        })
        .ok_or_else(|| Failure(format!("`matriarch version` printed {version:?}")))?
        .to_owned();
    let arch = output(Command::new("dpkg").arg("--print-architecture"))?;
    let out_dir = target.join("debian");
    let stage = out_dir.join(format!("{NAME}_{version}_{arch}"));
    // A fresh tree each time; the path is checked before the recursive removal.
    if stage.exists() {
        let ours = target.is_absolute()
            && stage.starts_with(target.join("debian"))
            && stage
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("matriarch_"));
        if !ours {
            return Err(Failure(format!(
                "refusing to remove {}: not under the target directory",
                stage.display()
            )));
        }
        std::fs::remove_dir_all(&stage).map_err(|e| io_err(&stage, e))?;
    }
    let bytes = std::fs::read(binary).map_err(|e| io_err(binary, e))?;
    put(&stage, "usr/bin/matriarch", &bytes, 0o755)?;
    // Debian ships stripped binaries; strip is in binutils, not everywhere.
    let staged_binary = stage.join("usr/bin/matriarch");
    if Path::new("/usr/bin/strip").is_file() {
        run(Command::new("/usr/bin/strip")
            .arg("--strip-unneeded")
            .arg(&staged_binary))?;
    } else {
        println!("package: /usr/bin/strip not found; the binary is not stripped");
    }
    for (src, dest, mode) in FILES {
        let src = root.join(src);
        let bytes = std::fs::read(&src).map_err(|e| io_err(&src, e))?;
        put(&stage, dest, &bytes, *mode)?;
    }
    let license = std::fs::read_to_string(root.join("LICENSE"))
        .map_err(|e| io_err(&root.join("LICENSE"), e))?;
    put(
        &stage,
        "usr/share/doc/matriarch/copyright",
        copyright(&license).as_bytes(),
        0o644,
    )?;
    put(
        &stage,
        "DEBIAN/conffiles",
        b"/etc/matriarch/node.yaml\n",
        0o644,
    )?;
    let installed_kib = fix_dir_modes(&stage)?;
    let depends = match glibc_needed(&bytes) {
        Some(minor) => format!("libc6 (>= 2.{minor})"),
        None => "libc6".to_owned(),
    };
    let control = format!(
        "Package: {NAME}\n\
         Version: {version}\n\
         Architecture: {arch}\n\
         Maintainer: matriarch developers <matriarch@example.invalid>\n\
         Installed-Size: {installed_kib}\n\
         Depends: {depends}\n\
         Recommends: postgresql-15 | postgresql-16 | postgresql-17 | postgresql-18\n\
         Suggests: etcd-server\n\
         Section: database\n\
         Priority: optional\n\
         Description: HA agent for PostgreSQL streaming replication\n \
         matriarch keeps one PostgreSQL primary per cluster and fails over to a\n \
         replica, in Patroni's manner: leader lock in etcd or ZooKeeper, a\n \
         Patroni-compatible REST API, `matriarch ctl` like patronictl, and a\n \
         write fence that stops a deposed primary. PostgreSQL 15 to 18.\n"
    );
    put(&stage, "DEBIAN/control", control.as_bytes(), 0o644)?;
    let deb = out_dir.join(format!("{NAME}_{version}_{arch}.deb"));
    run(Command::new("dpkg-deb")
        .args(["--root-owner-group", "--build"])
        .arg(&stage)
        .arg(&deb))?;
    Ok(deb)
}

/// Installs the package and checks what an operator relies on: the binary and
/// its version, the unit, and that the packaged configuration passes
/// `matriarch check`, as root and as the unit's user.
fn install_and_check(deb: &Path) -> Result {
    println!("==> cargo xtask package --check: dpkg -i {}", deb.display());
    run(Command::new("dpkg")
        .arg("-i")
        .arg(deb)
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    for path in [
        INSTALLED_BINARY,
        INSTALLED_CONFIG,
        INSTALLED_UNIT,
        "/usr/share/doc/matriarch/copyright",
    ] {
        if !Path::new(path).is_file() {
            return Err(Failure(format!("{path} is not installed")));
        }
    }
    let version = output(Command::new(INSTALLED_BINARY).arg("version"))?;
    println!("{INSTALLED_BINARY} version: {version}");
    let checked =
        output(Command::new(INSTALLED_BINARY).args(["check", "--config", INSTALLED_CONFIG]))?;
    println!("matriarch check (root): {checked}");
    // `check` names the PostgreSQL it found; a supported one is 15 to 18.
    let major = checked
        .strip_suffix(')')
        .and_then(|s| s.rsplit_once("valid (PostgreSQL "))
        .and_then(|(_, major)| major.parse::<u32>().ok());
    if !major.is_some_and(|m| (15..=18).contains(&m)) {
        return Err(Failure(format!(
            "`matriarch check` printed {checked:?}, not `valid (PostgreSQL 15..18)`"
        )));
    }
    // The unit runs the agent as postgres, which must read the file.
    if Command::new("id")
        .args(["-u", "postgres"])
        .output()
        .is_ok_and(|o| o.status.success())
    {
        let checked = output(Command::new("runuser").args([
            "-u",
            "postgres",
            "--",
            INSTALLED_BINARY,
            "check",
            "--config",
            INSTALLED_CONFIG,
        ]))?;
        println!("matriarch check (as postgres): {checked}");
    }
    if Path::new("/usr/bin/systemd-analyze").is_file() {
        output(Command::new("/usr/bin/systemd-analyze").args(["verify", INSTALLED_UNIT]))?;
        println!("systemd-analyze verify {INSTALLED_UNIT}: ok");
    }
    Ok(())
}

/// `dpkg --purge`, then checks nothing of the package is left.
fn purge() -> Result {
    run(Command::new("dpkg")
        .args(["--purge", NAME])
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    for path in [INSTALLED_BINARY, INSTALLED_CONFIG, INSTALLED_UNIT] {
        if Path::new(path).exists() {
            return Err(Failure(format!("{path} is still there after dpkg --purge")));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glibc_needed_is_the_newest_version_named() {
        let bytes = b"\0GLIBC_2.2.5\0GLIBC_2.34\0GLIBC_2.17\0GLIBC_PRIVATE\0";
        assert_eq!(glibc_needed(bytes), Some(34));
        assert_eq!(glibc_needed(b"no versions"), None);
    }

    #[test]
    fn the_copyright_file_keeps_paragraph_breaks() {
        let text = copyright("\nLine one\n\nLine two\n");
        assert!(
            text.contains("License: Apache-2.0\n Line one\n .\n Line two\n"),
            "{text}"
        );
    }
}
