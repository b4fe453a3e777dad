//! `matriarch config from-patroni patroni.yml`: a matriarch node file from a
//! Patroni node file, with every Patroni key that was mapped to another
//! matriarch key or dropped listed (with the reason), so that nothing is
//! lost silently. The result is meant for `matriarch check`.

mod builder;
mod postgresql;
mod sections;

use std::path::{Path, PathBuf};

use serde_norway::Value;

pub(crate) use builder::Note;
use builder::{entries, Builder};

/// Why a Patroni file could not be converted.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FromPatroniError {
    /// The Patroni file could not be read.
    #[error("cannot read the Patroni file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The Patroni file is not YAML, or not a mapping.
    #[error("the Patroni file {path} is not a YAML mapping: {message}")]
    Yaml {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The node file could not be rendered.
    #[error("cannot render the node file: {0}")]
    Render(String),
    /// The node file could not be written.
    #[error("cannot write the node file {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// A converted file: the node file's YAML and what happened to each key.
#[derive(Debug)]
pub(crate) struct Conversion {
    /// The matriarch node file.
    pub node: Value,
    /// Every key mapped, dropped or kept with a difference, in file order.
    pub notes: Vec<Note>,
}

/// Converts the text of a Patroni node file (`path` names it in errors).
pub(crate) fn convert(path: &Path, text: &str) -> Result<Conversion, FromPatroniError> {
    let yaml_error = |message: String| FromPatroniError::Yaml {
        path: path.to_owned(),
        message,
    };
    let patroni: Value = serde_norway::from_str(text).map_err(|e| yaml_error(e.to_string()))?;
    if !patroni.is_mapping() {
        return Err(yaml_error("the top level is not a mapping".to_owned()));
    }
    let mut out = Builder::default();
    for (key, value) in entries(&patroni) {
        sections::top_level(&mut out, &patroni, &key, value);
    }
    let (node, notes) = out.finish();
    Ok(Conversion { node, notes })
}

/// `matriarch config from-patroni`: converts `patroni`, writes the node file
/// to `output` (mode 0600: it holds passwords) or stdout, and lists every
/// note on stderr. Returns the process's exit code.
pub(crate) fn run(patroni: &Path, output: Option<&Path>) -> std::process::ExitCode {
    match convert_file(patroni, output) {
        Ok(notes) => {
            for note in &notes {
                eprintln!("{note}");
            }
            let dropped = notes
                .iter()
                .filter(|n| matches!(n, Note::Dropped { .. }))
                .count();
            let mapped = notes
                .iter()
                .filter(|n| matches!(n, Note::Mapped { .. }))
                .count();
            let target =
                output.map_or_else(|| "the node file".to_owned(), |p| p.display().to_string());
            eprintln!(
                "matriarch: {mapped} key(s) mapped, {dropped} dropped; check {target} with `matriarch check --config`"
            );
            std::process::ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("matriarch: {error}");
            std::process::ExitCode::from(2)
        }
    }
}

/// Reads, converts and writes; the notes.
fn convert_file(patroni: &Path, output: Option<&Path>) -> Result<Vec<Note>, FromPatroniError> {
    let text = std::fs::read_to_string(patroni).map_err(|source| FromPatroniError::Read {
        path: patroni.to_owned(),
        source,
    })?;
    let conversion = convert(patroni, &text)?;
    let body = serde_norway::to_string(&conversion.node)
        .map_err(|e| FromPatroniError::Render(e.to_string()))?;
    let rendered = format!(
        "# matriarch node file, converted from {} by `matriarch config from-patroni`.\n\
         # docs/configuration.md describes every key; `matriarch check --config` checks it.\n{body}",
        patroni.display()
    );
    match output {
        Some(path) => write_private(path, &rendered).map_err(|source| FromPatroniError::Write {
            path: path.to_owned(),
            source,
        })?,
        None => print!("{rendered}"),
    }
    Ok(conversion.notes)
}

/// Writes `text` to `path`, readable by its owner only (it holds passwords).
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    // An existing file keeps its mode on open: tighten it.
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    file.write_all(text.as_bytes())?;
    file.sync_all()
}
