//! Write throughput through `Disk::write_at` into fresh files: sequential
//! 1 MiB writes of 256 MiB, and 16384 random 4 KiB writes (a fixed seeded
//! sequence of 4 KiB-aligned offsets over the 1 GiB disk), each into a
//! dynamic disk (32 MiB blocks) and into a differencing disk (2 MiB blocks)
//! over an empty dynamic parent. Every iteration opens a freshly created
//! file, writes, and ends with `close()` (payload flush, journaled metadata
//! commit, LogGuid cleared), so the time is what a writer waits for until
//! the data is durable. Creating and deleting the file are not timed.
//! Files live in a temporary folder under `$TMPDIR` (on disk here).

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};
use hvkit_benches::{random_offsets, sequential_offsets};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use vhdx::create::{create, CreateParams, ParentLink};
use vhdx::{ChainOptions, Disk};

const SIZE: u64 = 1 << 30;
const SEQ_LEN: usize = 1 << 20;
const SEQ_TOTAL: u64 = 256 << 20;
const RAND_LEN: usize = 4096;
const RAND_COUNT: usize = 16384;
const SEED: u64 = 0x5EED_0001;

#[derive(Clone, Copy)]
enum Kind {
    Dynamic,
    Differencing,
}

struct Setup {
    dir: tempfile::TempDir,
    /// The parent's parameters (its DataWriteGuid goes into each child).
    parent: CreateParams,
}

fn new_file(path: &Path, params: &CreateParams) {
    let name = path.file_name().unwrap().to_str().unwrap();
    create(
        &std::fs::File::create_new(path).unwrap(),
        name,
        params,
        &BTreeMap::new(),
    )
    .unwrap();
}

impl Setup {
    fn new() -> Setup {
        let dir = tempfile::Builder::new()
            .prefix("hvkit-write-bench")
            .tempdir()
            .unwrap();
        let parent = CreateParams::dynamic(SIZE);
        new_file(&dir.path().join("parent.vhdx"), &parent);
        Setup { dir, parent }
    }

    /// A fresh, empty file of `kind`.
    fn fresh(&self, kind: Kind) -> PathBuf {
        let (path, params) = match kind {
            Kind::Dynamic => (
                self.dir.path().join("dyn.vhdx"),
                CreateParams::dynamic(SIZE),
            ),
            Kind::Differencing => {
                let link = ParentLink::relative(self.parent.data_write_guid, "parent.vhdx");
                (
                    self.dir.path().join("diff.avhdx"),
                    CreateParams::differencing(SIZE, link),
                )
            }
        };
        let _ = std::fs::remove_file(&path);
        new_file(&path, &params);
        path
    }

    /// Time of `iters` rounds of: open `kind` fresh, write `buf` at each
    /// offset, close.
    fn run(&self, kind: Kind, offsets: &[u64], buf: &[u8], iters: u64) -> Duration {
        let mut total = Duration::ZERO;
        for _ in 0..iters {
            let path = self.fresh(kind);
            let start = Instant::now();
            let mut disk = Disk::open_writable(&path, &ChainOptions::default()).unwrap();
            for &off in offsets {
                disk.write_at(buf, off).unwrap();
            }
            disk.close().unwrap();
            total += start.elapsed();
            std::fs::remove_file(&path).unwrap();
        }
        total
    }
}

fn bench_write(c: &mut Criterion) {
    let setup = Setup::new();
    let cases = [
        ("dynamic_32M", Kind::Dynamic),
        ("differencing_2M", Kind::Differencing),
    ];

    let seq = sequential_offsets(SEQ_TOTAL, SEQ_LEN as u64);
    let seq_buf = vec![0xabu8; SEQ_LEN];
    let mut g = c.benchmark_group("sequential_write_1MiB_x256");
    g.throughput(Throughput::Bytes(SEQ_TOTAL));
    g.sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    for (name, kind) in cases {
        g.bench_function(name, |b| {
            b.iter_custom(|iters| setup.run(kind, &seq, &seq_buf, iters))
        });
    }
    g.finish();

    let rand = random_offsets(RAND_COUNT, RAND_LEN as u64, SIZE, SEED);
    let rand_buf = vec![0xabu8; RAND_LEN];
    let mut g = c.benchmark_group("random_write_4KiB_x16384");
    g.throughput(Throughput::Bytes((RAND_COUNT * RAND_LEN) as u64));
    g.sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    for (name, kind) in cases {
        g.bench_function(name, |b| {
            b.iter_custom(|iters| setup.run(kind, &rand, &rand_buf, iters))
        });
    }
    g.finish();
}

criterion_group!(benches, bench_write);
criterion_main!(benches);
