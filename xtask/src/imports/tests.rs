use std::fs;
use std::path::Path;

use super::{crate_cycles, cycles};
use crate::paths::workspace_root;

/// A crate laid out from `(file, text)` pairs under a fresh `src`; returns
/// each cycle as file names relative to `src`.
fn cycles_of(files: &[(&str, &str)]) -> Vec<Vec<String>> {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let src = dir.path().join("src");
    for (name, text) in files {
        let path = src.join(name);
        fs::create_dir_all(path.parent().expect("a parent folder")).expect("folders");
        fs::write(&path, text).expect("a source file");
    }
    crate_cycles(&src)
        .expect("the crate parses")
        .into_iter()
        .map(|cycle| cycle.iter().map(|f| relative(&src, f)).collect())
        .collect()
}

fn relative(src: &Path, file: &Path) -> String {
    file.strip_prefix(src)
        .expect("a file of the crate")
        .display()
        .to_string()
}

#[test]
fn a_parent_and_a_child_that_use_each_other_are_a_cycle() {
    let found = cycles_of(&[
        (
            "lib.rs",
            "mod child;\npub struct Shared;\npub fn run() { child::work(); }\n",
        ),
        (
            "child.rs",
            "use crate::Shared;\npub fn work() -> Option<Shared> { None }\n",
        ),
    ]);
    assert_eq!(
        found,
        vec![vec!["child.rs".to_owned(), "lib.rs".to_owned()]]
    );
}

#[test]
fn a_parent_that_only_declares_and_reexports_is_no_cycle() {
    let found = cycles_of(&[
        (
            "lib.rs",
            "mod child;\nmod shared;\npub use child::work;\npub use shared::Shared;\n",
        ),
        ("shared.rs", "pub struct Shared;\n"),
        // Through the root's re-export, but the name is defined in shared.rs.
        (
            "child.rs",
            "use crate::Shared;\npub fn work() -> Option<Shared> { None }\n",
        ),
    ]);
    assert!(found.is_empty(), "{found:?}");
}

#[test]
fn a_cycle_through_three_files_is_found() {
    let found = cycles_of(&[
        ("lib.rs", "mod a;\nmod b;\nmod c;\n"),
        ("a.rs", "pub fn a() { super::b::b(); }\n"),
        ("b.rs", "use crate::c::c;\npub fn b() { c(); }\n"),
        ("c.rs", "pub fn c() { crate::a::a(); }\n"),
    ]);
    assert_eq!(
        found,
        vec![vec![
            "a.rs".to_owned(),
            "b.rs".to_owned(),
            "c.rs".to_owned()
        ]]
    );
}

#[test]
fn test_only_items_and_glob_imports_are_read_as_written() {
    // Tests may reach into their parent; a glob import of the parent outside
    // tests is a real use of it.
    let tests_only = cycles_of(&[
        ("lib.rs", "mod a;\npub fn root() { a::a(); }\n"),
        (
            "a.rs",
            "pub fn a() {}\n#[cfg(test)]\nmod tests { use crate::root; }\n",
        ),
    ]);
    assert!(tests_only.is_empty(), "{tests_only:?}");
    let glob = cycles_of(&[
        ("lib.rs", "mod a;\npub fn root() { a::a(); }\n"),
        ("a.rs", "use super::*;\npub fn a() {}\n"),
    ]);
    assert_eq!(glob, vec![vec!["a.rs".to_owned(), "lib.rs".to_owned()]]);
}

#[test]
fn the_workspace_has_no_import_cycle() {
    let found = cycles(&workspace_root()).expect("every source file parses");
    assert!(
        found.is_empty(),
        "files that import each other (move what they share into a file of its own): {found:#?}"
    );
}

#[test]
fn super_inside_an_inline_module_is_the_file_itself() {
    let found = cycles_of(&[
        ("lib.rs", "mod a;\npub use a::A;\n"),
        (
            "a.rs",
            "pub struct A;\nmod serde_helpers {\n    use super::*;\n    pub fn f(_: A) {}\n}\n",
        ),
    ]);
    assert!(found.is_empty(), "{found:?}");
}
