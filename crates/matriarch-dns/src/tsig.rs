//! TSIG keys (RFC 8945): the secret that signs every update, and the signer
//! built from it.

use std::fmt;

use hickory_proto::rr::rdata::tsig::TsigAlgorithm;
use hickory_proto::rr::TSigner;
use matriarch_router::RouterError;

use crate::base64;
use crate::names::fqdn;

/// The TSIG fudge (allowed clock difference) sent with every signed message.
const TSIG_FUDGE_SECS: u16 = 300;

/// A TSIG key: the name the server knows it by, its algorithm and its
/// secret. `Debug` never shows the secret.
#[derive(Clone)]
pub struct TsigKey {
    name: String,
    algorithm: String,
    secret: Vec<u8>,
}

impl TsigKey {
    /// A key from its name (e.g. `matriarch-key`), algorithm (`hmac-sha256`,
    /// `hmac-sha384`, `hmac-sha512` or `hmac-sha512-256`) and base64 secret
    /// (as in BIND's `key` statement or `tsig-keygen` output).
    pub fn from_base64(
        name: impl Into<String>,
        algorithm: impl Into<String>,
        secret_base64: &str,
    ) -> Result<Self, RouterError> {
        let name = name.into();
        let secret = base64::decode(secret_base64).map_err(|detail| RouterError::Config {
            message: format!("TSIG key `{name}`: the secret is not valid base64: {detail}"),
        })?;
        Ok(TsigKey {
            name,
            algorithm: algorithm.into(),
            secret,
        })
    }

    /// The key's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key's algorithm name.
    pub fn algorithm(&self) -> &str {
        &self.algorithm
    }
}

impl fmt::Debug for TsigKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TsigKey")
            .field("name", &self.name)
            .field("algorithm", &self.algorithm)
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl TsigKey {
    /// The signer for this key; checks the secret, the key name and the
    /// algorithm.
    pub(crate) fn signer(&self) -> Result<TSigner, RouterError> {
        if self.secret.is_empty() {
            return Err(RouterError::Config {
                message: format!("TSIG key `{}` has an empty secret", self.name),
            });
        }
        let key_name = fqdn("TSIG key name", &self.name)?;
        let algorithm = tsig_algorithm(&self.algorithm)?;
        TSigner::new(self.secret.clone(), algorithm, key_name, TSIG_FUDGE_SECS).map_err(|e| {
            RouterError::Config {
                message: format!("TSIG key `{}`: {e}", self.name),
            }
        })
    }
}

/// The algorithm a key names (hickory's names, case and a trailing dot
/// ignored).
fn tsig_algorithm(name: &str) -> Result<TsigAlgorithm, RouterError> {
    let algorithm = match name.trim_end_matches('.').to_ascii_lowercase().as_str() {
        "hmac-sha256" => TsigAlgorithm::HmacSha256,
        "hmac-sha384" => TsigAlgorithm::HmacSha384,
        "hmac-sha512" => TsigAlgorithm::HmacSha512,
        "hmac-sha512-256" => TsigAlgorithm::HmacSha512_256,
        other => {
            return Err(RouterError::Config {
                message: format!(
                    "TSIG algorithm `{other}` is not supported (use hmac-sha256, hmac-sha384, \
                     hmac-sha512 or hmac-sha512-256)"
                ),
            })
        }
    };
    Ok(algorithm)
}
