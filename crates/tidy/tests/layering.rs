//! The layering of ARCHITECTURE.md, held by a test over `cargo metadata` (normal dependencies,
//! as built into binaries; dev-dependencies are the tests' business):
//!
//! * `rampart-core` decides and does no I/O: no async runtime, HTTP, database, file-system
//!   crate or clock anywhere below it;
//! * the vehicle and the server meet only on the wire: neither depends on the other;
//! * no product crate depends on the lab or the attack lab, so the binaries deployed in the
//!   cloud and on the vehicle (`rampart`, `rampart-agent`) carry none of their code.
//!
//! A failure names the edge: `rampart-cli -> rampart-attack`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use serde_json::Value;

/// Crates of the product: what ships in `rampart` and `rampart-agent`.
const PRODUCT: [&str; 6] = [
    "rampart-core",
    "rampart-tara",
    "rampart-client",
    "rampart-server",
    "rampart-vehicle",
    "rampart-cli",
];
/// Test tooling: never below a product crate.
const LAB: [&str; 3] = ["rampart-lab", "rampart-attack", "rampart-lab-cli"];
/// What the sans-IO core must not reach: runtimes, HTTP, databases, file-system helpers.
const NOT_IN_CORE: [&str; 14] = [
    "tokio",
    "async-std",
    "smol",
    "mio",
    "futures-executor",
    "reqwest",
    "hyper",
    "axum",
    "sqlx",
    "rusqlite",
    "postgres",
    "tempfile",
    "walkdir",
    "fs-err",
];

struct Graph {
    /// Package id → name.
    names: BTreeMap<String, String>,
    /// Package name → names of its normal (non-dev, non-build) dependencies.
    normal: BTreeMap<String, BTreeSet<String>>,
    /// The workspace's packages as JSON, by name.
    members: BTreeMap<String, Value>,
}

fn graph() -> Graph {
    let out = Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--locked"])
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
        .output()
        .expect("cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: BTreeMap<String, String> = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["id"].as_str().unwrap().to_owned(),
                p["name"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let workspace: BTreeSet<&str> = meta["workspace_members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let members = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| workspace.contains(p["id"].as_str().unwrap()))
        .map(|p| (p["name"].as_str().unwrap().to_owned(), p.clone()))
        .collect();
    let mut normal: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for node in meta["resolve"]["nodes"].as_array().unwrap() {
        let from = names[node["id"].as_str().unwrap()].clone();
        let deps = normal.entry(from).or_default();
        for dep in node["deps"].as_array().unwrap() {
            let is_normal = dep["dep_kinds"]
                .as_array()
                .unwrap()
                .iter()
                .any(|k| k["kind"].is_null());
            if is_normal {
                deps.insert(names[dep["pkg"].as_str().unwrap()].clone());
            }
        }
    }
    Graph {
        names,
        normal,
        members,
    }
}

impl Graph {
    /// Every package `from` reaches through normal dependencies, each with the path to it.
    fn reach(&self, from: &str) -> BTreeMap<String, Vec<String>> {
        let mut seen: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut stack = vec![vec![from.to_owned()]];
        while let Some(path) = stack.pop() {
            let last = path.last().unwrap().clone();
            for dep in self.normal.get(&last).into_iter().flatten() {
                if seen.contains_key(dep) || dep == from {
                    continue;
                }
                let mut next = path.clone();
                next.push(dep.clone());
                seen.insert(dep.clone(), next.clone());
                stack.push(next);
            }
        }
        seen
    }
}

fn edges(path: &[String]) -> String {
    path.join(" -> ")
}

#[test]
fn the_workspace_has_the_crates_this_test_knows() {
    let g = graph();
    for name in PRODUCT.iter().chain(LAB.iter()) {
        assert!(
            g.members.contains_key(*name),
            "{name} is not a workspace member"
        );
    }
    assert!(!g.names.is_empty());
}

#[test]
fn the_core_has_no_runtime_http_database_file_system_or_clock() {
    let g = graph();
    let reach = g.reach("rampart-core");
    let bad: Vec<String> = NOT_IN_CORE
        .iter()
        .filter_map(|c| reach.get(*c).map(|p| edges(p)))
        .collect();
    assert!(
        bad.is_empty(),
        "the sans-IO core reaches: {}",
        bad.join("; ")
    );
    // chrono is the core's date type; its clock (and the rest of its defaults) must stay off.
    let core = &g.members["rampart-core"];
    for dep in core["dependencies"].as_array().unwrap() {
        if dep["kind"].is_null() && dep["name"] == "chrono" {
            let features: Vec<&str> = dep["features"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| f.as_str().unwrap())
                .collect();
            assert!(
                dep["uses_default_features"] == false && !features.contains(&"clock"),
                "rampart-core -> chrono with its clock (default features {}, features {features:?})",
                dep["uses_default_features"]
            );
        }
    }
}

#[test]
fn vehicle_and_server_meet_only_on_the_wire() {
    let g = graph();
    for (from, to) in [
        ("rampart-vehicle", "rampart-server"),
        ("rampart-server", "rampart-vehicle"),
    ] {
        if let Some(path) = g.reach(from).get(to) {
            panic!(
                "the vehicle and the server must not depend on each other: {}",
                edges(path)
            );
        }
    }
}

#[test]
fn no_product_crate_depends_on_the_lab_or_the_attack_lab() {
    let g = graph();
    let mut bad = Vec::new();
    for product in PRODUCT {
        let reach = g.reach(product);
        for lab in LAB {
            if let Some(path) = reach.get(lab) {
                bad.push(edges(path));
            }
        }
    }
    assert!(
        bad.is_empty(),
        "product crates must not carry lab code: {}",
        bad.join("; ")
    );
}
