//! Write/read round trips over random trees (proptest): deep nesting,
//! duplicate sibling names, long and empty strings, values just under and
//! over the 2 KiB file-object threshold; plus a tree with enough file
//! objects to need chained object tables.

mod common;

use common::tree_json;
use proptest::prelude::*;
use std::sync::Arc;
use vmcx::{MemStorage, OpenOptions, Store, Tree, Value};

#[derive(Debug, Clone)]
enum Gen {
    Leaf(String, Value),
    Node(String, Vec<Gen>),
}

fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[a-z]{1,3}",
        2 => "[A-Za-z0-9_{}-]{1,40}",
        1 => "[a-z]{200,254}",
    ]
}

fn threshold_len() -> impl Strategy<Value = usize> {
    prop_oneof![
        Just(0usize),
        Just(1),
        0usize..64,
        2040usize..2056,
        4000usize..4200
    ]
}

fn value() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::Int),
        any::<u64>().prop_map(Value::UInt),
        any::<f64>().prop_map(Value::Double),
        any::<bool>().prop_map(Value::Bool),
        // UTF-16 length in bytes around the threshold: n chars = 2n bytes.
        (threshold_len(), any::<char>())
            .prop_map(|(n, c)| Value::String(std::iter::repeat_n(c, n / 2).collect())),
        "\\PC{0,30}".prop_map(Value::String),
        (threshold_len(), any::<u8>())
            .prop_map(|(n, b)| Value::Array((0..n).map(|i| b.wrapping_add(i as u8)).collect())),
    ]
}

fn tree_gen() -> impl Strategy<Value = Vec<Gen>> {
    let leaf = (name(), value()).prop_map(|(n, v)| Gen::Leaf(n, v));
    let node = leaf.prop_recursive(6, 200, 8, |inner| {
        (name(), prop::collection::vec(inner, 0..8)).prop_map(|(n, c)| Gen::Node(n, c))
    });
    prop::collection::vec(node, 1..6)
}

fn build(t: &mut Tree, parent: usize, g: &[Gen]) {
    for x in g {
        match x {
            Gen::Leaf(n, v) => {
                t.add(parent, n, v.clone());
            }
            Gen::Node(n, c) => {
                let id = t.add(parent, n, Value::Node);
                build(t, id, c);
            }
        }
    }
}

/// Bytes a string value takes in the file.
fn stored_string_len(s: &str) -> usize {
    s.encode_utf16().count() * 2 + if s.ends_with('\0') { 2 } else { 0 }
}

fn write(t: &Tree) -> (Arc<MemStorage>, vmcx::writer::Layout) {
    let m = Arc::new(MemStorage::default());
    let l = vmcx::writer::write(&*m, "mem", t, &|_| unreachable!()).unwrap();
    (m, l)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn random_trees_round_trip(g in tree_gen()) {
        let mut t = Tree::new();
        build(&mut t, Tree::ROOT, &g);
        let (m, l) = write(&t);
        let s = Store::from_storage(m.clone(), "mem", OpenOptions::default()).unwrap();
        prop_assert!(s.problems().is_empty(), "{:?}", s.problems());
        prop_assert_eq!(s.stats().keys, t.len() - 1);
        prop_assert_eq!(s.key_tables().len(), l.key_tables);
        let want = vmcx::json::to_json(&t, Tree::ROOT, &|_| unreachable!()).unwrap();
        prop_assert_eq!(tree_json(&s), want.clone());
        // JSON -> tree -> file reads the same too (siblings sharing a name
        // are grouped in JSON, so the layout may differ, not the content).
        let back = vmcx::json::from_json(&want).unwrap();
        let (m2, _) = write(&back);
        let s2 = Store::from_storage(m2, "mem", OpenOptions::default()).unwrap();
        prop_assert_eq!(tree_json(&s2), want.clone());
        // read, write: the same bytes as the first write.
        let m3 = MemStorage::default();
        vmcx::writer::write(&m3, "mem", s.tree(), &|id| s.value(id)).unwrap();
        prop_assert!(m3.to_vec() == m.to_vec(), "rewriting the tree read back gave other bytes");
        // Values of 2 KiB or more went to file objects, and nothing else
        // (a string is stored as UTF-16 with one more NUL if it ends in
        // NUL, which readers drop).
        let big = t.walk().into_iter().filter(|&id| match &t.key(id).value {
            Value::String(s) => stored_string_len(s) >= 2048,
            Value::Array(b) => b.len() >= 2048,
            _ => false,
        }).count();
        prop_assert_eq!(s.stats().file_objects, big);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 6, ..ProptestConfig::default() })]

    /// Enough file objects (and keys) that the object tables must chain.
    #[test]
    fn trees_needing_chained_object_tables_round_trip(n in 230usize..700, extra in 0usize..300, seed in any::<u8>()) {
        let mut t = Tree::new();
        let c = t.add(Tree::ROOT, "savedstate", Value::Node);
        for i in 0..n {
            let len = 2048 + (i * 37 + seed as usize) % 1500;
            if i % 3 == 0 {
                t.add(c, &format!("s{i}"), Value::String("\u{e9}".repeat(len / 2)));
            } else {
                t.add(c, "dup", Value::Array(vec![(i as u8) ^ seed; len]));
            }
        }
        let m = t.add(c, "small", Value::Node);
        for i in 0..extra {
            t.add(m, &format!("k{i}"), Value::Int(i as i64));
        }
        let (mem, l) = write(&t);
        prop_assert_eq!(l.object_tables, (l.key_tables + l.file_objects).div_ceil(226));
        prop_assert!(l.object_tables >= 2);
        let s = Store::from_storage(mem, "mem", OpenOptions::default()).unwrap();
        prop_assert!(s.problems().is_empty());
        prop_assert_eq!(s.object_tables().len(), l.object_tables);
        prop_assert_eq!(tree_json(&s), vmcx::json::to_json(&t, Tree::ROOT, &|_| unreachable!()).unwrap());
    }
}

#[test]
fn many_file_objects_need_chained_object_tables() {
    let mut t = Tree::new();
    let c = t.add(Tree::ROOT, "savedstate", Value::Node);
    for i in 0..600u32 {
        t.add(
            c,
            &format!("RamBlock{i}"),
            Value::Array(vec![(i % 251) as u8; 2048 + (i as usize % 7)]),
        );
    }
    let (m, l) = write(&t);
    assert_eq!(l.file_objects, 600);
    assert!(l.object_tables >= 3, "{l:?}");
    let s = Store::from_storage(m, "mem", OpenOptions::default()).unwrap();
    assert!(s.problems().is_empty());
    assert_eq!(s.object_tables().len(), l.object_tables);
    assert_eq!(s.stats().file_objects, 600);
    let id = s.tree().find("", "/savedstate/RamBlock599").unwrap();
    let vmcx::Value::Blob(b) = s.tree().key(id).value else {
        panic!("not a file object")
    };
    let mut r = s.blob_reader(b);
    let mut got = Vec::new();
    std::io::Read::read_to_end(&mut r, &mut got).unwrap();
    assert_eq!(got, vec![(599 % 251) as u8; 2048 + 599 % 7]);
    assert_eq!(
        tree_json(&s),
        vmcx::json::to_json(&t, Tree::ROOT, &|_| unreachable!()).unwrap()
    );
}

#[test]
fn edits_past_the_first_object_table_chain_new_ones() {
    // Enough new key tables and file objects through `set` that the root
    // object table fills and the editor must chain another.
    let mut t = Tree::new();
    t.add(Tree::ROOT, "configuration", Value::Node);
    let (m, _) = write(&t);
    let mut s = Store::from_storage(
        m.clone(),
        "mem",
        OpenOptions {
            write: true,
            ..Default::default()
        },
    )
    .unwrap();
    for i in 0..240u32 {
        s.set(
            &format!("/configuration/b{i}"),
            Value::Array(vec![i as u8; 2100]),
        )
        .unwrap();
    }
    assert!(s.object_tables().len() >= 2);
    let r = Store::from_storage(m, "mem", OpenOptions::default()).unwrap();
    assert!(r.problems().is_empty(), "{:?}", r.problems());
    assert_eq!(r.stats().file_objects, 240);
    for i in [0u32, 120, 239] {
        let id = r.tree().find("", &format!("/configuration/b{i}")).unwrap();
        assert_eq!(r.value(id).unwrap(), Value::Array(vec![i as u8; 2100]));
    }
}

/// 1023 NULs are 2046 bytes of UTF-16, plus the NUL that keeps the last one
/// from being dropped: 2048 bytes, a file object; it reads back whole.
/// (Found by `random_trees_round_trip`.)
#[test]
fn a_string_ending_in_nul_reaching_2_kib_is_a_file_object() {
    let mut t = Tree::new();
    let c = t.add(Tree::ROOT, "c", Value::Node);
    let nuls = "\0".repeat(1023);
    assert_eq!(stored_string_len(&nuls), 2048);
    t.add(c, "nuls", Value::String(nuls.clone()));
    t.add(c, "short", Value::String("\0".repeat(1022)));
    let (m, _) = write(&t);
    let s = Store::from_storage(m, "mem", OpenOptions::default()).unwrap();
    assert!(s.problems().is_empty(), "{:?}", s.problems());
    assert_eq!(s.stats().file_objects, 1);
    let want = vmcx::json::to_json(&t, Tree::ROOT, &|_| unreachable!()).unwrap();
    assert_eq!(tree_json(&s), want);
}
