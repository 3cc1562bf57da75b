//! Hostile inputs for the HyperVStorage reader: the corpus files and files
//! we write, truncated at every 256-byte boundary, with every byte of every
//! checksummed structure flipped, with broken parent references (re-signed
//! so they get past the entry checksums) and with absurd sizes and counts.
//! Opening must return `Ok` or a typed error naming the file, never panic;
//! a strict open must reject what a checksum or a reference rules out and
//! must read the same tree when only unprotected bytes changed; a lenient
//! open must report what it skipped. A counting allocator checks that
//! nothing is allocated from an untrusted size: no single allocation while
//! opening and reading values may exceed 2 × the file size + 1 MiB.

mod common;

use std::io::{self, Read, Seek, SeekFrom};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use vmcx::format::{
    crc_without, FileHeader, KeyTableHeader, LogEntry, LogHeader, ObjectEntry, ObjectType,
    HEADER_LEN, HEADER_OFFSETS, KEY_ENTRY_HEADER_LEN, KEY_TABLE_HEADER_LEN, LOG_ENTRY_LEN,
    LOG_HEADER_LEN, OBJECT_ENTRY_LEN, OBJECT_TABLE_HEADER_LEN, OBJECT_TABLE_SIGNATURE,
    ROOT_OBJECT_TABLE,
};
use vmcx::writer::OBJECT_TABLE_CAPACITY;
use vmcx::{Error, KeyId, MemStorage, OpenOptions, Storage, Store, Tree, Value};

// ---------------------------------------------------------------------------
// Counting allocator (shared with the other crates' hostile tests).

#[global_allocator]
static ALLOC: vhdx::counting_alloc::CountingAlloc = vhdx::counting_alloc::CountingAlloc;
use vhdx::counting_alloc::measure;

/// Runs `f` on its own thread; fails unless it returns within a second.
/// Returns its result and the largest single allocation it made.
fn quick<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> (T, usize) {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(measure(f));
    });
    match rx.recv_timeout(Duration::from_secs(1)) {
        Ok(r) => r,
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("{what}: did not return within a second"),
        Err(mpsc::RecvTimeoutError::Disconnected) => panic!("{what}: panicked"),
    }
}

// ---------------------------------------------------------------------------
// Storage: shared bytes with one byte xor-ed with 0xFF (no copy per case).

struct Flipped {
    base: Arc<Vec<u8>>,
    at: usize,
}

impl Storage for Flipped {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let start = usize::try_from(offset).map_err(|_| io::ErrorKind::UnexpectedEof)?;
        let src = start
            .checked_add(buf.len())
            .and_then(|end| self.base.get(start..end))
            .ok_or(io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(src);
        if (start..start + buf.len()).contains(&self.at) {
            buf[self.at - start] ^= 0xFF;
        }
        Ok(())
    }
    fn write_at(&self, _: &[u8], _: u64) -> io::Result<()> {
        Err(io::Error::other("read-only"))
    }
    fn flush(&self) -> io::Result<()> {
        Ok(())
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.base.len() as u64)
    }
    fn set_len(&self, _: u64) -> io::Result<()> {
        Err(io::Error::other("read-only"))
    }
}

// ---------------------------------------------------------------------------
// Helpers.

const NAME: &str = "hostile.vmcx";

fn options(lenient: bool) -> OpenOptions {
    OpenOptions {
        write: false,
        lenient,
        no_replay: false,
    }
}

fn open(bytes: &[u8], name: &str, lenient: bool) -> Result<Store, Error> {
    Store::from_storage(
        Arc::new(MemStorage::new(bytes.to_vec())),
        name,
        options(lenient),
    )
}

/// The tree as text (Debug, not ==: a NaN double is not equal to itself).
fn tree_text(s: &Store) -> String {
    format!("{:?}", s.tree())
}

fn names_file(e: &Error, name: &str) {
    let msg = e.to_string();
    assert!(msg.contains(name), "error does not name {name}: {msg}");
    if let Error::Corrupt { .. } = e {
        assert!(msg.contains("offset 0x"), "no offset in: {msg}");
    }
}

/// Reads every value whole and every file object streamed (up to 1 MiB,
/// then a seek into the middle and one more read); every error must name
/// the file. Returns how many values could not be read.
fn read_values(s: &Store) -> usize {
    let mut failed = 0;
    for id in s.tree().walk() {
        if let Err(e) = s.value(id) {
            names_file(&e, s.name());
            failed += 1;
        }
        if let Value::Blob(b) = s.tree().key(id).value {
            let mut r = s.blob_reader(b);
            let mut buf = vec![0u8; 64 << 10];
            let mut total = 0usize;
            while total < 1 << 20 {
                match r.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => total += n,
                }
            }
            if r.seek(SeekFrom::Start(u64::from(b.len / 2))).is_ok() {
                let _ = r.read(&mut buf);
            }
        }
    }
    failed
}

/// What a case opened to, for comparisons outside its thread.
#[derive(Debug)]
struct Opened {
    tree: String,
    keys: Vec<String>,
    problems: Vec<String>,
    unreadable_values: usize,
}

/// Opens `bytes` and reads every value; `Err` is checked to name the file.
fn probe(bytes: &[u8], lenient: bool) -> Result<Opened, Error> {
    let s = open(bytes, NAME, lenient).inspect_err(|e| names_file(e, NAME))?;
    let t = s.tree();
    Ok(Opened {
        tree: tree_text(&s),
        keys: t.walk().into_iter().map(|id| t.path(id)).collect(),
        problems: s.problems().iter().map(|p| p.message.clone()).collect(),
        unreadable_values: read_values(&s),
    })
}

/// A tree with a leaf of every type, nested nodes, an empty node, siblings
/// sharing a name, two file-object values (an array and a string) and
/// enough keys for two key tables.
fn sample_tree() -> Tree {
    let mut t = Tree::new();
    let c = t.add(Tree::ROOT, "configuration", Value::Node);
    let p = t.add(c, "properties", Value::Node);
    t.add(p, "name", Value::String("hostile".into()));
    t.add(p, "version", Value::Int(-2304));
    t.add(p, "size", Value::UInt(u64::MAX));
    t.add(p, "ratio", Value::Double(f64::NAN));
    t.add(p, "enabled", Value::Bool(true));
    t.add(
        p,
        "creation_time",
        Value::Array(vec![1, 2, 3, 4, 5, 6, 7, 8]),
    );
    t.add(
        p,
        "blob",
        Value::Array((0..3000u32).map(|i| i as u8).collect()),
    );
    t.add(p, "notes", Value::String("HyperV".repeat(200)));
    let m = t.add(c, "metrics", Value::Node);
    for g in ["a", "b", "c"] {
        let d = t.add(m, "devicetype", Value::Node);
        t.add(d, "guid", Value::String(g.into()));
        t.add(d, "metric", Value::Int(1));
        t.add(d, "metric", Value::Int(2));
    }
    t.add(c, "nvram", Value::Node);
    let many = t.add(c, "many", Value::Node);
    for i in 0..90 {
        t.add(many, &format!("k{i}"), Value::Int(i));
    }
    t
}

fn write_tree(tree: &Tree) -> Vec<u8> {
    let mem = MemStorage::new(Vec::new());
    vmcx::writer::write(&mem, NAME, tree, &|_| unreachable!()).unwrap();
    mem.to_vec()
}

fn sample() -> Vec<u8> {
    write_tree(&sample_tree())
}

/// File offset and size of the entry of the key at `path`.
fn entry_of(s: &Store, path: &str) -> (usize, usize) {
    let id = s.tree().find(NAME, path).unwrap();
    entry_of_id(s, id)
}

fn entry_of_id(s: &Store, id: KeyId) -> (usize, usize) {
    let loc = s.tree().key(id).location.unwrap();
    let table = s
        .key_tables()
        .iter()
        .find(|t| t.index == loc.table)
        .unwrap();
    (
        (table.offset + u64::from(loc.entry_offset)) as usize,
        loc.size as usize,
    )
}

/// The meaningful (checksummed) length of a non-Free entry.
fn meaningful(e: &[u8]) -> usize {
    let nl = e[0x14] as usize;
    let v = &e[KEY_ENTRY_HEADER_LEN + nl..];
    let vl = if e[1] & 1 != 0 {
        12
    } else {
        match e[0] {
            3..=5 => 8,
            8 => 4,
            9 => 12,
            6 | 7 => 4 + u32::from_le_bytes(v[..4].try_into().unwrap()) as usize,
            t => panic!("key type {t}"),
        }
    };
    KEY_ENTRY_HEADER_LEN + nl + vl
}

/// Re-signs the key entry at `at` (its value length as stored, so
/// patch length fields with `resign_entry_len`).
fn resign_entry(bytes: &mut [u8], at: usize) {
    let m = meaningful(&bytes[at..]);
    resign_entry_len(bytes, at, m);
}

fn resign_entry_len(bytes: &mut [u8], at: usize, meaningful: usize) {
    let crc = crc_without(&bytes[at..at + meaningful], 0x0C);
    bytes[at + 0x0C..at + 0x10].copy_from_slice(&crc.to_le_bytes());
}

fn set_parent(bytes: &mut [u8], at: usize, table: u16, offset: u32) {
    bytes[at + 6..at + 8].copy_from_slice(&table.to_le_bytes());
    bytes[at + 8..at + 12].copy_from_slice(&offset.to_le_bytes());
    resign_entry(bytes, at);
}

/// The (table index, offset in table) a child uses to name `path` as parent.
fn parent_ref(s: &Store, path: &str) -> (u16, u32) {
    let id = s.tree().find(NAME, path).unwrap();
    let loc = s.tree().key(id).location.unwrap();
    (loc.table, loc.entry_offset)
}

/// File offset of the object-table entry describing the object at `offset`.
fn object_entry_at(s: &Store, offset: u64) -> usize {
    let o = s
        .objects()
        .iter()
        .find(|o| o.entry.offset == offset)
        .unwrap();
    (o.table as usize) + OBJECT_TABLE_HEADER_LEN + o.slot as usize * OBJECT_ENTRY_LEN
}

fn put_object_entry(bytes: &mut [u8], at: usize, e: ObjectEntry) {
    bytes[at..at + OBJECT_ENTRY_LEN].copy_from_slice(&e.encode());
}

fn last_slot(table: u64) -> usize {
    table as usize
        + OBJECT_TABLE_HEADER_LEN
        + (OBJECT_TABLE_CAPACITY as usize - 1) * OBJECT_ENTRY_LEN
}

fn link(to: u64, size: u32) -> ObjectEntry {
    ObjectEntry {
        kind: ObjectType::ObjectTable,
        offset: to,
        size,
        flags: 1,
    }
}

/// An object table page of `count` entries, all Empty but the last, which
/// is `last`.
fn object_table_page(count: u32, last: ObjectEntry) -> Vec<u8> {
    let mut page = vec![0u8; 4096];
    page[0..4].copy_from_slice(&OBJECT_TABLE_SIGNATURE.to_le_bytes());
    page[4..8].copy_from_slice(&count.to_le_bytes());
    for slot in 0..OBJECT_TABLE_CAPACITY as usize {
        let e = if slot + 1 == OBJECT_TABLE_CAPACITY as usize {
            last
        } else {
            ObjectEntry::EMPTY
        };
        let o = OBJECT_TABLE_HEADER_LEN + slot * OBJECT_ENTRY_LEN;
        page[o..o + OBJECT_ENTRY_LEN].copy_from_slice(&e.encode());
    }
    page
}

/// Rewrites both file headers through `f`.
fn set_headers(bytes: &mut [u8], f: impl Fn(&mut FileHeader)) {
    for off in HEADER_OFFSETS {
        let off = off as usize;
        let mut h = FileHeader::decode(bytes[off..off + HEADER_LEN].try_into().unwrap()).unwrap();
        f(&mut h);
        bytes[off..off + HEADER_LEN].copy_from_slice(&h.encode());
    }
}

fn log_header(bytes: &[u8], log: usize) -> LogHeader {
    LogHeader::decode(&bytes[log..log + LOG_HEADER_LEN])
        .unwrap()
        .0
}

/// Writes `records` (destination, data) into the log at `log` (data from
/// `header_size` on, back to back) and counts them in its header.
fn put_records(bytes: &mut Vec<u8>, log: usize, header_size: usize, records: &[(u64, Vec<u8>)]) {
    let mut h = log_header(bytes, log);
    let mut data_at = header_size;
    for (i, (dest, data)) in records.iter().enumerate() {
        let e = LogEntry {
            dest_offset: *dest,
            dest_size: data.len() as u32,
            offset_in_log: data_at as u64,
            data_checksum: crc32fast::hash(data),
        };
        let at = log + LOG_HEADER_LEN + i * LOG_ENTRY_LEN;
        bytes[at..at + LOG_ENTRY_LEN].copy_from_slice(&e.encode());
        let d = log + data_at;
        if bytes.len() < d + data.len() {
            bytes.resize(d + data.len(), 0);
        }
        bytes[d..d + data.len()].copy_from_slice(data);
        data_at += data.len();
    }
    h.entry_count = records.len() as u32;
    bytes[log..log + LOG_HEADER_LEN].copy_from_slice(&h.encode());
}

// ---------------------------------------------------------------------------
// (a) Truncation.

/// Opens `bytes` cut at every 256-byte boundary and at lengths around the
/// headers and the root object table, strict and lenient: `Ok`, or
/// `Error::Corrupt` naming the file; nothing opens without the whole root
/// object table; a strict open that succeeds reads the whole file's tree,
/// and every value it can read is the whole file's.
fn truncations(name: &str, bytes: &[u8]) {
    let full = open(bytes, name, false).unwrap_or_else(|e| panic!("{name} does not open: {e}"));
    let full_tree = tree_text(&full);
    let full_values: Vec<String> = full
        .tree()
        .walk()
        .into_iter()
        .map(|id| format!("{:?}", full.value(id).unwrap()))
        .collect();
    let table = ROOT_OBJECT_TABLE as usize + OBJECT_TABLE_HEADER_LEN;
    let root_end = table + OBJECT_TABLE_CAPACITY as usize * OBJECT_ENTRY_LEN;
    let mut lens: Vec<usize> = (0..bytes.len()).step_by(256).collect();
    lens.extend([
        1,
        7,
        HEADER_LEN - 1,
        HEADER_LEN,
        0x1000 + HEADER_LEN - 1,
        0x1000 + HEADER_LEN,
        table - 1,
        table,
        table + 17,
        root_end - 1,
        root_end,
        bytes.len() - 4095,
        bytes.len() - 17,
        bytes.len() - 1,
    ]);
    lens.sort();
    lens.dedup();
    let (mut ok, mut failed) = (0, 0);
    for len in lens {
        let cut = &bytes[..len];
        for lenient in [false, true] {
            let what = format!("{name} cut to {len} bytes (lenient {lenient})");
            let r = catch_unwind(AssertUnwindSafe(|| open(cut, name, lenient)))
                .unwrap_or_else(|_| panic!("{what}: open panicked"));
            let s = match r {
                Err(e) => {
                    failed += 1;
                    names_file(&e, name);
                    assert!(matches!(e, Error::Corrupt { .. }), "{what}: {e:?}");
                    continue;
                }
                Ok(s) => s,
            };
            ok += 1;
            assert!(len >= root_end, "{what}: opens without its object table");
            catch_unwind(AssertUnwindSafe(|| read_values(&s)))
                .unwrap_or_else(|_| panic!("{what}: reading values panicked"));
            if lenient {
                continue;
            }
            // Every key table was read whole, so every key is there.
            assert_eq!(tree_text(&s), full_tree, "{what}");
            for (i, id) in s.tree().walk().into_iter().enumerate() {
                if let Ok(v) = s.value(id) {
                    assert_eq!(format!("{v:?}"), full_values[i], "{what}");
                }
            }
        }
    }
    assert!(
        failed > 0 && ok + failed > 100,
        "{name}: {ok} ok, {failed} failed"
    );
}

#[test]
fn truncated_written_files() {
    let bytes = sample();
    truncations("written.vmcx", &bytes);
    // The last key table and the file objects are at the end: a file cut
    // inside the file objects still opens strictly, its values fail.
    let s = open(&bytes, NAME, false).unwrap();
    let blob_at = s
        .objects()
        .iter()
        .filter(|o| o.entry.kind == ObjectType::FileObject)
        .map(|o| o.entry.offset)
        .min()
        .unwrap() as usize;
    let cut = open(&bytes[..blob_at + 100], NAME, false).unwrap();
    assert_eq!(tree_text(&cut), tree_text(&s));
    assert_eq!(read_values(&cut), 2);
}

#[test]
fn truncated_corpus_files() {
    let Some(dir) = common::hyperv_corpus() else {
        return;
    };
    let files = common::corpus_files(&dir);
    assert!(!files.is_empty(), "no .vmcx/.vmrs in {}", dir.display());
    for f in files {
        let bytes = std::fs::read(&f).unwrap();
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        truncations(&name, &bytes);
    }
}

// ---------------------------------------------------------------------------
// (b) One byte flipped.

#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    /// A checksum or a check covers the byte: a strict open fails.
    Fail,
    /// Nothing covers it: a strict open reads the same tree, no problems.
    Same,
    /// A file header copy: the other copy is used, a problem names this one.
    HeaderCopy(usize),
    /// Either, but when it opens it is the same tree.
    Either,
}

/// What flipping each byte of the structures of `bytes` must do.
fn expectations(bytes: &[u8], s: &Store) -> Vec<(usize, Expect)> {
    let mut v = Vec::new();
    let mut range = |r: std::ops::Range<usize>, e: Expect| v.extend(r.map(|i| (i, e)));
    range(0..HEADER_LEN, Expect::HeaderCopy(0));
    range(HEADER_LEN..0x1000, Expect::Same);
    range(0x1000..0x1000 + HEADER_LEN, Expect::HeaderCopy(1));
    range(0x1000 + HEADER_LEN..0x2000, Expect::Same);
    for t in s.object_tables() {
        let at = t.offset as usize;
        let end = at + OBJECT_TABLE_HEADER_LEN + t.capacity as usize * OBJECT_ENTRY_LEN;
        range(at..at + 4, Expect::Fail);
        // The low byte of EntriesCount: 227 ^ 0xFF = 28 slots still hold
        // every object of the sample.
        range(at + 4..at + 5, Expect::Either);
        range(at + 5..end, Expect::Fail);
        range(end..at + 4096, Expect::Same);
    }
    let log = s.header().log_offset as usize;
    range(log..log + LOG_HEADER_LEN, Expect::Fail);
    range(
        log + LOG_HEADER_LEN..log + s.header().log_header_size as usize,
        Expect::Same,
    );
    for t in s.key_tables() {
        let at = t.offset as usize;
        range(at..at + KEY_TABLE_HEADER_LEN, Expect::Fail);
        let mut off = KEY_TABLE_HEADER_LEN;
        while off + KEY_ENTRY_HEADER_LEN <= t.size as usize {
            let e = &bytes[at + off..];
            let size = u32::from_le_bytes(e[2..6].try_into().unwrap()) as usize;
            assert!(size >= KEY_ENTRY_HEADER_LEN);
            if e[0] == 1 {
                range(at + off..at + off + 1, Expect::Fail);
                range(
                    at + off + 1..at + off + KEY_ENTRY_HEADER_LEN,
                    Expect::Either,
                );
                range(
                    at + off + KEY_ENTRY_HEADER_LEN..at + off + size,
                    Expect::Same,
                );
            } else {
                let m = meaningful(e);
                range(at + off..at + off + m, Expect::Fail);
                range(at + off + m..at + off + size, Expect::Same);
            }
            off += size;
        }
        assert_eq!(off, t.size as usize, "written tables are tiled exactly");
    }
    v
}

#[test]
fn flipped_bytes_are_caught_or_harmless() {
    let bytes = Arc::new(sample());
    let pristine = open(&bytes, NAME, false).unwrap();
    assert_eq!(pristine.key_tables().len(), 2);
    assert_eq!(pristine.stats().file_objects, 2);
    assert!(pristine.problems().is_empty());
    let tree = tree_text(&pristine);
    let cases = expectations(&bytes, &pristine);
    assert!(cases.len() > 0x3000 + 2 * 4096);
    let mut counts = [0usize; 4];
    for (at, expect) in cases {
        let st = |lenient| {
            Store::from_storage(
                Arc::new(Flipped {
                    base: bytes.clone(),
                    at,
                }),
                NAME,
                options(lenient),
            )
        };
        let strict = catch_unwind(AssertUnwindSafe(|| st(false)))
            .unwrap_or_else(|_| panic!("flip at {at:#x}: strict open panicked"));
        let lenient = catch_unwind(AssertUnwindSafe(|| st(true)))
            .unwrap_or_else(|_| panic!("flip at {at:#x}: lenient open panicked"));
        let what = format!("flip at {at:#x} ({expect:?})");
        match &strict {
            Err(e) => {
                names_file(e, NAME);
                assert!(
                    matches!(e, Error::Corrupt { .. } | Error::Unsupported { .. }),
                    "{what}: {e:?}"
                );
                assert!(
                    matches!(expect, Expect::Fail | Expect::Either),
                    "{what}: strict open failed: {e}"
                );
                // Lenient either fails too or says what it skipped.
                if let Ok(l) = &lenient {
                    assert!(!l.problems().is_empty(), "{what}: lenient open hid: {e}");
                }
                counts[0] += 1;
            }
            Ok(s) => {
                assert!(
                    expect != Expect::Fail,
                    "{what}: strict open accepted a covered byte"
                );
                assert_eq!(tree_text(s), tree, "{what}: another tree");
                match expect {
                    Expect::HeaderCopy(i) => {
                        assert_eq!(s.headers().0, 1 - i, "{what}");
                        assert!(
                            s.problems()
                                .iter()
                                .any(|p| p.message.contains(&format!("copy {i}"))),
                            "{what}: {:?}",
                            s.problems()
                        );
                        counts[1] += 1;
                    }
                    Expect::Same => {
                        assert!(s.problems().is_empty(), "{what}: {:?}", s.problems());
                        counts[2] += 1;
                    }
                    _ => counts[3] += 1,
                }
                let l = lenient
                    .as_ref()
                    .unwrap_or_else(|e| panic!("{what}: lenient open failed: {e}"));
                assert_eq!(tree_text(l), tree, "{what}: lenient read another tree");
            }
        }
        if let Ok(l) = &lenient {
            catch_unwind(AssertUnwindSafe(|| read_values(l)))
                .unwrap_or_else(|_| panic!("{what}: reading values panicked"));
        }
    }
    println!(
        "failed {}, header copy {}, same {}, either-ok {}",
        counts[0], counts[1], counts[2], counts[3]
    );
    assert!(counts.iter().take(3).all(|&c| c > 0), "{counts:?}");
}

#[test]
fn lenient_reports_each_checksum_failure() {
    // A bad entry checksum in each kind of checksummed structure: strict
    // fails naming the structure, lenient names it as a problem and keeps
    // what it can.
    let bytes = sample();
    let s = open(&bytes, NAME, false).unwrap();
    let (name_at, _) = entry_of(&s, "/configuration/properties/version");
    let kt = s.key_tables()[1].offset as usize;
    let empty_slot = ROOT_OBJECT_TABLE as usize + OBJECT_TABLE_HEADER_LEN + 100 * OBJECT_ENTRY_LEN;
    for (at, what) in [
        (name_at + 0x10, "key entry"),
        (kt + 2, "key table header"),
        (empty_slot + 6, "object table entry"),
    ] {
        let mut b = bytes.clone();
        b[at] ^= 0x01;
        let e = open(&b, NAME, false).unwrap_err();
        assert!(
            matches!(&e, Error::Corrupt { what: w, .. } if *w == what),
            "{what}: {e:?}"
        );
        let l = open(&b, NAME, true).unwrap();
        assert!(
            l.problems()
                .iter()
                .any(|p| p.message.contains(what) && p.message.contains("checksum")),
            "{what}: {:?}",
            l.problems()
        );
        read_values(&l);
    }
}

// ---------------------------------------------------------------------------
// (c) Broken parent references.

/// configuration { a { a_leaf } b { b_leaf } c d { d_leaf } }
fn family() -> (Vec<u8>, Store) {
    let mut t = Tree::new();
    let c = t.add(Tree::ROOT, "configuration", Value::Node);
    let a = t.add(c, "a", Value::Node);
    t.add(a, "a_leaf", Value::Int(1));
    let b = t.add(c, "b", Value::Node);
    t.add(b, "b_leaf", Value::Int(2));
    t.add(c, "c", Value::Int(3));
    let d = t.add(c, "d", Value::Node);
    t.add(d, "d_leaf", Value::Bool(false));
    let bytes = write_tree(&t);
    let s = open(&bytes, NAME, false).unwrap();
    // The helper computes what the writer checksummed.
    for id in s.tree().walk() {
        let (at, _) = entry_of_id(&s, id);
        let stored = u32::from_le_bytes(bytes[at + 0x0C..at + 0x10].try_into().unwrap());
        assert_eq!(
            crc_without(&bytes[at..at + meaningful(&bytes[at..])], 0x0C),
            stored
        );
    }
    (bytes, s)
}

/// Strict fails with `why` at the first patched entry; lenient drops
/// exactly `dropped` and reports `why`.
fn broken_parents(case: &str, bytes: &[u8], why: &str, dropped: &[&str]) {
    let e = open(bytes, NAME, false).unwrap_err();
    names_file(&e, NAME);
    assert!(
        matches!(
            &e,
            Error::Corrupt {
                what: "key entry",
                ..
            }
        ) && e.to_string().contains(why),
        "{case}: {e}"
    );
    let l = open(bytes, NAME, true).unwrap();
    assert!(
        l.problems().iter().any(|p| p.message.contains(why)),
        "{case}: {:?}",
        l.problems()
    );
    let keys: Vec<String> = l
        .tree()
        .walk()
        .into_iter()
        .map(|id| l.tree().path(id))
        .collect();
    let all = [
        "/configuration",
        "/configuration/a",
        "/configuration/a/a_leaf",
        "/configuration/b",
        "/configuration/b/b_leaf",
        "/configuration/c",
        "/configuration/d",
        "/configuration/d/d_leaf",
    ];
    let expected: Vec<String> = all
        .iter()
        .filter(|k| !dropped.contains(k))
        .map(|k| k.to_string())
        .collect();
    assert_eq!(keys, expected, "{case}");
    read_values(&l);
}

#[test]
fn parent_points_at_no_entry() {
    let (bytes, s) = family();
    let (at, _) = entry_of(&s, "/configuration/a/a_leaf");
    let (table, a_off) = parent_ref(&s, "/configuration/a");
    for (case, t, o) in [
        ("inside an entry", table, a_off + 1),
        ("past the table", table, 5000),
        ("the table header", table, 0),
        ("no such table", 9, a_off),
        ("table 0, not offset 0", 0, a_off),
    ] {
        let mut b = bytes.clone();
        set_parent(&mut b, at, t, o);
        broken_parents(case, &b, "points at no entry", &["/configuration/a/a_leaf"]);
    }
}

#[test]
fn parent_is_not_a_node() {
    let (bytes, s) = family();
    let (at, _) = entry_of(&s, "/configuration/a/a_leaf");
    for target in ["/configuration/c", "/configuration/d/d_leaf"] {
        let mut b = bytes.clone();
        let (t, o) = parent_ref(&s, target);
        set_parent(&mut b, at, t, o);
        broken_parents(target, &b, "is not a node", &["/configuration/a/a_leaf"]);
    }
    // A leaf that is its own parent.
    let mut b = bytes.clone();
    let (t, o) = parent_ref(&s, "/configuration/a/a_leaf");
    set_parent(&mut b, at, t, o);
    broken_parents("itself", &b, "is not a node", &["/configuration/a/a_leaf"]);
}

#[test]
fn parents_forming_a_cycle() {
    let (bytes, s) = family();
    // a and b each other's parents: both and their children are dropped.
    let mut b = bytes.clone();
    let (a_at, _) = entry_of(&s, "/configuration/a");
    let (b_at, _) = entry_of(&s, "/configuration/b");
    let (at, ao) = parent_ref(&s, "/configuration/a");
    let (bt, bo) = parent_ref(&s, "/configuration/b");
    set_parent(&mut b, a_at, bt, bo);
    set_parent(&mut b, b_at, at, ao);
    broken_parents(
        "a <-> b",
        &b,
        "cycle",
        &[
            "/configuration/a",
            "/configuration/a/a_leaf",
            "/configuration/b",
            "/configuration/b/b_leaf",
        ],
    );
    // A node that is its own parent.
    let mut b = bytes.clone();
    let (d_at, _) = entry_of(&s, "/configuration/d");
    let (dt, d_off) = parent_ref(&s, "/configuration/d");
    set_parent(&mut b, d_at, dt, d_off);
    broken_parents(
        "d -> d",
        &b,
        "cycle",
        &["/configuration/d", "/configuration/d/d_leaf"],
    );
    // A three-node cycle below the root: configuration -> d -> a -> configuration.
    let mut b = bytes.clone();
    let (c_at, _) = entry_of(&s, "/configuration");
    let (ct, co) = parent_ref(&s, "/configuration");
    set_parent(&mut b, c_at, at, ao);
    set_parent(&mut b, a_at, dt, d_off);
    set_parent(&mut b, d_at, ct, co);
    let e = open(&b, NAME, false).unwrap_err();
    assert!(e.to_string().contains("cycle"), "{e}");
    let l = open(&b, NAME, true).unwrap();
    assert!(l.tree().is_empty(), "{:?}", l.tree().walk());
    assert!(l.problems().iter().any(|p| p.message.contains("cycle")));
}

// ---------------------------------------------------------------------------
// (d) Absurd sizes and counts.

/// Runs strict and lenient opens of `bytes` (reading every value) under
/// `quick` with the allocation bound; the strict one must fail with
/// `Error::Corrupt` whose message holds `why`. Returns the lenient result.
fn absurd(case: &str, bytes: Vec<u8>, why: &str) -> Result<Opened, Error> {
    let limit = 2 * bytes.len() + (1 << 20);
    let bytes = Arc::new(bytes);
    let b = bytes.clone();
    let (strict, peak) = quick(case, move || probe(&b, false));
    assert!(
        peak <= limit,
        "{case}: strict open allocated {peak} bytes at once"
    );
    match strict {
        Err(e @ Error::Corrupt { .. }) => {
            assert!(e.to_string().contains(why), "{case}: {e}")
        }
        other => panic!("{case}: strict open gave {other:?}"),
    }
    let b = bytes.clone();
    let (lenient, peak) = quick(case, move || probe(&b, true));
    assert!(
        peak <= limit,
        "{case}: lenient open allocated {peak} bytes at once"
    );
    if let Err(e) = &lenient {
        assert!(
            matches!(e, Error::Corrupt { .. } | Error::Unsupported { .. }),
            "{case}: {e:?}"
        );
    }
    lenient
}

#[test]
fn absurd_object_tables() {
    let bytes = sample();
    let s = open(&bytes, NAME, false).unwrap();
    let root = ROOT_OBJECT_TABLE as usize;
    let end = bytes.len() as u64;

    let mut b = bytes.clone();
    b[root + 4..root + 8].copy_from_slice(&u32::MAX.to_le_bytes());
    absurd("EntriesCount 0xFFFFFFFF", b, "do not fit").unwrap_err();

    let mut b = bytes.clone();
    put_object_entry(
        &mut b,
        last_slot(ROOT_OBJECT_TABLE),
        link(ROOT_OBJECT_TABLE, 4096),
    );
    absurd("root table links to itself", b, "loops").unwrap_err();

    // Two tables linking to each other.
    let mut b = bytes.clone();
    put_object_entry(&mut b, last_slot(ROOT_OBJECT_TABLE), link(end, 4096));
    b.extend(object_table_page(
        OBJECT_TABLE_CAPACITY,
        link(ROOT_OBJECT_TABLE, 4096),
    ));
    absurd("two tables in a loop", b, "loops").unwrap_err();

    // A long chain whose end links back into the middle.
    let mut b = bytes.clone();
    put_object_entry(&mut b, last_slot(ROOT_OBJECT_TABLE), link(end, 4096));
    for i in 0..64u64 {
        let next = if i == 63 {
            end + 10 * 4096
        } else {
            end + (i + 1) * 4096
        };
        b.extend(object_table_page(OBJECT_TABLE_CAPACITY, link(next, 4096)));
    }
    absurd("a chain of 64 looping back", b, "loops").unwrap_err();

    // A chained table that claims 4 GiB and nearly as many entries.
    let mut b = bytes.clone();
    put_object_entry(&mut b, last_slot(ROOT_OBJECT_TABLE), link(end, u32::MAX));
    b.extend(object_table_page((u32::MAX - 8) / 18, ObjectEntry::EMPTY));
    absurd("a 4 GiB chained table", b, "past the end").unwrap_err();

    // Key table objects of 4 GiB, and of 1 MiB past the end.
    for (size, why) in [(u32::MAX, "key table"), (1 << 20, "key table")] {
        let mut b = bytes.clone();
        let last = s.key_tables().iter().map(|t| t.offset).max().unwrap();
        let at = object_entry_at(&s, last);
        let (mut e, _) = ObjectEntry::decode(&b[at..at + OBJECT_ENTRY_LEN]);
        e.size = size;
        put_object_entry(&mut b, at, e);
        let l = absurd(&format!("key table SizeInBytes {size:#x}"), b, why).unwrap();
        assert!(!l.problems.is_empty());
        assert!(l.keys.len() < s.tree().walk().len(), "{:?}", l.keys);
    }

    // A file object of 4 GiB: it may open (nothing else lies past it),
    // but reading its value allocates no more than the file holds.
    let blob = s
        .tree()
        .find(NAME, "/configuration/properties/blob")
        .unwrap();
    let Value::Blob(bl) = s.tree().key(blob).value else {
        panic!("not a file object")
    };
    let mut b = bytes.clone();
    let at = object_entry_at(&s, bl.offset);
    let (mut e, _) = ObjectEntry::decode(&b[at..at + OBJECT_ENTRY_LEN]);
    e.size = u32::MAX;
    put_object_entry(&mut b, at, e);
    let limit = 2 * b.len() + (1 << 20);
    let b = Arc::new(b);
    for lenient in [false, true] {
        let b = b.clone();
        let (r, peak) = quick("4 GiB file object", move || probe(&b, lenient));
        assert!(
            peak <= limit,
            "4 GiB file object: allocated {peak} bytes at once"
        );
        if let Err(e) = r {
            assert!(matches!(e, Error::Corrupt { .. }), "{e:?}");
        }
    }
}

#[test]
fn absurd_key_tables_and_entries() {
    let bytes = sample();
    let s = open(&bytes, NAME, false).unwrap();

    // An entry SizeInBytes far past the table.
    let (at, _) = entry_of(&s, "/configuration/properties/version");
    let mut b = bytes.clone();
    b[at + 2..at + 6].copy_from_slice(&0xFFFF_FFF0u32.to_le_bytes());
    resign_entry(&mut b, at);
    let l = absurd("entry SizeInBytes 0xFFFFFFF0", b, "runs past the table").unwrap();
    assert!(l.problems.iter().any(|p| p.contains("runs past the table")));

    // An entry SizeInBytes below the header size.
    let mut b = bytes.clone();
    b[at + 2..at + 6].copy_from_slice(&5u32.to_le_bytes());
    resign_entry(&mut b, at);
    absurd("entry SizeInBytes 5", b, "runs past the table").unwrap();

    // An inline string claiming 4 GiB.
    let (at, size) = entry_of(&s, "/configuration/properties/name");
    let mut b = bytes.clone();
    let v = at + KEY_ENTRY_HEADER_LEN + b[at + 0x14] as usize;
    b[v..v + 4].copy_from_slice(&0xFFFF_FFF0u32.to_le_bytes());
    resign_entry_len(&mut b, at, size - 12);
    absurd("string length 0xFFFFFFF0", b, "value needs").unwrap();

    // A name longer than its entry.
    let mut b = bytes.clone();
    b[at + 0x14] = 0xFF;
    resign_entry_len(&mut b, at, size - 12);
    absurd("name length 255", b, "does not fit the entry").unwrap();

    // A file-object value of 4 GiB, and one at an offset that overflows.
    let blob = s
        .tree()
        .find(NAME, "/configuration/properties/blob")
        .unwrap();
    let (at, _) = entry_of_id(&s, blob);
    let fod = at + KEY_ENTRY_HEADER_LEN + bytes[at + 0x14] as usize;
    for (len, offset) in [
        (u32::MAX, None),
        (1000, Some(u64::MAX - 100)),
        (u32::MAX, Some(u64::MAX)),
        (u32::MAX, Some(0x2000)),
    ] {
        let mut b = bytes.clone();
        b[fod..fod + 4].copy_from_slice(&len.to_le_bytes());
        if let Some(o) = offset {
            b[fod + 4..fod + 12].copy_from_slice(&o.to_le_bytes());
        }
        resign_entry(&mut b, at);
        let case = format!("file-object value {len:#x} bytes at {offset:x?}");
        let l = absurd(&case, b, "not inside any declared file object").unwrap();
        assert_eq!(l.unreadable_values, 1, "{case}");
        assert_eq!(l.keys.len(), s.tree().walk().len(), "{case}");
    }

    // A key table header claiming index 0.
    let kt = s.key_tables()[0].offset as usize;
    let mut b = bytes.clone();
    b[kt..kt + KEY_TABLE_HEADER_LEN].copy_from_slice(
        &KeyTableHeader {
            index: 0,
            sequence: 1,
        }
        .encode(),
    );
    absurd("key table index 0", b, "index 0").unwrap();
}

#[test]
fn absurd_replay_logs() {
    let bytes = sample();
    let s = open(&bytes, NAME, false).unwrap();
    let tree = tree_text(&s);
    let log = s.header().log_offset as usize;
    let hsize = s.header().log_header_size as usize;

    // CurrentEntriesCount 0xFFFFFFFF with a valid header checksum.
    let mut b = bytes.clone();
    let mut h = log_header(&b, log);
    h.entry_count = u32::MAX;
    b[log..log + LOG_HEADER_LEN].copy_from_slice(&h.encode());
    let l = absurd("CurrentEntriesCount 0xFFFFFFFF", b, "pending records").unwrap();
    assert_eq!(l.tree, tree, "lenient ignores the log");
    assert!(l.problems.iter().any(|p| p.contains("replay log")));

    // Both counts 0xFFFFFFFF and a 4 GiB log header area: the records
    // would be 112 GiB, the file holds 60 KiB.
    let mut b = bytes.clone();
    set_headers(&mut b, |h| {
        h.log_header_size = 0xFFFF_FFF0;
        h.log_size = 1 << 32;
    });
    let mut h = log_header(&b, log);
    h.entry_count = 0x0900_0000;
    h.max_entries = u32::MAX;
    b[log..log + LOG_HEADER_LEN].copy_from_slice(&h.encode());
    absurd("0x09000000 records in a 4 GiB header", b, "past the end").unwrap();

    // A record whose destination runs past the end of the address space.
    let mut b = bytes.clone();
    put_records(&mut b, log, hsize, &[(u64::MAX - 8, vec![0xAB; 16])]);
    let l = absurd("record at u64::MAX - 8", b, "overflows").unwrap();
    assert_eq!(l.tree, tree, "lenient ignores the log");

    // A record of 4 GiB.
    let mut b = bytes.clone();
    put_records(&mut b, log, hsize, &[(0x2FFE, vec![0, 0])]);
    let e = log + LOG_HEADER_LEN;
    let (mut r, _) = LogEntry::decode(&b[e..e + LOG_ENTRY_LEN]);
    r.dest_size = u32::MAX;
    b[e..e + LOG_ENTRY_LEN].copy_from_slice(&r.encode());
    absurd("a 4 GiB record", b, "outside the log data area").unwrap();

    // A record far past the end of the file, and a file-object value
    // claiming 4 GiB in the gap it leaves: nothing may be allocated for it.
    let mut b = bytes.clone();
    let far = 1u64 << 40;
    put_records(&mut b, log, hsize, &[(far, vec![0xCD; 16])]);
    let blob = s
        .tree()
        .find(NAME, "/configuration/properties/blob")
        .unwrap();
    let (at, _) = entry_of_id(&s, blob);
    let fod = at + KEY_ENTRY_HEADER_LEN + b[at + 0x14] as usize;
    b[fod..fod + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    b[fod + 4..fod + 12].copy_from_slice(&(far - (1 << 32)).to_le_bytes());
    resign_entry(&mut b, at);
    let l = absurd(
        "a 4 GiB value in a gap",
        b,
        "not inside any declared file object",
    )
    .unwrap();
    assert_eq!(l.unreadable_values, 1);

    // Thousands of records all carrying the same 16 KiB of log data: the
    // log moved to the end of the file with a 64 KiB header area.
    let mut b = bytes.clone();
    let new_log = b.len();
    let (hs, data) = (0x10000usize, 0x4000usize);
    b.resize(new_log + hs + data, 0);
    b[new_log..new_log + LOG_HEADER_LEN].copy_from_slice(&LogHeader::new(u32::MAX).encode());
    set_headers(&mut b, |h| {
        h.log_offset = new_log as u64;
        h.log_header_size = hs as u32;
        h.log_size = (hs + data) as u64;
    });
    let n = (hs - LOG_HEADER_LEN) / LOG_ENTRY_LEN;
    for i in 0..n {
        let e = LogEntry {
            dest_offset: log as u64,
            dest_size: data as u32,
            offset_in_log: hs as u64,
            data_checksum: crc32fast::hash(&vec![0u8; data]),
        };
        let at = new_log + LOG_HEADER_LEN + i * LOG_ENTRY_LEN;
        b[at..at + LOG_ENTRY_LEN].copy_from_slice(&e.encode());
    }
    let mut h = log_header(&b, new_log);
    h.entry_count = n as u32;
    b[new_log..new_log + LOG_HEADER_LEN].copy_from_slice(&h.encode());
    let len = b.len();
    let (r, peak) = quick("records over the same data", move || probe(&b, false));
    assert!(peak <= 2 * len + (1 << 20));
    let e = r.unwrap_err();
    assert!(
        matches!(
            &e,
            Error::Corrupt {
                what: "replay log",
                ..
            }
        ) && e
            .to_string()
            .contains("more than the 0x4000 bytes of log data area"),
        "{e}"
    );
}

#[test]
fn a_deep_tree_converts_to_json_without_overflowing_the_stack() {
    // Nested nodes in a valid file (every checksum right): reading is
    // iterative at any depth; the JSON conversion recurses, so it refuses
    // trees deeper than json::MAX_DEPTH instead of overflowing the stack
    // (here a 1 MiB one). The leaf under MAX_DEPTH - 1 nodes is at MAX_DEPTH.
    for (depth, converts) in [(vmcx::json::MAX_DEPTH - 1, true), (20_000, false)] {
        let mut t = Tree::new();
        let mut k = Tree::ROOT;
        for _ in 0..depth {
            k = t.add(k, "n", Value::Node);
        }
        t.add(k, "leaf", Value::Int(1));
        let bytes = write_tree(&t);
        let s = open(&bytes, NAME, false).unwrap();
        assert_eq!(s.stats().keys, depth + 1);
        let r = std::thread::Builder::new()
            .stack_size(1 << 20)
            .spawn(move || vmcx::json::to_json(s.tree(), Tree::ROOT, &|id| s.value(id)).map(|_| ()))
            .unwrap()
            .join()
            .expect("to_json panicked");
        if converts {
            r.unwrap();
        } else {
            let e = r.unwrap_err();
            assert!(e.to_string().contains("nested deeper than"), "{e}");
        }
    }
}

/// A path that cannot be opened is `Error::Open` naming it.
#[test]
fn unopenable_paths_name_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.vmcx");
    let e = Store::open(&missing).unwrap_err();
    assert!(matches!(e, Error::Open { .. }), "{e:?}");
    assert!(
        e.to_string()
            .starts_with(&format!("{}: cannot open: ", missing.display())),
        "{e}"
    );
}
