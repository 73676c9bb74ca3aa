//! The module picture of docs/architecture.md, checked: every `crate::` path in
//! the library's non-test code must point to a module on a lower layer than its
//! own (so no import runs back up and there is no circle between modules), and the
//! C ABI may name only the facade (`manager`, re-exported at the crate root) and
//! `config`.
//!
//! A new top-level module must be given a layer here; a failure names the file,
//! the line and the import.

use std::collections::BTreeMap;
use std::path::Path;

/// Top-level modules by layer, highest first. A module may import from any
/// layer below its own, never from its own layer or above (siblings on one layer
/// stay independent).
const LAYERS: &[(u8, &[&str])] = &[
    (8, &["ffi"]),
    (7, &["manager"]),
    (6, &["config"]),
    (5, &["movement"]),
    (4, &["semantic"]),
    (3, &["tier"]),
    (2, &["block", "hw"]),
    (1, &["evict", "events", "pq"]),
    (0, &["prefix", "metrics", "log"]),
];

/// What the C ABI may name: the facade and the configuration it creates it from.
const FFI_ALLOWED: &[&str] = &["manager", "config"];

/// Items re-exported at the crate root, by the module that defines them.
const ROOT_ITEMS: &[(&str, &str)] = &[
    ("Manager", "manager"),
    ("ManagerError", "manager"),
    ("ManagerParams", "manager"),
    ("ErrorKind", "manager"),
    ("PqHandle", "manager"),
];

fn layer_of(module: &str) -> Option<u8> {
    LAYERS.iter().find(|(_, ms)| ms.contains(&module)).map(|&(l, _)| l)
}

/// The code of a source file without comments and without a trailing inline
/// test module (`#[cfg(test)] mod tests { ... }` ends a file by convention).
fn code_of(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut lines = text.lines().enumerate().peekable();
    while let Some((i, line)) = lines.next() {
        let t = line.trim_start();
        if t.starts_with("#[cfg(test)]") {
            if let Some((_, next)) = lines.peek() {
                if next.trim_start().starts_with("mod tests {") {
                    break;
                }
            }
        }
        let code = match line.find("//") {
            Some(at) => &line[..at],
            None => line,
        };
        out.push((i + 1, code.to_string()));
    }
    out
}

/// The top-level modules a line names through `crate::`.
fn imports(line: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = line;
    while let Some(at) = rest.find("crate::") {
        let after = &rest[at + "crate::".len()..];
        if let Some(group) = after.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for part in group[..end].split(',') {
                let first = part.trim().split("::").next().unwrap_or("").trim();
                if !first.is_empty() {
                    found.push(first.to_string());
                }
            }
        } else {
            let name: String = after
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                found.push(name);
            }
        }
        rest = after;
    }
    found
        .into_iter()
        .map(|n| {
            ROOT_ITEMS
                .iter()
                .find(|(item, _)| *item == n)
                .map_or(n, |(_, m)| m.to_string())
        })
        .collect()
}

fn is_test_file(path: &Path) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    name == "tests.rs" || name.ends_with("_tests.rs") || name == "test_util.rs"
}

fn sources(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Every violation in the library, as `file:line: message`.
fn violations(src: &Path) -> Vec<String> {
    let mut files = Vec::new();
    sources(src, &mut files);
    files.sort();
    let mut bad = Vec::new();
    for f in files {
        let rel = f.strip_prefix(src).unwrap();
        let Some(top) = rel.components().next().and_then(|c| c.as_os_str().to_str()) else {
            continue;
        };
        let module = top.trim_end_matches(".rs");
        if module == "lib" || module == "bin" || is_test_file(&f) {
            continue;
        }
        let Some(mine) = layer_of(module) else {
            bad.push(format!(
                "{}: module `{module}` has no layer in tests/layers.rs",
                rel.display()
            ));
            continue;
        };
        let text = std::fs::read_to_string(&f).unwrap();
        for (line_no, code) in code_of(&text) {
            for target in imports(&code) {
                if target == module {
                    continue;
                }
                let at = format!("{}:{line_no}", rel.display());
                match layer_of(&target) {
                    None => bad.push(format!("{at}: `crate::{target}` is not a known module")),
                    Some(theirs) if theirs >= mine => bad.push(format!(
                        "{at}: `{module}` (layer {mine}) imports `{target}` (layer {theirs}): imports point down only"
                    )),
                    Some(_) if module == "ffi" && !FFI_ALLOWED.contains(&target.as_str()) => bad.push(format!(
                        "{at}: the C ABI names `{target}`: it talks to the facade (`manager`) and `config` only"
                    )),
                    Some(_) => {}
                }
            }
        }
    }
    bad
}

/// The library's sources, or another tree's with `TIERKV_LAYERS_SRC` (to see what
/// the check says of an older revision: `git archive REV plugin/src | tar -x -C DIR`,
/// then `TIERKV_LAYERS_SRC=DIR/plugin/src`).
#[test]
fn imports_point_down_and_the_abi_talks_to_the_facade_only() {
    let src = std::env::var_os("TIERKV_LAYERS_SRC")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    let bad = violations(&src);
    assert!(
        bad.is_empty(),
        "module layering broken ({} places):\n{}",
        bad.len(),
        bad.join("\n")
    );
}

/// The check itself: an upward import, an import on the same layer, the ABI
/// reaching past the facade and an unknown module are each caught; comments and
/// a trailing inline test module are not code.
#[test]
fn the_check_catches_each_kind_of_violation() {
    let dir = tempfile::tempdir().unwrap();
    let write = |rel: &str, text: &str| {
        let p = dir.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    };
    write(
        "tier/mod.rs",
        "use crate::movement::Movement;\n// crate::manager in a comment\n",
    );
    write("block/pool.rs", "fn f() { crate::hw::x(); }\n");
    write("ffi/api.rs", "use crate::{manager::Manager, tier::TierId};\n");
    write("newpart/mod.rs", "use crate::prefix::BlockHash;\n");
    write(
        "evict/mod.rs",
        "use crate::prefix::BlockHash;\n#[cfg(test)]\nmod tests {\n    use crate::manager::Manager;\n}\n",
    );
    let bad = violations(dir.path());
    let has = |needle: &str| bad.iter().any(|b| b.contains(needle));
    assert!(has("tier/mod.rs:1: `tier` (layer 3) imports `movement`"), "{bad:#?}");
    assert!(
        has("block/pool.rs:1: `block` (layer 2) imports `hw` (layer 2)"),
        "{bad:#?}"
    );
    assert!(has("ffi/api.rs:1: the C ABI names `tier`"), "{bad:#?}");
    assert!(has("newpart/mod.rs: module `newpart` has no layer"), "{bad:#?}");
    assert_eq!(bad.len(), 4, "{bad:#?}");
    let by_file: BTreeMap<_, _> = bad.iter().map(|b| (b.split(':').next().unwrap(), b)).collect();
    assert!(!by_file.contains_key("evict/mod.rs"), "{bad:#?}");
}
