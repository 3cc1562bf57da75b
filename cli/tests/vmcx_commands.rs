//! `hvkit vmcx` end to end: show, dump (text and JSON), new, set, check
//! (exit codes, --repair of a pending replay log).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use vhdx::crash_storage::CrashStorage;
use vmcx::{OpenOptions, Store, Tree, Value};

fn hvkit(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hvkit"))
        .args(args)
        .output()
        .expect("run hvkit")
}

fn ok(args: &[&str]) -> String {
    let o = hvkit(args);
    assert!(
        o.status.success(),
        "hvkit {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

fn hyperv_corpus() -> Option<PathBuf> {
    vhdx::test_corpus::corpus_subdir(env!("CARGO_MANIFEST_DIR"), "hyperv")
        .map_err(|skip| println!("{skip}"))
        .ok()
}

fn p(x: &Path) -> &str {
    x.to_str().unwrap()
}

#[test]
fn show_prints_name_memory_disks_and_checkpoint_type_of_each_corpus_vm() {
    let Some(dir) = hyperv_corpus() else { return };
    let cases = [
        (
            "dissect.hypervisor_test.vmcx",
            "Other Location",
            r"C:\Users\Public\Documents\Hyper-V\Virtual Hard Disks\Other Location.vhdx",
        ),
        (
            "dissect.target_EC04F346-DB96-4700-AF5B-77B3C56C38BD.vmcx",
            "Default Generation 1",
            r"C:\Disks\Default Generation 1.vhdx",
        ),
        (
            "dissect.target_993F7B33-6057-4D1E-A1FE-A1A1D77BE974.vmcx",
            "Default Generation 2",
            r"C:\Disks\Default Generation 2.vhdx",
        ),
    ];
    for (file, name, disk) in cases {
        let f = dir.join(file);
        let text = ok(&["vmcx", "show", p(&f)]);
        assert!(
            text.contains(&format!("VM name:           {name}")),
            "{text}"
        );
        assert!(
            text.contains("Memory:            1024 MiB startup"),
            "{text}"
        );
        assert!(
            text.contains("Checkpoint type:   Production (user_type 3)"),
            "{text}"
        );
        assert!(text.contains(disk), "{text}");
        let j: serde_json::Value =
            serde_json::from_str(&ok(&["vmcx", "show", "--json", p(&f)])).unwrap();
        assert_eq!(j["name"], name);
        assert_eq!(j["memory"]["startup_mb"], 1024);
        assert_eq!(j["checkpoint_type"], "Production");
        assert_eq!(
            j["drives"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|d| d["type"] == "VHD")
                .count(),
            1
        );
    }
    let inv = ok(&["vmcx", "show", p(&dir.join("dissect.target_data.vmcx"))]);
    assert!(inv.contains("host inventory"), "{inv}");
    assert_eq!(inv.matches("  VM ").count(), 4, "{inv}");
}

#[test]
fn dump_new_dump_gives_the_same_json() {
    let Some(dir) = hyperv_corpus() else { return };
    let tmp = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(&dir).unwrap() {
        let f = e.unwrap().path();
        if f.extension().is_some_and(|x| x == "xml" || x == "md") {
            continue;
        }
        let j1 = ok(&["vmcx", "dump", "--json", p(&f)]);
        let jf = tmp.path().join("dump.json");
        std::fs::write(&jf, &j1).unwrap();
        let out = tmp.path().join("new.vmcx");
        ok(&["vmcx", "new", p(&out), "--from", p(&jf)]);
        assert!(
            ok(&["vmcx", "dump", "--json", p(&out)]) == j1,
            "{}: dump, new, dump differs",
            f.display()
        );
        // The text dump lists the same keys (insertion sequences, shown on
        // nodes, are renumbered from 1 by `new`).
        let keys = |t: String| {
            t.lines()
                .map(|l| l.rsplit_once(" | ").map_or(l, |x| x.0).to_string())
                .collect::<Vec<_>>()
        };
        assert!(keys(ok(&["vmcx", "dump", p(&out)])) == keys(ok(&["vmcx", "dump", p(&f)])));
        assert_eq!(hvkit(&["vmcx", "check", p(&out)]).status.code(), Some(0));
    }
}

#[test]
fn set_edits_and_refuses_what_it_cannot_do() {
    let Some(dir) = hyperv_corpus() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("vm.vmcx");
    std::fs::copy(dir.join("dissect.hypervisor_test.vmcx"), &f).unwrap();
    let out = ok(&[
        "vmcx",
        "set",
        p(&f),
        "/configuration/settings/processors/count",
        "8",
    ]);
    assert!(out.contains("= 8 (was 1)"), "{out}");
    ok(&[
        "vmcx",
        "set",
        p(&f),
        "/configuration/global_settings/snapshots/user_type",
        "5",
    ]);
    let show = ok(&["vmcx", "show", p(&f)]);
    assert!(show.contains("Processors:        8"), "{show}");
    assert!(
        show.contains("Checkpoint type:   Standard (user_type 5)"),
        "{show}"
    );
    // Wrong text for the type, a node, a new key without --type.
    let o = hvkit(&[
        "vmcx",
        "set",
        p(&f),
        "/configuration/settings/processors/count",
        "many",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("not a valid int"));
    assert_eq!(
        hvkit(&["vmcx", "set", p(&f), "/configuration/settings", "1"])
            .status
            .code(),
        Some(1)
    );
    let o = hvkit(&["vmcx", "set", p(&f), "/configuration/hvkit/new", "1"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("give --type"));
    let j: serde_json::Value = serde_json::from_str(&ok(&[
        "vmcx",
        "set",
        "--json",
        "--type",
        "bool",
        p(&f),
        "/configuration/hvkit/new",
        "true",
    ]))
    .unwrap();
    assert_eq!(j["new"], "true");
    assert_eq!(j["old"], serde_json::Value::Null);
    // Siblings sharing a name need an index.
    let v = tmp.path().join("x.vmrs");
    std::fs::copy(dir.join("dissect.hypervisor_test.VMRS"), &v).unwrap();
    let o = hvkit(&[
        "vmcx",
        "set",
        p(&v),
        "/configuration/global_settings/metrics/devicetype/guid",
        "x",
    ]);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("NAME[INDEX]"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    ok(&[
        "vmcx",
        "set",
        p(&v),
        "/configuration/global_settings/metrics/devicetype[1]/guid",
        "x",
    ]);
    let d = ok(&["vmcx", "dump", p(&v)]);
    assert!(
        d.contains("/configuration/global_settings/metrics/devicetype[1]/guid | string | \"x\""),
        "{d}"
    );
}

/// A file whose replay log holds a committed, unapplied transaction: a
/// crash right after the commit point of a `set`.
fn dirty_file(dir: &Path) -> (PathBuf, Vec<u8>) {
    let mut t = Tree::new();
    let c = t.add(Tree::ROOT, "configuration", Value::Node);
    t.add(c, "count", Value::Int(1));
    let m = vmcx::MemStorage::default();
    vmcx::writer::write(&m, "x", &t, &|_| unreachable!()).unwrap();
    let base = m.to_vec();
    for n in 0.. {
        let leaf = Arc::new(CrashStorage::new(base.clone()));
        leaf.arm(Some(n));
        let mut s = Store::from_storage(
            leaf.clone(),
            "x",
            OpenOptions {
                write: true,
                ..Default::default()
            },
        )
        .unwrap();
        let r = s.set("/configuration/count", Value::Int(2));
        assert!(r.is_err(), "no crash point left the log pending");
        let bytes = leaf.after_crash(&mut |_| true);
        let ro = Store::from_storage(
            Arc::new(vmcx::MemStorage::new(bytes.clone())),
            "x",
            OpenOptions::default(),
        )
        .unwrap();
        if ro.replayed_records() > 0 {
            let f = dir.join("dirty.vmcx");
            std::fs::write(&f, &bytes).unwrap();
            return (f, bytes);
        }
    }
    unreachable!()
}

#[test]
fn check_and_repair_a_pending_replay_log() {
    let tmp = tempfile::tempdir().unwrap();
    let (f, bytes) = dirty_file(tmp.path());
    // Read-only commands show the committed value and leave the file alone.
    let d = ok(&["vmcx", "dump", p(&f)]);
    assert!(d.contains("/configuration/count | int | 2"), "{d}");
    assert_eq!(std::fs::read(&f).unwrap(), bytes);
    let o = hvkit(&["vmcx", "check", "--json", p(&f)]);
    assert_eq!(o.status.code(), Some(3));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["status"], "log-needs-replay");
    assert!(j["log_pending_records"].as_u64().unwrap() > 0);
    assert_eq!(std::fs::read(&f).unwrap(), bytes);
    // --repair writes it; then the file is clean and reads the same.
    let o = hvkit(&["vmcx", "check", "--repair", p(&f)]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    assert_ne!(std::fs::read(&f).unwrap(), bytes);
    assert_eq!(hvkit(&["vmcx", "check", p(&f)]).status.code(), Some(0));
    assert!(ok(&["vmcx", "dump", p(&f)]).contains("/configuration/count | int | 2"));
}

#[test]
fn check_reports_a_bad_checksum_with_its_offset() {
    let tmp = tempfile::tempdir().unwrap();
    let mut t = Tree::new();
    let c = t.add(Tree::ROOT, "configuration", Value::Node);
    t.add(c, "name", Value::String("vm".into()));
    let f = tmp.path().join("bad.vmcx");
    vmcx::writer::create(&f, &t, &|_| unreachable!()).unwrap();
    let s = Store::open(&f).unwrap();
    let table = s.key_tables()[0].offset;
    let loc = s
        .tree()
        .key(s.tree().find("", "/configuration/name").unwrap())
        .location
        .unwrap();
    drop(s);
    let mut b = std::fs::read(&f).unwrap();
    let at = table as usize + loc.entry_offset as usize + 21 + 5 + 4 + 1; // in the UTF-16 text
    b[at] ^= 0x40;
    std::fs::write(&f, &b).unwrap();
    let o = hvkit(&["vmcx", "check", p(&f)]);
    assert_eq!(o.status.code(), Some(2));
    let text = String::from_utf8_lossy(&o.stdout);
    let entry_at = format!("{:#x}", table + u64::from(loc.entry_offset));
    assert!(
        text.contains("checksum mismatch") && text.contains(&entry_at),
        "{text}"
    );
    // Strict commands refuse with exit 2; --lenient goes on and warns.
    assert_eq!(hvkit(&["vmcx", "dump", p(&f)]).status.code(), Some(2));
    let o = hvkit(&["vmcx", "dump", "--lenient", p(&f)]);
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("checksum mismatch"));
}
