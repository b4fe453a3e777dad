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

/// A crate's files, and the cycles (file names, sorted) the check must find.
struct Case {
    what: &'static str,
    files: &'static [(&'static str, &'static str)],
    cycles: &'static [&'static [&'static str]],
}

const CASES: &[Case] = &[
    Case {
        what: "a parent and a child that use each other",
        files: &[
            (
                "lib.rs",
                "mod child;\npub struct Shared;\npub fn run() { child::work(); }\n",
            ),
            (
                "child.rs",
                "use crate::Shared;\npub fn work() -> Option<Shared> { None }\n",
            ),
        ],
        cycles: &[&["child.rs", "lib.rs"]],
    },
    Case {
        // Through the root's re-export, but the name is defined in shared.rs.
        what: "a parent that only declares and re-exports",
        files: &[
            (
                "lib.rs",
                "mod child;\nmod shared;\npub use child::work;\npub use shared::Shared;\n",
            ),
            ("shared.rs", "pub struct Shared;\n"),
            (
                "child.rs",
                "use crate::Shared;\npub fn work() -> Option<Shared> { None }\n",
            ),
        ],
        cycles: &[],
    },
    Case {
        what: "a cycle through three files",
        files: &[
            ("lib.rs", "mod a;\nmod b;\nmod c;\n"),
            ("a.rs", "pub fn a() { super::b::b(); }\n"),
            ("b.rs", "use crate::c::c;\npub fn b() { c(); }\n"),
            ("c.rs", "pub fn c() { crate::a::a(); }\n"),
        ],
        cycles: &[&["a.rs", "b.rs", "c.rs"]],
    },
    Case {
        what: "tests that reach into their parent",
        files: &[
            ("lib.rs", "mod a;\npub fn root() { a::a(); }\n"),
            (
                "a.rs",
                "pub fn a() {}\n#[cfg(test)]\nmod tests { use crate::root; }\n",
            ),
        ],
        cycles: &[],
    },
    Case {
        what: "a glob import of the parent outside tests",
        files: &[
            ("lib.rs", "mod a;\npub fn root() { a::a(); }\n"),
            ("a.rs", "use super::*;\npub fn a() {}\n"),
        ],
        cycles: &[&["a.rs", "lib.rs"]],
    },
    Case {
        what: "super inside an inline module (the file itself)",
        files: &[
            ("lib.rs", "mod a;\npub use a::A;\n"),
            (
                "a.rs",
                "pub struct A;\nmod helpers {\n    use super::*;\n    pub fn f(_: A) {}\n}\n",
            ),
        ],
        cycles: &[],
    },
    Case {
        what: "a visibility path (pub(crate) names who may see, not what is used)",
        files: &[
            ("lib.rs", "mod a;\npub fn run() -> u8 { a::one() }\n"),
            ("a.rs", "pub(crate) fn one() -> u8 { 1 }\n"),
        ],
        cycles: &[],
    },
    Case {
        what: "a parent's local named like its child module",
        files: &[
            (
                "lib.rs",
                "mod lease;\npub struct State;\npub fn f(lease: u8) -> u8 { lease }\n",
            ),
            ("lease.rs", "use crate::State;\npub fn g(_: State) {}\n"),
        ],
        cycles: &[],
    },
];

#[test]
fn the_check_finds_exactly_the_cycles_of_each_layout() {
    for case in CASES {
        let wanted: Vec<Vec<String>> = case
            .cycles
            .iter()
            .map(|cycle| cycle.iter().map(|f| (*f).to_owned()).collect())
            .collect();
        assert_eq!(cycles_of(case.files), wanted, "{}", case.what);
    }
}

#[test]
fn the_workspace_has_no_import_cycle() {
    let found = cycles(&workspace_root()).expect("every source file parses");
    assert!(
        found.is_empty(),
        "files that import each other (move what they share into a file of its own): {found:#?}"
    );
}
