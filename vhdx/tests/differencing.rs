//! Differencing disks written with `vhdx::create` over parents with known
//! data, read back through `vhdx::Disk` and checked against an in-memory
//! model of what the guest must see (MS-VHDX 2.5.1.1, 2.5.2):
//!
//! * FULLY_PRESENT: this file's bytes;
//! * PARTIALLY_PRESENT: sector bitmap bit 1 = this file, 0 = the parent;
//! * ZERO / UNMAPPED / UNDEFINED: zeros, never the parent;
//! * NOT_PRESENT: the parent (zeros in a file without a parent);
//! * a child larger than its parent reads zeros past the parent's end.
//!
//! Every chain is checked with `Disk::read_at` (whole disk and random
//! unaligned ranges), the `for_each_run` range API, `Read + Seek`, and then
//! against two independent readers through `tools/oracle.py`: dissect (full
//! SHA-256; it follows the spec) and libvhdi/pyvhdi (byte dump, compared where
//! libvhdi and the spec agree; where they do not, the known libvhdi deviation
//! is asserted, see `libvhdi_source`). Known limits of the oracles, asserted
//! or worked around here: neither reads a child past its parent's end (only
//! the range every layer covers is compared), and dissect misreads partial
//! blocks of a differencing *parent* at runs not on 8-sector boundaries
//! (`Chain::dissect_reliable`). Finally dynamic files written by `create`
//! must satisfy `qemu-img check` and `qemu-img compare`.

mod common;

use common::*;
use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use uuid::Uuid;
use vhdx::create::{create, BlockContent, CreateParams, ParentLink};
use vhdx::{ChainOptions, Disk, Run};

const MIB: u64 = 1 << 20;

// ---------------------------------------------------------------------------
// Deterministic randomness and data patterns
// ---------------------------------------------------------------------------

fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// SplitMix64: small, seeded, reproducible.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(mix(seed))
    }
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix(self.0)
    }
    /// Uniform in `0..n`.
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    /// True with probability `pct`%.
    fn pct(&mut self, pct: u64) -> bool {
        self.below(100) < pct
    }
    fn guid(&mut self) -> Uuid {
        uuid::Builder::from_random_bytes(
            [self.next().to_le_bytes(), self.next().to_le_bytes()]
                .concat()
                .try_into()
                .unwrap(),
        )
        .into_uuid()
    }
}

/// The bytes layer `id` stores at guest offset `off` (distinct per layer and
/// per 8-byte word, so a byte read from the wrong layer or offset shows).
fn fill_pattern(id: u64, off: u64, buf: &mut [u8]) {
    let mut k = 0usize;
    while k < buf.len() {
        let o = off + k as u64;
        let w = mix((id << 48) ^ (o / 8)).to_le_bytes();
        let s = (o % 8) as usize;
        let n = (8 - s).min(buf.len() - k);
        buf[k..k + n].copy_from_slice(&w[s..s + n]);
        k += n;
    }
}

fn pattern(id: u64, off: u64, len: u64) -> Vec<u8> {
    let mut v = vec![0u8; len as usize];
    fill_pattern(id, off, &mut v);
    v
}

// ---------------------------------------------------------------------------
// The model
// ---------------------------------------------------------------------------

/// What a block of a layer holds (mirrors `BlockContent`).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Blk {
    /// The layer's pattern for the first `len` bytes, zeros after.
    Full(u64),
    /// The layer's pattern in the sectors marked present.
    Partial(Vec<bool>),
    Zero,
    Unmapped,
    Undefined,
    NotPresent,
}

#[derive(Debug, Clone)]
struct LayerSpec {
    size: u64,
    bs: u64,
    lss: u64,
    blocks: BTreeMap<u64, Blk>,
}

#[derive(Debug)]
struct Layer {
    /// Pattern id.
    id: u64,
    spec: LayerSpec,
    guid: Uuid,
    path: PathBuf,
    /// The first MiB of the file (libvhdi reads "sector bitmaps" from here
    /// for chunks without a sector bitmap block).
    head: Vec<u8>,
}

/// A chain of files, leaf first (the same order as `Disk::layers`).
struct Chain {
    layers: Vec<Layer>,
    _dir: tempfile::TempDir,
}

impl Chain {
    fn leaf(&self) -> &Path {
        &self.layers[0].path
    }
    fn size(&self) -> u64 {
        self.layers[0].spec.size
    }
    fn lss(&self) -> u64 {
        self.layers[0].spec.lss
    }
    fn is_diff(&self, i: usize) -> bool {
        i + 1 < self.layers.len()
    }

    /// False when dissect.hypervisor 3.21 is known to misread the chain: a
    /// differencing parent with partial blocks is read by dissect from the
    /// child's bitmap runs, and its `_iter_partial_runs` mis-walks a bitmap
    /// from a sector that is not a multiple of 8 (tools/oracle.py works
    /// around that only for the leaf). Chains whose bitmap runs all start
    /// and end on multiples of 8 sectors read right.
    fn dissect_reliable(&self) -> bool {
        let middle_partial = self.layers[1..].iter().enumerate().any(|(i, l)| {
            self.is_diff(i + 1) && l.spec.blocks.values().any(|k| matches!(k, Blk::Partial(_)))
        });
        let unaligned = self.layers.iter().any(|l| {
            l.spec.blocks.values().any(|k| match k {
                Blk::Partial(p) => (1..p.len()).any(|s| p[s] != p[s - 1] && s % 8 != 0),
                _ => false,
            })
        });
        !(middle_partial && unaligned)
    }

    /// Which layer supplies the guest byte at `off` (None = zeros), per the spec.
    fn source(&self, off: u64) -> Option<usize> {
        for (i, l) in self.layers.iter().enumerate() {
            let s = &l.spec;
            if off >= s.size {
                return None;
            }
            match s.blocks.get(&(off / s.bs)).unwrap_or(&Blk::NotPresent) {
                Blk::Full(_) => return Some(i),
                Blk::Partial(p) => {
                    if p[((off % s.bs) / s.lss) as usize] {
                        return Some(i);
                    }
                }
                Blk::Zero | Blk::Unmapped | Blk::Undefined => return None,
                Blk::NotPresent => {}
            }
            if !self.is_diff(i) {
                return None;
            }
        }
        None
    }

    /// Bytes `off..off+buf.len()` (inside one sector) as supplied by `src`.
    fn fill_from(&self, src: Option<usize>, off: u64, buf: &mut [u8]) {
        match src {
            None => buf.fill(0),
            Some(i) => {
                let l = &self.layers[i];
                fill_pattern(l.id, off, buf);
                if let Some(Blk::Full(len)) = l.spec.blocks.get(&(off / l.spec.bs)) {
                    if off % l.spec.bs >= *len {
                        buf.fill(0);
                    }
                }
            }
        }
    }

    /// The guest bytes of `off..off+buf.len()` per the spec.
    fn expected(&self, off: u64, buf: &mut [u8]) {
        self.by_sector(off, buf.len() as u64, |p, n| {
            let at = (p - off) as usize;
            self.fill_from(self.source(p), p, &mut buf[at..at + n as usize]);
        });
    }

    /// Calls `f(pos, len)` for the pieces of `off..off+len` cut at sector boundaries.
    fn by_sector(&self, off: u64, len: u64, mut f: impl FnMut(u64, u64)) {
        let lss = self.lss();
        let (mut p, end) = (off, off + len);
        while p < end {
            let n = ((p / lss + 1) * lss).min(end) - p;
            f(p, n);
            p += n;
        }
    }

    /// Which layer libvhdi reads the byte at `off` from: `Some(None)` zeros,
    /// `Some(Some(i))` layer i, `None` unknown (past a parent's end, where
    /// libvhdi fails to read).
    ///
    /// libvhdi (verified with libvhdi-python 20260901, see tools/oracle.py):
    /// in a differencing file every block that is not FULLY_PRESENT follows
    /// the sector bitmap (bit 1: this file, or zeros when the block has no
    /// data; bit 0: the parent), so ZERO/UNMAPPED/UNDEFINED blocks read the
    /// parent where the spec says zeros; and in a chunk without a sector
    /// bitmap block the bits come from file offset 0 + the block's bitmap
    /// offset (the file identifier and headers).
    fn libvhdi_source(&self, off: u64) -> Option<Option<usize>> {
        for (i, l) in self.layers.iter().enumerate() {
            let s = &l.spec;
            if off >= s.size {
                return if i == 0 { Some(None) } else { None };
            }
            let b = off / s.bs;
            let blk = s.blocks.get(&b).unwrap_or(&Blk::NotPresent);
            if let Blk::Full(_) = blk {
                return Some(Some(i));
            }
            if !self.is_diff(i) {
                return Some(None);
            }
            let sector = (off % s.bs) / s.lss;
            let spb = s.bs / s.lss;
            let ratio = (1u64 << 23) * s.lss / s.bs;
            let chunk = b / ratio;
            let chunk_has_bitmap = s
                .blocks
                .range(chunk * ratio..(chunk + 1) * ratio)
                .any(|(_, k)| matches!(k, Blk::Partial(_)));
            let bit = if chunk_has_bitmap {
                matches!(blk, Blk::Partial(p) if p[sector as usize])
            } else {
                let byte = ((b % ratio) * spb / 8 + sector / 8) as usize;
                l.head[byte] >> (sector % 8) & 1 != 0
            };
            if bit {
                return Some(matches!(blk, Blk::Partial(_)).then_some(i));
            }
        }
        Some(None)
    }
}

// ---------------------------------------------------------------------------
// Building files
// ---------------------------------------------------------------------------

fn content(id: u64, bs: u64, b: u64, blk: &Blk) -> BlockContent {
    match blk {
        Blk::Full(len) => BlockContent::Full(pattern(id, b * bs, *len)),
        Blk::Partial(p) => BlockContent::Partial {
            data: pattern(id, b * bs, bs),
            present: p.clone(),
        },
        Blk::Zero => BlockContent::Zero,
        Blk::Unmapped => BlockContent::Unmapped,
        Blk::Undefined => BlockContent::Undefined,
        Blk::NotPresent => BlockContent::NotPresent,
    }
}

/// Writes the files of `specs` (base first) into a fresh folder, each child
/// linked to its parent by relative path; returns the chain leaf first.
fn build(specs: Vec<LayerSpec>, rng: &mut Rng) -> Chain {
    let dir = tempfile::tempdir().unwrap();
    let mut layers: Vec<Layer> = Vec::new();
    for (depth, spec) in specs.into_iter().enumerate() {
        let guid = rng.guid();
        let name = if depth == 0 {
            "base.vhdx".to_string()
        } else {
            format!("diff{depth}.avhdx")
        };
        let path = dir.path().join(&name);
        let mut p = match layers.last() {
            None => CreateParams::dynamic(spec.size),
            Some(parent) => CreateParams::differencing(
                spec.size,
                ParentLink::relative(
                    parent.guid,
                    parent.path.file_name().unwrap().to_str().unwrap(),
                ),
            ),
        };
        p.block_size = spec.bs as u32;
        p.logical_sector_size = spec.lss as u32;
        p.physical_sector_size = 4096;
        p.data_write_guid = guid;
        let id = depth as u64 + 1;
        let blocks: BTreeMap<u64, BlockContent> = spec
            .blocks
            .iter()
            .map(|(&b, k)| (b, content(id, spec.bs, b, k)))
            .collect();
        let f = std::fs::File::create_new(&path).unwrap();
        create(&f, &name, &p, &blocks).unwrap_or_else(|e| panic!("create {name}: {e}"));
        drop(f);
        let mut head = vec![0u8; MIB as usize];
        std::fs::File::open(&path)
            .unwrap()
            .read_exact(&mut head)
            .unwrap();
        layers.push(Layer {
            id,
            spec,
            guid,
            path,
            head,
        });
    }
    layers.reverse();
    Chain { layers, _dir: dir }
}

/// A random sector bitmap of `spb` bits made of runs of mixed lengths, so
/// runs start and end inside bitmap bytes and cross byte boundaries.
fn random_bitmap(rng: &mut Rng, spb: u64) -> Vec<bool> {
    random_bitmap_in(rng, spb, 1)
}

/// Like `random_bitmap`, with every run a multiple of `granule` sectors.
fn random_bitmap_in(rng: &mut Rng, spb: u64, granule: u64) -> Vec<bool> {
    let mut v = Vec::with_capacity(spb as usize);
    let mut on = rng.pct(50);
    while (v.len() as u64) < spb {
        let len = match rng.below(4) {
            0 => 1 + rng.below(3),
            1 => 3 + rng.below(14),
            2 => 8 * (1 + rng.below(4)) + rng.below(3),
            _ => 20 + rng.below(spb / 4),
        } * granule;
        for _ in 0..len.min(spb - v.len() as u64) {
            v.push(on);
        }
        on = !on;
    }
    v
}

/// A base (non-differencing) layer: mostly FULLY_PRESENT blocks of data.
fn random_base(rng: &mut Rng, size: u64, bs: u64, lss: u64) -> LayerSpec {
    let mut blocks = BTreeMap::new();
    for b in 0..size.div_ceil(bs) {
        let k = match rng.below(20) {
            0 => Blk::NotPresent,
            1 => Blk::Zero,
            2 => Blk::Full(lss * (1 + rng.below(bs / lss - 1))),
            _ => Blk::Full(bs),
        };
        blocks.insert(b, k);
    }
    LayerSpec {
        size,
        bs,
        lss,
        blocks,
    }
}

/// A differencing layer with every block state, weighted towards partial blocks.
fn random_diff(rng: &mut Rng, size: u64, bs: u64, lss: u64) -> LayerSpec {
    random_diff_in(rng, size, bs, lss, 1)
}

/// Like `random_diff`, with bitmap runs in multiples of `granule` sectors.
fn random_diff_in(rng: &mut Rng, size: u64, bs: u64, lss: u64, granule: u64) -> LayerSpec {
    let spb = bs / lss;
    let mut blocks = BTreeMap::new();
    for b in 0..size.div_ceil(bs) {
        let k = match rng.below(16) {
            0..=5 => Blk::Partial(random_bitmap_in(rng, spb, granule)),
            6 => Blk::Partial(vec![true; spb as usize]),
            7 => Blk::Partial(vec![false; spb as usize]),
            8 | 9 => Blk::Full(bs),
            10 => Blk::Zero,
            11 => Blk::Unmapped,
            12 => Blk::Undefined,
            _ => Blk::NotPresent,
        };
        blocks.insert(b, k);
    }
    LayerSpec {
        size,
        bs,
        lss,
        blocks,
    }
}

// ---------------------------------------------------------------------------
// Checks of our reader
// ---------------------------------------------------------------------------

fn open(chain: &Chain) -> Disk {
    let disk = Disk::open(chain.leaf(), &ChainOptions::default())
        .unwrap_or_else(|e| panic!("open {}: {e}", chain.leaf().display()));
    assert_eq!(disk.layers().len(), chain.layers.len());
    for (l, m) in disk.layers().iter().zip(&chain.layers) {
        assert_eq!(
            l.path.canonicalize().unwrap(),
            m.path.canonicalize().unwrap()
        );
        assert!(l.file.problems().is_empty(), "{:?}", l.file.problems());
    }
    assert!(!disk.is_incomplete());
    assert_eq!(disk.virtual_size(), chain.size());
    disk
}

/// First differing byte of two equal-length slices.
fn first_diff(a: &[u8], b: &[u8]) -> Option<usize> {
    a.iter().zip(b).position(|(x, y)| x != y)
}

fn assert_same(what: &str, at: u64, got: &[u8], want: &[u8]) {
    assert_eq!(got.len(), want.len());
    if let Some(i) = first_diff(got, want) {
        panic!(
            "{what}: first difference at guest offset {:#x}: got {:#04x}, want {:#04x}",
            at + i as u64,
            got[i],
            want[i]
        );
    }
}

/// A random range: mostly short and unaligned, sometimes sector- or
/// block-aligned, sometimes spanning several blocks.
fn random_range(rng: &mut Rng, size: u64, bs: u64, lss: u64) -> (u64, u64) {
    let off = match rng.below(4) {
        0 => rng.below(size / lss) * lss,
        1 => (rng.below(size / bs + 1) * bs).min(size - 1),
        _ => rng.below(size),
    };
    let max = match rng.below(4) {
        0 => 3 * bs,
        1 => lss * 3,
        _ => 64 << 10,
    };
    let len = 1 + rng.below(max);
    (off, len.min(size - off))
}

/// Checks the runs of `off..off+len`: they cover it exactly, are maximal,
/// Data runs name the layer the model names and hold the expected bytes,
/// Zero runs read zeros per the model.
fn check_runs(chain: &Chain, disk: &Disk, off: u64, len: u64) {
    let mut pos = off;
    let mut prev: Option<Run> = None;
    disk.for_each_run(off, len, &mut |run| {
        let n = run.len();
        assert!(n > 0, "empty run at {pos:#x}");
        match run {
            Run::Data { file, offset, .. } => {
                chain.by_sector(pos, n, |p, _| {
                    assert_eq!(
                        chain.source(p),
                        Some(file),
                        "Data run at guest {p:#x} names layer {file}"
                    );
                });
                let mut got = vec![0u8; n as usize];
                disk.layers()[file]
                    .file
                    .read_file_at(&mut got, offset)
                    .unwrap();
                let mut want = vec![0u8; n as usize];
                chain.expected(pos, &mut want);
                assert_same("Data run bytes", pos, &got, &want);
                if let Some(Run::Data {
                    file: f0,
                    offset: o0,
                    len: l0,
                }) = prev
                {
                    assert!(
                        !(f0 == file && o0 + l0 == offset),
                        "runs not coalesced at {pos:#x}"
                    );
                }
            }
            Run::Zero { .. } => {
                chain.by_sector(pos, n, |p, _| {
                    assert_eq!(chain.source(p), None, "Zero run at guest {p:#x}");
                });
                assert!(
                    !matches!(prev, Some(Run::Zero { .. })),
                    "Zero runs not coalesced at {pos:#x}"
                );
            }
            Run::Parent { .. } => panic!("Parent run at {pos:#x} in a complete chain"),
        }
        prev = Some(run);
        pos += n;
        Ok(())
    })
    .unwrap();
    assert_eq!(pos, off + len, "runs do not cover {off:#x}+{len:#x}");
}

/// `read_at` and `for_each_run` at random ranges, the whole disk when it is
/// small, and `Read + Seek`. Returns the SHA-256 of the guest content.
fn check_reader(chain: &Chain, seed: u64, ranges: usize) -> String {
    let mut disk = open(chain);
    let (size, lss) = (chain.size(), chain.lss());
    let bs = chain.layers[0].spec.bs;
    let mut rng = Rng::new(seed);

    // Whole disk in one pass against the model (small disks).
    if size <= 256 * MIB {
        let mut got = vec![0u8; size as usize];
        disk.read_at(&mut got, 0).unwrap();
        let mut want = vec![0u8; size as usize];
        chain.expected(0, &mut want);
        assert_same("whole disk", 0, &got, &want);
        check_runs(chain, &disk, 0, size);
    }

    // Random ranges, including unaligned starts and ends and block crossings.
    for _ in 0..ranges {
        let (off, len) = random_range(&mut rng, size, bs, lss);
        let mut got = vec![0u8; len as usize];
        disk.read_at(&mut got, off).unwrap();
        let mut want = vec![0u8; len as usize];
        chain.expected(off, &mut want);
        assert_same("read_at", off, &got, &want);
        check_runs(chain, &disk, off, len);
    }
    assert!(disk.read_at(&mut [0u8; 1], size).is_err());
    assert!(disk.for_each_run(size - 1, 2, &mut |_| Ok(())).is_err());

    // Read + Seek.
    for _ in 0..ranges / 4 {
        let (off, len) = random_range(&mut rng, size, bs, lss);
        let mut want = vec![0u8; len as usize];
        chain.expected(off, &mut want);
        let mut got = vec![0u8; len as usize];
        match rng.below(3) {
            0 => {
                assert_eq!(disk.seek(SeekFrom::Start(off)).unwrap(), off);
            }
            1 => {
                let here = disk.stream_position().unwrap();
                let to = disk
                    .seek(SeekFrom::Current(off as i64 - here as i64))
                    .unwrap();
                assert_eq!(to, off);
            }
            _ => {
                let to = disk.seek(SeekFrom::End(off as i64 - size as i64)).unwrap();
                assert_eq!(to, off);
            }
        }
        disk.read_exact(&mut got).unwrap();
        assert_same("Read", off, &got, &want);
        assert_eq!(disk.stream_position().unwrap(), off + len);
    }
    // The tail through read_to_end, then EOF.
    let tail = (3 * lss + 17).min(size);
    disk.seek(SeekFrom::End(-(tail as i64))).unwrap();
    let mut got = Vec::new();
    disk.read_to_end(&mut got).unwrap();
    let mut want = vec![0u8; tail as usize];
    chain.expected(size - tail, &mut want);
    assert_same("read_to_end", size - tail, &got, &want);
    assert_eq!(disk.read(&mut [0u8; 16]).unwrap(), 0);
    disk.seek(SeekFrom::Start(size + 4096)).unwrap();
    assert_eq!(disk.read(&mut [0u8; 16]).unwrap(), 0);
    assert!(disk.seek(SeekFrom::Current(-(size as i64) - 8192)).is_err());

    disk.seek(SeekFrom::Start(0)).unwrap();
    sha256_reader(&mut disk)
}

// ---------------------------------------------------------------------------
// Oracles
// ---------------------------------------------------------------------------

fn oracle(lib: &str, chain: &Chain, dump: Option<&Path>) -> serde_json::Value {
    let v = oracle_result(lib, chain, dump).unwrap_or_else(|e| panic!("{lib}: {e}"));
    assert_eq!(v["size"].as_u64(), Some(chain.size()), "{lib}: {v}");
    v
}

/// The oracle's JSON answer, or its `{"error"}` answer (exit status 2).
fn oracle_result(
    lib: &str,
    chain: &Chain,
    dump: Option<&Path>,
) -> Result<serde_json::Value, serde_json::Value> {
    let (py, script) = python_oracle().expect("checked by the caller");
    let mut cmd = Command::new(py);
    cmd.arg(script).args(["--lib", lib]);
    for l in &chain.layers[1..] {
        cmd.arg("--parent").arg(&l.path);
    }
    cmd.arg(chain.leaf());
    if let Some(d) = dump {
        cmd.arg("--dump").arg(d);
    }
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(text.trim()).unwrap_or_else(|e| {
        panic!(
            "{cmd:?}: {e}: {text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    match out.status.code() {
        Some(0) => Ok(v),
        Some(2) if v["error"].is_string() => Err(v),
        c => panic!("{cmd:?}: exit {c:?}: {v}"),
    }
}

/// True when some child of the chain is larger than its parent.
fn grows(chain: &Chain) -> bool {
    chain
        .layers
        .windows(2)
        .any(|w| w[0].spec.size > w[1].spec.size)
}

/// Sectors where libvhdi and the spec disagree, as counted by `cross_check`.
#[derive(Debug, Default, PartialEq, Eq)]
struct Pyvhdi {
    /// Sectors compared byte for byte with our reader.
    agreeing: u64,
    /// Sectors where pyvhdi returned another layer's bytes (or zeros) than
    /// the spec and our reader: the documented libvhdi deviation.
    deviating: u64,
}

/// dissect: full-content SHA-256 must equal ours. pyvhdi: its dump must equal
/// our content wherever libvhdi's rules give the same source as the spec, and
/// the libvhdi-rule bytes elsewhere (asserting the deviation).
fn cross_check(chain: &Chain, our_sha: &str) -> Option<Pyvhdi> {
    python_oracle()?;
    let size = chain.size();
    let tmp = tempfile::tempdir().unwrap();
    let dump = tmp.path().join("pyvhdi.raw");
    if grows(chain) {
        // Neither library can read a child past its parent's end (verified
        // with dissect.hypervisor 3.21 and libvhdi-python 20260901: dissect
        // looks up BAT entries the parent does not have, libvhdi fails with
        // "unable to read data from parent file"). Assert that, then compare
        // the range every layer covers, through the same reader classes.
        for lib in ["dissect", "pyvhdi"] {
            let e = oracle_result(lib, chain, None)
                .expect_err("the oracle now reads past a parent's end: compare all of it");
            println!("{lib} cannot read past a parent's end (known): {e}");
        }
        let end = chain.layers.iter().map(|l| l.spec.size).min().unwrap();
        if chain.dissect_reliable() {
            let ddump = tmp.path().join("dissect.raw");
            oracle_prefix("dissect", chain, end, &ddump);
            let disk = open(chain);
            let mut ours = vec![0u8; end as usize];
            disk.read_at(&mut ours, 0).unwrap();
            let theirs = std::fs::read(&ddump).unwrap();
            assert_same("dissect vs hvkit", 0, &theirs, &ours);
        }
        oracle_prefix("pyvhdi", chain, end, &dump);
        let counts = compare_pyvhdi_dump(chain, &dump, end);
        println!("pyvhdi cross-check of 0..{end:#x}: {counts:?}");
        return Some(counts);
    }

    if chain.dissect_reliable() {
        let d = oracle("dissect", chain, None);
        assert_eq!(
            d["sha256"].as_str(),
            Some(our_sha),
            "dissect disagrees: {d}"
        );
    } else {
        println!("dissect skipped: it misreads partial blocks of a differencing parent at unaligned runs");
    }
    assert!(
        size <= 1024 * MIB,
        "dumps of big disks: see child_spanning_two_chunks"
    );
    let p = oracle("pyvhdi", chain, Some(&dump));
    let counts = compare_pyvhdi_dump(chain, &dump, size);
    let whole = p["sha256"].as_str().unwrap();
    if counts.deviating == 0 {
        assert_eq!(whole, our_sha, "pyvhdi: {p}");
    } else {
        assert_ne!(whole, our_sha, "pyvhdi: {p}");
    }
    println!("pyvhdi cross-check: {counts:?}");
    Some(counts)
}

/// Writes guest bytes `0..end` as read by `lib` (the reader classes of
/// tools/oracle.py, which only reads whole disks) to `out`.
fn oracle_prefix(lib: &str, chain: &Chain, end: u64, out: &Path) {
    const SCRIPT: &str = r#"
import os, sys
script, lib, out, end, image = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
import oracle
parents = sys.argv[6:]
d = oracle.PyvhdiDisk(image, parents) if lib == "pyvhdi" else oracle.DissectDisk(image, parents)
with open(out, "wb") as f:
    off = 0
    while off < end:
        n = min(4 << 20, end - off)
        b = d.read(off, n)
        if len(b) != n:
            sys.exit("short read at %d" % off)
        f.write(b)
        off += n
"#;
    let (py, script) = python_oracle().expect("checked by the caller");
    let mut cmd = Command::new(py);
    cmd.arg("-c")
        .arg(SCRIPT)
        .arg(script)
        .arg(lib)
        .arg(out)
        .arg(end.to_string())
        .arg(chain.leaf());
    for l in &chain.layers[1..] {
        cmd.arg(&l.path);
    }
    run(&mut cmd);
    assert_eq!(std::fs::metadata(out).unwrap().len(), end);
}

/// Compares pyvhdi's dump of `0..end` sector by sector: where libvhdi's
/// rules pick the same source as the spec it must equal our content; where
/// they differ it must equal the libvhdi-rule bytes.
fn compare_pyvhdi_dump(chain: &Chain, dump: &Path, end: u64) -> Pyvhdi {
    let lss = chain.lss();
    let disk = open(chain);
    let mut f = std::fs::File::open(dump).unwrap();
    assert_eq!(f.metadata().unwrap().len(), end);
    let mut counts = Pyvhdi::default();
    let step = 4 * MIB;
    let (mut theirs, mut ours, mut lib) = (vec![], vec![], vec![0u8; lss as usize]);
    let mut pos = 0;
    while pos < end {
        let n = step.min(end - pos) as usize;
        theirs.resize(n, 0);
        ours.resize(n, 0);
        f.read_exact(&mut theirs).unwrap();
        disk.read_at(&mut ours, pos).unwrap();
        for s in (0..n).step_by(lss as usize) {
            let at = pos + s as u64;
            let (t, o) = (&theirs[s..s + lss as usize], &ours[s..s + lss as usize]);
            match chain.libvhdi_source(at) {
                None => panic!("libvhdi's result at {at:#x} is not modelled"),
                Some(src) if src == chain.source(at) => {
                    assert_same("pyvhdi vs hvkit", at, t, o);
                    counts.agreeing += 1;
                }
                Some(src) => {
                    chain.fill_from(src, at, &mut lib);
                    assert_same("pyvhdi vs the libvhdi deviation model", at, t, &lib);
                    if t != o {
                        counts.deviating += 1;
                    } else {
                        counts.agreeing += 1;
                    }
                }
            }
        }
        pos += n as u64;
    }
    counts
}

/// Builds `specs` (base first), checks our reader, then the oracles.
fn check_chain(specs: Vec<LayerSpec>, seed: u64, ranges: usize) -> (Chain, Option<Pyvhdi>) {
    let mut rng = Rng::new(seed);
    let chain = build(specs, &mut rng);
    let sha = check_reader(&chain, seed ^ 0x5eed, ranges);
    let py = cross_check(&chain, &sha);
    (chain, py)
}

fn spec(size: u64, bs: u64, lss: u64, blocks: &[(u64, Blk)]) -> LayerSpec {
    LayerSpec {
        size,
        bs,
        lss,
        blocks: blocks.iter().cloned().collect(),
    }
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

/// Partial blocks with random sector bitmaps (runs of 1 to hundreds of
/// sectors starting and ending inside bitmap bytes) over a parent with data
/// in every block, plus hand-made bitmaps whose runs cross byte boundaries.
#[test]
fn partial_blocks_follow_the_sector_bitmap() {
    let mut rng = Rng::new(1);
    let (size, bs, lss) = (40 * MIB, 2 * MIB, 512);
    let spb = (bs / lss) as usize;
    let base = spec(
        size,
        4 * MIB,
        lss,
        &(0..10).map(|b| (b, Blk::Full(4 * MIB))).collect::<Vec<_>>(),
    );
    let mut child = spec(size, bs, lss, &[]);
    for b in 0..size / bs {
        child
            .blocks
            .insert(b, Blk::Partial(random_bitmap(&mut rng, spb as u64)));
    }
    // Hand-made runs: 3..29 (crosses bytes 0-3), one lone sector at 45, the
    // bytes 8..16 exactly, 130..131, and one run over the block's end.
    let mut p = vec![false; spb];
    for r in [3..29, 45..46, 64..128, 130..131, spb - 13..spb] {
        p[r].fill(true);
    }
    child.blocks.insert(3, Blk::Partial(p));
    // Alternating bits.
    child
        .blocks
        .insert(4, Blk::Partial((0..spb).map(|i| i % 2 == 1).collect()));
    let (_, py) = check_chain(vec![base, child], 11, 400);
    if let Some(py) = py {
        // Partial blocks follow the bitmap in libvhdi too.
        assert_eq!(py.deviating, 0, "{py:?}");
    }
}

/// ZERO, UNMAPPED and UNDEFINED blocks of a child read zeros even though the
/// parent has data there. libvhdi reads the parent there instead (its sector
/// bitmap bits are 0): asserted as the documented deviation.
#[test]
fn zero_unmapped_undefined_blocks_hide_the_parent() {
    let (size, bs, lss) = (16 * MIB, 2 * MIB, 512);
    let base = spec(
        size,
        bs,
        lss,
        &(0..8).map(|b| (b, Blk::Full(bs))).collect::<Vec<_>>(),
    );
    let half: Vec<bool> = (0..bs / lss).map(|s| s < 100).collect();
    let child = spec(
        size,
        bs,
        lss,
        &[
            (0, Blk::Partial(half)),
            (1, Blk::Zero),
            (2, Blk::Unmapped),
            (3, Blk::Undefined),
            (4, Blk::NotPresent),
            (5, Blk::Zero),
            (7, Blk::Full(bs)),
        ],
    );
    let (chain, py) = check_chain(vec![base, child], 2, 200);
    let disk = open(&chain);
    for b in [1u64, 2, 3, 5] {
        let mut got = vec![1u8; bs as usize];
        disk.read_at(&mut got, b * bs).unwrap();
        assert!(got.iter().all(|&x| x == 0), "block {b} is not zeros");
        // ... while the parent has data there.
        let mut parent = vec![0u8; bs as usize];
        disk.layers()[1].file.read_at(&mut parent, b * bs).unwrap();
        assert_eq!(parent, pattern(1, b * bs, bs));
        let mut runs = vec![];
        disk.for_each_run(b * bs, bs, &mut |r| {
            runs.push(r);
            Ok(())
        })
        .unwrap();
        assert_eq!(runs, vec![Run::Zero { len: bs }], "block {b}");
    }
    if let Some(py) = py {
        // Blocks 1, 2, 3 and 5 deviate entirely: pyvhdi returns the parent's bytes.
        assert_eq!(py.deviating, 4 * bs / lss, "{py:?}");
    }
}

/// NOT_PRESENT blocks read the parent (and, in the base, zeros).
#[test]
fn not_present_blocks_read_the_parent() {
    let (size, bs, lss) = (12 * MIB, MIB, 512);
    let base = spec(
        size,
        2 * MIB,
        lss,
        &[
            (0, Blk::Full(2 * MIB)),
            (1, Blk::Full(MIB + 512)),
            (2, Blk::NotPresent),
            (3, Blk::Zero),
            (4, Blk::Full(2 * MIB)),
        ],
    );
    let child = spec(
        size,
        bs,
        lss,
        &[
            (1, Blk::Full(bs)),
            (
                6,
                Blk::Partial(
                    vec![true; 8]
                        .into_iter()
                        .chain(vec![false; (bs / lss) as usize - 8])
                        .collect(),
                ),
            ),
        ],
    );
    let (chain, py) = check_chain(vec![base, child], 3, 200);
    let disk = open(&chain);
    let mut shape = vec![];
    disk.for_each_run(0, size, &mut |r| {
        shape.push(match r {
            Run::Data { file, len, .. } => ("data", file, len),
            Run::Zero { len } => ("zero", 0, len),
            Run::Parent { len } => ("parent", 0, len),
        });
        Ok(())
    })
    .unwrap();
    assert_eq!(
        shape,
        vec![
            ("data", 1, MIB),            // child NOT_PRESENT -> parent block 0
            ("data", 0, MIB),            // child FULLY_PRESENT
            ("data", 1, 2 * MIB),        // parent block 1 (its tail reads zeros)
            ("zero", 0, 2 * MIB),        // parent NOT_PRESENT
            ("data", 0, 4096),           // child partial: 8 sectors
            ("zero", 0, 2 * MIB - 4096), // rest: parent ZERO
            ("data", 1, 2 * MIB),        // parent block 4
            ("zero", 0, 2 * MIB),        // past the parent's listed blocks
        ]
    );
    if let Some(py) = py {
        // The only chunk has a sector bitmap block (block 6 is partial), so
        // libvhdi's bitmap bits are 0 for the NOT_PRESENT blocks: no deviation.
        assert_eq!(py.deviating, 0, "{py:?}");
    }
}

/// A differencing child with no partial block has no sector bitmap block;
/// NOT_PRESENT blocks must still read the parent. libvhdi then takes the
/// "bitmap" bits from the start of the file, which shows where they are 1
/// (the file identifier): asserted as the documented deviation.
#[test]
fn not_present_blocks_without_a_sector_bitmap_block() {
    let (size, bs, lss) = (8 * MIB, MIB, 512);
    let base = spec(
        size,
        bs,
        lss,
        &(0..8).map(|b| (b, Blk::Full(bs))).collect::<Vec<_>>(),
    );
    let child = spec(size, bs, lss, &[(5, Blk::Full(bs)), (6, Blk::Zero)]);
    let (_, py) = check_chain(vec![base, child], 4, 100);
    if let Some(py) = py {
        // Block 0 reads its bits from the file identifier ("vhdxfile" and
        // the creator): some of those sectors come back as zeros; block 6
        // (ZERO) reads the parent.
        assert!(py.deviating > bs / lss, "{py:?}");
    }
}

/// A child larger than its parent: past the parent's end (here inside a
/// child block, as the parent's size is not a multiple of the child's block
/// size) NOT_PRESENT and absent sectors of partial blocks read zeros.
#[test]
fn child_larger_than_parent_reads_zeros_past_the_parent() {
    let lss = 512;
    let psize = 9 * MIB + 3 * 512;
    let base = spec(
        psize,
        2 * MIB,
        lss,
        &(0..5).map(|b| (b, Blk::Full(2 * MIB))).collect::<Vec<_>>(),
    );
    let (size, bs) = (20 * MIB, 2 * MIB);
    let spb = bs / lss;
    let mut rng = Rng::new(5);
    let child = spec(
        size,
        bs,
        lss,
        &[
            (0, Blk::Partial(random_bitmap(&mut rng, spb))),
            (4, Blk::Partial(random_bitmap(&mut rng, spb))),
            (5, Blk::Partial(random_bitmap(&mut rng, spb))),
            (7, Blk::Full(bs)),
            (8, Blk::Partial(random_bitmap(&mut rng, spb))),
        ],
    );
    let (chain, py) = check_chain(vec![base, child], 6, 300);
    let disk = open(&chain);
    // Block 4 straddles the parent's end (9 MiB + 1536).
    let mut got = vec![0u8; MIB as usize];
    disk.read_at(&mut got, 9 * MIB).unwrap();
    let mut want = vec![0u8; MIB as usize];
    chain.expected(9 * MIB, &mut want);
    assert_same("around the parent's end", 9 * MIB, &got, &want);
    assert!(want[..1536].iter().any(|&x| x != 0));
    // NOT_PRESENT child blocks past the parent: zeros, as one Zero run.
    let mut runs = vec![];
    disk.for_each_run(12 * MIB, 2 * MIB, &mut |r| {
        runs.push(r);
        Ok(())
    })
    .unwrap();
    assert_eq!(runs, vec![Run::Zero { len: 2 * MIB }]);
    if let Some(py) = py {
        assert_eq!(py.deviating, 0, "{py:?}");
    }
}

/// Chains of depth 3 and 4 with random states in every layer and varying
/// block sizes per layer; in the depth-4 chain every child is larger than
/// its parent (reads past a grandparent's end, too).
#[test]
fn chains_of_depth_3_and_4() {
    // Each chain twice: bitmap runs of any length (dissect cannot read
    // those in a chain, see `dissect_reliable`), and runs in multiples of
    // 8 sectors, which all three readers must read alike.
    for (depth, lss, seed, granule) in [
        (3usize, 512u64, 7u64, 1u64),
        (3, 512, 17, 8),
        (4, 4096, 8, 1),
        (4, 4096, 18, 8),
    ] {
        let mut rng = Rng::new(seed);
        let mut specs = vec![random_base(&mut rng, 24 * MIB, 4 * MIB, lss)];
        for d in 1..depth {
            // The depth-4 chain grows at each layer (each child larger than
            // its parent); the depth-3 one keeps one size so that both
            // oracles can read all of it.
            let size = if depth == 4 {
                24 * MIB + d as u64 * 3 * MIB
            } else {
                24 * MIB
            };
            let bs = if d % 2 == 1 { 2 * MIB } else { MIB };
            specs.push(random_diff_in(&mut rng, size, bs, lss, granule));
        }
        let (chain, py) = check_chain(specs, seed, 300);
        assert_eq!(chain.layers.len(), depth);
        assert_eq!(chain.dissect_reliable(), granule == 8);
        // Every layer supplies data somewhere.
        let mut used = vec![false; depth];
        chain.by_sector(0, chain.size(), |p, _| {
            if let Some(i) = chain.source(p) {
                used[i] = true;
            }
        });
        assert!(used.iter().all(|&u| u), "depth {depth}: {used:?}");
        if let Some(py) = py {
            println!("depth {depth}: {py:?}");
            assert!(py.agreeing > 0);
        }
    }
}

/// 512 and 4096 byte logical sectors with 1 MiB and 2 MiB blocks.
#[test]
fn sector_and_block_size_matrix() {
    for (i, (lss, bs)) in [(512u64, MIB), (512, 2 * MIB), (4096, MIB), (4096, 2 * MIB)]
        .into_iter()
        .enumerate()
    {
        let mut rng = Rng::new(100 + i as u64);
        let size = 14 * MIB + 5 * lss;
        let base = random_base(&mut rng, size, if i % 2 == 0 { 2 * MIB } else { MIB }, lss);
        let child = random_diff(&mut rng, size, bs, lss);
        let (chain, _) = check_chain(vec![base, child], 20 + i as u64, 250);
        let leaf = open(&chain);
        assert_eq!(leaf.leaf().logical_sector_size() as u64, lss);
        assert_eq!(leaf.leaf().block_size(), bs);
    }
}

/// A child with 1 MiB blocks and 512 B sectors (chunk = 4 GiB) over
/// 4 GiB: two sector bitmap blocks, partial blocks on both sides of the
/// chunk boundary, and BAT entries interleaved with bitmap entries.
#[test]
fn child_spanning_two_chunks() {
    let lss = 512;
    let size = 4 * 1024 * MIB + 6 * MIB;
    let bs = MIB;
    let spb = bs / lss;
    let mut rng = Rng::new(9);
    let mut base = spec(size, 2 * MIB, lss, &[]);
    for b in [0u64, 1, 2047, 2048, 2049, 2050] {
        base.blocks.insert(b, Blk::Full(2 * MIB));
    }
    let mut child = spec(size, bs, lss, &[]);
    for b in [0u64, 1, 4094, 4095, 4096, 4097, 4099, 4101] {
        child
            .blocks
            .insert(b, Blk::Partial(random_bitmap(&mut rng, spb)));
    }
    child.blocks.insert(4098, Blk::Full(bs));
    child.blocks.insert(4100, Blk::NotPresent);
    let mut rng2 = Rng::new(10);
    let chain = build(vec![base, child], &mut rng2);
    let disk = open(&chain);
    let g = *disk.leaf().geometry();
    assert_eq!((g.chunk_ratio, g.chunks), (4096, 2));
    let bat = disk.leaf().bat();
    for c in 0..2 {
        assert_eq!(
            vhdx::format::bat_entry::state_bits(bat[g.bitmap_entry(c)]),
            vhdx::format::bat_entry::SB_BLOCK_PRESENT,
            "chunk {c}"
        );
    }
    // Around the chunk boundary, and random ranges anywhere.
    let four_g = 4 * 1024 * MIB;
    for (off, len) in [
        (four_g - 3 * MIB, 6 * MIB),
        (four_g - 700, 1400),
        (four_g + 2 * MIB - 1, 3 * MIB),
        (0, 3 * MIB),
        (size - 2 * MIB, 2 * MIB),
    ] {
        let mut got = vec![0u8; len as usize];
        disk.read_at(&mut got, off).unwrap();
        let mut want = vec![0u8; len as usize];
        chain.expected(off, &mut want);
        assert_same("two chunks", off, &got, &want);
        check_runs(&chain, &disk, off, len);
    }
    // Too big to dump: libvhdi's rules must give the spec's source for every
    // sector (both chunks have a sector bitmap block and no block is ZERO,
    // UNMAPPED or UNDEFINED), and then both oracles' whole-content SHA-256
    // must equal ours. The three 4 GiB passes run at once.
    chain.by_sector(0, size, |p, _| {
        assert_eq!(chain.libvhdi_source(p), Some(chain.source(p)), "at {p:#x}");
    });
    let (sha, oracles) = std::thread::scope(|s| {
        let o = s.spawn(|| {
            python_oracle()?;
            let d = s.spawn(|| oracle("dissect", &chain, None));
            let p = oracle("pyvhdi", &chain, None);
            Some((d.join().unwrap(), p))
        });
        let sha = check_reader(&chain, 12, 300);
        (sha, o.join().unwrap())
    });
    if let Some((d, p)) = oracles {
        assert_eq!(d["sha256"].as_str(), Some(sha.as_str()), "dissect: {d}");
        assert_eq!(p["sha256"].as_str(), Some(sha.as_str()), "pyvhdi: {p}");
    }
}

// ---------------------------------------------------------------------------
// vhdx::create against qemu-img
// ---------------------------------------------------------------------------

/// Dynamic files written by `create` with random FULLY_PRESENT, ZERO and
/// NOT_PRESENT blocks pass `qemu-img check` and read in qemu as our model
/// says (`qemu-img compare` against the expected raw image); one is larger
/// than a chunk so the writer's interleaved bitmap entries are exercised.
#[test]
fn create_output_passes_qemu_img_check_and_compare() {
    if !have_tool("qemu-img") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for (i, (size, bs, sparse)) in [
        (48 * MIB + 512, MIB, false),
        (100 * MIB - 3 * 512, 32 * MIB, false),
        (4 * 1024 * MIB + 3 * MIB + 512, MIB, true),
    ]
    .into_iter()
    .enumerate()
    {
        let mut rng = Rng::new(300 + i as u64);
        let blocks_n = size.div_ceil(bs);
        let mut model: BTreeMap<u64, Blk> = BTreeMap::new();
        let candidates: Vec<u64> = if sparse {
            vec![0, 1, 4094, 4095, 4096, 4097, 4098, blocks_n - 1]
        } else {
            (0..blocks_n).collect()
        };
        for b in candidates {
            let k = match rng.below(5) {
                0 => Blk::Zero,
                1 => Blk::NotPresent,
                2 => Blk::Full(512 * (1 + rng.below(bs / 512 - 1))),
                _ => Blk::Full(bs),
            };
            model.insert(b, k);
        }
        let layer = LayerSpec {
            size,
            bs,
            lss: 512,
            blocks: model,
        };
        let mut rng2 = Rng::new(400 + i as u64);
        let chain = build(vec![layer], &mut rng2);
        // The expected raw image, written sparsely from the model.
        let raw = dir.path().join(format!("expected{i}.raw"));
        let mut out = std::fs::File::create(&raw).unwrap();
        out.set_len(size).unwrap();
        for (&b, k) in &chain.layers[0].spec.blocks {
            if let Blk::Full(len) = k {
                let start = b * bs;
                let n = (*len).min(size - start);
                out.seek(SeekFrom::Start(start)).unwrap();
                out.write_all(&pattern(1, start, n)).unwrap();
            }
        }
        drop(out);
        let img = chain.leaf();
        let check = run(Command::new("qemu-img")
            .args(["check", "-f", "vhdx"])
            .arg(img));
        assert!(check.contains("No errors were found"), "{check}");
        let cmp = run(Command::new("qemu-img")
            .args(["compare", "-f", "vhdx", "-F", "raw"])
            .arg(img)
            .arg(&raw));
        assert!(cmp.contains("Images are identical"), "{cmp}");
        // And ours agrees with the same expected image (the big sparse one
        // through its runs, which the model checks block by block).
        let mut disk = open(&chain);
        if sparse {
            check_runs(&chain, &disk, 0, size);
        } else {
            let mut f = std::fs::File::open(&raw).unwrap();
            let want = sha256_reader(&mut f);
            assert_eq!(sha256_reader(&mut disk), want, "{}", img.display());
        }
    }
}
