//! `ChainDisk` (the layer map) against `vhdx::Disk`: random chains of depth
//! 1 to 6 with random writes, discards in every mode and resizes through the
//! `ChainDisk`, after each of which it must read what a fresh `Disk::open` of
//! the leaf reads and its map must equal a freshly built one; a chain of
//! depth 64; an incomplete chain; the `Read + Seek + Write` impls.

mod common;

use chain::layer_map::{Extent, Source};
use chain::ChainDisk;
use common::Rng;
use common::*;
use proptest::prelude::*;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use vhdx::write::DiscardMode;
use vhdx::{ChainOptions, Disk};

/// base <- l1 <- ... with `layers` files in all, random content; returns
/// the leaf.
fn build_chain(dir: &Path, rng: &mut Rng, layers: usize, lss: u32, ops: u64) -> PathBuf {
    let blocks = [1u32 << 20, 2 << 20, 4 << 20];
    let size = 8 * MIB + rng.below(4 * MIB / lss as u64) * lss as u64;
    let mut path = dir.join("base.vhdx");
    new_base(&path, size, blocks[rng.below(3) as usize], lss);
    let n = 1 + rng.below(ops) as usize;
    scribble(&path, rng, n);
    let mut size = size;
    for i in 1..layers {
        let p = dir.join(format!("l{i}.avhdx"));
        // Some layers are larger than their parent.
        let grow = (rng.below(4) == 0).then(|| {
            size += (1 + rng.below(8)) * MIB / 2;
            size
        });
        new_child(&p, &path, grow, blocks[rng.below(3) as usize]);
        let n = 1 + rng.below(ops) as usize;
        scribble(&p, rng, n);
        path = p;
    }
    path
}

/// The map covers the disk from 0 in order, with no empty extent and no
/// extent that continues the one before it.
fn check_map(d: &ChainDisk) -> Result<(), TestCaseError> {
    let x = d.extents();
    prop_assert!(d.is_mapped());
    prop_assert_eq!(x.first().map(|e| e.start), Some(0));
    prop_assert_eq!(x.last().map(Extent::end), Some(d.virtual_size()));
    for w in x.windows(2) {
        prop_assert_eq!(w[0].end(), w[1].start);
        let continues = match (w[0].source, w[1].source) {
            (
                Source::Data { layer, offset },
                Source::Data {
                    layer: l,
                    offset: o,
                },
            ) => layer == l && offset + w[0].len == o,
            (a, b) => a == b,
        };
        prop_assert!(!continues, "{:?} continues {:?}", w[1], w[0]);
    }
    prop_assert!(x.iter().all(|e| e.len > 0));
    Ok(())
}

/// `d` reads what `want` reads: the whole disk, random ranges (also through
/// `Read + Seek`), and an empty read at the end.
fn same_reads(d: &mut ChainDisk, want: &Disk, rng: &mut Rng) -> Result<(), TestCaseError> {
    let size = want.virtual_size();
    prop_assert_eq!(d.virtual_size(), size);
    let mut a = vec![0u8; size as usize];
    let mut b = vec![0u8; size as usize];
    d.read_at(&mut a, 0).unwrap();
    want.read_at(&mut b, 0).unwrap();
    prop_assert_eq!(first_diff(&a, &b), None, "whole disk");
    for k in 0..8 {
        let off = rng.below(size);
        let len = rng.below((size - off).min(3 * MIB) + 1) as usize;
        let got = &mut a[..len];
        if k % 2 == 0 {
            d.read_at(got, off).unwrap();
        } else {
            d.seek(SeekFrom::Start(off)).unwrap();
            d.read_exact(got).unwrap();
        }
        want.read_at(&mut b[..len], off).unwrap();
        prop_assert_eq!(
            first_diff(got, &b[..len]),
            None,
            "{} bytes at {:#x}",
            len,
            off
        );
    }
    d.read_at(&mut [], size).unwrap();
    prop_assert!(d.read_at(&mut [0u8; 1], size).is_err());
    Ok(())
}

/// One random change through `d`: a write (any alignment), a discard in a
/// random mode, or a resize (grow, shrink over zeros, or a refused shrink).
fn random_change(d: &mut ChainDisk, rng: &mut Rng) -> String {
    let size = d.virtual_size();
    let lss = d.disk().leaf().logical_sector_size() as u64;
    let bs = d.disk().leaf().block_size();
    match rng.below(10) {
        0..=4 => {
            let (off, len) = match rng.below(3) {
                0 => {
                    let b = rng.below(size.div_ceil(bs));
                    (b * bs, bs.min(size - b * bs))
                }
                1 => {
                    let off = rng.below(size);
                    (off, 1 + rng.below((size - off).min(3 * bs)))
                }
                _ => {
                    let off = rng.below(size / lss) * lss;
                    (off, ((1 + rng.below(64)) * lss).min(size - off))
                }
            };
            d.write_at(&rng.bytes(len as usize), off).unwrap();
            format!("write {len} at {off:#x}")
        }
        5..=7 => {
            let mode = [
                DiscardMode::Zero,
                DiscardMode::Unmap,
                DiscardMode::Transparent,
            ][rng.below(3) as usize];
            let off = rng.below(size / lss) * lss;
            let len = ((1 + rng.below(3 * bs / lss)) * lss).min(size - off);
            d.discard(off, len, mode).unwrap();
            format!("discard {len} at {off:#x} {mode:?}")
        }
        _ => {
            let grow = size < 10 * MIB || (size < 24 * MIB && rng.below(2) == 0);
            if grow {
                let new = size + (1 + rng.below(4 * MIB / lss)) * lss;
                d.resize(new, false).unwrap();
                format!("grow to {new}")
            } else {
                let new = size - (1 + rng.below(4 * MIB / lss)) * lss;
                // Zero the tail first, or try a shrink that may be refused.
                if rng.below(3) != 0 {
                    d.discard(new, size - new, DiscardMode::Zero).unwrap();
                    d.resize(new, true).unwrap();
                    format!("zero and shrink to {new}")
                } else {
                    let r = d.resize(new, true);
                    format!(
                        "shrink to {new}: {}",
                        if r.is_ok() { "ok" } else { "refused" }
                    )
                }
            }
        }
    }
}

fn exercise(seed: u64, layers: usize, lss: u32, steps: usize) -> Result<(), TestCaseError> {
    let dir = scratch();
    let mut rng = Rng(seed | 1);
    let leaf = build_chain(dir.path(), &mut rng, layers, lss, 12);
    let mut d = ChainDisk::open_writable(&leaf, &ChainOptions::default()).unwrap();
    prop_assert_eq!(d.disk().layers().len(), layers);
    check_map(&d)?;
    for step in 0..steps {
        let what = random_change(&mut d, &mut rng);
        check_map(&d).map_err(|e| TestCaseError::fail(format!("step {step} {what}: {e}")))?;
        // Before the flush: against the inner disk (uncommitted metadata).
        if rng.below(2) == 0 {
            let mut a = vec![0u8; d.virtual_size() as usize];
            let mut b = a.clone();
            d.read_at(&mut a, 0).unwrap();
            d.disk().read_at(&mut b, 0).unwrap();
            prop_assert_eq!(
                first_diff(&a, &b),
                None,
                "step {} {} before flush",
                step,
                what
            );
        }
        d.flush().unwrap();
        let fresh = Disk::open(&leaf, &ChainOptions::default()).unwrap();
        same_reads(&mut d, &fresh, &mut rng)
            .map_err(|e| TestCaseError::fail(format!("step {step} {what}: {e}")))?;
        let remapped = ChainDisk::from_disk(fresh).unwrap();
        prop_assert!(
            remapped.extents() == d.extents(),
            "step {} {}: the map differs from a fresh one",
            step,
            what
        );
    }
    d.close().unwrap();
    let r = vhdx::check::check_path(&leaf, false).unwrap();
    prop_assert!(!r.is_corrupt(), "{:?}", r.problems);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

    #[test]
    fn random_chains_read_like_a_fresh_disk_after_every_change(
        seed in any::<u64>(),
        layers in 1usize..=6,
        lss in prop::sample::select(vec![512u32, 4096]),
        steps in 1usize..14,
    ) {
        exercise(seed, layers, lss, steps)?;
    }
}

#[test]
fn depth_64_reads_like_disk() {
    let dir = scratch();
    let mut rng = Rng(64);
    let leaf = build_chain(dir.path(), &mut rng, 64, 512, 4);
    let mut d = ChainDisk::open_writable(&leaf, &ChainOptions::default()).unwrap();
    assert_eq!(d.disk().layers().len(), 64);
    check_map(&d).unwrap();
    // The data really is spread over the chain.
    let mut used: Vec<usize> = d
        .extents()
        .iter()
        .filter_map(|e| match e.source {
            Source::Data { layer, .. } => Some(layer),
            _ => None,
        })
        .collect();
    used.sort_unstable();
    used.dedup();
    assert!(used.len() >= 16, "only {} layers hold data", used.len());
    let plain = Disk::open(&leaf, &ChainOptions::default()).unwrap();
    same_reads(&mut d, &plain, &mut rng).unwrap();
    drop(plain);
    // And after changes at depth 64.
    for _ in 0..6 {
        random_change(&mut d, &mut rng);
        check_map(&d).unwrap();
    }
    d.flush().unwrap();
    let fresh = Disk::open(&leaf, &ChainOptions::default()).unwrap();
    same_reads(&mut d, &fresh, &mut rng).unwrap();
    d.close().unwrap();
}

#[test]
fn an_incomplete_chain_reads_zeros_where_the_parent_would_be() {
    let dir = scratch();
    let mut rng = Rng(9);
    let leaf = build_chain(dir.path(), &mut rng, 3, 512, 6);
    let f = vhdx::VhdxFile::open_path(&leaf, vhdx::OpenOptions::read_only()).unwrap();
    let only_leaf = Disk::from_files(vec![(leaf.clone(), f)], false).unwrap();
    assert!(only_leaf.is_incomplete());
    let mut d = ChainDisk::from_disk(only_leaf).unwrap();
    check_map(&d).unwrap();
    assert!(d.extents().iter().any(|e| e.source == Source::Parent));
    let f = vhdx::VhdxFile::open_path(&leaf, vhdx::OpenOptions::read_only()).unwrap();
    let want = Disk::from_files(vec![(leaf.clone(), f)], false).unwrap();
    same_reads(&mut d, &want, &mut rng).unwrap();
}

#[test]
fn io_traits_read_seek_and_write_through_the_map() {
    let dir = scratch();
    let mut rng = Rng(3);
    let leaf = build_chain(dir.path(), &mut rng, 3, 512, 6);
    let mut d = ChainDisk::open_writable(&leaf, &ChainOptions::default()).unwrap();
    let size = d.virtual_size();
    let data = rng.bytes(3 * MIB as usize + 123);
    d.seek(SeekFrom::Start(MIB - 7)).unwrap();
    d.write_all(&data).unwrap();
    assert_eq!(d.stream_position().unwrap(), MIB - 7 + data.len() as u64);
    // Writing at the end fails; reading there gives 0 bytes.
    d.seek(SeekFrom::End(0)).unwrap();
    assert!(d.write(&[1]).is_err());
    assert_eq!(d.read(&mut [0u8; 16]).unwrap(), 0);
    assert!(d.seek(SeekFrom::Current(-(size as i64) - 1)).is_err());
    Write::flush(&mut d).unwrap();
    d.seek(SeekFrom::Start(MIB - 7)).unwrap();
    let mut back = vec![0u8; data.len()];
    d.read_exact(&mut back).unwrap();
    assert_eq!(first_diff(&back, &data), None);
    d.close().unwrap();
    let all = read_all(&leaf);
    let at = (MIB - 7) as usize;
    assert_eq!(first_diff(&all[at..at + data.len()], &data), None);
}
