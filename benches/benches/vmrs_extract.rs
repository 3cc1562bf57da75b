//! `hvkit vmrs extract-memory` throughput: a 1 GiB saved state (raw 1 MiB
//! RamBlocks, as `vmrs::writer` and Microsoft's dump writer lay them out)
//! extracted as a sparse raw image and as an ELF core, on tmpfs so the
//! figure is the tool's own cost; `benches/vmrs_extract.sh` measures on
//! disk next to a plain copy of the same bytes.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::time::Duration;
use vmrs::extract::{extract, Format};
use vmrs::{MemoryPiece, SavedState, SavedStateSpec};

const GIB: u64 = 1 << 30;

fn scratch() -> tempfile::TempDir {
    tempfile::tempdir_in("/dev/shm").unwrap_or_else(|_| tempfile::tempdir().unwrap())
}

fn bench_extract(c: &mut Criterion) {
    let dir = scratch();
    // 1 GiB of non-zero memory in two ranges around a 128 MiB gap.
    let mem = dir.path().join("mem.bin");
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let data: Vec<u8> = (0..GIB / 8)
        .flat_map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()
        })
        .collect();
    std::fs::write(&mem, &data).unwrap();
    let half = GIB / 2;
    let spec = SavedStateSpec {
        memory: vec![
            MemoryPiece::bytes(0, data[..half as usize].to_vec()),
            MemoryPiece::bytes(half + (128 << 20), data[half as usize..].to_vec()),
        ],
        ..Default::default()
    };
    drop(data);
    let vmrs_path = dir.path().join("state.vmrs");
    vmrs::writer::create(&vmrs_path, &spec).unwrap();
    drop(spec);
    std::fs::remove_file(&mem).unwrap();
    let s = SavedState::open(&vmrs_path).unwrap();
    let mut g = c.benchmark_group("vmrs_extract_1GiB");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(20));
    g.throughput(Throughput::Bytes(GIB));
    for (name, format) in [("raw", Format::Raw), ("elf", Format::Elf)] {
        let out = dir.path().join(format!("out.{name}"));
        g.bench_function(name, |b| {
            b.iter(|| {
                let f = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .open(&out)
                    .unwrap();
                extract(&s, &f, format, &mut |_| {}).unwrap();
            })
        });
        let _ = std::fs::remove_file(&out);
    }
    g.finish();
}

criterion_group!(benches, bench_extract);
criterion_main!(benches);
