//! Hostile saved states: small `.vmrs` trees built by hand with the `vmcx`
//! writer (so every field can be wrong), then opened with
//! `SavedState::from_store` and read through `read_gpa` (the first and the
//! last 8 KiB of every range, a read across its end, and the whole range
//! when it is at most 2 MiB). Every case must either be refused with a
//! typed `vmrs::Error` that names the file, or open and give typed errors
//! or data on every read: never a panic, never more than a second, and no
//! single allocation sized from an untrusted field (a counting allocator
//! holds each case to 2 × the file size + 8 MiB).
//!
//! Covered: `RamMemoryBlock` values of the wrong size or type, page counts,
//! first pages and GPAs that overflow, overlapping ranges; `RamBlock` keys
//! that are strings, nodes, larger than 1 MiB or exactly 1 MiB but not a
//! byte array, or point outside the file; compressed RamBlocks that are
//! garbage, truncated at every byte of a valid stream of every token kind,
//! or have token counts that would exceed 1 MiB; XPRESS and LZNT1 pages
//! that are garbage or reach back too far; partition states that are
//! garbage, truncated at every byte or have huge lengths; an encrypted
//! file; reads at the top of the address space and extraction of ranges
//! whose output would not fit a 64-bit file.

use std::os::unix::fs::FileExt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vmcx::{MemStorage, OpenOptions, Store, Tree, Value};
use vmrs::extract::{extract, Format};
use vmrs::memory_block::MemoryBlock;
use vmrs::partition_state::{self, PartitionState, Segment, StateError, VpRegisters};
use vmrs::ram_block::{self, BlockError, PageCodec, BLOCK_LEN, PAGE};
use vmrs::ram_block::{T_END, T_PATTERN_PAGE, T_PATTERN_RUN, T_SPAN};
use vmrs::{lznt1, xpress, Error, MemoryPiece, SavedState, SavedStateSpec};

// ---------------------------------------------------------------------------
// Counting allocator (shared with the other crates' hostile tests).

#[global_allocator]
static ALLOC: vhdx::counting_alloc::CountingAlloc = vhdx::counting_alloc::CountingAlloc;
use vhdx::counting_alloc::measure;

/// Every case must finish within this.
const LIMIT: Duration = Duration::from_secs(1);
const NAME: &str = "hostile.vmrs";
const MIB: usize = 1 << 20;

/// Deterministic xorshift64*.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

// ---------------------------------------------------------------------------
// Compressed RamBlock streams, built token by token with the expected output.

const PAT: u64 = 0x1122_3344_5566_7788;

#[derive(Default, Clone)]
struct Stream {
    bytes: Vec<u8>,
    /// What the stream decodes to.
    plain: Vec<u8>,
}

fn pattern(p: u64, pages: usize) -> Vec<u8> {
    p.to_le_bytes().repeat(pages * PAGE / 8)
}

/// One XPRESS page: a literal `b` and a match (offset 1) of 4095 bytes
/// through the half-byte, byte and u16 length tiers.
fn xpress_fill(b: u8, len: usize) -> Vec<u8> {
    let mut v = 0x7FFF_FFFFu32.to_le_bytes().to_vec(); // literal, match, then 1s
    v.push(b);
    v.extend_from_slice(&7u16.to_le_bytes()); // offset 1, length field 7
    v.push(0x0F); // half-byte 15
    v.push(0xFF); // byte 255
    v.extend_from_slice(&((len - 1 - 3) as u16).to_le_bytes());
    v
}

/// One LZNT1 page: a compressed chunk of a literal `b` and a word copying
/// 4095 bytes from 1 back.
fn lznt1_fill(b: u8) -> Vec<u8> {
    vec![0x03, 0xB0, 0x02, b, 0xFC, 0x0F]
}

impl Stream {
    fn u32(&mut self, v: u32) -> &mut Self {
        self.bytes.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn pattern_page(&mut self, p: u64) -> &mut Self {
        self.u32(T_PATTERN_PAGE);
        self.bytes.extend_from_slice(&p.to_le_bytes());
        self.plain.extend(pattern(p, 1));
        self
    }
    fn pattern_run(&mut self, p: u64, count: u32) -> &mut Self {
        self.u32(T_PATTERN_RUN);
        self.bytes.extend_from_slice(&p.to_le_bytes());
        self.u32(count);
        self.plain.extend(pattern(p, count as usize));
        self
    }
    /// A span of raw bytes (in_len == out_len).
    fn span_raw(&mut self, data: &[u8]) -> &mut Self {
        self.u32(T_SPAN)
            .u32(data.len() as u32)
            .u32(data.len() as u32);
        self.bytes.extend_from_slice(data);
        self.plain.extend_from_slice(data);
        self
    }
    /// A span of `out_len` bytes of `b`, XPRESS-encoded.
    fn span_xpress(&mut self, b: u8, out_len: usize) -> &mut Self {
        let c = xpress_fill(b, out_len);
        self.u32(T_SPAN).u32(out_len as u32).u32(c.len() as u32);
        self.bytes.extend_from_slice(&c);
        self.plain.extend(std::iter::repeat_n(b, out_len));
        self
    }
    fn raw_page(&mut self, page: &[u8]) -> &mut Self {
        assert_eq!(page.len(), PAGE);
        self.u32(PAGE as u32);
        self.bytes.extend_from_slice(page);
        self.plain.extend_from_slice(page);
        self
    }
    fn xpress_page(&mut self, b: u8) -> &mut Self {
        let c = xpress_fill(b, PAGE);
        self.u32(c.len() as u32);
        self.bytes.extend_from_slice(&c);
        self.plain.extend(std::iter::repeat_n(b, PAGE));
        self
    }
    fn lznt1_page(&mut self, b: u8) -> &mut Self {
        let c = lznt1_fill(b);
        self.u32(c.len() as u32);
        self.bytes.extend_from_slice(&c);
        self.plain.extend(std::iter::repeat_n(b, PAGE));
        self
    }
    fn end(&mut self) -> &mut Self {
        self.u32(T_END)
    }
    fn pages(&self) -> usize {
        self.plain.len() / PAGE
    }
}

/// A valid stream with every token kind: pattern page, pattern run, raw
/// span, XPRESS span, raw page, XPRESS page, a run to fill the block, end.
fn every_token() -> Stream {
    let mut s = Stream::default();
    let raw: Vec<u8> = (0..PAGE).map(|i| (i * 31 % 251) as u8).collect();
    s.pattern_page(PAT)
        .pattern_run(0xDEAD_BEEF_0000_0001, 2)
        .span_raw(&raw[..96])
        .span_xpress(0x5A, PAGE - 96)
        .raw_page(&raw)
        .xpress_page(0xC3);
    let rest = 256 - s.pages() as u32;
    s.pattern_run(0, rest).end();
    assert_eq!(s.plain.len(), BLOCK_LEN);
    s
}

/// A valid stream whose single compressed page is LZNT1.
fn lznt1_stream() -> Stream {
    let mut s = Stream::default();
    s.pattern_page(PAT)
        .lznt1_page(0x77)
        .pattern_run(PAT, 254)
        .end();
    assert_eq!(s.plain.len(), BLOCK_LEN);
    s
}

// ---------------------------------------------------------------------------
// Saved-state trees.

fn desc(page_count: u64, first_page: u64, gpa_page: u64) -> Value {
    let b = MemoryBlock {
        version: 3,
        flags: 0,
        page_count,
        first_page,
        gpa_page,
        virtual_node: 0,
        ksr_block_id: 0,
    };
    Value::Array(b.encode().to_vec())
}

#[derive(Clone)]
struct Spec {
    descs: Vec<Value>,
    /// (key name under /savedstate, value)
    blocks: Vec<(String, Value)>,
    partition: Option<Value>,
}

impl Spec {
    /// One VP, one 1 MiB range at GPA 0 backed by RamBlock0 = `block0`.
    fn one_block(block0: Value) -> Spec {
        Spec {
            descs: vec![desc(256, 0, 0)],
            blocks: vec![("RamBlock0".into(), block0)],
            partition: Some(Value::Array(partition_state::build(&[
                VpRegisters::default(),
            ]))),
        }
    }

    fn tree(&self) -> Tree {
        let mut t = Tree::new();
        let c = t.add(Tree::ROOT, "configuration", Value::Node);
        let p = t.add(c, "properties", Value::Node);
        t.add(p, "version", Value::Int(0x0A00));
        let ss = t.add(Tree::ROOT, "savedstate", Value::Node);
        t.add(ss, "VmVersion", Value::Int(0x0A00));
        if let Some(ps) = &self.partition {
            let vm = t.add(ss, "savedVM", Value::Node);
            let id = t.add(vm, "partition_state", ps.clone());
            if *ps == Value::Node {
                t.add(id, "child", Value::Int(1));
            }
        }
        for (i, d) in self.descs.iter().enumerate() {
            let id = t.add(ss, &format!("RamMemoryBlock{i}"), d.clone());
            if *d == Value::Node {
                t.add(id, "child", Value::Int(1));
            }
        }
        for (name, v) in &self.blocks {
            let id = t.add(ss, name, v.clone());
            if *v == Value::Node {
                t.add(id, "child", Value::Array(vec![0; 16]));
            }
        }
        t
    }

    fn file(&self) -> Vec<u8> {
        file(&self.tree())
    }
}

fn file(tree: &Tree) -> Vec<u8> {
    let mem = MemStorage::new(Vec::new());
    vmcx::writer::write(&mem, "spec", tree, &|_| {
        Err(vmcx::Error::Invalid(
            "no file-object values to resolve".into(),
        ))
    })
    .expect("the vmcx writer takes every spec");
    mem.to_vec()
}

fn block_value(stream: &Stream) -> Value {
    Value::Array(stream.bytes.clone())
}

// ---------------------------------------------------------------------------
// Opening and reading one case.

struct Opened {
    state: SavedState,
    /// (gpa, len, result) of every read made.
    reads: Vec<(u64, usize, Result<Vec<u8>, Error>)>,
}

impl Opened {
    /// The result of the read of `len` bytes at `gpa`.
    fn read(&self, gpa: u64, len: usize) -> &Result<Vec<u8>, Error> {
        &self
            .reads
            .iter()
            .find(|r| r.0 == gpa && r.1 == len)
            .unwrap_or_else(|| panic!("no read of {len} bytes at {gpa:#x}"))
            .2
    }
    fn errors(&self) -> usize {
        self.reads.iter().filter(|r| r.2.is_err()).count()
    }
}

fn check_names_file(e: &Error, what: &str) {
    let msg = e.to_string();
    assert!(!msg.is_empty());
    match e {
        Error::Corrupt { path, .. } => assert_eq!(path, NAME, "{what}: {msg}"),
        Error::Container(_) => assert!(
            msg.contains(NAME),
            "{what}: error does not name the file: {msg}"
        ),
        Error::Encrypted { .. } | Error::Io(_) | Error::Invalid(_) => {
            panic!("{what}: unexpected error kind: {msg}")
        }
    }
}

/// The reads made of every range (at most 64 ranges).
fn windows(s: &SavedState) -> Vec<(u64, usize)> {
    let mut v = Vec::new();
    for r in s.ranges().iter().take(64) {
        let w = r.len.min(8192) as usize;
        let end = r.gpa + r.len;
        v.push((r.gpa, w));
        v.push((end - w as u64, w));
        if end.checked_add(4096).is_some() {
            v.push((end - w as u64, w + 4096)); // into what follows
        }
        if r.len > 8192 && r.len <= 2 * MIB as u64 {
            v.push((r.gpa, r.len as usize));
        }
    }
    v
}

fn open_and_read(bytes: &[u8], lenient: bool, codec: PageCodec) -> Result<Opened, Error> {
    let options = OpenOptions {
        lenient,
        ..OpenOptions::default()
    };
    let store = Store::from_storage(Arc::new(MemStorage::new(bytes.to_vec())), NAME, options)?;
    let mut state = SavedState::from_store(store)?;
    state.set_page_codec(codec);
    let _ = (
        state.memory_size(),
        state.block_count(),
        state.partition_state_error(),
    );
    let reads = windows(&state)
        .into_iter()
        .map(|(gpa, len)| {
            let mut buf = vec![0u8; len];
            let r = state.read_gpa(gpa, &mut buf).map(|()| buf);
            (gpa, len, r)
        })
        .collect();
    Ok(Opened { state, reads })
}

/// Opens `bytes` (strictly unless `lenient`) and reads every range; checks
/// that nothing panics, that the case takes less than a second, that no
/// allocation is sized from the file's fields and that every error names
/// the file.
fn run_with(what: &str, bytes: &[u8], lenient: bool, codec: PageCodec) -> Result<Opened, Error> {
    let t0 = Instant::now();
    let (r, peak) =
        measure(|| catch_unwind(AssertUnwindSafe(|| open_and_read(bytes, lenient, codec))));
    let elapsed = t0.elapsed();
    let r = r.unwrap_or_else(|_| panic!("{what}: panicked"));
    assert!(elapsed < LIMIT, "{what}: took {elapsed:?}");
    let limit = 2 * bytes.len() + 8 * MIB;
    assert!(
        peak <= limit,
        "{what}: one allocation of {peak} bytes for a {}-byte file",
        bytes.len()
    );
    match &r {
        Err(e) => check_names_file(e, what),
        Ok(o) => {
            for (gpa, len, res) in &o.reads {
                match res {
                    Ok(b) => assert_eq!(b.len(), *len),
                    Err(e) => check_names_file(e, &format!("{what}: read of {len} at {gpa:#x}")),
                }
            }
        }
    }
    r
}

fn run(what: &str, bytes: &[u8]) -> Result<Opened, Error> {
    run_with(what, bytes, false, PageCodec::Xpress)
}

fn opened(what: &str, r: Result<Opened, Error>) -> Opened {
    r.unwrap_or_else(|e| panic!("{what}: refused: {e}"))
}

/// Asserts a refusal as `Error::Corrupt` whose reason contains `needle`.
fn corrupt(what: &str, r: Result<Opened, Error>, needle: &str) {
    match r {
        Err(Error::Corrupt { reason, key, .. }) => {
            assert!(
                reason.contains(needle),
                "{what}: {key}: {reason:?} does not say {needle:?}"
            )
        }
        Err(e) => panic!("{what}: wrong error: {e}"),
        Ok(o) => panic!("{what}: opened with {} ranges", o.state.ranges().len()),
    }
}

/// Asserts a read error of kind `Error::Corrupt` mentioning `needle`.
fn read_corrupt(what: &str, r: &Result<Vec<u8>, Error>, needle: &str) {
    match r {
        Err(Error::Corrupt { reason, .. }) => {
            assert!(
                reason.contains(needle),
                "{what}: {reason:?} does not say {needle:?}"
            )
        }
        Err(e) => panic!("{what}: wrong error: {e}"),
        Ok(_) => panic!("{what}: read succeeded"),
    }
}

/// Patches the `FileObjectData` (u32 size, u64 offset) of the file object
/// of `len` bytes at `offset`.
fn patch_blob(bytes: &mut [u8], len: u32, offset: u64, new_len: u32, new_offset: u64) {
    let mut old = len.to_le_bytes().to_vec();
    old.extend_from_slice(&offset.to_le_bytes());
    let at = bytes
        .windows(12)
        .position(|w| w == old.as_slice())
        .expect("FileObjectData not found");
    bytes[at..at + 4].copy_from_slice(&new_len.to_le_bytes());
    bytes[at + 4..at + 12].copy_from_slice(&new_offset.to_le_bytes());
}

/// The file object of key `path` in `bytes`.
fn blob_of(bytes: &[u8], path: &str) -> vmcx::Blob {
    let store = Store::from_storage(
        Arc::new(MemStorage::new(bytes.to_vec())),
        NAME,
        OpenOptions::default(),
    )
    .unwrap();
    match store.tree().get(path) {
        Some(Value::Blob(b)) => *b,
        other => panic!("{path}: {other:?} is not a file object"),
    }
}

// ---------------------------------------------------------------------------
// RamMemoryBlock descriptors.

#[test]
fn descriptor_of_wrong_size_or_type() {
    let block = block_value(&every_token());
    for n in [0usize, 1, 40, 47, 49, 96, 2047, 4096] {
        let mut spec = Spec::one_block(block.clone());
        spec.descs = vec![Value::Array(vec![0xA5; n])];
        let what = format!("{n}-byte RamMemoryBlock0");
        corrupt(
            &what,
            run(&what, &spec.file()),
            &format!("{n} bytes instead of 48"),
        );
    }
    for v in [
        Value::String("RamMemoryBlock".into()),
        Value::Node,
        Value::Int(48),
        Value::Bool(true),
        Value::String("x".repeat(3000)),
    ] {
        let mut spec = Spec::one_block(block.clone());
        spec.descs = vec![v.clone()];
        let what = format!("RamMemoryBlock0 = {v:?}");
        let what = &what[..what.len().min(60)];
        corrupt(what, run(what, &spec.file()), "not a byte array");
    }
    // A second descriptor that is bad refuses the file too.
    let mut spec = Spec::one_block(block.clone());
    spec.descs.push(Value::Array(vec![0; 40]));
    corrupt(
        "bad RamMemoryBlock1",
        run("bad RamMemoryBlock1", &spec.file()),
        "40 bytes",
    );
    // A gap in the numbering ends the enumeration: RamMemoryBlock2 is not read.
    let mut spec = Spec::one_block(block);
    spec.descs.push(Value::Node);
    spec.descs.push(Value::Array(vec![0; 7]));
    let mut t = spec.tree();
    let ss = t.child(Tree::ROOT, "savedstate").unwrap();
    let one = t.child(ss, "RamMemoryBlock1").unwrap();
    t.key_mut(one).name = "RamMemoryBlockX".into();
    let o = opened("gap in the descriptors", run("gap", &file(&t)));
    assert_eq!(o.state.ranges().len(), 1);
}

/// The pattern RamBlock0 of the overflow cases: 256 pages of PAT.
fn pat_block() -> Value {
    let mut s = Stream::default();
    s.pattern_run(PAT, 256).end();
    block_value(&s)
}

#[test]
fn descriptor_fields_that_overflow() {
    const TOP: u64 = 1 << 52; // first GPA page whose address overflows
                              // (page_count, first_page, gpa_page, refused with)
    let refused: &[(u64, u64, u64, &str)] = &[
        (u64::MAX, 0, 0, "64-bit address space"),
        (TOP, 0, 0, "64-bit address space"),
        (1, 0, u64::MAX, "64-bit address space"),
        (1, 0, TOP, "64-bit address space"),
        (1, 0, TOP - 1, "64-bit address space"), // ends at 2^64
        (TOP / 2, 0, TOP / 2, "64-bit address space"),
        (1, u64::MAX, 0, "page index overflows"),
        (2, u64::MAX - 1, 0, "page index overflows"),
        (u64::MAX / 4096, u64::MAX - 10, 0, "page index overflows"),
    ];
    for &(pages, first, gpa, needle) in refused {
        let mut spec = Spec::one_block(pat_block());
        spec.descs = vec![desc(pages, first, gpa)];
        let what = format!("pages {pages:#x} first {first:#x} gpa page {gpa:#x}");
        corrupt(&what, run(&what, &spec.file()), needle);
    }
    let pat = pattern(PAT, 2);
    // (page_count, first_page, gpa_page): opens; the first 8 KiB come from
    // block 0 when first_page is 0, else read as zeros (no such block).
    let open: &[(u64, u64, u64)] = &[
        (TOP - 1, 0, 0),      // 2^64 - 4 KiB of guest memory
        (2, 0, TOP - 3),      // the last two pages below the top page
        (2, u64::MAX - 2, 0), // the last page indices
        (TOP - 1, u64::MAX - (TOP - 1), 0),
        (0, 0, 0), // an empty range
        (0, u64::MAX, u64::MAX / 4096),
    ];
    for &(pages, first, gpa) in open {
        let mut spec = Spec::one_block(pat_block());
        spec.descs = vec![desc(pages, first, gpa)];
        let what = format!("pages {pages:#x} first {first:#x} gpa page {gpa:#x}");
        let o = opened(&what, run(&what, &spec.file()));
        assert_eq!(o.state.memory_size(), pages * 4096, "{what}");
        assert_eq!(o.errors(), 0, "{what}");
        if pages >= 2 {
            let got = o.read(gpa * 4096, 8192).as_ref().unwrap();
            if first == 0 {
                assert_eq!(got, &pat, "{what}");
            } else {
                assert!(got.iter().all(|&b| b == 0), "{what}");
            }
        }
    }
}

#[test]
fn overlapping_ranges_are_refused() {
    let cases: &[&[(u64, u64, u64)]] = &[
        &[(16, 0, 0), (16, 256, 8)],                     // partial
        &[(16, 0, 0), (16, 256, 0)],                     // identical
        &[(64, 0, 0), (4, 256, 10)],                     // contained
        &[(4, 256, 10), (64, 0, 0)],                     // contained, declared first
        &[(1, 0, 0), (1, 1, 4), (8, 2, 2)],              // third spans the second
        &[(1 << 40, 0, 0), (1 << 40, 0, (1 << 40) - 1)], // huge, one page in common
        &[(2, 0, (1 << 52) - 3), (1, 9, (1 << 52) - 2)], // at the top
    ];
    for (i, ranges) in cases.iter().enumerate() {
        let mut spec = Spec::one_block(pat_block());
        spec.descs = ranges.iter().map(|&(p, f, g)| desc(p, f, g)).collect();
        let what = format!("overlap case {i}");
        corrupt(&what, run(&what, &spec.file()), "overlap");
    }
    // Adjacent ranges, and two ranges sharing RamBlock pages, are fine.
    let mut spec = Spec::one_block(pat_block());
    spec.descs = vec![desc(16, 0, 0), desc(16, 16, 16), desc(4, 0, 100)];
    let o = opened("adjacent", run("adjacent", &spec.file()));
    assert_eq!(o.state.ranges().len(), 3);
    assert_eq!(o.errors(), 0);
    let mut buf = vec![0u8; 128 << 10];
    o.state.read_gpa(0, &mut buf).unwrap();
    assert_eq!(buf, pattern(PAT, 32));
    // The hole between 32 pages and page 100 reads as zeros, then PAT again.
    let mut buf = vec![0xEEu8; 70 * PAGE];
    o.state.read_gpa(32 * PAGE as u64, &mut buf).unwrap();
    assert!(buf[..68 * PAGE].iter().all(|&b| b == 0));
    assert_eq!(&buf[68 * PAGE..], &pattern(PAT, 2)[..]);
}

#[test]
fn many_descriptors_stay_fast() {
    // 2000 one-page ranges, all backed by RamBlock0.
    let mut spec = Spec::one_block(pat_block());
    spec.descs = (0..2000).map(|i| desc(1, i % 256, 2 * i)).collect();
    let o = opened("2000 ranges", run("2000 ranges", &spec.file()));
    assert_eq!(o.state.ranges().len(), 2000);
    assert_eq!(o.errors(), 0);
    let mut buf = vec![0u8; 4000 * PAGE];
    let t0 = Instant::now();
    o.state.read_gpa(0, &mut buf).unwrap();
    assert!(t0.elapsed() < LIMIT);
    for (i, p) in buf.chunks(PAGE).enumerate() {
        assert_eq!(p.iter().all(|&b| b == 0), i % 2 == 1, "page {i}");
    }
}

// ---------------------------------------------------------------------------
// RamBlock keys.

#[test]
fn ramblock_of_wrong_type_or_size() {
    let raw: Vec<u8> = (0..BLOCK_LEN).map(|i| (i / 4096 + i) as u8).collect();
    // (value, Some(reason) when reads must fail, else the data)
    let cases: Vec<(&str, Value, Option<&str>)> = vec![
        (
            "inline string",
            Value::String("RamBlock".into()),
            Some("not a byte array"),
        ),
        (
            "file-object string",
            Value::String("A".repeat(3000)),
            Some("not a byte array"),
        ),
        ("node", Value::Node, Some("not a byte array")),
        ("int", Value::Int(1 << 20), Some("not a byte array")),
        ("bool", Value::Bool(false), Some("not a byte array")),
        (
            "empty",
            Value::Array(Vec::new()),
            Some("0 bytes instead of 1 MiB"),
        ),
        // Longer than 1 MiB: a token stream (raw pages make it a little
        // longer than the block), up to a bound.
        (
            "1 MiB + 1 of zeros",
            Value::Array(vec![0; BLOCK_LEN + 1]),
            Some("token 0x00000000"),
        ),
        (
            "2 MiB + 1",
            Value::Array(vec![0xFF; 2 * BLOCK_LEN + 1]),
            Some("too large"),
        ),
        (
            "3 MiB",
            Value::Array(vec![0xFF; 3 * BLOCK_LEN]),
            Some("too large"),
        ),
        (
            "1 MiB - 1 of zeros",
            Value::Array(vec![0; BLOCK_LEN - 1]),
            Some("compressed RamBlock"),
        ),
        // Exactly 1 MiB, but UTF-16 text: a file object of the wrong kind.
        (
            "1 MiB string",
            Value::String("A".repeat(BLOCK_LEN / 2)),
            Some("not a byte array"),
        ),
        ("1 MiB raw", Value::Array(raw.clone()), None),
    ];
    for (what, v, fails) in cases {
        let spec = Spec::one_block(v);
        let bytes = spec.file();
        if what == "1 MiB string" || what == "1 MiB raw" {
            // A 1 MiB value cannot be inline (values of 2 KiB and more are
            // file objects, and key tables are at most 1 MiB).
            assert_eq!(
                blob_of(&bytes, "/savedstate/RamBlock0").len as usize,
                BLOCK_LEN,
                "{what}"
            );
        }
        let o = opened(what, run(what, &bytes));
        match fails {
            Some(reason) => {
                read_corrupt(what, o.read(0, 8192), reason);
                assert_eq!(
                    o.errors(),
                    o.reads.len(),
                    "{what}: every read touches RamBlock0"
                );
                assert_eq!(o.state.raw_block_offset(0), None, "{what}");
            }
            None => {
                assert_eq!(o.errors(), 0, "{what}");
                assert_eq!(o.read(0, BLOCK_LEN).as_ref().unwrap(), &raw, "{what}");
                assert!(o.state.raw_block_offset(0).is_some(), "{what}");
            }
        }
    }
}

#[test]
fn ramblock_names_that_are_not_blocks() {
    let mut spec = Spec::one_block(pat_block());
    for name in [
        "RamBlock",
        "RamBlockX",
        "RamBlock-1",
        "RamBlock 1",
        "RamBlock18446744073709551616",
        "RamBlock0x1",
    ] {
        spec.blocks.push((name.into(), Value::Array(vec![0xAB; 5])));
    }
    spec.blocks.push((
        "RamBlock0".into(),
        Value::String("a duplicate is ignored".into()),
    ));
    // Block 1 is absent: the second MiB reads as zeros.
    spec.descs = vec![desc(512, 0, 0)];
    let o = opened("odd names", run("odd names", &spec.file()));
    assert_eq!(o.state.block_count(), 1);
    assert_eq!(o.errors(), 0);
    assert_eq!(o.read(0, 8192).as_ref().unwrap(), &pattern(PAT, 2));
    assert!(o
        .read(2 * BLOCK_LEN as u64 - 8192, 8192)
        .as_ref()
        .unwrap()
        .iter()
        .all(|&b| b == 0));
}

#[test]
fn ramblock_file_object_outside_the_file() {
    let raw = vec![0x3Cu8; BLOCK_LEN];
    let bytes = Spec::one_block(Value::Array(raw.clone())).file();
    let b = blob_of(&bytes, "/savedstate/RamBlock0");
    let o = opened("valid", run("valid", &bytes));
    assert_eq!(o.read(0, BLOCK_LEN).as_ref().unwrap(), &raw);
    for (len, offset) in [
        (b.len, u64::MAX - 4096),
        (b.len, u64::MAX),
        (b.len, bytes.len() as u64 + (1 << 30)),
        (b.len, bytes.len() as u64 - 4096),
        (b.len - 1, u64::MAX - 100),
        (u32::MAX, b.offset),
        (u32::MAX, u64::MAX),
    ] {
        let mut m = bytes.clone();
        patch_blob(&mut m, b.len, b.offset, len, offset);
        let what = format!("RamBlock0 of {len} bytes at {offset:#x}");
        // The strict open refuses a file object outside the declared ones.
        match run(&what, &m) {
            Err(Error::Container(_)) => {}
            Err(e) => panic!("{what}: strict: {e}"),
            Ok(_) => panic!("{what}: strict open accepted it"),
        }
        let o = opened(&what, run_with(&what, &m, true, PageCodec::Xpress));
        assert!(o.read(0, 8192).is_err(), "{what}: read succeeded");
    }
}

// ---------------------------------------------------------------------------
// Compressed RamBlocks.

/// Decodes `stream` through a saved state (RamBlock0 of a 1 MiB range) and
/// directly, checks that the two agree, and returns the direct result.
fn decode_both(what: &str, stream: &[u8], codec: PageCodec) -> Result<Vec<u8>, BlockError> {
    let mut out = Vec::new();
    let t0 = Instant::now();
    let (direct, peak) = measure(|| ram_block::decode_with(codec, stream, &mut out));
    assert!(
        t0.elapsed() < LIMIT,
        "{what}: decode took {:?}",
        t0.elapsed()
    );
    assert!(
        peak <= 2 * MIB,
        "{what}: decode allocated {peak} bytes at once"
    );
    let bytes = Spec::one_block(Value::Array(stream.to_vec())).file();
    let o = opened(what, run_with(what, &bytes, false, codec));
    let whole = o.read(0, BLOCK_LEN);
    match &direct {
        Ok(()) => {
            assert_eq!(out.len(), BLOCK_LEN, "{what}");
            assert_eq!(
                whole.as_ref().unwrap_or_else(|e| panic!("{what}: {e}")),
                &out,
                "{what}"
            );
        }
        Err(e) => read_corrupt(what, whole, &e.to_string()),
    }
    direct.map(|()| out)
}

#[test]
fn every_token_kind_decodes() {
    let s = every_token();
    assert_eq!(
        decode_both("every token", &s.bytes, PageCodec::Xpress).unwrap(),
        s.plain
    );
    let l = lznt1_stream();
    assert_eq!(
        decode_both("LZNT1 page", &l.bytes, PageCodec::Lznt1).unwrap(),
        l.plain
    );
    // Read as XPRESS, the LZNT1 page is garbage.
    assert!(decode_both("LZNT1 page as XPRESS", &l.bytes, PageCodec::Xpress).is_err());
    // 256 raw page tokens: a stream longer than the block it decodes to.
    let mut r = Stream::default();
    for i in 0..256u32 {
        r.raw_page(&pattern(u64::from(i) * 0x0101_0101, 1));
    }
    r.end();
    assert!(r.bytes.len() > BLOCK_LEN);
    assert_eq!(
        decode_both("256 raw pages", &r.bytes, PageCodec::Xpress).unwrap(),
        r.plain
    );
}

#[test]
fn truncated_at_every_byte() {
    for (s, codec) in [
        (every_token(), PageCodec::Xpress),
        (lznt1_stream(), PageCodec::Lznt1),
    ] {
        let full = s.bytes.len();
        for cut in 0..full {
            let what = format!("{codec:?} stream cut at {cut} of {full}");
            let r = decode_both(&what, &s.bytes[..cut], codec);
            if cut == full - 4 {
                // All tokens but the end marker: still exactly 1 MiB.
                assert_eq!(r.unwrap(), s.plain, "{what}");
            } else {
                let e = r.expect_err(&what);
                assert!(
                    matches!(
                        e,
                        BlockError::Truncated(_)
                            | BlockError::WrongLength { .. }
                            | BlockError::Page { .. }
                    ),
                    "{what}: {e}"
                );
            }
        }
    }
}

#[test]
fn token_counts_past_one_mib_fail_fast() {
    let tok = |v: &[u32]| -> Vec<u8> { v.iter().flat_map(|x| x.to_le_bytes()).collect() };
    let run_tok = |count: u32| {
        let mut b = tok(&[T_PATTERN_RUN, 1, 2]);
        b.extend(tok(&[count, T_END]));
        b
    };
    let mut cases: Vec<(String, Vec<u8>)> = vec![
        ("run of 0xFFFFFFFF pages".into(), run_tok(u32::MAX)),
        ("run of 0x80000000 pages".into(), run_tok(0x8000_0000)),
        ("run of 0x100001 pages".into(), run_tok(0x10_0001)),
        ("run of 257 pages".into(), run_tok(257)),
        (
            "span of 0xFFFFFFFF bytes from nothing".into(),
            tok(&[T_SPAN, u32::MAX, 0, T_END]),
        ),
        (
            "span of 1 MiB + 1".into(),
            tok(&[T_SPAN, BLOCK_LEN as u32 + 1, 1, 0, T_END]),
        ),
        (
            "span reading 0xFFFFFFFF bytes".into(),
            tok(&[T_SPAN, 4096, u32::MAX, 0, 0]),
        ),
        (
            "span reading 0xFFFFFFF0 raw bytes".into(),
            tok(&[T_SPAN, u32::MAX - 15, u32::MAX - 15, 0]),
        ),
        (
            "raw page token with 8 bytes".into(),
            tok(&[PAGE as u32, 0, 0]),
        ),
        (
            "compressed page of 4095 bytes with 4".into(),
            tok(&[4095, 0]),
        ),
        ("token 0".into(), tok(&[0, T_END])),
        ("token 4097".into(), tok(&[4097, 0])),
        ("token 0x80000000".into(), tok(&[0x8000_0000])),
        ("token 0xFFFFFFFB".into(), tok(&[0xFFFF_FFFB])),
    ];
    // 255 pages, then a run that would go past the block.
    let mut s = Stream::default();
    s.pattern_run(PAT, 255);
    let mut b = s.bytes.clone();
    b.extend(run_tok(u32::MAX));
    cases.push(("255 pages then 0xFFFFFFFF".into(), b));
    // 257 single pattern pages.
    let mut s = Stream::default();
    for _ in 0..257 {
        s.pattern_page(PAT);
    }
    cases.push(("257 pattern pages".into(), s.bytes));
    // 256 pages, then a raw span of 1 byte.
    let mut s = Stream::default();
    s.pattern_run(PAT, 256).span_raw(&[1]);
    cases.push(("a byte past 1 MiB".into(), s.bytes));
    for (what, b) in &cases {
        let e = decode_both(what, b, PageCodec::Xpress).expect_err(what);
        assert!(
            matches!(
                e,
                BlockError::Truncated(_)
                    | BlockError::WrongLength { .. }
                    | BlockError::BadToken { .. }
            ),
            "{what}: {e}"
        );
    }
    // Tokens that produce nothing, many times, must not loop forever.
    let mut b = Vec::new();
    for _ in 0..30_000 {
        b.extend(tok(&[T_PATTERN_RUN, 0, 0, 0, T_SPAN, 0, 0]));
    }
    assert!(matches!(
        decode_both("60000 empty tokens", &b, PageCodec::Xpress),
        Err(BlockError::WrongLength { got: 0 })
    ));
    // A span of 1 MiB from an empty XPRESS input is a zero block.
    let b = tok(&[T_SPAN, BLOCK_LEN as u32, 0, T_END]);
    assert_eq!(
        decode_both("1 MiB span from nothing", &b, PageCodec::Xpress).unwrap(),
        vec![0; BLOCK_LEN]
    );
}

#[test]
fn compressed_garbage() {
    let mut rng = Rng(0x5EED_0001);
    for i in 0..120 {
        let n = match i % 6 {
            0 => rng.below(16) as usize,
            1 => rng.below(2048) as usize,
            2 => 2048 + rng.below(8192) as usize,
            3 => 4 + rng.below(64) as usize,
            _ => rng.below(6000) as usize,
        };
        let b = rng.bytes(n);
        let what = format!("garbage {i} ({n} bytes)");
        assert!(
            decode_both(&what, &b, PageCodec::Xpress).is_err(),
            "{what} decoded"
        );
    }
    // Token soup: valid token kinds with random lengths and payloads.
    for i in 0..300 {
        let mut b = Vec::new();
        for _ in 0..1 + rng.below(8) {
            let t = match rng.below(8) {
                0 => T_END,
                1 => T_PATTERN_PAGE,
                2 => T_PATTERN_RUN,
                3 => T_SPAN,
                4 => PAGE as u32,
                5 => 1 + rng.below(4095) as u32,
                6 => rng.next() as u32,
                _ => rng.below(300) as u32,
            };
            b.extend(t.to_le_bytes());
            let payload = rng.below(5000) as usize;
            let mut p = rng.bytes(payload);
            if t == T_SPAN && p.len() >= 8 && rng.below(2) == 0 {
                // Plausible lengths.
                let out = rng.below(5000) as u32;
                p[0..4].copy_from_slice(&out.to_le_bytes());
                p[4..8].copy_from_slice(&(rng.below(u64::from(out) + 1) as u32).to_le_bytes());
            }
            b.extend(p);
        }
        let what = format!("token soup {i} ({} bytes)", b.len());
        let _ = decode_both(
            &what,
            &b,
            if i % 3 == 0 {
                PageCodec::Lznt1
            } else {
                PageCodec::Xpress
            },
        );
    }
    // A valid stream with one page replaced by garbage of the same length.
    let good = every_token();
    for seed in 0..40u64 {
        let mut rng = Rng(seed + 77);
        let mut b = good.bytes.clone();
        let at = rng.below(b.len() as u64) as usize;
        let n = (1 + rng.below(64) as usize).min(b.len() - at);
        b[at..at + n].copy_from_slice(&rng.bytes(n));
        let _ = decode_both(
            &format!("every-token stream with {n} bytes at {at} garbled"),
            &b,
            PageCodec::Xpress,
        );
    }
}

#[test]
fn compressed_pages_that_reach_back_too_far() {
    // XPRESS: (page bytes, why it fails)
    let mut x: Vec<(&str, Vec<u8>)> = Vec::new();
    x.push(("match first", vec![0, 0, 0, 0x80, 0x08, 0x00]));
    let mut far = 0x0000_0000u32.to_le_bytes().to_vec(); // 10 literals, then a match
    far[..4].copy_from_slice(&(1u32 << 21).to_le_bytes());
    far.extend_from_slice(b"0123456789");
    far.extend_from_slice(&((10u16) << 3).to_le_bytes()); // offset 11
    x.push(("offset 11 after 10 bytes", far));
    let mut max = 0x4000_0000u32.to_le_bytes().to_vec(); // literal, then match
    max.push(b'a');
    max.extend_from_slice(&(0xFFF8u16).to_le_bytes()); // offset 8192
    x.push(("offset 8192 after 1 byte", max));
    let mut long = xpress_fill(b'z', 4097);
    x.push(("4097 bytes into a page", long.clone()));
    long.truncate(long.len() - 2);
    long.extend_from_slice(&[0, 0, 0xFF, 0xFF, 0xFF, 0xFF]); // u32 length tier
    x.push(("u32 length 0xFFFFFFFF", long));
    x.push(("length word below 22", {
        let mut v = xpress_fill(b'z', 4096);
        let n = v.len();
        v[n - 2..].copy_from_slice(&21u16.to_le_bytes());
        v
    }));
    for (what, page) in &x {
        let mut out = Vec::new();
        assert!(xpress::decompress(page, PAGE, &mut out).is_err(), "{what}");
        assert!(out.len() <= PAGE);
        let mut s = Stream::default();
        s.u32(page.len() as u32);
        s.bytes.extend_from_slice(page);
        s.pattern_run(0, 255).end();
        let e = decode_both(what, &s.bytes, PageCodec::Xpress).expect_err(what);
        assert!(matches!(e, BlockError::Page { at: 0, .. }), "{what}: {e}");
    }
    // LZNT1
    let l: Vec<(&str, Vec<u8>)> = vec![
        ("word first", vec![0x02, 0xB0, 0x01, 0x00, 0x10]),
        ("back 2 after 1", vec![0x03, 0xB0, 0x02, b'a', 0x00, 0x10]),
        ("chunk of 4097", {
            let mut v = lznt1_fill(b'q');
            v[4] = 0xFD; // 4096 copied after the literal
            v
        }),
        ("bad signature", vec![0x03, 0x20, 0x00, 1, 2, 3]),
        ("body past the input", vec![0xFF, 0xBF, 0x00]),
        ("stored chunk past the input", vec![0xFF, 0x3F, 0x00]),
    ];
    for (what, page) in &l {
        let mut out = Vec::new();
        assert!(lznt1::decompress(page, PAGE, &mut out).is_err(), "{what}");
        assert!(out.len() <= PAGE);
        let mut s = Stream::default();
        s.u32(page.len() as u32);
        s.bytes.extend_from_slice(page);
        s.pattern_run(0, 255).end();
        let e = decode_both(what, &s.bytes, PageCodec::Lznt1).expect_err(what);
        assert!(matches!(e, BlockError::Page { at: 0, .. }), "{what}: {e}");
    }
}

#[test]
fn page_codecs_on_garbage_and_truncation() {
    let mut rng = Rng(0xC0DEC);
    let mut out = Vec::new();
    let t0 = Instant::now();
    for i in 0..20_000 {
        let n = rng.below(if i % 10 == 0 { 9000 } else { 300 }) as usize;
        let mut b = rng.bytes(n);
        if i % 2 == 0 && b.len() >= 4 {
            // Mostly literals, so more of the input is reached.
            b[..4].copy_from_slice(&((rng.next() as u32) & 0x1111_1111).to_le_bytes());
        }
        let max = [0usize, 1, 100, PAGE][i % 4];
        let _ = xpress::decompress(&b, max, &mut out);
        assert!(
            out.len() <= max,
            "XPRESS wrote {} of at most {max}",
            out.len()
        );
        if i % 2 == 1 && b.len() >= 2 {
            // A valid chunk header, so the body is decoded.
            let len = (b.len() - 2).clamp(1, 4096) - 1;
            b[..2].copy_from_slice(&(0xB000 | len as u16).to_le_bytes());
        }
        let _ = lznt1::decompress(&b, max, &mut out);
        assert!(
            out.len() <= max,
            "LZNT1 wrote {} of at most {max}",
            out.len()
        );
    }
    assert!(t0.elapsed() < 10 * LIMIT);
    // Truncation at every byte of valid pages.
    let abc = [
        0xff, 0xff, 0xff, 0x1f, 0x61, 0x62, 0x63, 0x17, 0x00, 0x0f, 0xff, 0x26, 0x01,
    ];
    for page in [&abc[..], &xpress_fill(7, PAGE)[..]] {
        for cut in 0..page.len() {
            let _ = xpress::decompress(&page[..cut], PAGE, &mut out);
            assert!(out.len() <= PAGE);
        }
    }
    let l = lznt1_fill(9);
    for cut in 0..=l.len() {
        let r = lznt1::decompress(&l[..cut], PAGE, &mut out);
        match cut {
            0 | 1 => assert_eq!((r, out.len()), (Ok(()), 0), "cut {cut}"),
            6 => assert_eq!((r, out.len()), (Ok(()), PAGE), "cut {cut}"),
            _ => assert_eq!(r, Err(lznt1::Lznt1Error::Truncated(0)), "cut {cut}"),
        }
    }
}

// ---------------------------------------------------------------------------
// Partition state.

fn two_vps() -> Vec<VpRegisters> {
    let mut v = VpRegisters::default();
    v.gp[16] = 0xFFFF_F800_1234_5678;
    v.control = [0x8005_0033, 0, 0x1AD000, 0x370678, 0, 0xD01];
    v.segments[1] = Segment {
        base: 0,
        limit: 0xFFFF_FFFF,
        selector: 0x10,
        attributes: 0x209B,
    };
    let mut w = v.clone();
    w.index = 1;
    w.gp[0] = 42;
    vec![v, w]
}

/// Opens a saved state without memory whose partition state is `ps`.
fn with_partition(what: &str, ps: Value, lenient: bool) -> Opened {
    let spec = Spec {
        descs: Vec::new(),
        blocks: Vec::new(),
        partition: Some(ps),
    };
    let o = opened(
        what,
        run_with(what, &spec.file(), lenient, PageCodec::Xpress),
    );
    assert_eq!(o.errors(), 0, "{what}");
    let (p, e) = (o.state.partition_state(), o.state.partition_state_error());
    assert!(
        p.is_some() != e.is_some(),
        "{what}: partition state {p:?}, error {e:?}"
    );
    o
}

#[test]
fn partition_state_truncated_at_every_byte() {
    let vps = two_vps();
    let blob = partition_state::build(&vps);
    let full = PartitionState::parse(&blob).unwrap();
    assert_eq!(full.vps.len(), 2);
    // Chunk boundaries: a cut there parses (the walk ends early).
    let mut boundaries: Vec<usize> = full.chunks.iter().map(|c| c.1).collect();
    boundaries.push(blob.len() - 16);
    for cut in 0..=blob.len() {
        let what = format!("partition state cut at {cut} of {}", blob.len());
        let o = with_partition(&what, Value::Array(blob[..cut].to_vec()), false);
        let direct = PartitionState::parse(&blob[..cut]);
        assert_eq!(o.state.partition_state(), direct.as_ref().ok(), "{what}");
        match direct {
            Ok(p) => {
                assert!(cut >= 40, "{what}");
                assert!(p.vps.len() <= 2);
                assert!(
                    cut == blob.len() || boundaries.iter().any(|&b| cut >= b && cut < b + 16),
                    "{what}: parsed"
                );
                for (got, want) in p.vps.iter().zip(&vps) {
                    assert_eq!(got.index, want.index);
                    if got.has_gp {
                        assert_eq!(got.gp, want.gp);
                    }
                }
            }
            Err(e) => {
                assert!(cut < blob.len(), "{what}: {e}");
                if cut < 24 {
                    assert_eq!(e, StateError::Short(cut));
                }
            }
        }
    }
}

#[test]
fn partition_state_garbage_and_huge_lengths() {
    let mut rng = Rng(0xB10B);
    for i in 0..200 {
        let n = rng.below(if i % 4 == 0 { 20_000 } else { 600 }) as usize;
        let mut b = rng.bytes(n);
        if i % 2 == 0 && b.len() >= 24 {
            // A plausible descriptor, so the chunk walk is reached.
            b[8..16].copy_from_slice(&24u64.to_le_bytes());
            b[16..24].copy_from_slice(&(rng.below(2 * n as u64)).to_le_bytes());
        }
        let _ = with_partition(
            &format!("garbage partition state {i}"),
            Value::Array(b),
            false,
        );
    }
    let good = partition_state::build(&two_vps());
    let at = |o: usize, v: &[u8]| {
        let mut b = good.clone();
        b[o..o + v.len()].copy_from_slice(v);
        b
    };
    let gp = PartitionState::parse(&good)
        .unwrap()
        .chunks
        .iter()
        .find(|c| c.0 == partition_state::GP_REGISTERS)
        .unwrap()
        .1;
    let vp = PartitionState::parse(&good)
        .unwrap()
        .chunks
        .iter()
        .find(|c| c.0 == partition_state::VP)
        .unwrap()
        .1;
    let cases: Vec<(&str, Vec<u8>, bool)> = vec![
        (
            "header size u64::MAX",
            at(8, &u64::MAX.to_le_bytes()),
            false,
        ),
        (
            "header size 2^63",
            at(8, &(1u64 << 63).to_le_bytes()),
            false,
        ),
        (
            "header size past the blob",
            at(8, &(good.len() as u64).to_le_bytes()),
            false,
        ),
        ("total size u64::MAX", at(16, &u64::MAX.to_le_bytes()), true),
        ("total size 0", at(16, &0u64.to_le_bytes()), true),
        ("total size 41", at(16, &41u64.to_le_bytes()), true),
        (
            "prolog of u32::MAX bytes",
            at(44, &u32::MAX.to_le_bytes()),
            false,
        ),
        (
            "prolog of 0xFFFFFFF0 bytes",
            at(44, &0xFFFF_FFF0u32.to_le_bytes()),
            false,
        ),
        (
            "GP chunk of u32::MAX bytes",
            at(gp + 4, &u32::MAX.to_le_bytes()),
            false,
        ),
        (
            "GP chunk of 143 bytes",
            at(gp + 4, &143u32.to_le_bytes()),
            false,
        ),
        (
            "VP chunk of 0 bytes",
            at(vp + 4, &0u32.to_le_bytes()),
            false,
        ),
        ("descriptor only", good[..24].to_vec(), false),
        ("descriptor and padding", good[..40].to_vec(), true),
        ("all 0xFF", vec![0xFF; good.len()], false),
    ];
    for (what, b, parses) in cases {
        let o = with_partition(what, Value::Array(b.clone()), false);
        assert_eq!(
            o.state.partition_state().is_some(),
            parses,
            "{what}: {:?}",
            o.state.partition_state_error()
        );
        assert_eq!(PartitionState::parse(&b).is_ok(), parses, "{what}");
    }
    // 70000 empty chunks: more than the walk accepts.
    let mut b = good[..40].to_vec();
    for _ in 0..70_000 {
        // An unknown chunk id (0x20002000) without data.
        b.extend_from_slice(&[0x00, 0x20, 0x00, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    }
    let total = b.len() as u64;
    b[16..24].copy_from_slice(&total.to_le_bytes());
    let o = with_partition("70000 chunks", Value::Array(b.clone()), false);
    assert!(o.state.partition_state_error().unwrap().contains("chunks"));
    assert_eq!(PartitionState::parse(&b), Err(StateError::TooManyChunks));
    // Not a byte array.
    for v in [
        Value::String("partition".into()),
        Value::Int(7),
        Value::Node,
        Value::String("p".repeat(3000)),
    ] {
        let what = format!("partition state {:?}", v.key_type());
        let o = with_partition(&what, v, false);
        assert_eq!(
            o.state.partition_state_error(),
            Some("not a byte array"),
            "{what}"
        );
    }
    // A file object claiming to be huge (a lenient open lets it through).
    let mut spec = Spec::one_block(pat_block());
    spec.partition = Some(Value::Array(good.clone()));
    let bytes = spec.file();
    let b = blob_of(&bytes, "/savedstate/savedVM/partition_state");
    for (len, offset) in [
        (u32::MAX, b.offset),
        (0x7FFF_FFFF, 0),
        (64 << 20, b.offset),
        (b.len, u64::MAX - 8),
    ] {
        let mut m = bytes.clone();
        patch_blob(&mut m, b.len, b.offset, len, offset);
        let what = format!("partition state of {len} bytes at {offset:#x}");
        match run_with(&what, &m, true, PageCodec::Xpress) {
            Ok(o) => {
                assert!(o.state.partition_state().is_none(), "{what}");
                assert!(o.state.partition_state_error().is_some(), "{what}");
            }
            Err(e) => assert!(matches!(e, Error::Container(_)), "{what}: {e}"),
        }
    }
}

// ---------------------------------------------------------------------------
// Whole files.

#[test]
fn container_truncated() {
    let mut spec = Spec::one_block(block_value(&every_token()));
    spec.descs.push(desc(4, 256, 1 << 20));
    spec.partition = Some(Value::Array(partition_state::build(&two_vps())));
    let bytes = spec.file();
    let o = opened("intact", run("intact", &bytes));
    assert_eq!(o.errors(), 0);
    assert_eq!(o.state.partition_state().unwrap().vps.len(), 2);
    for cut in (0..bytes.len())
        .step_by(61)
        .chain(bytes.len() - 64..bytes.len())
    {
        let what = format!("file cut at {cut}");
        let _ = run(&what, &bytes[..cut]);
        let _ = run_with(&what, &bytes[..cut], true, PageCodec::Xpress);
    }
    // Random bytes over the key tables and file objects, read leniently.
    let mut rng = Rng(0xF11E);
    for i in 0..200 {
        let mut m = bytes.clone();
        for _ in 0..1 + rng.below(16) {
            let at = 0x2000 + rng.below((m.len() - 0x2000) as u64) as usize;
            m[at] = rng.next() as u8;
        }
        let what = format!("garbled file {i}");
        let _ = run_with(&what, &m, true, PageCodec::Xpress);
    }
}

#[test]
fn encrypted_state_is_reported() {
    let mem = MemStorage::new(Vec::new());
    let spec = SavedStateSpec::default();
    vmrs::writer::write(&mem, "enc", &spec).unwrap();
    let valid = mem.to_vec();
    assert!(valid.len() > 0x3000);
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng(0xE4C);
    let mut enc = valid[..0x2000].to_vec();
    enc.extend(rng.bytes(0x10000));
    let path = dir.path().join("encrypted.vmrs");
    std::fs::write(&path, &enc).unwrap();
    let t0 = Instant::now();
    match SavedState::open(&path) {
        Err(Error::Encrypted { path: p, detail }) => {
            assert!(p.contains("encrypted.vmrs"), "{p}");
            assert!(!detail.is_empty());
        }
        Err(e) => panic!("encrypted file: {e}"),
        Ok(_) => panic!("encrypted file opened"),
    }
    assert!(t0.elapsed() < LIMIT);
    // Zeros after the headers are damage, not encryption.
    let mut zeros = valid[..0x2000].to_vec();
    zeros.resize(0x12000, 0);
    let path = dir.path().join("zeros.vmrs");
    std::fs::write(&path, &zeros).unwrap();
    assert!(matches!(SavedState::open(&path), Err(Error::Container(_))));
    // Random bytes, but too few to judge: a container error.
    let mut short = valid[..0x2000].to_vec();
    short.extend(rng.bytes(0x800));
    let path = dir.path().join("short.vmrs");
    std::fs::write(&path, &short).unwrap();
    assert!(matches!(SavedState::open(&path), Err(Error::Container(_))));
    // No valid header: not encrypted either.
    let mut noise = rng.bytes(0x12000);
    noise[..8].copy_from_slice(b"hvkitxyz");
    let path = dir.path().join("noise.vmrs");
    std::fs::write(&path, &noise).unwrap();
    assert!(matches!(SavedState::open(&path), Err(Error::Container(_))));
    // And the valid file opens.
    let path = dir.path().join("valid.vmrs");
    std::fs::write(&path, &valid).unwrap();
    assert!(!SavedState::open(&path).unwrap().has_memory());
}

#[test]
fn reads_at_the_top_of_the_address_space() {
    let mut spec = Spec::one_block(pat_block());
    spec.descs.push(desc(2, 0, (1 << 52) - 3));
    let o = opened("top", run("top", &spec.file()));
    let s = &o.state;
    let mut buf = vec![0xEEu8; 3 * PAGE];
    // Ends exactly at 2^64: the two pages of the range and the top page.
    s.read_gpa(u64::MAX - (3 * PAGE as u64 - 1), &mut buf)
        .unwrap();
    assert_eq!(&buf[..2 * PAGE], &pattern(PAT, 2)[..]);
    assert!(buf[2 * PAGE..].iter().all(|&b| b == 0));
    // Past 2^64: an error, not a wrap to GPA 0.
    for (gpa, len) in [
        (u64::MAX, 2),
        (u64::MAX - 10, PAGE),
        (u64::MAX - (3 * PAGE as u64 - 1), 3 * PAGE + 1),
    ] {
        let mut buf = vec![0u8; len];
        let r = catch_unwind(AssertUnwindSafe(|| s.read_gpa(gpa, &mut buf)));
        assert!(matches!(r, Ok(Err(_))), "read of {len} at {gpa:#x}: {r:?}");
    }
    let mut one = [0u8; 1];
    s.read_gpa(u64::MAX, &mut one).unwrap();
    s.read_gpa(u64::MAX, &mut []).unwrap();
}

#[test]
fn extract_of_ranges_too_large_for_a_file() {
    let dir = tempfile::tempdir().unwrap();
    // (what, ranges, whether an ELF core of them fits a file)
    for (what, descs, elf_fits) in [
        (
            "2^64 - 4 KiB from 0",
            vec![desc((1 << 52) - 1, 0, 0)],
            false,
        ),
        (
            "two halves",
            vec![desc(1 << 51, 0, 0), desc((1 << 51) - 1, 0, 1 << 51)],
            false,
        ),
        ("one page at the top", vec![desc(1, 0, (1 << 52) - 2)], true),
    ] {
        let mut spec = Spec::one_block(pat_block());
        spec.descs = descs;
        let o = opened(what, run(what, &spec.file()));
        for format in [Format::Raw, Format::Elf] {
            let out = std::fs::File::create(dir.path().join("out")).unwrap();
            let t0 = Instant::now();
            let r = catch_unwind(AssertUnwindSafe(|| {
                extract(&o.state, &out, format, &mut |_| {})
            }));
            let r = r.unwrap_or_else(|_| panic!("{what}: extract {format:?} panicked"));
            if format == Format::Elf && elf_fits {
                // One page: a small ELF file.
                let st = r.unwrap();
                assert_eq!(st.bytes, 4096);
            } else {
                assert!(r.is_err(), "{what}: extract {format:?} succeeded");
            }
            assert!(t0.elapsed() < LIMIT, "{what}: {format:?}");
        }
    }
    // A small valid state extracts to the bytes `read_gpa` gives.
    let mut spec = Spec::one_block(block_value(&every_token()));
    spec.descs.push(desc(4, 0, 0x1000)); // at 16 MiB
    let o = opened("small", run("small", &spec.file()));
    let path = dir.path().join("raw");
    let out = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    let st = extract(&o.state, &out, Format::Raw, &mut |_| {}).unwrap();
    assert_eq!(st.bytes, BLOCK_LEN as u64 + 4 * 4096);
    assert_eq!(st.file_len, (16 << 20) + 4 * 4096);
    let plain = every_token().plain;
    let mut got = vec![0u8; BLOCK_LEN];
    out.read_exact_at(&mut got, 0).unwrap();
    assert_eq!(got, plain);
    let mut got = vec![0u8; 4 * PAGE];
    out.read_exact_at(&mut got, 16 << 20).unwrap();
    assert_eq!(got, &plain[..4 * PAGE]);
}

#[test]
fn writer_output_reads_back() {
    // Two pieces with a hole, two VPs, through vmrs::writer.
    let a: Vec<u8> = (0..3 * PAGE).map(|i| (i % 253) as u8).collect();
    let b = vec![0x99u8; PAGE + 100];
    let spec = SavedStateSpec {
        memory: vec![
            MemoryPiece::bytes(0x10_0000, b.clone()),
            MemoryPiece::bytes(0, a.clone()),
        ],
        vps: two_vps(),
        ..SavedStateSpec::default()
    };
    let mem = MemStorage::new(Vec::new());
    vmrs::writer::write(&mem, NAME, &spec).unwrap();
    let bytes = mem.to_vec();
    let o = opened("writer", run("writer", &bytes));
    assert_eq!(o.errors(), 0);
    assert_eq!(o.state.ranges().len(), 2);
    assert_eq!(o.state.partition_state().unwrap().vps.len(), 2);
    let mut buf = vec![0xEEu8; 0x10_0000 + 2 * PAGE];
    o.state.read_gpa(0, &mut buf).unwrap();
    assert_eq!(&buf[..a.len()], &a[..]);
    assert!(buf[a.len()..0x10_0000].iter().all(|&x| x == 0));
    assert_eq!(&buf[0x10_0000..0x10_0000 + b.len()], &b[..]);
    assert!(buf[0x10_0000 + b.len()..].iter().all(|&x| x == 0));
}
