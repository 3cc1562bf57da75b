//! Folders as found: the corpus configurations (Hyper-V's `.vmcx` and
//! 2012 R2 `.xml`) open through `VmFolder` and report their VM; a corpus
//! configuration placed in a VM folder with its disk opens strictly, takes
//! checkpoints, and keeps every key of its own (dissect.hypervisor reads
//! the result); a folder without our tree keys (as Hyper-V writes them)
//! gets its tree from the disk chains; hostile folders give typed errors
//! that name the file, never a panic.

mod common;

use checkpoint::config::Config;
use checkpoint::*;
use common::*;
use std::path::{Path, PathBuf};

fn corpus() -> Option<PathBuf> {
    vhdx::test_corpus::corpus_subdir(env!("CARGO_MANIFEST_DIR"), "hyperv")
        .map_err(|skip| println!("{skip}"))
        .ok()
}

fn lenient(p: &Path) -> Result<VmFolder> {
    VmFolder::open_with(p, OpenOptions { lenient: true })
}

#[test]
fn corpus_configurations_report_their_vm() {
    let Some(dir) = corpus() else { return };
    // (file, name, id, generation, memory MiB, type, legacy, drive file name).
    // Values as dissect.hypervisor reads the .vmcx files, and as the XML
    // text says (iconv -f UTF-16LE).
    let cases = [
        (
            "dissect.hypervisor_test.vmcx",
            "Other Location",
            "282874FC-59D6-4F30-BC04-5FDD909C82E0",
            1,
            1024,
            Some(3),
            false,
            "Other Location.vhdx",
        ),
        (
            "dissect.target_EC04F346-DB96-4700-AF5B-77B3C56C38BD.vmcx",
            "Default Generation 1",
            "EC04F346-DB96-4700-AF5B-77B3C56C38BD",
            1,
            1024,
            Some(3),
            false,
            "Default Generation 1.vhdx",
        ),
        (
            "dissect.target_993F7B33-6057-4D1E-A1FE-A1A1D77BE974.vmcx",
            "Default Generation 2",
            "993F7B33-6057-4D1E-A1FE-A1A1D77BE974",
            2,
            1024,
            Some(3),
            false,
            "Default Generation 2.vhdx",
        ),
        (
            "dissect.target_B90AC31B-C6F8-479F-9B91-07B894A6A3F6.xml",
            "Default Generation 1",
            "B90AC31B-C6F8-479F-9B91-07B894A6A3F6",
            1,
            512,
            None,
            true,
            "Default Generation 1.vhdx",
        ),
        (
            "dissect.target_D351C151-DAC7-4042-B434-B72D522C1E4A.xml",
            "Default Generation 2",
            "D351C151-DAC7-4042-B434-B72D522C1E4A",
            2,
            512,
            None,
            true,
            "Default Generation 2.vhdx",
        ),
    ];
    for (file, name, id, generation, mem, t, legacy, disk) in cases {
        let p = dir.join(file);
        let f = lenient(&p).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(f.vm.name, name, "{file}");
        assert_eq!(f.vm.id, id, "{file}");
        assert_eq!(f.vm.generation, Some(generation), "{file}");
        assert_eq!(f.vm.memory_mb, Some(mem), "{file}");
        assert_eq!(f.vm.processors, Some(1), "{file}");
        assert_eq!(f.vm.checkpoint_type_raw, t, "{file}");
        assert_eq!(f.legacy, legacy, "{file}");
        assert_eq!(f.vm.state, VmState::Off, "{file}");
        assert!(f.checkpoints.is_empty());
        // The disk is not here: lenient reports it, strict refuses, both
        // naming the configuration and the disk.
        assert_eq!(f.problems.len(), 1, "{file}: {:?}", f.problems);
        assert!(
            f.problems[0].contains(disk) && f.problems[0].contains(file),
            "{:?}",
            f.problems
        );
        let e = VmFolder::open(&p).unwrap_err();
        assert!(matches!(e, Error::Corrupt { .. }), "{e}");
        assert!(
            e.to_string().contains(file) && e.to_string().contains("missing"),
            "{e}"
        );
    }
    for not_vm in ["dissect.target_data.vmcx", "dissect.hypervisor_test.VMRS"] {
        let e = VmFolder::open(dir.join(not_vm)).unwrap_err();
        assert!(matches!(e, Error::NotAVmFolder { .. }), "{not_vm}: {e}");
        assert!(e.to_string().contains(not_vm), "{e}");
    }
    // The corpus folder holds several configurations: name one.
    let e = VmFolder::open(&dir).unwrap_err();
    assert!(matches!(e, Error::NotAVmFolder { .. }), "{e}");
}

/// A corpus configuration in a VM folder of its own, with its disk.
fn corpus_folder(corpus: &Path, file: &str, id: &str, disk: &str, t: &Path) -> PathBuf {
    let dir = t.join("vm");
    let ext = Path::new(file)
        .extension()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    std::fs::create_dir_all(dir.join("Virtual Machines")).unwrap();
    std::fs::create_dir_all(dir.join("Virtual Hard Disks")).unwrap();
    std::fs::copy(
        corpus.join(file),
        dir.join("Virtual Machines").join(format!("{id}.{ext}")),
    )
    .unwrap();
    let d = dir.join("Virtual Hard Disks").join(disk);
    let f = std::fs::File::create_new(&d).unwrap();
    vhdx::create::create(
        &f,
        "d",
        &vhdx::create::CreateParams::dynamic(16 << 20),
        &Default::default(),
    )
    .unwrap();
    dir
}

#[test]
fn a_hyperv_configuration_in_a_folder_takes_checkpoints_and_keeps_its_keys() {
    let Some(corpus) = corpus() else { return };
    let t = tempfile::tempdir().unwrap();
    let id = "993F7B33-6057-4D1E-A1FE-A1A1D77BE974";
    let dir = corpus_folder(
        &corpus,
        "dissect.target_993F7B33-6057-4D1E-A1FE-A1A1D77BE974.vmcx",
        id,
        "Default Generation 2.vhdx",
        t.path(),
    );
    let f = VmFolder::open(&dir).unwrap();
    assert_eq!(f.disks.len(), 1);
    assert!(f.disks[0]
        .path
        .ends_with("Virtual Hard Disks/Default Generation 2.vhdx"));
    write_disk(&f.disks[0].path, 0, b"hyper-v");
    let before = Config::read(&f.config_path).unwrap();
    let c = create(
        &OsFs,
        &dir,
        &CreateOptions {
            name: Some("one".into()),
            ..Default::default()
        },
        None,
    )
    .unwrap();
    assert_eq!(c.kind, Kind::Production); // user_type 3, VM off
    let g = VmFolder::open(&dir).unwrap();
    assert_eq!(g.current.as_deref(), Some(c.id.as_str()));
    assert!(g.disks[0]
        .path
        .file_name()
        .unwrap()
        .to_string_lossy()
        .starts_with("Default Generation 2_"));
    // Every key of the Hyper-V configuration is still there, with its
    // value, but the drive path (the new leaf) and our node.
    let after = Config::read(&g.config_path).unwrap();
    let rows = |c: &Config| -> Vec<(String, String)> {
        c.tree
            .walk()
            .into_iter()
            .map(|k| (c.tree.path(k), format!("{:?}", c.tree.key(k).value)))
            .filter(|(p, _)| !p.starts_with("/configuration/hvkit") && !p.ends_with("/pathname"))
            .collect()
    };
    assert_eq!(rows(&before), rows(&after));
    // And the checkpoint's configuration is the VM's as it was.
    let cp = Config::read(&g.checkpoint(&c.id).unwrap().config_path).unwrap();
    assert_eq!(rows(&before), rows(&cp));
    if let Some(o) = folder_oracle() {
        let configs: Vec<String> = files_under(&dir)
            .into_iter()
            .filter(|p| {
                matches!(
                    p.extension().and_then(|e| e.to_str()),
                    Some("vmcx" | "vmrs")
                )
            })
            .map(|p| p.display().to_string())
            .collect();
        let j = run_oracle(&o, &serde_json::json!({ "configs": configs, "disks": [] }));
        let cpj = &j["configs"][g
            .checkpoint(&c.id)
            .unwrap()
            .config_path
            .display()
            .to_string()];
        assert_eq!(cpj["values"]["/configuration/hvkit/checkpoint/name"], "one");
        assert_eq!(
            cpj["values"]["/configuration/properties/name"],
            "Default Generation 2"
        );
        let vmj = &j["configs"][g.config_path.display().to_string()];
        assert_eq!(
            vmj["values"]["/configuration/hvkit/current_checkpoint"],
            c.id.as_str()
        );
        assert_eq!(vmj["drives"][0], g.disks[0].path.display().to_string());
        // dissect counts every key of the original plus ours.
        assert_eq!(
            vmj["keys"].as_u64().unwrap() as usize,
            after.tree.walk().len()
        );
    }
    assert_no_garbage(&g);
}

#[test]
fn a_2012_r2_folder_reads_and_refuses_changes() {
    let Some(corpus) = corpus() else { return };
    let t = tempfile::tempdir().unwrap();
    let id = "B90AC31B-C6F8-479F-9B91-07B894A6A3F6";
    let dir = corpus_folder(
        &corpus,
        "dissect.target_B90AC31B-C6F8-479F-9B91-07B894A6A3F6.xml",
        id,
        "Default Generation 1.vhdx",
        t.path(),
    );
    let f = VmFolder::open(&dir).unwrap();
    assert!(f.legacy);
    assert_eq!(f.disks.len(), 1);
    assert_eq!(f.disks[0].slot.kind, "IDE");
    let e = create(&OsFs, &dir, &CreateOptions::default(), None).unwrap_err();
    assert!(
        e.to_string().contains("2012 R2") && e.to_string().contains(".xml"),
        "{e}"
    );
    assert!(matches!(
        set_checkpoint_type(&OsFs, &dir, CheckpointType::Standard),
        Err(Error::Refused { .. })
    ));
}

/// A folder made here, checkpointed: C1 <- C2, then C1 applied and C3
/// taken (a branch); current derives from C3.
fn tree_folder(t: &Path) -> PathBuf {
    let dir = t.join("vm");
    let f = make_vm(&dir, "tree", 2, 8 << 20);
    write_disk(&f.disks[0].path, 0, b"a");
    let o = |n: &str| CreateOptions {
        name: Some(n.into()),
        ..Default::default()
    };
    create(&OsFs, &dir, &o("C1"), None).unwrap();
    write_disk(&VmFolder::open(&dir).unwrap().disks[0].path, 0, b"b");
    create(&OsFs, &dir, &o("C2"), None).unwrap();
    apply(&OsFs, &dir, "C1", &ApplyOptions::default()).unwrap();
    write_disk(&VmFolder::open(&dir).unwrap().disks[1].path, 0, b"c");
    create(&OsFs, &dir, &o("C3"), None).unwrap();
    dir
}

fn edit(path: &Path, f: impl FnOnce(&mut Config)) {
    let mut c = Config::read(path).unwrap();
    f(&mut c);
    c.write(&OsFs, path).unwrap();
}

#[test]
fn a_folder_without_our_tree_keys_gets_its_tree_from_the_disks() {
    let t = tempfile::tempdir().unwrap();
    let dir = tree_folder(t.path());
    let f = VmFolder::open(&dir).unwrap();
    let want: Vec<(String, Option<String>)> = f
        .checkpoints
        .iter()
        .map(|c| {
            (
                c.name.clone(),
                c.parent
                    .as_deref()
                    .map(|p| f.checkpoint(p).unwrap().name.clone()),
            )
        })
        .collect();
    // Strip our keys, as a folder Hyper-V wrote would be (the checkpoint's
    // name then comes from properties/name: give each its own).
    for c in &f.checkpoints {
        let n = c.name.clone();
        edit(&c.config_path, |k| {
            k.tree.remove("/configuration/hvkit");
            k.set_string(checkpoint::keys::NAME, &n);
            k.set_string(checkpoint::keys::LOGICAL_ID, &f.vm.id);
        });
    }
    edit(&f.config_path, |k| {
        k.tree.remove("/configuration/hvkit");
    });
    let g = VmFolder::open(&dir).unwrap();
    assert!(g.checkpoints.iter().all(|c| !c.has_tree_keys));
    let got: Vec<(String, Option<String>)> = g
        .checkpoints
        .iter()
        .map(|c| {
            (
                c.name.clone(),
                c.parent
                    .as_deref()
                    .map(|p| g.checkpoint(p).unwrap().name.clone()),
            )
        })
        .collect();
    let mut a = want.clone();
    a.sort();
    let mut b = got.clone();
    b.sort();
    assert_eq!(a, b);
    assert_eq!(
        g.current
            .as_deref()
            .map(|c| g.checkpoint(c).unwrap().name.clone()),
        Some("C3".to_string())
    );
}

fn expect_corrupt(dir: &Path, file: &Path, says: &str) {
    let e = VmFolder::open(dir).unwrap_err();
    let s = e.to_string();
    assert!(matches!(e, Error::Corrupt { .. }), "{s}");
    assert!(
        s.contains(&*file.file_name().unwrap().to_string_lossy()),
        "{s} does not name {}",
        file.display()
    );
    assert!(s.contains(says), "{s} does not say {says:?}");
}

#[test]
fn hostile_folders_give_typed_errors_naming_the_file() {
    let t = tempfile::tempdir().unwrap();
    // Not a folder, an empty folder, two VMs.
    assert!(matches!(
        VmFolder::open(t.path().join("nope")),
        Err(Error::Io { .. })
    ));
    std::fs::create_dir(t.path().join("empty")).unwrap();
    assert!(matches!(
        VmFolder::open(t.path().join("empty")),
        Err(Error::NotAVmFolder { .. })
    ));
    let base = t.path().join("base");
    std::fs::create_dir(&base).unwrap();
    let dir = tree_folder(&base);
    let f = VmFolder::open(&dir).unwrap();
    let by = |n: &str| f.find(n).unwrap().clone();
    let (c1, c2, c3) = (by("C1"), by("C2"), by("C3"));
    let fresh = |label: &str| {
        let d = t.path().join(label);
        copy_dir(&dir, &d);
        let g = VmFolder::open(&d).unwrap();
        let path_of = |c: &Checkpoint| g.checkpoint(&c.id).unwrap().config_path.clone();
        (
            d.clone(),
            path_of(&c1),
            path_of(&c2),
            path_of(&c3),
            g.config_path.clone(),
        )
    };

    let (d, _, _, _, vm) = fresh("twovms");
    std::fs::copy(
        &vm,
        d.join("Virtual Machines/0F2A1B3C-4D5E-4F60-8A9B-0C1D2E3F4A5B.vmcx"),
    )
    .unwrap();
    let e = VmFolder::open(&d).unwrap_err();
    assert!(
        matches!(e, Error::NotAVmFolder { .. }) && e.to_string().contains("0F2A1B3C"),
        "{e}"
    );

    // A cycle.
    let (d, p1, p2, _, _) = fresh("cycle");
    edit(&p1, |k| k.set_string(checkpoint::keys::CP_PARENT, &c2.id));
    let e = VmFolder::open(&d).unwrap_err().to_string();
    assert!(e.contains("cycle"), "{e}");
    let _ = p2;

    // Its own parent.
    let (d, p1, _, _, _) = fresh("selfparent");
    edit(&p1, |k| k.set_string(checkpoint::keys::CP_PARENT, &c1.id));
    expect_corrupt(&d, &p1, "itself");

    // A parent that is not there.
    let (d, _, p2, _, _) = fresh("noparent");
    edit(&p2, |k| {
        k.set_string(
            checkpoint::keys::CP_PARENT,
            "11111111-2222-3333-4444-555555555555",
        )
    });
    expect_corrupt(&d, &p2, "not a checkpoint of this VM");

    // Two roots where the disks have one.
    let (d, _, p2, _, _) = fresh("tworoots");
    edit(&p2, |k| k.set_string(checkpoint::keys::CP_PARENT, ""));
    expect_corrupt(&d, &p2, "two roots");

    // The wrong parent (C3 names C2, but its disks lie on C1's).
    let (d, _, _, p3, _) = fresh("wrongparent");
    edit(&p3, |k| k.set_string(checkpoint::keys::CP_PARENT, &c2.id));
    expect_corrupt(&d, &p3, "does not lie directly on top");

    // Two checkpoints with one id.
    let (d, p1, _, _, _) = fresh("dupid");
    let copy = p1.with_file_name("0F2A1B3C-4D5E-4F60-8A9B-0C1D2E3F4A5B.vmcx");
    std::fs::copy(&p1, &copy).unwrap();
    expect_corrupt(&d, &copy, "same checkpoint id");

    // A checkpoint naming a missing disk, and a foreign one.
    let (d, _, p2, _, _) = fresh("missingdisk");
    edit(&p2, |k| {
        let slot = k.disk_drives()[0].slot.clone();
        k.set_drive_path(&slot, Path::new("/nowhere/gone.avhdx"));
    });
    expect_corrupt(&d, &p2, "missing");
    let (d, _, p2, _, _) = fresh("foreigndisk");
    let other = d.join("Virtual Hard Disks/other.vhdx");
    let o = std::fs::File::create_new(&other).unwrap();
    vhdx::create::create(
        &o,
        "o",
        &vhdx::create::CreateParams::dynamic(8 << 20),
        &Default::default(),
    )
    .unwrap();
    edit(&p2, |k| {
        let slot = k.disk_drives()[0].slot.clone();
        k.set_drive_path(&slot, &other);
    });
    expect_corrupt(&d, &p2, "not this VM's checkpoint disk");

    // Absurd values.
    for (label, key, value, says) in [
        (
            "created",
            checkpoint::keys::CP_CREATED,
            vmcx::Value::Int(-5),
            "not a time",
        ),
        (
            "kind",
            checkpoint::keys::CP_KIND,
            vmcx::Value::String("weird".into()),
            "unknown kind",
        ),
    ] {
        let (d, p1, _, _, _) = fresh(label);
        edit(&p1, |k| k.set(key, value.clone()));
        expect_corrupt(&d, &p1, says);
    }
    let (d, _, _, _, vm) = fresh("pending");
    edit(&vm, |k| {
        k.set_string(checkpoint::keys::PENDING, "{\"op\": \"explode\"")
    });
    expect_corrupt(&d, &vm, "pending_operation");
    let (d, _, _, _, vm) = fresh("current");
    edit(&vm, |k| {
        k.set_string(
            checkpoint::keys::CURRENT,
            "11111111-2222-3333-4444-555555555555",
        )
    });
    expect_corrupt(&d, &vm, "not a checkpoint of this VM");
    // No VM id.
    let (d, _, _, _, vm) = fresh("noid");
    edit(&vm, |k| {
        k.tree.remove(checkpoint::keys::GLOBAL_ID);
    });
    let e = VmFolder::open(&d).unwrap_err();
    assert!(
        matches!(e, Error::Corrupt { .. }) || matches!(e, Error::NotAVmFolder { .. }),
        "{e}"
    );

    // A huge configuration is refused before it is read.
    let (d, p1, _, _, _) = fresh("huge");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&p1)
        .unwrap()
        .set_len(1 << 30)
        .unwrap();
    expect_corrupt(&d, &p1, "too large");

    // Damaged bytes anywhere in a checkpoint's configuration: an error or
    // a folder that opens, never a panic; an error names the file.
    let (d, p1, _, _, _) = fresh("flips");
    let orig = std::fs::read(&p1).unwrap();
    let mut opened = 0;
    for i in (0..orig.len()).step_by(97) {
        let mut b = orig.clone();
        b[i] ^= 0x5a;
        std::fs::write(&p1, &b).unwrap();
        match VmFolder::open(&d) {
            Ok(_) => opened += 1,
            Err(e) => {
                let s = e.to_string();
                assert!(
                    s.contains(&*p1.file_name().unwrap().to_string_lossy()),
                    "flip at {i}: {s}"
                );
            }
        }
    }
    std::fs::write(&p1, &orig).unwrap();
    assert!(VmFolder::open(&d).is_ok());
    println!(
        "{opened} of {} damaged copies still opened",
        orig.len() / 97 + 1
    );
}
