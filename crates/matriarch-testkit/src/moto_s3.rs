//! An S3 bucket on moto's server over HTTPS, with a certificate from a [`TestCa`]:
//! what pgBackRest (which speaks only TLS to S3) needs for a repository.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use tempfile::TempDir;

use crate::certs::TestCa;
use crate::error::{IoContext, Result};
use crate::moto::{moto_venv, MotoServer};
use crate::process::{require_program, run_checked};

/// The region of the bucket (moto accepts any; pgBackRest signs with it).
pub const MOTO_S3_REGION: &str = "us-east-1";

/// moto accepts any credentials; these are the ones the caller hands on.
const ACCESS_KEY_ID: &str = "matriarch-test-key";
const SECRET_ACCESS_KEY: &str = "matriarch-test-secret";

/// The server certificate's names. pgBackRest 2.45 checks the host it connects
/// to against the certificate's DNS names only (an IP address entry never
/// matches), so `127.0.0.1` is also a DNS name; Python's clients match the IP entry.
const S3_SERVER_EXTENSIONS: &str = "subjectAltName=IP:127.0.0.1,DNS:127.0.0.1,DNS:localhost\n\
                                    extendedKeyUsage=serverAuth\n";

/// Creates the bucket with boto3 from the moto venv, trusting only the test CA;
/// retries while the server is still coming up.
const CREATE_BUCKET: &str = r#"
import os, sys, time
import boto3
s3 = boto3.client("s3", endpoint_url=os.environ["ENDPOINT"], verify=os.environ["CA_FILE"],
                  region_name=os.environ["AWS_DEFAULT_REGION"])
deadline = time.time() + 30
while True:
    try:
        s3.create_bucket(Bucket=os.environ["BUCKET"])
        break
    except Exception as e:
        if time.time() > deadline:
            sys.exit(f"create_bucket failed: {e}")
        time.sleep(0.2)
"#;

/// moto's S3 on a free 127.0.0.1 port over HTTPS, with one empty bucket. The CA
/// certificate is readable by every user (pgBackRest runs as the PostgreSQL OS
/// user); the server is killed and the files removed on drop.
#[derive(Debug)]
pub struct MotoS3 {
    server: MotoServer,
    ca_file: PathBuf,
    bucket: String,
    _dir: TempDir,
}

impl MotoS3 {
    /// Makes a CA and a server certificate for 127.0.0.1, starts moto with it and
    /// creates `bucket` (path-style) through HTTPS.
    pub fn start(bucket: &str) -> Result<MotoS3> {
        let python = moto_venv().join("bin/python");
        require_program("python (moto venv)", &python)?;
        let dir = tempfile::Builder::new()
            .prefix("matriarch-s3-")
            .tempdir_in("/tmp")
            .ctx(|| "creating a temporary directory for the S3 certificates".to_string())?;
        // Other users may enter the directory and read the CA certificate only.
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755))
            .ctx(|| format!("chmod {}", dir.path().display()))?;
        let ca = TestCa::create(dir.path(), "s3-ca")?;
        ca.issue("s3-server", S3_SERVER_EXTENSIONS)?;
        fs::set_permissions(ca.pem(), fs::Permissions::from_mode(0o644))
            .ctx(|| format!("chmod {}", ca.pem().display()))?;
        let server = MotoServer::start_tls(
            &dir.path().join("s3-server.pem"),
            &dir.path().join("s3-server-key.pem"),
        )?;
        let s3 = MotoS3 {
            server,
            ca_file: ca.pem(),
            bucket: bucket.to_owned(),
            _dir: dir,
        };
        let mut create = Command::new(&python);
        create.args(["-c", CREATE_BUCKET]);
        s3.set_client_env(&mut create).env("BUCKET", bucket);
        run_checked(&mut create)?;
        Ok(s3)
    }

    /// Sets what an AWS client needs for this bucket's server: `ENDPOINT`,
    /// `CA_FILE`, `AWS_CA_BUNDLE`, the credentials and the region.
    pub fn set_client_env<'a>(&self, cmd: &'a mut Command) -> &'a mut Command {
        cmd.env("ENDPOINT", self.endpoint_url())
            .env("CA_FILE", &self.ca_file)
            .env("AWS_CA_BUNDLE", &self.ca_file)
            .env("AWS_ACCESS_KEY_ID", ACCESS_KEY_ID)
            .env("AWS_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY)
            .env("AWS_DEFAULT_REGION", MOTO_S3_REGION)
    }

    /// `https://127.0.0.1:PORT`.
    pub fn endpoint_url(&self) -> String {
        self.server.endpoint_url()
    }

    /// The host to connect to: `127.0.0.1`.
    pub fn host(&self) -> &'static str {
        "127.0.0.1"
    }

    /// The HTTPS port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.server.port()
    }

    /// The CA certificate (PEM) that signed the server's certificate.
    pub fn ca_file(&self) -> &Path {
        &self.ca_file
    }

    /// The bucket made by [`MotoS3::start`].
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The region: [`MOTO_S3_REGION`].
    pub fn region(&self) -> &'static str {
        MOTO_S3_REGION
    }

    /// The access key id to sign with.
    pub fn access_key_id(&self) -> &'static str {
        ACCESS_KEY_ID
    }

    /// The secret access key to sign with.
    pub fn secret_access_key(&self) -> &'static str {
        SECRET_ACCESS_KEY
    }

    /// The last lines of moto's log.
    pub fn log_tail(&self) -> String {
        self.server.log_tail()
    }
}
