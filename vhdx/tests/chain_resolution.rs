//! Finding and checking the parents of a differencing disk (MS-VHDX
//! 2.6.2.6): the locator's relative_path (also `..\x\parent.vhdx`),
//! absolute_win32_path and volume_path (mapped by file name onto the
//! child's folder), explicit parents, identity checks (parent_linkage
//! against the parent's DataWriteGuid, `force`), missing parents, cycles,
//! the depth limit and sector-size compatibility. Files are made with
//! `vhdx::create`; they are small and sparse.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use uuid::Uuid;
use vhdx::create::{create, BlockContent, CreateParams, ParentLink};
use vhdx::{ChainOptions, Disk, Error, MAX_CHAIN_DEPTH};

const MIB: u64 = 1 << 20;

/// The bytes file `tag` stores in its block 0.
fn data(tag: u8) -> Vec<u8> {
    (0..MIB as usize)
        .map(|i| (i as u8).wrapping_mul(31) ^ tag)
        .collect()
}

fn write(path: &Path, p: &CreateParams, blocks: &BTreeMap<u64, BlockContent>) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let f = std::fs::File::create_new(path).unwrap();
    create(&f, &path.display().to_string(), p, blocks)
        .unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
}

/// A base disk (1 MiB blocks) whose block 0 holds `data(tag)`; returns its DataWriteGuid.
fn base(path: &Path, size: u64, lss: u32, tag: u8) -> Uuid {
    let mut p = CreateParams::dynamic(size);
    p.block_size = MIB as u32;
    p.logical_sector_size = lss;
    write(
        path,
        &p,
        &BTreeMap::from([(0, BlockContent::Full(data(tag)))]),
    );
    p.data_write_guid
}

/// A differencing disk (1 MiB blocks, every block NOT_PRESENT) with the
/// given locator; returns its DataWriteGuid.
fn child(path: &Path, size: u64, lss: u32, link: ParentLink) -> Uuid {
    child_with_guid(path, size, lss, link, Uuid::new_v4())
}

fn child_with_guid(path: &Path, size: u64, lss: u32, link: ParentLink, guid: Uuid) -> Uuid {
    let mut p = CreateParams::differencing(size, link);
    p.block_size = MIB as u32;
    p.logical_sector_size = lss;
    p.data_write_guid = guid;
    write(path, &p, &BTreeMap::new());
    guid
}

fn link(guid: Uuid, paths: &[(&str, &str)]) -> ParentLink {
    ParentLink {
        data_write_guid: guid,
        paths: paths
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

fn open(path: &Path) -> vhdx::Result<Disk> {
    Disk::open(path, &ChainOptions::default())
}

fn same_file(a: &Path, b: &Path) -> bool {
    a.canonicalize().unwrap() == b.canonicalize().unwrap()
}

/// The chain's files, leaf first.
fn paths(d: &Disk) -> Vec<PathBuf> {
    d.layers().iter().map(|l| l.path.clone()).collect()
}

/// Block 0 of the disk reads `data(tag)`.
fn assert_reads(d: &Disk, tag: u8) {
    let mut got = vec![0u8; MIB as usize];
    d.read_at(&mut got, 0).unwrap();
    assert!(got == data(tag), "block 0 is not data({tag})");
}

#[test]
fn parent_found_by_relative_path_in_the_same_folder() {
    let dir = tempfile::tempdir().unwrap();
    let parent = dir.path().join("parent.vhdx");
    let g = base(&parent, 4 * MIB, 512, 1);
    for (name, rel) in [("a.avhdx", "parent.vhdx"), ("b.avhdx", ".\\parent.vhdx")] {
        let c = dir.path().join(name);
        child(&c, 4 * MIB, 512, ParentLink::relative(g, rel));
        let d = open(&c).unwrap();
        assert_eq!(d.layers().len(), 2);
        assert!(same_file(&d.layers()[1].path, &parent), "{rel}");
        assert_reads(&d, 1);
    }
}

#[test]
fn parent_found_by_relative_path_through_a_sibling_folder() {
    let dir = tempfile::tempdir().unwrap();
    let parent = dir.path().join("sub").join("parent.vhdx");
    let g = base(&parent, 4 * MIB, 512, 2);
    let c = dir.path().join("snapshots").join("child.avhdx");
    child(
        &c,
        4 * MIB,
        512,
        ParentLink::relative(g, "..\\sub\\parent.vhdx"),
    );
    let d = open(&c).unwrap();
    assert!(same_file(&d.layers()[1].path, &parent));
    assert_reads(&d, 2);
}

/// absolute_win32_path names a Windows path; the file name is looked for in
/// the child's folder (here after a relative_path that does not exist).
#[test]
fn parent_found_by_absolute_win32_path_file_name() {
    let dir = tempfile::tempdir().unwrap();
    let parent = dir.path().join("Base Disk.vhdx");
    let g = base(&parent, 4 * MIB, 512, 3);
    let c = dir.path().join("child.avhdx");
    child(
        &c,
        4 * MIB,
        512,
        link(
            g,
            &[
                ("relative_path", "..\\moved\\Base Disk.vhdx"),
                ("absolute_win32_path", "C:\\Hyper-V\\Disks\\Base Disk.vhdx"),
            ],
        ),
    );
    let d = open(&c).unwrap();
    assert!(same_file(&d.layers()[1].path, &parent));
    assert_reads(&d, 3);
}

/// volume_path (`\\?\Volume{GUID}\...`) alone, mapped by file name.
#[test]
fn parent_found_by_volume_path_file_name() {
    let dir = tempfile::tempdir().unwrap();
    let parent = dir.path().join("vol-parent.vhdx");
    let g = base(&parent, 4 * MIB, 512, 4);
    let c = dir.path().join("child.avhdx");
    child(
        &c,
        4 * MIB,
        512,
        link(
            g,
            &[(
                "volume_path",
                "\\\\?\\Volume{1b2d1ee6-1a2b-4c5d-8e9f-100000000000}\\VMs\\vol-parent.vhdx",
            )],
        ),
    );
    let d = open(&c).unwrap();
    assert!(same_file(&d.layers()[1].path, &parent));
    assert_reads(&d, 4);
}

/// A candidate whose identity does not match is passed over for a later
/// one that matches.
#[test]
fn a_mismatching_candidate_is_skipped_for_a_matching_one() {
    let dir = tempfile::tempdir().unwrap();
    base(&dir.path().join("stale.vhdx"), 4 * MIB, 512, 5);
    let right = dir.path().join("right.vhdx");
    let g = base(&right, 4 * MIB, 512, 6);
    let c = dir.path().join("child.avhdx");
    child(
        &c,
        4 * MIB,
        512,
        link(
            g,
            &[
                ("relative_path", "stale.vhdx"),
                ("absolute_win32_path", "D:\\x\\right.vhdx"),
            ],
        ),
    );
    let d = open(&c).unwrap();
    assert!(same_file(&d.layers()[1].path, &right));
    assert_reads(&d, 6);
}

/// `ChainOptions::parents` overrides the locator, nearest first; past the
/// list the locator is used.
#[test]
fn explicit_parents() {
    let dir = tempfile::tempdir().unwrap();
    let elsewhere = dir.path().join("elsewhere");
    let gp = elsewhere.join("grandparent.vhdx");
    let gg = base(&gp, 4 * MIB, 512, 7);
    let p = elsewhere.join("parent.avhdx");
    let pg = child(
        &p,
        4 * MIB,
        512,
        ParentLink::relative(gg, "grandparent.vhdx"),
    );
    let c = dir.path().join("child.avhdx");
    child(
        &c,
        4 * MIB,
        512,
        ParentLink::relative(pg, "nowhere\\parent.avhdx"),
    );

    assert!(matches!(open(&c), Err(Error::ParentNotFound { .. })));
    // Only the parent given: the grandparent comes from the parent's locator.
    let d = Disk::open(
        &c,
        &ChainOptions {
            parents: vec![p.clone()],
            ..ChainOptions::default()
        },
    )
    .unwrap();
    assert_eq!(d.layers().len(), 3);
    assert!(same_file(&paths(&d)[1], &p));
    assert!(same_file(&paths(&d)[2], &gp));
    assert_reads(&d, 7);
    // Both given, the grandparent as a copy in another place.
    let copy = dir.path().join("gp-copy.vhdx");
    std::fs::copy(&gp, &copy).unwrap();
    let d = Disk::open(
        &c,
        &ChainOptions {
            parents: vec![p.clone(), copy.clone()],
            ..ChainOptions::default()
        },
    )
    .unwrap();
    assert!(same_file(&paths(&d)[2], &copy));
    assert_reads(&d, 7);
}

/// A parent whose DataWriteGuid is not the child's parent_linkage (it was
/// modified after the child was made, or is the wrong file).
#[test]
fn parent_with_another_data_write_guid() {
    let dir = tempfile::tempdir().unwrap();
    let parent = dir.path().join("parent.vhdx");
    let actual = base(&parent, 4 * MIB, 512, 8);
    let expected = Uuid::new_v4();
    let c = dir.path().join("child.avhdx");
    child(
        &c,
        4 * MIB,
        512,
        ParentLink::relative(expected, "parent.vhdx"),
    );

    let check = |r: vhdx::Result<Disk>| {
        let e = r.unwrap_err();
        let msg = e.to_string();
        match &e {
            Error::ParentMismatch {
                expected: x,
                actual: a,
                ..
            } => {
                assert!(x.contains(&expected.to_string()), "{msg}");
                assert_eq!(*a, actual);
            }
            other => panic!("expected ParentMismatch, got {other:?}"),
        }
        assert!(msg.contains(&expected.to_string()), "{msg}");
        assert!(msg.contains(&actual.to_string()), "{msg}");
    };
    // Found through the locator, and given explicitly.
    check(open(&c));
    let explicit = ChainOptions {
        parents: vec![parent.clone()],
        ..ChainOptions::default()
    };
    check(Disk::open(&c, &explicit));

    // force reads through it anyway.
    for opts in [
        ChainOptions {
            force: true,
            ..ChainOptions::default()
        },
        ChainOptions {
            force: true,
            ..explicit.clone()
        },
    ] {
        let d = Disk::open(&c, &opts).unwrap();
        assert!(same_file(&d.layers()[1].path, &parent));
        assert_reads(&d, 8);
    }
}

#[test]
fn missing_parent_lists_what_was_tried() {
    let dir = tempfile::tempdir().unwrap();
    let c = dir.path().join("child.avhdx");
    child(
        &c,
        4 * MIB,
        512,
        link(
            Uuid::new_v4(),
            &[
                ("relative_path", "..\\base\\gone.vhdx"),
                (
                    "volume_path",
                    "\\\\?\\Volume{00000000-1111-2222-3333-444444444444}\\v.vhdx",
                ),
                ("absolute_win32_path", "E:\\VMs\\a.vhdx"),
            ],
        ),
    );
    let e = open(&c).unwrap_err();
    let msg = e.to_string();
    let Error::ParentNotFound { tried, .. } = &e else {
        panic!("expected ParentNotFound, got {e:?}");
    };
    let d = dir.path().display().to_string();
    for want in [
        format!("relative_path -> {d}/../base/gone.vhdx"),
        format!("volume_path -> {d}/v.vhdx"),
        format!("absolute_win32_path -> {d}/a.vhdx"),
    ] {
        assert!(tried.contains(&want), "{want} not in {tried}");
        assert!(msg.contains(&want), "{msg}");
    }

    // A locator with no path at all.
    let c2 = dir.path().join("bare.avhdx");
    child(&c2, 4 * MIB, 512, link(Uuid::new_v4(), &[]));
    match open(&c2) {
        Err(Error::ParentNotFound { tried, .. }) => {
            assert!(tried.contains("no path"), "{tried}")
        }
        other => panic!("expected ParentNotFound, got {other:?}"),
    }
}

/// A's parent is B and B's parent is A (GUIDs chosen up front so each
/// locator names the other's DataWriteGuid); also a file that is its own
/// parent.
#[test]
fn cycles_are_detected() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("A.avhdx"), dir.path().join("B.avhdx"));
    let (ga, gb) = (Uuid::new_v4(), Uuid::new_v4());
    child_with_guid(&a, 4 * MIB, 512, ParentLink::relative(gb, "B.avhdx"), ga);
    child_with_guid(&b, 4 * MIB, 512, ParentLink::relative(ga, "A.avhdx"), gb);
    for leaf in [&a, &b] {
        match open(leaf) {
            Err(Error::ChainCycle { path, again }) => {
                assert_eq!(Path::new(&path), leaf.as_path());
                assert!(same_file(Path::new(&again), leaf), "{again}");
            }
            other => panic!("expected ChainCycle, got {other:?}"),
        }
    }
    // Through explicit parents, too.
    let r = Disk::open(
        &a,
        &ChainOptions {
            parents: vec![b.clone(), a.clone()],
            ..ChainOptions::default()
        },
    );
    assert!(matches!(r, Err(Error::ChainCycle { .. })), "{r:?}");

    let s = dir.path().join("self.avhdx");
    let gs = Uuid::new_v4();
    child_with_guid(&s, 4 * MIB, 512, ParentLink::relative(gs, "self.avhdx"), gs);
    assert!(matches!(open(&s), Err(Error::ChainCycle { .. })));
}

/// MAX_CHAIN_DEPTH (256) files open, 257 do not.
#[test]
fn chain_depth_limit() {
    assert_eq!(MAX_CHAIN_DEPTH, 256);
    let dir = tempfile::tempdir().unwrap();
    let name = |i: usize| dir.path().join(format!("d{i:03}.avhdx"));
    let mut guid = base(&name(0), MIB, 512, 9);
    for i in 1..=MAX_CHAIN_DEPTH {
        let rel = format!("d{:03}.avhdx", i - 1);
        guid = child(&name(i), MIB, 512, ParentLink::relative(guid, &rel));
    }
    // name(255) has 255 ancestors: 256 files.
    let d = open(&name(MAX_CHAIN_DEPTH - 1)).unwrap();
    assert_eq!(d.layers().len(), MAX_CHAIN_DEPTH);
    assert!(same_file(&d.layers()[MAX_CHAIN_DEPTH - 1].path, &name(0)));
    assert_reads(&d, 9);
    // name(256): 257 files.
    match open(&name(MAX_CHAIN_DEPTH)) {
        Err(e @ Error::ChainTooDeep { max: 256, .. }) => {
            assert!(e.to_string().contains("256"), "{e}")
        }
        other => panic!("expected ChainTooDeep, got {other:?}"),
    }
}

/// A parent with another logical sector size cannot back the child.
#[test]
fn parent_with_another_logical_sector_size() {
    let dir = tempfile::tempdir().unwrap();
    for (plss, clss) in [(4096u32, 512u32), (512, 4096)] {
        let parent = dir.path().join(format!("parent{plss}.vhdx"));
        let g = base(&parent, 4 * MIB, plss, 10);
        let c = dir.path().join(format!("child{clss}.avhdx"));
        child(
            &c,
            4 * MIB,
            clss,
            ParentLink::relative(g, parent.file_name().unwrap().to_str().unwrap()),
        );
        let explicit = ChainOptions {
            parents: vec![parent.clone()],
            ..ChainOptions::default()
        };
        for r in [open(&c), Disk::open(&c, &explicit)] {
            match r {
                Err(e @ Error::ParentIncompatible { .. }) => {
                    let msg = e.to_string();
                    assert!(msg.contains("logical sector size"), "{msg}");
                    assert!(msg.contains(&plss.to_string()), "{msg}");
                }
                other => panic!("expected ParentIncompatible, got {other:?}"),
            }
        }
    }
}
