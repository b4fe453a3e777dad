//! Where the workspace and cargo's target directory are.

use std::path::{Path, PathBuf};

/// The workspace root: the parent of this crate's directory.
pub(crate) fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// Cargo's target directory: `$CARGO_TARGET_DIR` (relative to the workspace
/// root) or `<root>/target`.
pub(crate) fn target_dir(root: &Path) -> PathBuf {
    // Joining an absolute CARGO_TARGET_DIR replaces the root.
    root.join(std::env::var_os("CARGO_TARGET_DIR").unwrap_or_else(|| "target".into()))
}
