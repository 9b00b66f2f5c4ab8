//! `cargo xtask module-cycles`: files of one crate that import each other in a circle.
//!
//! A module depends on another when it names it: a `use` of `crate::…`, `super::…`,
//! `self::…` or a child module, or such a path written inline. A path that ends at an
//! item a module only re-exports (`pub use inner::Item`) counts as a dependency on the
//! module that defines it, so a crate root that re-exports its API is not a hub every
//! module seems to import. `mod` declarations are not dependencies. Inline
//! `#[cfg(test)]` modules are left out (they test their own file). The graph's strongly
//! connected components with more than one file are the circles.
//!
//! It reads source text, not a parsed crate: a macro that builds paths or a `#[path]`
//! attribute can hide an edge. Good enough to keep a tree honest; `cargo check` stays
//! the authority on what compiles.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// A module's path from its crate root (`[]` is the root).
type ModulePath = Vec<String>;

/// One crate's modules: where each lives, and whom it names.
struct CrateGraph {
    /// The crate's `src` folder.
    source_root: PathBuf,
    files: BTreeMap<ModulePath, PathBuf>,
    edges: BTreeMap<ModulePath, BTreeSet<ModulePath>>,
}

/// Every circle in every crate of the repository at `root`, as lines to print.
pub fn find(root: &Path) -> Result<Vec<String>, String> {
    let mut report = Vec::new();
    for source_root in crate_source_roots(root)? {
        let graph = CrateGraph::read(&source_root)?;
        for circle in graph.circles() {
            let files: Vec<String> = circle
                .iter()
                .map(|module| {
                    graph.files[module]
                        .strip_prefix(root)
                        .unwrap_or(&graph.files[module])
                        .display()
                        .to_string()
                })
                .collect();
            report.push(format!(
                "{}: {} files in a circle: {}",
                graph
                    .source_root
                    .strip_prefix(root)
                    .unwrap_or(&graph.source_root)
                    .display(),
                files.len(),
                files.join(", ")
            ));
        }
    }
    Ok(report)
}

/// The `src` folders of the repository's crates (a `lib.rs` or `main.rs` in them).
fn crate_source_roots(root: &Path) -> Result<Vec<PathBuf>, String> {
    let mut found = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(directory) = pending.pop() {
        let entries = fs::read_dir(&directory)
            .map_err(|error| format!("{}: {error}", directory.display()))?;
        for entry in entries {
            let path = entry
                .map_err(|error| format!("{}: {error}", directory.display()))?
                .path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if !path.is_dir() || name.starts_with('.') || name == "target" {
                continue;
            }
            if name == "src" && (path.join("lib.rs").is_file() || path.join("main.rs").is_file()) {
                found.push(path.clone());
            }
            pending.push(path);
        }
    }
    found.sort();
    Ok(found)
}

impl CrateGraph {
    fn read(source_root: &Path) -> Result<Self, String> {
        let mut files = BTreeMap::new();
        collect_modules(source_root, source_root, &mut files)?;
        let mut sources = BTreeMap::new();
        for (module, file) in &files {
            let text =
                fs::read_to_string(file).map_err(|error| format!("{}: {error}", file.display()))?;
            sources.insert(module.clone(), without_test_modules(&strip_comments(&text)));
        }
        let modules: BTreeSet<ModulePath> = files.keys().cloned().collect();
        let reexports: BTreeMap<ModulePath, BTreeMap<String, ModulePath>> = sources
            .iter()
            .map(|(module, text)| (module.clone(), reexports_of(module, text, &modules)))
            .collect();
        let mut edges = BTreeMap::new();
        for (module, text) in &sources {
            let mut targets = BTreeSet::new();
            for path in referenced_paths(text, module, &modules) {
                if let Some(target) = resolve(module, &path, &modules, &reexports)
                    && &target != module
                {
                    targets.insert(target);
                }
            }
            edges.insert(module.clone(), targets);
        }
        Ok(Self {
            source_root: source_root.to_path_buf(),
            files,
            edges,
        })
    }

    /// Strongly connected components of more than one module (Tarjan's algorithm).
    fn circles(&self) -> Vec<Vec<ModulePath>> {
        struct Walk<'a> {
            edges: &'a BTreeMap<ModulePath, BTreeSet<ModulePath>>,
            index: BTreeMap<&'a ModulePath, usize>,
            low: BTreeMap<&'a ModulePath, usize>,
            stack: Vec<&'a ModulePath>,
            on_stack: BTreeSet<&'a ModulePath>,
            found: Vec<Vec<ModulePath>>,
        }
        impl<'a> Walk<'a> {
            fn visit(&mut self, module: &'a ModulePath) {
                let order = self.index.len();
                self.index.insert(module, order);
                self.low.insert(module, order);
                self.stack.push(module);
                self.on_stack.insert(module);
                for target in &self.edges[module] {
                    if !self.index.contains_key(target) {
                        self.visit(target);
                        let low = self.low[module].min(self.low[target]);
                        self.low.insert(module, low);
                    } else if self.on_stack.contains(target) {
                        let low = self.low[module].min(self.index[target]);
                        self.low.insert(module, low);
                    }
                }
                if self.low[module] == self.index[module] {
                    let mut component = Vec::new();
                    while let Some(member) = self.stack.pop() {
                        self.on_stack.remove(member);
                        component.push(member.clone());
                        if member == module {
                            break;
                        }
                    }
                    if component.len() > 1 {
                        component.sort();
                        self.found.push(component);
                    }
                }
            }
        }
        let mut walk = Walk {
            edges: &self.edges,
            index: BTreeMap::new(),
            low: BTreeMap::new(),
            stack: Vec::new(),
            on_stack: BTreeSet::new(),
            found: Vec::new(),
        };
        for module in self.edges.keys() {
            if !walk.index.contains_key(module) {
                walk.visit(module);
            }
        }
        walk.found.sort();
        walk.found
    }
}

/// Every `.rs` file under `directory` as a module of the crate rooted at `source_root`
/// (`src/bin` holds other crates; a `main.rs` beside a `lib.rs` is another crate).
fn collect_modules(
    source_root: &Path,
    directory: &Path,
    files: &mut BTreeMap<ModulePath, PathBuf>,
) -> Result<(), String> {
    let has_lib = source_root.join("lib.rs").is_file();
    let entries =
        fs::read_dir(directory).map_err(|error| format!("{}: {error}", directory.display()))?;
    for entry in entries {
        let path = entry
            .map_err(|error| format!("{}: {error}", directory.display()))?
            .path();
        if path.is_dir() {
            if directory == source_root && path.file_name().is_some_and(|n| n == "bin") {
                continue;
            }
            collect_modules(source_root, &path, files)?;
            continue;
        }
        if path.extension().is_none_or(|extension| extension != "rs") {
            continue;
        }
        let relative = path.strip_prefix(source_root).unwrap_or(&path);
        let mut module: ModulePath = relative
            .with_extension("")
            .iter()
            .map(|part| part.to_string_lossy().into_owned())
            .collect();
        match module.last().map(String::as_str) {
            Some("mod") => {
                module.pop();
            }
            Some("lib") if module.len() == 1 => module.clear(),
            Some("main") if module.len() == 1 => {
                if has_lib {
                    continue;
                }
                module.clear();
            }
            _ => {}
        }
        files.insert(module, path);
    }
    Ok(())
}

/// The text without `//` and `/* */` comments and with string literals emptied (so a
/// path in a doc example or a message is not an import).
fn strip_comments(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '/' if chars.peek() == Some(&'/') => {
                for next in chars.by_ref() {
                    if next == '\n' {
                        out.push('\n');
                        break;
                    }
                }
            }
            '/' if chars.peek() == Some(&'*') => {
                chars.next();
                let mut previous = ' ';
                for next in chars.by_ref() {
                    if previous == '*' && next == '/' {
                        break;
                    }
                    previous = next;
                }
            }
            '"' => {
                let mut escaped = false;
                for next in chars.by_ref() {
                    if escaped {
                        escaped = false;
                    } else if next == '\\' {
                        escaped = true;
                    } else if next == '"' {
                        break;
                    }
                }
                out.push_str("\"\"");
            }
            '\'' => {
                // A char literal ('x', '\n', '"') or a lifetime ('a): skip a literal
                // only, so its quote character cannot open a "string".
                let rest: String = chars.clone().take(3).collect();
                let literal_length = if rest.starts_with('\\') {
                    rest.find('\'').map(|end| end + 1).unwrap_or(0)
                } else if rest.chars().nth(1) == Some('\'') {
                    2
                } else {
                    0
                };
                for _ in 0..literal_length {
                    chars.next();
                }
                out.push('\'');
            }
            _ => out.push(c),
        }
    }
    out
}

/// The text up to its first inline `#[cfg(test)] mod … {` (by convention at the end of
/// a file).
fn without_test_modules(text: &str) -> String {
    let mut search_from = 0;
    while let Some(found) = text[search_from..].find("#[cfg(test)]") {
        let at = search_from + found;
        let after = text[at + "#[cfg(test)]".len()..].trim_start();
        let after = after.strip_prefix("pub ").unwrap_or(after);
        if let Some(declaration) = after.strip_prefix("mod ") {
            let header_end = declaration.find([';', '{']).unwrap_or(declaration.len());
            if declaration[header_end..].starts_with('{') {
                return text[..at].to_owned();
            }
        }
        search_from = at + 1;
    }
    text.to_owned()
}

/// The `use` statements' paths, expanded (`a::{b, c::d}` → `a::b`, `a::c::d`), and the
/// paths written inline that start at `crate`, `super`, `self` or a child module.
fn referenced_paths(
    text: &str,
    module: &ModulePath,
    modules: &BTreeSet<ModulePath>,
) -> Vec<Vec<String>> {
    let children: BTreeSet<&str> = modules
        .iter()
        .filter(|other| other.len() == module.len() + 1 && other.starts_with(module))
        .filter_map(|child| child.last().map(String::as_str))
        .collect();
    let mut paths = Vec::new();
    for tree in use_trees(text) {
        paths.extend(expand_use_tree(&tree));
    }
    let bytes = text.as_bytes();
    let mut at = 0;
    while at < bytes.len() {
        let starts_word = at == 0 || !is_ident_byte(bytes[at - 1]) && bytes[at - 1] != b':';
        if starts_word && is_ident_byte(bytes[at]) {
            let end = path_end(bytes, at);
            let path: Vec<String> = text[at..end]
                .split("::")
                .map(|segment| segment.trim().to_owned())
                .filter(|segment| !segment.is_empty())
                .collect();
            if path.len() > 1
                && (matches!(path[0].as_str(), "crate" | "super" | "self")
                    || children.contains(path[0].as_str()))
            {
                paths.push(path);
            }
            at = end.max(at + 1);
        } else {
            at += 1;
        }
    }
    paths
}

fn is_ident_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || byte == b'_'
}

/// The end of a `a::b::c` path starting at `start`.
fn path_end(bytes: &[u8], start: usize) -> usize {
    let mut end = start;
    loop {
        while end < bytes.len() && is_ident_byte(bytes[end]) {
            end += 1;
        }
        if bytes[end..].starts_with(b"::") && end + 2 < bytes.len() && is_ident_byte(bytes[end + 2])
        {
            end += 2;
        } else {
            return end;
        }
    }
}

/// The trees of every `use …;` statement.
fn use_trees(text: &str) -> Vec<String> {
    let mut trees = Vec::new();
    let bytes = text.as_bytes();
    let mut search_from = 0;
    while let Some(found) = text[search_from..].find("use ") {
        let at = search_from + found;
        search_from = at + 4;
        if at > 0 && is_ident_byte(bytes[at - 1]) {
            continue;
        }
        if let Some(end) = text[at..].find(';') {
            trees.push(text[at + 4..at + end].to_owned());
            search_from = at + end;
        }
    }
    trees
}

/// `a::{b, c::{d, self}, e as f}` → `a::b`, `a::c::d`, `a::c`, `a::e`.
fn expand_use_tree(tree: &str) -> Vec<Vec<String>> {
    let tree: String = tree
        .chars()
        .filter(|c| !c.is_whitespace() || *c == ' ')
        .collect();
    let tree = tree.trim().trim_start_matches("::");
    let mut out = Vec::new();
    expand_into(tree, &mut Vec::new(), &mut out);
    out
}

fn expand_into(tree: &str, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    let tree = tree.trim();
    if let Some(open) = tree.find('{') {
        let head: Vec<String> = tree[..open]
            .split("::")
            .map(|segment| segment.trim().to_owned())
            .filter(|segment| !segment.is_empty())
            .collect();
        let close = tree.rfind('}').unwrap_or(tree.len());
        let inner = &tree[open + 1..close];
        let depth_before = prefix.len();
        prefix.extend(head);
        for part in split_top_level(inner) {
            expand_into(part, prefix, out);
        }
        prefix.truncate(depth_before);
        return;
    }
    let without_rename = tree.split(" as ").next().unwrap_or(tree);
    let mut path = prefix.clone();
    for segment in without_rename.split("::") {
        let segment = segment.trim();
        if segment.is_empty() || segment == "*" {
            continue;
        }
        if segment == "self" && !path.is_empty() {
            continue;
        }
        path.push(segment.to_owned());
    }
    if !path.is_empty() {
        out.push(path);
    }
}

fn split_top_level(list: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (at, c) in list.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                parts.push(&list[start..at]);
                start = at + 1;
            }
            _ => {}
        }
    }
    parts.push(&list[start..]);
    parts.retain(|part| !part.trim().is_empty());
    parts
}

/// The items `module` re-exports with `pub use` (name → the module it resolves to).
fn reexports_of(
    module: &ModulePath,
    text: &str,
    modules: &BTreeSet<ModulePath>,
) -> BTreeMap<String, ModulePath> {
    let mut found = BTreeMap::new();
    let mut search_from = 0;
    while let Some(at) = text[search_from..].find("pub") {
        let at = search_from + at;
        search_from = at + 3;
        let rest = &text[at + 3..];
        let rest = if rest.starts_with('(') {
            rest.find(')').map_or(rest, |close| &rest[close + 1..])
        } else {
            rest
        };
        let Some(tree) = rest.trim_start().strip_prefix("use ") else {
            continue;
        };
        let Some(end) = tree.find(';') else { continue };
        for path in expand_use_tree(&tree[..end]) {
            let Some(name) = path.last().cloned() else {
                continue;
            };
            let renamed = tree[..end]
                .split(',')
                .find_map(|part| {
                    let (original, alias) = part.split_once(" as ")?;
                    original
                        .trim()
                        .ends_with(&name)
                        .then(|| alias.trim().trim_end_matches('}').trim().to_owned())
                })
                .unwrap_or(name);
            if let Some(target) = resolve_module(module, &path, modules) {
                found.insert(renamed, target);
            }
        }
    }
    found
}

/// The module a path names: its longest prefix that is a module of the crate, followed
/// through re-exports to the module that defines the item.
fn resolve(
    module: &ModulePath,
    path: &[String],
    modules: &BTreeSet<ModulePath>,
    reexports: &BTreeMap<ModulePath, BTreeMap<String, ModulePath>>,
) -> Option<ModulePath> {
    let (mut target, consumed) = resolve_prefix(module, path, modules)?;
    let mut seen = BTreeSet::new();
    if let Some(item) = path.get(consumed) {
        while let Some(definer) = reexports.get(&target).and_then(|names| names.get(item)) {
            if !seen.insert(target.clone()) || definer == &target {
                break;
            }
            target = definer.clone();
        }
    }
    Some(target)
}

fn resolve_module(
    module: &ModulePath,
    path: &[String],
    modules: &BTreeSet<ModulePath>,
) -> Option<ModulePath> {
    resolve_prefix(module, path, modules).map(|(target, _)| target)
}

/// The module a path's leading segments name, and how many segments that took.
fn resolve_prefix(
    module: &ModulePath,
    path: &[String],
    modules: &BTreeSet<ModulePath>,
) -> Option<(ModulePath, usize)> {
    let first = path.first()?;
    let (mut current, mut consumed) = match first.as_str() {
        "crate" => (Vec::new(), 1),
        "self" => (module.clone(), 1),
        "super" => {
            let mut current = module.clone();
            let mut consumed = 0;
            while path.get(consumed).is_some_and(|segment| segment == "super") {
                current.pop();
                consumed += 1;
            }
            (current, consumed)
        }
        child => {
            let mut candidate = module.clone();
            candidate.push(child.to_owned());
            if !modules.contains(&candidate) {
                return None;
            }
            (candidate, 1)
        }
    };
    while let Some(segment) = path.get(consumed) {
        let mut candidate = current.clone();
        candidate.push(segment.clone());
        if !modules.contains(&candidate) {
            break;
        }
        current = candidate;
        consumed += 1;
    }
    Some((current, consumed))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crate_with(files: &[(&str, &str)]) -> Vec<Vec<ModulePath>> {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let directory = std::env::temp_dir().join(format!(
            "xtask-module-cycles-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let source = directory.join("src");
        let _ = fs::remove_dir_all(&directory);
        for (name, text) in files {
            let path = source.join(name);
            fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            fs::write(path, text).expect("write");
        }
        let circles = CrateGraph::read(&source).expect("read").circles();
        let _ = fs::remove_dir_all(&directory);
        circles
    }

    fn module(parts: &[&str]) -> ModulePath {
        parts.iter().map(|part| (*part).to_owned()).collect()
    }

    #[test]
    fn two_files_importing_each_other_are_a_circle() {
        let circles = crate_with(&[
            ("lib.rs", "mod a; mod b;"),
            ("a.rs", "use crate::b::Beta; pub struct Alpha;"),
            (
                "b.rs",
                "pub struct Beta; fn f() -> crate::a::Alpha { todo() }",
            ),
        ]);
        assert_eq!(circles, vec![vec![module(&["a"]), module(&["b"])]]);
    }

    #[test]
    fn a_shared_type_moved_down_breaks_the_circle() {
        let circles = crate_with(&[
            ("lib.rs", "mod a; mod b; mod shared;"),
            ("a.rs", "use crate::{b::Beta, shared::Common};"),
            ("b.rs", "use crate::shared::Common; pub struct Beta;"),
            ("shared.rs", "pub struct Common;"),
        ]);
        assert!(circles.is_empty(), "{circles:?}");
    }

    #[test]
    fn parent_and_child_through_super_are_a_circle() {
        let circles = crate_with(&[
            ("lib.rs", "mod page;"),
            (
                "page/mod.rs",
                "mod facts; use facts::render; pub struct State;",
            ),
            ("page/facts.rs", "use super::State; pub fn render() {}"),
        ]);
        assert_eq!(
            circles,
            vec![vec![module(&["page"]), module(&["page", "facts"])]]
        );
    }

    #[test]
    fn root_reexports_resolve_to_the_defining_module() {
        let circles = crate_with(&[
            (
                "lib.rs",
                "pub mod a; pub mod b; pub use a::Alpha; pub use b::Beta;",
            ),
            ("a.rs", "pub struct Alpha;"),
            ("b.rs", "use crate::Alpha; pub struct Beta;"),
        ]);
        assert!(circles.is_empty(), "{circles:?}");
    }

    #[test]
    fn comments_strings_and_inline_tests_are_not_imports() {
        let circles = crate_with(&[
            ("lib.rs", "mod a; mod b;"),
            (
                "a.rs",
                "// use crate::b::Beta;\nconst HELP: &str = \"see crate::b::Beta\";\n",
            ),
            (
                "b.rs",
                "use crate::a::HELP;\n#[cfg(test)]\nmod tests { use crate::a::HELP; }\n",
            ),
        ]);
        assert!(circles.is_empty(), "{circles:?}");
    }

    #[test]
    fn use_trees_expand() {
        let paths = expand_use_tree("crate::{a::{B, c::D as E}, f, self}");
        assert_eq!(
            paths,
            vec![
                module(&["crate", "a", "B"]),
                module(&["crate", "a", "c", "D"]),
                module(&["crate", "f"]),
                module(&["crate"]),
            ]
        );
    }
}
