//! Files we write open in dissect.hypervisor with the same keys: every
//! value type, duplicate sibling names, empty and long strings, String and
//! Array values in file objects, chained object tables, and a file after
//! edits that moved entries, added key tables and replaced file objects.

mod common;

use common::*;
use std::sync::Arc;
use vmcx::{OpenOptions, Store, Tree, Value};

fn sample_tree() -> Tree {
    let mut t = Tree::new();
    let c = t.add(Tree::ROOT, "configuration", Value::Node);
    let p = t.add(c, "properties", Value::Node);
    t.add(p, "name", Value::String("hvkit test VM ✓".into()));
    t.add(p, "empty", Value::String(String::new()));
    t.add(p, "int", Value::Int(-42));
    t.add(p, "uint", Value::UInt(u64::MAX));
    t.add(p, "double", Value::Double(1.5));
    t.add(p, "yes", Value::Bool(true));
    t.add(p, "bytes", Value::Array(vec![0, 1, 2, 255]));
    t.add(p, "long_string", Value::String("L".repeat(3000)));
    t.add(
        p,
        "long_array",
        Value::Array((0..5000u32).map(|i| i as u8).collect()),
    );
    let m = t.add(c, "metrics", Value::Node);
    for i in 0..3 {
        let d = t.add(m, "devicetype", Value::Node);
        t.add(d, "guid", Value::String(format!("guid-{i}")));
    }
    t.add(c, "nvram", Value::Node);
    t
}

#[test]
fn written_files_read_the_same_in_dissect() {
    let Some(oracle) = dissect_oracle() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let t = sample_tree();
    let f = tmp.path().join("sample.vmcx");
    vmcx::writer::create(&f, &t, &|_| unreachable!()).unwrap();
    let s = Store::open(&f).unwrap();
    assert_eq!(s.stats().file_objects, 2);
    assert_eq!(dissect_rows(&oracle, &f), our_rows(&s));

    // 600 file objects: three chained object tables.
    let mut t = Tree::new();
    let c = t.add(Tree::ROOT, "savedstate", Value::Node);
    for i in 0..600u32 {
        t.add(
            c,
            &format!("RamBlock{i}"),
            Value::Array(vec![(i % 251) as u8; 2048]),
        );
    }
    let f = tmp.path().join("chained.vmrs");
    let l = vmcx::writer::create(&f, &t, &|_| unreachable!()).unwrap();
    assert!(l.object_tables >= 3);
    let s = Store::open(&f).unwrap();
    assert_eq!(dissect_rows(&oracle, &f), our_rows(&s));
}

#[test]
fn edited_files_read_the_same_in_dissect() {
    let Some(oracle) = dissect_oracle() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("edited.vmcx");
    vmcx::writer::create(&f, &sample_tree(), &|_| unreachable!()).unwrap();
    let mut s = Store::open_with(
        &f,
        OpenOptions {
            write: true,
            ..Default::default()
        },
    )
    .unwrap();
    s.set(
        "/configuration/properties/name",
        Value::String("renamed to something much longer than before".into()),
    )
    .unwrap();
    s.set(
        "/configuration/properties/long_string",
        Value::String("short now".into()),
    )
    .unwrap();
    s.set(
        "/configuration/properties/bytes",
        Value::Array(vec![9; 4096]),
    )
    .unwrap();
    for i in 0..30 {
        s.set(
            &format!("/configuration/added/k{i}"),
            Value::String("v".repeat(150)),
        )
        .unwrap();
    }
    s.set(
        "/configuration/metrics/devicetype[2]/guid",
        Value::String("changed".into()),
    )
    .unwrap();
    drop(s);
    let s = Store::open(&f).unwrap();
    assert!(s.problems().is_empty());
    assert!(s.key_tables().len() > 1);
    assert_eq!(dissect_rows(&oracle, &f), our_rows(&s));
}

/// Peak resident set of this process in KiB.
fn max_rss_kib() -> i64 {
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage fills the struct we own.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    u.ru_maxrss
}

#[test]
fn a_one_gib_value_is_streamed_not_loaded() {
    // Write a file with one small file object, then make that object
    // (and the key's FileObjectData) 1 GiB in a sparse file.
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("big.vmrs");
    let mut t = Tree::new();
    let c = t.add(Tree::ROOT, "savedstate", Value::Node);
    t.add(c, "RamBlock0", Value::Array(vec![0xAB; 4096]));
    vmcx::writer::create(&f, &t, &|_| unreachable!()).unwrap();
    let s = Store::open(&f).unwrap();
    let id = s.tree().find("", "/savedstate/RamBlock0").unwrap();
    let loc = s.tree().key(id).location.unwrap();
    let table = s.key_tables()[0].offset;
    let obj = *s
        .objects()
        .iter()
        .find(|o| o.entry.kind == vmcx::format::ObjectType::FileObject)
        .unwrap();
    drop(s);
    const GIB: u32 = 1 << 30;
    let mut b = std::fs::read(&f).unwrap();
    // Key entry: value = u32 size, u64 offset after the 21-byte header and name.
    let e = table as usize + loc.entry_offset as usize;
    let name_len = b[e + 0x14] as usize;
    let v = e + 21 + name_len;
    b[v..v + 4].copy_from_slice(&GIB.to_le_bytes());
    let meaningful = 21 + name_len + 12;
    let crc = vmcx::format::crc_without(&b[e..e + meaningful], 0x0C);
    b[e + 0x0C..e + 0x10].copy_from_slice(&crc.to_le_bytes());
    // Object table entry: size.
    let o = obj.table as usize + 8 + obj.slot as usize * 18;
    let mut entry = obj.entry;
    entry.size = GIB;
    b[o..o + 18].copy_from_slice(&entry.encode());
    std::fs::write(&f, &b).unwrap();
    let file = std::fs::OpenOptions::new().write(true).open(&f).unwrap();
    file.set_len(obj.entry.offset + u64::from(GIB)).unwrap();
    drop(file);

    let before = max_rss_kib();
    let s = Store::from_storage(
        Arc::new(std::fs::File::open(&f).unwrap()),
        "big",
        OpenOptions::default(),
    )
    .unwrap();
    let id = s.tree().find("", "/savedstate/RamBlock0").unwrap();
    let Value::Blob(blob) = s.tree().key(id).value else {
        panic!("not a file object")
    };
    assert_eq!(blob.len, GIB);
    let mut r = s.blob_reader(blob);
    let mut buf = vec![0u8; 1 << 20];
    let (mut total, mut first) = (0u64, None);
    loop {
        let n = std::io::Read::read(&mut r, &mut buf).unwrap();
        if n == 0 {
            break;
        }
        first.get_or_insert(buf[0]);
        total += n as u64;
    }
    assert_eq!(total, u64::from(GIB));
    assert_eq!(first, Some(0xAB));
    let grew_mib = (max_rss_kib() - before) / 1024;
    assert!(
        grew_mib < 256,
        "reading a 1 GiB value grew the process by {grew_mib} MiB"
    );
}
