//! Property tests of write/read round trips: random images built with
//! `vhdx::create` (dynamic, fixed and differencing chains, every block state,
//! odd sizes, 512/4096-byte sectors, 1-256 MiB blocks) read back through
//! `VhdxFile`, `Disk` (`read_at`, `Read`/`Seek`) and the run API, compared
//! with a model; and every on-disk structure's encoder/decoder pair of
//! `vhdx::format`, plus the log parser on random logs (wrapping the ring).

use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::Arc;
use uuid::Uuid;
use vhdx::create::{create, BlockContent, CreateParams, ParentLink};
use vhdx::format::bat_entry::{self, PayloadState};
use vhdx::format::file_id::FileIdentifier;
use vhdx::format::header::Header;
use vhdx::format::locator::ParentLocator;
use vhdx::format::log::{
    encode_entry, make_data_sector, rebuild_data_sector, Descriptor, EntryFields, EntryHeader,
    LogUpdate,
};
use vhdx::format::metadata::{self as md, FileParameters, MetadataEntry};
use vhdx::format::region::{RegionEntry, RegionTable};
use vhdx::format::{guids, MIB};
use vhdx::log_replay::{self, ReplayOp};
use vhdx::{Disk, MemStorage, OpenOptions, Run, Storage, VhdxFile};

/// Payload bytes all layers of one case may allocate together.
const ALLOC_BUDGET: u64 = 48 * MIB;

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        // Failures print the minimal input; don't write regression files
        // into the source tree.
        failure_persistence: None,
        max_shrink_iters: 200,
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------
// Deterministic bytes from a seed.

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn random_bytes(seed: u64, n: usize) -> Vec<u8> {
    let mut s = seed;
    let mut v = Vec::with_capacity(n + 8);
    while v.len() < n {
        v.extend_from_slice(&splitmix(&mut s).to_le_bytes());
    }
    v.truncate(n);
    v
}

/// Present bits in runs of random lengths (some single sectors, some long).
fn random_runs(seed: u64, n: usize) -> Vec<bool> {
    let mut s = seed;
    let mut v = Vec::with_capacity(n);
    let mut on = splitmix(&mut s) & 1 == 1;
    while v.len() < n {
        let r = splitmix(&mut s);
        let len = match r % 4 {
            0 => 1,
            1 => 1 + (r >> 8) % 8,
            2 => 1 + (r >> 8) % 200,
            _ => 1 + (r >> 8) % 5000,
        } as usize;
        v.extend(std::iter::repeat_n(on, len.min(n - v.len())));
        on = !on;
    }
    v
}

// ---------------------------------------------------------------------------
// Random images and their model.

#[derive(Debug, Clone)]
enum Spec {
    NotPresent,
    Undefined,
    Zero,
    Unmapped,
    /// Random bytes for `pct`% of the block (the rest zero).
    Full {
        seed: u64,
        pct: u8,
    },
    /// Random bytes in the sectors present (in random runs).
    Partial {
        seed: u64,
        runs: u64,
    },
}

#[derive(Debug, Clone)]
struct LayerSpec {
    block_mib: u32,
    pss: u32,
    blocks: u64,
    tail: u64,
    fixed: bool,
    contents: Vec<Spec>,
}

fn spec_strategy(diff: bool) -> impl Strategy<Value = Spec> {
    let common = prop_oneof![
        3 => Just(Spec::NotPresent),
        1 => Just(Spec::Undefined),
        2 => Just(Spec::Zero),
        1 => Just(Spec::Unmapped),
        4 => (any::<u64>(), 0u8..=100).prop_map(|(seed, pct)| Spec::Full { seed, pct }),
    ];
    if diff {
        prop_oneof![
            3 => common,
            2 => (any::<u64>(), any::<u64>()).prop_map(|(seed, runs)| Spec::Partial { seed, runs }),
        ]
        .boxed()
    } else {
        common.boxed()
    }
}

fn layer_strategy(diff: bool) -> impl Strategy<Value = LayerSpec> {
    (
        prop_oneof![Just(1u32), Just(2), Just(4), Just(8), Just(32), Just(256)],
        prop_oneof![Just(512u32), Just(4096)],
    )
        .prop_flat_map(move |(block_mib, pss)| {
            // Virtual sizes up to ~256 MiB (two blocks of 256 MiB).
            let max_blocks = (256 / block_mib as u64).clamp(2, 40);
            (
                Just(block_mib),
                Just(pss),
                1..=max_blocks,
                any::<u64>(),
                prop::bool::weighted(0.15),
                prop::collection::vec(spec_strategy(diff), max_blocks as usize),
            )
        })
        .prop_map(
            |(block_mib, pss, blocks, tail, fixed, contents)| LayerSpec {
                block_mib,
                pss,
                blocks,
                tail,
                fixed,
                contents,
            },
        )
}

/// One built layer: its parameters and block contents (the model).
struct Layer {
    params: CreateParams,
    blocks: BTreeMap<u64, BlockContent>,
    bytes: Arc<Vec<u8>>,
}

/// Read-only storage over shared bytes (opening a layer copies nothing).
struct Shared(Arc<Vec<u8>>);

impl Storage for Shared {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let src = usize::try_from(offset)
            .ok()
            .and_then(|o| self.0.get(o..o.checked_add(buf.len())?))
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "past the end"))?;
        buf.copy_from_slice(src);
        Ok(())
    }
    fn write_at(&self, _: &[u8], _: u64) -> io::Result<()> {
        Err(io::Error::other("read-only"))
    }
    fn flush(&self) -> io::Result<()> {
        Ok(())
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.0.len() as u64)
    }
    fn set_len(&self, _: u64) -> io::Result<()> {
        Err(io::Error::other("read-only"))
    }
}

/// Creates a file in memory and returns its bytes.
fn create_bytes(
    name: &str,
    p: &CreateParams,
    blocks: &BTreeMap<u64, BlockContent>,
) -> Arc<Vec<u8>> {
    let mem = MemStorage::new(Vec::new());
    create(&mem, name, p, blocks).expect("create");
    Arc::new(mem.to_vec())
}

impl Layer {
    fn vs(&self) -> u64 {
        self.params.virtual_size
    }
    fn bs(&self) -> u64 {
        self.params.block_size as u64
    }
    fn lss(&self) -> u64 {
        self.params.logical_sector_size as u64
    }
}

/// Builds a layer from its spec, spending at most `budget` bytes on
/// allocated blocks (further ones become ZERO).
fn build_layer(
    spec: &LayerSpec,
    lss: u32,
    parent: Option<&Layer>,
    budget: &mut u64,
    name: &str,
) -> Layer {
    let bs = spec.block_mib as u64 * MIB;
    let lss64 = lss as u64;
    let spb = bs / lss64;
    let tail_sectors = if spec.tail.is_multiple_of(4) {
        spb
    } else {
        1 + (spec.tail >> 2) % spb
    };
    let vs = (spec.blocks - 1) * bs + tail_sectors * lss64;
    let fixed = spec.fixed && parent.is_none() && vs.next_multiple_of(bs) <= *budget;
    if fixed {
        *budget -= vs.next_multiple_of(bs);
    }
    let mut params = match parent {
        Some(p) => CreateParams::differencing(
            vs,
            ParentLink::relative(p.params.data_write_guid, "parent.vhdx"),
        ),
        None => CreateParams::dynamic(vs),
    };
    params.block_size = bs as u32;
    params.logical_sector_size = lss;
    params.physical_sector_size = spec.pss;
    params.fixed = fixed;
    params.creator = format!("roundtrip {name}");
    let mut blocks = BTreeMap::new();
    for (b, c) in spec.contents.iter().take(spec.blocks as usize).enumerate() {
        let b = b as u64;
        let block_len = bs.min(vs - b * bs) as usize;
        let allocated = matches!(c, Spec::Full { .. } | Spec::Partial { .. });
        if allocated && *budget < bs {
            blocks.insert(b, BlockContent::Zero);
            continue;
        }
        if allocated {
            *budget -= bs;
        }
        let content = match *c {
            Spec::NotPresent if fixed => continue,
            Spec::NotPresent => BlockContent::NotPresent,
            Spec::Undefined => BlockContent::Undefined,
            Spec::Zero => BlockContent::Zero,
            Spec::Unmapped => BlockContent::Unmapped,
            Spec::Full { seed, pct } => {
                BlockContent::Full(random_bytes(seed, block_len * pct as usize / 100))
            }
            Spec::Partial { seed, runs } => BlockContent::Partial {
                data: random_bytes(seed, block_len),
                present: random_runs(runs, spb as usize),
            },
        };
        blocks.insert(b, content);
    }
    let bytes = create_bytes(name, &params, &blocks);
    Layer {
        params,
        blocks,
        bytes,
    }
}

/// Where the guest bytes of one sector come from in the leaf alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Data,
    Zero,
    Parent,
}

/// The model: fills `buf` with the guest bytes at `offset` of the chain
/// `layers` (leaf first); past a layer's end reads zeros.
fn model_read(layers: &[Layer], offset: u64, buf: &mut [u8]) {
    let Some((top, rest)) = layers.split_first() else {
        buf.fill(0);
        return;
    };
    let mut pos = 0usize;
    while pos < buf.len() {
        let g = offset + pos as u64;
        if g >= top.vs() {
            buf[pos..].fill(0);
            return;
        }
        let (b, in_b) = (g / top.bs(), (g % top.bs()) as usize);
        let n = ((top.bs() - in_b as u64).min(top.vs() - g) as usize).min(buf.len() - pos);
        let dst = &mut buf[pos..pos + n];
        match model_content(top, b) {
            Some(BlockContent::Full(d)) => copy_or_zero(dst, d, in_b),
            Some(BlockContent::Partial { data, present }) => {
                let lss = top.lss() as usize;
                let mut i = 0;
                while i < n {
                    let s = (in_b + i) / lss;
                    let m = ((s + 1) * lss - (in_b + i)).min(n - i);
                    if present[s] {
                        copy_or_zero(&mut dst[i..i + m], data, in_b + i);
                    } else {
                        model_read(rest, g + i as u64, &mut dst[i..i + m]);
                    }
                    i += m;
                }
            }
            Some(BlockContent::NotPresent) if top.params.parent.is_some() => {
                model_read(rest, g, dst)
            }
            _ => dst.fill(0),
        }
        pos += n;
    }
}

fn model_content(l: &Layer, block: u64) -> Option<&BlockContent> {
    static EMPTY: BlockContent = BlockContent::Full(Vec::new());
    match l.blocks.get(&block) {
        Some(c) => Some(c),
        None if l.params.fixed => Some(&EMPTY),
        None => None,
    }
}

fn copy_or_zero(dst: &mut [u8], data: &[u8], from: usize) {
    let have = data.len().saturating_sub(from).min(dst.len());
    if have > 0 {
        dst[..have].copy_from_slice(&data[from..from + have]);
    }
    dst[have..].fill(0);
}

/// Where the leaf's byte `g` comes from.
fn model_source(l: &Layer, g: u64) -> Source {
    let (b, in_b) = (g / l.bs(), g % l.bs());
    match model_content(l, b) {
        Some(BlockContent::Full(_)) => Source::Data,
        Some(BlockContent::Partial { present, .. }) => {
            if present[(in_b / l.lss()) as usize] {
                Source::Data
            } else {
                Source::Parent
            }
        }
        None | Some(BlockContent::NotPresent) if l.params.parent.is_some() => Source::Parent,
        _ => Source::Zero,
    }
}

fn open_layer(l: &Layer, name: &str) -> VhdxFile {
    let f = VhdxFile::open(
        Box::new(Shared(l.bytes.clone())),
        name,
        OpenOptions::read_only(),
    )
    .unwrap_or_else(|e| panic!("{name}: {e}"));
    assert!(f.problems().is_empty(), "{name}: {:?}", f.problems());
    f
}

/// Ranges to read: the random ones, each block boundary, the ends.
fn ranges(vs: u64, bs: u64, picks: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut r: Vec<(u64, u64)> = picks
        .iter()
        .map(|&(a, l)| {
            let off = a % vs;
            (off, (l % (3 * MIB) + 1).min(vs - off))
        })
        .collect();
    let mut b = bs;
    while b < vs && r.len() < picks.len() + 10 {
        r.push((b - 700, 1500.min(vs - (b - 700))));
        b += bs;
    }
    r.push((0, 4096.min(vs)));
    r.push((vs - 1, 1));
    r.push((vs.saturating_sub(5000), 5000.min(vs)));
    r
}

/// Compares every read path with the model for `ranges`.
fn check_chain(layers: &[Layer], picks: &[(u64, u64)]) -> Result<(), TestCaseError> {
    let names: Vec<String> = (0..layers.len())
        .map(|i| format!("layer{i}.vhdx"))
        .collect();
    let files: Vec<(PathBuf, VhdxFile)> = layers
        .iter()
        .zip(&names)
        .map(|(l, n)| (PathBuf::from(n), open_layer(l, n)))
        .collect();
    for ((_, f), l) in files.iter().zip(layers) {
        prop_assert_eq!(f.virtual_size(), l.vs());
        prop_assert_eq!(f.block_size(), l.bs());
        prop_assert_eq!(f.logical_sector_size() as u64, l.lss());
        prop_assert_eq!(
            f.metadata().physical_sector_size,
            l.params.physical_sector_size
        );
        prop_assert_eq!(f.has_parent(), l.params.parent.is_some());
        prop_assert_eq!(f.header().data_write_guid, l.params.data_write_guid);
        prop_assert_eq!(f.creator(), l.params.creator.as_str());
        prop_assert_eq!(
            f.disk_type(),
            match (&l.params.parent, l.params.fixed) {
                (Some(_), _) => "differencing",
                (None, true) => "fixed",
                (None, false) => "dynamic",
            }
        );
    }
    let leaf = &layers[0];
    let vs = leaf.vs();
    let rs = ranges(vs, leaf.bs(), picks);

    // The leaf alone: parent ranges read as zeros, runs name their source.
    let lf = &files[0].1;
    for &(off, len) in &rs {
        let mut got = vec![0u8; len as usize];
        lf.read_at(&mut got, off).unwrap();
        let mut want = vec![0u8; len as usize];
        model_read(&layers[..1], off, &mut want);
        prop_assert!(got == want, "leaf alone at {:#x}+{:#x}", off, len);
        let mut pos = off;
        let mut prev: Option<Run> = None;
        lf.for_each_run(off, len, &mut |run| {
            let src = match run {
                Run::Data { file, offset, len } => {
                    assert_eq!(file, 0);
                    let mut b = vec![0u8; len as usize];
                    lf.read_file_at(&mut b, offset).unwrap();
                    assert!(b == want[(pos - off) as usize..(pos - off + len) as usize]);
                    Source::Data
                }
                Run::Zero { .. } => Source::Zero,
                Run::Parent { .. } => Source::Parent,
            };
            let lss = leaf.lss();
            let mut s = pos;
            while s < pos + run.len() {
                assert_eq!(model_source(leaf, s), src, "leaf byte {s:#x} in {run:?}");
                s = (s / lss + 1) * lss;
            }
            assert_not_mergeable(prev, run);
            prev = Some(run);
            pos += run.len();
            Ok(())
        })
        .unwrap();
        prop_assert_eq!(pos, off + len);
    }

    // The chain: reads, runs, Read + Seek.
    let mut disk = Disk::from_files(files, false).unwrap();
    prop_assert!(!disk.is_incomplete());
    prop_assert_eq!(disk.virtual_size(), vs);
    for &(off, len) in &rs {
        let mut want = vec![0u8; len as usize];
        model_read(layers, off, &mut want);
        let mut got = vec![0u8; len as usize];
        disk.read_at(&mut got, off).unwrap();
        prop_assert!(got == want, "chain at {:#x}+{:#x}", off, len);
        let mut pos = 0u64;
        let mut prev: Option<Run> = None;
        disk.for_each_run(off, len, &mut |run| {
            let want = &want[pos as usize..(pos + run.len()) as usize];
            match run {
                Run::Data { file, offset, len } => {
                    let mut b = vec![0u8; len as usize];
                    disk.layers()[file]
                        .file
                        .read_file_at(&mut b, offset)
                        .unwrap();
                    assert!(b == want, "data run {run:?} at {:#x}", off + pos);
                }
                Run::Zero { .. } => assert!(want.iter().all(|&x| x == 0), "zero run {run:?}"),
                Run::Parent { .. } => panic!("a complete chain reported {run:?}"),
            }
            assert_not_mergeable(prev, run);
            prev = Some(run);
            pos += run.len();
            Ok(())
        })
        .unwrap();
        prop_assert_eq!(pos, len);
        disk.seek(SeekFrom::Start(off)).unwrap();
        let mut got = vec![0u8; len as usize];
        disk.read_exact(&mut got).unwrap();
        prop_assert!(got == want, "Read at {:#x}+{:#x}", off, len);
    }
    // Small disks: every byte, through Read, in odd-sized pieces.
    if vs <= 24 * MIB {
        disk.seek(SeekFrom::Start(0)).unwrap();
        let mut all = Vec::with_capacity(vs as usize);
        let mut piece = vec![0u8; 1_000_003];
        loop {
            let n = disk.read(&mut piece).unwrap();
            if n == 0 {
                break;
            }
            all.extend_from_slice(&piece[..n]);
        }
        let mut want = vec![0u8; vs as usize];
        model_read(layers, 0, &mut want);
        prop_assert!(all == want, "whole disk");
    }
    // Past the end: out of range.
    let mut one = [0u8; 1];
    prop_assert!(disk.read_at(&mut one, vs).is_err());
    Ok(())
}

fn assert_not_mergeable(prev: Option<Run>, next: Run) {
    assert!(!next.is_empty(), "empty run");
    match (prev, next) {
        (Some(Run::Zero { .. }), Run::Zero { .. })
        | (Some(Run::Parent { .. }), Run::Parent { .. }) => {
            panic!("adjacent runs not coalesced: {prev:?} {next:?}")
        }
        (
            Some(Run::Data { file, offset, len }),
            Run::Data {
                file: f2,
                offset: o2,
                ..
            },
        ) if file == f2 && offset + len == o2 => {
            panic!("adjacent runs not coalesced: {prev:?} {next:?}")
        }
        _ => {}
    }
}

fn picks() -> impl Strategy<Value = Vec<(u64, u64)>> {
    prop::collection::vec((any::<u64>(), any::<u64>()), 6..14)
}

proptest! {
    #![proptest_config(config(64))]

    /// Dynamic and fixed images of every block size and sector size.
    #[test]
    fn dynamic_images_read_back(
        spec in layer_strategy(false),
        lss in prop_oneof![Just(512u32), Just(4096)],
        picks in picks(),
    ) {
        let mut budget = ALLOC_BUDGET;
        let layer = build_layer(&spec, lss, None, &mut budget, "dynamic");
        check_chain(&[layer], &picks)?;
    }

    /// Differencing chains of two or three files (each with its own block
    /// and virtual size) with partially present blocks.
    #[test]
    fn differencing_chains_read_back(
        specs in prop::collection::vec(layer_strategy(true), 2..=3),
        lss in prop_oneof![Just(512u32), Just(4096)],
        picks in picks(),
    ) {
        let mut budget = ALLOC_BUDGET;
        // Base first.
        let mut layers: Vec<Layer> = Vec::new();
        for (i, s) in specs.iter().enumerate().rev() {
            let parent = layers.last();
            let mut s = s.clone();
            if parent.is_none() {
                // The base has no parent: no partial blocks.
                for c in &mut s.contents {
                    if let Spec::Partial { seed, .. } = *c {
                        *c = Spec::Full { seed, pct: 100 };
                    }
                }
            }
            let l = build_layer(&s, lss, parent, &mut budget, &format!("layer{i}"));
            layers.push(l);
        }
        layers.reverse();
        check_chain(&layers, &picks)?;
    }
}

/// 256 MiB blocks with data (too big for the random budget): a dynamic
/// base with an allocated first block and a short last block, and a
/// differencing child over it with a partially present 256 MiB block.
#[test]
fn blocks_of_256_mib_read_back() {
    let bs = 256 * MIB;
    let vs = bs + 3 * 512;
    let mut p = CreateParams::dynamic(vs);
    p.block_size = bs as u32;
    let mut blocks = BTreeMap::new();
    blocks.insert(0, BlockContent::Full(random_bytes(1, (2 * MIB) as usize)));
    blocks.insert(1, BlockContent::Zero);
    let base = Layer {
        bytes: create_bytes("big", &p, &blocks),
        params: p,
        blocks,
    };
    let mut c = CreateParams::differencing(
        vs,
        ParentLink::relative(base.params.data_write_guid, "big.vhdx"),
    );
    c.block_size = bs as u32;
    let mut blocks = BTreeMap::new();
    let mut present = random_runs(3, (bs / 512) as usize);
    present[(bs / 512) as usize - 1] = true;
    blocks.insert(
        0,
        BlockContent::Partial {
            data: random_bytes(4, (3 * MIB) as usize),
            present,
        },
    );
    let child = Layer {
        bytes: create_bytes("child", &c, &blocks),
        params: c,
        blocks,
    };
    let picks: Vec<(u64, u64)> = (0..12u64)
        .map(|i| (i * 22_369_621 + 17, i * 300_007))
        .collect();
    check_chain(&[child, base], &picks).unwrap();
}

// ---------------------------------------------------------------------------
// On-disk structures: encode then decode gives the value back; a flipped
// bit in a checksummed structure is refused.

fn uuid() -> impl Strategy<Value = Uuid> {
    any::<u128>().prop_map(Uuid::from_u128)
}

prop_compose! {
    fn header()(
        sequence_number in any::<u64>(),
        file_write_guid in uuid(),
        data_write_guid in uuid(),
        log_guid in uuid(),
        log_version in any::<u16>(),
        log_mib in 1u32..4096,
        log_offset_mib in 1u64..(1 << 44),
    ) -> Header {
        Header {
            sequence_number,
            file_write_guid,
            data_write_guid,
            log_guid,
            log_version,
            version: 1,
            log_length: log_mib << 20,
            log_offset: log_offset_mib << 20,
        }
    }
}

prop_compose! {
    fn region_entry()(guid in uuid(), file_offset in any::<u64>(), length in any::<u32>(), required in any::<bool>()) -> RegionEntry {
        RegionEntry { guid, file_offset, length, required }
    }
}

prop_compose! {
    fn metadata_entry()(
        item_id in uuid(),
        offset in any::<u32>(),
        length in any::<u32>(),
        is_user in any::<bool>(),
        is_virtual_disk in any::<bool>(),
        is_required in any::<bool>(),
    ) -> MetadataEntry {
        MetadataEntry { item_id, offset, length, is_user, is_virtual_disk, is_required }
    }
}

fn locator() -> impl Strategy<Value = ParentLocator> {
    (
        uuid(),
        prop::collection::btree_map("\\PC{1,24}", "\\PC{0,40}", 0..24),
    )
        .prop_map(|(locator_type, map)| ParentLocator {
            locator_type,
            entries: map.into_iter().collect(),
        })
}

prop_compose! {
    fn entry_header()(
        checksum in any::<u32>(),
        entry_sectors in 1u32..(1 << 20),
        tail_sectors in 0u32..(1 << 20),
        sequence_number in 1u64..,
        descriptor_count in any::<u32>(),
        log_guid in uuid(),
        flushed_file_offset in any::<u64>(),
        last_file_offset in any::<u64>(),
    ) -> EntryHeader {
        EntryHeader {
            checksum,
            entry_length: entry_sectors << 12,
            tail: tail_sectors << 12,
            sequence_number,
            descriptor_count,
            log_guid,
            flushed_file_offset,
            last_file_offset,
        }
    }
}

fn descriptor() -> impl Strategy<Value = Descriptor> {
    prop_oneof![
        (1u64..(1 << 40), 0u64..(1 << 52), any::<u64>()).prop_map(|(l, o, s)| Descriptor::Zero {
            length: l << 12,
            file_offset: o << 12,
            sequence_number: s,
        }),
        (
            any::<[u8; 4]>(),
            any::<[u8; 8]>(),
            0u64..(1 << 52),
            any::<u64>()
        )
            .prop_map(|(trailing_bytes, leading_bytes, o, s)| Descriptor::Data {
                trailing_bytes,
                leading_bytes,
                file_offset: o << 12,
                sequence_number: s,
            }),
    ]
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn header_round_trips(h in header(), bit in 0usize..4096 * 8) {
        let b = h.to_bytes();
        prop_assert_eq!(b.len(), 4096);
        prop_assert_eq!(Header::parse(&b).unwrap(), h);
        let mut bad = b.clone();
        bad[bit / 8] ^= 1 << (bit % 8);
        prop_assert!(Header::parse(&bad).is_err());
        prop_assert!(Header::parse(&b[..4095]).is_err());
    }

    #[test]
    fn region_table_round_trips(
        entries in prop::collection::vec(region_entry(), 0..64),
        bit in 0usize..65536 * 8,
    ) {
        let t = RegionTable { entries };
        let b = t.to_bytes();
        prop_assert_eq!(b.len(), 65536);
        let back = RegionTable::parse(&b).unwrap();
        for e in &t.entries {
            prop_assert!(back.find(&e.guid).is_some());
        }
        prop_assert_eq!(back, t);
        let mut bad = b.clone();
        bad[bit / 8] ^= 1 << (bit % 8);
        prop_assert!(RegionTable::parse(&bad).is_err());
    }

    #[test]
    fn metadata_table_round_trips(entries in prop::collection::vec(metadata_entry(), 0..128)) {
        let b = md::table_to_bytes(&entries);
        prop_assert_eq!(b.len(), md::TABLE_SIZE);
        prop_assert_eq!(md::parse_table(&b).unwrap(), entries);
    }

    #[test]
    fn file_parameters_round_trip(
        shift in 20u32..=28,
        leave_block_allocated in any::<bool>(),
        has_parent in any::<bool>(),
        bad_size in any::<u32>(),
    ) {
        let fp = FileParameters { block_size: 1 << shift, leave_block_allocated, has_parent };
        prop_assert_eq!(FileParameters::parse(&fp.to_bytes()).unwrap(), fp);
        let valid = bad_size.is_power_of_two() && (1 << 20..=1 << 28).contains(&bad_size);
        let bad = FileParameters { block_size: bad_size, ..fp };
        prop_assert_eq!(FileParameters::parse(&bad.to_bytes()).is_ok(), valid);
    }

    #[test]
    fn small_items_round_trip(v in any::<u64>(), id in uuid(), s in any::<u32>()) {
        prop_assert_eq!(md::parse_u64_item(&v.to_le_bytes(), "x").unwrap(), v);
        prop_assert_eq!(md::parse_guid_item(&id.to_bytes_le(), "x").unwrap(), id);
        let sector = md::parse_sector_size(&s.to_le_bytes(), "x");
        prop_assert_eq!(sector.is_ok(), s == 512 || s == 4096);
        for s in [512u32, 4096] {
            prop_assert_eq!(md::parse_sector_size(&s.to_le_bytes(), "x").unwrap(), s);
        }
    }

    #[test]
    fn parent_locator_round_trips(loc in locator()) {
        let b = loc.to_bytes();
        let back = ParentLocator::parse(&b).unwrap();
        for (k, v) in &loc.entries {
            prop_assert_eq!(back.get(k), Some(v.as_str()));
        }
        prop_assert_eq!(back, loc);
    }

    /// A locator written by `create` reads back from the image.
    #[test]
    fn parent_locator_round_trips_through_an_image(
        guid in uuid(),
        paths in prop::collection::btree_map("[a-z_]{1,12}", "\\PC{0,60}", 0..6),
    ) {
        let paths: Vec<(String, String)> = paths
            .into_iter()
            .filter(|(k, _)| k != "parent_linkage")
            .collect();
        let link = ParentLink { data_write_guid: guid, paths: paths.clone() };
        let p = CreateParams::differencing(8 * MIB, link.clone());
        let mem = MemStorage::new(Vec::new());
        create(&mem, "child", &p, &BTreeMap::new()).unwrap();
        let f = VhdxFile::open(Box::new(mem), "child", OpenOptions::read_only()).unwrap();
        let loc = f.parent_locator().unwrap();
        prop_assert_eq!(loc.locator_type, guids::LOCATOR_TYPE_VHDX);
        prop_assert_eq!(loc, &link.locator());
        prop_assert_eq!(vhdx::parent::linkages(loc), vec![guid]);
    }

    #[test]
    fn file_identifier_round_trips(creator in "[^\u{0}]{0,255}") {
        prop_assume!(creator.encode_utf16().count() <= 255);
        let id = FileIdentifier { creator };
        let b = id.to_bytes();
        prop_assert_eq!(&b[..8], b"vhdxfile");
        prop_assert_eq!(FileIdentifier::parse(&b).unwrap(), id);
    }

    #[test]
    fn bat_entries_round_trip(state in 0u64..8, mib in 0u64..(1 << 44)) {
        let e = bat_entry::make(state, mib << 20);
        prop_assert_eq!(bat_entry::state_bits(e), state);
        prop_assert_eq!(bat_entry::file_offset(e), mib << 20);
        prop_assert_eq!(bat_entry::reserved_bits(e), 0);
        if let Some(s) = PayloadState::from_bits(state) {
            prop_assert_eq!(s.bits(), state);
        } else {
            prop_assert_eq!(state, 4);
        }
    }

    #[test]
    fn log_entry_header_round_trips(h in entry_header()) {
        let mut b = vec![0xAAu8; 4096];
        h.write_to(&mut b);
        prop_assert_eq!(&b[28..32], &[0u8; 4]);
        prop_assert_eq!(EntryHeader::parse(&b).unwrap(), h.clone());
        let area = EntryHeader::descriptor_area(h.descriptor_count);
        prop_assert!(area.is_multiple_of(4096));
        prop_assert!(area >= 64 + 32 * h.descriptor_count as u64);
        prop_assert!(area < 64 + 32 * h.descriptor_count as u64 + 4096);
    }

    #[test]
    fn log_descriptors_round_trip(d in descriptor()) {
        let mut b = [0u8; 32];
        d.write_to(&mut b);
        prop_assert_eq!(Descriptor::parse(&b).unwrap(), d);
    }

    #[test]
    fn log_data_sectors_round_trip(seed in any::<u64>(), seq in any::<u64>(), other in any::<u64>()) {
        let update = random_bytes(seed, 4096);
        let (leading, trailing, sector) = make_data_sector(&update, seq);
        prop_assert_eq!(&sector[..4], b"data");
        let mut out = vec![0u8; 4096];
        rebuild_data_sector(&sector, &leading, &trailing, seq, &mut out).unwrap();
        prop_assert_eq!(&out, &update);
        if other != seq {
            prop_assert!(rebuild_data_sector(&sector, &leading, &trailing, other, &mut out).is_err());
        }
    }
}

// ---------------------------------------------------------------------------
// The log parser on random logs: a sequence of entries written anywhere in
// the ring (wrapping past its end) replays exactly the operations written.

#[derive(Debug, Clone)]
enum LogOp {
    Data { page: u64, seed: u64 },
    Zero { page: u64, pages: u64 },
}

fn log_op() -> impl Strategy<Value = LogOp> {
    prop_oneof![
        (0u64..2048, any::<u64>()).prop_map(|(page, seed)| LogOp::Data { page, seed }),
        (0u64..2048, 1u64..64).prop_map(|(page, pages)| LogOp::Zero { page, pages }),
    ]
}

const LOG_AT: u64 = MIB;
const LOG_LEN: u64 = MIB;
/// Descriptors target pages from 2 MiB on (past the header section and log).
const TARGET_BASE: u64 = 2 * MIB;

fn write_entry(
    ring: &mut [u8],
    pos: u64,
    seq: u64,
    tail: u64,
    guid: Uuid,
    ops: &[LogOp],
    file_len: u64,
) -> u64 {
    let pages: Vec<Vec<u8>> = ops
        .iter()
        .map(|op| match *op {
            LogOp::Data { seed, .. } => random_bytes(seed, 4096),
            LogOp::Zero { .. } => Vec::new(),
        })
        .collect();
    let updates: Vec<LogUpdate> = ops
        .iter()
        .zip(&pages)
        .map(|(op, page)| match *op {
            LogOp::Data { page: p, .. } => LogUpdate::Data {
                file_offset: TARGET_BASE + p * 4096,
                page,
            },
            LogOp::Zero { page, pages } => LogUpdate::Zero {
                file_offset: TARGET_BASE + page * 4096,
                length: pages * 4096,
            },
        })
        .collect();
    let fields = EntryFields {
        sequence_number: seq,
        tail: tail as u32,
        log_guid: guid,
        flushed_file_offset: file_len,
        last_file_offset: file_len,
    };
    let b = encode_entry(&fields, &updates);
    for (i, x) in b.iter().enumerate() {
        ring[((pos + i as u64) % LOG_LEN) as usize] = *x;
    }
    b.len() as u64
}

proptest! {
    #![proptest_config(config(64))]

    #[test]
    fn log_sequences_replay_what_was_written(
        entries in prop::collection::vec(prop::collection::vec(log_op(), 0..6), 1..6),
        start_sector in 0u64..256,
        first_seq in 1u64..u64::MAX / 2,
        guid in uuid(),
        stale in any::<bool>(),
    ) {
        let file_len = 16 * MIB;
        let mut ring = vec![0u8; LOG_LEN as usize];
        let start = start_sector * 4096;
        // An older entry of another log in the way must not matter.
        if stale {
            let end = (start + LOG_LEN / 2) % LOG_LEN;
            write_entry(&mut ring, end, 7, end, Uuid::from_u128(1), &[], file_len);
        }
        let mut pos = start;
        let mut positions = Vec::new();
        for (i, ops) in entries.iter().enumerate() {
            positions.push(pos);
            pos = (pos + write_entry(&mut ring, pos, first_seq + i as u64, start, guid, ops, file_len)) % LOG_LEN;
        }
        let mut file = vec![0u8; file_len as usize];
        file[LOG_AT as usize..(LOG_AT + LOG_LEN) as usize].copy_from_slice(&ring);
        let storage = MemStorage::new(file);
        let plan = log_replay::plan(&storage, "log", LOG_AT, LOG_LEN, guid, storage.len().unwrap()).unwrap();
        prop_assert_eq!(plan.entries.len(), entries.len());
        for (k, e) in plan.entries.iter().enumerate() {
            prop_assert_eq!(e.log_position, positions[k]);
            prop_assert_eq!(e.sequence_number, first_seq + k as u64);
            prop_assert_eq!(e.descriptor_count as usize, entries[k].len());
        }
        let want: Vec<&LogOp> = entries.iter().flatten().collect();
        prop_assert_eq!(plan.ops.len(), want.len());
        for (got, want) in plan.ops.iter().zip(want) {
            match (got, want) {
                (ReplayOp::Data { file_offset, bytes }, LogOp::Data { page, seed }) => {
                    prop_assert_eq!(*file_offset, TARGET_BASE + page * 4096);
                    prop_assert!(bytes[..] == random_bytes(*seed, 4096)[..]);
                }
                (ReplayOp::Zero { file_offset, length }, LogOp::Zero { page, pages }) => {
                    prop_assert_eq!(*file_offset, TARGET_BASE + page * 4096);
                    prop_assert_eq!(*length, pages * 4096);
                }
                (g, w) => prop_assert!(false, "{:?} vs {:?}", g, w),
            }
        }
        prop_assert_eq!(plan.flushed_file_offset, file_len);
        // The file shorter than FlushedFileOffset: refused as truncated.
        let short = MemStorage::new(storage.to_vec()[..(file_len - MIB) as usize].to_vec());
        prop_assert!(log_replay::plan(&short, "log", LOG_AT, LOG_LEN, guid, file_len - MIB).is_err());
        // Another LogGuid: nothing to replay.
        prop_assert!(log_replay::plan(&storage, "log", LOG_AT, LOG_LEN, Uuid::from_u128(2), file_len).is_err());
    }
}

/// Keys the same up to case are distinct keys (lookups are case-sensitive),
/// and the round trip keeps file order.
#[test]
fn parent_locator_keeps_order_and_case() {
    let loc = ParentLocator {
        locator_type: guids::LOCATOR_TYPE_VHDX,
        entries: vec![
            ("relative_path".into(), "..\\a\\b.vhdx".into()),
            ("Relative_Path".into(), "\u{1F600}\u{10FFFF}é".into()),
            ("parent_linkage".into(), String::new()),
        ],
    };
    let back = ParentLocator::parse(&loc.to_bytes()).unwrap();
    assert_eq!(back, loc);
    let keys: BTreeSet<&str> = back.entries.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys.len(), 3);
}
