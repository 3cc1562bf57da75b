//! Crash injection over every operation: a failure at every write, flush,
//! size change, create, rename, unlink and folder sync of the folder's
//! files (that operation and every later one fail, as if the process had
//! died there), with the writes not yet flushed kept or lost. After each
//! crash the folder must read exactly as before or exactly as after the
//! operation (the tree, names, kinds, the current position, the type, and
//! every disk's bytes), and running the same operation again must
//! complete it, leaving exactly the files something references.

mod common;

use checkpoint::testing::FailingFs;
use checkpoint::*;
use common::*;
use std::path::{Path, PathBuf};

type Op = dyn Fn(&dyn FolderFs, &Path) -> Result<()>;

/// Runs `op` against copies of `template` failing at every operation;
/// returns the number of crash points.
fn sweep(label: &str, template: &Path, op: &Op) -> usize {
    let work = tempfile::tempdir().unwrap();
    let before = state_of(template);
    // One clean run for the state after and the number of operations.
    let clean = work.path().join("clean");
    copy_dir(template, &clean);
    let counting = FailingFs::counting();
    op(&counting, &clean).unwrap_or_else(|e| panic!("{label}: clean run: {e}"));
    let after = state_of(&clean);
    assert_ne!(before, after, "{label}: the operation changes nothing");
    assert_no_garbage(&VmFolder::open(&clean).unwrap());
    let n = counting.ops();
    let mut points = 0;
    for lose in [false, true] {
        for at in 1..=n {
            let dir = work
                .path()
                .join(format!("run{at}{}", if lose { "l" } else { "k" }));
            copy_dir(template, &dir);
            let fs = FailingFs::failing_at(at, lose);
            let r = op(&fs, &dir);
            assert!(fs.failed(), "{label}: point {at} was not reached");
            let _ = r;
            let what = || {
                format!(
                    "{label}: crash at {at}/{n} ({}, lose={lose})",
                    fs.log().last().unwrap()
                )
            };
            let now = state_of(&dir);
            assert!(
                now == before || now == after,
                "{}: the folder reads neither as before nor as after\nnow:    {now:?}\nbefore: {before:?}\nafter:  {after:?}",
                what()
            );
            // A crash after the last step leaves it done: nothing to re-run.
            let pending = VmFolder::open(&dir).unwrap().pending.is_some();
            if pending || now == before {
                op(&OsFs, &dir).unwrap_or_else(|e| panic!("{}: re-run: {e}", what()));
            }
            let done = state_of(&dir);
            assert_eq!(done, after, "{}: re-run", what());
            let f = VmFolder::open(&dir).unwrap();
            assert!(f.pending.is_none(), "{}: still pending", what());
            assert_no_garbage(&f);
            std::fs::remove_dir_all(&dir).unwrap();
            points += 1;
        }
    }
    println!("{label}: {points} crash points ({n} operations, kept and lost)");
    points
}

const SIZE: u64 = 8 << 20;

/// A VM with two disks and this history: data, C1, more data, C2, more
/// data (current derives from C2).
fn base_vm(dir: &Path) {
    let f = make_vm(dir, "crash", 2, SIZE);
    write_disk(&f.disks[0].path, 0, &vec![1u8; 3 << 20]);
    write_disk(&f.disks[1].path, 1 << 20, &vec![2u8; 100_000]);
    let opt = |n: &str| CreateOptions {
        name: Some(n.into()),
        ..Default::default()
    };
    create(&OsFs, dir, &opt("C1"), None).unwrap();
    let f = VmFolder::open(dir).unwrap();
    write_disk(&f.disks[0].path, 2 << 20, &vec![3u8; 2 << 20]);
    write_disk(&f.disks[1].path, 0, &vec![4u8; 5000]);
    create(&OsFs, dir, &opt("C2"), None).unwrap();
    let f = VmFolder::open(dir).unwrap();
    write_disk(&f.disks[0].path, 5 << 20, &vec![5u8; 1 << 20]);
}

fn template(build: impl FnOnce(&Path)) -> (tempfile::TempDir, PathBuf) {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("vm");
    build(&dir);
    (t, dir)
}

fn id_of(dir: &Path, name: &str) -> String {
    VmFolder::open(dir).unwrap().find(name).unwrap().id.clone()
}

#[test]
fn crash_during_create() {
    let (_t, dir) = template(base_vm);
    let n = sweep("create", &dir, &|fs, d| {
        create(
            fs,
            d,
            &CreateOptions {
                name: Some("C3".into()),
                ..Default::default()
            },
            None,
        )
        .map(|_| ())
    });
    assert!(n > 20);
}

#[test]
fn crash_during_apply() {
    let (_t, dir) = template(base_vm);
    sweep("apply", &dir, &|fs, d| {
        apply(fs, d, "C1", &ApplyOptions::default()).map(|_| ())
    });
    sweep("apply --save-current", &dir, &|fs, d| {
        apply(
            fs,
            d,
            "C1",
            &ApplyOptions {
                save_current: true,
                save_name: Some("saved".into()),
            },
        )
        .map(|_| ())
    });
}

#[test]
fn crash_during_delete_with_merge() {
    // C2's frozen disk has one child (the current leaf): merged.
    let (_t, dir) = template(base_vm);
    sweep("delete C2 (merge)", &dir, &|fs, d| {
        delete(fs, d, "C2", &mut |_, _| {}).map(|_| ())
    });
    // C1 is the root: its disks (the bases) take C2's data down.
    sweep("delete C1 (merge into the bases)", &dir, &|fs, d| {
        delete(fs, d, "C1", &mut |_, _| {}).map(|_| ())
    });
}

#[test]
fn crash_during_delete_of_a_branch_point_and_subtree() {
    let (_t, dir) = template(|dir| {
        base_vm(dir);
        // Branch: apply C1, write, checkpoint C3: C1's disks have two children.
        apply(&OsFs, dir, "C1", &ApplyOptions::default()).unwrap();
        let f = VmFolder::open(dir).unwrap();
        write_disk(&f.disks[0].path, 7 << 20, &vec![6u8; 4096]);
        create(
            &OsFs,
            dir,
            &CreateOptions {
                name: Some("C3".into()),
                ..Default::default()
            },
            None,
        )
        .unwrap();
    });
    sweep("delete C1 (kept as a shared layer)", &dir, &|fs, d| {
        delete(fs, d, "C1", &mut |_, _| {}).map(|_| ())
    });
    sweep("delete subtree C1", &dir, &|fs, d| {
        delete_subtree(fs, d, "C1", &mut |_, _| {}).map(|_| ())
    });
}

#[test]
fn crash_during_rename_type_and_export() {
    let (_t, dir) = template(base_vm);
    sweep("rename", &dir, &|fs, d| {
        rename(fs, d, "C1", "first").map(|_| ())
    });
    sweep("set type", &dir, &|fs, d| {
        set_checkpoint_type(fs, d, CheckpointType::Standard)
    });
    // Export leaves the source as it was; its output appears whole.
    let out_root = tempfile::tempdir().unwrap();
    let id = id_of(&dir, "C2");
    let mut points = 0;
    let counting = FailingFs::counting();
    let probe = out_root.path().join("probe");
    export(
        &counting,
        &dir,
        &id,
        &probe,
        &ExportOptions::default(),
        &mut |_, _| {},
    )
    .unwrap();
    let want = read_all(&VmFolder::open(&probe).unwrap().disks[0].path);
    let before = state_of(&dir);
    for at in 1..=counting.ops() {
        let out = out_root.path().join(format!("e{at}"));
        let fs = FailingFs::failing_at(at, at % 2 == 0);
        assert!(export(
            &fs,
            &dir,
            &id,
            &out,
            &ExportOptions::default(),
            &mut |_, _| {}
        )
        .is_err());
        // Whole (a crash after the rename into place) or not there.
        if !out.exists() {
            export(
                &OsFs,
                &dir,
                &id,
                &out,
                &ExportOptions::default(),
                &mut |_, _| {},
            )
            .unwrap();
        }
        let g = VmFolder::open(&out).unwrap();
        assert!(read_all(&g.disks[0].path) == want);
        assert_no_garbage(&g);
        let partial = out_root.path().join(format!(".e{at}.hvkit-partial"));
        assert!(!partial.exists());
        points += 1;
    }
    assert_eq!(state_of(&dir), before);
    println!("export: {points} crash points");
}

#[test]
fn crash_during_vm_new() {
    let t = tempfile::tempdir().unwrap();
    let mut spec = VmSpec::new("new");
    spec.disks.push(DiskSpec::New { size: SIZE });
    spec.disks.push(DiskSpec::New { size: SIZE });
    let counting = FailingFs::counting();
    checkpoint::create_vm_with(&counting, &t.path().join("probe"), &spec).unwrap();
    for at in 1..=counting.ops() {
        let dir = t.path().join(format!("v{at}"));
        let fs = FailingFs::failing_at(at, false);
        assert!(checkpoint::create_vm_with(&fs, &dir, &spec).is_err());
        // Whole or not at all.
        if dir.exists() {
            let f = VmFolder::open(&dir).unwrap();
            assert_eq!(f.disks.len(), 2);
        }
        std::fs::remove_dir_all(&dir).ok();
        let f = checkpoint::create_vm_with(&OsFs, &dir, &spec).unwrap();
        assert_no_garbage(&f);
        assert!(files_under(t.path())
            .iter()
            .all(|p| !p.to_string_lossy().contains("hvkit-partial")));
    }
    println!("vm new: {} crash points", counting.ops());
}
