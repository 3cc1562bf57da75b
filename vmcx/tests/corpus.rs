//! Every HyperVStorage file of the corpus opens with every live checksum
//! valid and reads the same keys (duplicates included) as
//! dissect.hypervisor; what we write from them reads back the same in both;
//! `set` changes one key and dissect sees exactly that; the VM model.

mod common;

use common::*;
use std::sync::Arc;
use vmcx::{CheckpointType, MemStorage, OpenOptions, Store, Value};

/// (file, keys, key tables) as listed in the research note §8.
const EXPECTED: &[(&str, usize, usize)] = &[
    ("dissect.hypervisor_test.vmcx", 409, 8),
    ("dissect.hypervisor_test.VMRS", 113, 2),
    (
        "dissect.target_EC04F346-DB96-4700-AF5B-77B3C56C38BD.vmcx",
        409,
        8,
    ),
    (
        "dissect.target_993F7B33-6057-4D1E-A1FE-A1A1D77BE974.vmcx",
        338,
        6,
    ),
    ("dissect.target_data.vmcx", 39, 3),
];

#[test]
fn corpus_opens_with_every_checksum_valid() {
    let Some(dir) = hyperv_corpus() else { return };
    for &(name, keys, tables) in EXPECTED {
        let s = Store::open(dir.join(name)).unwrap();
        assert!(s.problems().is_empty(), "{name}: {:?}", s.problems());
        assert_eq!(s.stats().keys, keys, "{name}");
        assert_eq!(s.key_tables().len(), tables, "{name}");
        assert_eq!(s.log().pending.len(), 0, "{name}: samples are clean");
        // Entry CRCs of every key plus object-table entries were checked.
        assert!(s.stats().checksums_verified >= keys + 227, "{name}");
    }
    assert_eq!(
        corpus_files(&dir).len(),
        EXPECTED.len(),
        "a new corpus file needs a row in EXPECTED"
    );
}

#[test]
fn corpus_matches_dissect_including_duplicates() {
    let Some(dir) = hyperv_corpus() else { return };
    let Some(oracle) = dissect_oracle() else {
        return;
    };
    for f in corpus_files(&dir) {
        let s = Store::open(&f).unwrap();
        let ours = our_rows(&s);
        let theirs = dissect_rows(&oracle, &f);
        assert_eq!(ours.len(), theirs.len(), "{}", f.display());
        assert_eq!(ours, theirs, "{}", f.display());
    }
    // The VMRS sample's duplicate siblings are all there, in order.
    let s = Store::open(dir.join("dissect.hypervisor_test.VMRS")).unwrap();
    let dups = s
        .tree()
        .find_all("/configuration/global_settings/metrics/devicetype");
    assert_eq!(dups.len(), 3);
    let ins: Vec<u32> = dups.iter().map(|&d| s.tree().key(d).insertion).collect();
    assert!(ins.windows(2).all(|w| w[0] < w[1]), "{ins:?}");
}

#[test]
fn rewritten_corpus_reads_the_same_here_and_in_dissect() {
    let Some(dir) = hyperv_corpus() else { return };
    let oracle = dissect_oracle();
    let tmp = tempfile::tempdir().unwrap();
    for f in corpus_files(&dir) {
        let s = Store::open(&f).unwrap();
        let out = tmp.path().join(f.file_name().unwrap());
        vmcx::writer::create(&out, s.tree(), &|id| s.value(id)).unwrap();
        let r = Store::open(&out).unwrap();
        assert!(r.problems().is_empty(), "{:?}", r.problems());
        assert_eq!(tree_json(&r), tree_json(&s), "{}", f.display());
        // read, write, read: byte-identical the second time round.
        let out2 = tmp.path().join("again");
        vmcx::writer::create(&out2, r.tree(), &|id| r.value(id)).unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&out2).unwrap());
        if let Some(o) = &oracle {
            assert_eq!(
                dissect_rows(o, &out),
                dissect_rows(o, &f),
                "{}",
                f.display()
            );
        }
    }
}

#[test]
fn set_changes_one_key_and_dissect_sees_it() {
    let Some(dir) = hyperv_corpus() else { return };
    let oracle = dissect_oracle();
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("vm.vmcx");
    std::fs::copy(dir.join("dissect.hypervisor_test.vmcx"), &f).unwrap();
    let before = our_rows(&Store::open(&f).unwrap());
    let mut s = Store::open_with(
        &f,
        OpenOptions {
            write: true,
            ..Default::default()
        },
    )
    .unwrap();
    s.set_processor_count(4).unwrap();
    s.set_vm_name("a name long enough that the entry must move to free space")
        .unwrap();
    s.set_checkpoint_type(CheckpointType::Standard).unwrap();
    s.set("/configuration/hvkit/big", Value::Array(vec![7; 5000]))
        .unwrap();
    drop(s);
    let after = Store::open(&f).unwrap();
    assert!(after.problems().is_empty(), "{:?}", after.problems());
    let vm = after.vm_config();
    assert_eq!(vm.processors, Some(4));
    assert_eq!(vm.checkpoint_type, Some(CheckpointType::Standard));
    assert_eq!(
        vm.name.as_deref(),
        Some("a name long enough that the entry must move to free space")
    );
    assert_eq!(
        after
            .value(after.tree().find("", "/configuration/hvkit/big").unwrap())
            .unwrap(),
        Value::Array(vec![7; 5000])
    );
    assert_eq!(after.stats().file_objects, 1);
    // Everything else is unchanged.
    let changed = [
        "/configuration/settings/processors/count",
        "/configuration/properties/name",
        "/configuration/global_settings/snapshots/user_type",
    ];
    let rows = our_rows(&after);
    let keep = |r: &&serde_json::Value| {
        let p = r[0].as_str().unwrap();
        !changed.contains(&p) && !p.starts_with("/configuration/hvkit") && p != "/configuration"
    };
    assert_eq!(
        rows.iter().filter(keep).collect::<Vec<_>>(),
        before.iter().filter(keep).collect::<Vec<_>>()
    );
    assert_eq!(rows.len(), before.len() + 2);
    if let Some(o) = &oracle {
        assert_eq!(dissect_rows(o, &f), rows);
    }
}

#[test]
fn model_of_corpus_vms() {
    let Some(dir) = hyperv_corpus() else { return };
    let vm = Store::open(dir.join("dissect.hypervisor_test.vmcx"))
        .unwrap()
        .vm_config();
    assert_eq!(vm.name.as_deref(), Some("Other Location"));
    assert_eq!(
        vm.id.as_deref(),
        Some("282874FC-59D6-4F30-BC04-5FDD909C82E0")
    );
    assert_eq!(vm.generation, Some(1));
    assert_eq!(vm.version, Some(2304));
    assert_eq!(vm.memory.startup_mb, Some(1024));
    assert_eq!(vm.memory.dynamic, Some(false));
    assert_eq!(vm.processors, Some(1));
    assert_eq!(vm.checkpoint_type, Some(CheckpointType::Production));
    assert_eq!(
        vmcx::model::filetime_to_string(vm.creation_filetime.unwrap()),
        "2021-08-22 21:41:00 UTC"
    );
    let vhd: Vec<_> = vm.drives.iter().filter(|d| d.kind == "VHD").collect();
    assert_eq!(vhd.len(), 1);
    assert_eq!(
        (vhd[0].controller_kind, vhd[0].controller, vhd[0].location),
        ("IDE", 0, 0)
    );
    assert_eq!(
        vhd[0].path,
        r"C:\Users\Public\Documents\Hyper-V\Virtual Hard Disks\Other Location.vhdx"
    );
    assert_eq!(vm.network_adapters.len(), 1);
    assert_eq!(vm.network_adapters[0].name, "Network Adapter");

    let g2 = Store::open(dir.join("dissect.target_993F7B33-6057-4D1E-A1FE-A1A1D77BE974.vmcx"))
        .unwrap()
        .vm_config();
    assert_eq!(g2.name.as_deref(), Some("Default Generation 2"));
    assert_eq!(g2.generation, Some(2));
    assert_eq!(g2.drives.len(), 1);
    assert_eq!(
        (g2.drives[0].controller_kind, g2.drives[0].path.as_str()),
        ("SCSI", r"C:\Disks\Default Generation 2.vhdx")
    );
}

#[test]
fn read_only_open_never_writes() {
    let Some(dir) = hyperv_corpus() else { return };
    for f in corpus_files(&dir) {
        let bytes = std::fs::read(&f).unwrap();
        let m = Arc::new(MemStorage::new(bytes.clone()));
        let mut s = Store::from_storage(m.clone(), "mem", OpenOptions::default()).unwrap();
        let e = s.set("/configuration/x", Value::Int(1)).unwrap_err();
        assert!(matches!(e, vmcx::Error::ReadOnly { .. }), "{e}");
        assert_eq!(m.to_vec(), bytes);
    }
}
