//! Checkpoint operations of a VM that is off, with 4 dynamic disks of
//! 8 GiB, at checkpoint tree depth 1, 8 and 32 (a linear chain of D
//! checkpoints, so each disk's chain is D + 1 files deep), on the real
//! disk (`target/tmp`, ext4 here; not tmpfs): the operations' fsyncs are
//! part of what they cost.
//!
//! The folders are built once per depth as templates: between
//! checkpoints, 3 writes of 64 KiB at fixed pseudo-random offsets go into
//! each current disk. Each timed operation works on a copy of a template
//! (`cp -a --reflink=auto`, then `sync -f`; neither timed), except apply,
//! which is repeated on one copy.
//!
//! - `create/depth_D`: `checkpoint::create` of a fresh copy (one more
//!   checkpoint; only the create is timed).
//! - `apply/depth_D`: `checkpoint::apply` of the middle checkpoint
//!   (number ceil(D / 2)), over and over on one copy (each apply replaces
//!   the leaves the previous one made).
//! - `small_files/8`: a floor to read create and apply against (their
//!   target is 50 ms): 8 small files (4 KiB), each written as the library
//!   writes its files (a new temporary file, written, `fdatasync`,
//!   renamed into place, the folder `fsync`ed; the library flushes each
//!   file twice); 8 = [`SMALL_FILES`], the files a create writes.
//! - `delete/depth_D`: `checkpoint::delete` of the newest checkpoint of a
//!   fresh copy of a template that also holds 64 MiB per disk in the
//!   newest checkpoint's frozen disks (at 1 GiB) and 64 MiB per disk in
//!   the current leaves (at 2 GiB), random bytes, whole 2 MiB blocks. The
//!   frozen disks have one child each, so the delete merges; the cheaper
//!   direction is down (up would move the frozen disk's 64 MiB and more),
//!   so it copies 4 × 64 MiB (checked in the setup against the delete's
//!   own statistics).
//! - `delete/hvkit_merge/depth_D`, the peer, measured right after
//!   `delete/depth_D`: what `hvkit merge LEAF` runs
//!   (`chain::plan` with the default options, `chain::merge` through
//!   `chain::OsFiles` with the default options) on each of the 4 current
//!   leaves of an identical fresh copy: the same merges of the same bytes
//!   (checked), without the checkpoint bookkeeping.
//! - `delete/copy_bound`: the same bytes copied with `std::fs::copy`
//!   (`copy_file_range`) from 4 raw 64 MiB files into 4 new files, each
//!   `fsync`ed.
//!
//! Before criterion's delete benchmarks, the setup checks that the delete
//! and the peer copy 4 × 64 MiB each and prints an interleaved measurement
//! (copy bound, then delete and peer at every depth, [`ROUNDS`] rounds),
//! which load from other processes on the machine hits alike.

use checkpoint::{ApplyOptions, CreateOptions, DiskSpec, OsFs, VmFolder, VmSpec};
use criterion::{
    criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, SamplingMode, Throughput,
};
use hvkit_benches::SplitMix64;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use tempfile::TempDir;

const DISKS: usize = 4;
const DISK_SIZE: u64 = 8 << 30;
const DEPTHS: [usize; 3] = [1, 8, 32];
/// Writes of 64 KiB into each disk between checkpoints.
const SMALL_WRITES: usize = 3;
const SMALL_LEN: usize = 64 << 10;
/// Per disk, in the newest checkpoint's frozen disks and in the leaves.
const MERGED: u64 = 64 << 20;
const FROZEN_AT: u64 = 1 << 30;
const LEAF_AT: u64 = 2 << 30;
/// The files a create writes atomically: 4 new leaves, the checkpoint's
/// `.vmrs` and `.vmcx`, the VM configuration twice (the record, the
/// commit).
const SMALL_FILES: usize = DISKS + 4;

/// Where the folders go: under the target dir, on the real disk.
fn scratch_root() -> TempDir {
    let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    std::fs::create_dir_all(&base).unwrap();
    tempfile::Builder::new()
        .prefix("checkpoint_ops-")
        .tempdir_in(&base)
        .unwrap()
}

fn run(cmd: &mut Command) {
    let st = cmd.status().unwrap();
    assert!(st.success(), "{cmd:?}: {st}");
}

fn sync_fs(p: &Path) {
    run(Command::new("sync").arg("-f").arg(p));
}

/// Pseudo-random bytes, the same for a seed.
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut r = SplitMix64::new(seed);
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        v.extend_from_slice(&r.next_u64().to_le_bytes());
    }
    v.truncate(len);
    v
}

fn write_disk(leaf: &Path, writes: &[(u64, Vec<u8>)]) {
    let mut d = vhdx::Disk::open_writable(leaf, &vhdx::ChainOptions::default()).unwrap();
    for (off, data) in writes {
        d.write_at(data, *off).unwrap();
    }
    d.close().unwrap();
}

/// The small writes of layer `layer` of disk `disk`.
fn small_writes(layer: usize, disk: usize) -> Vec<(u64, Vec<u8>)> {
    let seed = (layer * 64 + disk) as u64;
    let mut r = SplitMix64::new(seed ^ 0xC0FF_EE00);
    (0..SMALL_WRITES)
        .map(|i| {
            let off = r.next_u64() % (DISK_SIZE / SMALL_LEN as u64) * SMALL_LEN as u64;
            (off, pattern(seed * 16 + i as u64, SMALL_LEN))
        })
        .collect()
}

fn merged_data(disk: usize, which: u64) -> Vec<u8> {
    pattern(0xDA7A_0000 + which * 16 + disk as u64, MERGED as usize)
}

/// A template folder of depth `depth` at `dir`; the checkpoint ids,
/// oldest first. `merged`: the 64 MiB regions of the delete benchmark.
fn build(dir: &Path, depth: usize, merged: bool) -> Vec<String> {
    let mut spec = VmSpec::new("bench");
    for _ in 0..DISKS {
        spec.disks.push(DiskSpec::New { size: DISK_SIZE });
    }
    VmFolder::create(dir, &spec).unwrap();
    let mut ids = Vec::new();
    for layer in 0..depth {
        let f = VmFolder::open(dir).unwrap();
        for (i, d) in f.disks.iter().enumerate() {
            let mut w = small_writes(layer, i);
            if merged && layer == depth - 1 {
                w.push((FROZEN_AT, merged_data(i, 0)));
            }
            write_disk(&d.path, &w);
        }
        let c = checkpoint::create(&OsFs, dir, &CreateOptions::default(), None).unwrap();
        ids.push(c.id);
    }
    if merged {
        let f = VmFolder::open(dir).unwrap();
        for (i, d) in f.disks.iter().enumerate() {
            write_disk(&d.path, &[(LEAF_AT, merged_data(i, 1))]);
        }
    }
    let f = VmFolder::open(dir).unwrap();
    assert_eq!(f.checkpoints.len(), depth);
    assert!(f.disks.iter().all(|d| d.chain.len() == depth + 1));
    ids
}

/// A fresh copy of a template folder (synced): its scratch folder and
/// the VM folder in it.
struct Work {
    _dir: TempDir,
    vm: PathBuf,
}

fn fresh(template: &Path, root: &Path) -> Work {
    let dir = tempfile::tempdir_in(root).unwrap();
    let vm = dir.path().join("vm");
    run(Command::new("cp")
        .arg("-a")
        .arg("--reflink=auto")
        .arg(template)
        .arg(&vm));
    sync_fs(&vm);
    Work { _dir: dir, vm }
}

/// The current leaves of a copy of `template`, as the copy's paths.
fn leaves_in(template: &Path, copy: &Path) -> Vec<PathBuf> {
    let t = std::fs::canonicalize(template).unwrap();
    VmFolder::open(template)
        .unwrap()
        .disks
        .iter()
        .map(|d| copy.join(d.path.strip_prefix(&t).unwrap()))
        .collect()
}

/// `hvkit merge LEAF` of each leaf; the bytes copied.
fn merge_leaves(leaves: &[PathBuf]) -> u64 {
    let mut bytes = 0;
    for leaf in leaves {
        let p = chain::plan(leaf, &chain::PlanOptions::default()).unwrap();
        let s = chain::merge(
            &chain::OsFiles,
            &p,
            &chain::MergeOptions::default(),
            &mut |_, _| {},
        )
        .unwrap();
        bytes += s.bytes_copied + s.bytes_reflinked;
    }
    bytes
}

/// N small files written as the library writes its files.
fn write_small_files(dir: &Path, n: usize) {
    let data = [0x5Au8; 4096];
    for i in 0..n {
        let path = dir.join(format!("f{i}"));
        let tmp = dir.join(format!(".f{i}.tmp"));
        let mut f = File::create_new(&tmp).unwrap();
        f.write_all(&data).unwrap();
        f.sync_data().unwrap();
        drop(f);
        std::fs::rename(&tmp, &path).unwrap();
        File::open(dir).unwrap().sync_all().unwrap();
    }
}

fn fs_type(p: &Path) -> String {
    let out = Command::new("stat")
        .args(["-f", "-c", "%T"])
        .arg(p)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn bench_checkpoint(c: &mut Criterion) {
    let root = scratch_root();
    let root = root.path();
    eprintln!(
        "checkpoint_ops: folders under {} ({})",
        root.display(),
        fs_type(root)
    );
    let templates: Vec<(usize, PathBuf, Vec<String>)> = DEPTHS
        .iter()
        .map(|&d| {
            let dir = root.join(format!("template_{d}"));
            let ids = build(&dir, d, false);
            (d, dir, ids)
        })
        .collect();
    sync_fs(root);

    let mut g = c.benchmark_group("create");
    g.sample_size(10);
    g.sampling_mode(SamplingMode::Flat);
    g.measurement_time(Duration::from_secs(5));
    g.warm_up_time(Duration::from_secs(1));
    for (d, template, _) in &templates {
        g.bench_function(BenchmarkId::from_parameter(format!("depth_{d}")), |b| {
            b.iter_batched(
                || fresh(template, root),
                |w| {
                    checkpoint::create(&OsFs, &w.vm, &CreateOptions::default(), None).unwrap();
                    w
                },
                BatchSize::PerIteration,
            )
        });
    }
    g.finish();

    let mut g = c.benchmark_group("apply");
    g.sample_size(10);
    g.sampling_mode(SamplingMode::Flat);
    g.measurement_time(Duration::from_secs(5));
    g.warm_up_time(Duration::from_secs(1));
    for (d, template, ids) in &templates {
        let w = fresh(template, root);
        let target = &ids[d.div_ceil(2) - 1];
        g.bench_function(BenchmarkId::from_parameter(format!("depth_{d}")), |b| {
            b.iter(|| checkpoint::apply(&OsFs, &w.vm, target, &ApplyOptions::default()).unwrap())
        });
        let f = VmFolder::open(&w.vm).unwrap();
        assert_eq!(f.current.as_ref(), Some(target));
        assert_eq!(f.checkpoints.len(), *d);
    }
    g.finish();

    let mut g = c.benchmark_group("small_files");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(5));
    g.warm_up_time(Duration::from_secs(1));
    g.bench_function(BenchmarkId::from_parameter(SMALL_FILES), |b| {
        b.iter_batched(
            || {
                let dir = tempfile::tempdir_in(root).unwrap();
                sync_fs(dir.path());
                dir
            },
            |dir| {
                write_small_files(dir.path(), SMALL_FILES);
                dir
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
    drop(templates);

    // Delete: templates with the merged bytes.
    let templates: Vec<(usize, PathBuf, Vec<String>)> = DEPTHS
        .iter()
        .map(|&d| {
            let dir = root.join(format!("delete_template_{d}"));
            let ids = build(&dir, d, true);
            (d, dir, ids)
        })
        .collect();
    let want = DISKS as u64 * MERGED;
    for (d, template, ids) in &templates {
        let w = fresh(template, root);
        let del = checkpoint::delete(&OsFs, &w.vm, ids.last().unwrap(), &mut |_, _| {}).unwrap();
        let s = &del.cleanup;
        eprintln!(
            "checkpoint_ops: delete at depth {d}: {} merges ({}), {} bytes copied, {} reflinked",
            s.merges.len(),
            s.merges
                .iter()
                .map(|m| m.2.as_str())
                .collect::<Vec<_>>()
                .join(" "),
            s.bytes_copied,
            s.bytes_reflinked
        );
        assert_eq!(s.merges.len(), DISKS);
        assert!(s.merges.iter().all(|m| m.2 == "down"));
        assert_eq!(s.bytes_copied + s.bytes_reflinked, want);
        let w = fresh(template, root);
        let moved = merge_leaves(&leaves_in(template, &w.vm));
        assert_eq!(moved, want, "hvkit merge at depth {d}");
    }
    sync_fs(root);

    let src = root.join("copy_src");
    std::fs::create_dir(&src).unwrap();
    let sources: Vec<PathBuf> = (0..DISKS)
        .map(|i| {
            let p = src.join(format!("disk{i}.raw"));
            std::fs::write(&p, merged_data(i, 1)).unwrap();
            p
        })
        .collect();
    sync_fs(&src);
    let copy_dir = || {
        let dir = tempfile::tempdir_in(root).unwrap();
        sync_fs(dir.path());
        dir
    };
    let copy_bound = |dir: &Path| {
        for (i, s) in sources.iter().enumerate() {
            let to = dir.join(format!("disk{i}.raw"));
            std::fs::copy(s, &to).unwrap();
            File::open(&to).unwrap().sync_all().unwrap();
        }
    };

    interleaved(&templates, root, ROUNDS, &copy_dir, &copy_bound);

    let mut g = c.benchmark_group("delete");
    g.sample_size(10);
    g.sampling_mode(SamplingMode::Flat);
    g.measurement_time(Duration::from_secs(8));
    g.warm_up_time(Duration::from_secs(1));
    g.throughput(Throughput::Bytes(want));
    g.bench_function("copy_bound", |b| {
        b.iter_batched(
            copy_dir,
            |dir| {
                copy_bound(dir.path());
                dir
            },
            BatchSize::PerIteration,
        )
    });
    for (d, template, ids) in &templates {
        let newest = ids.last().unwrap();
        g.bench_function(BenchmarkId::from_parameter(format!("depth_{d}")), |b| {
            b.iter_batched(
                || fresh(template, root),
                |w| {
                    checkpoint::delete(&OsFs, &w.vm, newest, &mut |_, _| {}).unwrap();
                    w
                },
                BatchSize::PerIteration,
            )
        });
        g.bench_function(BenchmarkId::new("hvkit_merge", format!("depth_{d}")), |b| {
            b.iter_batched(
                || {
                    let w = fresh(template, root);
                    let leaves = leaves_in(template, &w.vm);
                    (w, leaves)
                },
                |(w, leaves)| {
                    merge_leaves(&leaves);
                    w
                },
                BatchSize::PerIteration,
            )
        });
    }
    g.finish();
}

/// Rounds of the interleaved measurement.
const ROUNDS: usize = 5;

/// Delete, its peer and the copy bound in turn (every depth in each
/// round), so that load from other processes hits all of them alike;
/// prints the fastest and the median of each.
fn interleaved(
    templates: &[(usize, PathBuf, Vec<String>)],
    root: &Path,
    rounds: usize,
    copy_dir: &dyn Fn() -> TempDir,
    copy_bound: &dyn Fn(&Path),
) {
    let mut times: Vec<(String, Vec<Duration>)> = Vec::new();
    let mut record = |name: String, t: Duration| match times.iter_mut().find(|x| x.0 == name) {
        Some(x) => x.1.push(t),
        None => times.push((name, vec![t])),
    };
    for _ in 0..rounds {
        let dir = copy_dir();
        let t = Instant::now();
        copy_bound(dir.path());
        record("copy_bound".into(), t.elapsed());
        drop(dir);
        for (d, template, ids) in templates {
            let w = fresh(template, root);
            let t = Instant::now();
            checkpoint::delete(&OsFs, &w.vm, ids.last().unwrap(), &mut |_, _| {}).unwrap();
            record(format!("delete/depth_{d}"), t.elapsed());
            drop(w);
            let w = fresh(template, root);
            let leaves = leaves_in(template, &w.vm);
            let t = Instant::now();
            merge_leaves(&leaves);
            record(format!("hvkit_merge/depth_{d}"), t.elapsed());
            drop(w);
        }
    }
    eprintln!("checkpoint_ops: interleaved, {rounds} rounds, fastest / median:");
    for (name, mut v) in times {
        v.sort();
        eprintln!(
            "checkpoint_ops:   {name:<22} {:>8.1} / {:>8.1} ms",
            v[0].as_secs_f64() * 1e3,
            v[v.len() / 2].as_secs_f64() * 1e3
        );
    }
}

criterion_group!(benches, bench_checkpoint);
criterion_main!(benches);
