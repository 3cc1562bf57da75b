//! `hvkit merge` throughput: a 2 GiB child merged into a 4 GiB parent
//! (benches/src/merge_case.rs: all blocks full, every block half written,
//! sparse), on tmpfs so the figure is the merge's own cost (no disk
//! writeback; `benches/compare.sh` measures on disk next to qemu-img commit
//! and the copy bound). Each iteration starts from fresh copies of the files
//! (not timed) and ends with the merge's own flushes.

use chain::{merge, plan, MergeOptions, OsFiles, PlanOptions};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use hvkit_benches::merge_case::{make_child, make_parent, Layout};
use std::path::Path;
use std::time::Duration;

fn scratch() -> tempfile::TempDir {
    tempfile::tempdir_in("/dev/shm").unwrap_or_else(|_| tempfile::tempdir().unwrap())
}

fn bench_merge(c: &mut Criterion) {
    let pristine = scratch();
    make_parent(pristine.path()).unwrap();
    let mut g = c.benchmark_group("merge_2GiB_child_into_4GiB_parent");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(20));
    g.warm_up_time(Duration::from_secs(1));
    for layout in [Layout::Full, Layout::HalfPartial, Layout::Sparse] {
        let dir = scratch();
        std::fs::copy(
            pristine.path().join("base.vhdx"),
            dir.path().join("base.vhdx"),
        )
        .unwrap();
        make_child(dir.path(), layout).unwrap();
        let work = scratch();
        let restore = |w: &Path| {
            for f in ["base.vhdx", "child.avhdx"] {
                std::fs::copy(dir.path().join(f), w.join(f)).unwrap();
            }
        };
        g.throughput(Throughput::Bytes(layout.data_bytes()));
        g.bench_function(layout.name(), |b| {
            b.iter_batched(
                || restore(work.path()),
                |()| {
                    let child = work.path().join("child.avhdx");
                    let p = plan(
                        &child,
                        &PlanOptions {
                            direction: chain::DirectionChoice::Down,
                            ..Default::default()
                        },
                    )
                    .unwrap();
                    merge(&OsFiles, &p, &MergeOptions::default(), &mut |_, _| {}).unwrap()
                },
                BatchSize::PerIteration,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, bench_merge);
criterion_main!(benches);
