//! The import-cycle check (`cargo xtask imports`, and a test `cargo xtask
//! test` runs): no two source files of a crate refer to each other, directly
//! or through other files.
//!
//! A file refers to another when one of its paths (`use` trees, types,
//! expressions) resolves to the other's module: `crate::`, `super::` and
//! `self::` paths, and a parent's plain `child::item` paths. A name a
//! module only re-exports (`pub use child::Item`) resolves to the file that
//! defines it, so a parent that declares and re-exports is no cycle.
//! Items under `#[cfg(test)]` are left out: tests may look anywhere.
//! Not seen: paths inside macro invocations, and methods a child file adds
//! to its parent's type (`impl Parent { … }` in the child; a method call
//! names no path).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use syn::visit::{self, Visit};

use crate::cmd::{Failure, Result};

/// A module's path inside its crate (`[]` is the crate root).
type ModulePath = Vec<String>;

/// The import cycles of every crate under `workspace` (`crates/*`, `xtask`,
/// `examples/*`): each a sorted list of two or more files.
pub(crate) fn cycles(workspace: &Path) -> Result<Vec<Vec<PathBuf>>> {
    let mut found = Vec::new();
    for src in crate_sources(workspace)? {
        found.extend(crate_cycles(&src)?);
    }
    Ok(found)
}

/// `cargo xtask imports`: prints the cycles; fails if there is one.
pub(crate) fn imports(workspace: &Path) -> Result {
    let found = cycles(workspace)?;
    for cycle in &found {
        // A strongly connected group: every file reaches every other.
        let files: Vec<String> = cycle.iter().map(|f| f.display().to_string()).collect();
        println!("files in an import cycle: {}", files.join(", "));
    }
    if found.is_empty() {
        println!("no import cycle");
        Ok(())
    } else {
        Err(Failure(format!("{} import cycle(s)", found.len())))
    }
}

/// The `src` folders of the workspace's crates.
fn crate_sources(workspace: &Path) -> Result<Vec<PathBuf>> {
    let mut sources = vec![workspace.join("xtask/src")];
    for parent in ["crates", "examples"] {
        for member in list_dir(&workspace.join(parent))? {
            let src = member.join("src");
            if src.is_dir() {
                sources.push(src);
            }
        }
    }
    sources.sort();
    Ok(sources)
}

/// The entries of `dir`.
fn list_dir(dir: &Path) -> Result<Vec<PathBuf>> {
    let listing = |e| Failure(format!("cannot list {}: {e}", dir.display()));
    fs::read_dir(dir)
        .map_err(listing)?
        .map(|entry| entry.map(|e| e.path()).map_err(listing))
        .collect()
}

/// The files of one crate by module path: `lib.rs` is the root (a `main.rs`
/// beside it is another crate root, left out, as are `bin/` programs).
fn modules(src: &Path) -> Result<BTreeMap<ModulePath, PathBuf>> {
    let has_lib = src.join("lib.rs").exists();
    let mut files = BTreeMap::new();
    let mut pending = vec![src.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for path in list_dir(&dir)? {
            if path.is_dir() {
                pending.push(path);
                continue;
            }
            let Ok(relative) = path.strip_prefix(src) else {
                continue;
            };
            let Some(text) = relative.to_str().and_then(|t| t.strip_suffix(".rs")) else {
                continue;
            };
            let mut module: ModulePath = text.split('/').map(str::to_owned).collect();
            if module.first().is_some_and(|m| m == "bin") || (has_lib && text == "main") {
                continue;
            }
            if matches!(
                module.last().map(String::as_str),
                Some("mod" | "lib" | "main")
            ) {
                module.pop();
            }
            files.insert(module, path);
        }
    }
    Ok(files)
}

/// The cycles among one crate's files (Tarjan's strongly connected
/// components of two or more files).
fn crate_cycles(src: &Path) -> Result<Vec<Vec<PathBuf>>> {
    let files = modules(src)?;
    let mut parsed = BTreeMap::new();
    for (module, path) in &files {
        let text = fs::read_to_string(path)
            .map_err(|e| Failure(format!("cannot read {}: {e}", path.display())))?;
        let file = syn::parse_file(&text)
            .map_err(|e| Failure(format!("cannot parse {}: {e}", path.display())))?;
        parsed.insert(module.clone(), file);
    }
    let reexports: BTreeMap<ModulePath, BTreeMap<String, ModulePath>> = parsed
        .iter()
        .map(|(module, file)| (module.clone(), reexports_of(module, file, &files)))
        .collect();
    let resolver = Resolver {
        files: &files,
        reexports: &reexports,
    };
    let mut edges: BTreeMap<ModulePath, BTreeSet<ModulePath>> = BTreeMap::new();
    for (module, file) in &parsed {
        let mut paths = PathCollector::default();
        paths.visit_file(file);
        let targets = paths
            .paths
            .iter()
            .filter_map(|(inline, path)| {
                let here: ModulePath = module.iter().chain(inline).cloned().collect();
                absolute(&here, path, &files)
            })
            .filter_map(|path| resolver.resolve(&path))
            .filter(|target| target != module)
            .collect();
        edges.insert(module.clone(), targets);
    }
    Ok(strongly_connected(&edges)
        .into_iter()
        .map(|component| {
            let mut cycle: Vec<PathBuf> = component.iter().map(|m| files[m].clone()).collect();
            cycle.sort();
            cycle
        })
        .collect())
}

/// Every path a file writes outside `#[cfg(test)]` items, as segments, with
/// the inline modules (`mod name { … }`) it stands in.
#[derive(Default)]
struct PathCollector {
    paths: Vec<(Vec<String>, Vec<String>)>,
    inline: Vec<String>,
}

impl<'ast> Visit<'ast> for PathCollector {
    fn visit_item(&mut self, item: &'ast syn::Item) {
        if !is_test_only(item) {
            visit::visit_item(self, item);
        }
    }

    fn visit_item_mod(&mut self, item: &'ast syn::ItemMod) {
        if item.content.is_some() {
            self.inline.push(item.ident.to_string());
            visit::visit_item_mod(self, item);
            self.inline.pop();
        }
    }

    fn visit_item_use(&mut self, item: &'ast syn::ItemUse) {
        let inline = &self.inline;
        self.paths.extend(
            use_leaves(&item.tree)
                .into_iter()
                .map(|(path, _)| (inline.clone(), path)),
        );
    }

    // `pub(crate)` and `pub(super)` name who may see an item, not what it uses.
    fn visit_visibility(&mut self, _: &'ast syn::Visibility) {}

    fn visit_path(&mut self, path: &'ast syn::Path) {
        if path.leading_colon.is_none() {
            let segments = path.segments.iter().map(|s| s.ident.to_string()).collect();
            self.paths.push((self.inline.clone(), segments));
        }
        visit::visit_path(self, path);
    }
}

/// Whether an item is compiled for tests only (`#[cfg(test)]`).
fn is_test_only(item: &syn::Item) -> bool {
    let attrs = match item {
        syn::Item::Const(i) => &i.attrs,
        syn::Item::Enum(i) => &i.attrs,
        syn::Item::Fn(i) => &i.attrs,
        syn::Item::Impl(i) => &i.attrs,
        syn::Item::Mod(i) => &i.attrs,
        syn::Item::Static(i) => &i.attrs,
        syn::Item::Struct(i) => &i.attrs,
        syn::Item::Trait(i) => &i.attrs,
        syn::Item::Type(i) => &i.attrs,
        syn::Item::Use(i) => &i.attrs,
        _ => return false,
    };
    attrs.iter().any(|attr| match &attr.meta {
        syn::Meta::List(list) => list.path.is_ident("cfg") && list.tokens.to_string() == "test",
        _ => false,
    })
}

/// A `use` tree's leaves: each full path, with the name it binds (`*` for a
/// glob, whose path is the module it reads).
fn use_leaves(tree: &syn::UseTree) -> Vec<(Vec<String>, String)> {
    match tree {
        syn::UseTree::Path(p) => use_leaves(&p.tree)
            .into_iter()
            .map(|(mut path, name)| {
                path.insert(0, p.ident.to_string());
                (path, name)
            })
            .collect(),
        syn::UseTree::Name(n) => vec![(vec![n.ident.to_string()], n.ident.to_string())],
        syn::UseTree::Rename(r) => vec![(vec![r.ident.to_string()], r.rename.to_string())],
        syn::UseTree::Glob(_) => vec![(Vec::new(), "*".to_owned())],
        syn::UseTree::Group(g) => g.items.iter().flat_map(use_leaves).collect(),
    }
}

/// `path`, written in `module`, from the crate root; `None` for a path
/// outside the crate (std, another crate, a local name).
fn absolute(
    module: &ModulePath,
    path: &[String],
    files: &BTreeMap<ModulePath, PathBuf>,
) -> Option<ModulePath> {
    let (first, rest) = path.split_first()?;
    match first.as_str() {
        "crate" => Some(rest.to_vec()),
        "self" => Some(module.iter().chain(rest).cloned().collect()),
        "super" => {
            let mut base = module.clone();
            base.pop()?;
            let mut rest = rest;
            while rest.first().is_some_and(|s| s == "super") {
                base.pop()?;
                rest = &rest[1..];
            }
            Some(base.into_iter().chain(rest.iter().cloned()).collect())
        }
        _ => {
            // A plain path is the crate's only when it starts at a child
            // module (`child::item`; a lone `name` is a local or an import).
            let child: ModulePath = module.iter().chain([first]).cloned().collect();
            (!rest.is_empty() && files.contains_key(&child))
                .then(|| module.iter().chain(path).cloned().collect())
        }
    }
}

/// The names a module re-exports (`pub use`, any `pub(..)`) from inside the
/// crate, each with the absolute path it stands for.
fn reexports_of(
    module: &ModulePath,
    file: &syn::File,
    files: &BTreeMap<ModulePath, PathBuf>,
) -> BTreeMap<String, ModulePath> {
    let mut table = BTreeMap::new();
    for item in &file.items {
        let syn::Item::Use(item) = item else { continue };
        if matches!(item.vis, syn::Visibility::Inherited) {
            continue;
        }
        for (path, name) in use_leaves(&item.tree) {
            if name == "*" || name == "self" {
                continue;
            }
            if let Some(target) = absolute(module, &path, files) {
                table.insert(name, target);
            }
        }
    }
    table
}

/// Turns absolute paths into the files that define what they name.
struct Resolver<'a> {
    files: &'a BTreeMap<ModulePath, PathBuf>,
    reexports: &'a BTreeMap<ModulePath, BTreeMap<String, ModulePath>>,
}

impl Resolver<'_> {
    /// The file `path` lands in: its longest module prefix, followed into a
    /// child when that module only re-exports the next name from there.
    fn resolve(&self, path: &[String]) -> Option<ModulePath> {
        self.resolve_within(path, 0)
    }

    fn resolve_within(&self, path: &[String], hops: usize) -> Option<ModulePath> {
        let found = (0..=path.len())
            .rev()
            .map(|len| &path[..len])
            .find(|prefix| self.files.contains_key(*prefix))?;
        let found = found.to_vec();
        if let (Some(next), true) = (path.get(found.len()), hops < 8) {
            let target = self.reexports.get(&found).and_then(|table| table.get(next));
            if let Some(target) = target.filter(|t| t.len() > found.len() && t.starts_with(&found))
            {
                let further: ModulePath = target
                    .iter()
                    .chain(&path[found.len() + 1..])
                    .cloned()
                    .collect();
                if let Some(file) = self.resolve_within(&further, hops + 1) {
                    return Some(file);
                }
            }
        }
        Some(found)
    }
}

/// The strongly connected components of two or more modules (Tarjan).
fn strongly_connected(edges: &BTreeMap<ModulePath, BTreeSet<ModulePath>>) -> Vec<Vec<ModulePath>> {
    struct Tarjan<'a> {
        edges: &'a BTreeMap<ModulePath, BTreeSet<ModulePath>>,
        index: BTreeMap<&'a ModulePath, usize>,
        low: BTreeMap<&'a ModulePath, usize>,
        stack: Vec<&'a ModulePath>,
        on_stack: BTreeSet<&'a ModulePath>,
        components: Vec<Vec<ModulePath>>,
    }
    impl<'a> Tarjan<'a> {
        fn visit(&mut self, v: &'a ModulePath) {
            let n = self.index.len();
            self.index.insert(v, n);
            self.low.insert(v, n);
            self.stack.push(v);
            self.on_stack.insert(v);
            for w in self.edges.get(v).into_iter().flatten() {
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let low = self.low[v].min(self.low[w]);
                    self.low.insert(v, low);
                } else if self.on_stack.contains(w) {
                    let low = self.low[v].min(self.index[w]);
                    self.low.insert(v, low);
                }
            }
            if self.low[v] == self.index[v] {
                let mut component = Vec::new();
                while let Some(w) = self.stack.pop() {
                    self.on_stack.remove(w);
                    component.push(w.clone());
                    if w == v {
                        break;
                    }
                }
                if component.len() > 1 {
                    self.components.push(component);
                }
            }
        }
    }
    let mut tarjan = Tarjan {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        components: Vec::new(),
    };
    for v in edges.keys() {
        if !tarjan.index.contains_key(v) {
            tarjan.visit(v);
        }
    }
    tarjan.components
}

#[cfg(test)]
mod tests;
