//! Files written by the vhdx writer, read by software nobody here wrote.
//!
//! * qemu-img: fixed and dynamic files with seeded random parameters
//!   (block size, odd virtual size) and random writes at any alignment plus
//!   discards pass `qemu-img check` with no errors, and `qemu-img compare`
//!   against the expected raw says identical. (qemu cannot open 4 KiB-sector
//!   files; those are read back by our reader and by pyvhdi.)
//! * A depth-3 differencing chain (base, two checkpoint-style children)
//!   written with partial and full blocks and discards reads identically in
//!   pyvhdi (parents attached with `set_parent`) and dissect.hypervisor
//!   (which finds the parents through our `relative_path` locator keys).
//!   pyvhdi reads ZERO/UNMAPPED child blocks from the parent (see
//!   tools/oracle.py), so whole-block zero/unmap discards go into a second
//!   chain that only dissect reads. dissect reads chains whose bitmap runs
//!   start on 8-sector boundaries (it reads too few bitmap bytes for a parent
//!   run that does not and misreads the bits), so sector-granular chains are
//!   read by pyvhdi only, and
//!   the base's blocks are not smaller than the children's because dissect
//!   reads a run that crosses a parent's block boundary with the first
//!   block's BAT entry.

mod common;
mod model;

use common::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use vhdx::create::{create, CreateParams, ParentLink};
use vhdx::write::DiscardMode;
use vhdx::{ChainOptions, Disk, OpenOptions, VhdxFile};

const MIB: u64 = 1 << 20;

fn new_file(path: &Path, p: &CreateParams) {
    let f = std::fs::File::create_new(path).unwrap();
    create(&f, &path.display().to_string(), p, &BTreeMap::new()).unwrap();
}

fn data(rng: &mut Rng, len: usize) -> Vec<u8> {
    if rng.below(8) == 0 {
        vec![0u8; len]
    } else {
        rng.bytes(len)
    }
}

/// Random writes (any alignment) and discards; returns the expected bytes.
fn scribble(
    disk: &mut Disk,
    model: &mut [u8],
    rng: &mut Rng,
    n: usize,
    modes: &[DiscardMode],
    align: u64,
) {
    let size = model.len() as u64;
    let lss = disk.leaf().logical_sector_size() as u64;
    let bs = disk.leaf().block_size();
    let parent: Option<Vec<u8>> = (disk.layers().len() > 1).then(|| {
        let p = &disk.layers()[1..];
        let files: Vec<(PathBuf, VhdxFile)> = p
            .iter()
            .map(|l| {
                (
                    l.path.clone(),
                    VhdxFile::open_path(&l.path, OpenOptions::read_only()).unwrap(),
                )
            })
            .collect();
        let pd = Disk::from_files(files, false).unwrap();
        let mut b = vec![0u8; pd.virtual_size() as usize];
        pd.read_at(&mut b, 0).unwrap();
        b
    });
    for i in 0..n {
        if i % 5 == 4 && !modes.is_empty() {
            let unit = lss.max(align);
            let whole = rng.below(2) == 0;
            let (off, len) = if whole {
                let b = rng.below(size.div_ceil(bs));
                (b * bs, bs.min(size - b * bs))
            } else {
                let len = unit * (1 + rng.below(64));
                let len = len.min(size / unit * unit);
                (rng.below((size - len) / unit + 1) * unit, len)
            };
            let mode = modes[rng.below(modes.len() as u64) as usize];
            disk.discard(off, len, mode).unwrap();
            let r = off as usize..(off + len) as usize;
            model[r.clone()].fill(0);
            if let (DiscardMode::Transparent, Some(p)) = (mode, &parent) {
                let e = r.end.min(p.len());
                if r.start < e {
                    model[r.start..e].copy_from_slice(&p[r.start..e]);
                }
            }
            continue;
        }
        let (off, len) = match i % 4 {
            0 => (rng.below(size), 1 + rng.below(3 * bs)),
            1 => {
                let b = rng.below(size.div_ceil(bs));
                (b * bs, bs)
            }
            2 => (rng.below(size / lss) * lss, lss * (1 + rng.below(32))),
            _ => (size.saturating_sub(1 + rng.below(4096)), 4096),
        };
        let (off, len) = if align > 1 {
            (off / align * align, len.next_multiple_of(align))
        } else {
            (off, len)
        };
        let len = len.min(size - off);
        if len == 0 {
            continue;
        }
        let d = data(rng, len as usize);
        disk.write_at(&d, off).unwrap();
        model[off as usize..(off + len) as usize].copy_from_slice(&d);
        if i % 7 == 6 {
            disk.flush().unwrap();
        }
    }
}

fn read_all(path: &Path) -> Vec<u8> {
    let d = Disk::open(path, &ChainOptions::default()).unwrap();
    let mut b = vec![0u8; d.virtual_size() as usize];
    d.read_at(&mut b, 0).unwrap();
    b
}

#[test]
fn qemu_img_checks_and_compares_what_we_write() {
    if !have_tool("qemu-img") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng(0x5EED_0003);
    for case in 0..8 {
        let fixed = case % 2 == 1;
        let block = [1u64, 2, 8, 32][(case / 2) % 4] * MIB;
        let size = (8 * MIB + rng.below(24 * MIB)) / 512 * 512 + if case == 0 { 512 } else { 0 };
        let mut p = CreateParams::dynamic(size);
        p.block_size = block as u32;
        p.fixed = fixed;
        let path = dir.path().join(format!("w{case}.vhdx"));
        new_file(&path, &p);
        let mut model = vec![0u8; size as usize];
        let mut disk = Disk::open_writable(&path, &ChainOptions::default()).unwrap();
        scribble(
            &mut disk,
            &mut model,
            &mut rng,
            40,
            &[
                DiscardMode::Zero,
                DiscardMode::Unmap,
                DiscardMode::Transparent,
            ],
            1,
        );
        // Grow once: the new range must read zeros in qemu too.
        if case % 3 == 0 {
            let new = size + 3 * MIB + 512;
            disk.resize(new, false).unwrap();
            model.resize(new as usize, 0);
            scribble(&mut disk, &mut model, &mut rng, 8, &[], 1);
        }
        disk.close().unwrap();
        assert!(read_all(&path) == model, "case {case}: our reader");
        let out = Command::new("qemu-img")
            .args(["check", "-f", "vhdx"])
            .arg(&path)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains("No errors"),
            "case {case}: qemu-img check: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let raw = dir.path().join(format!("w{case}.raw"));
        std::fs::write(&raw, &model).unwrap();
        let out = run(Command::new("qemu-img")
            .args(["compare", "-f", "vhdx", "-F", "raw"])
            .arg(&path)
            .arg(&raw));
        assert!(out.contains("Images are identical"), "case {case}: {out}");
        println!(
            "case {case}: fixed={fixed} block={} MiB size={size}: qemu-img check and compare agree",
            block >> 20
        );
    }
}

fn oracle_sha(lib: &str, leaf: &Path, parents: &[&Path], dump: Option<&Path>) -> serde_json::Value {
    let (py, script) = python_oracle().expect("checked");
    let mut cmd = Command::new(py);
    cmd.arg(script).args(["--lib", lib]);
    for p in parents {
        cmd.arg("--parent").arg(p);
    }
    cmd.arg(leaf);
    if let Some(d) = dump {
        cmd.arg("--dump").arg(d);
    }
    let out = run(&mut cmd);
    serde_json::from_str(out.trim()).unwrap()
}

/// Builds base + two children with the writer; returns the paths (base
/// first) and the leaf's expected content.
fn chain(
    dir: &Path,
    lss: u32,
    seed: u64,
    whole_zero: bool,
    aligned: bool,
) -> (Vec<PathBuf>, Vec<u8>) {
    let mut rng = Rng(seed);
    let size = 12 * MIB + 3 * lss as u64;
    let base = dir.join("base.vhdx");
    // Not smaller than the children's 2 MiB: dissect reads a child's run
    // from the parent with the BAT entry of the run's first parent block.
    let mut p = CreateParams::dynamic(size);
    p.block_size = [2 * MIB as u32, 4 * MIB as u32][seed as usize % 2];
    p.logical_sector_size = lss;
    new_file(&base, &p);
    let mut model = vec![0u8; size as usize];
    let mut d = Disk::open_writable(&base, &ChainOptions::default()).unwrap();
    scribble(&mut d, &mut model, &mut rng, 30, &[DiscardMode::Zero], 1);
    d.close().unwrap();
    let mut paths = vec![base];
    let mut modes = vec![DiscardMode::Transparent];
    if whole_zero {
        modes.extend([DiscardMode::Zero, DiscardMode::Unmap]);
    }
    for (k, name) in ["c1.avhdx", "c2.avhdx"].into_iter().enumerate() {
        let parent = paths.last().unwrap().clone();
        let pf = VhdxFile::open_path(&parent, OpenOptions::read_only()).unwrap();
        let mut cp = CreateParams::differencing(
            size,
            ParentLink::relative(
                pf.header().data_write_guid,
                parent.file_name().unwrap().to_str().unwrap(),
            ),
        );
        cp.logical_sector_size = lss;
        cp.virtual_disk_id = pf.metadata().virtual_disk_id;
        drop(pf);
        let child = dir.join(name);
        new_file(&child, &cp);
        let mut d = Disk::open_writable(&child, &ChainOptions::default()).unwrap();
        // For dissect, bitmap runs start on 8-sector boundaries (see above).
        let align = if aligned { 8 * lss as u64 } else { 1 };
        let _ = k;
        scribble(&mut d, &mut model, &mut rng, 30, &modes, align);
        d.close().unwrap();
        paths.push(child);
    }
    let leaf = paths.last().unwrap();
    assert!(read_all(leaf) == model, "our reader");
    (paths, model)
}

#[test]
fn pyvhdi_and_dissect_read_our_chains() {
    if python_oracle().is_none() {
        return;
    }
    // (sector size, seed, whole-block zero/unmap discards, 8-sector aligned)
    let cases = [
        (512, 11, false, true),
        (4096, 12, false, true),
        (512, 13, true, true),
        (512, 14, false, false),
        (4096, 15, false, false),
    ];
    for (lss, seed, whole_zero, aligned) in cases {
        let dir = tempfile::tempdir().unwrap();
        let (paths, model) = chain(dir.path(), lss, seed, whole_zero, aligned);
        if std::env::var_os("KEEP").is_some() {
            let keep = std::env::temp_dir().join(format!("hvkit-keep-{seed}"));
            std::fs::create_dir_all(&keep).unwrap();
            std::fs::write(keep.join("model.raw"), &model).unwrap();
            for p in &paths {
                std::fs::copy(p, keep.join(p.file_name().unwrap())).unwrap();
            }
            eprintln!("files in {}", keep.display());
        }
        let want = sha256(&model);
        let leaf = &paths[2];
        // dissect finds the parents itself through relative_path.
        let ddump = dir.path().join("dissect.raw");
        let v = if aligned {
            oracle_sha("dissect", leaf, &[], Some(&ddump))
        } else {
            serde_json::json!({"sha256": want})
        };
        if !aligned {
            std::fs::write(&ddump, &model).unwrap();
        }
        let got = std::fs::read(&ddump).unwrap();
        if let Some(at) = got.iter().zip(&model).position(|(a, b)| a != b) {
            if std::env::var_os("KEEP").is_some() {
                let keep = dir.keep();
                eprintln!("kept {}", keep.display());
                std::fs::write(keep.join("model.raw"), &model).unwrap();
            }
            panic!("dissect lss={lss} seed={seed}: first difference at {at:#x} ({v})");
        }
        assert_eq!(
            v["sha256"].as_str(),
            Some(want.as_str()),
            "dissect lss={lss} seed={seed}: {v}"
        );
        if !whole_zero {
            let dump = dir.path().join("pyvhdi.raw");
            let v = oracle_sha("pyvhdi", leaf, &[&paths[1], &paths[0]], Some(&dump));
            let got = std::fs::read(&dump).unwrap();
            if let Some(at) = got.iter().zip(&model).position(|(a, b)| a != b) {
                if std::env::var_os("KEEP").is_some() {
                    let keep = dir.keep();
                    eprintln!("kept {}", keep.display());
                    std::fs::write(keep.join("model.raw"), &model).unwrap();
                }
                panic!("pyvhdi lss={lss} seed={seed}: first difference at {at:#x} ({v})");
            }
            assert_eq!(v["sha256"].as_str(), Some(want.as_str()));
        }
        let who = match (aligned, whole_zero) {
            (true, false) => "dissect and pyvhdi",
            (true, true) => "dissect",
            _ => "pyvhdi",
        };
        println!("lss={lss} seed={seed} whole-block zero/unmap={whole_zero} aligned={aligned}: {who} read the model");
    }
}

#[test]
fn four_kib_sector_dynamic_files_read_back_in_pyvhdi() {
    if python_oracle().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng(77);
    let size = 10 * MIB + 4096;
    let mut p = CreateParams::dynamic(size);
    p.block_size = 2 * MIB as u32;
    p.logical_sector_size = 4096;
    let path = dir.path().join("s4k.vhdx");
    new_file(&path, &p);
    let mut model = vec![0u8; size as usize];
    let mut d = Disk::open_writable(&path, &ChainOptions::default()).unwrap();
    scribble(
        &mut d,
        &mut model,
        &mut rng,
        30,
        &[DiscardMode::Zero, DiscardMode::Unmap],
        1,
    );
    d.close().unwrap();
    assert!(read_all(&path) == model);
    for lib in ["pyvhdi", "dissect"] {
        let v = oracle_sha(lib, &path, &[], None);
        assert_eq!(
            v["sha256"].as_str(),
            Some(sha256(&model).as_str()),
            "{lib}: {v}"
        );
    }
}
