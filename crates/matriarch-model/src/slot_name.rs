//! The names PostgreSQL accepts for replication slots, which the dynamic
//! configuration's `slots` and `standby_cluster` sections are checked against.

/// The longest name PostgreSQL accepts for a slot (`NAMEDATALEN - 1`).
pub const MAX_SLOT_NAME_LEN: usize = 63;

/// Whether PostgreSQL accepts `name` as a slot name.
pub fn valid_slot_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_SLOT_NAME_LEN
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_names() {
        assert!(valid_slot_name("pg_1"));
        assert!(!valid_slot_name(""));
        assert!(!valid_slot_name("A"));
        assert!(!valid_slot_name("a-b"));
        assert!(!valid_slot_name(&"a".repeat(64)));
        assert!(valid_slot_name(&"a".repeat(63)));
    }
}
