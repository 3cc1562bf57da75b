//! Property tests of the writer: random sequences of writes (any alignment),
//! discards in every mode, resizes, flushes, clean reopens and reopens
//! after a simulated crash right after a flush, on fixed, dynamic and
//! differencing disks, must read exactly as the in-memory model says after
//! every step, and the file must pass `check` with no errors.

mod model;

use model::*;
use proptest::prelude::*;
use std::sync::Arc;
use vhdx::{MemStorage, OpenOptions, Storage};

fn fits(op: &Op, size: u64) -> bool {
    match *op {
        Op::Write { off, len, .. } | Op::Discard { off, len, .. } => off + len <= size,
        _ => true,
    }
}

fn exercise(setup: &Setup, ops: &[Op]) -> Result<(), TestCaseError> {
    let mut leaf = Arc::new(MemStorage::default());
    let parent = build(setup, &*leaf);
    let mut model = Model::new(setup);
    let mut disk = open(leaf.clone(), &parent, OpenOptions::writable()).unwrap();
    for (i, op) in ops.iter().enumerate() {
        if !fits(op, model.bytes.len() as u64) {
            continue;
        }
        let allowed = model.apply(op);
        let r = run(&mut disk, op);
        prop_assert_eq!(r.is_ok(), allowed, "op {} {:?}: {:?}", i, op, r.err());
        if let Op::Reopen = op {
            disk.close().unwrap();
            // Every other reopen simulates a crash after the last flush: the
            // bytes as they are, the log still live.
            disk = open(leaf.clone(), &parent, OpenOptions::writable()).unwrap();
        }
        if let Op::Flush = op {
            if i % 2 == 0 {
                let copy = Arc::new(MemStorage::new(leaf.to_vec()));
                let crashed = open(copy.clone(), &parent, OpenOptions::read_only()).unwrap();
                prop_assert_eq!(crashed.virtual_size(), model.bytes.len() as u64);
                let mut got = vec![0u8; model.bytes.len()];
                crashed.read_at(&mut got, 0).unwrap();
                prop_assert!(
                    got == model.bytes,
                    "op {}: crash copy after flush differs",
                    i
                );
                drop(crashed);
                drop(disk);
                leaf = copy;
                disk = open(leaf.clone(), &parent, OpenOptions::writable()).unwrap();
            }
        }
        prop_assert_eq!(disk.virtual_size(), model.bytes.len() as u64);
        let mut got = vec![0u8; model.bytes.len()];
        disk.read_at(&mut got, 0).unwrap();
        if got != model.bytes {
            let at = got
                .iter()
                .zip(&model.bytes)
                .position(|(a, b)| a != b)
                .unwrap();
            return Err(TestCaseError::fail(format!(
                "after op {i} {op:?}: first difference at {at:#x}"
            )));
        }
    }
    disk.close().unwrap();
    let report = vhdx::check::check(Box::new(leaf.clone()), "disk.vhdx").unwrap();
    prop_assert!(!report.is_corrupt(), "{:?}", report.problems);
    prop_assert!(!report.log_needs_replay);
    let disk = open(
        leaf.clone() as Arc<dyn Storage>,
        &parent,
        OpenOptions::read_only(),
    )
    .unwrap();
    prop_assert!(disk.leaf().header().log_guid.is_nil());
    let mut got = vec![0u8; model.bytes.len()];
    disk.read_at(&mut got, 0).unwrap();
    prop_assert!(got == model.bytes, "after the final reopen");
    Ok(())
}

fn setup_strategy() -> impl Strategy<Value = Setup> {
    (
        prop_oneof![
            Just(Kind::Fixed),
            Just(Kind::Dynamic),
            Just(Kind::Differencing)
        ],
        prop_oneof![Just(1u32 << 20), Just(2u32 << 20)],
        prop_oneof![Just(512u32), Just(4096u32)],
        1u64..=6,
        0u64..4096,
        any::<u64>(),
    )
        .prop_map(|(kind, block_size, lss, mib, extra, seed)| {
            let lss64 = lss as u64;
            let size = (mib * MIB + extra * lss64 % MIB).max(lss64);
            let parent_size =
                ((size as f64) * [0.6, 1.0, 1.3][(seed % 3) as usize]) as u64 / lss64 * lss64;
            Setup {
                kind,
                block_size,
                lss,
                size,
                parent_size: parent_size.max(lss64),
                seed,
            }
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]
    #[test]
    fn random_operations_match_the_model(setup in setup_strategy(), op_seed: u64, count in 1usize..40) {
        let mut rng = common_rng(op_seed);
        let ops = random_ops(&mut rng, &setup, count);
        exercise(&setup, &ops)?;
    }
}

fn common_rng(seed: u64) -> impl FnMut() -> u64 {
    let mut s = seed;
    move || {
        s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}
