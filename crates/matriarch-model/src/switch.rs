//! Patroni's mode switches: a boolean or a word.

use serde::{Deserialize, Deserializer};

/// Reads a switch written as a boolean or a word, as Patroni's modes are
/// (`synchronous_mode: on`, `watchdog.mode: off`; YAML 1.1 readers take a
/// bare `off` as `false`): a boolean comes back as `"true"` or `"false"`,
/// a word in lower case.
pub fn deserialize_switch<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Bool(bool),
        Text(String),
    }
    Ok(match Raw::deserialize(deserializer)? {
        Raw::Bool(value) => value.to_string(),
        Raw::Text(text) => text.to_ascii_lowercase(),
    })
}
