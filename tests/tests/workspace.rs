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
