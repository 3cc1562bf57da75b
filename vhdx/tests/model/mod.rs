//! An in-memory model of what a guest sees while a disk is written,
//! discarded and resized, and fixtures that build fixed, dynamic and
//! differencing disks on any `Storage` (shared by the property tests and the
//! crash-injection test).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use vhdx::create::{create, BlockContent, CreateParams, ParentLink};
use vhdx::write::DiscardMode;
use vhdx::{Disk, MemStorage, OpenOptions, Storage, VhdxFile};

pub const MIB: u64 = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Fixed,
    Dynamic,
    Differencing,
}

/// The disk under test.
#[derive(Debug, Clone)]
pub struct Setup {
    pub kind: Kind,
    pub block_size: u32,
    pub lss: u32,
    pub size: u64,
    /// Size of the parent of a differencing disk (its content is random).
    pub parent_size: u64,
    pub seed: u64,
}

#[derive(Debug, Clone)]
pub enum Op {
    Write {
        off: u64,
        len: u64,
        seed: u64,
    },
    Discard {
        off: u64,
        len: u64,
        mode: DiscardMode,
    },
    Resize {
        size: u64,
    },
    Flush,
    /// Close cleanly and open again.
    Reopen,
}

pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|i| {
            if i % 8 == 0 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
            }
            (x >> ((i % 8) * 8)) as u8
        })
        .collect()
}

/// Guest bytes as they must read.
#[derive(Debug, Clone)]
pub struct Model {
    pub bytes: Vec<u8>,
    pub parent: Option<Vec<u8>>,
    pub lss: u64,
}

impl Model {
    pub fn new(setup: &Setup) -> Self {
        let parent = (setup.kind == Kind::Differencing).then(|| parent_bytes(setup));
        let mut bytes = vec![0u8; setup.size as usize];
        if let Some(p) = &parent {
            let n = p.len().min(bytes.len());
            bytes[..n].copy_from_slice(&p[..n]);
        }
        Model {
            bytes,
            parent,
            lss: setup.lss as u64,
        }
    }

    /// Applies `op`; returns false when the disk must refuse it.
    pub fn apply(&mut self, op: &Op) -> bool {
        match *op {
            Op::Write { off, len, seed } => {
                let d = pattern(seed, len as usize);
                self.bytes[off as usize..(off + len) as usize].copy_from_slice(&d);
            }
            Op::Discard { off, len, mode } => {
                let r = off as usize..(off + len) as usize;
                self.bytes[r.clone()].fill(0);
                if let (DiscardMode::Transparent, Some(p)) = (mode, &self.parent) {
                    let e = r.end.min(p.len());
                    if r.start < e {
                        self.bytes[r.start..e].copy_from_slice(&p[r.start..e]);
                    }
                }
            }
            Op::Resize { size } => {
                let size = size as usize;
                if size < self.bytes.len() && self.bytes[size..].iter().any(|&b| b != 0) {
                    return false;
                }
                self.bytes.resize(size, 0);
            }
            Op::Flush | Op::Reopen => {}
        }
        true
    }
}

pub fn parent_bytes(setup: &Setup) -> Vec<u8> {
    let mut p = pattern(setup.seed ^ 0xABCD, setup.parent_size as usize);
    // Leave some parent blocks empty so NOT_PRESENT parents are covered.
    let bs = setup.block_size as usize;
    for (i, chunk) in p.chunks_mut(bs).enumerate() {
        if i % 3 == 1 {
            chunk.fill(0);
        }
    }
    p
}

/// Makes the parent (for a differencing setup) and the disk under test in
/// `leaf`. Returns the parent's storage.
pub fn build(setup: &Setup, leaf: &dyn Storage) -> Option<Arc<MemStorage>> {
    let mut params = CreateParams::dynamic(setup.size);
    params.block_size = setup.block_size;
    params.logical_sector_size = setup.lss;
    params.fixed = setup.kind == Kind::Fixed;
    let parent = if setup.kind == Kind::Differencing {
        let mut pp = CreateParams::dynamic(setup.parent_size);
        pp.block_size = setup.block_size;
        pp.logical_sector_size = setup.lss;
        let bytes = parent_bytes(setup);
        let blocks: BTreeMap<u64, BlockContent> = bytes
            .chunks(setup.block_size as usize)
            .enumerate()
            .filter(|(_, c)| c.iter().any(|&b| b != 0))
            .map(|(i, c)| (i as u64, BlockContent::Full(c.to_vec())))
            .collect();
        let s = Arc::new(MemStorage::default());
        create(&*s, "parent.vhdx", &pp, &blocks).expect("create parent");
        params.parent = Some(ParentLink::relative(pp.data_write_guid, "parent.vhdx"));
        params.virtual_disk_id = pp.virtual_disk_id;
        Some(s)
    } else {
        None
    };
    create(leaf, "disk.vhdx", &params, &BTreeMap::new()).expect("create disk");
    parent
}

/// Opens the disk under test (writable) over its parent.
pub fn open(
    leaf: Arc<dyn Storage>,
    parent: &Option<Arc<MemStorage>>,
    opts: OpenOptions,
) -> vhdx::Result<Disk> {
    let mut files = vec![(
        PathBuf::from("disk.vhdx"),
        VhdxFile::open(Box::new(leaf), "disk.vhdx", opts)?,
    )];
    if let Some(p) = parent {
        files.push((
            PathBuf::from("parent.vhdx"),
            VhdxFile::open(Box::new(p.clone()), "parent.vhdx", OpenOptions::read_only())?,
        ));
    }
    Disk::from_files(files, false)
}

/// Runs `op` on the disk (a Reopen is the caller's business).
pub fn run(disk: &mut Disk, op: &Op) -> vhdx::Result<()> {
    match *op {
        Op::Write { off, len, seed } => disk.write_at(&pattern(seed, len as usize), off),
        Op::Discard { off, len, mode } => disk.discard(off, len, mode),
        Op::Resize { size } => disk.resize(size, true),
        Op::Flush => disk.flush(),
        Op::Reopen => Ok(()),
    }
}

/// Random operations over a disk whose size starts at `size`.
pub fn random_ops(rng: &mut impl FnMut() -> u64, setup: &Setup, count: usize) -> Vec<Op> {
    let lss = setup.lss as u64;
    let mut size = setup.size;
    let mut ops = Vec::new();
    for _ in 0..count {
        let r = rng() % 100;
        let op = if r < 55 {
            let len = match rng() % 4 {
                0 => 1 + rng() % 64,
                1 => 1 + rng() % (16 << 10),
                2 => lss * (1 + rng() % 16),
                _ => 1 + rng() % (2 * setup.block_size as u64),
            }
            .min(size);
            let off = match rng() % 3 {
                0 => rng() % (size - len + 1) / lss * lss,
                _ => rng() % (size - len + 1),
            };
            Op::Write {
                off,
                len,
                seed: rng(),
            }
        } else if r < 75 {
            let sectors = size / lss;
            let len = (1 + rng() % (2 * setup.block_size as u64 / lss)).min(sectors) * lss;
            let off = rng() % (sectors - len / lss + 1) * lss;
            let mode = [
                DiscardMode::Zero,
                DiscardMode::Unmap,
                DiscardMode::Transparent,
            ][(rng() % 3) as usize];
            Op::Discard { off, len, mode }
        } else if r < 83 {
            let s = (setup.size / 2 + rng() % (setup.size * 3 / 2)) / lss * lss;
            let s = s.max(lss);
            size = s;
            Op::Resize { size: s }
        } else if r < 93 {
            Op::Flush
        } else {
            Op::Reopen
        };
        ops.push(op);
    }
    ops
}
