//! Passwords read from the configuration, kept out of logs.

use std::fmt;

use serde::{Deserialize, Deserializer};

/// A password from the configuration file or the environment.
///
/// `Debug` and `Display` print `***`, so a configuration struct can be logged
/// with `{:?}` without leaking it; [`Password::expose`] is the only way to the
/// value.
#[derive(Clone, PartialEq, Eq, Default)]
pub(crate) struct Password(String);

impl Password {
    /// The password itself, for the one place that must send it. Never log it.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl<'de> Deserialize<'de> for Password {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Password)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_hide_the_value() {
        let password = Password("hunter2".to_owned());
        assert_eq!(format!("{password:?} {password}"), "*** ***");
        assert_eq!(password.expose(), "hunter2");
    }
}
