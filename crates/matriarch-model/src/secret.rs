//! Passwords, and text that contains them, kept out of logs.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer};
use zeroize::Zeroize;

/// What `Debug` and `Display` print in place of a secret.
const REDACTED: &str = "***";

/// A password, or text that contains one (a rendered `primary_conninfo`, a
/// TSIG key).
///
/// `Debug` and `Display` print `***`, so a secret inside any struct that is
/// logged with `{:?}` stays hidden; the value is only reachable through
/// [`Secret::expose`], which makes every use that writes it somewhere visible
/// in the code. It deserializes from a string but does not implement
/// `Serialize`, so it never lands in a file or a response by accident. Its
/// memory is zeroed when it is dropped.
///
/// ```compile_fail
/// fn serializable<T: serde::Serialize>() {}
/// serializable::<matriarch_model::Secret>();
/// ```
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself, for the one place that must write or send it (a
    /// config file, a libpq connection string, an authentication packet).
    /// Never log the result.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Secret(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Secret(value.to_owned())
    }
}

/// For command-line parsers (clap) that build values with `FromStr`.
impl FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        Ok(Secret::from(value))
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Secret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWORD: &str = "hunter2-s3cr3t";

    #[test]
    fn debug_and_display_never_show_the_value() {
        let secret = Secret::new(PASSWORD);
        assert_eq!(format!("{secret:?}"), "***");
        assert_eq!(format!("{secret}"), "***");
        assert_eq!(format!("{secret:#?}"), "***");
        assert_eq!(format!("{:?}", Some(&secret)), "Some(***)");
        assert_eq!(secret.expose(), PASSWORD);
    }

    #[test]
    fn a_struct_holding_a_secret_logs_without_it() {
        #[derive(Debug)]
        #[allow(dead_code)] // read only through Debug
        struct Login {
            user: String,
            password: Secret,
        }
        let login = Login {
            user: "replicator".to_owned(),
            password: PASSWORD.into(),
        };
        let logged = format!("{login:?} {login:#?}");
        assert!(!logged.contains(PASSWORD), "{logged}");
        assert!(
            logged.contains("replicator") && logged.contains("***"),
            "{logged}"
        );
    }

    #[test]
    fn deserializes_from_a_string_and_parses_from_the_command_line() {
        let secret: Secret = serde_json::from_str("\"pw\"").expect("a string");
        assert_eq!(secret.expose(), "pw");
        assert!(serde_json::from_str::<Secret>("42").is_err());
        let secret: Secret = "open sesame".parse().expect("infallible");
        assert_eq!(secret.expose(), "open sesame");
    }
}
