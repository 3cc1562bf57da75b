//! Disks re-pointed by a merge read identically in dissect.hypervisor
//! (which finds the new parent itself through our relative_path) and in
//! libvhdi (pyvhdi, parents given), and libvhdi reports the new
//! parent_linkage. Oracles through tools/oracle.py and $HVKIT_PYTHON;
//! required when HVKIT_REQUIRE_ORACLES=1.

mod common;

use chain::MergeOptions;
use common::*;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::Command;
use vhdx::{ChainOptions, Disk};

fn oracle() -> Option<(PathBuf, PathBuf)> {
    let required = std::env::var_os("HVKIT_REQUIRE_ORACLES").is_some_and(|v| v == "1");
    let py = std::env::var_os("HVKIT_PYTHON").map(PathBuf::from);
    let script = std::env::var_os("HVKIT_ORACLE")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../tools/oracle.py"));
    match py {
        Some(py) if script.is_file() => Some((py, script)),
        _ => {
            assert!(
                !required,
                "HVKIT_PYTHON required (HVKIT_REQUIRE_ORACLES=1) but missing"
            );
            println!("SKIP: HVKIT_PYTHON not set (run through .ci/run for the pyvhdi/dissect cross-checks)");
            None
        }
    }
}

fn run_oracle(args: &[&std::ffi::OsStr]) -> serde_json::Value {
    let (py, script) = oracle().expect("checked");
    let out = Command::new(py).arg(script).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "oracle {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn repointed_children_read_the_same_in_dissect_and_libvhdi() {
    if oracle().is_none() {
        return;
    }
    let dir = scratch();
    let d = dir.path();
    let (base, c1, c2) = (d.join("base.vhdx"), d.join("c1.avhdx"), d.join("c2.avhdx"));
    // 4 KiB-aligned writes: full blocks, partial blocks and runs across
    // block boundaries in every layer, each written before its child exists.
    let mut rng = Rng(31);
    let scribble4k = |p: &Path, rng: &mut Rng| {
        let mut disk = Disk::open_writable(p, &ChainOptions::default()).unwrap();
        for _ in 0..6 {
            let off = rng.below(2048 - 64) * 4096;
            let len = (1 + rng.below(600)) as usize * 4096;
            let len = len.min((8 * MIB - off) as usize);
            disk.write_at(&rng.bytes(len), off).unwrap();
        }
        disk.close().unwrap();
    };
    new_base(&base, 8 * MIB, 2 << 20, 512);
    scribble4k(&base, &mut rng);
    new_child(&c1, &base, None, 2 << 20);
    scribble4k(&c1, &mut rng);
    new_child(&c2, &c1, None, 2 << 20);
    scribble4k(&c2, &mut rng);
    let want = format!("{:x}", Sha256::digest(read_all(&c2)));
    let plan = chain::plan(&c1, &down(None)).unwrap();
    chain::merge(
        &chain::OsFiles,
        &plan,
        &MergeOptions::default(),
        &mut |_, _| {},
    )
    .unwrap();
    assert!(!c1.exists());
    assert_eq!(format!("{:x}", Sha256::digest(read_all(&c2))), want);

    let v = run_oracle(&["--lib".as_ref(), "dissect".as_ref(), c2.as_os_str()]);
    assert_eq!(v["sha256"].as_str(), Some(want.as_str()), "dissect: {v}");
    let v = run_oracle(&[
        "--lib".as_ref(),
        "pyvhdi".as_ref(),
        "--parent".as_ref(),
        base.as_os_str(),
        c2.as_os_str(),
    ]);
    assert_eq!(v["sha256"].as_str(), Some(want.as_str()), "pyvhdi: {v}");
    let info = run_oracle(&[
        "--lib".as_ref(),
        "pyvhdi".as_ref(),
        c2.as_os_str(),
        "--info".as_ref(),
    ]);
    let base_guid = vhdx::VhdxFile::open_path(&base, vhdx::OpenOptions::read_only())
        .unwrap()
        .header()
        .data_write_guid
        .to_string();
    assert_eq!(
        info["parent_identifier"].as_str(),
        Some(base_guid.as_str()),
        "{info}"
    );
}
