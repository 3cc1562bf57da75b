//! Sequential read of a 1 GiB fully allocated dynamic VHDX through `Disk`,
//! next to reading the same bytes from a raw file (the bound).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;
use vhdx::create::{create, BlockContent, CreateParams};
use vhdx::{ChainOptions, Disk};

const SIZE: u64 = 1 << 30;
const CHUNK: usize = 4 << 20;

fn pattern(block: u64, len: usize) -> Vec<u8> {
    let mut x = block.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn bench_read(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let vhdx_path = dir.path().join("full.vhdx");
    let raw_path = dir.path().join("full.raw");
    let params = CreateParams::dynamic(SIZE);
    let bs = params.block_size as u64;
    let raw = std::fs::File::create(&raw_path).unwrap();
    let mut blocks = BTreeMap::new();
    for b in 0..SIZE / bs {
        let d = pattern(b, bs as usize);
        raw.write_all_at(&d, b * bs).unwrap();
        blocks.insert(b, BlockContent::Full(d));
    }
    create(
        &std::fs::File::create(&vhdx_path).unwrap(),
        "full.vhdx",
        &params,
        &blocks,
    )
    .unwrap();
    drop(blocks);
    let disk = Disk::open(&vhdx_path, &ChainOptions::default()).unwrap();
    let raw = std::fs::File::open(&raw_path).unwrap();
    let mut buf = vec![0u8; CHUNK];

    let mut g = c.benchmark_group("sequential_read_1GiB");
    g.throughput(Throughput::Bytes(SIZE));
    g.sample_size(10);
    g.bench_function("vhdx_dynamic_full", |b| {
        b.iter(|| {
            let mut off = 0;
            while off < SIZE {
                disk.read_at(&mut buf, off).unwrap();
                off += CHUNK as u64;
            }
        })
    });
    g.bench_function("raw_file", |b| {
        b.iter(|| {
            let mut off = 0;
            while off < SIZE {
                raw.read_exact_at(&mut buf, off).unwrap();
                off += CHUNK as u64;
            }
        })
    });
    g.finish();
}

criterion_group!(benches, bench_read);
criterion_main!(benches);
