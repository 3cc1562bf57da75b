//! Helpers shared by the chain tests: building disks with the vhdx writer,
//! reading whole disks, a seeded RNG, and opening chains by file name from
//! any `Files` (the parent is the locator's relative_path in the same folder).

#![allow(dead_code)]

use chain::Files;
use std::path::{Path, PathBuf};
use vhdx::create::{create, CreateParams, ParentLink};
use vhdx::write::DiscardMode;
use vhdx::{ChainOptions, Disk, VhdxFile};

pub const MIB: u64 = 1 << 20;

/// xorshift64*.
pub struct Rng(pub u64);
impl Rng {
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// A new dynamic disk at `path`.
pub fn new_base(path: &Path, size: u64, block: u32, lss: u32) {
    let f = std::fs::File::create_new(path).unwrap();
    let mut p = CreateParams::dynamic(size);
    p.block_size = block;
    p.logical_sector_size = lss;
    create(&f, &path.display().to_string(), &p, &Default::default()).unwrap();
}

/// A new differencing disk at `path` over `parent`.
pub fn new_child(path: &Path, parent: &Path, size: Option<u64>, block: u32) {
    let pf = VhdxFile::open_path(parent, vhdx::OpenOptions::read_only()).unwrap();
    let link = ParentLink::for_parent(path, parent, pf.header().data_write_guid);
    let mut p = CreateParams::differencing(size.unwrap_or(pf.virtual_size()), link);
    p.block_size = block;
    p.logical_sector_size = pf.logical_sector_size();
    p.physical_sector_size = pf.metadata().physical_sector_size;
    p.virtual_disk_id = pf.metadata().virtual_disk_id;
    let f = std::fs::File::create_new(path).unwrap();
    create(&f, &path.display().to_string(), &p, &Default::default()).unwrap();
}

/// Random writes (whole, partial and unaligned-to-block ranges) and
/// discards in every mode into the leaf `path`.
pub fn scribble(path: &Path, rng: &mut Rng, ops: usize) {
    let mut d = Disk::open_writable(path, &ChainOptions::default()).unwrap();
    let size = d.virtual_size();
    let lss = d.leaf().logical_sector_size() as u64;
    let bs = d.leaf().block_size();
    for _ in 0..ops {
        let kind = rng.below(10);
        let (off, len) = match rng.below(3) {
            // A whole block.
            0 => {
                let b = rng.below(size / bs);
                (b * bs, bs.min(size - b * bs))
            }
            // A few sectors.
            1 => {
                let s = rng.below(size / lss);
                (s * lss, ((1 + rng.below(16)) * lss).min(size - s * lss))
            }
            // Across a block boundary.
            _ => {
                let b = 1 + rng.below(size / bs - 1);
                let back = (1 + rng.below(bs / lss / 2)) * lss;
                (b * bs - back, (back * 2).min(size - (b * bs - back)))
            }
        };
        match kind {
            0 => d.discard(off, len, DiscardMode::Zero).unwrap(),
            1 => d.discard(off, len, DiscardMode::Unmap).unwrap(),
            2 => d.discard(off, len, DiscardMode::Transparent).unwrap(),
            _ => d.write_at(&rng.bytes(len as usize), off).unwrap(),
        }
    }
    d.close().unwrap();
}

/// Every guest byte of the chain at `path`.
pub fn read_all(path: &Path) -> Vec<u8> {
    let d = Disk::open(path, &ChainOptions::default()).unwrap();
    let mut b = vec![0u8; d.virtual_size() as usize];
    d.read_at(&mut b, 0).unwrap();
    b
}

/// Opens the chain of `leaf` through `files`, following relative_path.
pub fn open_chain(files: &dyn Files, leaf: &Path) -> vhdx::Result<Disk> {
    let mut out: Vec<(PathBuf, VhdxFile)> = Vec::new();
    let mut next = Some(leaf.to_path_buf());
    while let Some(p) = next.take() {
        let f = files.open(&p, false)?;
        if let Some(loc) = f.parent_locator() {
            let rel = loc.get("relative_path").expect("relative_path");
            next = Some(vhdx::parent::join_windows_relative(
                p.parent().unwrap(),
                rel,
            ));
        }
        out.push((p, f));
    }
    Disk::from_files(out, false)
}

/// First differing offset of two buffers.
pub fn first_diff(a: &[u8], b: &[u8]) -> Option<usize> {
    if a.len() != b.len() {
        return Some(a.len().min(b.len()));
    }
    a.iter().zip(b).position(|(x, y)| x != y)
}

/// A scratch folder on tmpfs when there is one (the tests flush a lot).
pub fn scratch() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(d) = tempfile::tempdir_in(shm) {
            return d;
        }
    }
    tempfile::tempdir().unwrap()
}

/// Plan options for a downward merge into `into` (default: the parent).
pub fn down(into: Option<&Path>) -> chain::PlanOptions {
    chain::PlanOptions {
        into: into.map(Path::to_path_buf),
        direction: chain::DirectionChoice::Down,
        ..Default::default()
    }
}
