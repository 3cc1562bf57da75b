//! Crash injection over `set` (§2.8 replay log): a storage that fails at
//! the N-th write or flush, for every N over a sequence of edits of every
//! kind (in place, moved to free space, a new node path, a new key table,
//! file objects made and replaced, chained object tables), with unflushed
//! writes then lost, kept, or half kept. Every reopened file must parse
//! strictly and show the tree before or after the edit that was cut off,
//! never a mix; a read-only open (log applied in memory) and a writable
//! open (log applied to disk) must agree, and the read-only open must not
//! change a byte.

use std::sync::Arc;
use vhdx::crash_storage::CrashStorage;
use vmcx::{MemStorage, OpenOptions, Store, Tree, Value};

fn base() -> Vec<u8> {
    let mut t = Tree::new();
    let c = t.add(Tree::ROOT, "configuration", Value::Node);
    let p = t.add(c, "properties", Value::Node);
    t.add(p, "name", Value::String("vm".into()));
    t.add(p, "version", Value::Int(2304));
    let s = t.add(c, "settings", Value::Node);
    for i in 0..150 {
        t.add(s, &format!("setting{i:03}"), Value::Int(i));
    }
    t.add(c, "blob", Value::Array(vec![1; 3000]));
    let m = MemStorage::default();
    vmcx::writer::write(&m, "base", &t, &|_| unreachable!()).unwrap();
    m.to_vec()
}

fn edits() -> Vec<(String, Value)> {
    let mut v: Vec<(String, Value)> = vec![
        ("/configuration/properties/version".into(), Value::Int(2560)),
        (
            "/configuration/properties/name".into(),
            Value::String("a much longer name that cannot stay in place".into()),
        ),
        ("/configuration/new/path/leaf".into(), Value::Bool(true)),
        ("/configuration/blob".into(), Value::Array(vec![2; 5000])),
        ("/configuration/blob".into(), Value::Array(vec![3; 10])),
    ];
    // Fill the key tables so a new one is needed.
    for i in 0..16 {
        v.push((
            format!("/configuration/more/k{i}"),
            Value::String("x".repeat(180)),
        ));
    }
    v.push((
        "/configuration/settings/setting000".into(),
        Value::Double(1.5),
    ));
    v.push((
        "/configuration/settings/setting149".into(),
        Value::UInt(u64::MAX),
    ));
    v.push((
        "/configuration/more/k3".into(),
        Value::String(String::new()),
    ));
    v
}

fn json(s: &Store) -> serde_json::Value {
    vmcx::json::to_json(s.tree(), Tree::ROOT, &|id| s.value(id)).unwrap()
}

fn open(bytes: &[u8], write: bool) -> vmcx::Result<(Store, Arc<MemStorage>)> {
    let m = Arc::new(MemStorage::new(bytes.to_vec()));
    let s = Store::from_storage(
        m.clone(),
        "crashed",
        OpenOptions {
            write,
            ..Default::default()
        },
    )?;
    Ok((s, m))
}

#[test]
fn crash_at_every_write_and_flush_of_set() {
    let base = base();
    let edits = edits();
    // The states: 0 before any edit, i+1 after edit i.
    let mut states = Vec::new();
    let (mut s, _) = open(&base, true).unwrap();
    states.push(json(&s));
    for (k, v) in &edits {
        s.set(k, v.clone()).unwrap();
        states.push(json(&s));
    }
    // Count the operations of the whole sequence.
    let leaf = Arc::new(CrashStorage::new(base.clone()));
    leaf.arm(None);
    let mut s = Store::from_storage(
        leaf.clone(),
        "c",
        OpenOptions {
            write: true,
            ..Default::default()
        },
    )
    .unwrap();
    for (k, v) in &edits {
        s.set(k, v.clone()).unwrap();
    }
    let total = leaf.ops();
    assert!(total >= 200, "only {total} crash points");
    let mut checked = 0;
    let mut saw_pending_log = 0;
    for n in 0..total {
        for keep_mode in 0..3 {
            let leaf = Arc::new(CrashStorage::new(base.clone()));
            leaf.arm(Some(n));
            let mut done = 0;
            if let Ok(mut s) = Store::from_storage(
                leaf.clone(),
                "c",
                OpenOptions {
                    write: true,
                    ..Default::default()
                },
            ) {
                for (k, v) in &edits {
                    if s.set(k, v.clone()).is_err() {
                        break;
                    }
                    done += 1;
                }
            }
            assert!(leaf.crashed(), "crash point {n} was not reached");
            let mut i = 0usize;
            let bytes = leaf.after_crash(&mut |_| {
                i += 1;
                match keep_mode {
                    0 => false,
                    1 => true,
                    _ => i & 1 == 0,
                }
            });
            let (ro, mem) =
                open(&bytes, false).unwrap_or_else(|e| panic!("crash point {n}/{keep_mode}: {e}"));
            assert!(
                ro.problems().is_empty(),
                "crash point {n}: {:?}",
                ro.problems()
            );
            assert!(mem.to_vec() == bytes, "a read-only open wrote to the file");
            let got = json(&ro);
            assert!(
                got == states[done] || got == states[(done + 1).min(edits.len())],
                "crash point {n}/{keep_mode}: the tree is neither the state after {done} edits nor after {}",
                done + 1
            );
            if ro.replayed_records() > 0 {
                saw_pending_log += 1;
            }
            let (rw, rw_mem) = open(&bytes, true).unwrap();
            assert_eq!(
                json(&rw),
                got,
                "crash point {n}: replaying to disk differs from in memory"
            );
            let (again, _) = open(&rw_mem.to_vec(), false).unwrap();
            assert_eq!(again.log().pending.len(), 0);
            assert_eq!(json(&again), got);
            checked += 1;
        }
    }
    assert!(saw_pending_log > 0, "no crash left a pending log to replay");
    println!("{checked} crashed files checked over {total} crash points; {saw_pending_log} needed log replay");
}
