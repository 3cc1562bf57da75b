//! Disks re-pointed by a merge read identically in dissect.hypervisor
//! (which finds the new parent itself through our relative_path) and in
//! libvhdi (pyvhdi, parents given), and libvhdi reports the new
//! parent_linkage. Oracles through tools/oracle.py and $HVKIT_PYTHON;
//! required when HVKIT_REQUIRE_ORACLES=1.

mod common;
#[path = "../../vhdx/tests/common/mod.rs"]
mod vcommon;

use chain::MergeOptions;
use common::*;
use std::path::Path;
use std::process::Command;
use vhdx::{ChainOptions, Disk};

fn run_oracle(args: &[&std::ffi::OsStr]) -> serde_json::Value {
    let (py, script) = vcommon::python_oracle().expect("checked");
    let out = vcommon::run(Command::new(py).arg(script).args(args));
    serde_json::from_str(out.trim()).unwrap()
}

#[test]
fn repointed_children_read_the_same_in_dissect_and_libvhdi() {
    if vcommon::python_oracle().is_none() {
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
    let want = vcommon::sha256(&read_all(&c2));
    let plan = chain::plan(&c1, &down(None)).unwrap();
    chain::merge(
        &chain::OsFiles,
        &plan,
        &MergeOptions::default(),
        &mut |_, _| {},
    )
    .unwrap();
    assert!(!c1.exists());
    assert_eq!(vcommon::sha256(&read_all(&c2)), want);

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
