//! The node file being built from a Patroni file, and the notes on what
//! happened to each Patroni key: what the section converters share.

use std::fmt;

use serde_norway::{Mapping, Value};

use crate::config::set_path;

/// What happened to one Patroni key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Note {
    /// Carried over under another key, or in another form.
    Mapped {
        /// The Patroni key (dotted).
        from: String,
        /// The matriarch key (dotted).
        to: String,
        /// What changed, when more than the key.
        how: Option<String>,
    },
    /// Left out.
    Dropped {
        /// The Patroni key (dotted).
        key: String,
        /// Why, and what to do instead.
        why: String,
    },
    /// Kept as it is, but matriarch treats it differently.
    Kept {
        /// The key (dotted).
        key: String,
        /// What differs.
        what: String,
    },
}

impl fmt::Display for Note {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Note::Mapped { from, to, how } => {
                write!(f, "{from} -> {to}")?;
                if let Some(how) = how {
                    write!(f, " ({how})")?;
                }
                Ok(())
            }
            Note::Dropped { key, why } => write!(f, "{key}: dropped: {why}"),
            Note::Kept { key, what } => write!(f, "{key}: kept: {what}"),
        }
    }
}

/// The node file being built and the notes taken on the way.
#[derive(Debug, Default)]
pub(super) struct Builder {
    node: Value,
    notes: Vec<Note>,
}

impl Builder {
    /// Sets the dotted `key` of the node file.
    pub(super) fn set(&mut self, key: &str, value: Value) {
        if self.node.is_null() {
            self.node = Value::Mapping(Mapping::new());
        }
        set_path(&mut self.node, key, value);
    }

    /// Whether the node file has the dotted `key` already.
    pub(super) fn has(&self, key: &str) -> bool {
        let mut node = &self.node;
        for segment in key.split('.') {
            match node.get(segment) {
                Some(child) => node = child,
                None => return false,
            }
        }
        true
    }

    /// Sets `to` from the Patroni key `from`, noting the move.
    pub(super) fn map(&mut self, from: &str, to: &str, value: Value, how: Option<String>) {
        self.set(to, value);
        self.mapped(from, to, how);
    }

    /// Notes that the Patroni key `from` went to `to`, which the caller sets
    /// itself (once, from several keys).
    pub(super) fn mapped(&mut self, from: &str, to: &str, how: Option<String>) {
        self.notes.push(Note::Mapped {
            from: from.to_owned(),
            to: to.to_owned(),
            how,
        });
    }

    /// Notes that `key` was left out, and why.
    pub(super) fn drop_key(&mut self, key: &str, why: impl Into<String>) {
        self.notes.push(Note::Dropped {
            key: key.to_owned(),
            why: why.into(),
        });
    }

    /// Notes that `key` was kept but behaves differently.
    pub(super) fn kept(&mut self, key: &str, what: impl Into<String>) {
        self.notes.push(Note::Kept {
            key: key.to_owned(),
            what: what.into(),
        });
    }
}

impl Builder {
    /// The node file and the notes, in file order.
    pub(super) fn finish(self) -> (Value, Vec<Note>) {
        (self.node, self.notes)
    }
}

/// The entries of a mapping with string keys (others are skipped: Patroni
/// has none).
pub(super) fn entries(value: &Value) -> Vec<(String, Value)> {
    value
        .as_mapping()
        .map(|map| {
            map.iter()
                .filter_map(|(k, v)| Some((scalar_text(k)?, v.clone())))
                .collect()
        })
        .unwrap_or_default()
}

/// A scalar as text (`name: 1` is the name "1"; YAML allows numbers and
/// booleans as mapping keys too).
pub(super) fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}
