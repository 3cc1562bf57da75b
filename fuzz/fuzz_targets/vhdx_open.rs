//! Fuzz target: open a VHDX image (read-only with in-memory log replay, and
//! lenient), read a few ranges through the file, a `Disk` and the run API,
//! and run `check`. Nothing may panic; errors must name the file (and, for
//! corruption and I/O, the offset).
//!
//! An input starting with `vhdxfile` is the image itself. Any other input is
//! a mutation script over one of a few valid images built in memory at
//! start-up, so that the fuzzer gets past the CRC-checked headers, region
//! tables and log entries (re-signed after the mutations) and reaches every
//! field with a few bytes:
//!
//! ```text
//! byte 0   image: 0 dynamic, 1 differencing (over image 0), 2 4 KiB-sector,
//!          3 dirty log (image 0 plus two log entries), 4 fixed
//! byte 1   flags: 1 don't re-sign the headers, 2 don't re-sign the region
//!          tables, 4 don't re-sign the log entries
//! then     up to 64 records:
//!   op < 0xC0   field op % (number of fields of the image) (header, region
//!               table, metadata table/item, locator, BAT entry and log
//!               fields), then one value byte v:
//!                 v < 0x20  an edge value (0, 1, 4095, 1 MiB, u32::MAX,
//!                           u64::MAX - 4095, ...)
//!                 v < 0x40  the field's value + (v & 31) - 16
//!                 v < 0x80  the field's value with bit v & 63 flipped
//!                 else      the next `width` bytes, little-endian
//!   op >= 0xC0  raw: base (op >> 3) & 7 = the file (3-byte offset), header
//!               1, header 2, region table 1, region table 2, metadata
//!               table, BAT, log (2-byte offset modulo the structure's size);
//!               kind op & 7 = set u8, xor bit (value & 7), set u16, set
//!               u32, set u64, set u64 edge value, set u32 edge value, set
//!               the file length to the offset
//! ```

#![no_main]

use libfuzzer_sys::fuzz_target;
use std::collections::BTreeMap;
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use uuid::Uuid;
use vhdx::create::{create, BlockContent, CreateParams, ParentLink};
use vhdx::format::bat_entry::{self, PayloadState};
use vhdx::format::header::Header;
use vhdx::format::log::{encode_entry, EntryFields, LogUpdate};
use vhdx::format::{guids, HEADER1_OFFSET, HEADER2_OFFSET, MIB, REGION1_OFFSET, REGION2_OFFSET};
use vhdx::{check, Disk, Error, MemStorage, OpenOptions, Run, Storage, VhdxFile};

const NAME: &str = "fuzz.vhdx";
const PARENT_NAME: &str = "fuzz-parent.vhdx";
const MAX_RECORDS: usize = 64;

fuzz_target!(|data: &[u8]| run(data));

fn run(data: &[u8]) {
    if data.starts_with(b"vhdxfile") {
        let storage = Patched {
            base: Arc::new(data.to_vec()),
            patches: Vec::new(),
            len: data.len() as u64,
        };
        exercise_image(storage, None);
        return;
    }
    let Some((&kind, rest)) = data.split_first() else {
        return;
    };
    let images = images();
    let img = &images[kind as usize % images.len()];
    let (flags, script) = rest.split_first().map_or((0, &[][..]), |(f, s)| (*f, s));
    let mut storage = Patched {
        base: img.bytes.clone(),
        patches: Vec::new(),
        len: img.bytes.len() as u64,
    };
    apply_script(&mut storage, img, script);
    if flags & 1 == 0 {
        for off in [HEADER1_OFFSET, HEADER2_OFFSET] {
            resign(&mut storage, off, 4096);
        }
    }
    if flags & 2 == 0 {
        for off in [REGION1_OFFSET, REGION2_OFFSET] {
            resign(&mut storage, off, 65536);
        }
    }
    if flags & 4 == 0 {
        for &(at, orig) in &img.log_entries {
            let len = u32::from_le_bytes(storage.bytes(at + 8, 4).try_into().unwrap()) as u64;
            let len = if len == 0 || !len.is_multiple_of(4096) || at + len > img.log_offset + MIB {
                orig
            } else {
                len
            };
            resign(&mut storage, at, len as usize);
        }
    }
    let parent = img.parent.map(|p| images[p].bytes.clone());
    exercise_image(storage, parent);
}

fn apply_script(storage: &mut Patched, img: &Image, mut s: &[u8]) {
    for _ in 0..MAX_RECORDS {
        let Some((&op, rest)) = s.split_first() else {
            return;
        };
        s = rest;
        let mut take = |n: usize| -> Option<u64> {
            let v = s.get(..n)?;
            s = &s[n..];
            let mut b = [0u8; 8];
            b[..n].copy_from_slice(v);
            Some(u64::from_le_bytes(b))
        };
        let done = if op < 0xC0 {
            let &(at, width) = &img.fields[op as usize % img.fields.len()];
            take(1).and_then(|v| {
                let mut b = [0u8; 8];
                b[..width].copy_from_slice(&storage.bytes(at, width));
                let orig = u64::from_le_bytes(b);
                let value = match v {
                    0x00..0x20 => EDGE[v as usize],
                    0x20..0x40 => orig.wrapping_add(v & 31).wrapping_sub(16),
                    0x40..0x80 => orig ^ (1 << (v & 63)),
                    _ => take(width)?,
                };
                storage.patch(at, &value.to_le_bytes()[..width]);
                Some(())
            })
        } else {
            let (base, size) = match (op >> 3) & 7 {
                0 => (0, 0),
                1 => (HEADER1_OFFSET, 4096),
                2 => (HEADER2_OFFSET, 4096),
                3 => (REGION1_OFFSET, 65536),
                4 => (REGION2_OFFSET, 65536),
                5 => (img.md_offset, 65536),
                6 => (img.bat_offset, img.bat_len),
                _ => (img.log_offset, MIB),
            };
            let at = if size == 0 {
                take(3)
            } else {
                take(2).map(|o| base + o % size)
            };
            at.and_then(|at| match op & 7 {
                0 => take(1).map(|v| storage.patch(at, &[v as u8])),
                1 => take(1).map(|v| {
                    let b = storage.bytes(at, 1)[0] ^ (1 << (v & 7));
                    storage.patch(at, &[b]);
                }),
                2 => take(2).map(|v| storage.patch(at, &v.to_le_bytes()[..2])),
                3 => take(4).map(|v| storage.patch(at, &v.to_le_bytes()[..4])),
                4 => take(8).map(|v| storage.patch(at, &v.to_le_bytes())),
                5 => take(1).map(|v| storage.patch(at, &EDGE[v as usize & 31].to_le_bytes())),
                6 => take(1).map(|v| storage.patch(at, &EDGE[v as usize & 31].to_le_bytes()[..4])),
                _ => {
                    storage.len = at.min(img.bytes.len() as u64 + 16 * MIB);
                    Some(())
                }
            })
        };
        if done.is_none() {
            return;
        }
    }
}

const EDGE: [u64; 32] = [
    0,
    1,
    2,
    7,
    0x80,
    0xFF,
    511,
    512,
    4095,
    4096,
    0xFFFF,
    0x1_0000,
    MIB - 1,
    MIB,
    MIB + 1,
    2 * MIB,
    3 * MIB,
    4 * MIB,
    256 * MIB,
    1 << 31,
    0xFFF0_0000,
    u32::MAX as u64 - 4095,
    u32::MAX as u64,
    1 << 32,
    1 << 40,
    64 << 40,
    1 << 48,
    1 << 63,
    u64::MAX - MIB + 1,
    u64::MAX - 4095,
    u64::MAX - 1,
    u64::MAX,
];

/// Recomputes the CRC-32C at `off + 4` over `len` bytes.
fn resign(storage: &mut Patched, off: u64, len: usize) {
    let b = storage.bytes(off, len);
    let crc = crc32c::crc32c(&b[..4]);
    let crc = crc32c::crc32c_append(crc, &[0u8; 4]);
    let crc = crc32c::crc32c_append(crc, &b[8..]);
    storage.patch(off + 4, &crc.to_le_bytes());
}

/// Opens strictly and leniently, reads, checks. Panics only on a broken
/// invariant.
fn exercise_image(storage: Patched, parent: Option<Arc<Vec<u8>>>) {
    let opts = [
        OpenOptions::read_only(),
        OpenOptions {
            lenient: true,
            ..OpenOptions::read_only()
        },
    ];
    for o in opts {
        match VhdxFile::open(Box::new(storage.clone()), NAME, o) {
            Ok(f) => read_some(f, parent.as_ref()),
            Err(e) => assert_typed(&e),
        }
    }
    match check::check(Box::new(storage), NAME) {
        Ok(r) => {
            for p in &r.problems {
                assert!(!p.message.is_empty());
            }
        }
        Err(e) => assert_typed(&e),
    }
}

fn assert_typed(e: &Error) {
    let s = e.to_string();
    assert!(s.contains(NAME), "error does not name the file: {s}");
    match e {
        Error::Corrupt { .. } | Error::Io { .. } => {
            assert!(
                s.contains("offset 0x"),
                "error does not name the offset: {s}"
            )
        }
        Error::Unsupported { .. } => {}
        other => panic!("unexpected error from open: {other:?}"),
    }
}

/// The start, a range across the first block boundary, the middle, the end.
fn read_some(f: VhdxFile, parent: Option<&Arc<Vec<u8>>>) {
    let vs = f.virtual_size();
    let bs = f.block_size();
    let ranges = [
        (0, 4096),
        (bs.saturating_sub(2048), 4096),
        (vs / 2, 65536),
        (vs.saturating_sub(4096), 4096),
        (vs, 1),
    ]
    .map(|(o, l)| (o, l.min(vs)));
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
    let mut files = vec![(PathBuf::from(NAME), f)];
    if let Some(p) = parent {
        if let Ok(pf) = VhdxFile::open(
            Box::new(Patched {
                base: p.clone(),
                patches: Vec::new(),
                len: p.len() as u64,
            }),
            PARENT_NAME,
            OpenOptions::read_only(),
        ) {
            files.push((PathBuf::from(PARENT_NAME), pf));
        }
    }
    let Ok(disk) = Disk::from_files(files, true) else {
        return;
    };
    for &(off, len) in &ranges {
        let mut buf = vec![0u8; len as usize];
        let read = disk.read_at(&mut buf, off);
        let mut total = 0;
        let runs = disk.for_each_run(off, len, &mut |r| {
            if let Run::Data { file, offset, len } = r {
                let mut b = vec![0u8; len as usize];
                disk.layers()[file].file.read_file_at(&mut b, offset)?;
            }
            total += r.len();
            Ok(())
        });
        if runs.is_ok() {
            assert_eq!(total, len);
        }
        let _ = read;
    }
}

// ---------------------------------------------------------------------------
// Storage: shared bytes with patches and a length of their own.

#[derive(Clone)]
struct Patched {
    base: Arc<Vec<u8>>,
    patches: Vec<(u64, Vec<u8>)>,
    len: u64,
}

impl Patched {
    fn patch(&mut self, offset: u64, bytes: &[u8]) {
        self.patches.push((offset, bytes.to_vec()));
    }

    fn bytes(&self, offset: u64, len: usize) -> Vec<u8> {
        let mut out = vec![0u8; len];
        self.fill(&mut out, offset);
        out
    }

    fn fill(&self, out: &mut [u8], offset: u64) {
        let end = offset.saturating_add(out.len() as u64);
        let base_end = (self.base.len() as u64).min(end);
        if offset < base_end {
            out[..(base_end - offset) as usize]
                .copy_from_slice(&self.base[offset as usize..base_end as usize]);
            out[(base_end - offset) as usize..].fill(0);
        } else {
            out.fill(0);
        }
        for (at, p) in &self.patches {
            let (s, t) = (
                (*at).max(offset),
                at.saturating_add(p.len() as u64).min(end),
            );
            if s < t {
                out[(s - offset) as usize..(t - offset) as usize]
                    .copy_from_slice(&p[(s - at) as usize..(t - at) as usize]);
            }
        }
    }
}

impl Storage for Patched {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        if offset
            .checked_add(buf.len() as u64)
            .is_none_or(|e| e > self.len)
        {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "past the end"));
        }
        self.fill(buf, offset);
        Ok(())
    }
    fn write_at(&self, _: &[u8], _: u64) -> io::Result<()> {
        Err(io::Error::other("read-only"))
    }
    fn flush(&self) -> io::Result<()> {
        Ok(())
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.len)
    }
    fn set_len(&self, _: u64) -> io::Result<()> {
        Err(io::Error::other("read-only"))
    }
}

// ---------------------------------------------------------------------------
// The built-in images.

struct Image {
    bytes: Arc<Vec<u8>>,
    /// Index of the parent image, for a differencing one.
    parent: Option<usize>,
    md_offset: u64,
    bat_offset: u64,
    log_offset: u64,
    /// (offset, length) of the log entries.
    log_entries: Vec<(u64, u64)>,
    bat_len: u64,
    /// Fields a script can set: (file offset, width in bytes).
    fields: Vec<(u64, usize)>,
}

fn images() -> &'static [Image] {
    static IMAGES: OnceLock<Vec<Image>> = OnceLock::new();
    IMAGES.get_or_init(|| (0..5).map(build).collect())
}

fn pattern(seed: u64, n: usize) -> Vec<u8> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (s >> 56) as u8
        })
        .collect()
}

const PARENT_GUID: Uuid = Uuid::from_u128(0x7a3e_0000_0000_4000_8000_0000_0000_00d1);
const LOG_GUID: Uuid = Uuid::from_u128(0x1096_0000_0000_4000_8000_0000_0000_0042);

fn build(kind: usize) -> Image {
    let mut blocks = BTreeMap::new();
    let mut parent = None;
    let p = match kind {
        1 => {
            let mut p = CreateParams::differencing(
                3 * MIB,
                ParentLink::relative(PARENT_GUID, "fuzz-parent.vhdx"),
            );
            p.block_size = MIB as u32;
            blocks.insert(
                0,
                BlockContent::Partial {
                    data: pattern(1, MIB as usize),
                    present: (0..2048)
                        .map(|i| i % 7 < 3 || (900..1400).contains(&i))
                        .collect(),
                },
            );
            blocks.insert(1, BlockContent::Full(pattern(2, 70_000)));
            parent = Some(0);
            p
        }
        2 => {
            let mut p = CreateParams::dynamic(4 * MIB + 3 * 4096);
            p.block_size = 2 << 20;
            p.logical_sector_size = 4096;
            blocks.insert(0, BlockContent::Zero);
            blocks.insert(2, BlockContent::Full(pattern(3, 3 * 4096)));
            p
        }
        4 => {
            let mut p = CreateParams::dynamic(2 * MIB - 512);
            p.block_size = MIB as u32;
            p.fixed = true;
            blocks.insert(0, BlockContent::Full(pattern(4, 5000)));
            p
        }
        _ => {
            let mut p = CreateParams::dynamic(4 * MIB - 1536);
            p.block_size = MIB as u32;
            blocks.insert(0, BlockContent::Full(pattern(5, MIB as usize)));
            blocks.insert(1, BlockContent::Zero);
            blocks.insert(2, BlockContent::Unmapped);
            blocks.insert(3, BlockContent::Full(pattern(6, 9000)));
            p
        }
    };
    let p = CreateParams {
        data_write_guid: if kind == 0 || kind == 3 {
            PARENT_GUID
        } else {
            Uuid::from_u128(kind as u128 + 1)
        },
        virtual_disk_id: Uuid::from_u128(0x1d00 + kind as u128),
        creator: "hvkit fuzz".into(),
        ..p
    };
    let mem = MemStorage::new(Vec::new());
    create(&mem, "fuzz", &p, &blocks).expect("create");
    let mut bytes = mem.to_vec();
    let log_entries = if kind == 3 {
        add_dirty_log(&mut bytes)
    } else {
        vec![]
    };
    let f = VhdxFile::open(
        Box::new(MemStorage::new(bytes.clone())),
        "fuzz",
        OpenOptions::read_only(),
    )
    .expect("built-in image opens");
    let fields = fields(&f, &bytes, &log_entries);
    Image {
        bytes: Arc::new(bytes),
        parent,
        md_offset: f.metadata_region().file_offset,
        bat_offset: f.bat_region().file_offset,
        log_offset: f.header().log_offset,
        log_entries,
        bat_len: f.bat_region().length as u64,
        fields,
    }
}

/// Every field of every structure of an image.
fn fields(f: &VhdxFile, bytes: &[u8], log_entries: &[(u64, u64)]) -> Vec<(u64, usize)> {
    let mut v: Vec<(u64, usize)> = Vec::new();
    for h in [HEADER1_OFFSET, HEADER2_OFFSET] {
        // Checksum, sequence, the three GUIDs' first bytes, log version,
        // version, log length, log offset.
        for (at, w) in [
            (4, 4),
            (8, 8),
            (16, 8),
            (32, 8),
            (48, 8),
            (64, 2),
            (66, 2),
            (68, 4),
            (72, 8),
        ] {
            v.push((h + at, w));
        }
    }
    for r in [REGION1_OFFSET, REGION2_OFFSET] {
        v.push((r + 8, 4));
        for i in 0..3 {
            let e = r + 16 + 32 * i;
            v.extend([(e, 8), (e + 16, 8), (e + 24, 4), (e + 28, 4)]);
        }
    }
    let md = f.metadata_region().file_offset;
    v.push((md + 10, 2));
    let entries = &f.metadata().entries;
    for i in 0..entries.len() as u64 + 1 {
        let e = md + 32 + 32 * i;
        v.extend([(e, 8), (e + 16, 4), (e + 20, 4), (e + 24, 4)]);
    }
    for e in entries {
        let at = md + e.offset as u64;
        match e.item_id {
            guids::FILE_PARAMETERS => v.extend([(at, 4), (at + 4, 4)]),
            guids::VIRTUAL_DISK_SIZE => v.push((at, 8)),
            guids::LOGICAL_SECTOR_SIZE | guids::PHYSICAL_SECTOR_SIZE => v.push((at, 4)),
            guids::PARENT_LOCATOR => {
                v.push((at + 18, 2));
                for i in 0..4 {
                    let k = at + 20 + 12 * i;
                    v.extend([(k, 4), (k + 4, 4), (k + 8, 2), (k + 10, 2)]);
                }
            }
            _ => {}
        }
    }
    let g = f.geometry();
    let bat = f.bat_region().file_offset;
    let mut idx: Vec<u64> = (0..g.payload_blocks.min(6))
        .map(|b| g.payload_entry(b) as u64)
        .collect();
    if g.has_parent {
        idx.push(g.bitmap_entry(0) as u64);
    }
    for i in idx {
        v.push((bat + 8 * i, 8));
    }
    for &(at, len) in log_entries {
        for (o, w) in [(4, 4), (8, 4), (12, 4), (16, 8), (24, 4), (48, 8), (56, 8)] {
            v.push((at + o, w));
        }
        let count = u32::from_le_bytes(
            bytes[at as usize + 24..at as usize + 28]
                .try_into()
                .unwrap(),
        );
        for d in 0..count as u64 {
            let da = at + 64 + 32 * d;
            v.extend([
                (da, 4),
                (da + 4, 4),
                (da + 8, 8),
                (da + 16, 8),
                (da + 24, 8),
            ]);
        }
        for s in (4096..len).step_by(4096) {
            v.extend([(at + s, 4), (at + s + 4, 4), (at + s + 4092, 4)]);
        }
    }
    v
}

enum LogOp {
    Data(u64, Vec<u8>),
    Zero(u64, u64),
}

fn log_entry(seq: u64, flushed: u64, last: u64, ops: &[LogOp]) -> Vec<u8> {
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
        tail: 0,
        log_guid: LOG_GUID,
        flushed_file_offset: flushed,
        last_file_offset: last,
    };
    encode_entry(&fields, &updates)
}

/// Two log entries: the first rewrites the BAT page (block 0 → ZERO, block
/// 2 → FULLY_PRESENT at the old end of the file) and zeroes 8 KiB of block
/// 3, the second writes a page of the new block; the file grows by 1 MiB.
fn add_dirty_log(bytes: &mut [u8]) -> Vec<(u64, u64)> {
    let old_len = bytes.len() as u64;
    let bat = 3 * MIB as usize;
    let mut page = bytes[bat..bat + 4096].to_vec();
    let block3 = bat_entry::file_offset(u64::from_le_bytes(page[24..32].try_into().unwrap()));
    page[0..8].copy_from_slice(&bat_entry::make(PayloadState::Zero.bits(), 0).to_le_bytes());
    page[16..24].copy_from_slice(
        &bat_entry::make(PayloadState::FullyPresent.bits(), old_len).to_le_bytes(),
    );
    let seq = 0x1_0000_0005;
    let e1 = log_entry(
        seq,
        old_len,
        old_len + MIB,
        &[LogOp::Data(3 * MIB, page), LogOp::Zero(block3, 8192)],
    );
    let e2 = log_entry(
        seq + 1,
        old_len,
        old_len + MIB,
        &[LogOp::Data(old_len, pattern(9, 4096))],
    );
    let log = MIB as usize;
    bytes[log..log + e1.len()].copy_from_slice(&e1);
    bytes[log + e1.len()..log + e1.len() + e2.len()].copy_from_slice(&e2);
    for off in [HEADER1_OFFSET as usize, HEADER2_OFFSET as usize] {
        let mut h = Header::parse(&bytes[off..off + 4096]).unwrap();
        h.log_guid = LOG_GUID;
        bytes[off..off + 4096].copy_from_slice(&h.to_bytes());
    }
    vec![
        (MIB, e1.len() as u64),
        (MIB + e1.len() as u64, e2.len() as u64),
    ]
}
