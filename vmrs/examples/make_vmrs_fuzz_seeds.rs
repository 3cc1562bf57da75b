//! Writes the seeds of the `vmrs_open` fuzz target (`fuzz/seeds/vmrs_open/`)
//! with our own writers, so no sample file is copied into the repository.
//! A raw RamBlock is a whole 1 MiB, so every seed keeps its memory in
//! compressed RamBlocks (the token stream of `vmrs::ram_block`) and stays
//! a few KiB:
//!
//! - `two-ranges.vmrs`: one VP; 4 pages at GPA 0 (RamBlock0) and 8 pages at
//!   GPA 1 MiB (RamBlock1), a hole between them; pattern pages, a pattern
//!   run, a raw page and an XPRESS page;
//! - `two-vps.vmrs`: written by `vmrs::writer` (two VPs with registers,
//!   `/savedstate/type`, an `hvkit` blob, an 8 KiB piece at GPA 2 MiB), then
//!   rewritten with its raw 1 MiB RamBlock0 re-encoded as a token stream;
//! - `tokens.vmrs`: one 1 MiB range whose RamBlock0 uses every token kind:
//!   pattern page, pattern run, raw span, XPRESS span, raw page, XPRESS
//!   page, end.
//!
//! Each seed is opened again and its memory compared with what was put in.
//!
//! ```sh
//! cargo run -p vmrs --example make_vmrs_fuzz_seeds -- fuzz/seeds/vmrs_open
//! ```

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use vmcx::{MemStorage, OpenOptions, Store, Tree, Value};
use vmrs::memory_block::MemoryBlock;
use vmrs::partition_state::{self, Segment, Table, VpRegisters};
use vmrs::ram_block::{BLOCK_LEN, PAGE, T_END, T_PATTERN_PAGE, T_PATTERN_RUN, T_SPAN};
use vmrs::{MemoryPiece, SavedState, SavedStateSpec};

/// A RamBlock token stream and the 1 MiB it decodes to.
#[derive(Default)]
struct Stream {
    bytes: Vec<u8>,
    plain: Vec<u8>,
}

impl Stream {
    fn u32(&mut self, v: u32) {
        self.bytes.extend_from_slice(&v.to_le_bytes());
    }
    fn pattern_run(&mut self, p: u64, count: u32) {
        if count == 1 {
            self.u32(T_PATTERN_PAGE);
            self.bytes.extend_from_slice(&p.to_le_bytes());
        } else {
            self.u32(T_PATTERN_RUN);
            self.bytes.extend_from_slice(&p.to_le_bytes());
            self.u32(count);
        }
        self.plain
            .extend(p.to_le_bytes().repeat(count as usize * PAGE / 8));
    }
    fn raw_page(&mut self, page: &[u8]) {
        self.u32(PAGE as u32);
        self.bytes.extend_from_slice(page);
        self.plain.extend_from_slice(page);
    }
    fn span_raw(&mut self, data: &[u8]) {
        self.u32(T_SPAN);
        self.u32(data.len() as u32);
        self.u32(data.len() as u32);
        self.bytes.extend_from_slice(data);
        self.plain.extend_from_slice(data);
    }
    /// `len` bytes of `b` (4..=65538): a literal and one XPRESS match.
    fn xpress_fill(b: u8, len: usize) -> Vec<u8> {
        let mut v = 0x7FFF_FFFFu32.to_le_bytes().to_vec();
        v.push(b);
        v.extend_from_slice(&7u16.to_le_bytes());
        v.extend_from_slice(&[0x0F, 0xFF]);
        v.extend_from_slice(&((len - 4) as u16).to_le_bytes());
        v
    }
    fn xpress_page(&mut self, b: u8) {
        let c = Stream::xpress_fill(b, PAGE);
        self.u32(c.len() as u32);
        self.bytes.extend_from_slice(&c);
        self.plain.extend(std::iter::repeat_n(b, PAGE));
    }
    fn span_xpress(&mut self, b: u8, len: usize) {
        let c = Stream::xpress_fill(b, len);
        self.u32(T_SPAN);
        self.u32(len as u32);
        self.u32(c.len() as u32);
        self.bytes.extend_from_slice(&c);
        self.plain.extend(std::iter::repeat_n(b, len));
    }
    /// Fills the rest of the block with zero pages and ends the stream.
    fn finish(mut self) -> Stream {
        let rest = (BLOCK_LEN - self.plain.len()) / PAGE;
        if rest > 0 {
            self.pattern_run(0, rest as u32);
        }
        self.u32(T_END);
        self
    }

    /// Encodes a whole block: runs of one 8-byte pattern, else raw pages.
    fn encode(block: &[u8]) -> Stream {
        let mut s = Stream::default();
        let mut run: Option<(u64, u32)> = None;
        for page in block.chunks(PAGE) {
            let first = u64::from_le_bytes(page[..8].try_into().unwrap_or_default());
            let uniform = page.chunks(8).all(|w| w == first.to_le_bytes());
            match (uniform, run) {
                (true, Some((p, n))) if p == first => run = Some((p, n + 1)),
                (true, _) => {
                    if let Some((p, n)) = run {
                        s.pattern_run(p, n);
                    }
                    run = Some((first, 1));
                }
                (false, _) => {
                    if let Some((p, n)) = run.take() {
                        s.pattern_run(p, n);
                    }
                    s.raw_page(page);
                }
            }
        }
        if let Some((p, n)) = run {
            s.pattern_run(p, n);
        }
        s.u32(T_END);
        s
    }
}

fn desc(page_count: u64, first_page: u64, gpa: u64) -> Value {
    let b = MemoryBlock {
        version: 3,
        flags: 0,
        page_count,
        first_page,
        gpa_page: gpa / PAGE as u64,
        virtual_node: 0,
        ksr_block_id: 0,
    };
    Value::Array(b.encode().to_vec())
}

fn text_page(seed: u8) -> Vec<u8> {
    (0..PAGE)
        .map(|i| seed.wrapping_add((i * 7 % 251) as u8))
        .collect()
}

fn vp(index: u32) -> VpRegisters {
    let mut v = VpRegisters {
        index,
        ..VpRegisters::default()
    };
    v.gp[16] = 0xFFFF_F800_1234_5678 + u64::from(index); // rip
    v.gp[4] = 0xFFFF_F800_0000_8000; // rsp
    v.control = [0x8005_0033, 0, 0x1AD000, 0x370678, 0, 0xD01];
    v.segments[1] = Segment {
        base: 0,
        limit: 0xFFFF_FFFF,
        selector: 0x10,
        attributes: 0x209B,
    };
    v.idtr = Table {
        limit: 0xFFF,
        base: 0xFFFF_F800_0000_0000,
    };
    v.gdtr = Table {
        limit: 0x6F,
        base: 0xFFFF_F800_0000_1000,
    };
    v.xcr0 = 7;
    v
}

/// The keys of a saved state: `descs` as `RamMemoryBlock0`, 1, ... and
/// `blocks` as (RamBlock number, stream).
fn tree(vps: &[VpRegisters], descs: &[Value], blocks: &[(u64, &Stream)]) -> Tree {
    let mut t = Tree::new();
    let c = t.add(Tree::ROOT, "configuration", Value::Node);
    let p = t.add(c, "properties", Value::Node);
    t.add(p, "version", Value::Int(0x0A00));
    let ss = t.add(Tree::ROOT, "savedstate", Value::Node);
    t.add(ss, "VmVersion", Value::Int(0x0A00));
    t.add(ss, "type", Value::String("Snapshot".into()));
    let vm = t.add(ss, "savedVM", Value::Node);
    t.add(
        vm,
        "partition_state",
        Value::Array(partition_state::build(vps)),
    );
    for (i, d) in descs.iter().enumerate() {
        t.add(ss, &format!("RamMemoryBlock{i}"), d.clone());
    }
    for (n, s) in blocks {
        t.add(ss, &format!("RamBlock{n}"), Value::Array(s.bytes.clone()));
    }
    t
}

fn write(
    tree: &Tree,
    resolve: &dyn Fn(vmcx::KeyId) -> vmcx::Result<Value>,
) -> Result<Vec<u8>, String> {
    let mem = MemStorage::new(Vec::new());
    vmcx::writer::write(&mem, "seed", tree, resolve).map_err(|e| e.to_string())?;
    Ok(mem.to_vec())
}

fn no_blobs(_: vmcx::KeyId) -> vmcx::Result<Value> {
    Err(vmcx::Error::Invalid(
        "no file-object values to resolve".into(),
    ))
}

/// (file name, bytes, expected memory as (gpa, bytes))
type Seed = (&'static str, Vec<u8>, Vec<(u64, Vec<u8>)>);

fn two_ranges() -> Result<Seed, String> {
    let mut a = Stream::default();
    a.pattern_run(0x0123_4567_89AB_CDEF, 1);
    a.raw_page(&text_page(1));
    a.pattern_run(0, 1);
    a.xpress_page(0xA5);
    let a = a.finish();
    let mut b = Stream::default();
    b.pattern_run(0xFFFF_FFFF_0000_0000, 6);
    b.raw_page(&text_page(2));
    b.pattern_run(0x4242_4242_4242_4242, 1);
    let b = b.finish();
    let t = tree(
        &[vp(0)],
        &[desc(4, 0, 0), desc(8, 256, 0x10_0000)],
        &[(0, &a), (1, &b)],
    );
    let expect = vec![
        (0, a.plain[..4 * PAGE].to_vec()),
        (4 * PAGE as u64, vec![0; 0x10_0000 - 4 * PAGE]), // the hole
        (0x10_0000, b.plain[..8 * PAGE].to_vec()),
    ];
    Ok(("two-ranges.vmrs", write(&t, &no_blobs)?, expect))
}

fn two_vps() -> Result<Seed, String> {
    let mut data = text_page(3);
    data.extend(std::iter::repeat_n(0x5Au8, PAGE));
    let spec = SavedStateSpec {
        memory: vec![MemoryPiece::bytes(0x20_0000, data.clone())],
        vps: vec![vp(0), vp(1)],
        extra: vec![("kvm-state".into(), b"opaque hypervisor state".to_vec())],
        ..SavedStateSpec::default()
    };
    let mem = MemStorage::new(Vec::new());
    vmrs::writer::write(&mem, "seed", &spec).map_err(|e| e.to_string())?;
    let store = Store::from_storage(
        Arc::new(MemStorage::new(mem.to_vec())),
        "seed",
        OpenOptions::default(),
    )
    .map_err(|e| e.to_string())?;
    let mut t = store.tree().clone();
    let id = t
        .find_all("/savedstate/RamBlock0")
        .first()
        .copied()
        .ok_or("the writer wrote no RamBlock0")?;
    let raw = store.value(id).map_err(|e| e.to_string())?;
    let Value::Array(raw) = raw else {
        return Err("RamBlock0 is not a byte array".into());
    };
    let s = Stream::encode(&raw);
    if s.plain != raw {
        return Err("the block encoder lost bytes".into());
    }
    t.key_mut(id).value = Value::Array(s.bytes);
    let bytes = write(&t, &|id| store.value(id))?;
    Ok(("two-vps.vmrs", bytes, vec![(0x20_0000, data)]))
}

fn tokens() -> Result<Seed, String> {
    let mut s = Stream::default();
    s.pattern_run(0x1122_3344_5566_7788, 1);
    s.pattern_run(0xDEAD_BEEF_0000_0001, 2);
    let page = text_page(4);
    s.span_raw(&page[..96]);
    s.span_xpress(0x3C, PAGE - 96);
    s.raw_page(&page);
    s.xpress_page(0xC3);
    let s = s.finish();
    let t = tree(&[vp(0)], &[desc(256, 0, 0)], &[(0, &s)]);
    Ok(("tokens.vmrs", write(&t, &no_blobs)?, vec![(0, s.plain)]))
}

fn main() -> ExitCode {
    let Some(dir) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: make_vmrs_fuzz_seeds DIR");
        return ExitCode::from(2);
    };
    let run = || -> Result<(), String> {
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        for seed in [two_ranges, two_vps, tokens] {
            let (name, bytes, expect) = seed()?;
            let path = dir.join(name);
            std::fs::write(&path, &bytes).map_err(|e| format!("{}: {e}", path.display()))?;
            // Each seed must open strictly and give back its memory.
            let store = Store::from_storage(
                Arc::new(MemStorage::new(bytes.clone())),
                name,
                OpenOptions::default(),
            )
            .map_err(|e| e.to_string())?;
            let state = SavedState::from_store(store).map_err(|e| e.to_string())?;
            for (gpa, want) in &expect {
                let mut got = vec![0u8; want.len()];
                state.read_gpa(*gpa, &mut got).map_err(|e| e.to_string())?;
                if &got != want {
                    return Err(format!("{name}: memory at {gpa:#x} differs"));
                }
            }
            let vps = state.partition_state().map_or(0, |p| p.vps.len());
            println!(
                "{} ({} bytes, {} ranges, {} RamBlocks, {vps} VPs)",
                path.display(),
                bytes.len(),
                state.ranges().len(),
                state.block_count(),
            );
        }
        Ok(())
    };
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("make_vmrs_fuzz_seeds: {e}");
            ExitCode::FAILURE
        }
    }
}
