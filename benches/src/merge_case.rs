//! The merge benchmark's disks (shared by `benches/merge.rs` and the
//! `merge_case` example that `benches/compare.sh` runs): a 4 GiB dynamic
//! parent (32 MiB blocks) holding 2 GiB of data, and a differencing child
//! (2 MiB blocks) in one of three layouts.

use std::path::Path;
use vhdx::create::{create, CreateParams, ParentLink};
use vhdx::{ChainOptions, Disk, VhdxFile};

pub const GIB: u64 = 1 << 30;
pub const PARENT_SIZE: u64 = 4 * GIB;
const CHILD_BLOCK: u64 = 2 << 20;

/// How the child's data lies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// 2 GiB of FULLY_PRESENT blocks (guest 1 GiB to 3 GiB).
    Full,
    /// Every 2 MiB block of the 4 GiB disk has its first 1 MiB written:
    /// 2048 PARTIALLY_PRESENT blocks, 2 GiB of data.
    HalfPartial,
    /// Every 16th block full: 128 blocks, 256 MiB.
    Sparse,
}

impl Layout {
    pub fn parse(s: &str) -> Option<Layout> {
        match s {
            "full" => Some(Layout::Full),
            "half-partial" => Some(Layout::HalfPartial),
            "sparse" => Some(Layout::Sparse),
            _ => None,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Layout::Full => "full",
            Layout::HalfPartial => "half-partial",
            Layout::Sparse => "sparse",
        }
    }
    /// The child's written ranges (offset, length), in order.
    pub fn ranges(self) -> Vec<(u64, u64)> {
        match self {
            Layout::Full => vec![(GIB, 2 * GIB)],
            Layout::HalfPartial => (0..PARENT_SIZE / CHILD_BLOCK)
                .map(|b| (b * CHILD_BLOCK, CHILD_BLOCK / 2))
                .collect(),
            Layout::Sparse => (0..PARENT_SIZE / CHILD_BLOCK)
                .step_by(16)
                .map(|b| (b * CHILD_BLOCK, CHILD_BLOCK))
                .collect(),
        }
    }
    pub fn data_bytes(self) -> u64 {
        self.ranges().iter().map(|r| r.1).sum()
    }
}

/// Incompressible bytes for a seed.
pub fn noise(seed: u64, buf: &mut [u8]) {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for c in buf.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        c.copy_from_slice(&x.to_le_bytes()[..c.len()]);
    }
}

fn write_ranges(path: &Path, ranges: &[(u64, u64)], seed: u64) -> vhdx::Result<()> {
    let mut d = Disk::open_writable(path, &ChainOptions::default())?;
    let mut buf = vec![0u8; 4 << 20];
    for (i, &(off, len)) in ranges.iter().enumerate() {
        let mut done = 0;
        while done < len {
            let n = (len - done).min(buf.len() as u64) as usize;
            noise(seed ^ (i as u64) << 20 ^ done, &mut buf[..n]);
            d.write_at(&buf[..n], off + done)?;
            done += n as u64;
        }
    }
    d.close()
}

fn new_file(path: &Path) -> vhdx::Result<std::fs::File> {
    std::fs::File::create(path).map_err(|e| vhdx::Error::Io {
        path: path.display().to_string(),
        offset: 0,
        source: e,
    })
}

/// Writes `base.vhdx` (4 GiB, 2 GiB of data at the start) into `dir`.
pub fn make_parent(dir: &Path) -> vhdx::Result<()> {
    let path = dir.join("base.vhdx");
    let f = new_file(&path)?;
    create(
        &f,
        &path.display().to_string(),
        &CreateParams::dynamic(PARENT_SIZE),
        &Default::default(),
    )?;
    write_ranges(&path, &[(0, 2 * GIB)], 1)
}

/// Writes `child.avhdx` over `dir/base.vhdx` with `layout`'s data.
pub fn make_child(dir: &Path, layout: Layout) -> vhdx::Result<()> {
    let base = dir.join("base.vhdx");
    let path = dir.join("child.avhdx");
    let pf = VhdxFile::open_path(&base, vhdx::OpenOptions::read_only())?;
    let link = ParentLink::for_parent(&path, &base, pf.header().data_write_guid);
    let f = new_file(&path)?;
    create(
        &f,
        &path.display().to_string(),
        &CreateParams::differencing(PARENT_SIZE, link),
        &Default::default(),
    )?;
    write_ranges(&path, &layout.ranges(), 2)
}
