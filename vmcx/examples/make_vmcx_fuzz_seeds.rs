//! Writes the seeds of the `vmcx_open` fuzz target (`fuzz/seeds/vmcx_open/`)
//! with this crate's own writer, so no sample file is copied into the
//! repository:
//!
//! - `small.vmcx`: nested nodes, a leaf of every type, siblings sharing a
//!   name and an empty node;
//! - `file-objects.vmcx`: the same plus a 3000-byte array and a 2200-byte
//!   string, both in file objects;
//! - `edited.vmcx`: `small.vmcx` after `Store::set` edits (a value moved to
//!   free space, new nodes, a new file object), so the log holds stale
//!   records;
//! - `dirty.vmcx`: `edited.vmcx` with the log header counting the last
//!   transaction's records again (a pending log to replay; replaying it
//!   again is harmless).
//!
//! ```sh
//! cargo run -p vmcx --example make_vmcx_fuzz_seeds -- fuzz/seeds/vmcx_open
//! ```

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use vmcx::format::{FileHeader, LogEntry, LogHeader, HEADER_LEN, LOG_ENTRY_LEN, LOG_HEADER_LEN};
use vmcx::{MemStorage, OpenOptions, Store, Tree, Value};

fn small_tree() -> Tree {
    let mut t = Tree::new();
    let c = t.add(Tree::ROOT, "configuration", Value::Node);
    let p = t.add(c, "properties", Value::Node);
    t.add(p, "name", Value::String("fuzz seed".into()));
    t.add(p, "version", Value::Int(-2304));
    t.add(p, "size", Value::UInt(u64::MAX));
    t.add(p, "ratio", Value::Double(0.25));
    t.add(p, "enabled", Value::Bool(true));
    t.add(
        p,
        "creation_time",
        Value::Array(vec![1, 2, 3, 4, 5, 6, 7, 8]),
    );
    let m = t.add(c, "metrics", Value::Node);
    for name in ["a", "b", "c"] {
        let d = t.add(m, "devicetype", Value::Node);
        t.add(d, "guid", Value::String(name.into()));
        t.add(d, "metric", Value::Int(1));
        t.add(d, "metric", Value::Int(2));
    }
    t.add(c, "nvram", Value::Node);
    t
}

fn write(tree: &Tree) -> Result<Vec<u8>, vmcx::Error> {
    let mem = MemStorage::new(Vec::new());
    vmcx::writer::write(&mem, "seed", tree, &|_| {
        Err(vmcx::Error::Invalid(
            "no file-object values to resolve".into(),
        ))
    })?;
    Ok(mem.to_vec())
}

fn edited(base: Vec<u8>) -> Result<Vec<u8>, vmcx::Error> {
    let mem = Arc::new(MemStorage::new(base));
    let options = OpenOptions {
        write: true,
        ..OpenOptions::default()
    };
    let mut store = Store::from_storage(mem.clone(), "seed", options)?;
    store.set(
        "/configuration/properties/name",
        Value::String("a longer name that no longer fits in place".into()),
    )?;
    store.set("/configuration/settings/memory/bank/size", Value::Int(2048))?;
    store.set(
        "/configuration/properties/blob",
        Value::Array((0..2500u32).map(|i| (i * 7) as u8).collect()),
    )?;
    store.set("/configuration/properties/version", Value::Int(2560))?;
    drop(store);
    Ok(mem.to_vec())
}

/// `bytes` with the log header counting the records of the last
/// transaction (those at the start of the log whose entry and data
/// checksums hold).
fn dirty(mut bytes: Vec<u8>) -> Result<Vec<u8>, String> {
    let h = FileHeader::decode(bytes[..HEADER_LEN].try_into().map_err(|_| "short file")?)
        .ok_or("header copy 0 is invalid")?;
    let log = h.log_offset as usize;
    let (mut lh, ok) =
        LogHeader::decode(&bytes[log..log + LOG_HEADER_LEN]).ok_or("no log header")?;
    if !ok {
        return Err("log header checksum".into());
    }
    let mut count = 0u32;
    loop {
        let at = log + LOG_HEADER_LEN + count as usize * LOG_ENTRY_LEN;
        if at + LOG_ENTRY_LEN > log + h.log_header_size as usize {
            break;
        }
        let (e, ok) = LogEntry::decode(&bytes[at..at + LOG_ENTRY_LEN]);
        let start = log + e.offset_in_log as usize;
        let data = bytes.get(start..start + e.dest_size as usize);
        if !ok || e.dest_size == 0 || data.is_none_or(|d| crc32fast::hash(d) != e.data_checksum) {
            break;
        }
        count += 1;
    }
    if count == 0 {
        return Err("no records in the log".into());
    }
    lh.entry_count = count;
    bytes[log..log + LOG_HEADER_LEN].copy_from_slice(&lh.encode());
    Ok(bytes)
}

fn main() -> ExitCode {
    let Some(dir) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: make_vmcx_fuzz_seeds DIR");
        return ExitCode::from(2);
    };
    let run = || -> Result<(), String> {
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let small = write(&small_tree()).map_err(|e| e.to_string())?;
        let mut big = small_tree();
        let c = big
            .child(Tree::ROOT, "configuration")
            .ok_or("no configuration")?;
        big.add(
            c,
            "blob",
            Value::Array((0..3000u32).map(|i| i as u8).collect()),
        );
        big.add(c, "text", Value::String("HyperV".repeat(183) + "!!"));
        let big = write(&big).map_err(|e| e.to_string())?;
        let edited = edited(small.clone()).map_err(|e| e.to_string())?;
        let dirty = dirty(edited.clone())?;
        for (name, bytes) in [
            ("small.vmcx", &small),
            ("file-objects.vmcx", &big),
            ("edited.vmcx", &edited),
            ("dirty.vmcx", &dirty),
        ] {
            let path = dir.join(name);
            std::fs::write(&path, bytes).map_err(|e| format!("{}: {e}", path.display()))?;
            // Each seed must open strictly (the dirty one by replaying its log).
            let store = Store::from_storage(
                Arc::new(MemStorage::new(bytes.clone())),
                name,
                OpenOptions::default(),
            )
            .map_err(|e| e.to_string())?;
            println!(
                "{} ({} bytes, {} keys, {} file objects, {} log records replayed)",
                path.display(),
                bytes.len(),
                store.stats().keys,
                store.stats().file_objects,
                store.replayed_records()
            );
        }
        Ok(())
    };
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("make_vmcx_fuzz_seeds: {e}");
            ExitCode::FAILURE
        }
    }
}
