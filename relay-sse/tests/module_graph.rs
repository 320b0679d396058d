//! The crate's source layout stays layered: no module imports a module that
//! (directly or through others) imports it back, and no source file grows
//! past [`MAX_LINES`] lines before its `#[cfg(test)]` module.
//!
//! Why: modules that import each other cannot be read, tested or moved one
//! at a time (the hub and the stream code once did), and a file far past a
//! few hundred lines holds several concepts. The graph is read from the
//! source text: every `crate::name` path (in `use` items, grouped
//! `use crate::{a, b::C}` items, and inline paths) outside `#[cfg(test)]`
//! modules is an edge to module `name` when `src/name.rs` exists, and to
//! the crate root (`lib`) otherwise, since the item then lives in (or is
//! re-exported by) `lib.rs`. `main.rs` is the binary, another crate.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Most lines a source file may have before its `#[cfg(test)]` module.
const MAX_LINES: usize = 800;

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// `(module name, source before its test module)` for every library file.
fn sources() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(src_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("rs") {
            continue;
        }
        let name = path.file_stem().unwrap().to_str().unwrap().to_owned();
        if name == "main" {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        out.push((name, non_test(&text)));
    }
    out.sort();
    out
}

/// The text before the first `#[cfg(test)]` line.
fn non_test(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        if line.trim_start().starts_with("#[cfg(test)]") {
            break;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// The text without `//` comments (doc comments included: their examples
/// name public paths, not imports) and without string literals.
fn code_only(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let mut in_str = false;
        let mut prev = ' ';
        let mut chars = line.chars().peekable();
        while let Some(c) = chars.next() {
            if in_str {
                if c == '"' && prev != '\\' {
                    in_str = false;
                }
                prev = if prev == '\\' && c == '\\' { ' ' } else { c };
                continue;
            }
            if c == '/' && chars.peek() == Some(&'/') {
                break;
            }
            if c == '"' {
                in_str = true;
                prev = ' ';
                continue;
            }
            out.push(c);
        }
        out.push('\n');
    }
    out
}

fn ident_at(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// The first path segment of each item of a `{…}` group starting at `s`.
fn group_heads(s: &str) -> Vec<String> {
    let mut heads = Vec::new();
    let mut depth = 0usize;
    let mut at_item = true;
    for (i, c) in s.char_indices() {
        match c {
            '{' => {
                depth += 1;
                if depth == 1 {
                    at_item = true;
                    continue;
                }
            }
            '}' => {
                depth -= 1;
                if depth == 0 {
                    break;
                }
            }
            ',' if depth == 1 => {
                at_item = true;
                continue;
            }
            _ => {}
        }
        if depth == 1 && at_item && !c.is_whitespace() {
            at_item = false;
            let head = ident_at(&s[i..]);
            if !head.is_empty() {
                heads.push(head.to_owned());
            }
        }
    }
    heads
}

/// Names `code` reaches through `crate::` paths (first segment).
fn crate_paths(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        let before = rest[..i].chars().next_back();
        rest = &rest[i + "crate::".len()..];
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue; // e.g. `relay_crate::`
        }
        let after = rest.trim_start();
        if after.starts_with('{') {
            out.extend(group_heads(after));
        } else {
            let head = ident_at(after);
            if !head.is_empty() {
                out.insert(head.to_owned());
            }
        }
    }
    out
}

/// Whether `code` has a path starting with `prefix` (not the tail of a
/// longer path such as `relay_core::metrics::`).
fn has_path(code: &str, prefix: &str) -> bool {
    code.match_indices(prefix).any(|(i, _)| {
        let before = code[..i].chars().next_back();
        !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    })
}

/// Module → modules it imports.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let srcs = sources();
    let modules: BTreeSet<String> = srcs.iter().map(|(n, _)| n.clone()).collect();
    let mut g = BTreeMap::new();
    for (name, text) in &srcs {
        let code = code_only(text);
        let mut deps = BTreeSet::new();
        for head in crate_paths(&code) {
            let target = if modules.contains(&head) {
                head
            } else {
                "lib".to_owned()
            };
            if &target != name {
                deps.insert(target);
            }
        }
        // lib.rs names its own modules without `crate::` (`front::serve`,
        // `pub use config::Config`); in any other file `super::` is the root.
        if name == "lib" {
            deps.extend(
                modules
                    .iter()
                    .filter(|m| *m != "lib" && has_path(&code, &format!("{m}::")))
                    .cloned(),
            );
        } else if has_path(&code, "super::") {
            deps.insert("lib".to_owned());
        }
        g.insert(name.clone(), deps);
    }
    g
}

/// Every cycle's module list (one per strongly connected component with
/// more than one module).
fn cycles(g: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    // Reachability closure (a few dozen modules: cubic is fine).
    let names: Vec<&String> = g.keys().collect();
    let reach = |from: &String| {
        let mut seen = BTreeSet::new();
        let mut todo = vec![from.clone()];
        while let Some(n) = todo.pop() {
            for d in g.get(&n).into_iter().flatten() {
                if seen.insert(d.clone()) {
                    todo.push(d.clone());
                }
            }
        }
        seen
    };
    let reaches: BTreeMap<&String, BTreeSet<String>> =
        names.iter().map(|n| (*n, reach(n))).collect();
    let mut done = BTreeSet::new();
    let mut out = Vec::new();
    for n in &names {
        if done.contains(*n) || !reaches[n].contains(*n) {
            continue;
        }
        let scc: Vec<String> = names
            .iter()
            .filter(|m| reaches[n].contains(**m) && reaches[*m].contains(*n))
            .map(|m| (*m).clone())
            .collect();
        done.extend(scc.iter().cloned());
        out.push(scc);
    }
    out
}

fn render(g: &BTreeMap<String, BTreeSet<String>>) -> String {
    g.iter()
        .map(|(m, d)| {
            let d: Vec<&str> = d.iter().map(String::as_str).collect();
            format!("{m} -> {}\n", d.join(", "))
        })
        .collect()
}

#[test]
fn modules_import_no_cycle() {
    let g = graph();
    println!("{}", render(&g));
    let c = cycles(&g);
    assert!(c.is_empty(), "import cycles: {c:?}\n{}", render(&g));
}

#[test]
fn no_source_file_is_over_the_line_budget() {
    let mut over = Vec::new();
    for (name, text) in sources() {
        let n = text.lines().count();
        println!("{name}.rs: {n} lines before tests");
        if n > MAX_LINES {
            over.push(format!("{name}.rs: {n}"));
        }
    }
    assert!(over.is_empty(), "over {MAX_LINES} lines: {over:?}");
}

/// The parser itself: grouped, nested, inline and root paths.
#[test]
fn the_import_parser_sees_every_form() {
    let code = code_only(
        "use crate::hub::{Membership, Signal};\n\
         use crate::{Gateway, front::{A, B}, metrics};\n\
         let x = crate::stream::UNKNOWN; // crate::ignored\n\
         let s = \"crate::in_string\";\n\
         use relay_crate::x;\n",
    );
    let got: Vec<String> = crate_paths(&code).into_iter().collect();
    assert_eq!(got, ["Gateway", "front", "hub", "metrics", "stream"]);
    assert!(has_path("    front::serve(x)", "front::"));
    assert!(!has_path("relay_core::front::x; my_front::y", "front::"));
    let g: BTreeMap<String, BTreeSet<String>> = [
        ("a", vec!["b"]),
        ("b", vec!["c"]),
        ("c", vec!["a"]),
        ("d", vec!["a"]),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.into_iter().map(str::to_owned).collect()))
    .collect();
    assert_eq!(cycles(&g), [["a", "b", "c"]]);
}
