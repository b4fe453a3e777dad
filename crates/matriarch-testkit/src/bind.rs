//! A real BIND 9 authoritative server with a TSIG-protected dynamic zone.

use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use tempfile::TempDir;

use crate::error::{IoContext, Result, TestkitError};
use crate::ports::free_tcp_udp_port;
use crate::process::{
    describe, find_program, process_controls, retry_on_port_clash, temp_dir, ServiceProcess, Spec,
};

const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// The zone every [`BindServer`] serves (without the trailing dot).
pub const BIND_ZONE: &str = "matriarch.test";
/// The name of the TSIG key allowed to update the zone.
pub const BIND_TSIG_KEY_NAME: &str = "matriarch-key";
/// The TSIG algorithm of the key.
pub const BIND_TSIG_ALGORITHM: &str = "hmac-sha256";

/// A fresh TSIG secret: 32 random bytes, base64.
pub fn random_tsig_secret() -> Result<String> {
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .ctx(|| "reading 32 random bytes from /dev/urandom".to_string())?;
    use base64::Engine as _;
    Ok(base64::engine::general_purpose::STANDARD.encode(bytes))
}

/// BIND 9 (`named -g`) serving the zone [`BIND_ZONE`] on a free UDP+TCP port on
/// 127.0.0.1. Updates are allowed only when signed with a TSIG key generated for this
/// server. The zone holds SOA, NS, `ns A 127.0.0.1` and `primary A 127.0.0.1` (TTL 5).
/// Killed and its directory removed on drop.
#[derive(Debug)]
pub struct BindServer {
    port: u16,
    secret: String,
    key_file: PathBuf,
    dig: PathBuf,
    nsupdate: PathBuf,
    process: Mutex<ServiceProcess>,
    _dir: TempDir,
}

impl BindServer {
    /// Writes the configuration, starts `named` and waits until it answers for the zone.
    pub fn start() -> Result<Self> {
        let named = find_program("named")?;
        let dig = find_program("dig")?;
        let nsupdate = find_program("nsupdate")?;
        let secret = random_tsig_secret()?;
        retry_on_port_clash("named start", Duration::ZERO, || {
            let dir = temp_dir("matriarch-bind-", "BIND")?;
            let d = dir.path();
            let port = free_tcp_udp_port()?;
            let conf_file = BindConfig {
                dir: d,
                listen: Ipv4Addr::LOCALHOST,
                port,
                zone: BIND_ZONE,
                key_name: BIND_TSIG_KEY_NAME,
                secret: &secret,
                record_ttl: 5,
            }
            .write()?;
            let key_file = d.join("tsig.key");
            let spec = named_args(&conf_file)
                .into_iter()
                .fold(Spec::new(&named), Spec::arg);
            let process = ServiceProcess::spawn("named", spec, d.join("named.log"))?;
            let server = BindServer {
                port,
                secret: secret.clone(),
                key_file,
                dig: dig.clone(),
                nsupdate: nsupdate.clone(),
                process: Mutex::new(process),
                _dir: dir,
            };
            server.wait_ready()?;
            Ok(server)
        })
    }

    process_controls!("named");

    fn wait_ready(&self) -> Result<()> {
        let mut cmd = self.dig_command(BIND_ZONE, "SOA");
        self.lock().wait_until(READY_TIMEOUT, || {
            let out = cmd.output().map_err(|e| format!("running dig: {e}"))?;
            let text = String::from_utf8_lossy(&out.stdout);
            if out.status.success() && !text.trim().is_empty() {
                Ok(true)
            } else {
                Err(format!("dig SOA answered `{}`", text.trim()))
            }
        })
    }

    fn dig_command(&self, name: &str, rtype: &str) -> Command {
        let mut cmd = Command::new(&self.dig);
        cmd.arg("@127.0.0.1")
            .arg("-p")
            .arg(self.port.to_string())
            .args(["+short", "+time=2", "+tries=2", name, rtype])
            .stdin(Stdio::null());
        cmd
    }

    /// The DNS port (UDP and TCP) on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The zone name without trailing dot: `matriarch.test`.
    pub fn zone(&self) -> &'static str {
        BIND_ZONE
    }

    /// The TSIG key name: `matriarch-key`.
    pub fn tsig_key_name(&self) -> &'static str {
        BIND_TSIG_KEY_NAME
    }

    /// The TSIG algorithm: `hmac-sha256`.
    pub fn tsig_algorithm(&self) -> &'static str {
        BIND_TSIG_ALGORITHM
    }

    /// The TSIG secret (32 random bytes, base64).
    pub fn tsig_secret_base64(&self) -> &str {
        &self.secret
    }

    /// The key file in BIND syntax (usable with `nsupdate -k`).
    pub fn tsig_key_file(&self) -> &Path {
        &self.key_file
    }

    /// Resolves `name` (e.g. `primary.matriarch.test`) to its A records with
    /// `dig +short`. An empty answer (NXDOMAIN, no A record) gives an empty vector.
    pub fn query_a(&self, name: &str) -> Result<Vec<Ipv4Addr>> {
        let mut cmd = self.dig_command(name, "A");
        let what = describe(&cmd);
        let out = cmd.output().ctx(|| format!("running `{what}`"))?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            return Err(TestkitError::CommandFailed {
                command: what,
                status: out.status.to_string(),
                stdout,
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }
        let mut addrs = Vec::new();
        for line in stdout.lines().map(str::trim).filter(|l| !l.is_empty()) {
            match line.parse::<Ipv4Addr>() {
                Ok(a) => addrs.push(a),
                // A CNAME target in a +short answer ends with a dot; skip it.
                Err(_) if line.ends_with('.') => {}
                Err(_) => {
                    return Err(TestkitError::Parse {
                        context: format!("`{what}`"),
                        detail: format!("line `{line}` is not an IPv4 address"),
                    })
                }
            }
        }
        Ok(addrs)
    }

    /// Runs `nsupdate` signed with the zone's TSIG key. `script` holds the update
    /// commands (e.g. `update delete primary.matriarch.test. A`); the `server` and
    /// `zone` lines are prepended, and `send` appended when missing. Returns stdout;
    /// a refused or failed update is an error.
    pub fn nsupdate(&self, script: &str) -> Result<String> {
        self.run_nsupdate(script, true)
    }

    /// Like [`BindServer::nsupdate`] but without the key (the server must refuse it).
    pub fn nsupdate_unsigned(&self, script: &str) -> Result<String> {
        self.run_nsupdate(script, false)
    }

    fn run_nsupdate(&self, script: &str, signed: bool) -> Result<String> {
        let mut cmd = Command::new(&self.nsupdate);
        if signed {
            cmd.arg("-k").arg(&self.key_file);
        }
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let what = describe(&cmd);
        let mut input = format!("server 127.0.0.1 {}\nzone {BIND_ZONE}.\n", self.port);
        input.push_str(script);
        if !input.ends_with('\n') {
            input.push('\n');
        }
        if !script.lines().any(|l| l.trim() == "send") {
            input.push_str("send\n");
        }
        let mut child = cmd.spawn().ctx(|| format!("starting `{what}`"))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(input.as_bytes())
                .ctx(|| format!("writing the script to `{what}`"))?;
        }
        let out = child
            .wait_with_output()
            .ctx(|| format!("waiting for `{what}`"))?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() {
            Ok(stdout)
        } else {
            Err(TestkitError::CommandFailed {
                command: format!("{what} <<< {input:?}"),
                status: out.status.to_string(),
                stdout,
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            })
        }
    }
}

/// The files of a BIND 9 server with one dynamic zone that only updates signed
/// with a TSIG key ([`BIND_TSIG_ALGORITHM`]) may change: what [`BindServer`] runs,
/// and what the chaos run starts in its DNS namespace. The zone holds SOA, NS,
/// `ns A <listen>` and `primary A 127.0.0.1`, all with `record_ttl`.
#[derive(Debug, Clone)]
pub struct BindConfig<'a> {
    /// Where the files go (named's working directory).
    pub dir: &'a Path,
    /// The address named listens on (and the zone's `ns` record).
    pub listen: Ipv4Addr,
    /// Its port (UDP and TCP).
    pub port: u16,
    /// The zone, without the trailing dot.
    pub zone: &'a str,
    /// The TSIG key's name.
    pub key_name: &'a str,
    /// The TSIG secret, base64 ([`random_tsig_secret`]).
    pub secret: &'a str,
    /// The TTL of every record, in seconds.
    pub record_ttl: u32,
}

impl BindConfig<'_> {
    /// Writes `tsig.key`, the zone file and `named.conf` into [`BindConfig::dir`];
    /// the path of `named.conf`.
    pub fn write(&self) -> Result<PathBuf> {
        let BindConfig {
            dir,
            listen,
            port,
            zone,
            key_name,
            secret,
            record_ttl: ttl,
        } = *self;
        let key_file = dir.join("tsig.key");
        write_file(
            &key_file,
            &format!(
                "key \"{key_name}\" {{\n    algorithm {BIND_TSIG_ALGORITHM};\n    secret \"{secret}\";\n}};\n"
            ),
        )?;
        let zone_file = dir.join(format!("{zone}.zone"));
        write_file(
            &zone_file,
            &format!(
                "$TTL {ttl}\n\
                 @ IN SOA ns.{zone}. hostmaster.{zone}. (1 60 30 600 {ttl})\n\
                 @ IN NS ns.{zone}.\n\
                 ns IN A {listen}\n\
                 primary {ttl} IN A 127.0.0.1\n"
            ),
        )?;
        let conf_file = dir.join("named.conf");
        let d = dir.display();
        write_file(
            &conf_file,
            &format!(
                "include \"{key}\";\n\
                 options {{\n\
                 \x20   directory \"{d}\";\n\
                 \x20   pid-file \"{d}/named.pid\";\n\
                 \x20   session-keyfile \"{d}/session.key\";\n\
                 \x20   managed-keys-directory \"{d}\";\n\
                 \x20   listen-on port {port} {{ {listen}; }};\n\
                 \x20   listen-on-v6 {{ none; }};\n\
                 \x20   recursion no;\n\
                 \x20   dnssec-validation no;\n\
                 \x20   notify no;\n\
                 }};\n\
                 controls {{ }};\n\
                 zone \"{zone}\" {{\n\
                 \x20   type primary;\n\
                 \x20   file \"{zone_path}\";\n\
                 \x20   allow-update {{ key \"{key_name}\"; }};\n\
                 }};\n",
                key = key_file.display(),
                zone_path = zone_file.display(),
            ),
        )?;
        Ok(conf_file)
    }
}

/// named's arguments for `conf` (after the program): in the foreground, IPv4,
/// one worker thread.
pub fn named_args(conf: &Path) -> Vec<std::ffi::OsString> {
    let mut args: Vec<std::ffi::OsString> = ["-g", "-4", "-n", "1", "-c"].map(Into::into).to_vec();
    args.push(conf.into());
    args
}

fn write_file(path: &Path, content: &str) -> Result<()> {
    std::fs::write(path, content).ctx(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_serves_the_zone_on_the_given_address_to_signed_updates_only() {
        let dir = tempfile::tempdir().unwrap();
        let conf = BindConfig {
            dir: dir.path(),
            listen: Ipv4Addr::new(127, 1, 0, 30),
            port: 53,
            zone: "chaos.test",
            key_name: "k",
            secret: "c2VjcmV0",
            record_ttl: 1,
        }
        .write()
        .unwrap();
        let text = std::fs::read_to_string(&conf).unwrap();
        assert!(
            text.contains("listen-on port 53 { 127.1.0.30; };"),
            "{text}"
        );
        assert!(text.contains("allow-update { key \"k\"; };"), "{text}");
        let zone = std::fs::read_to_string(dir.path().join("chaos.test.zone")).unwrap();
        assert!(zone.starts_with("$TTL 1\n"), "{zone}");
        assert!(
            zone.contains("ns IN A 127.1.0.30\nprimary 1 IN A 127.0.0.1\n"),
            "{zone}"
        );
        let key = std::fs::read_to_string(dir.path().join("tsig.key")).unwrap();
        assert!(
            key.contains("algorithm hmac-sha256;") && key.contains("c2VjcmV0"),
            "{key}"
        );
        assert_eq!(
            named_args(&conf).last().map(|a| a.as_os_str()),
            Some(conf.as_os_str())
        );
    }
}
