//! The crate's module graph stays layered (docs/ARCHITECTURE.md, "pipeline-scan
//! module layers"): no import cycles between source files, and the generic
//! pipeline (`pipeline`, `transport`, `sim`, `metrics`) never depends on the
//! scan domain or the binary wiring.
//!
//! The check reads `src/**/*.rs` (no compiler plugin): every `use` tree and
//! every inline `crate::…` / `super::…` path outside `#[cfg(test)]` blocks
//! and comments is resolved to the source file of the longest module prefix
//! it names. `mod x;` declarations are containment, not imports. Run with
//! `--nocapture` to print the graph.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Modules that must not (even transitively) import the scan domain or the
/// binary wiring: what `default-features = false` gives embedders.
const GENERIC: &[&str] = &[
    "crate::pipeline",
    "crate::transport",
    "crate::sim",
    "crate::metrics",
];

/// The scan domain and the scan-specific binary wiring (feature `scan`).
const SCAN_SIDE: &[&str] = &[
    "crate::scan",
    "crate::api",
    "crate::submit_span",
    "crate::app",
    "crate::demo",
    "crate::wiring",
    "crate::image_url",
];

fn under(module: &str, root: &str) -> bool {
    module == root || module.starts_with(&format!("{root}::"))
}

/// `src/a/b.rs` → `crate::a::b`; `src/a/mod.rs` → `crate::a`; `src/lib.rs` → `crate`.
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop()?;
    let stem = last.strip_suffix(".rs")?;
    match stem {
        "lib" if parts.is_empty() => {}
        "main" if parts.is_empty() => return None, // the binary: an external user
        "mod" => {}
        s => parts.push(s.to_owned()),
    }
    Some(
        std::iter::once("crate".to_owned())
            .chain(parts)
            .collect::<Vec<_>>()
            .join("::"),
    )
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .expect("read src dir")
        .map(|e| e.expect("dir entry").path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// The source without comments, string/char literals and `#[cfg(test)]` items.
fn code_only(src: &str) -> String {
    let b = src.as_bytes();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    while i < b.len() {
        if b[i..].starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i..].starts_with(b"/*") {
            let mut depth = 0;
            while i < b.len() {
                if b[i..].starts_with(b"/*") {
                    depth += 1;
                    i += 2;
                } else if b[i..].starts_with(b"*/") {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if b[i] == b'r' && (b[i..].starts_with(b"r\"") || b[i..].starts_with(b"r#")) {
            // Raw string: r"…", r#"…"#, …
            let mut j = i + 1;
            let mut hashes = 0;
            while j < b.len() && b[j] == b'#' {
                hashes += 1;
                j += 1;
            }
            if j < b.len() && b[j] == b'"' {
                let close: Vec<u8> = std::iter::once(b'"')
                    .chain(std::iter::repeat_n(b'#', hashes))
                    .collect();
                j += 1;
                while j < b.len() && !b[j..].starts_with(&close) {
                    j += 1;
                }
                i = (j + close.len()).min(b.len());
                out.push_str("\"\"");
            } else {
                out.push('r');
                i += 1;
            }
        } else if b[i] == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            out.push_str("\"\"");
        } else if b[i] == b'\'' && i + 2 < b.len() && (b[i + 2] == b'\'' || b[i + 1] == b'\\') {
            // A char literal ('x', '\n', '\''); lifetimes ('a) are left alone.
            i += 1;
            if b[i] == b'\\' {
                i += 1;
            }
            while i < b.len() && b[i] != b'\'' {
                i += 1;
            }
            i += 1;
            out.push_str("' '");
        } else {
            let ch = src[i..].chars().next().expect("char boundary");
            out.push(ch);
            i += ch.len_utf8();
        }
    }
    strip_test_items(&out)
}

/// Removes every item annotated `#[cfg(test)]` (up to its matching `}` or `;`).
fn strip_test_items(code: &str) -> String {
    let mut out = String::with_capacity(code.len());
    let mut rest = code;
    while let Some(at) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..at]);
        let after = &rest[at..];
        let mut depth = 0usize;
        let mut end = after.len();
        for (k, c) in after.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth = depth.saturating_sub(1);
                    if depth == 0 {
                        end = k + 1;
                        break;
                    }
                }
                ';' if depth == 0 => {
                    end = k + 1;
                    break;
                }
                _ => {}
            }
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Expands a `use` tree (`a::{b, c::{d, e}}`) into its paths.
fn expand_use(tree: &str) -> Vec<String> {
    // Drop renames (`x as y`), then whitespace.
    let mut flat = String::new();
    let mut toks = tree.split_whitespace();
    while let Some(t) = toks.next() {
        if t == "as" {
            // Keep only the punctuation after the new name (`y},` → `},`).
            if let Some(next) = toks.next() {
                flat.push_str(next.trim_start_matches(is_ident));
            }
        } else {
            flat.push_str(t);
        }
    }
    let tree = flat;
    fn go(prefix: &str, t: &str, out: &mut Vec<String>) {
        // Split `t` at top-level commas.
        let mut depth = 0;
        let mut start = 0;
        let mut items = Vec::new();
        for (k, c) in t.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    items.push(&t[start..k]);
                    start = k + 1;
                }
                _ => {}
            }
        }
        items.push(&t[start..]);
        for item in items.into_iter().filter(|s| !s.is_empty()) {
            match item.find('{') {
                Some(open) => {
                    let head = item[..open].trim_end_matches("::");
                    let inner = &item[open + 1..item.rfind('}').unwrap_or(item.len())];
                    let p = join(prefix, head);
                    go(&p, inner, out);
                }
                None => {
                    out.push(join(prefix, item));
                }
            }
        }
    }
    fn join(a: &str, b: &str) -> String {
        match (a.is_empty(), b.is_empty()) {
            (true, _) => b.to_owned(),
            (_, true) => a.to_owned(),
            _ => format!("{a}::{b}"),
        }
    }
    let mut out = Vec::new();
    go("", &tree, &mut out);
    out
}

/// Every path a file names: `use` trees, and inline `crate::`/`super::` paths.
fn paths_in(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    // `use` statements (also `pub use`, `pub(crate) use`).
    let mut rest = code;
    while let Some(at) = rest.find("use ") {
        let before = rest[..at].chars().last();
        rest = &rest[at + 4..];
        if before.is_some_and(is_ident) {
            continue;
        }
        let Some(end) = rest.find(';') else { break };
        let tree = &rest[..end];
        if tree.contains('(') || tree.contains('=') {
            continue; // not a use statement (e.g. text that happens to match)
        }
        out.extend(expand_use(tree));
    }
    // Inline paths.
    for anchor in ["crate::", "super::"] {
        let mut from = 0;
        while let Some(at) = code[from..].find(anchor) {
            let start = from + at;
            from = start + anchor.len();
            if code[..start].chars().last().is_some_and(is_ident) {
                continue;
            }
            let path: String = code[start..]
                .chars()
                .take_while(|c| is_ident(*c) || *c == ':')
                .collect();
            let path = path.trim_end_matches(':');
            if path != anchor.trim_end_matches(':') {
                out.push(path.to_owned()); // (`super::{…}` is a use tree, read above)
            }
        }
    }
    out
}

struct Graph {
    modules: BTreeSet<String>,
    edges: BTreeMap<String, BTreeSet<String>>,
}

fn build_graph() -> Graph {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut by_module = BTreeMap::new();
    for f in &files {
        if let Some(m) = module_of(&src, f) {
            by_module.insert(m, f.clone());
        }
    }
    let modules: BTreeSet<String> = by_module.keys().cloned().collect();
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (module, file) in &by_module {
        let text = std::fs::read_to_string(file).expect("read source");
        let code = code_only(&text);
        let targets = edges.entry(module.clone()).or_default();
        for path in paths_in(&code) {
            let mut segs: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).collect();
            if segs.is_empty() {
                continue;
            }
            let mut abs: Vec<String> = match segs[0] {
                "crate" => {
                    segs.remove(0);
                    vec!["crate".to_owned()]
                }
                "super" => {
                    let mut base: Vec<String> = module.split("::").map(str::to_owned).collect();
                    while segs.first() == Some(&"super") {
                        segs.remove(0);
                        base.pop();
                    }
                    base
                }
                "self" => {
                    segs.remove(0);
                    module.split("::").map(str::to_owned).collect()
                }
                first => {
                    // A child module (`pub use engine::X` in a mod.rs) or an
                    // extern crate.
                    let child = format!("{module}::{first}");
                    if modules.contains(&child) {
                        module.split("::").map(str::to_owned).collect()
                    } else {
                        continue;
                    }
                }
            };
            abs.extend(segs.iter().map(|s| (*s).to_owned()));
            // The longest module prefix.
            let target = (1..=abs.len())
                .rev()
                .map(|n| abs[..n].join("::"))
                .find(|p| modules.contains(p));
            if let Some(t) = target {
                if &t != module && t != "crate" {
                    targets.insert(t);
                }
            }
        }
    }
    Graph { modules, edges }
}

/// Strongly connected components with more than one module (Tarjan).
fn cycles(g: &Graph) -> Vec<Vec<String>> {
    struct St<'a> {
        g: &'a Graph,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on: BTreeSet<&'a str>,
        next: usize,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(s: &mut St<'a>, v: &'a str) {
        s.index.insert(v, s.next);
        s.low.insert(v, s.next);
        s.next += 1;
        s.stack.push(v);
        s.on.insert(v);
        let g = s.g;
        for w in g.edges.get(v).into_iter().flatten() {
            let w = w.as_str();
            if !s.index.contains_key(w) {
                visit(s, w);
                let lw = s.low[w];
                let lv = s.low[v];
                s.low.insert(v, lv.min(lw));
            } else if s.on.contains(w) {
                let iw = s.index[w];
                let lv = s.low[v];
                s.low.insert(v, lv.min(iw));
            }
        }
        if s.low[v] == s.index[v] {
            let mut comp = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on.remove(w);
                comp.push(w.to_owned());
                if w == v {
                    break;
                }
            }
            if comp.len() > 1 {
                comp.sort();
                s.out.push(comp);
            }
        }
    }
    let mut s = St {
        g,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        next: 0,
        out: Vec::new(),
    };
    for m in &g.modules {
        if !s.index.contains_key(m.as_str()) {
            visit(&mut s, m);
        }
    }
    s.out
}

fn reachable(g: &Graph, from: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut todo = vec![from.to_owned()];
    while let Some(m) = todo.pop() {
        for t in g.edges.get(&m).into_iter().flatten() {
            if seen.insert(t.clone()) {
                todo.push(t.clone());
            }
        }
    }
    seen
}

#[test]
fn the_checker_finds_a_planted_cycle_and_use_trees() {
    // The parser itself: nested use trees, renames, comments and tests ignored.
    let code = code_only(
        "use super::{a::B, c::{d, e as f}};\n// use crate::commented;\n\
         fn x() { let s = \"crate::in_string\"; crate::g::h(); }\n\
         #[cfg(test)]\nmod tests { use crate::only_tests; }\n",
    );
    let mut paths = paths_in(&code);
    paths.sort();
    assert_eq!(
        paths,
        ["crate::g::h", "super::a::B", "super::c::d", "super::c::e"]
    );

    let mut g = Graph {
        modules: ["crate::x", "crate::y", "crate::z"]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        edges: BTreeMap::new(),
    };
    g.edges
        .entry("crate::x".into())
        .or_default()
        .insert("crate::y".into());
    assert!(cycles(&g).is_empty());
    g.edges
        .entry("crate::y".into())
        .or_default()
        .insert("crate::x".into());
    assert_eq!(
        cycles(&g),
        vec![vec!["crate::x".to_owned(), "crate::y".to_owned()]]
    );
}

#[test]
fn source_files_import_each_other_without_cycles() {
    let g = build_graph();
    println!("module graph ({} files):", g.modules.len());
    for (m, ts) in &g.edges {
        let ts: Vec<&str> = ts.iter().map(String::as_str).collect();
        println!("  {m} -> {}", ts.join(", "));
    }
    let found = cycles(&g);
    for c in &found {
        println!("CYCLE: {}", c.join(" <-> "));
    }
    assert!(found.is_empty(), "import cycles: {found:?}");
    assert!(
        g.modules.contains("crate::pipeline::engine"),
        "the checker saw the sources"
    );
}

#[test]
fn generic_pipeline_modules_never_reach_the_scan_domain() {
    let g = build_graph();
    let mut bad = Vec::new();
    for m in g
        .modules
        .iter()
        .filter(|m| GENERIC.iter().any(|r| under(m, r)))
    {
        for t in reachable(&g, m) {
            if SCAN_SIDE.iter().any(|r| under(&t, r)) {
                bad.push(format!("{m} -> … -> {t}"));
            }
        }
    }
    println!("generic modules checked: {GENERIC:?}; forbidden: {SCAN_SIDE:?}");
    assert!(
        bad.is_empty(),
        "generic modules depend on the scan side: {bad:#?}"
    );
}
