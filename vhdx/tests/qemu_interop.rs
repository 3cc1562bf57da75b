//! Images made on the fly by QEMU (`qemu-img create -f vhdx`, fixed and
//! dynamic, block sizes 1 to 256 MiB, odd virtual sizes, with and without
//! `block_state_zero`) and written by `qemu-io` at seeded random offsets
//! (sector-aligned, block-unaligned, crossing block boundaries, at the tail):
//! `vhdx::Disk` must read exactly what `qemu-img convert -O raw` produces
//! (same SHA-256) and what the writes put there. One image is larger than a
//! 4 GiB chunk, so its BAT interleaves a sector-bitmap entry between payload
//! entries 4095 and 4096.
//!
//! The same images converted by the `hvkit` binary are checked in
//! `cli/tests/convert_interop.rs`.

mod common;

use common::*;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use vhdx::format::bat_entry::{self, PayloadState};
use vhdx::{ChainOptions, Disk};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// One `qemu-io -c 'write -P pattern offset length'`.
#[derive(Debug, Clone, Copy)]
struct Write {
    off: u64,
    len: u64,
    pattern: u8,
}

struct Case {
    name: &'static str,
    subformat: &'static str,
    block: u64,
    size: u64,
    block_state_zero: bool,
    writes: usize,
    seed: u64,
}

/// Seeded writes: small ones anywhere, ones crossing a block boundary, ones
/// spanning blocks, and ones at the disk's tail; all 512-aligned (qemu-io
/// writes sectors) and mostly not block-aligned.
fn random_writes(rng: &mut Rng, size: u64, block: u64, n: usize) -> Vec<Write> {
    let sectors = size / 512;
    let blocks = size.div_ceil(block);
    let mut out = Vec::new();
    for i in 0..n {
        let (off, len) = match i % 4 {
            0 => (rng.below(sectors) * 512, 512 * (1 + rng.below(16))),
            1 if blocks > 1 => {
                let edge = (1 + rng.below(blocks - 1)) * block;
                let before = 512 * (1 + rng.below(64));
                (edge - before, before + 512 * (1 + rng.below(64)))
            }
            2 => (
                rng.below(sectors) * 512,
                512 * (1 + rng.below((2 * block).min(4 * MIB) / 512)),
            ),
            _ => {
                let back = 512 * (1 + rng.below(64));
                (size - back, back)
            }
        };
        let pattern = if rng.below(10) == 0 {
            0
        } else {
            1 + rng.below(255) as u8
        };
        out.push(Write {
            off,
            len: len.min(size - off),
            pattern,
        });
    }
    out
}

/// Creates the image with qemu-img and applies `writes` with qemu-io.
fn make_image(dir: &Path, c: &Case, writes: &[Write]) -> PathBuf {
    let img = dir.join(format!("{}.vhdx", c.name));
    let opts = format!(
        "subformat={},block_size={},block_state_zero={}",
        c.subformat,
        c.block,
        if c.block_state_zero { "on" } else { "off" }
    );
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "vhdx", "-o", &opts])
        .arg(&img)
        .arg(c.size.to_string()));
    let mut cmd = Command::new("qemu-io");
    cmd.args(["-f", "vhdx"]);
    for w in writes {
        cmd.arg("-c")
            .arg(format!("write -P {:#x} {} {}", w.pattern, w.off, w.len));
    }
    let out = run(cmd.arg(&img));
    assert_eq!(
        out.matches("wrote ").count(),
        writes.len(),
        "qemu-io did not do every write:\n{out}"
    );
    img
}

/// What the writes left in `off..off+len`: later writes win, the rest is zero.
fn model(writes: &[Write], off: u64, len: u64) -> Vec<u8> {
    let mut v = vec![0u8; len as usize];
    for w in writes {
        let (a, b) = (w.off.max(off), (w.off + w.len).min(off + len));
        if a < b {
            v[(a - off) as usize..(b - off) as usize].fill(w.pattern);
        }
    }
    v
}

fn first_diff(a: &[u8], b: &[u8]) -> Option<usize> {
    a.iter().zip(b).position(|(x, y)| x != y)
}

/// Runs one case: the image, its qemu raw conversion, and every check.
fn check_case(c: &Case, extra: &[Write]) -> (tempfile::TempDir, PathBuf, Vec<Write>) {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng(c.seed);
    let mut writes = random_writes(&mut rng, c.size, c.block, c.writes);
    writes.extend_from_slice(extra);
    let img = make_image(dir.path(), c, &writes);
    let raw = dir.path().join(format!("{}.raw", c.name));
    run(Command::new("qemu-img")
        .args(["convert", "-f", "vhdx", "-O", "raw"])
        .arg(&img)
        .arg(&raw));
    assert_eq!(std::fs::metadata(&raw).unwrap().len(), c.size);

    let disk =
        Disk::open(&img, &ChainOptions::default()).unwrap_or_else(|e| panic!("{}: {e}", c.name));
    let f = disk.leaf();
    assert_eq!(f.virtual_size(), c.size, "{}", c.name);
    assert_eq!(f.block_size(), c.block, "{}", c.name);
    assert_eq!(f.logical_sector_size(), 512, "{}", c.name);
    assert_eq!(f.disk_type(), c.subformat, "{}", c.name);
    assert!(f.creator().starts_with("QEMU v"), "{}", f.creator());
    assert!(f.problems().is_empty(), "{}: {:?}", c.name, f.problems());
    assert!(!f.log_status().needs_replay(), "{}", c.name);

    // Every write's range reads what the writes left there.
    for w in &writes {
        let mut got = vec![0u8; w.len as usize];
        disk.read_at(&mut got, w.off).unwrap();
        let want = model(&writes, w.off, w.len);
        if let Some(i) = first_diff(&got, &want) {
            panic!(
                "{}: write {w:?}: guest offset {:#x} reads {:#04x}, want {:#04x}",
                c.name,
                w.off + i as u64,
                got[i],
                want[i]
            );
        }
    }

    // Random unaligned reads against qemu's raw image.
    let rawf = std::fs::File::open(&raw).unwrap();
    for _ in 0..64 {
        let off = rng.below(c.size);
        let len = (1 + rng.below(3 * MIB)).min(c.size - off);
        let mut got = vec![0u8; len as usize];
        disk.read_at(&mut got, off).unwrap();
        let mut want = vec![0u8; len as usize];
        rawf.read_exact_at(&mut want, off).unwrap();
        if let Some(i) = first_diff(&got, &want) {
            panic!(
                "{}: guest offset {:#x}: {:#04x}, qemu raw {:#04x}",
                c.name,
                off + i as u64,
                got[i],
                want[i]
            );
        }
    }

    // The whole disk: the SHA-256 of qemu's raw conversion (both hashed at once).
    let (ours, theirs) = std::thread::scope(|s| {
        let t = s.spawn(|| sha256_file(&raw));
        let mut d = Disk::open(&img, &ChainOptions::default()).unwrap();
        (sha256_reader(&mut d), t.join().unwrap())
    });
    assert_eq!(ours, theirs, "{}: whole-disk SHA-256", c.name);
    (dir, img, writes)
}

fn tools() -> bool {
    have_tool("qemu-img") && have_tool("qemu-io")
}

#[test]
fn dynamic_images() {
    if !tools() {
        return;
    }
    for c in [
        Case {
            name: "dyn-1M-100M+512",
            subformat: "dynamic",
            block: MIB,
            size: 100 * MIB + 512,
            block_state_zero: true,
            writes: 48,
            seed: 1,
        },
        Case {
            name: "dyn-8M-1G-3s",
            subformat: "dynamic",
            block: 8 * MIB,
            size: GIB - 3 * 512,
            block_state_zero: true,
            writes: 32,
            seed: 2,
        },
        Case {
            name: "dyn-32M-300M+7s",
            subformat: "dynamic",
            block: 32 * MIB,
            size: 300 * MIB + 7 * 512,
            block_state_zero: true,
            writes: 32,
            seed: 3,
        },
        Case {
            name: "dyn-256M-600M-1s",
            subformat: "dynamic",
            block: 256 * MIB,
            size: 600 * MIB - 512,
            block_state_zero: true,
            writes: 16,
            seed: 4,
        },
        Case {
            name: "dyn-1M-64M+2s-zero-off",
            subformat: "dynamic",
            block: MIB,
            size: 64 * MIB + 1024,
            block_state_zero: false,
            writes: 32,
            seed: 5,
        },
    ] {
        check_case(&c, &[]);
    }
}

#[test]
fn fixed_images() {
    if !tools() {
        return;
    }
    for c in [
        // FULLY_PRESENT entries (qemu's default makes even fixed disks ZERO).
        Case {
            name: "fixed-8M-100M+512-zero-off",
            subformat: "fixed",
            block: 8 * MIB,
            size: 100 * MIB + 512,
            block_state_zero: false,
            writes: 32,
            seed: 6,
        },
        Case {
            name: "fixed-1M-48M-1s",
            subformat: "fixed",
            block: MIB,
            size: 48 * MIB - 512,
            block_state_zero: true,
            writes: 32,
            seed: 7,
        },
        Case {
            name: "fixed-256M-300M+512-zero-off",
            subformat: "fixed",
            block: 256 * MIB,
            size: 300 * MIB + 512,
            block_state_zero: false,
            writes: 12,
            seed: 8,
        },
    ] {
        let (_dir, img, _) = check_case(&c, &[]);
        let disk = Disk::open(&img, &ChainOptions::default()).unwrap();
        let stats = disk.leaf().bat_stats();
        let blocks = c.size.div_ceil(c.block);
        if c.block_state_zero {
            assert!(stats.zero > 0, "{}: {stats:?}", c.name);
        } else {
            assert_eq!(stats.fully_present, blocks, "{}: {stats:?}", c.name);
        }
    }
}

/// 4097 MiB with 1 MiB blocks: 4097 payload blocks, so BAT entry 4096 is
/// chunk 0's sector-bitmap entry and block 4096 lives at entry 4097. Writes
/// land on both sides of 4 GiB and across it.
#[test]
fn image_larger_than_one_chunk() {
    if !tools() {
        return;
    }
    let four_g = 4 * GIB;
    let c = Case {
        name: "dyn-1M-4097M",
        subformat: "dynamic",
        block: MIB,
        size: 4097 * MIB,
        block_state_zero: true,
        writes: 12,
        seed: 9,
    };
    let extra = [
        Write {
            off: four_g - MIB - 1024,
            len: 4096,
            pattern: 0x41,
        },
        Write {
            off: four_g - 3 * 512,
            len: 5 * 512,
            pattern: 0x42,
        },
        Write {
            off: four_g + 512,
            len: 8192,
            pattern: 0x43,
        },
        Write {
            off: four_g + MIB - 1024,
            len: 1024,
            pattern: 0x44,
        },
        Write {
            off: 0,
            len: 512,
            pattern: 0x45,
        },
    ];
    let (_dir, img, writes) = check_case(&c, &extra);
    let disk = Disk::open(&img, &ChainOptions::default()).unwrap();
    let f = disk.leaf();
    let g = *f.geometry();
    assert_eq!((g.chunk_ratio, g.payload_blocks, g.chunks), (4096, 4097, 2));
    assert_eq!(g.bat_entries(), 4098);
    assert!(g.is_bitmap_entry(4096));
    assert_eq!(g.payload_entry(4095), 4095);
    assert_eq!(g.payload_entry(4096), 4097);
    let state = |i: usize| PayloadState::from_bits(bat_entry::state_bits(f.bat()[i]));
    // Blocks 4095 and 4096 were written; entry 4096 (the bitmap entry of a
    // non-differencing file) is not present.
    assert_eq!(state(4095), Some(PayloadState::FullyPresent));
    assert_eq!(state(4097), Some(PayloadState::FullyPresent));
    assert_eq!(bat_entry::state_bits(f.bat()[4096]), 0);
    assert_ne!(
        bat_entry::file_offset(f.bat()[4095]),
        bat_entry::file_offset(f.bat()[4097])
    );
    // Across the chunk boundary in one read, and the last block.
    for (off, len) in [(four_g - 2 * MIB, 3 * MIB), (c.size - MIB, MIB)] {
        let mut got = vec![0u8; len as usize];
        disk.read_at(&mut got, off).unwrap();
        let want = model(&writes, off, len);
        assert!(want.iter().any(|&b| b != 0));
        assert!(got == want, "{off:#x}+{len:#x}");
    }
}
