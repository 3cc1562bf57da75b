//! Sequential reads (4 MiB, and 4 KiB) of a whole 256 MiB disk through
//! chains of depth 1, 8 and 64 that hold the same guest bytes, spread over
//! the layers: through `chain::ChainDisk` (the layer map) and, for
//! comparison, `vhdx::Disk` (which resolves layer by layer).
//!
//! The content is 64 groups of writes, applied in order; at depth D group g
//! goes to layer g * D / 64 (the base is layer 0). Each group writes two
//! whole 2 MiB blocks (a shuffled assignment, so every block is written
//! once) and then 4 sector runs of 4 to 128 KiB anywhere, over data of
//! earlier groups. At depth 64 most blocks come from a layer far above or
//! below the leaf and partial runs make blocks PARTIALLY_PRESENT; at depth
//! 1 the single dynamic file holds everything.
//!
//! Before the criterion benchmarks, the setup checks that every depth reads
//! the same bytes through both, prints the size of each layer map, and
//! prints an interleaved measurement (all depths in turn, 9 rounds) that is
//! less sensitive to other load on the machine than criterion's one
//! benchmark after the other.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use vhdx::create::{create, CreateParams, ParentLink};
use vhdx::{ChainOptions, Disk, VhdxFile};

const SIZE: u64 = 256 << 20;
const BLOCK: u32 = 2 << 20;
/// The read sizes: 4 MiB (the figure of the issue) and 4 KiB (where the
/// cost of resolving a read, not the copy, dominates).
const CHUNKS: [(&str, usize); 2] = [("4MiB", 4 << 20), ("4KiB", 4 << 10)];
const GROUPS: usize = 64;
const PARTIALS: usize = 4;
const DEPTHS: [usize; 3] = [1, 8, 64];

/// xorshift64.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut r = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut v = Vec::with_capacity(len);
    while v.len() < len {
        v.extend_from_slice(&r.next().to_le_bytes());
    }
    v.truncate(len);
    v
}

/// The writes of each group, (guest offset, length), in order.
fn groups() -> Vec<Vec<(u64, u64)>> {
    let mut rng = Rng(0x5EED);
    let bs = BLOCK as u64;
    let blocks = SIZE / bs;
    let mut order: Vec<u64> = (0..blocks).collect();
    for i in (1..order.len()).rev() {
        order.swap(i, rng.below(i as u64 + 1) as usize);
    }
    (0..GROUPS)
        .map(|g| {
            let mut w: Vec<(u64, u64)> = order
                .iter()
                .enumerate()
                .filter(|(i, _)| i % GROUPS == g)
                .map(|(_, &b)| (b * bs, bs))
                .collect();
            for _ in 0..PARTIALS {
                let len = (1 + rng.below(32)) * 4096;
                let off = rng.below((SIZE - len) / 4096) * 4096;
                w.push((off, len));
            }
            w
        })
        .collect()
}

fn new_base(path: &Path) {
    let mut p = CreateParams::dynamic(SIZE);
    p.block_size = BLOCK;
    let f = std::fs::File::create_new(path).unwrap();
    create(&f, &path.display().to_string(), &p, &Default::default()).unwrap();
}

fn new_child(path: &Path, parent: &Path) {
    let pf = VhdxFile::open_path(parent, vhdx::OpenOptions::read_only()).unwrap();
    let link = ParentLink::for_parent(path, parent, pf.header().data_write_guid);
    let mut p = CreateParams::differencing(SIZE, link);
    p.block_size = BLOCK;
    p.virtual_disk_id = pf.metadata().virtual_disk_id;
    let f = std::fs::File::create_new(path).unwrap();
    create(&f, &path.display().to_string(), &p, &Default::default()).unwrap();
}

/// Builds the chain of `depth` layers in `dir`; returns the leaf.
fn build(dir: &Path, depth: usize, groups: &[Vec<(u64, u64)>]) -> PathBuf {
    let mut leaf = dir.join("layer0.vhdx");
    new_base(&leaf);
    for layer in 0..depth {
        if layer > 0 {
            let p = dir.join(format!("layer{layer}.avhdx"));
            new_child(&p, &leaf);
            leaf = p;
        }
        let mut d = Disk::open_writable(&leaf, &ChainOptions::default()).unwrap();
        for (g, writes) in groups.iter().enumerate() {
            if g * depth / GROUPS != layer {
                continue;
            }
            for (i, &(off, len)) in writes.iter().enumerate() {
                let data = pattern((g * 1000 + i) as u64, len as usize);
                d.write_at(&data, off).unwrap();
            }
        }
        d.close().unwrap();
    }
    leaf
}

/// Reads the whole disk in order, `buf.len()` bytes at a time.
fn sweep(buf: &mut [u8], read: impl Fn(&mut [u8], u64)) {
    let mut off = 0;
    while off < SIZE {
        read(buf, off);
        off += buf.len() as u64;
    }
}

/// A chain of the benchmark: depth, its folder, and the two ways to read it.
type Chain = (usize, tempfile::TempDir, chain::ChainDisk, Disk);

/// Whole-disk sweeps of every chain and reader in turn, `rounds` times,
/// printing the fastest and the median: figures taken seconds apart, so
/// that load from other processes shifts all depths alike (criterion
/// measures one benchmark after the other, a minute apart).
fn interleaved(chains: &[Chain], rounds: usize) {
    for (name, chunk) in CHUNKS {
        let mut buf = vec![0u8; chunk];
        let mut ms = vec![[Vec::new(), Vec::new()]; chains.len()];
        for _ in 0..rounds {
            for ((_, _, mapped, plain), t) in chains.iter().zip(&mut ms) {
                let start = Instant::now();
                sweep(&mut buf, |dst, at| mapped.read_at(dst, at).unwrap());
                t[0].push(start.elapsed().as_secs_f64() * 1e3);
                let start = Instant::now();
                sweep(&mut buf, |dst, at| plain.read_at(dst, at).unwrap());
                t[1].push(start.elapsed().as_secs_f64() * 1e3);
            }
        }
        for ((depth, ..), t) in chains.iter().zip(&mut ms) {
            for (what, v) in ["ChainDisk", "Disk"].iter().zip(t.iter_mut()) {
                v.sort_by(f64::total_cmp);
                eprintln!(
                    "interleaved {name} {what} depth {depth}: min {:.1} ms, median {:.1} ms",
                    v[0],
                    v[v.len() / 2]
                );
            }
        }
    }
}

fn bench_read_depth(c: &mut Criterion) {
    let groups = groups();
    // All chains first, so that the figures of one read size are taken
    // close together.
    let mut reference: Option<Vec<u8>> = None;
    let mut chains = Vec::new();
    for depth in DEPTHS {
        let dir = tempfile::tempdir().unwrap();
        let leaf = build(dir.path(), depth, &groups);
        let mapped = chain::ChainDisk::open(&leaf, &ChainOptions::default()).unwrap();
        let plain = Disk::open(&leaf, &ChainOptions::default()).unwrap();
        assert_eq!(plain.layers().len(), depth);

        // Every depth shows the same bytes, through both.
        let mut all = vec![0u8; SIZE as usize];
        let mut other = vec![0u8; SIZE as usize];
        mapped.read_at(&mut all, 0).unwrap();
        plain.read_at(&mut other, 0).unwrap();
        assert!(all == other, "depth {depth}: ChainDisk and Disk differ");
        drop(other);
        match &reference {
            None => reference = Some(all),
            Some(r) => assert!(*r == all, "depth {depth} reads other bytes"),
        }
        let mut layers: Vec<usize> = mapped
            .extents()
            .iter()
            .filter_map(|e| match e.source {
                chain::layer_map::Source::Data { layer, .. } => Some(layer),
                _ => None,
            })
            .collect();
        layers.sort_unstable();
        layers.dedup();
        eprintln!(
            "depth {depth}: {} extents, data in {} layers",
            mapped.extents().len(),
            layers.len()
        );
        chains.push((depth, dir, mapped, plain));
    }
    drop(reference);
    interleaved(&chains, 9);

    let mut g = c.benchmark_group("read_depth");
    g.throughput(Throughput::Bytes(SIZE));
    g.sample_size(10);
    g.warm_up_time(Duration::from_secs(2));
    g.measurement_time(Duration::from_secs(6));
    for (name, chunk) in CHUNKS {
        let mut buf = vec![0u8; chunk];
        for (depth, _dir, mapped, plain) in &chains {
            let id = BenchmarkId::new(format!("ChainDisk_{name}"), depth);
            g.bench_function(id, |b| {
                b.iter(|| sweep(&mut buf, |dst, at| mapped.read_at(dst, at).unwrap()))
            });
            let id = BenchmarkId::new(format!("Disk_{name}"), depth);
            g.bench_function(id, |b| {
                b.iter(|| sweep(&mut buf, |dst, at| plain.read_at(dst, at).unwrap()))
            });
        }
    }
    g.finish();
}

criterion_group!(benches, bench_read_depth);
criterion_main!(benches);
