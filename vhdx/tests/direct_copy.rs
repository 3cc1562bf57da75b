//! `vhdx::direct_copy`: copies around the page cache give exactly the bytes
//! of a plain copy, at any alignment, from a cold or a cached source, and
//! in order with plain byte writes.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use vhdx::direct_copy::{all_cached, reopen_direct, DirectCopy, ALIGN, CHUNK};

const MIB: u64 = 1 << 20;

fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed;
    (0..len)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 56) as u8
        })
        .collect()
}

/// A new sparse output file of `len` bytes.
fn new_output(path: &std::path::Path, len: u64) -> File {
    let out = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .unwrap();
    out.set_len(len).unwrap();
    out
}

fn drop_cache(f: &File) {
    // SAFETY: plain advice on an open descriptor.
    unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
}

/// (source offset, output offset, length): aligned, unaligned at either
/// end, offsets that differ mod 4 KiB (no direct write possible), tiny,
/// longer than a chunk, and up to the unaligned end of the source.
fn cases(src_len: u64) -> Vec<(u64, u64, u64)> {
    vec![
        (0, 0, 2 * CHUNK + 3 * MIB),
        (512, 512, CHUNK + 512),
        (512, 4096, 3 * MIB + 1024),
        (4096, 100, 100),
        (0, CHUNK + 1000, 5000),
        (7 * MIB + 3, 2 * MIB + 3, 4 * ALIGN + 17),
        (src_len - 5 * MIB - 1234, 40 * MIB, 5 * MIB + 1234),
    ]
}

fn run_cases(cold: bool) {
    let dir = tempfile::tempdir().unwrap();
    let src_len = 3 * CHUNK + 1234;
    let data = pattern(src_len as usize, 7);
    let sp = dir.path().join("src");
    std::fs::write(&sp, &data).unwrap();
    let src = File::open(&sp).unwrap();
    let out_len = 64 * MIB;
    for (i, (so, dof, len)) in cases(src_len).into_iter().enumerate() {
        let op = dir.path().join(format!("out{i}"));
        let out = new_output(&op, out_len);
        if cold {
            src.sync_all().unwrap();
            drop_cache(&src);
        } else {
            let mut buf = vec![0u8; src_len as usize];
            src.read_exact_at(&mut buf, 0).unwrap();
        }
        let (direct_read, cached_read, piped) = std::thread::scope(|scope| {
            let Some(mut d) = DirectCopy::start(scope, &out) else {
                println!("SKIP direct copy: {} refuses O_DIRECT", op.display());
                return (0, 0, false);
            };
            let mut reported = 0u64;
            d.copy(&src, so, dof, len, &mut |n| reported += n).unwrap();
            assert_eq!(reported, len);
            d.drain().unwrap();
            // A byte write after the copy lands after it, over its start.
            d.write(b"hvkit", dof).unwrap();
            let r = (d.direct_read_bytes, d.cached_read_bytes, true);
            d.finish().unwrap();
            r
        });
        if !piped {
            return;
        }
        assert_eq!(direct_read + cached_read, len, "case {i}");
        if cold && reopen_direct(&src, false).is_some() {
            assert!(direct_read > 0, "case {i}: a cold source is read directly");
        }
        if !cold && all_cached(&src, 0, src_len) {
            assert_eq!(
                cached_read, len,
                "case {i}: a cached source is read from the cache"
            );
        }
        let got = std::fs::read(&op).unwrap();
        let mut want = vec![0u8; out_len as usize];
        want[dof as usize..(dof + len) as usize]
            .copy_from_slice(&data[so as usize..(so + len) as usize]);
        let k = 5.min(len as usize);
        want[dof as usize..dof as usize + k].copy_from_slice(&b"hvkit"[..k]);
        assert_eq!(got.len(), want.len(), "case {i}");
        let first = got.iter().zip(&want).position(|(a, b)| a != b);
        assert_eq!(first, None, "case {i} ({so}, {dof}, {len}) differs");
    }
}

#[test]
fn copies_from_a_cold_source_equal_the_bytes() {
    run_cases(true);
}

#[test]
fn copies_from_a_cached_source_equal_the_bytes() {
    run_cases(false);
}

#[test]
fn many_small_copies_keep_their_order() {
    // More pieces than buffers, each overwriting part of the one before.
    let dir = tempfile::tempdir().unwrap();
    let data = pattern((8 * MIB) as usize, 3);
    let sp = dir.path().join("src");
    std::fs::write(&sp, &data).unwrap();
    let src = File::open(&sp).unwrap();
    let op = dir.path().join("out");
    let out = new_output(&op, 16 * MIB);
    let mut want = vec![0u8; (16 * MIB) as usize];
    let ran = std::thread::scope(|scope| {
        let Some(mut d) = DirectCopy::start(scope, &out) else {
            println!("SKIP direct copy: {} refuses O_DIRECT", op.display());
            return false;
        };
        for i in 0..40u64 {
            let so = (i * 191 * 1024) % (7 * MIB);
            let dof = i * 300 * 1024;
            let len = MIB - i * 512;
            d.copy(&src, so, dof, len, &mut |_| {}).unwrap();
            want[dof as usize..(dof + len) as usize]
                .copy_from_slice(&data[so as usize..(so + len) as usize]);
        }
        d.finish().unwrap();
        true
    });
    if ran {
        assert_eq!(std::fs::read(&op).unwrap(), want);
    }
}
