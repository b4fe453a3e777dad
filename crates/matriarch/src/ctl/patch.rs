//! `edit-config`: the JSON merge patch built from `-s key=value` and `-p name=value`, and the
//! preview of what it changes.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

/// Parses the value of one `-s`/`-p` assignment: JSON when it parses (`30`, `false`, `null`,
/// `"text"`, `{"a": 1}`), otherwise the raw text as a string (`on`, `logical`, `5min`).
pub(crate) fn parse_value(raw: &str) -> Value {
    serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.to_string()))
}

/// Splits `key=value` at the first `=`; the key is trimmed and must not be empty.
pub(crate) fn split_assignment(assignment: &str, flag: &str) -> Result<(String, Value), String> {
    let Some((key, raw)) = assignment.split_once('=') else {
        return Err(format!(
            "{flag} '{assignment}' is not of the form key=value"
        ));
    };
    let key = key.trim();
    if key.is_empty() {
        return Err(format!("{flag} '{assignment}' has an empty key"));
    }
    Ok((key.to_string(), parse_value(raw)))
}

/// Builds the merge patch for `PATCH /config`.
///
/// `settings` are `-s` assignments whose keys are dotted paths (`postgresql.use_pg_rewind`);
/// `parameters` are `-p` assignments that land under `postgresql.parameters` with the name
/// taken whole (PostgreSQL parameter names may contain dots, `pg_stat_statements.track`).
/// A value of `null` removes the key. Giving the same key twice, or a key both as a value
/// and as the parent of another key, is an error.
pub(crate) fn build_patch(settings: &[String], parameters: &[String]) -> Result<Value, String> {
    let mut root = Map::new();
    for assignment in settings {
        let (key, value) = split_assignment(assignment, "-s")?;
        let path: Vec<&str> = key.split('.').map(str::trim).collect();
        if path.iter().any(|segment| segment.is_empty()) {
            return Err(format!("-s '{assignment}': the key has an empty part"));
        }
        insert(&mut root, &path, value, &key)?;
    }
    for assignment in parameters {
        let (name, value) = split_assignment(assignment, "-p")?;
        insert(
            &mut root,
            &["postgresql", "parameters", name.as_str()],
            value,
            &format!("postgresql.parameters.{name}"),
        )?;
    }
    Ok(Value::Object(root))
}

fn insert(
    root: &mut Map<String, Value>,
    path: &[&str],
    value: Value,
    key: &str,
) -> Result<(), String> {
    let Some((last, parents)) = path.split_last() else {
        return Err(format!("empty key '{key}'"));
    };
    let mut node = root;
    for (depth, segment) in parents.iter().enumerate() {
        let entry = node
            .entry((*segment).to_string())
            .or_insert_with(|| Value::Object(Map::new()));
        node = match entry {
            Value::Object(map) => map,
            _ => {
                return Err(format!(
                    "conflicting settings: '{}' is given a value and '{key}' is set under it",
                    path[..=depth].join(".")
                ))
            }
        };
    }
    match node.get(*last) {
        None => {
            node.insert((*last).to_string(), value);
            Ok(())
        }
        Some(Value::Object(_)) => Err(format!(
            "conflicting settings: '{key}' is given a value and keys under it are set too"
        )),
        Some(_) => Err(format!("'{key}' is given more than once")),
    }
}

fn flatten(value: &Value, prefix: &str, out: &mut BTreeMap<String, Value>) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (key, child) in map {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                flatten(child, &path, out);
            }
        }
        _ if prefix.is_empty() => {}
        other => {
            out.insert(prefix.to_string(), other.clone());
        }
    }
}

/// The lines that show what changes from `before` to `after`: `-key: old` and `+key: new`
/// for each dotted leaf that differs, in key order. Empty when nothing changes.
pub(crate) fn diff_lines(before: &Value, after: &Value) -> Vec<String> {
    let mut old = BTreeMap::new();
    let mut new = BTreeMap::new();
    flatten(before, "", &mut old);
    flatten(after, "", &mut new);
    let mut keys: Vec<&String> = old.keys().chain(new.keys()).collect();
    keys.sort();
    keys.dedup();
    let mut lines = Vec::new();
    for key in keys {
        let (was, now) = (old.get(key), new.get(key));
        if was == now {
            continue;
        }
        if let Some(was) = was {
            lines.push(format!("-{key}: {was}"));
        }
        if let Some(now) = now {
            lines.push(format!("+{key}: {now}"));
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn values_are_json_when_they_parse_and_strings_otherwise() {
        assert_eq!(parse_value("30"), json!(30));
        assert_eq!(parse_value("0.5"), json!(0.5));
        assert_eq!(parse_value("false"), json!(false));
        assert_eq!(parse_value("null"), Value::Null);
        assert_eq!(parse_value("\"30\""), json!("30"));
        assert_eq!(parse_value("{\"a\": [1]}"), json!({"a": [1]}));
        assert_eq!(parse_value("on"), json!("on"));
        assert_eq!(parse_value("5min"), json!("5min"));
        assert_eq!(parse_value(""), json!(""));
        assert_eq!(parse_value("a=b"), json!("a=b"));
    }

    #[test]
    fn settings_nest_on_dots_and_parameters_go_under_postgresql_parameters() {
        let patch = build_patch(
            &strings(&[
                "ttl=30",
                "postgresql.use_pg_rewind=false",
                "synchronous_mode=true",
            ]),
            &strings(&[
                "max_connections=200",
                "pg_stat_statements.track=all",
                "wal_level=logical",
            ]),
        )
        .expect("valid patch");
        assert_eq!(
            patch,
            json!({
                "ttl": 30,
                "synchronous_mode": true,
                "postgresql": {
                    "use_pg_rewind": false,
                    "parameters": {
                        "max_connections": 200,
                        "pg_stat_statements.track": "all",
                        "wal_level": "logical"
                    }
                }
            })
        );
    }

    #[test]
    fn null_removes_and_value_keeps_everything_after_the_first_equals_sign() {
        let patch = build_patch(&strings(&["slots=null", "x = a=b"]), &[]).expect("valid");
        assert_eq!(patch, json!({"slots": null, "x": " a=b"}));
    }

    #[test]
    fn malformed_assignments_are_rejected_with_the_flag_and_text() {
        let err = build_patch(&strings(&["ttl"]), &[]).unwrap_err();
        assert!(
            err.contains("-s 'ttl'") && err.contains("key=value"),
            "{err}"
        );
        let err = build_patch(&[], &strings(&["=1"])).unwrap_err();
        assert!(
            err.contains("-p '=1'") && err.contains("empty key"),
            "{err}"
        );
        let err = build_patch(&strings(&["a..b=1"]), &[]).unwrap_err();
        assert!(err.contains("empty part"), "{err}");
        let err = build_patch(&strings(&[".a=1"]), &[]).unwrap_err();
        assert!(err.contains("empty part"), "{err}");
    }

    #[test]
    fn conflicting_and_repeated_keys_are_rejected() {
        let err = build_patch(&strings(&["a=1", "a.b=2"]), &[]).unwrap_err();
        assert!(err.contains("conflicting") && err.contains("'a'"), "{err}");
        let err = build_patch(&strings(&["a.b=2", "a=1"]), &[]).unwrap_err();
        assert!(err.contains("conflicting"), "{err}");
        let err = build_patch(&strings(&["ttl=1", "ttl=2"]), &[]).unwrap_err();
        assert!(err.contains("more than once"), "{err}");
        let err =
            build_patch(&strings(&["postgresql.parameters=1"]), &strings(&["x=1"])).unwrap_err();
        assert!(err.contains("conflicting"), "{err}");
        let err = build_patch(
            &strings(&["postgresql.parameters.work_mem=1"]),
            &strings(&["work_mem=2"]),
        )
        .unwrap_err();
        assert!(err.contains("more than once"), "{err}");
    }

    #[test]
    fn diff_shows_changed_added_and_removed_leaves() {
        let before = json!({"ttl": 30, "loop_wait": 10, "postgresql": {"parameters": {"a": 1}}});
        let after = json!({"ttl": 20, "loop_wait": 10, "postgresql": {"parameters": {"b": "x"}}});
        assert_eq!(
            diff_lines(&before, &after),
            vec![
                "-postgresql.parameters.a: 1",
                "+postgresql.parameters.b: \"x\"",
                "-ttl: 30",
                "+ttl: 20",
            ]
        );
        assert!(diff_lines(&before, &before).is_empty());
    }
}
