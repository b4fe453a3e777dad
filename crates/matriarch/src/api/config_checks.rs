//! What `PATCH` and `PUT /config` refuse beyond the model's own bounds:
//! PostgreSQL parameters that would stop a server from starting or
//! replicating at its next restart, and configurations too large for every
//! node to write and reload at once.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use matriarch_model::{ClusterConfig, ParameterValue};
use matriarch_postgres::PostgresError;

use super::body::MAX_BODY;

/// The most `postgresql.parameters` the dynamic configuration may hold:
/// PostgreSQL has about 350 settings of its own, and every node rewrites
/// and reloads the whole set whenever one changes.
pub(super) const MAX_PARAMETERS: usize = 500;

/// Why a configuration is refused (a 400 whose message names the setting
/// or the limit).
#[derive(Debug, thiserror::Error)]
pub(super) enum ConfigRefusal {
    /// A parameter matriarch manages, or a malformed name or value.
    #[error("postgresql.parameters: {0}")]
    Invalid(#[from] PostgresError),
    /// More parameters than [`MAX_PARAMETERS`].
    #[error("postgresql.parameters: {count} parameters, more than the {MAX_PARAMETERS} allowed")]
    TooManyParameters {
        /// How many there were.
        count: usize,
    },
    /// The configuration's JSON is larger than a request body may be.
    #[error("the configuration would be {bytes} bytes of JSON, more than the {MAX_BODY} allowed")]
    TooLarge {
        /// Its size.
        bytes: usize,
    },
    /// A value PostgreSQL cannot start or replicate with.
    #[error("postgresql.parameters.{name} = {value}: {why}")]
    Unsafe {
        /// The parameter.
        name: String,
        /// The value asked for.
        value: String,
        /// What would break.
        why: String,
    },
}

/// Checks the cluster's `parameters` for a cluster of `members` nodes;
/// `pkglibdir` is where `shared_preload_libraries` must be found (`None`:
/// not checked). Values unchanged from `before` (the configuration in
/// force) pass as they are: an unrelated change is not held hostage.
pub(super) fn check_parameters(
    parameters: &BTreeMap<String, ParameterValue>,
    before: &BTreeMap<String, ParameterValue>,
    members: usize,
    pkglibdir: Option<&Path>,
) -> Result<(), ConfigRefusal> {
    if parameters.len() > MAX_PARAMETERS {
        return Err(ConfigRefusal::TooManyParameters {
            count: parameters.len(),
        });
    }
    for (name, value) in parameters {
        matriarch_postgres::check_parameter(name, value)?;
        if before.get(name) == Some(value) {
            continue;
        }
        if let Some(why) = why_unsafe(name, value, members, pkglibdir) {
            return Err(ConfigRefusal::Unsafe {
                name: name.clone(),
                value: value.to_string(),
                why,
            });
        }
    }
    Ok(())
}

/// Why PostgreSQL could not start or replicate with `name = value`;
/// `None` when it can.
fn why_unsafe(
    name: &str,
    value: &ParameterValue,
    members: usize,
    pkglibdir: Option<&Path>,
) -> Option<String> {
    match name.to_ascii_lowercase().as_str() {
        "wal_level" => {
            let level = value.to_string().trim().to_ascii_lowercase();
            // `archive` and `hot_standby` are PostgreSQL's old names of `replica`.
            (!["replica", "logical", "archive", "hot_standby"].contains(&level.as_str()))
                .then(|| "streaming replication needs wal_level replica or logical".to_owned())
        }
        "max_wal_senders" => {
            // One per replica, and one more for a replica being cloned
            // (pg_basebackup streams its WAL through a second sender).
            let needed = members.max(2);
            integer(value).is_none_or(|senders| senders < needed as i64).then(|| {
                format!(
                    "replicas could not stream: a cluster of {members} members needs at least {needed} WAL senders"
                )
            })
        }
        "hot_standby" => (boolean(value) != Some(true)).then(|| {
            "replicas would refuse connections, and matriarch observes them through one".to_owned()
        }),
        "shared_preload_libraries" => {
            let dir = pkglibdir?;
            let missing = missing_libraries(&value.to_string(), dir);
            let first = missing.first()?;
            Some(format!(
                "library {first} is not in {} on this node: PostgreSQL would not start",
                dir.display()
            ))
        }
        _ => None,
    }
}

/// Checks the size of the whole configuration.
pub(super) fn check_size(config: &ClusterConfig) -> Result<(), ConfigRefusal> {
    let bytes = serde_json::to_vec(config).map_or(0, |json| json.len());
    if bytes > MAX_BODY {
        return Err(ConfigRefusal::TooLarge { bytes });
    }
    Ok(())
}

/// An integer setting's value, as PostgreSQL would read it.
fn integer(value: &ParameterValue) -> Option<i64> {
    match value {
        ParameterValue::Integer(i) => Some(*i),
        ParameterValue::Real(r) if r.fract() == 0.0 && r.is_finite() => Some(*r as i64),
        ParameterValue::Text(t) => t.trim().parse().ok(),
        _ => None,
    }
}

/// A boolean setting's value, as PostgreSQL reads it (unique prefixes of
/// on, off, true, false, yes, no, and 1, 0); `None` when it is not one.
fn boolean(value: &ParameterValue) -> Option<bool> {
    let text = match value {
        ParameterValue::Bool(b) => return Some(*b),
        ParameterValue::Integer(i) => return Some(*i != 0).filter(|_| *i == 0 || *i == 1),
        other => other.to_string().trim().to_ascii_lowercase(),
    };
    if text.is_empty() {
        return None;
    }
    let is_prefix = |word: &str| word.starts_with(text.as_str());
    match text.as_str() {
        "1" | "on" => Some(true),
        "0" | "of" | "off" => Some(false),
        _ if is_prefix("true") || is_prefix("yes") => Some(true),
        _ if is_prefix("false") || is_prefix("no") => Some(false),
        _ => None,
    }
}

/// The entries of a `shared_preload_libraries` list that `pkglibdir` does
/// not hold (as PostgreSQL looks them up: `$libdir/` or a bare name there,
/// with or without `.so`; an absolute path as it is).
fn missing_libraries(list: &str, pkglibdir: &Path) -> Vec<String> {
    list.split(',')
        .map(|entry| entry.trim().trim_matches('"').trim())
        .filter(|entry| !entry.is_empty())
        .filter(|entry| {
            let name = entry.strip_prefix("$libdir/").unwrap_or(entry);
            let path = if name.contains('/') {
                PathBuf::from(name)
            } else {
                pkglibdir.join(name)
            };
            let with_suffix = PathBuf::from(format!("{}.so", path.display()));
            !path.is_file() && !with_suffix.is_file()
        })
        .map(str::to_owned)
        .collect()
}

/// PostgreSQL's library directory: `pg_config --pkglibdir` from `bin_dir`,
/// else `bin_dir/../lib`; `None` when neither is a directory.
pub(crate) fn pkglibdir(bin_dir: &Path) -> Option<PathBuf> {
    let reported = std::process::Command::new(bin_dir.join("pg_config"))
        .arg("--pkglibdir")
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .ok()
        .filter(|out| out.status.success())
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .map(|text| PathBuf::from(text.trim()));
    reported
        .into_iter()
        .chain(bin_dir.parent().map(|p| p.join("lib")))
        .find(|dir| dir.is_dir())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(name: &str, value: ParameterValue) -> BTreeMap<String, ParameterValue> {
        [(name.to_owned(), value)].into()
    }

    fn text(t: &str) -> ParameterValue {
        ParameterValue::Text(t.to_owned())
    }

    #[test]
    fn settings_that_break_replication_are_named() {
        for (name, value) in [
            ("wal_level", text("minimal")),
            ("WAL_LEVEL", text("Minimal")),
            ("max_wal_senders", ParameterValue::Integer(0)),
            ("max_wal_senders", text("1")),
            ("hot_standby", text("off")),
            ("hot_standby", ParameterValue::Bool(false)),
            ("hot_standby", text("f")),
        ] {
            let refusal = check_parameters(&one(name, value.clone()), &BTreeMap::new(), 1, None)
                .expect_err(&format!("{name} = {value}"));
            assert!(refusal.to_string().contains(name), "{refusal}");
        }
        for (name, value) in [
            ("wal_level", text("logical")),
            ("max_wal_senders", ParameterValue::Integer(5)),
            ("hot_standby", text("on")),
            ("hot_standby", ParameterValue::Bool(true)),
            ("work_mem", text("8MB")),
        ] {
            assert!(
                check_parameters(&one(name, value.clone()), &BTreeMap::new(), 3, None).is_ok(),
                "{name} = {value}"
            );
        }
        // Enough senders for every replica of the cluster.
        let five = one("max_wal_senders", ParameterValue::Integer(4));
        assert!(check_parameters(&five, &BTreeMap::new(), 5, None).is_err());
        // A value already in force does not block another change.
        assert!(check_parameters(&five, &five, 5, None).is_ok());
    }

    #[test]
    fn preloaded_libraries_must_exist_on_this_node() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("present.so"), b"").unwrap();
        let ok = one(
            "shared_preload_libraries",
            text("present, '$libdir/present'"),
        );
        // Quotes of another kind are part of the name, as in PostgreSQL.
        assert!(check_parameters(&ok, &BTreeMap::new(), 1, Some(dir.path())).is_err());
        let ok = one(
            "shared_preload_libraries",
            text("present, \"$libdir/present\""),
        );
        assert!(check_parameters(&ok, &BTreeMap::new(), 1, Some(dir.path())).is_ok());
        let bad = one("shared_preload_libraries", text("present,absent"));
        let refusal = check_parameters(&bad, &BTreeMap::new(), 1, Some(dir.path())).unwrap_err();
        assert!(refusal.to_string().contains("absent"), "{refusal}");
        assert!(
            check_parameters(&bad, &BTreeMap::new(), 1, None).is_ok(),
            "unknown directory: not checked"
        );
    }

    #[test]
    fn the_number_of_parameters_is_bounded() {
        let many: BTreeMap<String, ParameterValue> = (0..=MAX_PARAMETERS)
            .map(|i| (format!("placeholder.p{i}"), text("x")))
            .collect();
        let refusal = check_parameters(&many, &BTreeMap::new(), 1, None).unwrap_err();
        assert!(refusal.to_string().contains("501 parameters"), "{refusal}");
    }

    #[test]
    fn the_library_directory_is_found_from_the_bin_dir() {
        let bin = Path::new("/usr/lib/postgresql/15/bin");
        if bin.is_dir() {
            assert_eq!(
                pkglibdir(bin),
                Some(PathBuf::from("/usr/lib/postgresql/15/lib"))
            );
        }
        assert_eq!(pkglibdir(Path::new("/nonexistent/bin")), None);
    }
}
