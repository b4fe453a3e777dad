//! `--config node.yaml`: only the keys `ctl` needs, read leniently from a node's YAML
//! (`restapi.connect_address`/`listen`, `restapi.authentication`, `restapi.certfile`, and
//! Patroni's `ctl.cacert`/`certfile`/`keyfile`); everything else in the file is ignored.

use std::path::{Path, PathBuf};

use matriarch_model::{HostPort, Secret};
use serde_norway::Value;

use super::client::TlsFiles;

/// What a node's YAML tells `ctl` about reaching its REST API.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct NodeRestApi {
    /// The REST API's base URL.
    pub url: String,
    /// `restapi.authentication.username`.
    pub username: Option<String>,
    /// `restapi.authentication.password`.
    pub password: Option<Secret>,
    /// `ctl.cacert` (else `restapi.cafile`), `ctl.certfile`, `ctl.keyfile`.
    pub tls: TlsFiles,
}

fn lookup<'a>(root: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(root, |node, key| node.get(*key))
}

fn scalar(root: &Value, path: &[&str]) -> Result<Option<String>, String> {
    match lookup(root, path) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.trim().to_string())),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(Value::Bool(b)) => Ok(Some(b.to_string())),
        Some(_) => Err(format!("{} must be a string", path.join("."))),
    }
}

/// Turns a `listen` address into one to connect to: the wildcard hosts `0.0.0.0`, `::` and
/// an empty host become the loopback address.
fn connectable(listen: &str) -> String {
    let first = listen.split(',').next().unwrap_or("").trim();
    // `:8008` listens on every address, like `0.0.0.0:8008`.
    let address = match first.strip_prefix(':') {
        Some(port) if !port.contains(':') => HostPort::parse(&format!("0.0.0.0:{port}")),
        _ => HostPort::parse(first),
    };
    match address {
        Ok(mut address) => {
            match address.host.as_str() {
                "0.0.0.0" | "*" => address.host = "127.0.0.1".to_owned(),
                "::" => address.host = "::1".to_owned(),
                _ => {}
            }
            address.to_string()
        }
        Err(_) => first.to_string(),
    }
}

/// Reads the REST API settings from the text of a node's YAML.
pub(crate) fn parse(text: &str) -> Result<NodeRestApi, String> {
    let root: Value = serde_norway::from_str(text).map_err(|e| format!("not valid YAML: {e}"))?;
    if !matches!(root, Value::Mapping(_)) {
        return Err("the file is not a YAML mapping".into());
    }
    let address = match scalar(&root, &["restapi", "connect_address"])? {
        Some(address) => address,
        None => match scalar(&root, &["restapi", "listen"])? {
            Some(listen) => connectable(&listen),
            None => return Err("it has neither restapi.connect_address nor restapi.listen".into()),
        },
    };
    let tls = scalar(&root, &["restapi", "certfile"])?.is_some();
    let url = if address.contains("://") {
        address
    } else if tls {
        format!("https://{address}")
    } else {
        format!("http://{address}")
    };
    let path = |keys: &[&str]| scalar(&root, keys).map(|v| v.map(PathBuf::from));
    Ok(NodeRestApi {
        url,
        username: scalar(&root, &["restapi", "authentication", "username"])?,
        password: scalar(&root, &["restapi", "authentication", "password"])?.map(Secret::new),
        tls: TlsFiles {
            cacert: match path(&["ctl", "cacert"])? {
                Some(p) => Some(p),
                None => path(&["restapi", "cafile"])?,
            },
            certfile: path(&["ctl", "certfile"])?,
            keyfile: path(&["ctl", "keyfile"])?,
        },
    })
}

/// Reads the REST API settings from a node's YAML file; the error names the file.
pub(crate) fn load(file: &Path) -> Result<NodeRestApi, String> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    parse(&text).map_err(|e| format!("{}: {e}", file.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_address_and_authentication_are_read_and_the_rest_ignored() {
        let node = parse(
            "scope: demo\nname: pg1\nunknown: [1, 2]\nrestapi:\n  listen: 0.0.0.0:8008\n  connect_address: 10.0.0.1:8008\n  authentication:\n    username: admin\n    password: s3cret\npostgresql: {data_dir: /x}\n",
        )
        .expect("parses");
        assert_eq!(node.url, "http://10.0.0.1:8008");
        assert_eq!(node.username.as_deref(), Some("admin"));
        assert_eq!(node.password.as_ref().map(Secret::expose), Some("s3cret"));
        assert!(!format!("{node:?}").contains("s3cret"));
    }

    #[test]
    fn listen_is_used_without_connect_address_and_wildcards_become_loopback() {
        for (listen, url) in [
            ("0.0.0.0:8009", "http://127.0.0.1:8009"),
            (":8010", "http://127.0.0.1:8010"),
            ("[::]:8011", "http://[::1]:8011"),
            ("127.0.0.2:8012", "http://127.0.0.2:8012"),
        ] {
            let node = parse(&format!("restapi: {{listen: '{listen}'}}")).expect("ok");
            assert_eq!(node.url, url, "{listen}");
        }
    }

    #[test]
    fn a_certfile_means_https_and_ctl_tls_files_are_read() {
        let node = parse(
            "restapi: {connect_address: 'db1:8008', certfile: /etc/ssl/api.pem, cafile: /etc/ssl/ca.pem}\nctl: {certfile: c.pem, keyfile: k.pem}",
        )
        .expect("parses");
        assert_eq!(node.url, "https://db1:8008");
        assert_eq!(node.tls.cacert, Some(PathBuf::from("/etc/ssl/ca.pem")));
        assert_eq!(node.tls.certfile, Some(PathBuf::from("c.pem")));
        assert_eq!(node.tls.keyfile, Some(PathBuf::from("k.pem")));
    }

    #[test]
    fn bad_files_get_clear_errors() {
        assert!(parse("restapi: [").unwrap_err().contains("not valid YAML"));
        assert!(parse("- a").unwrap_err().contains("not a YAML mapping"));
        assert!(parse("scope: x")
            .unwrap_err()
            .contains("restapi.connect_address"));
        assert!(parse("restapi: {connect_address: [1]}")
            .unwrap_err()
            .contains("restapi.connect_address must be a string"));
        let err = load(Path::new("/nonexistent/node.yaml")).unwrap_err();
        assert!(err.contains("/nonexistent/node.yaml"), "{err}");
    }
}
