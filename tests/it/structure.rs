//! The crate's shape, kept true: module dependencies point one way (no
//! import circle among modules; a child using its parent's items is not an
//! edge), and the registry imports nothing else from the crate.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// `src/a/b.rs` and `src/a/b/mod.rs` are `a::b`.
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).expect("under src");
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts.join("::")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The paths a file names (`crate::a::b`, `super::c`), outside comments and
/// its `#[cfg(test)]` module.
fn referenced_paths(text: &str) -> Vec<(bool, Vec<String>)> {
    let code = text.split("#[cfg(test)]\nmod tests").next().unwrap_or(text);
    let mut out = Vec::new();
    for line in code.lines().map(str::trim_start) {
        if line.starts_with("//") {
            continue;
        }
        for (root, from_crate) in [("crate::", true), ("super::", false)] {
            let mut rest = line;
            while let Some(i) = rest.find(root) {
                let after = &rest[i + root.len()..];
                let path: Vec<String> = after
                    .split("::")
                    .map(|seg| {
                        seg.chars()
                            .take_while(|c| {
                                c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_'
                            })
                            .collect::<String>()
                    })
                    .take_while(|seg| !seg.is_empty())
                    .collect();
                out.push((from_crate, path));
                rest = after;
            }
        }
    }
    out
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let modules: BTreeSet<String> = files.iter().map(|f| module_of(&src, f)).collect();
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in &files {
        let me = module_of(&src, file);
        if me == "lib" || me == "main" {
            continue;
        }
        let parent = me.rsplit_once("::").map(|(p, _)| p.to_string());
        let text = std::fs::read_to_string(file).expect("read a source file");
        for (from_crate, path) in referenced_paths(&text) {
            let mut full: Vec<String> = match (from_crate, &parent) {
                (true, _) => Vec::new(),
                (false, Some(p)) => p.split("::").map(String::from).collect(),
                (false, None) => continue,
            };
            full.extend(path);
            // The longest prefix that names a module.
            let target = (1..=full.len())
                .rev()
                .map(|n| full[..n].join("::"))
                .find(|m| modules.contains(m));
            if let Some(t) = target {
                let ancestor = me.starts_with(&format!("{t}::"));
                if t != me && !ancestor {
                    edges.entry(me.clone()).or_default().insert(t);
                }
            }
        }
    }
    edges
}

#[test]
fn module_dependencies_form_no_circle() {
    let edges = graph();
    let mut circles = Vec::new();
    for (from, tos) in &edges {
        for to in tos {
            // Is `from` reachable back from `to`?
            let mut seen = BTreeSet::new();
            let mut stack = vec![to.clone()];
            while let Some(m) = stack.pop() {
                if &m == from {
                    circles.push(format!("{from} -> {to} -> ... -> {from}"));
                    break;
                }
                if seen.insert(m.clone()) {
                    stack.extend(edges.get(&m).into_iter().flatten().cloned());
                }
            }
        }
    }
    assert!(
        circles.is_empty(),
        "import circles:\n{}",
        circles.join("\n")
    );
}

#[test]
fn the_registry_imports_nothing_else_from_the_crate() {
    let edges = graph();
    let outside: Vec<String> = edges
        .iter()
        .filter(|(from, _)| from.starts_with("registry"))
        .flat_map(|(from, tos)| {
            tos.iter()
                .filter(|t| !t.starts_with("registry"))
                .map(move |t| format!("{from} -> {t}"))
        })
        .collect();
    assert!(outside.is_empty(), "{outside:?}");
}

#[test]
fn dependencies_point_down_the_layers() {
    // main -> cli -> config -> {api, dns, sync, health, cluster} -> registry, with
    // the small shared pieces at the bottom.
    let rank = |m: &str| match m.split("::").next().unwrap_or(m) {
        "server" => 5,
        "cli" => 4,
        "config" => 3,
        "api" | "dns" | "sync" | "health" | "cluster" => 2,
        "registry" => 1,
        _ => 0,
    };
    let edges = graph();
    let upward: Vec<String> = edges
        .iter()
        .flat_map(|(from, tos)| tos.iter().map(move |t| (from.clone(), t.clone())))
        .filter(|(from, to)| rank(to) > rank(from))
        .map(|(from, to)| format!("{from} -> {to}"))
        .collect();
    assert!(upward.is_empty(), "imports pointing up: {upward:?}");
}
