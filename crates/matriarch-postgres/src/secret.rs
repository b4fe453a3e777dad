//! Database roles and their passwords; a password is a [`Secret`], kept out of logs.

pub use matriarch_model::Secret;

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

    // `Secret` itself is tested where it is defined, in matriarch-model.
    #[test]
    fn secret_stays_hidden_inside_logged_structs() {
        let credentials = Credentials::new("replicator", PASSWORD);
        let logged = format!("{credentials:?} {credentials:#?}");
        assert!(!logged.contains(PASSWORD), "{logged}");
        assert!(logged.contains("replicator"), "{logged}");
        assert!(logged.contains("***"), "{logged}");
    }
}
