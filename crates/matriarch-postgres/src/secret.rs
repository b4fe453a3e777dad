//! Passwords, and text that contains them, kept out of logs.

use std::fmt;

/// A password, or text that contains one (a rendered `primary_conninfo`).
///
/// `Debug` and `Display` print `***`, so a secret inside any struct that is
/// logged with `{:?}` stays hidden; the value is only reachable through
/// [`Secret::expose`], which makes every use that writes it somewhere visible
/// in the code.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself, for the one place that must write it (a config
    /// file, a libpq connection string). Never log the result.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
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

/// A database role's name and password.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials {
    /// The role name.
    pub username: String,
    /// The password; `None` when the role authenticates otherwise (peer,
    /// certificate, or a password file that libpq reads on its own).
    pub password: Option<Secret>,
}

impl Credentials {
    /// A role with a password.
    pub fn new(username: impl Into<String>, password: impl Into<Secret>) -> Self {
        Credentials {
            username: username.into(),
            password: Some(password.into()),
        }
    }

    /// A role that authenticates without a password.
    pub fn without_password(username: impl Into<String>) -> Self {
        Credentials {
            username: username.into(),
            password: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWORD: &str = "hunter2-s3cr3t";

    #[test]
    fn secret_never_appears_in_debug_or_display() {
        let secret = Secret::new(PASSWORD);
        assert_eq!(format!("{secret:?}"), "***");
        assert_eq!(format!("{secret}"), "***");
        assert_eq!(format!("{secret:#?}"), "***");
        assert_eq!(secret.expose(), PASSWORD);
    }

    #[test]
    fn secret_stays_hidden_inside_logged_structs() {
        let credentials = Credentials::new("replicator", PASSWORD);
        let logged = format!("{credentials:?} {credentials:#?}");
        assert!(!logged.contains(PASSWORD), "{logged}");
        assert!(logged.contains("replicator"), "{logged}");
        assert!(logged.contains("***"), "{logged}");
    }
}
