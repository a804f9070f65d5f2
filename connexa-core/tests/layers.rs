//! The layering rule of `docs/architecture.md`, checked: a module of
//! connexa-core may use only modules of a lower layer (modules of one layer
//! are independent of each other). The layers are read from the module map in
//! `docs/architecture.md` (between the `layers:begin` and `layers:end`
//! markers), so the document and the code cannot drift apart: a new module
//! missing from the map fails, and so does every `crate::` path in
//! `connexa-core/src/**` that points at a module of the same or a higher layer.
//!
//! The scan is textual: `crate::name` and `crate::{name, ...}` in code (not in
//! comments or doc comments, whose links are not dependencies). `super::`
//! paths stay inside a top-level module in this crate and are not followed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Upward edges known and not fixed yet, each with its reason. The test fails
/// on any edge not listed here, and on a listed edge that no longer exists (so
/// the list only shrinks).
const ALLOWED: &[(&str, &str, &str)] = &[];

/// A `crate::` reference: the file, the line, the top-level module named.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Use {
    file: String,
    line: usize,
    target: String,
}

/// Blanks out `//` comments (doc comments included) outside string literals,
/// keeping line breaks so line numbers stay right.
fn strip_comments(src: &str) -> String {
    let mut out = String::with_capacity(src.len());
    // A string literal may span lines.
    let mut in_str = false;
    for line in src.lines() {
        let bytes = line.as_bytes();
        let mut cut = bytes.len();
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'\\' if in_str => i += 1,
                b'"' => in_str = !in_str,
                // Char literals ('"', '\"') must not open a string.
                b'\'' if !in_str && bytes.get(i + 2) == Some(&b'\'') => i += 2,
                b'\''
                    if !in_str
                        && bytes.get(i + 1) == Some(&b'\\')
                        && bytes.get(i + 3) == Some(&b'\'') =>
                {
                    i += 3
                }
                b'/' if !in_str && bytes.get(i + 1) == Some(&b'/') => {
                    cut = i;
                    break;
                }
                _ => {}
            }
            i += 1;
        }
        out.push_str(&line[..cut]);
        out.push('\n');
    }
    out
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The top-level modules named by `crate::` paths in `src` (comments
/// stripped), with their line numbers.
fn crate_refs(src: &str) -> Vec<(usize, String)> {
    let code = strip_comments(src);
    let mut found = Vec::new();
    let mut from = 0;
    while let Some(pos) = code[from..].find("crate::") {
        let at = from + pos;
        from = at + "crate::".len();
        // `$crate::` and `my_crate::` are not this crate's root.
        if code[..at]
            .chars()
            .next_back()
            .is_some_and(|c| is_ident(c) || c == '$')
        {
            continue;
        }
        let line = code[..at].matches('\n').count() + 1;
        let rest = &code[from..];
        if let Some(group) = rest.strip_prefix('{') {
            // The names at the group's top level: `crate::{a::X, b::{Y, Z}}` → a, b.
            let mut depth = 0usize;
            let mut items = vec![String::new()];
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => items.push(String::new()),
                    c if depth == 0 => items.last_mut().expect("one item").push(c),
                    _ => {}
                }
            }
            for item in items {
                let name: String = item.trim().chars().take_while(|&c| is_ident(c)).collect();
                if !name.is_empty() {
                    found.push((line, name));
                }
            }
        } else {
            let name: String = rest.chars().take_while(|&c| is_ident(c)).collect();
            if !name.is_empty() {
                found.push((line, name));
            }
        }
    }
    found.retain(|(_, n)| n != "self");
    found
}

/// The layer map of `docs/architecture.md`: rows `| N | `a`, `b` | ... |`
/// between the markers, as module → layer.
fn layer_map(doc: &str) -> BTreeMap<String, u32> {
    let begin = doc
        .find("<!-- layers:begin -->")
        .expect("docs/architecture.md has a `<!-- layers:begin -->` marker");
    let end = doc
        .find("<!-- layers:end -->")
        .expect("docs/architecture.md has a `<!-- layers:end -->` marker");
    let mut map = BTreeMap::new();
    for row in doc[begin..end].lines() {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let Some(layer) = cells.get(1).and_then(|c| c.parse::<u32>().ok()) else {
            continue;
        };
        let modules = cells.get(2).expect("a layer row names its modules");
        for m in modules.split(',') {
            let m = m.trim().trim_matches('`');
            assert!(!m.is_empty(), "empty module name in layer row {row:?}");
            let before = map.insert(m.to_owned(), layer);
            assert!(before.is_none(), "module `{m}` is in two layers");
        }
    }
    map
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src dir") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Every `crate::` use of another top-level module, by file.
fn crate_uses(src_dir: &Path) -> (BTreeSet<String>, Vec<(String, Use)>) {
    let mut files = Vec::new();
    rust_files(src_dir, &mut files);
    files.sort();
    let mut modules = BTreeSet::new();
    let mut uses = Vec::new();
    for path in files {
        let rel = path.strip_prefix(src_dir).expect("under src");
        let first = rel.components().next().expect("a path");
        let top = first
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_owned();
        if top == "lib" {
            // The crate root re-exports from every layer.
            continue;
        }
        modules.insert(top.clone());
        let text = std::fs::read_to_string(&path).expect("read source");
        for (line, target) in crate_refs(&text) {
            if target != top {
                let file = format!("connexa-core/src/{}", rel.display());
                uses.push((top.clone(), Use { file, line, target }));
            }
        }
    }
    (modules, uses)
}

#[test]
fn no_module_uses_a_module_of_its_own_or_a_higher_layer() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc_path = root.join("../docs/architecture.md");
    let doc = std::fs::read_to_string(&doc_path).expect("read docs/architecture.md");
    let layers = layer_map(&doc);
    let (modules, uses) = crate_uses(&root.join("src"));

    let unmapped: Vec<&String> = modules
        .iter()
        .filter(|m| !layers.contains_key(*m))
        .collect();
    assert!(
        unmapped.is_empty(),
        "modules missing from the layer map of docs/architecture.md: {unmapped:?}"
    );
    let gone: Vec<&String> = layers.keys().filter(|m| !modules.contains(*m)).collect();
    assert!(
        gone.is_empty(),
        "the layer map of docs/architecture.md names modules that do not exist: {gone:?}"
    );
    // The scan must see the crate's real edges, or it proves nothing.
    assert!(
        uses.iter()
            .any(|(from, u)| from == "engine" && u.target == "ports"),
        "the scan found no engine → ports use: the parser is broken"
    );
    assert!(uses.len() > 100, "only {} uses found", uses.len());

    let mut violations = BTreeSet::new();
    let mut used_allowances = BTreeSet::new();
    for (from, u) in &uses {
        let lf = layers[from];
        let Some(&lt) = layers.get(&u.target) else {
            // A crate-root re-export (`crate::Status`) would hide the layer
            // of what it names.
            violations.insert(format!(
                "{}:{}: `{from}` names `crate::{}`, which is no module: use the \
                 path through its module",
                u.file, u.line, u.target
            ));
            continue;
        };
        if lt < lf {
            continue;
        }
        if let Some(a) = ALLOWED
            .iter()
            .find(|(f, t, _)| *f == from && *t == u.target)
        {
            used_allowances.insert((a.0, a.1));
            continue;
        }
        violations.insert(format!(
            "{}:{}: `{from}` (layer {lf}) uses `{}` (layer {lt})",
            u.file, u.line, u.target
        ));
    }
    assert!(
        violations.is_empty(),
        "upward or sideways edges (a module may use only modules of a lower layer; see \
         docs/architecture.md, \"Module map and layers\"):\n{}",
        violations.into_iter().collect::<Vec<_>>().join("\n")
    );
    let stale: Vec<_> = ALLOWED
        .iter()
        .filter(|(f, t, _)| !used_allowances.contains(&(*f, *t)))
        .collect();
    assert!(
        stale.is_empty(),
        "allowed edges that no longer exist (remove them from ALLOWED): {stale:?}"
    );
}

#[test]
fn the_scan_finds_paths_and_groups_and_skips_comments() {
    let src = "use crate::domain::Node;\n\
               use crate::{ports::{A, B}, store, tunnel::X as Y};\n\
               // crate::engine in a comment\n\
               /// [link](crate::ops::all)\n\
               let s = \"http://x\"; let n = crate::probe::f();\n\
               let u = \"// not a comment\"; crate::speed::g();\n\
               macro_rules! m { () => { $crate::socks::h() } }\n\
               let o = other_crate::geo::x;\n";
    let refs = crate_refs(src);
    let names: Vec<(usize, &str)> = refs.iter().map(|(l, n)| (*l, n.as_str())).collect();
    assert_eq!(
        names,
        [
            (1, "domain"),
            (2, "ports"),
            (2, "store"),
            (2, "tunnel"),
            (5, "probe"),
            (6, "speed"),
        ]
    );
}

#[test]
fn the_layer_map_is_read_from_the_marked_table() {
    let doc = "intro | 9 | `x` |\n<!-- layers:begin -->\n\
               | Layer | Modules | What |\n|---|---|---|\n\
               | 0 | `domain`, `csv_cell` | pure |\n| 3 | `store` | SQL |\n\
               <!-- layers:end -->\n| 7 | `y` |\n";
    let map = layer_map(doc);
    let got: Vec<(&str, u32)> = map.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    assert_eq!(got, [("csv_cell", 0), ("domain", 0), ("store", 3)]);
}
