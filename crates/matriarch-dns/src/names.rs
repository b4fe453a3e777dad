//! DNS names as the router takes them from its configuration.

use hickory_proto::rr::Name;
use matriarch_router::RouterError;

/// `text` as a fully qualified name (a trailing dot is optional); `what`
/// says which setting it came from.
pub(crate) fn fqdn(what: &str, text: &str) -> Result<Name, RouterError> {
    let mut name =
        Name::from_ascii(text.trim_end_matches('.')).map_err(|e| RouterError::Config {
            message: format!("{what} `{text}` is not a valid DNS name: {e}"),
        })?;
    name.set_fqdn(true);
    Ok(name)
}
