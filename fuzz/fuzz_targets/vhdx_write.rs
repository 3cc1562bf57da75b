//! Fuzz target: a sequence of writes, discards, resizes, flushes and
//! reopens on a fresh dynamic or differencing disk in memory, checked after
//! every operation (and after a final clean close and read-only reopen)
//! against an in-memory model of the guest bytes. Any error from a valid
//! operation, any accepted invalid one, and any byte that differs from the
//! model is a crash.
//!
//! ```text
//! byte 0   setup: bit 0 differencing; bit 1 2 MiB blocks (else 1 MiB);
//!          bit 2 4096-byte logical sectors (else 512); bits 3-4 size
//!          1-4 MiB; bits 5-6 parent size (2 MiB, 3 MiB + 5 sectors,
//!          6 MiB - 1 sector, 4 MiB); bit 7 parent layout: 0 a dynamic
//!          parent (1 MiB blocks: full, NOT_PRESENT, short full, ZERO,
//!          UNMAPPED, repeating), 1 a differencing parent (partial,
//!          NOT_PRESENT, short full, ZERO, repeating) over a dynamic
//!          grandparent 1 MiB smaller than it
//! byte 1   logical sectors added to the size (0-255)
//! then     up to 48 operations; op byte b, kind b & 7:
//!   0 write      pos (below), then fill byte f: data f repeated when
//!                b & 0x80, else a pattern seeded by f; at most 2 MiB + 8 KiB
//!   1 write      the same through `Seek` + `io::Write` in pieces of
//!                1 + (f * 37) % 9000 bytes
//!   2 discard    pos, then mode byte m: Zero, Unmap, Transparent (m % 3);
//!                whole sectors; b & 0x80 moves the offset by one byte, which
//!                must be refused and change nothing
//!   3 resize     a: u24; (b >> 3) & 3: 0 small (1 + a % (8 MiB / sector)
//!                sectors), 1 huge ((1 + a % 320) GiB + (a >> 9) sectors,
//!                the BAT may move), 2 relative (size + signed a sectors),
//!                3 the parent's size; b & 0x80 denies shrinking (a shrink
//!                must then be refused); a shrink over non-zero bytes must be
//!                refused
//!   4 flush
//!   5 close cleanly (then `check` must find nothing) and reopen
//!   6 flush, copy the bytes (log live) and open the copy read-only (log
//!     replayed in memory) and writable (replayed on disk); go on with it
//!   7 read     pos: `read_at`, `Read` and the run API against the model
//! pos = a: u24, l: u16 (little-endian); unit = [1 byte, sector, 4 KiB,
//! block][(b >> 3) & 3]; anchor (b >> 5) & 3: 0 offset a * unit (modulo
//! size + 1), 1 size - a * unit, 2 the last 2^23-sector chunk boundary
//! inside the disk (else the middle) + signed a * unit, 3 the start of
//! block (a >> 8) % blocks + signed (a & 0xFF) * unit; length l * unit,
//! clipped to the disk.
//! ```
//!
//! `VHDX_WRITE_TRACE=1` prints the decoded operations of an input that
//! passes (a failing one prints them in its panic message).
//!
//! The model keeps 4 KiB pages that differ from the base (the parent's
//! bytes, zeros past the parent or without one); everything else reads the
//! base, so disks of hundreds of GiB cost nothing. After every operation the
//! first 8 MiB, every page the model holds, the last 64 KiB and 64 KiB
//! around the last chunk boundary are compared.

#![no_main]

use libfuzzer_sys::fuzz_target;
use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use uuid::Uuid;
use vhdx::create::{create, BlockContent, CreateParams, ParentLink};
use vhdx::write::DiscardMode;
use vhdx::{check, Disk, Error, MemStorage, OpenOptions, Run, Storage, VhdxFile};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const PAGE: u64 = 4096;
const MAX_OPS: usize = 48;
const MAX_WRITE: u64 = 2 * MIB + 8192;
/// Compared in full after every operation.
const WINDOW: u64 = 8 * MIB;
/// The run stops (after its final checks) once the file grows past this.
const MAX_FILE: u64 = 192 * MIB;
const LEAF: &str = "disk.vhdx";
const PARENT: &str = "parent.vhdx";
const GRANDPARENT: &str = "grandparent.vhdx";

fuzz_target!(|data: &[u8]| run(data));

// ---------------------------------------------------------------------------
// Parents: built once per (sector size, size, layout) and shared.

struct Parents {
    /// Parent first, then the grandparent when there is one.
    files: Vec<(&'static str, Arc<MemStorage>)>,
    /// What the parent shows the guest.
    visible: Arc<Vec<u8>>,
}

fn byte_at(seed: u64, x: u64) -> u8 {
    let mut z = x.wrapping_add(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)) as u8
}

fn pattern(seed: u64, from: u64, len: u64) -> Vec<u8> {
    (from..from + len).map(|x| byte_at(seed, x)).collect()
}

fn parent_guid(level: u128) -> Uuid {
    Uuid::from_u128(0x5eed_0000_0000_4000_8000_0000_0000_0000 + level)
}

fn dyn_params(size: u64, lss: u32, guid: Uuid) -> CreateParams {
    let mut p = CreateParams::dynamic(size);
    p.block_size = MIB as u32;
    p.logical_sector_size = lss;
    p.data_write_guid = guid;
    p.virtual_disk_id = Uuid::from_u128(0x1d);
    p.creator = "hvkit fuzz".into();
    p
}

fn build_parents(lss: u32, psize: u64, layout: u8) -> Parents {
    let lss64 = lss as u64;
    let blocks = psize.div_ceil(MIB);
    let block_len = |b: u64| (psize - b * MIB).min(MIB);
    let mut visible = vec![0u8; psize as usize];
    let mut files = Vec::new();
    if layout == 0 {
        let mut contents = BTreeMap::new();
        for b in 0..blocks {
            let at = b * MIB;
            let c = match b % 5 {
                0 => BlockContent::Full(pattern(1, at, block_len(b))),
                1 => continue,
                2 => BlockContent::Full(pattern(1, at, (300 << 10) + b * 512)),
                3 => BlockContent::Zero,
                _ => BlockContent::Unmapped,
            };
            if let BlockContent::Full(d) = &c {
                visible[at as usize..at as usize + d.len()].copy_from_slice(d);
            }
            contents.insert(b, c);
        }
        let s = Arc::new(MemStorage::default());
        create(&*s, PARENT, &dyn_params(psize, lss, parent_guid(1)), &contents)
            .expect("create parent");
        files.push((PARENT, s));
    } else {
        // Grandparent: every block full.
        let gsize = psize - MIB;
        let gblocks: BTreeMap<u64, BlockContent> = (0..gsize.div_ceil(MIB))
            .map(|b| {
                let len = (gsize - b * MIB).min(MIB);
                (b, BlockContent::Full(pattern(2, b * MIB, len)))
            })
            .collect();
        let gs = Arc::new(MemStorage::default());
        create(
            &*gs,
            GRANDPARENT,
            &dyn_params(gsize, lss, parent_guid(2)),
            &gblocks,
        )
        .expect("create grandparent");
        visible[..gsize as usize].copy_from_slice(&pattern(2, 0, gsize));
        let mut p = dyn_params(psize, lss, parent_guid(1));
        p.parent = Some(ParentLink::relative(parent_guid(2), GRANDPARENT));
        let spb = MIB / lss64;
        let mut contents = BTreeMap::new();
        for b in 0..blocks {
            let at = b * MIB;
            let c = match b % 4 {
                0 => {
                    let present: Vec<bool> = (0..spb)
                        .map(|s| s % 3 == 0 || (spb / 4..spb / 3).contains(&s))
                        .collect();
                    let data = pattern(3, at, MIB);
                    for (s, &on) in present.iter().enumerate() {
                        let s0 = s as u64 * lss64;
                        if on && s0 < block_len(b) {
                            let r = (at + s0) as usize..(at + s0 + lss64) as usize;
                            visible[r.clone()].copy_from_slice(&data[r.start - at as usize..][..lss as usize]);
                        }
                    }
                    BlockContent::Partial { data, present }
                }
                1 => continue,
                2 => {
                    let d = pattern(3, at, (200 << 10) + b * 4096);
                    // The rest of a full block reads zero, not the grandparent.
                    let end = (at + block_len(b)) as usize;
                    visible[at as usize..end].fill(0);
                    visible[at as usize..at as usize + d.len()].copy_from_slice(&d);
                    BlockContent::Full(d)
                }
                _ => {
                    visible[at as usize..(at + block_len(b)) as usize].fill(0);
                    BlockContent::Zero
                }
            };
            contents.insert(b, c);
        }
        let s = Arc::new(MemStorage::default());
        create(&*s, PARENT, &p, &contents).expect("create differencing parent");
        files.push((PARENT, s));
        files.push((GRANDPARENT, gs));
    }
    Parents {
        files,
        visible: Arc::new(visible),
    }
}

fn parents(lss: u32, psize: u64, layout: u8) -> Arc<Parents> {
    type ParentCache = Mutex<HashMap<(u32, u64, u8), Arc<Parents>>>;
    static CACHE: OnceLock<ParentCache> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let mut c = cache.lock().unwrap();
    c.entry((lss, psize, layout))
        .or_insert_with(|| {
            let p = Arc::new(build_parents(lss, psize, layout));
            // The parents must read as the model says before anything else.
            let disk = open_chain(None, &p, OpenOptions::read_only()).expect("open parents");
            let mut got = vec![0u8; psize as usize];
            disk.read_at(&mut got, 0).expect("read parents");
            assert!(got == *p.visible, "the parents do not read as built");
            p
        })
        .clone()
}

/// Opens `leaf` (when given) over the parents.
fn open_chain(
    leaf: Option<&Arc<MemStorage>>,
    parents: &Parents,
    opts: OpenOptions,
) -> vhdx::Result<Disk> {
    let mut files = Vec::new();
    if let Some(l) = leaf {
        files.push((
            PathBuf::from(LEAF),
            VhdxFile::open(Box::new(l.clone()), LEAF, opts)?,
        ));
    }
    for (name, s) in &parents.files {
        files.push((
            PathBuf::from(name),
            VhdxFile::open(Box::new(s.clone()), name, OpenOptions::read_only())?,
        ));
    }
    Disk::from_files(files, false)
}

// ---------------------------------------------------------------------------
// The model.

struct Model {
    size: u64,
    lss: u64,
    block: u64,
    /// What NOT_PRESENT shows (empty for a dynamic disk).
    base: Arc<Vec<u8>>,
    /// Pages that differ (or may differ) from the base.
    pages: BTreeMap<u64, Box<[u8]>>,
}

impl Model {
    fn base_len(&self) -> u64 {
        self.base.len() as u64
    }

    fn base_into(&self, buf: &mut [u8], off: u64) {
        let n = self.base_len().saturating_sub(off).min(buf.len() as u64) as usize;
        if n > 0 {
            buf[..n].copy_from_slice(&self.base[off as usize..off as usize + n]);
        }
        buf[n..].fill(0);
    }

    fn read(&self, buf: &mut [u8], off: u64) {
        let mut pos = off;
        let end = off + buf.len() as u64;
        while pos < end {
            let p = pos / PAGE;
            let in_page = (pos % PAGE) as usize;
            let n = ((PAGE - pos % PAGE).min(end - pos)) as usize;
            let dst = &mut buf[(pos - off) as usize..(pos - off) as usize + n];
            match self.pages.get(&p) {
                Some(page) => dst.copy_from_slice(&page[in_page..in_page + n]),
                None => self.base_into(dst, pos),
            }
            pos += n as u64;
        }
    }

    fn page_mut(&mut self, p: u64) -> &mut [u8] {
        if !self.pages.contains_key(&p) {
            let mut b = vec![0u8; PAGE as usize];
            self.base_into(&mut b, p * PAGE);
            self.pages.insert(p, b.into());
        }
        self.pages.get_mut(&p).unwrap()
    }

    fn write(&mut self, off: u64, data: &[u8]) {
        let mut pos = off;
        let end = off + data.len() as u64;
        while pos < end {
            let n = (PAGE - pos % PAGE).min(end - pos);
            let in_page = (pos % PAGE) as usize;
            let src = &data[(pos - off) as usize..(pos - off + n) as usize];
            self.page_mut(pos / PAGE)[in_page..in_page + n as usize].copy_from_slice(src);
            pos += n;
        }
    }

    /// Pages overlapping `off..end` that are held or where the base is not
    /// zero (bounded by the base's size and the pages held).
    fn touched(&self, off: u64, end: u64) -> Vec<u64> {
        if off >= end {
            return Vec::new();
        }
        let (first, last) = (off / PAGE, (end - 1) / PAGE);
        let mut v: Vec<u64> = (first..=last.min(self.base_len().div_ceil(PAGE)))
            .collect();
        v.extend(self.pages.range(first..=last).map(|(&p, _)| p));
        v.sort_unstable();
        v.dedup();
        v
    }

    /// `off..end` reads zeros (`to_base` false) or the base again.
    fn reset(&mut self, off: u64, end: u64, to_base: bool) {
        for p in self.touched(off, end) {
            let (ps, pe) = (p * PAGE, (p + 1) * PAGE);
            let (s, e) = (off.max(ps), end.min(pe));
            if s == ps && e == pe && (to_base || ps >= self.base_len()) {
                self.pages.remove(&p);
                continue;
            }
            let mut fill = vec![0u8; (e - s) as usize];
            if to_base {
                self.base_into(&mut fill, s);
            }
            self.page_mut(p)[(s - ps) as usize..(e - ps) as usize].copy_from_slice(&fill);
        }
    }

    fn any_nonzero(&self, off: u64, end: u64) -> bool {
        let mut buf = vec![0u8; PAGE as usize];
        self.touched(off, end).into_iter().any(|p| {
            let (s, e) = (off.max(p * PAGE), end.min((p + 1) * PAGE));
            let b = &mut buf[..(e - s) as usize];
            self.read(b, s);
            b.iter().any(|&x| x != 0)
        })
    }

    /// Applies a resize; false when the disk must refuse it.
    fn resize(&mut self, new: u64, allow_shrink: bool) -> bool {
        if new < self.size {
            if !allow_shrink || self.any_nonzero(new, self.size) {
                return false;
            }
            let keep = new.div_ceil(PAGE);
            self.pages.split_off(&keep);
        } else if new > self.size {
            self.reset(self.size, new, false);
        }
        self.size = new;
        true
    }

    /// The last chunk boundary inside the disk, or the middle.
    fn chunk_anchor(&self) -> u64 {
        let span = (1u64 << 23) * self.lss;
        if self.size > span {
            (self.size - 1) / span * span
        } else {
            self.size / 2 / self.lss * self.lss
        }
    }
}

// ---------------------------------------------------------------------------
// The run.

struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn take(&mut self, n: usize) -> Option<u64> {
        let v = self.0.get(..n)?;
        self.0 = &self.0[n..];
        let mut b = [0u8; 8];
        b[..n].copy_from_slice(v);
        Some(u64::from_le_bytes(b))
    }
}

fn sign24(a: u64) -> i64 {
    ((a as i64) << 40) >> 40
}

/// Decodes a position (see the format above): (offset, length).
fn position(m: &Model, b: u8, a: u64, l: u64) -> (u64, u64) {
    let unit = [1, m.lss, PAGE, m.block][((b >> 3) & 3) as usize];
    let size = m.size;
    let off = match (b >> 5) & 3 {
        0 => a.wrapping_mul(unit) % (size + 1),
        1 => size.saturating_sub(a * unit),
        2 => m
            .chunk_anchor()
            .saturating_add_signed(sign24(a) * unit as i64)
            .min(size),
        _ => {
            let blocks = size.div_ceil(m.block);
            let start = (a >> 8) % blocks * m.block;
            start
                .saturating_add_signed((a & 0xFF) as i8 as i64 * unit as i64)
                .min(size)
        }
    };
    (off, (l * unit).min(size - off))
}

fn write_data(b: u8, f: u8, len: u64) -> Vec<u8> {
    if b & 0x80 != 0 {
        vec![f; len as usize]
    } else {
        pattern(0x100 + f as u64, 0, len)
    }
}

struct Session<'a> {
    model: Model,
    leaf: Arc<MemStorage>,
    parents: &'a Parents,
    disk: Disk,
    /// The operations so far, for messages.
    log: Vec<String>,
}

impl Session<'_> {
    fn fail(&self, what: String) -> ! {
        panic!(
            "{what}\noperations (setup first):\n  {}",
            self.log.join("\n  ")
        );
    }

    fn ok<T>(&self, r: vhdx::Result<T>, what: &str) -> T {
        r.unwrap_or_else(|e| self.fail(format!("{what} failed: {e}")))
    }

    fn reopen(&mut self, opts: OpenOptions) -> Disk {
        let r = open_chain(Some(&self.leaf), self.parents, opts);
        self.ok(r, "reopen")
    }

    fn compare(&self, disk: &Disk, off: u64, len: u64, what: &str) {
        let mut pos = off;
        let end = off + len;
        let mut got = vec![0u8; len.min(MIB) as usize];
        let mut want = got.clone();
        while pos < end {
            let n = (end - pos).min(MIB) as usize;
            let r = disk.read_at(&mut got[..n], pos);
            self.ok(r, &format!("{what}: read_at({pos:#x}, {n:#x})"));
            self.model.read(&mut want[..n], pos);
            if got[..n] != want[..n] {
                let i = got.iter().zip(&want).position(|(a, b)| a != b).unwrap();
                self.fail(format!(
                    "{what}: guest byte {:#x} reads {:#04x}, the model says {:#04x}",
                    pos + i as u64,
                    got[i],
                    want[i]
                ));
            }
            pos += n as u64;
        }
    }

    fn verify(&self, disk: &Disk, what: &str) {
        let m = &self.model;
        if disk.virtual_size() != m.size {
            self.fail(format!(
                "{what}: virtual size {:#x}, the model says {:#x}",
                disk.virtual_size(),
                m.size
            ));
        }
        let w = m.size.min(WINDOW);
        self.compare(disk, 0, w, what);
        // Held pages past the window, in runs.
        let mut runs: Vec<(u64, u64)> = Vec::new();
        for (&p, _) in m.pages.range(w / PAGE..) {
            let (s, e) = ((p * PAGE).max(w), ((p + 1) * PAGE).min(m.size));
            match runs.last_mut() {
                Some(r) if r.1 == s => r.1 = e,
                _ if s < e => runs.push((s, e)),
                _ => {}
            }
        }
        for (s, e) in runs {
            self.compare(disk, s, e - s, what);
        }
        if m.size > w {
            let tail = m.size.saturating_sub(64 << 10).max(w);
            self.compare(disk, tail, m.size - tail, what);
            let c = m.chunk_anchor().saturating_sub(32 << 10).max(w);
            let e = (c + (64 << 10)).min(m.size);
            self.compare(disk, c, e.saturating_sub(c), what);
        }
    }

    /// A closed file must be clean.
    fn check_closed(&self, storage: &Arc<MemStorage>, what: &str) {
        let r = check::check(Box::new(storage.clone()), LEAF);
        let report = self.ok(r, &format!("{what}: check"));
        if report.is_corrupt() || report.log_needs_replay {
            self.fail(format!(
                "{what}: check after a clean close: log needs replay {}, problems {:?}",
                report.log_needs_replay, report.problems
            ));
        }
    }

    fn expect_refused(&mut self, r: vhdx::Result<()>, what: &str) {
        match r {
            Ok(()) => self.fail(format!("{what} was accepted")),
            Err(Error::Unsupported { .. } | Error::OutOfRange { .. }) => {
                if let Some(l) = self.log.last_mut() {
                    l.push_str(" (refused)");
                }
            }
            Err(e) => self.fail(format!("{what} was refused with an unexpected error: {e:?}")),
        }
        self.verify(&self.disk, &format!("{what} (refused)"));
    }

    fn step(&mut self, b: u8, input: &mut Input) -> Option<()> {
        let lss = self.model.lss;
        match b & 7 {
            k @ (0 | 1) => {
                let (a, l, f) = (input.take(3)?, input.take(2)?, input.take(1)? as u8);
                let (off, len) = position(&self.model, b, a, l);
                let len = len.min(MAX_WRITE);
                let data = write_data(b, f, len);
                let what = format!(
                    "write{} {off:#x}+{len:#x} fill {f:#04x}{}",
                    if k == 1 { " (io::Write)" } else { "" },
                    if b & 0x80 != 0 { "" } else { " (pattern)" }
                );
                self.log.push(what.clone());
                if k == 0 {
                    let r = self.disk.write_at(&data, off);
                    self.ok(r, &what);
                } else {
                    let piece = 1 + (f as usize * 37) % 9000;
                    let r = self.disk.seek(SeekFrom::Start(off)).and_then(|_| {
                        data.chunks(piece)
                            .try_for_each(|c| self.disk.write_all(c))
                    });
                    if let Err(e) = r {
                        self.fail(format!("{what} failed: {e}"));
                    }
                }
                self.model.write(off, &data);
                self.verify(&self.disk, &what);
            }
            2 => {
                let (a, l, m) = (input.take(3)?, input.take(2)?, input.take(1)?);
                let (off, len) = position(&self.model, b, a, l);
                let mode = [DiscardMode::Zero, DiscardMode::Unmap, DiscardMode::Transparent]
                    [(m % 3) as usize];
                let off = off / lss * lss;
                let len = len / lss * lss;
                if b & 0x80 != 0 {
                    let what = format!("discard {mode:?} {:#x}+{len:#x} (misaligned)", off + 1);
                    self.log.push(what.clone());
                    let r = self.disk.discard(off + 1, len, mode);
                    self.expect_refused(r, &what);
                    return Some(());
                }
                let what = format!("discard {mode:?} {off:#x}+{len:#x}");
                self.log.push(what.clone());
                let r = self.disk.discard(off, len, mode);
                self.ok(r, &what);
                self.model
                    .reset(off, off + len, mode == DiscardMode::Transparent);
                self.verify(&self.disk, &what);
            }
            3 => {
                let a = input.take(3)?;
                let m = &self.model;
                let max_small = WINDOW / lss;
                let new = match (b >> 3) & 3 {
                    0 => (1 + a % max_small) * lss,
                    1 => (1 + (a & 0x1FF) % 320) * GIB + (a >> 9) * lss,
                    2 => m
                        .size
                        .saturating_add_signed(sign24(a) * lss as i64)
                        .clamp(lss, 320 * GIB),
                    _ => {
                        if m.base_len() > 0 {
                            m.base_len()
                        } else {
                            m.size
                        }
                    }
                };
                let allow_shrink = b & 0x80 == 0;
                let what = format!("resize {:#x} -> {new:#x} (allow_shrink {allow_shrink})", m.size);
                self.log.push(what.clone());
                let r = self.disk.resize(new, allow_shrink);
                if self.model.resize(new, allow_shrink) {
                    self.ok(r, &what);
                    self.verify(&self.disk, &what);
                } else {
                    self.expect_refused(r, &what);
                }
            }
            4 => {
                self.log.push("flush".into());
                let r = self.disk.flush();
                self.ok(r, "flush");
                self.verify(&self.disk, "flush");
            }
            5 => {
                self.log.push("close + reopen".into());
                let disk = std::mem::replace(&mut self.disk, placeholder());
                let r = disk.close();
                self.ok(r, "close");
                self.check_closed(&self.leaf, "close");
                self.disk = self.reopen(OpenOptions::writable());
                self.verify(&self.disk, "close + reopen");
            }
            6 => {
                self.log.push("flush + crash copy + reopen".into());
                let r = self.disk.flush();
                self.ok(r, "flush");
                let copy = Arc::new(MemStorage::new(self.leaf.to_vec()));
                let r = open_chain(Some(&copy), self.parents, OpenOptions::read_only());
                let crashed = self.ok(r, "open the crash copy read-only");
                self.verify(&crashed, "crash copy, read-only (log replayed in memory)");
                drop(crashed);
                let old = std::mem::replace(&mut self.leaf, copy);
                let r = open_chain(Some(&self.leaf), self.parents, OpenOptions::writable());
                let disk = self.ok(r, "open the crash copy writable");
                // The old disk closes (into the old bytes) when dropped.
                drop(std::mem::replace(&mut self.disk, disk));
                drop(old);
                self.verify(&self.disk, "crash copy, writable (log replayed on disk)");
            }
            _ => {
                let (a, l) = (input.take(3)?, input.take(2)?);
                let (off, len) = position(&self.model, b, a, l);
                let len = len.min(MAX_WRITE);
                let what = format!("read {off:#x}+{len:#x}");
                self.log.push(what.clone());
                self.compare(&self.disk, off, len, &what);
                let mut want = vec![0u8; len as usize];
                self.model.read(&mut want, off);
                let mut got = vec![0u8; len as usize];
                let r = self
                    .disk
                    .seek(SeekFrom::Start(off))
                    .and_then(|_| self.disk.read_exact(&mut got));
                if let Err(e) = r {
                    self.fail(format!("{what}: Read failed: {e}"));
                }
                if got != want {
                    self.fail(format!("{what}: Read differs from the model"));
                }
                let mut total = 0;
                let lens: Vec<u64> = self.disk.layers().iter().map(|l| l.file.file_len()).collect();
                let r = self.disk.for_each_run(off, len, &mut |r| {
                    if let Run::Data { file, offset, len } = r {
                        assert!(
                            offset + len <= lens[file],
                            "run {r:?} past the end of layer {file}"
                        );
                    }
                    assert!(!matches!(r, Run::Parent { .. }), "Parent run in a full chain");
                    total += r.len();
                    Ok(())
                });
                self.ok(r, &format!("{what}: for_each_run"));
                if total != len {
                    self.fail(format!("{what}: runs cover {total:#x} bytes"));
                }
            }
        }
        Some(())
    }

}

/// A stand-in for the disk while it is closed: an empty dynamic disk.
fn placeholder() -> Disk {
    static EMPTY: OnceLock<Arc<MemStorage>> = OnceLock::new();
    let s = EMPTY.get_or_init(|| {
        let s = Arc::new(MemStorage::default());
        create(&*s, "empty.vhdx", &dyn_params(MIB, 512, parent_guid(9)), &BTreeMap::new())
            .expect("create placeholder");
        s
    });
    let f = VhdxFile::open(Box::new(s.clone()), "empty.vhdx", OpenOptions::read_only())
        .expect("open placeholder");
    Disk::from_files(vec![(PathBuf::from("empty.vhdx"), f)], false).expect("placeholder disk")
}

fn run(data: &[u8]) {
    let mut input = Input(data);
    let (Some(s0), Some(s1)) = (input.take(1), input.take(1)) else {
        return;
    };
    let s0 = s0 as u8;
    let differencing = s0 & 1 != 0;
    let block = if s0 & 2 != 0 { 2 * MIB } else { MIB };
    let lss: u32 = if s0 & 4 != 0 { 4096 } else { 512 };
    let lss64 = lss as u64;
    let size = (1 + ((s0 >> 3) & 3) as u64) * MIB + s1 * lss64;
    let psize = [2 * MIB, 3 * MIB + 5 * lss64, 6 * MIB - lss64, 4 * MIB][((s0 >> 5) & 3) as usize];
    let layout = s0 >> 7;

    let no_parents = Parents {
        files: Vec::new(),
        visible: Arc::new(Vec::new()),
    };
    let parents_arc = differencing.then(|| parents(lss, psize, layout));
    let parents: &Parents = parents_arc.as_deref().unwrap_or(&no_parents);

    let mut p = CreateParams::dynamic(size);
    p.block_size = block as u32;
    p.logical_sector_size = lss;
    p.creator = "hvkit fuzz".into();
    if differencing {
        p.parent = Some(ParentLink::relative(parent_guid(1), PARENT));
    }
    let leaf = Arc::new(MemStorage::default());
    create(&*leaf, LEAF, &p, &BTreeMap::new()).expect("create the disk");
    let setup = format!(
        "setup: {} {size:#x} bytes, {} MiB blocks, {lss}-byte sectors{}",
        if differencing { "differencing" } else { "dynamic" },
        block >> 20,
        if differencing {
            format!(
                ", over a {} parent of {psize:#x} bytes",
                if layout == 0 { "dynamic" } else { "differencing" }
            )
        } else {
            String::new()
        }
    );
    let disk = open_chain(Some(&leaf), parents, OpenOptions::writable()).expect("open the disk");
    let mut run = Session {
        model: Model {
            size,
            lss: lss64,
            block,
            base: parents.visible.clone(),
            pages: BTreeMap::new(),
        },
        leaf,
        parents,
        disk,
        log: vec![setup],
    };
    run.verify(&run.disk, "fresh disk");

    for _ in 0..MAX_OPS {
        let Some(b) = input.take(1) else { break };
        if run.step(b as u8, &mut input).is_none() {
            break;
        }
        if run.leaf.len().unwrap_or(0) > MAX_FILE {
            break;
        }
    }

    // A clean close, `check`, and a read-only reopen read the same.
    run.log.push("final close".into());
    let disk = std::mem::replace(&mut run.disk, placeholder());
    let r = disk.close();
    run.ok(r, "final close");
    run.check_closed(&run.leaf, "final close");
    let disk = run.reopen(OpenOptions::read_only());
    if !disk.leaf().header().log_guid.is_nil() {
        run.fail("LogGuid set after a clean close".into());
    }
    run.verify(&disk, "final read-only reopen");
    if std::env::var_os("VHDX_WRITE_TRACE").is_some() {
        eprintln!("passed:\n  {}", run.log.join("\n  "));
    }
}
