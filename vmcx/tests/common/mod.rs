//! Shared helpers of the vmcx integration tests: the corpus, the
//! dissect.hypervisor oracle, key rows for comparisons.
#![allow(dead_code)]

use serde_json::{json, Value as J};
use std::path::{Path, PathBuf};
use std::process::Command;
use vmcx::{Store, Tree, Value};

/// `corpus/hyperv`, or None (with the reason printed) when it is absent.
pub fn hyperv_corpus() -> Option<PathBuf> {
    vhdx::test_corpus::corpus_subdir(env!("CARGO_MANIFEST_DIR"), "hyperv")
        .map_err(|skip| println!("{skip}"))
        .ok()
}

/// Every HyperVStorage file of the corpus (not the XML ones).
pub fn corpus_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let e = p
                .extension()
                .map(|e| e.to_string_lossy().to_ascii_lowercase());
            matches!(e.as_deref(), Some("vmcx") | Some("vmrs"))
        })
        .collect();
    v.sort();
    v
}

pub fn oracles_required() -> bool {
    std::env::var_os("HVKIT_REQUIRE_ORACLES").is_some_and(|v| v == "1")
}

/// (python, tools/vmcx_oracle.py), or None with a printed reason.
pub fn dissect_oracle() -> Option<(PathBuf, PathBuf)> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tools/vmcx_oracle.py");
    match std::env::var_os("HVKIT_PYTHON").map(PathBuf::from) {
        Some(py) if script.is_file() => Some((py, script)),
        _ => {
            assert!(
                !oracles_required(),
                "HVKIT_PYTHON required (HVKIT_REQUIRE_ORACLES=1) but not set"
            );
            println!("SKIP: HVKIT_PYTHON not set (run through .ci/run for the dissect.hypervisor cross-checks)");
            None
        }
    }
}

/// dissect.hypervisor's keys of `file`: [path, type, value] rows, sorted.
pub fn dissect_rows(oracle: &(PathBuf, PathBuf), file: &Path) -> Vec<J> {
    let out = Command::new(&oracle.0)
        .arg(&oracle.1)
        .arg(file)
        .output()
        .unwrap();
    let j: J = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "oracle output for {}: {e}: {}",
            file.display(),
            String::from_utf8_lossy(&out.stdout)
        )
    });
    assert!(
        j.get("error").is_none(),
        "dissect could not read {}: {}",
        file.display(),
        j["error"]
    );
    sorted(j["keys"].as_array().unwrap().clone())
}

fn sorted(mut rows: Vec<J>) -> Vec<J> {
    rows.sort_by_key(|r| serde_json::to_string(r).unwrap());
    rows
}

/// Path by plain names (what dissect reports; duplicates share a path).
fn plain_path(t: &Tree, id: usize) -> String {
    let mut parts = Vec::new();
    let mut k = id;
    while let Some(p) = t.key(k).parent {
        parts.push(t.key(k).name.clone());
        k = p;
    }
    parts.reverse();
    format!("/{}", parts.join("/"))
}

/// Our keys as [path, type, value] rows like the oracle's, sorted.
pub fn our_rows(s: &Store) -> Vec<J> {
    let t = s.tree();
    let rows = t
        .walk()
        .into_iter()
        .map(|id| {
            let v = match s.value(id).unwrap() {
                Value::Int(i) => json!(i),
                Value::UInt(u) => json!(u),
                Value::Double(d) => json!(d),
                Value::String(s) => json!(s),
                Value::Array(b) => json!(vmcx::tree::to_hex(&b)),
                Value::Bool(b) => json!(b),
                Value::Node | Value::Blob(_) => J::Null,
            };
            json!([plain_path(t, id), t.key(id).value.key_type().name(), v])
        })
        .collect();
    sorted(rows)
}

/// A tree as JSON with file objects read.
pub fn tree_json(s: &Store) -> J {
    vmcx::json::to_json(s.tree(), Tree::ROOT, &|id| s.value(id)).unwrap()
}
