//! The reflink path of a merge, on an XFS filesystem (reflink=1) in a
//! loop-mounted file: full blocks are shared with FICLONERANGE instead of
//! copied, partial runs that are not 4 KiB aligned are copied, and the
//! result reads exactly like the chain did. Needs root and mkfs.xfs;
//! skipped with a printed reason otherwise.

mod common;

use chain::MergeOptions;
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use vhdx::{ChainOptions, Disk};

struct Mount {
    point: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.point).status();
    }
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let o = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if o.status.success() {
        Ok(())
    } else {
        Err(format!("{cmd:?}: {}", String::from_utf8_lossy(&o.stderr)))
    }
}

fn xfs() -> Option<Mount> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        println!("SKIP: not root, cannot loop-mount an XFS filesystem");
        return None;
    }
    if Command::new("mkfs.xfs").arg("-V").output().is_err() {
        println!("SKIP: mkfs.xfs is not installed (Debian package xfsprogs)");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("xfs.img");
    let point = dir.path().join("mnt");
    std::fs::create_dir(&point).unwrap();
    let f = std::fs::File::create(&img).unwrap();
    f.set_len(1 << 30).unwrap();
    drop(f);
    let r = run(Command::new("mkfs.xfs")
        .args(["-q", "-m", "reflink=1"])
        .arg(&img))
    .and_then(|_| {
        run(Command::new("mount")
            .args(["-o", "loop"])
            .arg(&img)
            .arg(&point))
    });
    match r {
        Ok(()) => Some(Mount { point, _dir: dir }),
        Err(e) => {
            // Root without loop devices (some containers): say why.
            assert!(
                std::env::var_os("HVKIT_REQUIRE_XFS").is_none(),
                "XFS required: {e}"
            );
            println!("SKIP: cannot make and mount an XFS filesystem here: {e}");
            None
        }
    }
}

#[test]
fn merge_on_xfs_reflinks_full_blocks() {
    let Some(m) = xfs() else { return };
    let d: &Path = &m.point;
    let (base, c1) = (d.join("base.vhdx"), d.join("c1.avhdx"));
    new_base(&base, 64 * MIB, 1 << 20, 512);
    let mut rng = Rng(3);
    scribble(&base, &mut rng, 6);
    new_child(&c1, &base, None, 2 << 20);
    // 8 full blocks and some unaligned partial runs.
    let mut disk = Disk::open_writable(&c1, &ChainOptions::default()).unwrap();
    for b in [1u64, 2, 3, 10, 11, 20, 30, 31] {
        disk.write_at(&rng.bytes(2 << 20), b * (2 << 20)).unwrap();
    }
    // Block 25: not one of the full blocks.
    disk.write_at(&rng.bytes(3 * 512), 50 * MIB + 512).unwrap();
    disk.close().unwrap();
    let want = read_all(&c1);
    let plan = chain::plan(&c1, &down(None)).unwrap();
    let stats = chain::merge(
        &chain::OsFiles,
        &plan,
        &MergeOptions::default(),
        &mut |_, _| {},
    )
    .unwrap();
    assert_eq!(stats.bytes_reflinked, 8 * (2 << 20), "{stats:?}");
    assert_eq!(stats.bytes_copied, 3 * 512, "{stats:?}");
    assert_eq!(first_diff(&read_all(&base), &want), None);
    assert!(!vhdx::check::check_path(&base, false).unwrap().is_corrupt());

    // --no-reflink copies everything.
    new_child(&c1, &base, None, 2 << 20);
    let mut disk = Disk::open_writable(&c1, &ChainOptions::default()).unwrap();
    disk.write_at(&rng.bytes(4 << 20), 0).unwrap();
    disk.close().unwrap();
    let want = read_all(&c1);
    let plan = chain::plan(&c1, &down(None)).unwrap();
    let opts = MergeOptions {
        reflink: false,
        ..MergeOptions::default()
    };
    let stats = chain::merge(&chain::OsFiles, &plan, &opts, &mut |_, _| {}).unwrap();
    assert_eq!(stats.bytes_reflinked, 0);
    assert_eq!(stats.bytes_copied, 4 << 20);
    assert_eq!(first_diff(&read_all(&base), &want), None);
}
