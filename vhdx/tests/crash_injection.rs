//! Crash injection (MS-VHDX 2.3: metadata through the log, payload flushed
//! before the BAT points at it). A storage wrapper lets the first N writes,
//! size changes and flushes through and fails everything after; writes
//! since the last flush are then dropped, kept, or a random subset kept
//! (in order), as a disk cache may do. For every N over mixed workloads on
//! dynamic, fixed and differencing disks the reopened file (log replayed in
//! memory and on disk, which must agree) passes `check`, has a size one of
//! the states allowed, and every sector holds a value it held at the last
//! acknowledged flush or after a later operation: nothing acknowledged is
//! lost and no sector is a mix.

mod model;

use model::*;
use std::sync::Arc;
use vhdx::crash_storage::CrashStorage;
use vhdx::{MemStorage, OpenOptions};

/// Chooses which unflushed changes survive a crash.
type Keep = Box<dyn FnMut(usize) -> bool>;

struct Outcome {
    /// Model state index of the last acknowledged point (0 = initial).
    acked: usize,
    /// Index of the last state that may have reached the disk.
    latest: usize,
}

/// Runs `ops` until the storage dies. States: 0 = before any op, i+1 =
/// after op i.
fn run_until_crash(
    leaf: &Arc<CrashStorage>,
    parent: &Option<Arc<MemStorage>>,
    ops: &[Op],
) -> Outcome {
    let mut acked = 0;
    let mut disk = match open(leaf.clone(), parent, OpenOptions::writable()) {
        Ok(d) => d,
        Err(_) => return Outcome { acked, latest: 0 },
    };
    for (i, op) in ops.iter().enumerate() {
        let r = match op {
            Op::Reopen => {
                let r = disk.close();
                if r.is_ok() {
                    acked = i + 1;
                }
                match open(leaf.clone(), parent, OpenOptions::writable()) {
                    Ok(d) => {
                        disk = d;
                        r
                    }
                    Err(e) => {
                        return Outcome {
                            acked,
                            latest: i + 1,
                        }
                        .or_fail(e)
                    }
                }
            }
            _ => run(&mut disk, op),
        };
        match r {
            Ok(()) => {
                if let Op::Flush = op {
                    acked = i + 1;
                }
            }
            Err(_) => {
                return Outcome {
                    acked,
                    latest: i + 1,
                }
            }
        }
    }
    let r = disk.close();
    if r.is_ok() {
        acked = ops.len();
    }
    Outcome {
        acked,
        latest: ops.len(),
    }
}

trait OrFail {
    fn or_fail(self, e: vhdx::Error) -> Self;
}
impl OrFail for Outcome {
    fn or_fail(self, e: vhdx::Error) -> Self {
        // Reopening during the workload fails only because the storage died.
        assert!(format!("{e}").contains("injected crash"), "{e}");
        self
    }
}

/// Runs a workload with a crash after every possible operation count and
/// checks each outcome. Returns the number of crash points.
fn crash_everywhere(setup: &Setup, ops: &[Op]) -> u64 {
    // Model states and which ops the model allows.
    let mut model = Model::new(setup);
    let mut states = vec![model.bytes.clone()];
    let mut allowed_ops = Vec::new();
    for op in ops {
        let mut m = model.clone();
        if m.apply(op) {
            model = m;
            allowed_ops.push(op.clone());
            states.push(model.bytes.clone());
        }
    }
    let ops = allowed_ops;
    // A clean run counts the storage operations.
    let leaf = Arc::new(CrashStorage::default());
    let parent = build(setup, &*leaf);
    leaf.arm(None);
    let o = run_until_crash(&leaf, &parent, &ops);
    assert_eq!(o.latest, ops.len());
    let total = leaf.ops();
    let lss = setup.lss as usize;
    for n in 0..total {
        let leaf = Arc::new(CrashStorage::default());
        let parent = build(setup, &*leaf);
        leaf.arm(Some(n));
        let o = run_until_crash(&leaf, &parent, &ops);
        let pending = leaf.unflushed();
        let mut r = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let variants: [(&str, Keep); 5] = [
            ("unflushed lost", Box::new(|_| false)),
            ("unflushed kept", Box::new(|_| true)),
            // The newest write reached the disk before the older ones (a
            // header before the pages it relies on).
            ("only the newest kept", Box::new(move |i| i + 1 == pending)),
            ("the oldest lost", Box::new(|i| i > 0)),
            (
                "random subset kept",
                Box::new(move |_| {
                    r ^= r << 13;
                    r ^= r >> 7;
                    r ^= r << 17;
                    r & 1 == 1
                }),
            ),
        ];
        for (name, mut keep) in variants {
            if pending == 0 && name != "unflushed lost" {
                continue;
            }
            let bytes = leaf.after_crash(&mut *keep);
            let ctx = format!(
                "crash after {n} of {total} storage ops ({name}), acked state {}, latest {}",
                o.acked, o.latest
            );
            let mem = Arc::new(MemStorage::new(bytes.clone()));
            let ro = open(mem.clone(), &parent, OpenOptions::read_only())
                .unwrap_or_else(|e| panic!("{ctx}: read-only reopen: {e}"));
            let size = ro.virtual_size() as usize;
            let mut got = vec![0u8; size];
            ro.read_at(&mut got, 0).unwrap();
            drop(ro);
            let report = vhdx::check::check(Box::new(mem.clone()), "disk.vhdx").unwrap();
            assert!(!report.is_corrupt(), "{ctx}: check: {:?}", report.problems);
            let rw = open(mem.clone(), &parent, OpenOptions::writable())
                .unwrap_or_else(|e| panic!("{ctx}: writable reopen: {e}"));
            let mut got_rw = vec![0u8; rw.virtual_size() as usize];
            rw.read_at(&mut got_rw, 0).unwrap();
            rw.close().unwrap();
            assert!(got == got_rw, "{ctx}: in-memory and on-disk replay differ");
            let candidates = &states[o.acked..=o.latest];
            assert!(
                candidates.iter().any(|s| s.len() == size),
                "{ctx}: size {size} is none of {:?}",
                candidates.iter().map(|s| s.len()).collect::<Vec<_>>()
            );
            for (k, sector) in got.chunks(lss).enumerate() {
                let at = k * lss;
                let ok = candidates
                    .iter()
                    .any(|s| match s.get(at..at + sector.len()) {
                        Some(v) => v == sector,
                        None => sector.iter().all(|&b| b == 0),
                    });
                assert!(
                    ok,
                    "{ctx}: sector at {at:#x} holds a value no allowed state has"
                );
            }
        }
    }
    total
}

fn workload(setup: &Setup, seed: u64, count: usize) -> Vec<Op> {
    let mut s = seed;
    let mut rng = move || {
        s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    // Only ops that fit the size the model will have.
    let mut size = setup.size;
    random_ops(&mut rng, setup, count * 2)
        .into_iter()
        .filter(|op| {
            match *op {
                Op::Write { off, len, .. } | Op::Discard { off, len, .. } => off + len <= size,
                Op::Resize { size: s } => {
                    // Grow only: a refused shrink would shift the plan.
                    if s >= size {
                        size = s;
                        true
                    } else {
                        false
                    }
                }
                _ => true,
            }
        })
        .take(count)
        .collect()
}

fn setup(kind: Kind, lss: u32) -> Setup {
    Setup {
        kind,
        block_size: 1 << 20,
        lss,
        size: 3 * MIB + 7 * lss as u64,
        parent_size: 2 * MIB + 512 * 1024,
        seed: 7,
    }
}

#[test]
fn crash_at_every_point_of_mixed_workloads() {
    let mut points = 0;
    for (kind, lss, seed) in [
        (Kind::Dynamic, 512, 1),
        (Kind::Differencing, 512, 2),
        (Kind::Fixed, 512, 3),
        (Kind::Differencing, 4096, 4),
        (Kind::Dynamic, 4096, 5),
    ] {
        let s = setup(kind, lss);
        let ops = workload(&s, seed, 36);
        let n = crash_everywhere(&s, &ops);
        println!("{kind:?}/{lss}: {} ops, {n} crash points", ops.len());
        points += n;
    }
    println!("{points} crash points in all");
    assert!(points >= 500, "only {points} crash points");
}
