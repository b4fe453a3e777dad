//! Where a duplicate key is. serde_norway reports a duplicate with the line
//! where its mapping begins (or with no line at all when the file is read as
//! a YAML value first, as with environment overrides), so the file is
//! scanned for the key's second occurrence in the same block mapping.

use crate::error::ConfigError;

/// The parse error for `text`: a duplicate key's message names the lines
/// of both occurrences when they can be found; any other error as it is.
pub(super) fn yaml_error(text: &str, error: serde_norway::Error) -> ConfigError {
    let message = error.to_string();
    let Some((prefix, key)) = duplicate_key(&message) else {
        return ConfigError::yaml(error);
    };
    match duplicate_key_lines(text, key) {
        Some((first, second)) => ConfigError::Yaml(format!(
            "{prefix}duplicate key `{key}` at line {second} (already set at line {first})"
        )),
        None => ConfigError::yaml(error),
    }
}

/// The path prefix (`postgresql: `) and the key of a duplicate-key message:
/// serde's ``duplicate field `k` `` or the YAML value's `duplicate entry with
/// key "k"`.
fn duplicate_key(message: &str) -> Option<(&str, &str)> {
    if let Some(at) = message.find("duplicate field `") {
        let rest = &message[at + "duplicate field `".len()..];
        return Some((&message[..at], &rest[..rest.find('`')?]));
    }
    let at = message.find("duplicate entry with key \"")?;
    let rest = &message[at + "duplicate entry with key \"".len()..];
    Some((&message[..at], &rest[..rest.find('"')?]))
}

/// The key of a block-mapping line (`key: value`, `key:`); `None` for
/// anything else (quoted or complex keys, flow collections, plain scalars).
fn line_key(content: &str) -> Option<(&str, &str)> {
    if content.starts_with(['"', '\'', '{', '[', '&', '*', '!', '?', '|', '>', '#']) {
        return None;
    }
    let end = match content.find(": ") {
        Some(end) => end,
        None => content.strip_suffix(':')?.len(),
    };
    let key = content[..end].trim_end();
    let value = content[end + 1..].trim_start();
    (!key.is_empty()).then_some((key, value))
}

/// The lines (1-based) of the first two occurrences of `key` in one block
/// mapping of `text`.
fn duplicate_key_lines(text: &str, key: &str) -> Option<(usize, usize)> {
    // The open block mappings, innermost last: their indentation and the keys
    // seen in them with their lines.
    let mut mappings: Vec<(usize, Vec<(&str, usize)>)> = Vec::new();
    // Inside a block scalar (`key: |`): lines indented deeper than its key.
    let mut scalar_of: Option<usize> = None;
    for (index, line) in text.lines().enumerate() {
        let mut content = line.trim_start_matches(' ');
        let mut indent = line.len() - content.len();
        if content.is_empty() || content.starts_with('#') {
            continue;
        }
        match scalar_of {
            Some(parent) if indent > parent => continue,
            _ => scalar_of = None,
        }
        if content.starts_with("---") || content.starts_with("...") {
            mappings.clear();
            continue;
        }
        // `- key: value` opens a new mapping at the key's column.
        let mut new_item = false;
        while let Some(rest) = content
            .strip_prefix('-')
            .filter(|r| r.is_empty() || r.starts_with(' '))
        {
            let inner = rest.trim_start_matches(' ');
            indent += content.len() - inner.len();
            content = inner;
            new_item = true;
        }
        while mappings
            .last()
            .is_some_and(|(open, _)| *open > indent || (*open == indent && new_item))
        {
            mappings.pop();
        }
        let Some((found, value)) = line_key(content) else {
            continue;
        };
        if mappings.last().map(|(open, _)| *open) != Some(indent) {
            mappings.push((indent, Vec::new()));
        }
        let (_, keys) = mappings.last_mut()?;
        if found == key {
            if let Some((_, first)) = keys.iter().find(|(seen, _)| *seen == key) {
                return Some((*first, index + 1));
            }
        }
        keys.push((found, index + 1));
        if value.starts_with(['|', '>']) {
            scalar_of = Some(indent);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_are_found_in_the_same_mapping_only() {
        let text = "a: 1\nb:\n  a: 2\n  c: |\n    a: 3\n    a: 4\n  d: 5\nlist:\n  - a: 1\n    b: 2\n  - a: 3\na: 9\n";
        assert_eq!(duplicate_key_lines(text, "a"), Some((1, 12)));
        assert_eq!(duplicate_key_lines(text, "b"), None);
        assert_eq!(
            duplicate_key_lines("x:\n  y: 1\n  # y: 0\n  y: 2\n", "y"),
            Some((2, 4))
        );
        assert_eq!(duplicate_key_lines("- a: 1\n  a: 2\n", "a"), Some((1, 2)));
        assert_eq!(duplicate_key_lines("{a: 1, a: 2}\n", "a"), None);
    }

    #[test]
    fn duplicate_messages_are_read() {
        assert_eq!(
            duplicate_key("postgresql: duplicate field `data_dir` at line 7 column 3"),
            Some(("postgresql: ", "data_dir"))
        );
        assert_eq!(
            duplicate_key("duplicate entry with key \"scope\""),
            Some(("", "scope"))
        );
        assert_eq!(duplicate_key("unknown field `x`"), None);
    }
}
