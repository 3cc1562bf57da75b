//! Hostile inputs: valid images built in memory by `vhdx::create`, then
//! truncated at every structure boundary, flipped bit by bit, and given
//! extreme field values (with their CRCs re-signed so the parser gets past
//! the checksums). Every case must open to `Ok` (then reads may fail but not
//! panic) or to a typed `vhdx::Error` naming the file (and, for corruption,
//! the offset); `check::check` must not panic and must report corruption it
//! was shown. A counting global allocator checks that no single allocation
//! made while opening is sized from an untrusted field: none may exceed
//! 2 × the file size + 16 MiB.

mod common;
use common::Rng;
use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use uuid::Uuid;
use vhdx::create::{create, BlockContent, CreateParams, ParentLink};
use vhdx::format::bat_entry::{self, PayloadState};
use vhdx::format::guids;
use vhdx::format::header::Header;
use vhdx::format::log::{encode_entry, EntryFields, LogUpdate};
use vhdx::format::{HEADER1_OFFSET, HEADER2_OFFSET, MIB, REGION1_OFFSET, REGION2_OFFSET};
use vhdx::{check, Disk, Error, LogStatus, MemStorage, OpenOptions, Run, Severity, Storage};
use vhdx::{Problem, VhdxFile};

// ---------------------------------------------------------------------------
// Counting allocator (shared with the other crates' hostile tests).

#[global_allocator]
static ALLOC: vhdx::counting_alloc::CountingAlloc = vhdx::counting_alloc::CountingAlloc;
use vhdx::counting_alloc::measure;

// ---------------------------------------------------------------------------
// Storage: a shared pristine image with a few patched byte ranges and a
// length of its own (shorter = truncated, longer = zero-extended), so that
// tens of thousands of mutants cost no copies.

#[derive(Clone)]
struct Img {
    base: Arc<Vec<u8>>,
    patches: Vec<(u64, Vec<u8>)>,
    len: u64,
}

impl Img {
    fn new(base: &Arc<Vec<u8>>) -> Self {
        Img {
            base: base.clone(),
            patches: Vec::new(),
            len: base.len() as u64,
        }
    }

    fn patch(&mut self, offset: u64, bytes: &[u8]) {
        self.patches.push((offset, bytes.to_vec()));
    }

    fn truncated(&self, len: u64) -> Self {
        Img {
            len,
            ..self.clone()
        }
    }

    /// The bytes at `offset`, zeros past the end of the base.
    fn bytes(&self, offset: u64, len: usize) -> Vec<u8> {
        let mut out = vec![0u8; len];
        let end = offset + len as u64;
        let base_end = (self.base.len() as u64).min(end);
        if offset < base_end {
            out[..(base_end - offset) as usize]
                .copy_from_slice(&self.base[offset as usize..base_end as usize]);
        }
        for (at, p) in &self.patches {
            let (s, t) = ((*at).max(offset), (at + p.len() as u64).min(end));
            if s < t {
                out[(s - offset) as usize..(t - offset) as usize]
                    .copy_from_slice(&p[(s - at) as usize..(t - at) as usize]);
            }
        }
        out
    }

    fn u64_at(&self, offset: u64) -> u64 {
        u64::from_le_bytes(self.bytes(offset, 8).try_into().unwrap())
    }

    fn u32_at(&self, offset: u64) -> u32 {
        u32::from_le_bytes(self.bytes(offset, 4).try_into().unwrap())
    }

    fn flip(&mut self, offset: u64, bit: u32) {
        let b = self.bytes(offset, 1)[0] ^ (1 << bit);
        self.patch(offset, &[b]);
    }

    fn set(&mut self, offset: u64, width: usize, value: u64) {
        self.patch(offset, &value.to_le_bytes()[..width]);
    }

    fn to_vec(&self) -> Vec<u8> {
        self.bytes(0, self.len as usize)
    }
}

impl Storage for Img {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|&e| e <= self.len)
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "past the end"))?;
        debug_assert!(end <= self.len);
        buf.copy_from_slice(&self.bytes(offset, buf.len()));
        Ok(())
    }
    fn write_at(&self, _buf: &[u8], _offset: u64) -> io::Result<()> {
        Err(io::Error::other("hostile test storage is read-only"))
    }
    fn flush(&self) -> io::Result<()> {
        Ok(())
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.len)
    }
    fn set_len(&self, _len: u64) -> io::Result<()> {
        Err(io::Error::other("hostile test storage is read-only"))
    }
}

// ---------------------------------------------------------------------------
// The pristine images and where their structures are.

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Dynamic,
    Differencing,
    Dynamic4k,
    Log,
}

struct Base {
    kind: Kind,
    name: String,
    img: Img,
    /// The parent of a differencing image.
    parent: Option<Img>,
    /// The image's guest bytes as a model (for the log image: after replay).
    guest: Vec<u8>,
    log_offset: u64,
    log_len: u64,
    md_offset: u64,
    md_len: u64,
    bat_offset: u64,
    bat_len: u64,
    /// Bytes of BAT the disk uses.
    bat_used: u64,
    payload_blocks: u64,
    has_parent: bool,
    /// (item GUID, absolute offset, length)
    items: Vec<(Uuid, u64, u32)>,
    md_count: usize,
    /// Allocated payload and bitmap blocks: (BAT index, file offset, bytes needed).
    allocated: Vec<(usize, u64, u64)>,
    /// Log entries: (absolute offset, length).
    log_entries: Vec<(u64, u32)>,
    /// The log entries' FlushedFileOffset (the pristine file length).
    flushed: u64,
}

const BLOCK: u64 = MIB;

fn build(kind: Kind) -> Base {
    let name = format!("hostile-{kind:?}.vhdx").to_lowercase();
    // The log image is the dynamic one plus a log: same contents.
    let seed = if kind == Kind::Log {
        Kind::Dynamic
    } else {
        kind
    };
    let mut rng = Rng(seed as u64 + 17);
    let (params, blocks, parent) = match kind {
        Kind::Dynamic | Kind::Log => {
            let mut p = CreateParams::dynamic(8 * MIB - 3 * 512);
            p.block_size = BLOCK as u32;
            p.data_write_guid = Uuid::from_u128(0xD1);
            let mut b = BTreeMap::new();
            b.insert(0, BlockContent::Full(rng.bytes(BLOCK as usize)));
            b.insert(2, BlockContent::Full(rng.bytes(300_000)));
            b.insert(3, BlockContent::Zero);
            b.insert(4, BlockContent::Unmapped);
            b.insert(5, BlockContent::Undefined);
            b.insert(7, BlockContent::Full(rng.bytes((BLOCK - 1536) as usize)));
            (p, b, None)
        }
        Kind::Differencing => {
            let parent = build(Kind::Dynamic);
            let link = ParentLink::relative(Uuid::from_u128(0xD1), "hostile-dynamic.vhdx");
            let mut p = CreateParams::differencing(6 * MIB, link);
            p.block_size = BLOCK as u32;
            let mut b = BTreeMap::new();
            b.insert(0, BlockContent::Full(rng.bytes(BLOCK as usize)));
            for i in [1, 3] {
                b.insert(
                    i,
                    BlockContent::Partial {
                        data: rng.bytes(BLOCK as usize),
                        present: rng.bools((BLOCK / 512) as usize),
                    },
                );
            }
            b.insert(4, BlockContent::Zero);
            (p, b, Some(parent))
        }
        Kind::Dynamic4k => {
            let mut p = CreateParams::dynamic(6 * MIB + 3 * 4096);
            p.block_size = 2 << 20;
            p.logical_sector_size = 4096;
            let mut b = BTreeMap::new();
            b.insert(0, BlockContent::Full(rng.bytes(2 << 20)));
            b.insert(2, BlockContent::Zero);
            b.insert(3, BlockContent::Full(rng.bytes(3 * 4096)));
            (p, b, None)
        }
    };
    let mem = MemStorage::new(Vec::new());
    create(&mem, &name, &params, &blocks).expect("create");
    let mut bytes = mem.to_vec();
    let mut log_entries = Vec::new();
    let flushed = bytes.len() as u64;
    if kind == Kind::Log {
        log_entries = add_dirty_log(&mut bytes);
    }
    let img = Img::new(&Arc::new(bytes));
    let parent_img = parent.as_ref().map(|p| p.img.clone());

    // Where everything is, from a strict open of the pristine image.
    let f = VhdxFile::open(Box::new(img.clone()), &name, OpenOptions::read_only())
        .unwrap_or_else(|e| panic!("pristine {name}: {e}"));
    assert!(f.problems().is_empty(), "{name}: {:?}", f.problems());
    let g = *f.geometry();
    let mut allocated = Vec::new();
    for b in 0..g.payload_blocks {
        let i = g.payload_entry(b);
        let e = f.bat()[i];
        if PayloadState::from_bits(bat_entry::state_bits(e)).is_some_and(|s| s.has_data()) {
            allocated.push((
                i,
                bat_entry::file_offset(e),
                g.block_len(b).next_multiple_of(g.logical_sector_size),
            ));
        }
    }
    if g.has_parent {
        for c in 0..g.chunks {
            let i = g.bitmap_entry(c);
            let e = f.bat()[i];
            if bat_entry::state_bits(e) == bat_entry::SB_BLOCK_PRESENT {
                allocated.push((i, bat_entry::file_offset(e), MIB));
            }
        }
    }
    let md = f.metadata_region().clone();
    let items = f
        .metadata()
        .entries
        .iter()
        .map(|e| (e.item_id, md.file_offset + e.offset as u64, e.length))
        .collect();
    let mut guest = vec![0u8; f.virtual_size() as usize];
    f.read_at(&mut guest, 0).unwrap();
    if let Some(p) = &parent {
        // The differencing model: parent bytes wherever the child has none.
        let mut off = 0usize;
        f.for_each_run(0, f.virtual_size(), &mut |r| {
            let n = r.len() as usize;
            if let Run::Parent { .. } = r {
                let end = (off + n).min(p.guest.len());
                if off < end {
                    guest[off..end].copy_from_slice(&p.guest[off..end]);
                }
            }
            off += n;
            Ok(())
        })
        .unwrap();
    }
    Base {
        kind,
        name,
        parent: parent_img,
        guest,
        log_offset: f.header().log_offset,
        log_len: f.header().log_length as u64,
        md_offset: md.file_offset,
        md_len: md.length as u64,
        bat_offset: f.bat_region().file_offset,
        bat_len: f.bat_region().length as u64,
        bat_used: g.bat_entries() * 8,
        payload_blocks: g.payload_blocks,
        has_parent: g.has_parent,
        items,
        md_count: f.metadata().entries.len(),
        allocated,
        log_entries,
        flushed,
        img,
    }
}

const LOG_GUID: Uuid = Uuid::from_u128(0x1096_0000_0000_4000_8000_0000_0000_0042);
/// Sequence number of the first log entry (high half non-zero, to exercise SequenceHigh).
const LOG_SEQ: u64 = 0x1_0000_0005;

enum LogOp {
    Data(u64, Vec<u8>),
    Zero(u64, u64),
}

/// One log entry (2.3.1) with a valid checksum.
fn log_entry(seq: u64, tail: u32, flushed: u64, last: u64, ops: &[LogOp]) -> Vec<u8> {
    let updates: Vec<LogUpdate> = ops
        .iter()
        .map(|op| match op {
            LogOp::Data(off, page) => LogUpdate::Data {
                file_offset: *off,
                page,
            },
            LogOp::Zero(off, n) => LogUpdate::Zero {
                file_offset: *off,
                length: *n,
            },
        })
        .collect();
    let fields = EntryFields {
        sequence_number: seq,
        tail,
        log_guid: LOG_GUID,
        flushed_file_offset: flushed,
        last_file_offset: last,
    };
    encode_entry(&fields, &updates)
}

fn pattern(seed: u8) -> Vec<u8> {
    (0..4096u32)
        .map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed))
        .collect()
}

/// Makes `bytes` (the Dynamic image) dirty: two log entries that, replayed,
/// rewrite the BAT page (block 0 → ZERO, block 4 → FULLY_PRESENT at the old
/// end of the file), zero the first 8 KiB of block 2, write the first two
/// pages of the new block 4, and extend the file by one block.
fn add_dirty_log(bytes: &mut [u8]) -> Vec<(u64, u32)> {
    let old_len = bytes.len() as u64;
    let bat = 3 * MIB;
    let mut page = bytes[bat as usize..bat as usize + 4096].to_vec();
    let block2 = bat_entry::file_offset(u64::from_le_bytes(page[16..24].try_into().unwrap()));
    page[0..8].copy_from_slice(&bat_entry::make(PayloadState::Zero.bits(), 0).to_le_bytes());
    page[32..40].copy_from_slice(
        &bat_entry::make(PayloadState::FullyPresent.bits(), old_len).to_le_bytes(),
    );
    let last = old_len + BLOCK;
    let e1 = log_entry(
        LOG_SEQ,
        0,
        old_len,
        last,
        &[
            LogOp::Data(bat, page),
            LogOp::Zero(block2, 8192),
            LogOp::Data(old_len, pattern(1)),
        ],
    );
    let e2 = log_entry(
        LOG_SEQ + 1,
        0,
        old_len,
        last,
        &[LogOp::Data(old_len + 4096, pattern(2))],
    );
    let log = MIB as usize;
    let at2 = log + e1.len();
    let entries = vec![(log as u64, e1.len() as u32), (at2 as u64, e2.len() as u32)];
    bytes[log..log + e1.len()].copy_from_slice(&e1);
    bytes[at2..at2 + e2.len()].copy_from_slice(&e2);
    for off in [HEADER1_OFFSET, HEADER2_OFFSET] {
        let at = off as usize;
        let mut h = Header::parse(&bytes[at..at + 4096]).unwrap();
        h.log_guid = LOG_GUID;
        bytes[at..at + 4096].copy_from_slice(&h.to_bytes());
    }
    entries
}

// ---------------------------------------------------------------------------
// Re-signing CRCs after a mutation.

fn crc_with_zeroed_field(b: &[u8]) -> u32 {
    let crc = crc32c::crc32c(&b[..4]);
    let crc = crc32c::crc32c_append(crc, &[0u8; 4]);
    crc32c::crc32c_append(crc, &b[8..])
}

fn resign(img: &mut Img, base: &Base) {
    for off in [HEADER1_OFFSET, HEADER2_OFFSET] {
        let crc = crc_with_zeroed_field(&img.bytes(off, 4096));
        img.patch(off + 4, &crc.to_le_bytes());
    }
    for off in [REGION1_OFFSET, REGION2_OFFSET] {
        let crc = crc_with_zeroed_field(&img.bytes(off, 65536));
        img.patch(off + 4, &crc.to_le_bytes());
    }
    for &(at, orig_len) in &base.log_entries {
        let len = img.u32_at(at + 8) as u64;
        let len =
            if len == 0 || !len.is_multiple_of(4096) || at + len > base.log_offset + base.log_len {
                orig_len as u64
            } else {
                len
            };
        let crc = crc_with_zeroed_field(&img.bytes(at, len as usize));
        img.patch(at + 4, &crc.to_le_bytes());
    }
}

// ---------------------------------------------------------------------------
// Running one case.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    Any,
    Ok,
    Corrupt(&'static str),
}

#[derive(Default, Debug)]
struct Tally {
    cases: usize,
    ok: usize,
    errors: BTreeMap<String, usize>,
    peak_alloc: usize,
}

impl Tally {
    fn print(&self, what: &str) {
        println!(
            "{what}: {} cases, {} opened, largest allocation {} KiB, errors {:?}",
            self.cases,
            self.ok,
            self.peak_alloc >> 10,
            self.errors
        );
    }
}

fn error_kind(e: &Error) -> String {
    match e {
        Error::Corrupt { what, .. } => format!("Corrupt({what})"),
        Error::Io { .. } => "Io".into(),
        Error::Unsupported { .. } => "Unsupported".into(),
        Error::LogNeedsReplay { .. } => "LogNeedsReplay".into(),
        other => format!("{other:?}")
            .split([' ', '{'])
            .next()
            .unwrap_or("?")
            .to_string(),
    }
}

fn alloc_limit(img: &Img) -> usize {
    (2 * img.len + 16 * MIB) as usize
}

/// Opens `img` strictly and leniently, reads a few ranges, runs `check`,
/// and asserts every invariant; returns the strict open's error, if any.
fn run_case(
    base: &Base,
    label: &str,
    img: &Img,
    expect: Expect,
    tally: &mut Tally,
) -> Option<Error> {
    let ctx = || format!("{} / {label}", base.name);
    tally.cases += 1;
    let (strict, peak) =
        measure(|| VhdxFile::open(Box::new(img.clone()), &base.name, OpenOptions::read_only()));
    assert!(
        peak <= alloc_limit(img),
        "{}: strict open of a {}-byte file allocated {peak} bytes at once",
        ctx(),
        img.len
    );
    tally.peak_alloc = tally.peak_alloc.max(peak);
    let lenient_opts = OpenOptions {
        lenient: true,
        ..OpenOptions::read_only()
    };
    let strict_err = match strict {
        Ok(f) => {
            // A lenient open of a file with no errors is the same open.
            tally.ok += 1;
            exercise(base, f);
            None
        }
        Err(e) => {
            assert_typed(base, &e, &ctx());
            *tally.errors.entry(error_kind(&e)).or_default() += 1;
            let (lenient, peak) =
                measure(|| VhdxFile::open(Box::new(img.clone()), &base.name, lenient_opts));
            assert!(
                peak <= alloc_limit(img),
                "{}: lenient open of a {}-byte file allocated {peak} bytes at once",
                ctx(),
                img.len
            );
            match lenient {
                Ok(f) => exercise(base, f),
                Err(e) => assert_typed(base, &e, &ctx()),
            }
            Some(e)
        }
    };
    let (report, peak) = measure(|| check::check(Box::new(img.clone()), &base.name));
    assert!(
        peak <= alloc_limit(img),
        "{}: check allocated {peak} bytes at once",
        ctx()
    );
    match (&strict_err, report) {
        (Some(Error::Corrupt { .. }), Ok(r)) => {
            assert!(
                r.problems.iter().any(|p| p.severity == Severity::Error),
                "{}: strict open failed with {} but check found no error: {:?}",
                ctx(),
                strict_err.as_ref().unwrap(),
                r.problems
            );
            for p in &r.problems {
                assert_plausible(base, img, p, &ctx());
            }
        }
        (Some(Error::Corrupt { .. }), Err(e)) => {
            // check reports corruption in its result; only I/O and
            // unsupported features may still be errors.
            assert!(
                matches!(e, Error::Unsupported { .. } | Error::Io { .. }),
                "{}: check failed with {e} on a corrupt image",
                ctx()
            );
        }
        (_, Ok(r)) => {
            for p in &r.problems {
                assert_plausible(base, img, p, &ctx());
            }
        }
        (_, Err(e)) => assert_typed(base, &e, &ctx()),
    }
    match expect {
        Expect::Any => {}
        Expect::Ok => assert!(
            strict_err.is_none(),
            "{}: expected Ok, got {}",
            ctx(),
            strict_err.unwrap()
        ),
        Expect::Corrupt(what) => match &strict_err {
            Some(Error::Corrupt { what: w, .. }) if *w == what => {}
            other => panic!("{}: expected Corrupt({what}), got {other:?}", ctx()),
        },
    }
    strict_err
}

/// Errors are typed, name the file, and (for corruption and I/O) the offset.
fn assert_typed(base: &Base, e: &Error, ctx: &str) {
    let s = e.to_string();
    assert!(
        s.contains(&base.name),
        "{ctx}: error does not name the file: {s}"
    );
    match e {
        Error::Corrupt { .. } | Error::Io { .. } => {
            assert!(
                s.contains("offset 0x"),
                "{ctx}: error does not name the offset: {s}"
            )
        }
        Error::Unsupported { .. } => {}
        other => panic!("{ctx}: unexpected error kind from open: {other:?}"),
    }
}

/// A problem's offset lies inside the file (or the log's extension of it).
fn assert_plausible(base: &Base, img: &Img, p: &Problem, ctx: &str) {
    // A log may extend the file to its LastFileOffset (at most 2^48).
    let mut limit = img.len;
    for &(at, _) in &base.log_entries {
        limit = limit.max(img.u64_at(at + 56).min(1 << 48));
    }
    assert!(
        p.offset < limit.max(1),
        "{ctx}: problem at offset {:#x} beyond the {:#x}-byte file: {p:?}",
        p.offset,
        img.len
    );
    assert!(!p.message.is_empty(), "{ctx}: empty problem message");
}

/// Reads a few ranges through the file, the run API and a chain; they may
/// fail but must not panic, and what they return must be consistent.
fn exercise(base: &Base, f: VhdxFile) {
    let vs = f.virtual_size();
    let bs = f.block_size();
    let ranges = [
        (0, 4096),
        (bs.saturating_sub(1000), 3000),
        (vs / 2, 70_000),
        (vs.saturating_sub(4096), 4096),
        (vs.saturating_sub(1), 1),
        (vs, 1),
        (u64::MAX - 10, 100),
    ];
    let ranges: Vec<(u64, u64)> = ranges.iter().map(|&(o, l)| (o, l.min(vs.max(1)))).collect();
    for &(off, len) in &ranges {
        let mut buf = vec![0u8; len as usize];
        let _ = f.read_at(&mut buf, off);
        let mut total = 0;
        if f.for_each_run(off, len, &mut |r| {
            total += r.len();
            Ok(())
        })
        .is_ok()
        {
            assert_eq!(total, len);
        }
    }
    let mut files = vec![(PathBuf::from(&base.name), f)];
    if let Some(p) = &base.parent {
        let pf = VhdxFile::open(
            Box::new(p.clone()),
            "hostile-dynamic.vhdx",
            OpenOptions::read_only(),
        )
        .unwrap();
        files.push((PathBuf::from("hostile-dynamic.vhdx"), pf));
    }
    let Ok(disk) = Disk::from_files(files, true) else {
        return;
    };
    for &(off, len) in &ranges {
        let mut buf = vec![0u8; len as usize];
        let _ = disk.read_at(&mut buf, off);
        let mut pos = 0u64;
        let _ = disk.for_each_run(off, len, &mut |r| {
            if let Run::Data { file, offset, len } = r {
                let mut b = vec![0u8; len as usize];
                let _ = disk.layers()[file].file.read_file_at(&mut b, offset);
            }
            pos += r.len();
            Ok(())
        });
    }
}

// ---------------------------------------------------------------------------
// The mutations.

/// A structure to flip bits in.
struct Target {
    name: String,
    offset: u64,
    /// Leading bytes (the fields) to flip every bit of.
    dense: u64,
    /// Bytes (from the start) to flip one bit of each...
    sparse: u64,
    /// ...or of every `stride`-th one, with the last 8 always included.
    stride: u64,
}

fn target(name: impl Into<String>, offset: u64, dense: u64, sparse: u64) -> Target {
    Target {
        name: name.into(),
        offset,
        dense,
        sparse,
        stride: 1,
    }
}

/// Every structure and the first 4 KiB of each.
fn structures(base: &Base) -> Vec<Target> {
    let mut s = vec![
        target("file identifier", 0, 16, 4096),
        target("header 1", HEADER1_OFFSET, 80, 4096),
        target("header 2", HEADER2_OFFSET, 80, 4096),
        target("region table 1", REGION1_OFFSET, 16 + 3 * 32, 4096),
        target("region table 2", REGION2_OFFSET, 16 + 3 * 32, 4096),
        target(
            "metadata table",
            base.md_offset,
            32 + 32 * base.md_count as u64 + 32,
            4096,
        ),
        target("metadata items", base.md_offset + 65536, 64, 4096),
        target("BAT", base.bat_offset, base.bat_used.min(256), 4096),
        target("log", base.log_offset, 0, 4096),
    ];
    if base.kind == Kind::Log {
        // The rest is the dynamic image's layout, flipped byte by byte by
        // its own test (and the log rewrites the BAT page anyway); every
        // open of this image scans the whole log, so sample the headers'
        // reserved bytes.
        s.retain(|x| x.name.starts_with("header"));
        for t in &mut s {
            t.stride = 16;
        }
    }
    if let Some(&(_, off, _)) = base.items.iter().find(|i| i.0 == guids::PARENT_LOCATOR) {
        s.push(target("parent locator", off, 20 + 12 * 4, 0));
    }
    for &(i, off, _) in &base.allocated {
        s.push(target(format!("block of BAT entry {i}"), off, 0, 4096));
    }
    for (k, &(at, len)) in base.log_entries.iter().enumerate() {
        // The descriptor sector byte by byte; in the data sectors the
        // signature and sequence fields bit by bit, the data sampled.
        s.push(target(format!("log entry {k}"), at, 64 + 32 * 3, 4096));
        for d in (4096..len as u64).step_by(4096) {
            s.push(Target {
                stride: 13,
                ..target(format!("log entry {k} data sector at {d}"), at + d, 8, 4096)
            });
        }
    }
    s
}

/// Fields to set to extreme values: (name, file offset, width).
fn fields(base: &Base) -> Vec<(String, u64, usize)> {
    let mut f: Vec<(String, u64, usize)> = Vec::new();
    for (h, off) in [("header 1", HEADER1_OFFSET), ("header 2", HEADER2_OFFSET)] {
        for (name, at, w) in [
            ("sequence", 8, 8),
            ("log version", 64, 2),
            ("version", 66, 2),
            ("log length", 68, 4),
            ("log offset", 72, 8),
        ] {
            f.push((format!("{h} {name}"), off + at, w));
        }
    }
    for (r, off) in [
        ("region table 1", REGION1_OFFSET),
        ("region table 2", REGION2_OFFSET),
    ] {
        f.push((format!("{r} entry count"), off + 8, 4));
        for i in 0..3u64 {
            let at = off + 16 + 32 * i;
            f.push((format!("{r} entry {i} offset"), at + 16, 8));
            f.push((format!("{r} entry {i} length"), at + 24, 4));
            f.push((format!("{r} entry {i} required"), at + 28, 4));
        }
    }
    f.push(("metadata entry count".into(), base.md_offset + 10, 2));
    for i in 0..base.md_count as u64 + 1 {
        let at = base.md_offset + 32 + 32 * i;
        f.push((format!("metadata entry {i} offset"), at + 16, 4));
        f.push((format!("metadata entry {i} length"), at + 20, 4));
        f.push((format!("metadata entry {i} flags"), at + 24, 4));
    }
    for &(id, off, _) in &base.items {
        match id {
            guids::FILE_PARAMETERS => {
                f.push(("block size".into(), off, 4));
                f.push(("file parameter flags".into(), off + 4, 4));
            }
            guids::VIRTUAL_DISK_SIZE => f.push(("virtual size".into(), off, 8)),
            guids::LOGICAL_SECTOR_SIZE => f.push(("logical sector size".into(), off, 4)),
            guids::PHYSICAL_SECTOR_SIZE => f.push(("physical sector size".into(), off, 4)),
            guids::PARENT_LOCATOR => {
                f.push(("locator count".into(), off + 18, 2));
                for i in 0..3u64 {
                    let at = off + 20 + 12 * i;
                    f.push((format!("locator {i} key offset"), at, 4));
                    f.push((format!("locator {i} value offset"), at + 4, 4));
                    f.push((format!("locator {i} key length"), at + 8, 2));
                    f.push((format!("locator {i} value length"), at + 10, 2));
                }
            }
            _ => {}
        }
    }
    for (k, &(at, len)) in base.log_entries.iter().enumerate() {
        for (name, o, w) in [
            ("entry length", 8, 4),
            ("tail", 12, 4),
            ("sequence", 16, 8),
            ("descriptor count", 24, 4),
            ("flushed file offset", 48, 8),
            ("last file offset", 56, 8),
        ] {
            f.push((format!("log entry {k} {name}"), at + o, w));
        }
        let count = base.img.u32_at(at + 24) as u64;
        for d in 0..count {
            let da = at + 64 + 32 * d;
            f.push((
                format!("log entry {k} descriptor {d} length/leading"),
                da + 8,
                8,
            ));
            f.push((
                format!("log entry {k} descriptor {d} file offset"),
                da + 16,
                8,
            ));
            f.push((format!("log entry {k} descriptor {d} sequence"), da + 24, 8));
        }
        let mut s = 4096;
        while s < len as u64 {
            f.push((
                format!("log entry {k} data sector {s} sequence high"),
                at + s + 4,
                4,
            ));
            f.push((
                format!("log entry {k} data sector {s} sequence low"),
                at + s + 4092,
                4,
            ));
            s += 4096;
        }
    }
    f
}

fn extreme_values(base: &Base, width: usize, orig: u64) -> Vec<u64> {
    let len = base.img.len;
    let mut v: Vec<u64> = vec![
        0,
        1,
        2,
        3,
        7,
        0x7F,
        0x80,
        0xFF,
        511,
        512,
        513,
        4095,
        4096,
        4097,
        0x7FFF,
        0x8000,
        0xFFFF,
        0x1_0000,
        MIB - 1,
        MIB,
        MIB + 1,
        2 * MIB,
        3 * MIB,
        4 * MIB,
        64 * MIB,
        256 * MIB,
        512 * MIB,
        1 << 31,
        u32::MAX as u64 - 4095,
        0xFFF0_0000,
        u32::MAX as u64,
        1 << 32,
        1 << 40,
        64 << 40,
        (64 << 40) + 512,
        1 << 48,
        (1 << 48) + 4096,
        1 << 63,
        u64::MAX - MIB + 1,
        u64::MAX - 4095,
        u64::MAX - 1,
        u64::MAX,
        len,
        len.next_multiple_of(MIB),
        len + MIB,
        orig.wrapping_add(1),
        orig.wrapping_sub(1),
        orig.wrapping_add(4096),
        orig.wrapping_add(MIB),
        orig ^ (1 << (8 * width - 1)),
    ];
    let mask = if width == 8 {
        u64::MAX
    } else {
        (1u64 << (8 * width)) - 1
    };
    for x in &mut v {
        *x &= mask;
    }
    v.push(mask);
    let set: BTreeSet<u64> = v.into_iter().filter(|&x| x != orig).collect();
    set.into_iter().collect()
}

/// What truncating to `len` must give.
fn truncation_expect(base: &Base, len: u64) -> Expect {
    if len < REGION2_OFFSET + 65536 {
        return Expect::Corrupt("file");
    }
    if base.kind == Kind::Log {
        if len < base.log_offset + base.log_len {
            return Expect::Corrupt("header");
        }
        if len < base.flushed {
            return Expect::Corrupt("log");
        }
        return Expect::Ok;
    }
    let regions_end = (base.bat_offset + base.bat_len).max(base.md_offset + base.md_len);
    if len < regions_end {
        return Expect::Corrupt("region table");
    }
    let needed = base
        .allocated
        .iter()
        .map(|&(_, o, n)| o + n)
        .max()
        .unwrap_or(0);
    if len < needed {
        return Expect::Corrupt("BAT");
    }
    Expect::Ok
}

fn truncation_points(base: &Base) -> BTreeSet<u64> {
    let mut p: Vec<u64> = vec![
        0,
        8,
        520,
        64 << 10,
        68 << 10,
        128 << 10,
        192 << 10,
        256 << 10,
        320 << 10,
        384 << 10,
        MIB,
        base.log_offset + base.log_len,
        base.md_offset,
        base.md_offset + 65536,
        base.md_offset + base.md_len,
        base.bat_offset,
        base.bat_offset + base.bat_used,
        base.bat_offset + base.bat_len,
        base.img.len,
    ];
    for &(_, off, len) in &base.items {
        p.push(off);
        p.push(off + len as u64);
    }
    for &(_, off, n) in &base.allocated {
        p.push(off);
        p.push(off + n);
        p.push(off + 4096);
    }
    for &(at, len) in &base.log_entries {
        p.push(at);
        p.push(at + len as u64);
    }
    let mut out = BTreeSet::new();
    for x in p {
        for d in [-8i64, -1, 0, 1, 8] {
            if let Some(y) = x.checked_add_signed(d) {
                out.insert(y);
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------
// The tests.

fn bases() -> &'static [Base] {
    static B: std::sync::OnceLock<Vec<Base>> = std::sync::OnceLock::new();
    B.get_or_init(|| {
        [
            Kind::Dynamic,
            Kind::Differencing,
            Kind::Dynamic4k,
            Kind::Log,
        ]
        .map(build)
        .into()
    })
}

fn base(kind: Kind) -> &'static Base {
    bases().iter().find(|b| b.kind == kind).unwrap()
}

const KINDS: [Kind; 4] = [
    Kind::Dynamic,
    Kind::Differencing,
    Kind::Dynamic4k,
    Kind::Log,
];

#[test]
fn pristine_images_read_as_created() {
    for b in bases() {
        let f = VhdxFile::open(Box::new(b.img.clone()), &b.name, OpenOptions::read_only()).unwrap();
        let mut files = vec![(PathBuf::from(&b.name), f)];
        if let Some(p) = &b.parent {
            let pf = VhdxFile::open(Box::new(p.clone()), "p", OpenOptions::read_only()).unwrap();
            files.push((PathBuf::from("p"), pf));
        }
        let disk = Disk::from_files(files, false).unwrap();
        let mut all = vec![0u8; b.guest.len()];
        disk.read_at(&mut all, 0).unwrap();
        assert!(all == b.guest, "{}", b.name);
        let r = check::check(Box::new(b.img.clone()), &b.name).unwrap();
        assert!(r.problems.is_empty(), "{}: {:?}", b.name, r.problems);
    }
}

/// The dirty log is real: replayed in memory a read-only open sees the BAT
/// page it rewrites; replayed to disk the file changes the same way.
#[test]
fn dirty_log_replays_in_memory_and_on_disk() {
    let log = base(Kind::Log);
    let clean = base(Kind::Dynamic);
    let f = VhdxFile::open(
        Box::new(log.img.clone()),
        &log.name,
        OpenOptions::read_only(),
    )
    .unwrap();
    match f.log_status() {
        LogStatus::ReplayedInMemory(plan) => {
            assert_eq!(plan.entries.len(), 2);
            assert_eq!(plan.entries[0].sequence_number, LOG_SEQ);
            assert_eq!(plan.ops.len(), 4);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(f.file_len(), log.flushed + BLOCK);
    let expect_guest = |g: &[u8]| {
        // Block 0 became ZERO through the rewritten BAT page.
        assert!(g[..BLOCK as usize].iter().all(|&x| x == 0));
        assert!(clean.guest[..BLOCK as usize].iter().any(|&x| x != 0));
        // Block 2's first 8 KiB were zeroed, the rest is unchanged.
        let b2 = 2 * BLOCK as usize;
        assert!(g[b2..b2 + 8192].iter().all(|&x| x == 0));
        assert_eq!(
            g[b2 + 8192..b2 + 300_000],
            clean.guest[b2 + 8192..b2 + 300_000]
        );
        // Block 4 is the new block: two logged pages, then zeros.
        let b4 = 4 * BLOCK as usize;
        assert_eq!(g[b4..b4 + 4096], pattern(1)[..]);
        assert_eq!(g[b4 + 4096..b4 + 8192], pattern(2)[..]);
        assert!(g[b4 + 8192..b4 + BLOCK as usize].iter().all(|&x| x == 0));
        // Everything else as before.
        assert_eq!(g[BLOCK as usize..b2], clean.guest[BLOCK as usize..b2]);
        assert_eq!(g[5 * BLOCK as usize..], clean.guest[5 * BLOCK as usize..]);
    };
    let mut g = vec![0u8; f.virtual_size() as usize];
    f.read_at(&mut g, 0).unwrap();
    expect_guest(&g);
    assert!(g == log.guest);

    // Without in-memory replay a read-only open refuses.
    let no_replay = OpenOptions {
        replay_in_memory: false,
        ..OpenOptions::read_only()
    };
    match VhdxFile::open(Box::new(log.img.clone()), &log.name, no_replay) {
        Err(Error::LogNeedsReplay { log_guid, .. }) => assert_eq!(log_guid, LOG_GUID),
        other => panic!("{other:?}"),
    }

    // Only the first entry valid: the second page of block 4 stays zero.
    let mut one = log.img.clone();
    one.flip(log.log_entries[1].0 + 100, 0);
    let f1 = VhdxFile::open(Box::new(one), &log.name, OpenOptions::read_only()).unwrap();
    let mut p = vec![0u8; 8192];
    f1.read_at(&mut p, 4 * BLOCK).unwrap();
    assert_eq!(p[..4096], pattern(1)[..]);
    assert!(p[4096..].iter().all(|&x| x == 0));

    // Replay to disk: the file is rewritten, extended and clean afterwards.
    let mem = Arc::new(MemStorage::new(log.img.to_vec()));
    struct Shared(Arc<MemStorage>);
    impl Storage for Shared {
        fn read_at(&self, b: &mut [u8], o: u64) -> io::Result<()> {
            self.0.read_at(b, o)
        }
        fn write_at(&self, b: &[u8], o: u64) -> io::Result<()> {
            self.0.write_at(b, o)
        }
        fn flush(&self) -> io::Result<()> {
            Ok(())
        }
        fn len(&self) -> io::Result<u64> {
            self.0.len()
        }
        fn set_len(&self, l: u64) -> io::Result<()> {
            self.0.set_len(l)
        }
    }
    let w = VhdxFile::open(
        Box::new(Shared(mem.clone())),
        &log.name,
        OpenOptions::writable(),
    )
    .unwrap();
    assert!(matches!(w.log_status(), LogStatus::ReplayedOnDisk(_)));
    drop(w);
    let bytes = mem.to_vec();
    assert_eq!(bytes.len() as u64, log.flushed + BLOCK);
    let r = VhdxFile::open(
        Box::new(MemStorage::new(bytes)),
        &log.name,
        OpenOptions::read_only(),
    )
    .unwrap();
    assert!(matches!(r.log_status(), LogStatus::Clean));
    assert!(r.header().log_guid.is_nil());
    let mut g2 = vec![0u8; r.virtual_size() as usize];
    r.read_at(&mut g2, 0).unwrap();
    expect_guest(&g2);
}

#[test]
fn truncation_at_every_structure_boundary() {
    for kind in KINDS {
        let b = base(kind);
        let mut t = Tally::default();
        for len in truncation_points(b) {
            let img = b.img.truncated(len);
            run_case(
                b,
                &format!("truncated to {len:#x}"),
                &img,
                truncation_expect(b, len),
                &mut t,
            );
        }
        // Longer than needed (zero-extended) is harmless.
        run_case(
            b,
            "extended",
            &b.img.truncated(b.img.len + 3 * MIB + 5),
            Expect::Ok,
            &mut t,
        );
        t.print(&format!("{} truncation", b.name));
    }
}

fn flip_cases(kind: Kind) {
    let b = base(kind);
    let mut t = Tally::default();
    for Target {
        name,
        offset: off,
        dense,
        sparse,
        stride,
    } in structures(b)
    {
        for i in 0..sparse.max(dense) {
            if i >= dense && i % stride != 0 && i + 8 < sparse {
                continue;
            }
            let bits: Vec<u32> = if i < dense {
                (0..8).collect()
            } else {
                vec![(i % 8) as u32]
            };
            for bit in bits {
                let mut img = b.img.clone();
                img.flip(off + i, bit);
                let label = format!("{name} byte {i} bit {bit}");
                // Raw flips of checksummed bytes all stop at the checksum:
                // try a sample of them, and every one re-signed.
                let checksummed = name.starts_with("header")
                    || name.starts_with("region")
                    || name.starts_with("log entry");
                if !checksummed || i < dense || i % 61 == 0 {
                    run_case(b, &label, &img, Expect::Any, &mut t);
                }
                if checksummed {
                    resign(&mut img, b);
                    run_case(
                        b,
                        &format!("{label} (re-signed)"),
                        &img,
                        Expect::Any,
                        &mut t,
                    );
                }
            }
        }
    }
    t.print(&format!("{} bit flips", b.name));
}

#[test]
fn bit_flips_dynamic() {
    flip_cases(Kind::Dynamic);
}

#[test]
fn bit_flips_differencing() {
    flip_cases(Kind::Differencing);
}

#[test]
fn bit_flips_dynamic_4k() {
    flip_cases(Kind::Dynamic4k);
}

#[test]
fn bit_flips_log() {
    flip_cases(Kind::Log);
}

fn extreme_cases(kind: Kind) {
    let b = base(kind);
    let mut t = Tally::default();
    for (name, off, width) in fields(b) {
        let orig = {
            let mut x = [0u8; 8];
            x[..width].copy_from_slice(&b.img.bytes(off, width));
            u64::from_le_bytes(x)
        };
        for v in extreme_values(b, width, orig) {
            let mut img = b.img.clone();
            img.set(off, width, v);
            resign(&mut img, b);
            run_case(b, &format!("{name} = {v:#x}"), &img, Expect::Any, &mut t);
        }
    }
    t.print(&format!("{} extreme field values", b.name));
}

#[test]
fn extreme_fields_dynamic() {
    extreme_cases(Kind::Dynamic);
}

#[test]
fn extreme_fields_differencing() {
    extreme_cases(Kind::Differencing);
}

#[test]
fn extreme_fields_dynamic_4k() {
    extreme_cases(Kind::Dynamic4k);
}

#[test]
fn extreme_fields_log() {
    extreme_cases(Kind::Log);
}

/// Every BAT entry the disk uses, in every state, pointing at every kind of
/// place: the header section, the log, the metadata, the BAT itself, another
/// block, the end of the file, far past it, and the largest offset.
#[test]
fn bat_entries_point_everywhere() {
    for kind in KINDS {
        let b = base(kind);
        let mut t = Tally::default();
        let eof = b.img.len.next_multiple_of(MIB);
        let mut targets: Vec<(&str, u64)> = vec![
            ("header section", 0),
            ("log", b.log_offset),
            ("metadata", b.md_offset),
            ("BAT", b.bat_offset),
            ("EOF", eof),
            ("past EOF", eof + 7 * MIB),
            ("1 TiB", 1 << 40),
            ("max", !(MIB - 1)),
        ];
        for &(_, off, _) in &b.allocated {
            targets.push(("another block", off));
        }
        let n = (b.bat_used / 8).min(16) as usize;
        let mut entries: Vec<usize> = (0..n).collect();
        entries.extend(b.allocated.iter().map(|a| a.0));
        entries.sort();
        entries.dedup();
        for i in entries {
            let at = b.bat_offset + 8 * i as u64;
            let orig = b.img.u64_at(at);
            for state in 0..8u64 {
                for &(what, off) in &targets {
                    let e = bat_entry::make(state, off);
                    if e == orig {
                        continue;
                    }
                    let mut img = b.img.clone();
                    img.set(at, 8, e);
                    let is_payload = !b.has_parent || !(i as u64 + 1).is_multiple_of(4097);
                    let has_data = if is_payload {
                        state == 6 || state == 7
                    } else {
                        state == 6
                    };
                    let is_block = if is_payload {
                        (i as u64) < b.payload_blocks + (b.payload_blocks - 1) / 4096
                    } else {
                        true
                    };
                    let expect = if !is_block || b.kind == Kind::Log {
                        // Unused entries, or (log image) a BAT page the log rewrites.
                        Expect::Any
                    } else if has_data
                        && (what != "another block" || off != bat_entry::file_offset(orig))
                    {
                        // Into a structure, onto another block, or past EOF.
                        Expect::Corrupt("BAT")
                    } else {
                        Expect::Any
                    };
                    let err = run_case(
                        b,
                        &format!("BAT entry {i} = state {state} at {what} {off:#x}"),
                        &img,
                        expect,
                        &mut t,
                    );
                    if let (Expect::Corrupt(_), Some(Error::Corrupt { offset, .. })) =
                        (expect, &err)
                    {
                        let in_bat = (b.bat_offset..b.bat_offset + b.bat_used).contains(offset);
                        let at_block = *offset >= MIB && *offset < b.img.len;
                        assert!(in_bat || at_block, "BAT entry {i}: error at {offset:#x}");
                    }
                }
            }
            // Reserved bits and the reserved state 4.
            for bits in [1u64 << 3, 1 << 19, 4] {
                let mut img = b.img.clone();
                img.set(at, 8, orig | bits);
                run_case(
                    b,
                    &format!("BAT entry {i} | {bits:#x}"),
                    &img,
                    Expect::Any,
                    &mut t,
                );
            }
        }
        t.print(&format!("{} BAT entries", b.name));
    }
}

/// States without data ignore FileOffsetMB, whatever it holds: even the
/// top of the address space reads as zeros (or the parent) in every block.
#[test]
fn non_data_states_ignore_their_offset() {
    for kind in [Kind::Dynamic, Kind::Differencing, Kind::Dynamic4k] {
        let b = base(kind);
        let f = VhdxFile::open(Box::new(b.img.clone()), &b.name, OpenOptions::read_only()).unwrap();
        let g = *f.geometry();
        for block in 0..g.payload_blocks {
            let i = g.payload_entry(block);
            let state = bat_entry::state_bits(f.bat()[i]);
            if state >= 6 {
                continue;
            }
            let mut img = b.img.clone();
            img.set(
                b.bat_offset + 8 * i as u64,
                8,
                bat_entry::make(state, !(MIB - 1)) | 0xF_FFF8,
            );
            let mut t = Tally::default();
            run_case(
                b,
                &format!("block {block} state {state} at the top"),
                &img,
                Expect::Ok,
                &mut t,
            );
            let f = VhdxFile::open(Box::new(img), &b.name, OpenOptions::read_only()).unwrap();
            let start = block * g.block_size;
            let len = g.block_len(block);
            let mut got = vec![1u8; len as usize];
            f.read_at(&mut got, start).unwrap();
            let mut want = vec![0u8; len as usize];
            VhdxFile::open(Box::new(b.img.clone()), &b.name, OpenOptions::read_only())
                .unwrap()
                .read_at(&mut want, start)
                .unwrap();
            assert!(got == want, "{}: block {block}", b.name);
        }
    }
}

#[test]
fn two_blocks_at_one_offset_are_an_overlap() {
    for kind in [Kind::Dynamic, Kind::Differencing, Kind::Dynamic4k] {
        let b = base(kind);
        let mut t = Tally::default();
        let payload: Vec<_> = b
            .allocated
            .iter()
            .filter(|a| !b.has_parent || !(a.0 as u64 + 1).is_multiple_of(4097))
            .collect();
        let first = payload[0];
        // Every other payload entry onto the first block's offset.
        for i in 0..b.payload_blocks as usize {
            if i == first.0 {
                continue;
            }
            let mut img = b.img.clone();
            img.set(b.bat_offset + 8 * i as u64, 8, bat_entry::make(6, first.1));
            let err = run_case(
                b,
                &format!("block {i} onto block {}", first.0),
                &img,
                Expect::Corrupt("BAT"),
                &mut t,
            );
            let msg = err.unwrap().to_string();
            assert!(
                msg.contains("overlaps") || msg.contains("past the end"),
                "{msg}"
            );
        }
        // Half a block apart: a block needs a whole block of file.
        if payload.len() >= 2 && b.block_size_in_file() > MIB {
            let mut img = b.img.clone();
            img.set(
                b.bat_offset + 8 * payload[1].0 as u64,
                8,
                bat_entry::make(6, first.1 + MIB),
            );
            run_case(
                b,
                "blocks half overlapping",
                &img,
                Expect::Corrupt("BAT"),
                &mut t,
            );
        }
        t.print(&format!("{} duplicate offsets", b.name));
    }
}

impl Base {
    fn block_size_in_file(&self) -> u64 {
        self.allocated.iter().map(|a| a.2).max().unwrap_or(MIB)
    }
}

#[test]
fn headers_and_region_tables() {
    let b = base(Kind::Dynamic);
    let mut t = Tally::default();
    // One bad header: the other is used, with a warning.
    for (i, off) in [HEADER1_OFFSET, HEADER2_OFFSET].into_iter().enumerate() {
        let mut img = b.img.clone();
        img.flip(off + 200, 3);
        run_case(b, &format!("header {i} bad"), &img, Expect::Ok, &mut t);
        let f = VhdxFile::open(Box::new(img), &b.name, OpenOptions::read_only()).unwrap();
        assert_eq!(f.header_slot(), 1 - i);
        assert!(f
            .problems()
            .iter()
            .any(|p| p.what == "header" && p.severity == Severity::Warning));
    }
    // Both bad: no current header.
    for (x, y) in [(0u64, 0u64), (4, 4), (8, 300), (66, 72)] {
        let mut img = b.img.clone();
        img.flip(HEADER1_OFFSET + x, 1);
        img.flip(HEADER2_OFFSET + y, 6);
        run_case(
            b,
            &format!("both headers bad ({x}, {y})"),
            &img,
            Expect::Corrupt("header"),
            &mut t,
        );
    }
    // Both headers zeroed.
    let mut img = b.img.clone();
    img.patch(HEADER1_OFFSET, &[0u8; 4096]);
    img.patch(HEADER2_OFFSET, &[0u8; 4096]);
    run_case(b, "headers zeroed", &img, Expect::Corrupt("header"), &mut t);
    // Equal sequence numbers but different contents: neither is current.
    let mut img = b.img.clone();
    img.set(HEADER2_OFFSET + 8, 8, 1);
    img.patch(HEADER2_OFFSET + 16, &Uuid::from_u128(0xF00D).to_bytes_le());
    resign(&mut img, b);
    run_case(
        b,
        "equal sequence numbers",
        &img,
        Expect::Corrupt("header"),
        &mut t,
    );
    // Version 2 in both.
    let mut img = b.img.clone();
    img.set(HEADER1_OFFSET + 66, 2, 2);
    img.set(HEADER2_OFFSET + 66, 2, 2);
    resign(&mut img, b);
    run_case(b, "version 2", &img, Expect::Corrupt("header"), &mut t);

    // One bad region table: the other is used.
    for off in [REGION1_OFFSET, REGION2_OFFSET] {
        let mut img = b.img.clone();
        img.flip(off + 40, 0);
        run_case(
            b,
            &format!("region table at {off:#x} bad"),
            &img,
            Expect::Ok,
            &mut t,
        );
    }
    // Both bad.
    let mut img = b.img.clone();
    img.flip(REGION1_OFFSET + 40, 0);
    img.flip(REGION2_OFFSET, 0);
    run_case(
        b,
        "both region tables bad",
        &img,
        Expect::Corrupt("region table"),
        &mut t,
    );
    // Region past EOF, overlapping the log, the other region, the headers.
    let bat_entry_at = |slot: u64| slot + 16; // the BAT is entry 0
    for (what, off, len) in [
        ("past EOF", b.img.len.next_multiple_of(MIB), MIB),
        ("huge", 4 * MIB, 0xFFF0_0000),
        ("onto the log", b.log_offset, MIB),
        ("onto the metadata", b.md_offset, MIB),
        ("into the header section", 0, MIB),
        ("misaligned", b.bat_offset + 4096, MIB),
        ("empty", b.bat_offset, 0),
        ("max offset", !(MIB - 1), MIB),
    ] {
        let mut img = b.img.clone();
        for slot in [REGION1_OFFSET, REGION2_OFFSET] {
            img.set(bat_entry_at(slot) + 16, 8, off);
            img.set(bat_entry_at(slot) + 24, 4, len);
        }
        resign(&mut img, b);
        run_case(
            b,
            &format!("BAT region {what}"),
            &img,
            Expect::Corrupt("region table"),
            &mut t,
        );
    }
    // An unknown required region: unsupported; an unknown optional one: fine.
    for (req, expect_unsupported) in [(1u32, true), (0, false)] {
        let mut img = b.img.clone();
        for slot in [REGION1_OFFSET, REGION2_OFFSET] {
            img.set(slot + 8, 4, 3);
            let e = slot + 16 + 64;
            img.patch(e, &Uuid::from_u128(0x1234).to_bytes_le());
            img.set(e + 16, 8, 5 * MIB);
            img.set(e + 24, 4, MIB);
            img.set(e + 28, 4, req as u64);
        }
        resign(&mut img, b);
        let err = run_case(
            b,
            &format!("unknown region required={req}"),
            &img,
            Expect::Any,
            &mut t,
        );
        if expect_unsupported {
            assert!(matches!(err, Some(Error::Unsupported { .. })), "{err:?}");
        }
    }
    // The BAT listed twice; the metadata region missing.
    let mut img = b.img.clone();
    for slot in [REGION1_OFFSET, REGION2_OFFSET] {
        let first = img.bytes(slot + 16, 32);
        img.patch(slot + 48, &first);
    }
    resign(&mut img, b);
    run_case(
        b,
        "BAT listed twice",
        &img,
        Expect::Corrupt("region table"),
        &mut t,
    );
    // Entry count past the maximum (2047).
    for count in [2048u64, 0xFFFF_FFFF] {
        let mut img = b.img.clone();
        img.set(REGION1_OFFSET + 8, 4, count);
        img.set(REGION2_OFFSET + 8, 4, count);
        resign(&mut img, b);
        run_case(
            b,
            &format!("region count {count}"),
            &img,
            Expect::Corrupt("region table"),
            &mut t,
        );
    }
    t.print("headers and region tables");
}

#[test]
fn metadata_items_overlap_or_overflow() {
    let mut t = Tally::default();
    for kind in [Kind::Dynamic, Kind::Differencing] {
        let b = base(kind);
        let entry = |i: usize| b.md_offset + 32 + 32 * i as u64;
        // Each item onto the next one.
        for i in 0..b.md_count {
            let j = (i + 1) % b.md_count;
            let mut img = b.img.clone();
            let target = img.u32_at(entry(j) + 16);
            img.set(entry(i) + 16, 4, target as u64);
            run_case(
                b,
                &format!("item {i} onto item {j}"),
                &img,
                Expect::Corrupt("metadata"),
                &mut t,
            );
            // Partly overlapping: one byte longer.
            let mut img = b.img.clone();
            let len = img.u32_at(entry(i) + 20);
            img.set(entry(i) + 20, 4, len as u64 + 1);
            run_case(
                b,
                &format!("item {i} one byte longer"),
                &img,
                Expect::Any,
                &mut t,
            );
            // Into the table, past the region, larger than 1 MiB.
            for (what, off, len) in [
                ("table", 0u64, 8u64),
                ("end of region", b.md_len - 4, 8),
                ("past region", b.md_len, 8),
                ("max", u32::MAX as u64, u32::MAX as u64),
                ("big", 65536, MIB + 8),
            ] {
                let mut img = b.img.clone();
                img.set(entry(i) + 16, 4, off);
                img.set(entry(i) + 20, 4, len);
                run_case(
                    b,
                    &format!("item {i} {what}"),
                    &img,
                    Expect::Corrupt("metadata"),
                    &mut t,
                );
            }
        }
        // Huge entry counts: the table holds at most 2047.
        for count in [2048u64, 0xFFFF] {
            let mut img = b.img.clone();
            img.set(b.md_offset + 10, 2, count);
            run_case(
                b,
                &format!("metadata count {count}"),
                &img,
                Expect::Corrupt("metadata"),
                &mut t,
            );
        }
        // The largest legal count, filled with copies of the first entry:
        // duplicates.
        let mut img = b.img.clone();
        img.set(b.md_offset + 10, 2, 2047);
        let first = img.bytes(entry(0), 32);
        let mut table = Vec::new();
        for _ in 0..2047 {
            table.extend_from_slice(&first);
        }
        img.patch(entry(0), &table);
        run_case(
            b,
            "2047 copies of an entry",
            &img,
            Expect::Corrupt("metadata"),
            &mut t,
        );
        // 2047 entries: the real ones, then distinct optional user items of
        // length zero: harmless.
        let mut img = b.img.clone();
        img.set(b.md_offset + 10, 2, 2047);
        let mut extra = Vec::new();
        for k in b.md_count..2047 {
            let mut e = [0u8; 32];
            e[..16].copy_from_slice(&Uuid::from_u128(0xABC0_0000 + k as u128).to_bytes_le());
            e[24] = 1; // IsUser
            extra.extend_from_slice(&e);
        }
        img.patch(entry(b.md_count), &extra);
        run_case(b, "2047 entries", &img, Expect::Ok, &mut t);
        // An unknown required item: unsupported.
        let mut img = b.img.clone();
        img.patch(entry(0), &Uuid::from_u128(0x5555).to_bytes_le());
        let err = run_case(b, "unknown required item", &img, Expect::Any, &mut t);
        assert!(matches!(err, Some(Error::Unsupported { .. })), "{err:?}");
        // A missing required item (count one short drops the last).
        let mut img = b.img.clone();
        img.set(b.md_offset + 10, 2, b.md_count as u64 - 1);
        run_case(
            b,
            "last item dropped",
            &img,
            Expect::Corrupt("metadata"),
            &mut t,
        );
    }
    t.print("metadata items");
}

#[test]
fn sizes_near_the_top_of_u64() {
    let mut t = Tally::default();
    for kind in KINDS {
        let b = base(kind);
        let item = |id: Uuid| b.items.iter().find(|i| i.0 == id).unwrap().1;
        let vs = item(guids::VIRTUAL_DISK_SIZE);
        for v in [
            0,
            1,
            511,
            u64::MAX,
            u64::MAX - 4095,
            u64::MAX - 511,
            (64 << 40) + 4096,
            1 << 63,
        ] {
            let mut img = b.img.clone();
            img.set(vs, 8, v);
            run_case(
                b,
                &format!("virtual size {v:#x}"),
                &img,
                Expect::Corrupt("metadata"),
                &mut t,
            );
        }
        // 64 TiB needs a BAT far larger than the region: corrupt.
        let mut img = b.img.clone();
        img.set(vs, 8, 64 << 40);
        run_case(
            b,
            "virtual size 64 TiB",
            &img,
            Expect::Corrupt("BAT"),
            &mut t,
        );
        let bs = item(guids::FILE_PARAMETERS);
        for v in [
            0u64,
            1,
            4096,
            MIB - 1,
            MIB + 1,
            512 * MIB,
            u32::MAX as u64,
            0x8000_0000,
        ] {
            let mut img = b.img.clone();
            img.set(bs, 4, v);
            run_case(
                b,
                &format!("block size {v:#x}"),
                &img,
                Expect::Corrupt("metadata"),
                &mut t,
            );
        }
        for v in [0u64, 1, 256, 1024, 8192, u32::MAX as u64] {
            let mut img = b.img.clone();
            img.set(item(guids::LOGICAL_SECTOR_SIZE), 4, v);
            run_case(
                b,
                &format!("logical sector size {v}"),
                &img,
                Expect::Corrupt("metadata"),
                &mut t,
            );
        }
        // Log placement: with LogGuid set the log must lie inside the file;
        // with LogGuid nil it is unused but still must not crash anything.
        for (off, len) in [
            (!(MIB - 1), MIB),
            (!(MIB - 1), 0xFFF0_0000),
            (1 << 48, MIB),
            (MIB, 0xFFF0_0000),
            (b.img.len.next_multiple_of(MIB), MIB),
        ] {
            for log_guid in [Uuid::nil(), LOG_GUID] {
                let mut img = b.img.clone();
                for h in [HEADER1_OFFSET, HEADER2_OFFSET] {
                    img.set(h + 68, 4, len);
                    img.set(h + 72, 8, off);
                    img.patch(h + 48, &log_guid.to_bytes_le());
                }
                resign(&mut img, b);
                let expect = if log_guid.is_nil() {
                    Expect::Any
                } else {
                    Expect::Corrupt("header")
                };
                run_case(
                    b,
                    &format!("log {off:#x}+{len:#x} guid {log_guid}"),
                    &img,
                    expect,
                    &mut t,
                );
            }
        }
    }
    t.print("sizes near u64::MAX");
}

#[test]
fn hostile_log_entries() {
    let b = base(Kind::Log);
    let mut t = Tally::default();
    let (e1, _) = b.log_entries[0];
    let desc = |d: u64| e1 + 64 + 32 * d;
    // Wrong LogGuid in the header: no entry matches.
    let mut img = b.img.clone();
    for h in [HEADER1_OFFSET, HEADER2_OFFSET] {
        img.patch(h + 48, &Uuid::from_u128(7).to_bytes_le());
    }
    resign(&mut img, b);
    run_case(b, "LogGuid mismatch", &img, Expect::Corrupt("log"), &mut t);
    // Both entries' checksums wrong: no valid sequence.
    let mut img = b.img.clone();
    for &(at, _) in &b.log_entries {
        img.flip(at + 4, 0);
    }
    run_case(b, "log checksums", &img, Expect::Corrupt("log"), &mut t);
    // Descriptors aimed at the headers, the log itself, the top of the
    // address space; FlushedFileOffset past the end of the file.
    for (what, field, v, expect) in [
        (
            "data into header",
            desc(0) + 16,
            HEADER1_OFFSET,
            Expect::Corrupt("log"),
        ),
        (
            "data into log",
            desc(0) + 16,
            b.log_offset + 8192,
            Expect::Corrupt("log"),
        ),
        (
            "data at u64::MAX-4095",
            desc(0) + 16,
            u64::MAX - 4095,
            Expect::Corrupt("log"),
        ),
        (
            "data at 2^48",
            desc(0) + 16,
            1 << 48,
            Expect::Corrupt("log"),
        ),
        (
            "zero at u64::MAX-4095",
            desc(1) + 16,
            u64::MAX - 4095,
            Expect::Corrupt("log"),
        ),
        (
            "zero length u64::MAX-4095",
            desc(1) + 8,
            u64::MAX - 4095,
            Expect::Corrupt("log"),
        ),
        ("zero length 2^47", desc(1) + 8, 1 << 47, Expect::Any),
        ("flushed past EOF", e1 + 48, b.img.len + MIB, Expect::Any),
        ("last file offset 2^48", e1 + 56, 1 << 48, Expect::Any),
        ("last file offset u64::MAX", e1 + 56, u64::MAX, Expect::Any),
        (
            "descriptor count u32::MAX",
            e1 + 24,
            u32::MAX as u64,
            Expect::Any,
        ),
        (
            "entry length u32::MAX-4095",
            e1 + 8,
            u32::MAX as u64 - 4095,
            Expect::Any,
        ),
        ("tail past log", e1 + 12, b.log_len, Expect::Any),
    ] {
        let mut img = b.img.clone();
        let width = if what.starts_with("descriptor count")
            || what.starts_with("entry length")
            || what.starts_with("tail")
        {
            4
        } else {
            8
        };
        img.set(field, width, v);
        resign(&mut img, b);
        run_case(b, what, &img, expect, &mut t);
    }
    // A log entry that extends the file to 1 TiB and points the BAT region
    // at a 4 GiB range there, with a virtual size needing a huge BAT: the
    // file is a few MiB, so no allocation may follow those fields.
    let mut img = b.img.clone();
    for &(at, _) in &b.log_entries {
        img.set(at + 56, 8, 1 << 40);
    }
    for slot in [REGION1_OFFSET, REGION2_OFFSET] {
        img.set(slot + 16 + 16, 8, 1 << 39);
        img.set(slot + 16 + 24, 4, 0xFFF0_0000);
    }
    let vs = b
        .items
        .iter()
        .find(|i| i.0 == guids::VIRTUAL_DISK_SIZE)
        .unwrap()
        .1;
    img.set(vs, 8, 64 << 40);
    resign(&mut img, b);
    run_case(
        b,
        "log-extended file with a huge BAT",
        &img,
        Expect::Corrupt("BAT"),
        &mut t,
    );
    t.print("hostile log entries");
}

/// Writes the seed corpus of the `vhdx_open` fuzz target into
/// `fuzz/seeds/vhdx_open/`: one small valid image (an input starting with
/// `vhdxfile` is an image) and mutation scripts over the target's built-in
/// images (see `fuzz/fuzz_targets/vhdx_open.rs`), including the cases that
/// once crashed. Run with `cargo test -p vhdx --test hostile -- --ignored`.
#[test]
#[ignore]
fn write_fuzz_seeds() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/vhdx_open");
    std::fs::create_dir_all(&dir).unwrap();
    let mut p = CreateParams::dynamic(4 * MIB - 1536);
    p.block_size = MIB as u32;
    p.creator = "hvkit fuzz seed".into();
    p.virtual_disk_id = Uuid::from_u128(0x5eed);
    p.data_write_guid = Uuid::from_u128(0x5eed_0001);
    let mut blocks = BTreeMap::new();
    blocks.insert(0, BlockContent::Full(Rng(1).bytes(65536)));
    blocks.insert(1, BlockContent::Zero);
    blocks.insert(2, BlockContent::Unmapped);
    let mem = MemStorage::new(Vec::new());
    create(&mem, "seed", &p, &blocks).unwrap();
    let mut bytes = mem.to_vec();
    // A fixed FileWriteGuid so that regenerating gives the same file.
    for off in [HEADER1_OFFSET as usize, HEADER2_OFFSET as usize] {
        let mut h = Header::parse(&bytes[off..off + 4096]).unwrap();
        h.file_write_guid = Uuid::from_u128(0x5eed_0002);
        bytes[off..off + 4096].copy_from_slice(&h.to_bytes());
    }
    std::fs::write(dir.join("dynamic-5m.vhdx"), &bytes).unwrap();
    // Scripts: [image, flags, records...]. Field records (op < 0xC0) name
    // a field by index; these use raw records (0xC0 | base << 3 | kind, a
    // 2-byte offset into the base structure or 3 bytes into the file, a
    // value), whose meaning does not depend on the field table.
    let scripts: &[(&str, &[u8])] = &[
        ("script-dynamic", &[0]),
        ("script-differencing", &[1]),
        ("script-dynamic4k", &[2]),
        ("script-log", &[3]),
        ("script-fixed", &[4]),
        ("script-log-not-resigned", &[3, 7, 0xFD, 0x50, 0, 29]),
        (
            "script-fields",
            &[1, 0, 5, 0x31, 40, 3, 77, 0x8A, 1, 2, 3, 4],
        ),
        // Header 2 (the current one): LogOffset = u64::MAX - 1 MiB + 1.
        ("script-log-offset-max", &[0, 0, 0xD5, 72, 0, 28]),
        // BAT entry 0: FULLY_PRESENT at the top of the address space.
        ("script-bat-max", &[2, 0, 0xF5, 0, 0, 31, 0xF0, 0, 0, 6]),
        // A logged page at u64::MAX - 4095.
        ("script-log-desc-top", &[3, 0, 0xFD, 80, 0, 29]),
        // A metadata item's offset and length = u32::MAX.
        ("script-md-item-offset", &[0, 0, 0xED, 48, 0, 31]),
        // Region table 1's signature broken, region table 2's BAT huge.
        ("script-region", &[0, 0, 0xD9, 0, 0, 1, 0xE6, 40, 0, 20]),
        // Truncated in the middle of the BAT region.
        ("script-truncated", &[1, 0, 0xC7, 0, 0, 0x38]),
        // BAT entry 0 (2 MiB blocks): ZERO with FileOffsetMB at the top.
        (
            "script-zero-state-offset-max",
            &[
                2, 0, 0xF4, 0, 0, 0x02, 0, 0xF0, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
            ],
        ),
        // Found by the fuzzer: a field record turning a BAT entry into
        // 0xFFFF_FFFF_FFFF_FFF7.
        ("script-bat-wrap", &[0xC0, 0x5C, 0x4A, 0x27]),
    ];
    for (name, s) in scripts {
        std::fs::write(dir.join(format!("{name}.bin")), s).unwrap();
    }
}

/// A path that cannot be opened (missing, or a folder) is `Error::Open`
/// naming it, not an I/O error at some offset.
#[test]
fn unopenable_paths_name_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.vhdx");
    for (p, ro) in [(&missing, true), (&missing, false)] {
        let opts = if ro {
            vhdx::OpenOptions::read_only()
        } else {
            vhdx::OpenOptions::writable()
        };
        let e = vhdx::VhdxFile::open_path(p, opts).unwrap_err();
        assert!(matches!(e, Error::Open { .. }), "{e:?}");
        let msg = e.to_string();
        assert!(
            msg.starts_with(&format!("{}: cannot open: ", p.display())),
            "{msg}"
        );
        assert_eq!(io::Error::from(e).kind(), io::ErrorKind::NotFound);
    }
    let e = vhdx::VhdxFile::open_path(dir.path(), vhdx::OpenOptions::writable()).unwrap_err();
    assert!(matches!(e, Error::Open { .. }), "{e:?}");
}
