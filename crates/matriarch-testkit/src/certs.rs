//! Certificates for TLS tests, made with openssl: a CA and the certificates
//! it signs, as PEM files in a directory (EC P-256 keys, valid two days).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{IoContext, Result};
use crate::process::run_checked;

/// The extensions of a server certificate for 127.0.0.1 (and `localhost`)
/// that may also authenticate as a client.
pub const SERVER_EXTENSIONS: &str =
    "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n";

/// The extensions of a client certificate.
pub const CLIENT_EXTENSIONS: &str = "extendedKeyUsage=clientAuth\n";

/// A self-signed CA in a directory: `<name>.pem` and `<name>-key.pem`.
#[derive(Debug, Clone)]
pub struct TestCa {
    dir: PathBuf,
    name: String,
}

impl TestCa {
    /// Makes the CA `<name>.pem` / `<name>-key.pem` (subject `/CN=<name>`) in `dir`.
    pub fn create(dir: &Path, name: &str) -> Result<TestCa> {
        let (key, pem) = (format!("{name}-key.pem"), format!("{name}.pem"));
        let mut req = openssl_new_key(dir, &["req", "-x509"]);
        req.args(["-keyout", &key, "-out", &pem, "-days", "2"])
            .args(["-subj", &format!("/CN={name}")]);
        run_checked(&mut req)?;
        Ok(TestCa {
            dir: dir.to_path_buf(),
            name: name.to_owned(),
        })
    }

    /// The CA certificate.
    pub fn pem(&self) -> PathBuf {
        self.dir.join(format!("{}.pem", self.name))
    }

    /// Makes `<cn>.pem` / `<cn>-key.pem` (subject `/CN=<cn>`) signed by this
    /// CA, with `extensions` in openssl's extension file syntax (e.g.
    /// [`SERVER_EXTENSIONS`], [`CLIENT_EXTENSIONS`]).
    pub fn issue(&self, cn: &str, extensions: &str) -> Result<()> {
        let dir = &self.dir;
        let (key, csr, pem, ext) = (
            format!("{cn}-key.pem"),
            format!("{cn}.csr"),
            format!("{cn}.pem"),
            format!("{cn}.ext"),
        );
        let ext_path = dir.join(&ext);
        fs::write(&ext_path, extensions).ctx(|| format!("writing {}", ext_path.display()))?;
        let mut req = openssl_new_key(dir, &["req"]);
        req.args(["-keyout", &key, "-out", &csr])
            .args(["-subj", &format!("/CN={cn}")]);
        run_checked(&mut req)?;
        let (ca_pem, ca_key) = (
            format!("{}.pem", self.name),
            format!("{}-key.pem", self.name),
        );
        let mut sign = Command::new("openssl");
        sign.args([
            "x509", "-req", "-in", &csr, "-CA", &ca_pem, "-CAkey", &ca_key,
        ])
        .args([
            "-CAcreateserial",
            "-out",
            &pem,
            "-days",
            "2",
            "-extfile",
            &ext,
        ])
        .current_dir(dir);
        run_checked(&mut sign).map(|_| ())
    }
}

/// `openssl <command> -newkey ec (P-256) -nodes`, run in `dir`.
fn openssl_new_key(dir: &Path, command: &[&str]) -> Command {
    let mut openssl = Command::new("openssl");
    openssl
        .args(command)
        .args([
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ])
        .current_dir(dir);
    openssl
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_signs_a_server_and_a_client_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::create(dir.path(), "ca").unwrap();
        ca.issue("server", SERVER_EXTENSIONS).unwrap();
        ca.issue("admin", CLIENT_EXTENSIONS).unwrap();
        assert_eq!(ca.pem(), dir.path().join("ca.pem"));
        for file in [
            "ca.pem",
            "ca-key.pem",
            "server.pem",
            "server-key.pem",
            "admin.pem",
        ] {
            assert!(dir.path().join(file).is_file(), "{file}");
        }
        let verify = Command::new("openssl")
            .args(["verify", "-CAfile", "ca.pem", "server.pem", "admin.pem"])
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(verify.status.success(), "{verify:?}");
    }
}
