//! `hvkit demo`: builds a base disk and a chain of checkpoint-style
//! differencing disks with known content, shows them, and verifies every
//! guest byte through the chain, through `convert`, and with qemu-img, then
//! merges the whole chain into the base and verifies the base.

use crate::cmd_info::{describe, print_text};
use crate::{CliError, CliResult};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;
use vhdx::create::{create, BlockContent, CreateParams, ParentLink};
use vhdx::{ChainOptions, Disk, OpenOptions, VhdxFile};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Folder to build the disks in (default: a temporary folder, removed afterwards)
    dir: Option<PathBuf>,
}

const MIB: usize = 1 << 20;
const SIZE: usize = 1 << 30;

/// Deterministic, incompressible bytes for a (layer, block) pair.
fn fill(seed: u64, buf: &mut [u8]) {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for chunk in buf.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
}

struct Layer {
    name: &'static str,
    blocks: BTreeMap<u64, BlockContent>,
}

/// The three checkpoints: overlapping full blocks, partial blocks (sector
/// runs that cross block bits), a discarded (ZERO) block and an unmapped one.
fn checkpoints(block: usize) -> Vec<Layer> {
    let sectors = block / 512;
    let mut out = Vec::new();
    for (i, name) in [
        "checkpoint1.avhdx",
        "checkpoint2.avhdx",
        "checkpoint3.avhdx",
    ]
    .into_iter()
    .enumerate()
    {
        let mut blocks = BTreeMap::new();
        let seed = (i as u64 + 1) << 32;
        // Full blocks, overlapping between layers.
        for b in [3 + i as u64, 20, 100 + 7 * i as u64, 511] {
            let mut d = vec![0u8; block];
            fill(seed | b, &mut d);
            blocks.insert(b, BlockContent::Full(d));
        }
        // Partial blocks: a few sector runs.
        for b in [2u64, 21, 300 + i as u64] {
            let mut d = vec![0u8; block];
            fill(seed | b | 1 << 20, &mut d);
            let present = (0..sectors)
                .map(|s| (s + 37 * i) % 97 < 13 || s == sectors - 1)
                .collect();
            blocks.insert(b, BlockContent::Partial { data: d, present });
        }
        match i {
            1 => {
                blocks.insert(40, BlockContent::Zero); // a discard over base data
            }
            2 => {
                blocks.insert(41, BlockContent::Unmapped);
                blocks.remove(&20); // checkpoint 3 leaves block 20 to checkpoint 2
            }
            _ => {}
        }
        out.push(Layer { name, blocks });
    }
    out
}

fn apply(model: &mut [u8], block: usize, blocks: &BTreeMap<u64, BlockContent>) {
    for (&b, c) in blocks {
        let at = b as usize * block;
        let dst = &mut model[at..at + block];
        match c {
            BlockContent::Full(d) => dst.copy_from_slice(d),
            BlockContent::Partial { data, present } => {
                for (s, &on) in present.iter().enumerate() {
                    if on {
                        dst[s * 512..(s + 1) * 512].copy_from_slice(&data[s * 512..(s + 1) * 512]);
                    }
                }
            }
            BlockContent::Zero | BlockContent::Unmapped | BlockContent::Undefined => dst.fill(0),
            BlockContent::NotPresent => {}
        }
    }
}

fn err(e: impl std::fmt::Display) -> CliError {
    CliError::new(e.to_string(), 1)
}

fn make(
    path: &Path,
    p: &CreateParams,
    blocks: &BTreeMap<u64, BlockContent>,
) -> Result<(), CliError> {
    let f = std::fs::File::create(path)
        .map_err(|e| CliError::new(format!("{}: {e}", path.display()), 1))?;
    create(&f, &path.display().to_string(), p, blocks)?;
    Ok(())
}

fn verify(disk: &Disk, model: &[u8]) -> Result<f64, CliError> {
    let start = Instant::now();
    let mut buf = vec![0u8; 4 * MIB];
    for off in (0..model.len()).step_by(buf.len()) {
        disk.read_at(&mut buf, off as u64)?;
        if buf != model[off..off + buf.len()] {
            let i = buf
                .iter()
                .zip(&model[off..])
                .position(|(a, b)| a != b)
                .unwrap_or(0);
            return Err(CliError::new(
                format!("content differs from the model at offset {:#x}", off + i),
                1,
            ));
        }
    }
    Ok(start.elapsed().as_secs_f64())
}

fn rate(secs: f64) -> String {
    format!(
        "{secs:.2} s ({:.0} MiB/s)",
        SIZE as f64 / MIB as f64 / secs.max(1e-9)
    )
}

/// `qemu-img compare VHDX RAW`; false when qemu-img is not installed.
fn qemu_compare(vhdx: &Path, raw: &Path) -> Result<bool, CliError> {
    let name = |p: &Path| {
        p.file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned()
    };
    match Command::new("qemu-img")
        .arg("compare")
        .args(["-f", "vhdx", "-F", "raw"])
        .arg(vhdx)
        .arg(raw)
        .output()
    {
        Ok(o) if o.status.success() => {
            println!(
                "qemu-img compare {} {}: {}",
                name(vhdx),
                name(raw),
                String::from_utf8_lossy(&o.stdout).trim()
            );
            Ok(true)
        }
        Ok(o) => Err(CliError::new(
            format!(
                "qemu-img compare {} {} disagrees: {}{}",
                name(vhdx),
                name(raw),
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
            1,
        )),
        Err(_) => {
            println!("qemu-img not installed: skipped the qemu-img cross-checks");
            Ok(false)
        }
    }
}

pub fn run(a: Args) -> CliResult {
    let tmp;
    let dir = match &a.dir {
        Some(d) => {
            std::fs::create_dir_all(d)
                .map_err(|e| CliError::new(format!("{}: {e}", d.display()), 1))?;
            d.clone()
        }
        None => {
            tmp = tempfile::tempdir().map_err(err)?;
            tmp.path().to_path_buf()
        }
    };
    println!("== hvkit demo in {}", dir.display());
    let t0 = Instant::now();

    // Base: 1 GiB dynamic disk, 32 MiB blocks, 24 of 32 blocks written.
    let base = dir.join("base.vhdx");
    let bp = CreateParams::dynamic(SIZE as u64);
    let bblock = bp.block_size as usize;
    let mut model = vec![0u8; SIZE];
    let mut blocks = BTreeMap::new();
    for b in (0..32u64).filter(|b| b % 4 != 3) {
        let mut d = vec![0u8; bblock];
        fill(b, &mut d);
        blocks.insert(b, BlockContent::Full(d));
    }
    apply(&mut model, bblock, &blocks);
    make(&base, &bp, &blocks)?;
    drop(blocks);
    let base_model = model.clone();

    // Three checkpoints, each a differencing disk of the one before.
    let mut parent_guid = bp.data_write_guid;
    let mut parent_name = "base.vhdx".to_string();
    let mut leaf = base.clone();
    for layer in checkpoints(2 * MIB) {
        let mut link = ParentLink::relative(parent_guid, &parent_name);
        link.paths.push((
            "absolute_win32_path".into(),
            format!("C:\\Hyper-V\\Virtual Hard Disks\\{parent_name}"),
        ));
        let p = CreateParams::differencing(SIZE as u64, link);
        let path = dir.join(layer.name);
        make(&path, &p, &layer.blocks)?;
        apply(&mut model, p.block_size as usize, &layer.blocks);
        parent_guid = p.data_write_guid;
        parent_name = layer.name.to_string();
        leaf = path;
    }
    println!(
        "built base + 3 checkpoints in {:.2} s\n",
        t0.elapsed().as_secs_f64()
    );

    for p in [
        "base.vhdx",
        "checkpoint1.avhdx",
        "checkpoint2.avhdx",
        "checkpoint3.avhdx",
    ] {
        let f = VhdxFile::open_path(dir.join(p), OpenOptions::read_only())?;
        println!("-- hvkit info {p}");
        print_text(&describe(&f));
        println!();
    }

    let disk = Disk::open(&leaf, &ChainOptions::default())?;
    println!(
        "chain of {} layers opened from {}",
        disk.layers().len(),
        leaf.display()
    );
    let secs = verify(&disk, &model)?;
    println!(
        "verified all 1 GiB read through the chain against the model: {}",
        rate(secs)
    );

    let raw = dir.join("flat.raw");
    let out = std::fs::File::create(&raw).map_err(err)?;
    let start = Instant::now();
    let stats = vhdx::export::to_raw(&disk, &out, &raw.display().to_string(), false, &mut |_| {})?;
    let secs = start.elapsed().as_secs_f64();
    let flat = std::fs::read(&raw).map_err(err)?;
    if flat != model {
        return Err(CliError::new(
            "convert -O raw output differs from the model",
            1,
        ));
    }
    println!(
        "convert -O raw: {} data bytes copied, {} left sparse, {} — output verified",
        stats.data_bytes,
        stats.zero_bytes,
        rate(secs)
    );

    let base_raw = dir.join("base.raw");
    std::fs::write(&base_raw, &base_model).map_err(err)?;
    let qemu = qemu_compare(&base, &base_raw)?;
    drop(disk);

    // Delete the three checkpoints: merge every layer into the base.
    let plan = chain::plan(
        &leaf,
        &chain::PlanOptions {
            into: Some(base.clone()),
            direction: chain::DirectionChoice::Down,
            ..Default::default()
        },
    )?;
    let stats = chain::merge(
        &chain::OsFiles,
        &plan,
        &chain::MergeOptions::default(),
        &mut |_, _| {},
    )?;
    let secs = stats.elapsed.as_secs_f64();
    let moved = stats.bytes_copied + stats.bytes_reflinked;
    println!(
        "merge checkpoint3.avhdx --into base.vhdx: {} layers, {} bytes copied, {} reflinked, {} zeroed, {:.3} s ({:.0} MiB/s); removed {}",
        stats.layers_merged,
        stats.bytes_copied,
        stats.bytes_reflinked,
        stats.bytes_zeroed,
        secs,
        moved as f64 / MIB as f64 / secs.max(1e-9),
        stats
            .files_removed
            .iter()
            .map(|p| p.file_name().unwrap_or_default().to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let merged = Disk::open(&base, &ChainOptions::default())?;
    let secs = verify(&merged, &model)?;
    println!(
        "verified all 1 GiB of the merged base.vhdx against the model: {}",
        rate(secs)
    );
    let report = vhdx::check::check_path(&base, false)?;
    if report.is_corrupt() {
        return Err(CliError::new(
            format!("merged base.vhdx has problems: {:?}", report.problems),
            1,
        ));
    }
    println!("hvkit check base.vhdx: no errors found");
    if qemu {
        qemu_compare(&base, &raw)?;
        match Command::new("qemu-img").arg("check").arg(&base).output() {
            Ok(o) if o.status.success() => println!(
                "qemu-img check base.vhdx: {}",
                String::from_utf8_lossy(&o.stdout).trim()
            ),
            Ok(o) => {
                return Err(CliError::new(
                    format!("qemu-img check: {}", String::from_utf8_lossy(&o.stdout)),
                    1,
                ))
            }
            Err(e) => return Err(err(e)),
        }
    }
    println!("\ndemo passed in {:.2} s", t0.elapsed().as_secs_f64());
    Ok(ExitCode::SUCCESS)
}
