//! Opens the input as a HyperVStorage file (.vmcx/.vmrs) read-only, strict
//! and lenient (a pending replay log is applied in memory), and when it
//! opens walks the whole tree: every key's path and value, every file-object
//! value through `blob_reader` (bounded), the JSON conversion and the VM
//! model. Nothing may panic; every error from opening must name the file; a
//! strict open that succeeds must be matched by a lenient one with the same
//! tree; a file-object value read whole must equal the same bytes streamed.
//!
//! Seeds (`fuzz/seeds/vmcx_open/`) are written by
//! `cargo run -p vmcx --example make_vmcx_fuzz_seeds -- fuzz/seeds/vmcx_open`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use std::io::{Read, Seek, SeekFrom};
use std::sync::Arc;
use vmcx::{Blob, MemStorage, OpenOptions, Store, Tree, Value};

const NAME: &str = "fuzz-input.vmcx";
/// Bytes read from one file object through the streaming reader.
const BLOB_BUDGET: u64 = 1 << 20;

fuzz_target!(|data: &[u8]| {
    let open = |lenient: bool| {
        let options = OpenOptions {
            write: false,
            lenient,
            no_replay: false,
        };
        let r = Store::from_storage(Arc::new(MemStorage::new(data.to_vec())), NAME, options);
        if let Err(e) = &r {
            let msg = e.to_string();
            assert!(msg.contains(NAME), "error does not name the file: {msg}");
        }
        r
    };
    let strict = open(false);
    let lenient = open(true);
    if let Ok(s) = &strict {
        let l = lenient
            .as_ref()
            .expect("a file that opens strictly opens leniently");
        // Debug, not ==: a NaN double is not equal to itself.
        assert_eq!(
            format!("{:?}", s.tree()),
            format!("{:?}", l.tree()),
            "lenient open read another tree"
        );
    }
    for store in [strict, lenient].iter().flatten() {
        exercise(store);
    }
});

fn exercise(store: &Store) {
    let tree = store.tree();
    for id in tree.walk() {
        let _ = tree.path(id);
        let key = tree.key(id);
        let value = store.value(id);
        if let Err(e) = &value {
            let msg = e.to_string();
            assert!(msg.contains(NAME), "error does not name the file: {msg}");
        }
        if let Value::Blob(b) = key.value {
            let streamed = stream(store, b);
            if let (Ok(v), Some(bytes)) = (&value, streamed) {
                match v {
                    Value::Array(a) => assert_eq!(a, &bytes, "file object read two ways"),
                    Value::String(_) => {}
                    other => panic!("file object value of type {:?}", other.key_type()),
                }
            }
        } else if let Ok(v) = &value {
            assert_eq!(format!("{v:?}"), format!("{:?}", key.value));
        }
    }
    let _ = vmcx::json::to_json(tree, Tree::ROOT, &|id| store.value(id));
    let _ = store.vm_config();
    let _ = (
        store.problems(),
        store.stats(),
        store.log(),
        store.headers(),
    );
}

/// Reads a file object through the streaming reader: from the start up to
/// the budget, then a seek near the end. `Some(bytes)` when the whole value
/// was read.
fn stream(store: &Store, b: Blob) -> Option<Vec<u8>> {
    let mut r = store.blob_reader(b);
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let mut whole = true;
    loop {
        match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                out.extend_from_slice(&buf[..n]);
                if out.len() as u64 >= BLOB_BUDGET {
                    whole = u64::from(b.len) <= BLOB_BUDGET;
                    break;
                }
            }
            Err(_) => {
                whole = false;
                break;
            }
        }
    }
    if r.seek(SeekFrom::End(-17)).is_ok() {
        let _ = r.read(&mut buf);
    }
    let _ = r.seek(SeekFrom::Current(-(i64::from(b.len)) - 1));
    (whole && out.len() as u64 == u64::from(b.len)).then_some(out)
}
