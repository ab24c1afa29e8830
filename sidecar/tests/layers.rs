//! The crate's layering, checked from its source: which top-level module may import which.
//!
//! Arrows point from the outside in: `server` and `admin` over the front-ends, the front-ends over
//! the core, the core over the concerns (auth, caches, limits, keys, observers), those over the
//! backends, and everything over the `kms` vocabulary. A front-end's wire types must never leak
//! down (no backend knows a wire format), and no two modules may import each other, directly or
//! around a cycle. Test code is exempt: a test may reach for anything. The load tester is a black
//! box: it must not link the sidecar crate it measures.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n == "tests") {
                continue;
            }
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if name != "tests.rs" && !name.ends_with("_tests.rs") {
                out.push(path);
            }
        }
    }
}

/// `crate::X` names used by a file's non-test code.
fn imports(source: &str) -> BTreeSet<String> {
    let code = match source.find("#[cfg(test)]\nmod tests") {
        Some(i) => &source[..i],
        None => source,
    };
    let mut out = BTreeSet::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        if !name.is_empty() {
            out.insert(name);
        }
    }
    out
}

/// Top-level module -> the top-level modules its non-test code imports.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let rel = file.strip_prefix(&src).unwrap();
        let top = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        let module = top.trim_end_matches(".rs").to_string();
        let text = fs::read_to_string(&file).unwrap();
        let entry = edges.entry(module.clone()).or_default();
        for target in imports(&text) {
            if target != module && target != "fuzz_support" {
                entry.insert(target);
            }
        }
    }
    edges
}

#[test]
fn no_module_imports_a_layer_above_it() {
    let edges = graph();
    // Each module with the modules it must never import.
    let upward: &[(&str, &[&str])] = &[
        ("kms", &["*"]),
        // `protocol` was the AWS wire module before the front-ends existed: no backend may import
        // a wire module, under that name or any other.
        (
            "backend",
            &[
                "protocol", "frontend", "core", "server", "admin", "config", "keys", "limits",
                "cache", "observe", "auth",
            ],
        ),
        ("limits", &["frontend", "core", "server", "admin", "config"]),
        (
            "keys",
            &[
                "frontend", "core", "server", "admin", "config", "cache", "limits",
            ],
        ),
        ("cache", &["frontend", "core", "server", "admin", "config"]),
        (
            "observe",
            &["frontend", "core", "server", "admin", "config"],
        ),
        (
            "auth",
            &["frontend", "core", "server", "admin", "config", "keys"],
        ),
        ("core", &["frontend", "server", "admin", "config"]),
        ("frontend", &["server", "admin", "config"]),
        ("config", &["server", "admin", "frontend", "core"]),
    ];
    let mut bad = Vec::new();
    for (module, forbidden) in upward {
        for target in edges.get(*module).into_iter().flatten() {
            if forbidden.contains(&"*") || forbidden.contains(&target.as_str()) {
                bad.push(format!("{module} -> {target}"));
            }
        }
    }
    assert!(
        bad.is_empty(),
        "imports against the layering: {bad:?}\n{edges:#?}"
    );
}

#[test]
fn top_level_modules_form_no_cycle() {
    let edges = graph();
    let reach = |from: &str| {
        let mut seen = BTreeSet::new();
        let mut stack = vec![from.to_string()];
        while let Some(m) = stack.pop() {
            for t in edges.get(&m).into_iter().flatten() {
                if seen.insert(t.clone()) {
                    stack.push(t.clone());
                }
            }
        }
        seen
    };
    let mut cycles = Vec::new();
    for (module, targets) in &edges {
        for target in targets {
            if reach(target).contains(module) {
                cycles.push(format!("{module} -> {target}"));
            }
        }
    }
    assert!(cycles.is_empty(), "import cycles through: {cycles:?}");
}

#[test]
fn the_checker_sees_imports_and_skips_tests() {
    let text = "use crate::kms::KmsError;\nfn f() { crate::limits::x(); }\n#[cfg(test)]\nmod tests {\n use crate::server::Sidecar;\n}\n";
    let found = imports(text);
    assert_eq!(
        found,
        ["kms", "limits"].into_iter().map(String::from).collect()
    );
    // The real graph has the modules this test relies on.
    let edges = graph();
    for m in ["backend", "core", "frontend", "kms", "server"] {
        assert!(edges.contains_key(m), "{m} not found");
    }
    assert!(edges["frontend"].contains("core"));
}
#[test]
fn the_load_tester_does_not_link_the_sidecar() {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../loadtest/Cargo.toml");
    let text = fs::read_to_string(manifest).unwrap();
    let table: toml::Table = text.parse().unwrap();
    for section in ["dependencies", "build-dependencies"] {
        if let Some(deps) = table.get(section).and_then(|d| d.as_table()) {
            assert!(
                !deps.contains_key("kms-sidecar"),
                "loadtest [{section}] depends on kms-sidecar: it must stay a black-box client"
            );
        }
    }
}
