//! Merges of random chains (depth, block sizes, sector sizes, full, partial,
//! ZERO, UNMAPPED and NOT_PRESENT blocks, layers larger and smaller than
//! their parents, single layers and `--into`, down, up and auto)
//! against what the disks read before; merged bases checked by qemu-img.

mod common;

use chain::MergeOptions;
use common::*;
use proptest::prelude::*;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Builds base <- l1 <- ... <- l{depth} with random content; returns the
/// paths, base first.
fn build_chain(dir: &Path, seed: u64, depth: usize, blocks: &[u32], lss: u32) -> Vec<PathBuf> {
    let mut rng = Rng(seed | 1);
    let size = 6 * MIB;
    let base = dir.join("base.vhdx");
    new_base(&base, size, blocks[0], lss);
    scribble(&base, &mut rng, 5);
    let mut paths = vec![base];
    for i in 1..=depth {
        let p = dir.join(format!("l{i}.avhdx"));
        // Some layers are larger than their parent, some smaller.
        let grow = match rng.below(6) {
            0 => Some(size + (i as u64) * MIB),
            1 => Some(size - (i as u64) * MIB / 2),
            _ => None,
        };
        new_child(&p, paths.last().unwrap(), grow, blocks[i % blocks.len()]);
        let ops = 4 + rng.below(8) as usize;
        scribble(&p, &mut rng, ops);
        paths.push(p);
    }
    paths
}

fn merge_and_verify(paths: &[PathBuf], child: usize, into: usize) {
    merge_and_verify_dir(paths, child, into, chain::DirectionChoice::Down, false);
}

/// Merges `paths[child]` into `paths[into]` (paths[0] is the base) the way
/// `dir` asks and checks every file that remains: the result reads what
/// the child read, everything else as before, and `check` is clean.
/// `direct`: copy with O_DIRECT reads and writes (`MergeOptions::direct`).
fn merge_and_verify_dir(
    paths: &[PathBuf],
    child: usize,
    into: usize,
    dir: chain::DirectionChoice,
    direct: bool,
) {
    let before: Vec<Vec<u8>> = paths.iter().map(|p| read_all(p)).collect();
    let into_arg = (into + 1 != child).then(|| paths[into].clone());
    let mut opts = down(into_arg.as_deref());
    opts.direction = dir;
    let up_allowed = into + 1 == child && child >= 2;
    let plan = match chain::plan(&paths[child], &opts) {
        Err(e) if dir == chain::DirectionChoice::Up && !up_allowed => {
            assert!(e.to_string().contains("cannot merge up"), "{e}");
            return;
        }
        r => r.unwrap(),
    };
    let up = plan.direction == chain::Direction::Up;
    match dir {
        chain::DirectionChoice::Down => assert!(!up),
        chain::DirectionChoice::Up => assert!(up),
        chain::DirectionChoice::Auto => assert!(!up || up_allowed),
    }
    assert_eq!(plan.layers.len(), child - into + 1);
    let merge_opts = MergeOptions {
        direct,
        ..MergeOptions::default()
    };
    let stats = chain::merge(&chain::OsFiles, &plan, &merge_opts, &mut |_, _| {}).unwrap();
    assert_eq!(stats.layers_merged, child - into);
    for (i, p) in paths.iter().enumerate() {
        // Up, the parent (paths[into], as into + 1 == child) goes; down, the
        // merged layers do.
        let gone = if up {
            i == into
        } else {
            i > into && i <= child
        };
        if gone {
            assert!(!p.exists(), "{} should be gone", p.display());
            continue;
        }
        // Down, the target now reads what the merged child read; the
        // others (and, up, every file) read as before.
        let want = if i == into && !up {
            &before[child]
        } else {
            &before[i]
        };
        let got = read_all(p);
        assert_eq!(first_diff(&got, want), None, "{}", p.display());
        let r = vhdx::check::check_path(p, false).unwrap();
        assert!(!r.is_corrupt(), "{}: {:?}", p.display(), r.problems);
        if up && i == child {
            let l = vhdx::VhdxFile::open_path(p, vhdx::OpenOptions::read_only()).unwrap();
            let loc = l.parent_locator().unwrap();
            assert!(loc.get("parent_linkage2").is_none() && loc.get(chain::ABSORBED_KEY).is_none());
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn random_chains_merge_to_what_they_read(
        seed in any::<u64>(),
        depth in 1usize..=4,
        blocks in prop::collection::vec(prop::sample::select(vec![1u32 << 20, 2 << 20, 4 << 20]), 1..4),
        lss in prop::sample::select(vec![512u32, 4096]),
        pick in any::<u64>(),
    ) {
        let dir = scratch();
        let paths = build_chain(dir.path(), seed, depth, &blocks, lss);
        let child = 1 + (pick % depth as u64) as usize;
        let into = ((pick >> 8) % child as u64) as usize;
        let dir = [chain::DirectionChoice::Down, chain::DirectionChoice::Up, chain::DirectionChoice::Auto]
            [((pick >> 16) % 3) as usize];
        merge_and_verify_dir(&paths, child, into, dir, (pick >> 24) & 1 == 1);
    }
}

#[test]
fn the_whole_chain_into_the_base_passes_qemu_img() {
    if Command::new("qemu-img").arg("--version").output().is_err() {
        println!("SKIP: qemu-img is not installed");
        return;
    }
    let dir = scratch();
    let paths = build_chain(dir.path(), 77, 3, &[1 << 20, 2 << 20], 512);
    let leaf = paths.last().unwrap().clone();
    let expect = read_all(&leaf);
    let raw = dir.path().join("expect.raw");
    std::fs::write(&raw, &expect).unwrap();
    merge_and_verify(&paths, 3, 0);
    let base = &paths[0];
    let out = Command::new("qemu-img")
        .args(["check", "-f", "vhdx"])
        .arg(base)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "qemu-img check: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = Command::new("qemu-img")
        .args(["compare", "-f", "vhdx", "-F", "raw"])
        .arg(base)
        .arg(&raw)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "qemu-img compare: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_target_with_another_child_is_refused_and_left_alone() {
    let dir = scratch();
    let d = dir.path();
    new_base(&d.join("base.vhdx"), 4 * MIB, 1 << 20, 512);
    new_child(&d.join("a.avhdx"), &d.join("base.vhdx"), None, 1 << 20);
    new_child(&d.join("b.avhdx"), &d.join("base.vhdx"), None, 1 << 20);
    let mut rng = Rng(5);
    scribble(&d.join("a.avhdx"), &mut rng, 4);
    let before = std::fs::read(d.join("base.vhdx")).unwrap();
    let e = chain::plan(&d.join("a.avhdx"), &down(None)).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("b.avhdx") && msg.contains("also the parent"),
        "{msg}"
    );
    assert_eq!(std::fs::read(d.join("base.vhdx")).unwrap(), before);
    // A base has nothing to merge into.
    let e = chain::plan(&d.join("base.vhdx"), &down(None)).unwrap_err();
    assert!(e.to_string().contains("not a differencing disk"), "{e}");
    // --into must name an ancestor.
    let e = chain::plan(&d.join("a.avhdx"), &down(Some(&d.join("b.avhdx")))).unwrap_err();
    assert!(e.to_string().contains("not one of its ancestors"), "{e}");
}

/// A downward merge cut off right after its first step (the child accepts
/// the parent's next DataWriteGuid in `parent_linkage2`; the parent does
/// not have it yet) completes when run again in any direction, the
/// default `auto` too (which once took that state for a cut-off upward
/// merge and only dropped the marker).
#[test]
fn a_down_merge_cut_off_after_its_first_step_completes_when_run_again() {
    for dir in [
        chain::DirectionChoice::Auto,
        chain::DirectionChoice::Down,
        chain::DirectionChoice::Up,
    ] {
        let scratch_dir = scratch();
        let d = scratch_dir.path();
        let (base, mid, leaf) = (
            d.join("base.vhdx"),
            d.join("mid.avhdx"),
            d.join("leaf.avhdx"),
        );
        new_base(&base, 4 * MIB, 1 << 20, 512);
        let mut rng = Rng(5);
        scribble(&base, &mut rng, 4);
        new_child(&mid, &base, None, 1 << 20);
        scribble(&mid, &mut rng, 4);
        new_child(&leaf, &mid, None, 1 << 20);
        scribble(&leaf, &mut rng, 6);
        let want = read_all(&leaf);
        // Step 1 of `merge leaf` down into mid.
        let mut f = vhdx::VhdxFile::open_path(&leaf, vhdx::OpenOptions::writable()).unwrap();
        let mut loc = f.parent_locator().unwrap().clone();
        loc.entries.push((
            "parent_linkage2".to_string(),
            format!("{{{}}}", uuid::Uuid::new_v4()),
        ));
        f.set_parent_locator(&loc).unwrap();
        f.close().unwrap();
        drop(f);
        assert_eq!(read_all(&leaf), want);
        let opts = chain::PlanOptions {
            direction: dir,
            ..chain::PlanOptions::default()
        };
        let plan = chain::plan(&leaf, &opts).unwrap();
        assert_eq!(plan.layers.len(), 2, "{dir:?}");
        assert!(
            plan.up.is_some() || plan.direction == chain::Direction::Down,
            "{dir:?}"
        );
        let stats = chain::merge(
            &chain::OsFiles,
            &plan,
            &MergeOptions::default(),
            &mut |_, _| {},
        )
        .unwrap();
        assert_eq!(stats.layers_merged, 1, "{dir:?}: the merge ran");
        let result = if plan.direction == chain::Direction::Up {
            &leaf
        } else {
            &mid
        };
        assert_eq!(read_all(result), want, "{dir:?}");
        assert_eq!(
            mid.exists(),
            plan.direction == chain::Direction::Down,
            "{dir:?}"
        );
        assert_eq!(
            leaf.exists(),
            plan.direction == chain::Direction::Up,
            "{dir:?}"
        );
    }
}

#[test]
fn keep_leaves_a_readable_child_that_blocks_later_merges() {
    let dir = scratch();
    let d = dir.path();
    new_base(&d.join("base.vhdx"), 4 * MIB, 1 << 20, 512);
    new_child(&d.join("a.avhdx"), &d.join("base.vhdx"), None, 1 << 20);
    let mut rng = Rng(9);
    scribble(&d.join("a.avhdx"), &mut rng, 6);
    let want = read_all(&d.join("a.avhdx"));
    let plan = chain::plan(&d.join("a.avhdx"), &down(None)).unwrap();
    let opts = MergeOptions {
        keep: true,
        ..MergeOptions::default()
    };
    chain::merge(&chain::OsFiles, &plan, &opts, &mut |_, _| {}).unwrap();
    assert_eq!(read_all(&d.join("a.avhdx")), want);
    assert_eq!(read_all(&d.join("base.vhdx")), want);
    // The kept file is now a real child of the base.
    new_child(&d.join("b.avhdx"), &d.join("base.vhdx"), None, 1 << 20);
    let e = chain::plan(&d.join("b.avhdx"), &down(None)).unwrap_err();
    assert!(e.to_string().contains("a.avhdx"), "{e}");
}

#[test]
fn auto_merges_up_when_the_child_holds_more_data() {
    let dir = scratch();
    let d = dir.path();
    let (base, mid, leaf) = (
        d.join("base.vhdx"),
        d.join("mid.avhdx"),
        d.join("leaf.avhdx"),
    );
    new_base(&base, 8 * MIB, 1 << 20, 512);
    let mut rng = Rng(12);
    scribble(&base, &mut rng, 4);
    new_child(&mid, &base, None, 1 << 20);
    let mut disk = vhdx::Disk::open_writable(&mid, &Default::default()).unwrap();
    disk.write_at(&rng.bytes(MIB as usize), 0).unwrap();
    disk.close().unwrap();
    new_child(&leaf, &mid, None, 1 << 20);
    let mut disk = vhdx::Disk::open_writable(&leaf, &Default::default()).unwrap();
    disk.write_at(&rng.bytes(6 * MIB as usize), MIB / 2)
        .unwrap();
    disk.close().unwrap();
    let auto = chain::PlanOptions::default();
    let plan = chain::plan(&leaf, &auto).unwrap();
    assert_eq!(plan.direction, chain::Direction::Up);
    // Naming the target, even the immediate parent, keeps the data there:
    // auto goes down, and up is refused.
    let named = down(Some(&mid));
    let named_auto = chain::PlanOptions {
        direction: chain::DirectionChoice::Auto,
        ..named.clone()
    };
    let p = chain::plan(&leaf, &named_auto).unwrap();
    assert_eq!(p.direction, chain::Direction::Down);
    assert_eq!(p.layers, vec![leaf.clone(), mid.clone()]);
    let named_up = chain::PlanOptions {
        direction: chain::DirectionChoice::Up,
        ..named
    };
    let e = chain::plan(&leaf, &named_up).unwrap_err();
    assert!(e.to_string().contains("no --into"), "{e}");
    // Only the parent's half block that the leaf lacks moves.
    assert_eq!(plan.layer_bytes, vec![MIB / 2]);
    merge_and_verify_dir(
        &[base.clone(), mid.clone(), leaf.clone()],
        2,
        1,
        chain::DirectionChoice::Auto,
        true,
    );
    assert!(!mid.exists() && leaf.exists());

    // The other way round: a small leaf over a full parent goes down.
    let (mid2, leaf2) = (d.join("mid2.avhdx"), d.join("leaf2.avhdx"));
    new_child(&mid2, &leaf, None, 1 << 20);
    let mut disk = vhdx::Disk::open_writable(&mid2, &Default::default()).unwrap();
    disk.write_at(&rng.bytes(6 * MIB as usize), 0).unwrap();
    disk.close().unwrap();
    new_child(&leaf2, &mid2, None, 1 << 20);
    let mut disk = vhdx::Disk::open_writable(&leaf2, &Default::default()).unwrap();
    disk.write_at(&rng.bytes(4096), 0).unwrap();
    disk.close().unwrap();
    let plan = chain::plan(&leaf2, &auto).unwrap();
    assert_eq!(plan.direction, chain::Direction::Down);
    // Up is refused when the parent has another user.
    let other = d.join("other.avhdx");
    new_child(&other, &mid2, None, 1 << 20);
    let up = chain::PlanOptions {
        direction: chain::DirectionChoice::Up,
        ..Default::default()
    };
    let e = chain::plan(&leaf2, &up).unwrap_err();
    assert!(
        e.to_string().contains("also used by") && e.to_string().contains("other.avhdx"),
        "{e}"
    );
    // And when the parent is the base.
    let e = chain::plan(&mid, &up);
    assert!(e.is_err());
}
