//! The orchestration of checkpoints of a running VM, with a test VM
//! (`checkpoint::testing::TestVm`): the four types with the guest
//! acknowledging, refusing, staying silent and failing the quiesce; a
//! failure at every step leaves the folder exactly as before (and the VM
//! running on its old disks); standard checkpoints carry the VM's memory,
//! production ones the writes the guest flushed, and applying one with
//! memory leaves the VM saved.

mod common;

use checkpoint::testing::{Answer, TestVm};
use checkpoint::*;
use common::*;
use std::path::{Path, PathBuf};

const SIZE: u64 = 8 << 20;

fn vm(dir: &Path, t: CheckpointType) -> TestVm {
    let f = make_vm(dir, "live", 2, SIZE);
    write_disk(&f.disks[0].path, 0, &vec![7u8; 1 << 20]);
    set_checkpoint_type(&OsFs, dir, t).unwrap();
    TestVm::new(f.disks.iter().map(|d| d.path.clone()).collect())
}

fn opts(name: &str) -> CreateOptions {
    CreateOptions {
        name: Some(name.into()),
        quiesce_timeout: std::time::Duration::from_millis(50),
    }
}

fn files(dir: &Path) -> Vec<PathBuf> {
    files_under(dir)
}

#[test]
fn the_four_types_with_every_guest_answer() {
    use CheckpointType::*;
    for t in [Disabled, Production, ProductionOnly, Standard] {
        for answer in [
            Answer::Acknowledge,
            Answer::Refuse,
            Answer::Silent,
            Answer::Fail,
        ] {
            let tmp = tempfile::tempdir().unwrap();
            let dir = tmp.path().join("vm");
            let mut v = vm(&dir, t);
            v.answer = answer;
            // The guest holds a write in its cache: only a quiesce flushes it.
            v.cache.push((1, 4096, vec![9u8; 4096]));
            let before = state_of(&dir);
            let before_files = files(&dir);
            let r = create(&OsFs, &dir, &opts("c"), Some(&mut v));
            let what = format!("{t:?} / {answer:?}: {r:?}, calls {:?}", v.calls);
            assert!(!v.paused && !v.frozen, "{what}: left paused or frozen");
            let f = VmFolder::open(&dir).unwrap();
            match (t, answer) {
                (Disabled, _) => {
                    assert!(matches!(r, Err(Error::Disabled { .. })), "{what}");
                    assert!(v.calls.is_empty(), "{what}");
                }
                (ProductionOnly, a) if a != Answer::Acknowledge => {
                    assert!(matches!(r, Err(Error::ProductionFailed { .. })), "{what}");
                    assert_eq!(state_of(&dir), before, "{what}");
                    assert_eq!(files(&dir), before_files, "{what}");
                    assert!(f.pending.is_none());
                    assert!(!v.calls.contains(&"switch_disks".to_string()), "{what}");
                }
                (Production | ProductionOnly, Answer::Acknowledge) => {
                    let c = r.as_ref().unwrap();
                    assert_eq!(c.kind, Kind::Production, "{what}");
                    assert!(!c.has_memory && c.fell_back.is_none());
                    assert_eq!(
                        v.calls,
                        ["quiesce", "flush_disks", "switch_disks", "thaw"],
                        "{what}"
                    );
                    let cp = f.checkpoint(&c.id).unwrap();
                    assert!(!cp.has_memory);
                    // The flushed write is in the checkpoint's disk.
                    assert_eq!(read_all(&cp.disks[1].path)[4096..8192], [9u8; 4096][..]);
                }
                (Production, _) => {
                    let c = r.as_ref().unwrap();
                    assert_eq!(c.kind, Kind::Standard, "{what}");
                    assert!(c.has_memory && c.fell_back.is_some(), "{what}");
                    assert_eq!(v.calls[0], "quiesce");
                    assert_eq!(
                        &v.calls[1..],
                        [
                            "thaw",
                            "pause",
                            "flush_disks",
                            "switch_disks",
                            "save_state",
                            "resume"
                        ],
                        "{what}"
                    );
                }
                (Standard, _) => {
                    let c = r.as_ref().unwrap();
                    assert_eq!(c.kind, Kind::Standard, "{what}");
                    assert!(c.has_memory);
                    assert_eq!(
                        v.calls,
                        [
                            "pause",
                            "flush_disks",
                            "switch_disks",
                            "save_state",
                            "resume"
                        ],
                        "{what}"
                    );
                    // The saved memory is the VM's.
                    let cp = f.checkpoint(&c.id).unwrap();
                    let s = vmrs::SavedState::open(&cp.runtime_path).unwrap();
                    let mut m = vec![0u8; v.memory.len()];
                    s.read_gpa(0, &mut m).unwrap();
                    assert_eq!(m, v.memory);
                }
                _ => unreachable!(),
            }
            if let Ok(c) = &r {
                assert_eq!(f.current.as_deref(), Some(c.id.as_str()));
                let leaves: Vec<PathBuf> = f.disks.iter().map(|d| d.path.clone()).collect();
                assert_eq!(v.disks, leaves, "{what}: the VM runs on the new leaves");
                assert_no_garbage(&f);
            }
        }
    }
}

#[test]
fn a_failure_at_every_step_leaves_the_folder_as_before() {
    use CheckpointType::*;
    let steps = [
        "quiesce",
        "thaw",
        "pause",
        "resume",
        "flush_disks",
        "save_state",
        "switch_disks",
    ];
    let mut runs = 0;
    for t in [Production, ProductionOnly, Standard] {
        for answer in [Answer::Acknowledge, Answer::Refuse] {
            for step in steps {
                let tmp = tempfile::tempdir().unwrap();
                let dir = tmp.path().join("vm");
                let mut v = vm(&dir, t);
                v.answer = answer;
                let old = v.disks.clone();
                let before = state_of(&dir);
                let before_files = files(&dir);
                v.fail = Some(step);
                let r = create(&OsFs, &dir, &opts("c"), Some(&mut v));
                let reached = v.fail.is_none();
                let what = format!(
                    "{t:?}/{answer:?} failing {step}: {r:?}, calls {:?}",
                    v.calls
                );
                if !reached {
                    continue; // this path never takes that step
                }
                runs += 1;
                let f = VmFolder::open(&dir).unwrap();
                assert!(f.pending.is_none(), "{what}");
                assert!(!v.paused, "{what}: left paused");
                match &r {
                    // Production falls back when the quiesce request fails
                    // (and a thaw after a failed quiesce is only a courtesy).
                    Ok(c) => {
                        assert!(
                            t == Production && matches!(step, "quiesce" | "thaw"),
                            "{what}"
                        );
                        assert_eq!(c.kind, Kind::Standard);
                        assert!(c.fell_back.is_some(), "{what}");
                        assert_no_garbage(&f);
                    }
                    // A guest that does not thaw after a complete production
                    // checkpoint: reported, the checkpoint stays.
                    Err(Error::Live { step: "thaw", why })
                        if answer == Answer::Acknowledge && t != Standard =>
                    {
                        assert!(why.contains("was taken"), "{what}");
                        assert_eq!(f.checkpoints.len(), 1, "{what}");
                        assert_no_garbage(&f);
                    }
                    Err(_) => {
                        assert_eq!(state_of(&dir), before, "{what}");
                        assert_eq!(files(&dir), before_files, "{what}");
                        assert_eq!(v.disks, old, "{what}: the VM is back on its disks");
                    }
                }
            }
        }
    }
    assert!(runs >= 12, "{runs}");
}

#[test]
fn standard_checkpoints_apply_to_a_saved_vm_and_export_saved() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("vm");
    let mut v = vm(&dir, CheckpointType::Standard);
    let c = create(&OsFs, &dir, &opts("running"), Some(&mut v)).unwrap();
    assert!(c.has_memory);
    // The VM is off now (the harness stopped it); apply the checkpoint.
    let a = apply(&OsFs, &dir, "running", &ApplyOptions::default()).unwrap();
    assert_eq!(a.state, VmState::Saved);
    let f = VmFolder::open(&dir).unwrap();
    assert_eq!(f.vm.state, VmState::Saved);
    let s = vmrs::SavedState::open(&f.runtime_path).unwrap();
    let mut m = vec![0u8; v.memory.len()];
    s.read_gpa(0, &mut m).unwrap();
    assert_eq!(m, v.memory);
    // A checkpoint of the saved VM keeps the saved state (any type but
    // ProductionOnly, which refuses).
    set_checkpoint_type(&OsFs, &dir, CheckpointType::ProductionOnly).unwrap();
    assert!(matches!(
        create(&OsFs, &dir, &opts("refused"), None),
        Err(Error::ProductionFailed { .. })
    ));
    set_checkpoint_type(&OsFs, &dir, CheckpointType::Production).unwrap();
    let c2 = create(&OsFs, &dir, &opts("saved"), None).unwrap();
    assert!(c2.has_memory);
    assert_eq!(c2.kind, Kind::Standard);
    // Export of a checkpoint with memory: a saved VM.
    let ex = export(
        &OsFs,
        &dir,
        "saved",
        &tmp.path().join("ex"),
        &ExportOptions::default(),
        &mut |_, _| {},
    )
    .unwrap();
    let g = VmFolder::open(&ex.folder).unwrap();
    assert_eq!(g.vm.state, VmState::Saved);
    // Applying a checkpoint without memory turns the VM off.
    let f = VmFolder::open(&dir).unwrap();
    write_disk(&f.disks[0].path, 0, b"x");
    set_checkpoint_type(&OsFs, &dir, CheckpointType::Standard).unwrap();
    let off = tempfile::tempdir().unwrap();
    let d2 = off.path().join("vm");
    make_vm(&d2, "off", 1, SIZE);
    create(&OsFs, &d2, &opts("off"), None).unwrap();
    apply(&OsFs, &d2, "off", &ApplyOptions::default()).unwrap();
    assert_eq!(VmFolder::open(&d2).unwrap().vm.state, VmState::Off);
    assert_no_garbage(&VmFolder::open(&dir).unwrap());
}

#[test]
fn a_cut_off_running_checkpoint_is_rolled_back() {
    use checkpoint::testing::FailingFs;
    // The process dies while saving a running VM's checkpoint: the memory
    // is gone with it, so the next command rolls it back.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("vm");
    let mut v = vm(&dir, CheckpointType::Standard);
    let before = state_of(&dir);
    let before_files = files(&dir);
    let counting = FailingFs::counting();
    {
        let probe = tmp.path().join("probe");
        copy_dir(&dir, &probe);
        let mut pv = TestVm::new(
            VmFolder::open(&probe)
                .unwrap()
                .disks
                .iter()
                .map(|d| d.path.clone())
                .collect(),
        );
        create(&counting, &probe, &opts("c"), Some(&mut pv)).unwrap();
    }
    let mut points = 0;
    for at in 1..counting.ops() {
        let d = tmp.path().join(format!("r{at}"));
        copy_dir(&dir, &d);
        let fs = FailingFs::failing_at(at, false);
        let mut pv = TestVm::new(
            VmFolder::open(&d)
                .unwrap()
                .disks
                .iter()
                .map(|x| x.path.clone())
                .collect(),
        );
        let _ = create(&fs, &d, &opts("c"), Some(&mut pv));
        let now = state_of(&d);
        if now == before {
            // Any command finishes the cut-off one first: here a rename of
            // nothing fails after rolling it back.
            let _ = rename(&OsFs, &d, "nothing", "x");
            assert_eq!(state_of(&d), before, "crash at {at}");
            let f = VmFolder::open(&d).unwrap();
            assert!(f.pending.is_none(), "crash at {at}");
            assert_no_garbage(&f);
            assert_eq!(files(&d).len(), before_files.len(), "crash at {at}");
        } else {
            assert_eq!(now.checkpoints.len(), 1, "crash at {at}");
        }
        points += 1;
    }
    assert!(points > 10);
    let _ = v.calls.len();
    let _ = create(&OsFs, &dir, &opts("c"), Some(&mut v)).unwrap();
}
