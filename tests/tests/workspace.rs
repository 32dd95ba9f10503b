//! Checks that hold for the whole workspace.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

/// Layers, lowest first. A crate may depend only on crates of a lower layer (or its own).
/// `dirk-gpu` and `dirk-flight` sit below `dirk-dtable` and above the engine.
/// Crates that are not listed (benches, tests, examples) are on top and may use anything.
const LAYERS: &[&str] = &[
    "dirk-engine",
    "dirk-gpu",
    "dirk-flight",
    "dirk-dtable",
    "dirk-sql",
];

/// The crate's directory. Cargo sets it at run time too; that value wins, because a
/// binary reused from a build in another checkout would carry that checkout's path.
fn manifest_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

fn metadata() -> serde_json::Value {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(manifest_dir())
        .output()
        .expect("run cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("parse cargo metadata")
}

/// Each workspace crate and the workspace crates it depends on (any dependency kind).
fn workspace_edges(meta: &serde_json::Value) -> BTreeMap<String, BTreeSet<String>> {
    let packages = meta["packages"].as_array().expect("packages");
    let names: BTreeSet<String> = packages
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_string())
        .collect();
    packages
        .iter()
        .map(|p| {
            let deps = p["dependencies"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d["name"].as_str().unwrap().to_string())
                .filter(|d| names.contains(d))
                .collect();
            (p["name"].as_str().unwrap().to_string(), deps)
        })
        .collect()
}

fn violations(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    let rank = |n: &str| LAYERS.iter().position(|l| *l == n);
    let mut bad = Vec::new();
    for (krate, deps) in edges {
        let Some(r) = rank(krate) else { continue };
        for d in deps {
            match rank(d) {
                Some(dr) if dr < r => {}
                _ => bad.push(format!(
                    "{krate} depends on {d}, which is not a lower layer"
                )),
            }
        }
    }
    bad
}

#[test]
fn no_crate_depends_on_a_higher_layer() {
    let edges = workspace_edges(&metadata());
    assert!(
        edges.contains_key("dirk-engine"),
        "engine is a workspace member"
    );
    let bad = violations(&edges);
    assert!(bad.is_empty(), "layering violated:\n{}", bad.join("\n"));
}

#[test]
fn the_layer_check_catches_an_upward_edge() {
    let mut edges = BTreeMap::new();
    edges.insert(
        "dirk-engine".to_string(),
        BTreeSet::from(["dirk-sql".to_string()]),
    );
    edges.insert(
        "dirk-sql".to_string(),
        BTreeSet::from(["dirk-engine".to_string()]),
    );
    edges.insert(
        "dirk-benches".to_string(),
        BTreeSet::from(["dirk-sql".to_string()]),
    );
    assert_eq!(
        violations(&edges),
        vec!["dirk-engine depends on dirk-sql, which is not a lower layer".to_string()]
    );
}

#[test]
fn every_crate_uses_the_workspace_lints() {
    let meta = metadata();
    for p in meta["packages"].as_array().unwrap() {
        let manifest = std::fs::read_to_string(p["manifest_path"].as_str().unwrap()).unwrap();
        assert!(
            manifest.contains("[lints]\nworkspace = true"),
            "{} does not say `[lints] workspace = true`",
            p["name"]
        );
    }
}

/// The modules of `dirk-dtable` by level, lowest first: a module may use modules of its own
/// level or below. The last level is the public front (the session, its builder and its
/// DataFrames), whose modules may use each other.
const DTABLE_LEVELS: &[&[&str]] = &[
    &[
        "error",
        "stream",
        "proto",
        "exec",
        "wire",
        "stores",
        "storage_meter",
        "worker_memory",
    ],
    &["table", "stages"],
    &["broadcast", "kernels"],
    &["steps"],
    &["prune"],
    &["catalog"],
    &["executor"],
    &["ingest", "export"],
    &["core"],
    &["layout", "dml", "tpch"],
    &["router"],
    &["session", "builder", "dataframe", "prelude", "fuzz"],
];

/// The top-level `dirk-dtable` modules a source file's non-test code uses (`crate::name`).
fn crate_modules_used(text: &str) -> BTreeSet<String> {
    let code: String = text
        .split("#[cfg(test)]")
        .next()
        .unwrap_or("")
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    let mut used = BTreeSet::new();
    for (i, _) in code.match_indices("crate::") {
        let name: String = code[i + "crate::".len()..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if !name.is_empty() {
            used.insert(name);
        }
    }
    used
}

/// Each `.rs` file under `dir`.
fn rust_files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// `(module, used)` pairs where `module` uses a module of a higher level.
fn dtable_upward_uses(src: &std::path::Path) -> Vec<String> {
    let level = |m: &str| DTABLE_LEVELS.iter().position(|l| l.contains(&m));
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut bad = Vec::new();
    for f in files {
        let rel = f.strip_prefix(src).unwrap();
        let module = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_string();
        if module == "lib" {
            continue;
        }
        let Some(own) = level(&module) else {
            bad.push(format!("{module} is not in DTABLE_LEVELS"));
            continue;
        };
        let text = std::fs::read_to_string(&f).unwrap();
        for used in crate_modules_used(&text) {
            match level(&used) {
                Some(l) if l > own => bad.push(format!("{} uses {used}", rel.display())),
                _ => {}
            }
        }
    }
    bad
}

#[test]
fn dtable_modules_use_only_lower_levels() {
    let src = manifest_dir().join("../dtable/src");
    let bad = dtable_upward_uses(&src);
    assert!(
        bad.is_empty(),
        "dtable modules that use a higher level (see DTABLE_LEVELS and ARCHITECTURE.md): {bad:?}"
    );
}

/// `Session` is a thin front: its methods live in `session.rs` and hand the work on.
#[test]
fn session_methods_live_in_session_rs() {
    let src = manifest_dir().join("../dtable/src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let elsewhere: Vec<_> = files
        .iter()
        .filter(|f| !f.ends_with("session.rs"))
        .filter(|f| {
            std::fs::read_to_string(f)
                .unwrap()
                .contains("impl Session {")
        })
        .map(|f| f.strip_prefix(&src).unwrap().display().to_string())
        .collect();
    assert!(
        elsewhere.is_empty(),
        "`impl Session` outside session.rs: {elsewhere:?}"
    );
}

#[test]
fn the_module_check_catches_an_upward_use() {
    assert!(crate_modules_used("use crate::session::Session;").contains("session"));
    let dir = std::env::temp_dir().join(format!("dirk-levels-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("kernels")).unwrap();
    std::fs::write(dir.join("kernels/x.rs"), "use crate::executor::Executor;\n").unwrap();
    std::fs::write(
        dir.join("table.rs"),
        "use crate::exec::X;\n#[cfg(test)]\nuse crate::session::S;\n",
    )
    .unwrap();
    let bad = dtable_upward_uses(&dir);
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(bad, vec!["kernels/x.rs uses executor".to_string()]);
}

/// Source files (tests aside) stay small enough to read: none over this many lines.
const MAX_SOURCE_LINES: usize = 800;

#[test]
fn no_source_file_is_over_800_lines() {
    let root = manifest_dir().join("..");
    let mut long = Vec::new();
    for krate in [
        "engine", "flight", "gpu", "dtable", "sql", "slt", "benches", "examples",
    ] {
        let mut files = Vec::new();
        rust_files(&root.join(krate).join("src"), &mut files);
        for f in files {
            let lines = std::fs::read_to_string(&f).unwrap().lines().count();
            if lines > MAX_SOURCE_LINES {
                long.push(format!("{} ({lines} lines)", f.display()));
            }
        }
    }
    assert!(long.is_empty(), "split these files: {long:?}");
}
