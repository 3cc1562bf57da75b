//! Opens the input as a Hyper-V saved state (.vmrs): as a HyperVStorage
//! container, strictly or, when that fails, leniently, then
//! `SavedState::from_store`. When it opens, reads a bounded amount of
//! guest memory (the first and last 8 KiB of each of at most 64 ranges,
//! and a read across each range's end) with both page codecs, converts
//! the VP registers to JSON and, when the guest
//! memory is at most 16 MiB, extracts it as an ELF core (and as a raw image
//! when that stays under 64 MiB) to a scratch file. The raw input is also
//! fed straight to the RamBlock, XPRESS, LZNT1 and partition-state
//! decoders. Nothing may panic; every error from opening must name the
//! file; a decoded RamBlock is exactly 1 MiB; no decoder writes more than
//! its limit; reads past 2^64 fail.
//!
//! Seeds (`fuzz/seeds/vmrs_open/`) are written by
//! `cargo run -p vmrs --example make_vmrs_fuzz_seeds -- fuzz/seeds/vmrs_open`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use std::fs::File;
use std::sync::{Arc, Mutex, OnceLock};
use vmcx::{MemStorage, OpenOptions, Store};
use vmrs::extract::{extract, Format};
use vmrs::partition_state::PartitionState;
use vmrs::ram_block::{self, PageCodec, BLOCK_LEN};
use vmrs::{lznt1, registers_json, xpress, SavedState};

const NAME: &str = "fuzz-input.vmrs";
/// Bytes read at each end of a range.
const EDGE: u64 = 8192;
const MAX_RANGES: usize = 64;
/// Guest memory extracted at most (ELF), and raw image length at most.
const EXTRACT_MAX: u64 = 16 << 20;
const RAW_FILE_MAX: u64 = 64 << 20;
/// Output limits given to the page decoders.
const XPRESS_MAX: usize = 4096;
const LZNT1_MAX: usize = 65536;

/// One scratch file per process, truncated by every extraction.
fn scratch() -> &'static Mutex<Option<File>> {
    static F: OnceLock<Mutex<Option<File>>> = OnceLock::new();
    F.get_or_init(|| {
        let path = std::env::temp_dir().join(format!("vmrs_open-{}.out", std::process::id()));
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .ok();
        // Unlinked at once: the open descriptor is all that is needed.
        let _ = std::fs::remove_file(&path);
        Mutex::new(f)
    })
}

fuzz_target!(|data: &[u8]| {
    decoders(data);
    let open = |lenient: bool| {
        let options = OpenOptions {
            write: false,
            lenient,
            no_replay: false,
        };
        Store::from_storage(Arc::new(MemStorage::new(data.to_vec())), NAME, options)
    };
    // A file that opens strictly gives the same tree leniently (vmcx_open
    // checks that), so the lenient open is only tried when the strict one
    // fails.
    let Ok(store) = open(false).or_else(|_| open(true)) else {
        return;
    };
    match SavedState::from_store(store) {
        Ok(mut s) => exercise(&mut s),
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.contains(NAME), "error does not name the file: {msg}");
        }
    }
});

/// The raw input through each decoder on its own.
fn decoders(data: &[u8]) {
    let mut out = Vec::new();
    for codec in [PageCodec::Xpress, PageCodec::Lznt1] {
        if ram_block::decode_with(codec, data, &mut out).is_ok() {
            assert_eq!(out.len(), BLOCK_LEN, "a decoded RamBlock is 1 MiB");
        }
    }
    let _ = xpress::decompress(data, XPRESS_MAX, &mut out);
    assert!(out.len() <= XPRESS_MAX, "XPRESS wrote {} bytes", out.len());
    let _ = lznt1::decompress(data, LZNT1_MAX, &mut out);
    assert!(out.len() <= LZNT1_MAX, "LZNT1 wrote {} bytes", out.len());
    if let Ok(p) = PartitionState::parse(data) {
        assert!(p.vps.len() <= p.chunks.len());
        for (_, at, len) in &p.chunks {
            assert!(at + 16 + len <= data.len(), "chunk past the blob");
        }
    }
}

fn exercise(s: &mut SavedState) {
    let _ = (
        s.schema(),
        s.vm_version(),
        s.kind(),
        s.has_memory(),
        s.block_count(),
        s.memory_size(),
    );
    if let Some(p) = s.partition_state() {
        for vp in p.vps.iter().take(MAX_RANGES) {
            let j = registers_json::to_json(vp);
            assert!(j.is_object());
        }
    }
    let _ = s.partition_state_error();
    for codec in [PageCodec::Xpress, PageCodec::Lznt1] {
        s.set_page_codec(codec);
        read_ranges(s);
    }
    // Reads past the top of the address space fail (no wrap to GPA 0).
    let mut buf = [0u8; 16];
    assert!(s.read_gpa(u64::MAX - 7, &mut buf).is_err());
    s.set_page_codec(PageCodec::Xpress);
    if s.memory_size() <= EXTRACT_MAX {
        extract_bounded(s);
    }
}

fn read_ranges(s: &SavedState) {
    let ranges: Vec<_> = s.ranges().iter().take(MAX_RANGES).copied().collect();
    let mut buf = vec![0u8; (EDGE + 4096) as usize];
    for r in ranges {
        let n = r.len.min(EDGE) as usize;
        let end = r.gpa + r.len;
        let _ = s.read_gpa(r.gpa, &mut buf[..n]);
        let _ = s.read_gpa(end - n as u64, &mut buf[..n]);
        if end.checked_add(4096).is_some() {
            let _ = s.read_gpa(end - n as u64, &mut buf[..n + 4096]);
        }
        let _ = s.raw_block_offset(r.block.first_page / 256);
    }
}

fn extract_bounded(s: &SavedState) {
    let Ok(mut guard) = scratch().lock() else {
        return;
    };
    let Some(f) = guard.as_mut() else { return };
    let raw_len = s.ranges().iter().map(|r| r.gpa + r.len).max().unwrap_or(0);
    let mut formats = vec![Format::Elf];
    if raw_len <= RAW_FILE_MAX {
        formats.push(Format::Raw);
    }
    for format in formats {
        if let Ok(st) = extract(s, f, format, &mut |_| {}) {
            assert_eq!(st.ranges, s.ranges().len());
            assert_eq!(st.bytes, s.memory_size());
            assert_eq!(f.metadata().map(|m| m.len()).ok(), Some(st.file_len));
        }
    }
    let _ = f.set_len(0);
}
